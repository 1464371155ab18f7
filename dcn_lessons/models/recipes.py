"""Where the papers put their deformable layers in a ResNet: the recipes, parsed and placed.

Stage names follow the ResNet paper and both DCN papers: ``conv1`` is the 7x7 stem, ``conv2`` ... ``conv5`` the four
stages of residual blocks (torchvision's ``layer1`` ... ``layer4``). Only 3x3 convolutions become deformable (a 1x1
kernel has a single sampling point, and both papers convert "the convolutional layers with kernel size > 1" /
"the 3x3 conv layers"): the ``conv2`` of a bottleneck block, ``conv1`` and ``conv2`` of a basic block.

A recipe is written ``KIND@WHERE``:

* ``KIND`` is ``dconv`` (DCNv1 deformable convolution, v1 Eq. 2) or ``mdconv`` (DCNv2 modulated deformable
  convolution, v2 Eq. 1);
* ``WHERE`` is ``cA-cB`` or ``cA``: every 3x3 conv of stages conv A ... conv B (A, B in 2..5), or ``lastN``: the
  last N 3x3 convs of the network (DCNv1 Table 1 varies N over 1, 2, 3, 6 in ResNet-101).

The papers' recipes:

* DCNv1 §2.3 ``dconv@c5``: "deformable convolution in the last three convolutional layers (with kernel size > 1)
  in conv5", the three 3x3 convs of the three bottleneck blocks of conv5 in ResNet-50/101 (``layer4.{0,1,2}.conv2``),
  so ``dconv@c5`` and ``dconv@last3`` place the same layers there. (A basic-block conv5, ResNet-18/34, has four 3x3
  convs: ``dconv@c5`` converts all four, ``dconv@last3`` the paper's three.)
* DCNv2 §3.1 ``mdconv@c3-c5`` (and ``dconv@c3-c5``, its "DCNv1 with more layers" row of Table 1): "all the 3x3
  conv layers in stages conv3, conv4 and conv5". The paper counts 12 such layers in ResNet-50, but ResNet-50 has
  4 + 6 + 3 = 13 bottleneck blocks in conv3-conv5, each with exactly one 3x3 conv, and the sentence names all of
  them; we build the 13 (as mmdetection's ``stage_with_dcn=(False, True, True, True)`` does). ResNet-101 has 30.
* ``dconv@c4-c5`` / ``mdconv@c4-c5``: the intermediate setting of DCNv2 Table 1.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

__all__ = [
    "Recipe",
    "PAPER_RECIPES",
    "parse_recipe",
    "conv3x3_names",
    "place_recipe",
]

BlockKind = str  # "basic" or "bottleneck"

#: The recipes the papers use, by the name the papers give them.
PAPER_RECIPES: dict[str, str] = {
    "DCNv1 (§2.3): last three 3x3 convs of conv5": "dconv@c5",
    "DCNv2 (§3.1): all 3x3 convs of conv3-conv5, modulated": "mdconv@c3-c5",
    "DCNv2 Table 1: DCNv1 layers in conv3-conv5": "dconv@c3-c5",
    "DCNv2 Table 1: modulated in conv4-conv5": "mdconv@c4-c5",
}

_RE = re.compile(r"^(dconv|mdconv)@(?:c([2-5])(?:-c([2-5]))?|last([0-9]+))$")


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: which 3x3 convs become deformable, and of which kind.

    Attributes:
        kind: ``"dconv"`` (DCNv1, :class:`~dcn_lessons.ops.DeformConv2dPack`) or ``"mdconv"`` (DCNv2,
            :class:`~dcn_lessons.ops.ModulatedDeformConv2dPack`).
        stages: the stages (2..5) whose every 3x3 conv is converted, or ``()`` when ``last`` is used.
        last: convert the last ``last`` 3x3 convs of the network instead, or None.
    """

    kind: str
    stages: tuple[int, ...] = ()
    last: Optional[int] = None

    @property
    def modulated(self) -> bool:
        """True for DCNv2's modulated layers."""
        return self.kind == "mdconv"

    @property
    def spec(self) -> str:
        """The recipe written back as a string (``"mdconv@c3-c5"``)."""
        if self.last is not None:
            return f"{self.kind}@last{self.last}"
        a, b = self.stages[0], self.stages[-1]
        return f"{self.kind}@c{a}" if a == b else f"{self.kind}@c{a}-c{b}"


def parse_recipe(recipe: Union[str, Recipe, None]) -> Optional[Recipe]:
    """Parse ``"dconv@c5"``, ``"mdconv@c3-c5"``, ``"dconv@last6"`` ...; ``None``, ``""`` or ``"none"``: a plain net.

    Raises:
        ValueError: naming ``recipe`` and the grammar, for anything else (``c3-c2``, ``last0``, ``dcn@c5`` ...).
    """
    if recipe is None or isinstance(recipe, Recipe):
        return recipe
    if not isinstance(recipe, str):
        raise TypeError(f"recipe: expected a str such as 'mdconv@c3-c5', a Recipe or None, got {type(recipe).__name__}")
    text = recipe.strip().lower()
    if text in ("", "none", "plain"):
        return None
    m = _RE.match(text)
    grammar = (
        "expected 'none' or KIND@WHERE with KIND 'dconv' (DCNv1) or 'mdconv' (DCNv2) and WHERE 'cA-cB' or 'cA' "
        "(every 3x3 conv of stages A..B, 2 <= A <= B <= 5) or 'lastN' (the last N 3x3 convs, N >= 1), "
        "e.g. 'dconv@c5', 'mdconv@c3-c5', 'dconv@last6'"
    )
    if m is None:
        raise ValueError(f"recipe: {grammar}; got {recipe!r}")
    kind, a, b, last = m.groups()
    if last is not None:
        n = int(last)
        if n < 1:
            raise ValueError(f"recipe: {grammar}; got {recipe!r} (N must be >= 1)")
        return Recipe(kind, (), n)
    lo, hi = int(a), int(b if b is not None else a)
    if lo > hi:
        raise ValueError(f"recipe: {grammar}; got {recipe!r} (stage c{lo} comes after c{hi})")
    return Recipe(kind, tuple(range(lo, hi + 1)), None)


def conv3x3_names(block: BlockKind, layers: Sequence[int]) -> list[tuple[int, str]]:
    """Every 3x3 conv of a ResNet's stages, in forward order, as ``(stage, torchvision module name)``.

    ``layers`` are the blocks per stage conv2..conv5 (``(3, 4, 6, 3)`` for ResNet-50). A bottleneck block has one
    3x3 conv (``conv2``), a basic block two (``conv1``, ``conv2``); the 7x7 stem is not counted.
    """
    if block not in ("basic", "bottleneck"):
        raise ValueError(f"block: expected 'basic' or 'bottleneck', got {block!r}")
    if len(layers) != 4:
        raise ValueError(f"layers: expected 4 block counts (conv2..conv5), got {list(layers)!r}")
    convs = ("conv1", "conv2") if block == "basic" else ("conv2",)
    out = []
    for stage, n in enumerate(layers, start=2):
        for i in range(n):
            out.extend((stage, f"layer{stage - 1}.{i}.{c}") for c in convs)
    return out


def place_recipe(recipe: Union[str, Recipe, None], block: BlockKind, layers: Sequence[int]) -> list[str]:
    """The module names (torchvision's, e.g. ``layer4.0.conv2``) the recipe makes deformable, in forward order.

    Raises:
        ValueError: ``lastN`` asks for more 3x3 convs than the network has.
    """
    r = parse_recipe(recipe)
    convs = conv3x3_names(block, layers)
    if r is None:
        return []
    if r.last is not None:
        if r.last > len(convs):
            raise ValueError(
                f"recipe: {r.spec!r} asks for the last {r.last} 3x3 convs, but this network has {len(convs)}"
            )
        return [name for _, name in convs[len(convs) - r.last:]]
    return [name for stage, name in convs if stage in r.stages]
