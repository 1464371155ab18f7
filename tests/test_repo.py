"""Repository hygiene: stripped notebooks, consistent dependency lists, the README's promises."""
from __future__ import annotations

import json
import re
import tomllib

import pytest

from conftest import NOTEBOOKS, REPO

ALL_NOTEBOOKS = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_layout():
    for name in ["notebooks", "dcn_lessons", "kernels", "datasets", "tests", "environment.yml", "README.md", "pyproject.toml", ".ci/run"]:
        assert (REPO / name).exists(), f"{name} is missing from the repository root"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=[p.name for p in ALL_NOTEBOOKS])
def test_notebook_is_stripped(path):
    nb = json.loads(path.read_text())
    ids = [cell.get("id") for cell in nb["cells"]]
    if (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5):  # cell ids are required from nbformat 4.5 on
        assert all(ids) and len(set(ids)) == len(ids), f"{path.name}: a cell has no id, or two share one"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name}: cell {i} carries outputs (strip them before committing)"
            assert cell.get("execution_count") is None, f"{path.name}: cell {i} carries an execution count"


def _names(reqs):
    return {re.split(r"[<>=!~\[ ;]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_environment_yml_lists_the_runtime_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _names(project["dependencies"])
    conda, section = [], None
    for line in (REPO / "environment.yml").read_text().splitlines():
        if re.match(r"^[a-z]", line):
            section = line.split(":")[0]
        m = re.match(r"^  - ([A-Za-z0-9_.\-]+)", line)
        if section == "dependencies" and m and m.group(1) not in {"python", "pip"}:
            conda.append(m.group(1))
    conda_names = {"pytorch" if n == "torch" else n for n in runtime}
    assert _names(conda) == conda_names, f"environment.yml lists {sorted(_names(conda))}, pyproject.toml {sorted(runtime)}"
    assert "-e .[test]" in (REPO / "environment.yml").read_text()


def test_torch_bound_keeps_an_existing_torch():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if d.startswith("torch")]
    assert torch and "==" not in torch[0], "pin torch in the Makefile's first install, not in the package"


def test_optional_cuda_extras():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("cupy-cuda12x") for d in extras["cuda12"])
    assert any(d.startswith("cupy-cuda13x") for d in extras["cuda13"])


def test_readme_gives_two_commands_and_every_lesson():
    readme = (REPO / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci, ".ci/run must run the README's test command"
    assert "make peer" in ci[ci.index("make test"):], ".ci/run must run the torchvision peer check after the tests"
    assert "make mutants" in ci[ci.index("make test"):], ".ci/run must run the mutation check after the tests"
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        assert nb.name in readme, f"README's lesson table does not link {nb.name}"


def test_readme_figures_are_filled_in_and_their_sources_exist():
    readme = (REPO / "README.md").read_text()
    assert "PLACEHOLDER" not in readme and "TODO" not in readme
    named = re.findall(r"`((?:benchmarks|tests|notebooks|dcn_lessons)/[\w./-]+\.(?:py|json|sh|ipynb))`", readme)
    assert "benchmarks/results/deform_conv_cpu.json" in named
    for path in named:
        if "NN" not in path:  # a pattern such as lessonNN.py
            assert (REPO / path).is_file(), f"README names {path}, which does not exist"
