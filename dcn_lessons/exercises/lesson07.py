"""Checks for lesson 07 (Deformable ConvNets: where the layers go). Globals of ``_core.py`` are injected.

* q1 :func:`check_conv3x3_names` -- the torchvision names of every 3x3 convolution of some stages of a ResNet, in
  forward order: the layers the papers' recipes make deformable (DCNv1 §2.3, DCNv2 §3.1).
* q2 :func:`check_deform_cost` -- the parameters and FLOPs that converting one 3x3 convolution into a DCNv1 or DCNv2
  layer adds (its offset branch, and the sampling beyond the GEMM), as ``FlopCounterMode`` counts them.

The references are the package's (:mod:`dcn_lessons.models`); a wrong answer is compared with the typical mistakes
so that the message can say which one it was, without printing the answer. Both checks name the package functions
that compute the same thing (``unavailable``): a graded second run without them tells an answer that computes from
one that only calls them. q2's ``run`` also takes the deformable operator's FLOP formula out of PyTorch's registry
while the answer runs, so an answer that only counts a package layer with ``FlopCounterMode`` misses the sampling.
"""
import numpy as np  # noqa: F401

STAGE_NAMES = {2: "conv2", 3: "conv3", 4: "conv4", 5: "conv5"}


# ---------------------------------------------------------------------------------------------- q1

def _names_ref(block, layers, stages):
    from dcn_lessons.models.recipes import conv3x3_names

    return [name for stage, name in conv3x3_names(block, list(layers)) if stage in stages]


SEED_Q1 = 7


def _names_cases(seed):
    """The papers' recipes on ResNet-50/101/18 first, then networks of random depth; the stages from the seed."""
    rng = np.random.default_rng(seed)
    steps = [
        ("bottleneck", (3, 4, 6, 3), (5,), "ResNet-50, conv5 (DCNv1 §2.3: the last three 3x3 convs)"),
        ("bottleneck", (3, 4, 6, 3), (3, 4, 5), "ResNet-50, conv3-conv5 (DCNv2 §3.1)"),
        ("basic", (2, 2, 2, 2), (5,), "ResNet-18, conv5: a basic block has two 3x3 convs"),
        ("bottleneck", (3, 4, 23, 3), (4, 5), "ResNet-101, conv4-conv5"),
    ]
    for block in ("bottleneck", "basic"):
        layers = tuple(int(v) for v in rng.integers(1, 6, size=4))
        lo = int(rng.integers(2, 6))
        hi = int(rng.integers(lo, 6))
        steps.append((block, layers, tuple(range(lo, hi + 1)), f"a {block} ResNet with blocks {list(layers)}"))
    cases = []
    for block, layers, stages, what in steps:
        call = f"my_conv3x3_names({block!r}, {tuple(layers)}, {tuple(stages)})"
        cases.append({"args": [block, tuple(layers), tuple(stages)], "call": call, "what": f"{call} ({what})"})
    return cases


def _as_names(got, what):
    if isinstance(got, Failed):
        raise ExerciseError(got.message(what))
    if got is None:
        raise ExerciseError(f"{what}: your function returned None -- did you forget `return`?")
    if isinstance(got, (list, tuple)) and all(isinstance(n, str) for n in got):
        return [n.strip() for n in got]
    kind = got.type_name if isinstance(got, Opaque) else type(got).__name__
    raise ExerciseError(f"{what}: expected a list of module names (strings such as 'layerN.b.convM'), got {kind}")


def _parse(name):
    """(layer index, block index, conv name) of 'layerL.B.convM', or None."""
    parts = name.split(".")
    if len(parts) != 3 or not parts[0].startswith("layer") or not parts[1].isdigit() or not parts[2].startswith("conv"):
        return None
    try:
        return int(parts[0][5:]), int(parts[1]), parts[2]
    except ValueError:
        return None


def _names_verify(case, got):
    block, layers, stages = case["args"]
    what = case["what"]
    names = _as_names(got, what)
    want = _names_ref(block, layers, stages)
    if names == want:
        return
    if sorted(names) == sorted(want):
        raise ExerciseError(f"{what}: the right names in another order.\nHint: forward order: stage by stage, block by "
                            "block, and inside a basic block its first 3x3 conv before its second")
    shifted = []  # a learner who used the papers' stage number as torchvision's layer index
    for name in want:
        layer, b, conv = _parse(name)
        shifted.append(f"layer{layer + 1}.{b}.{conv}")
    if names == shifted:
        raise ExerciseError(f"{what}: your names are one stage off.\nHint: re-read the table of stage names in §1: "
                            "the papers count the 7x7 stem as conv1, torchvision counts only the residual stages")
    bad = [n for n in names if _parse(n) is None]
    if bad:
        raise ExerciseError(f"{what}: {bad[0]!r} is not a module name of the form 'layerL.B.convM' (torchvision's "
                            "keys, e.g. the key prefix of a state dict)")
    convs = {"basic": ("conv1", "conv2"), "bottleneck": ("conv2",)}[block]
    wrong_conv = [n for n in names if _parse(n)[2] not in convs]
    if wrong_conv:
        extra = ("a bottleneck block is 1x1 (conv1), 3x3 (conv2), 1x1 (conv3): only one of them has a 3x3 kernel"
                 if block == "bottleneck" else "a basic block has no conv3: its two convs are both 3x3")
        raise ExerciseError(f"{what}: {wrong_conv[0]!r} is not a 3x3 convolution.\nHint: {extra}")
    if len(set(names)) != len(names):
        raise ExerciseError(f"{what}: a name appears twice in your list")
    for stage in sorted(set(range(2, 6))):
        layer = stage - 1
        n_got = sum(1 for n in names if _parse(n)[0] == layer)
        n_want = sum(1 for n in want if _parse(n)[0] == layer)
        if n_got != n_want:
            if stage not in stages:
                raise ExerciseError(f"{what}: you returned {n_got} convs of stage {STAGE_NAMES[stage]}, which was not "
                                    "asked for.\nHint: only the stages in `stages` (the papers' numbering, 2..5)")
            per_block = len(convs)
            hint = (f"stage {STAGE_NAMES[stage]} has {layers[stage - 2]} blocks, each with {per_block} 3x3 "
                    f"conv{'s' if per_block > 1 else ''}; blocks are numbered from 0")
            raise ExerciseError(f"{what}: stage {STAGE_NAMES[stage]}: expected {n_want} 3x3 convs, you returned "
                                f"{n_got}.\nHint: {hint}")
    blocks = [n for n in names if _parse(n)[1] >= layers[_parse(n)[0] - 1]]
    if blocks:
        raise ExerciseError(f"{what}: {blocks[0]!r} names a block the stage does not have.\nHint: blocks are numbered "
                            "from 0 to (number of blocks - 1)")
    raise ExerciseError(f"{what}: your list differs from the 3x3 convs of those stages (count {len(names)}, "
                        f"expected {len(want)})")


#: q1: ``fn(block, layers, stages)`` -> the torchvision module names (``"layerL.B.convM"``) of every 3x3 conv of the
#: ResNet stages ``stages`` (the papers' numbering, conv2..conv5 = 2..5), in forward order; ``block`` is
#: ``"basic"`` or ``"bottleneck"``, ``layers`` the blocks of conv2..conv5.
check_conv3x3_names = Question(
    _names_cases, _names_verify, seed=SEED_Q1,
    unavailable=("dcn_lessons.models.recipes:conv3x3_names", "dcn_lessons.models.recipes:place_recipe"),
)


# ---------------------------------------------------------------------------------------------- q2

def _cost_ref(c, o, h, w, modulated):
    """(params, FLOPs) that converting a 3x3 conv (stride 1, padding 1, no bias) adds, counted by the package."""
    import torch
    from torch import nn

    from dcn_lessons.models import count_flops, count_parameters
    from dcn_lessons.ops import DeformConv2dPack, ModulatedDeformConv2dPack

    with torch.device("meta"):
        plain = nn.Conv2d(c, o, 3, padding=1, bias=False)
        cls = ModulatedDeformConv2dPack if modulated else DeformConv2dPack
        deform = cls(c, o, 3, padding=1, bias=False)
    shape = (1, c, h, w)
    return (count_parameters(deform) - count_parameters(plain),
            count_flops(deform, shape).total - count_flops(plain, shape).total)


def _cost_parts(c, o, h, w, modulated):
    """The pieces of the answer, for the typical mistakes: branch params (weight, bias), branch FLOPs, sampling."""
    k = 9
    outs = (3 if modulated else 2) * k
    pix = h * w
    return {"weight": outs * c * k, "bias": outs, "branch": 2 * outs * c * k * pix,
            "sampling": (7 + (1 if modulated else 0)) * c * k * pix + 10 * k * pix, "gemm": 2 * o * c * k * pix,
            "main": o * c * k}


SEED_Q2 = 11


def _cost_cases(seed):
    rng = np.random.default_rng(seed)
    steps = [(64, 64, 56, 56, False, "DCNv1, a conv2-sized layer"), (64, 64, 56, 56, True, "DCNv2, the same layer"),
             (512, 512, 63, 63, False, "DCNv1 in a dilated conv5 at 1000 x 1000")]
    for modulated in (False, True):
        c, o = (int(v) for v in rng.choice([16, 32, 48, 128, 256], size=2))
        h, w = (int(v) for v in rng.integers(5, 40, size=2))
        steps.append((c, o, h, w, modulated, "a random layer"))
    cases = []
    for c, o, h, w, modulated, what in steps:
        call = f"my_deform_cost({c}, {o}, {h}, {w}, modulated={modulated})"
        cases.append({"args": [c, o, h, w, modulated], "call": call, "what": f"{call} ({what})"})
    return cases


def _flop_formulas():
    """The deformable operator's entries in PyTorch's FLOP registry (empty if none)."""
    import torch
    from torch.utils.flop_counter import flop_registry

    ns = torch.ops.dcn_lessons
    ops = [getattr(ns, n) for n in ("deform_conv2d", "deform_conv2d_backward") if hasattr(ns, n)]
    return flop_registry, {op: flop_registry[op] for op in ops if op in flop_registry}


def _cost_run(fn, args):
    """Run the answer with the deformable operator's FLOP formula out of PyTorch's registry (put back afterwards):
    the sampling must be the learner's own count."""
    import dcn_lessons.ops  # noqa: F401  (the operators exist before the registry is read)

    registry, saved = _flop_formulas()
    for op in saved:
        del registry[op]
    try:
        return call_answer(fn, args)
    finally:
        for op in list(registry):
            if op in saved:
                del registry[op]
        registry.update(saved)


def _as_pair(got, what):
    if isinstance(got, Failed):
        raise ExerciseError(got.message(what))
    if got is None:
        raise ExerciseError(f"{what}: your function returned None -- did you forget `return`?")
    arr = _np(got, what)
    if arr.shape != (2,):
        raise ExerciseError(f"{what}: expected two numbers (added parameters, added FLOPs), got shape {list(arr.shape)}")
    return float(arr[0]), float(arr[1])


def _size(got, want):
    return "large" if got > want else "small"


def _cost_verify(case, got):
    c, o, h, w, modulated = case["args"]
    what = case["what"]
    params, flops = _as_pair(got, what)
    want_p, want_f = _cost_ref(c, o, h, w, modulated)
    part = _cost_parts(c, o, h, w, modulated)
    kind = "DCNv2" if modulated else "DCNv1"
    p_ok, f_ok = np.isclose(params, want_p, rtol=1e-12, atol=0.5), np.isclose(flops, want_f, rtol=1e-12, atol=0.5)
    if p_ok and f_ok:
        return
    if not p_ok:
        wrong_outs = (2 if modulated else 3) * 9
        p_hints = [
            (part["weight"], "the offset branch is a conv with a bias: count the bias too"),
            (part["weight"] + part["bias"] + part["main"], "you counted the whole deformable layer: the question asks "
             "what converting adds (the main weight is the plain conv's, kept)"),
            (wrong_outs * c * 9 + wrong_outs, f"how many outputs has the branch of a {kind} layer? one per predicted "
             "number, per kernel point (re-read §3)"),
            (wrong_outs * c * 9, f"how many outputs has the branch of a {kind} layer, and does it have a bias?"),
            (part["weight"] // c * o + part["bias"], "the branch reads the layer's INPUT: its weight is "
             "[outputs, in_channels, 3, 3]"),
        ]
        for value, hint in p_hints:
            if np.isclose(params, value, rtol=1e-12, atol=0.5):
                raise ExerciseError(f"{what}: added parameters wrong (got {params:.0f}).\nHint: {hint}")
        raise ExerciseError(f"{what}: added parameters wrong (got {params:.0f}, too {_size(params, want_p)}).\nHint: "
                            "the offset branch is a plain 3x3 conv (padding 1) on the layer's input; count its weight "
                            "and bias")
    f_hints = [
        (want_f / 2, "that is multiply-adds: FlopCounterMode (and this lesson) count 2 FLOPs per multiply-add"),
        (part["branch"], "the deformable operator costs more than the plain GEMM it replaces: add the bilinear "
         "sampling and the positions (the formula of §3)"),
        (part["branch"] / 2 + part["sampling"], "the branch's conv: 2 FLOPs per multiply-add"),
        (part["sampling"], "the offset branch is a convolution too: count its FLOPs"),
        (want_f + part["gemm"], "you counted the whole deformable layer: the GEMM is the plain conv's, not added"),
        (part["branch"] + (7 + (0 if modulated else 1)) * c * 9 * h * w + 90 * h * w,
         "the mask multiply is 1 FLOP per sample in a DCNv2 layer only"),
        (part["branch"] + part["sampling"] - 90 * h * w, "the positions: 10 FLOPs per sampling position "
         "(one per kernel point and output pixel)"),
        (part["branch"] + (7 + modulated) * o * 9 * h * w + 90 * h * w, "a sample is read once per INPUT channel "
         "(the columns have C·K rows)"),
    ]
    for value, hint in f_hints:
        if np.isclose(flops, value, rtol=1e-12, atol=0.5):
            raise ExerciseError(f"{what}: added FLOPs wrong (got {flops:.0f}).\nHint: {hint}")
    raise ExerciseError(f"{what}: added FLOPs wrong (got {flops:.0f}, too {_size(flops, want_f)}).\nHint: the offset "
                        "branch's conv (2 FLOPs per multiply-add, bias not counted) plus the sampling of §3's formula")


#: q2: ``fn(in_channels, out_channels, height, width, modulated)`` -> ``(params, flops)`` that converting a 3x3 conv
#: (stride 1, padding 1, no bias, one offset group) on an input ``[1, C, H, W]`` into a DCNv1 layer
#: (``modulated=False``) or a DCNv2 layer adds, counted as ``count_parameters`` / ``count_flops`` count them.
check_deform_cost = Question(
    _cost_cases, _cost_verify, run=_cost_run, seed=SEED_Q2,
    unavailable=("dcn_lessons.models.complexity:count_flops", "dcn_lessons.models.complexity:count_parameters",
                 "dcn_lessons.models.complexity:deform_conv2d_flop"),
)
