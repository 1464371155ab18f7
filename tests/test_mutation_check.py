"""The mutation check (``tests/mutation_check.py``, issue 16) stays runnable, without running it (it takes minutes):
every mutant still applies to the current sources (its original text found exactly once, and changed), every test
it names exists, and the four typical bugs are planted in each of the three backends that run without a GPU."""
from __future__ import annotations

import re

import mutation_check as mc
import pytest

from conftest import REPO


@pytest.mark.parametrize("mutant", mc.MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_to_the_current_sources(mutant) -> None:
    source = (REPO / mutant.path).read_text()
    assert mutant.apply(source) != source
    for node in mutant.tests:
        path, name, param = re.fullmatch(r"([^:]+)::(\w+)(?:\[(.+)\])?", node).groups()
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.MULTILINE), f"{node}: no such test"
        if path == "tests/test_notebooks.py":
            assert (REPO / "notebooks" / f"{param}.ipynb").is_file(), f"{node}: no such lesson"


def test_a_mutant_that_no_longer_applies_is_an_error() -> None:
    m = mc.MUTANTS[0]
    with pytest.raises(mc.MutationError, match=f"{m.name}: the text to mutate occurs 0 times in {m.path}"):
        m.apply("")


def test_every_backend_gets_every_typical_bug() -> None:
    planted = {(m.where, m.kind) for m in mc.MUTANTS}
    for where in ("tensor", "cpu-numba", "cuda-emulated"):
        for kind in ("swap", "y=-1 inside", "gradient sign", "border off-by-one"):
            assert (where, kind) in planted, (where, kind)
    assert any(m.where == "lesson" for m in mc.MUTANTS)
    assert len({m.name for m in mc.MUTANTS}) == len(mc.MUTANTS)
