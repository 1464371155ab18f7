"""Lesson 07's checks: silent on a correct answer, a teaching message on the typical wrong ones, no answer printed,
and an answer that only calls the package fails once the package's own implementation is unavailable."""
from __future__ import annotations

import contextlib
import importlib
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dcn_lessons.exercises import load

CHECKS = load("lesson07")


@contextlib.contextmanager
def masked(names):
    """Emulate the snapshot of the grader's second run (``dcn_lessons.grading.snapshot.mask_snapshot``): each
    ``"dcn_lessons.module:attribute"`` raises, in its module and wherever the package re-exported it."""
    with pytest.MonkeyPatch.context() as mp:
        for name in names:
            module, _, attr = name.partition(":")
            original = getattr(importlib.import_module(module), attr)

            def stand_in(*args, _name=f"{module}.{attr}", **kwargs):
                raise RuntimeError(f"{_name} is unavailable while this answer is graded")

            for other in list(sys.modules.values()):
                if getattr(other, "__name__", "").startswith("dcn_lessons") and getattr(other, attr, None) is original:
                    mp.setattr(other, attr, stand_in)
        yield


def graded_without_package(checks, check, answer, seed=0):
    """The grader's second run of ``answer``: its results collected with the check's ``unavailable`` names masked,
    then judged in the clean process (unmasked), as :mod:`dcn_lessons.grading.verdict` does."""
    q = checks[check]
    encode, decode = checks["encode"], checks["decode"]
    cases = q.cases(seed)
    with masked(q.unavailable):
        results = [decode(encode(q.run(answer, decode(encode(list(c["args"])), tensors=True)))) for c in cases]
    for case, got in zip(cases, results):
        q.judge(case, got)


@pytest.mark.parametrize("check", ["check_conv3x3_names", "check_deform_cost"])
def test_the_unavailable_names_exist(check):
    for name in CHECKS[check].unavailable:
        module, _, attr = name.partition(":")
        assert hasattr(importlib.import_module(module), attr), name


# ------------------------------------------------------------------------------------------ q1

def names(block, layers, stages, shift=0, convs=None, skip_first=False, order="stage", extra_stage=None):
    convs = convs or (("conv1", "conv2") if block == "basic" else ("conv2",))
    wanted = list(stages) + ([extra_stage] if extra_stage else [])
    out = [(s, b, c) for s in wanted for b in range(1 if skip_first else 0, layers[s - 2]) for c in convs]
    if order == "conv":
        out.sort(key=lambda t: (t[0], t[2], t[1]))
    return [f"layer{s - 1 + shift}.{b}.{c}" for s, b, c in out]


def test_q1_accepts_a_correct_answer(capsys):
    assert CHECKS["check_conv3x3_names"](names) is None
    assert CHECKS["check_conv3x3_names"](lambda *a: tuple(names(*a))) is None
    assert capsys.readouterr().out == ""


def test_q1_reference_is_the_recipes_placement():
    from dcn_lessons.models import deformable_layer_names, resnet

    for depth, recipe, stages in ((50, "dconv@c5", (5,)), (50, "mdconv@c3-c5", (3, 4, 5)), (101, "dconv@c4-c5", (4, 5))):
        with torch.device("meta"):
            model = resnet(depth, recipe=recipe)
        block = "bottleneck"
        layers = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
        assert deformable_layer_names(model) == names(block, layers, stages)


@pytest.mark.parametrize("wrong, message", [
    (lambda b, l, s: names(b, l, s, shift=1), "one stage off"),
    (lambda b, l, s: names(b, l, s, convs=("conv1",)), "is not a 3x3 convolution"),
    (lambda b, l, s: names(b, l, s, convs=("conv2",)), "stage conv5: expected 4 3x3 convs, you returned 2"),
    (lambda b, l, s: names(b, l, s, skip_first=True), "blocks are numbered from 0"),
    (lambda b, l, s: names(b, l, s, order="conv"), "the right names in another order"),
    (lambda b, l, s: names(b, l, s, extra_stage=2 if 2 not in s else None), "which was not asked for"),
    (lambda b, l, s: [n.replace(".", "_") for n in names(b, l, s)], "is not a module name"),
    (lambda b, l, s: None, "returned None"),
    (lambda b, l, s: 3, "expected a list of module names"),
    (lambda b, l, s: ..., "not written yet"),
])
def test_q1_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_conv3x3_names"](wrong)
    assert message in str(info.value)


def test_q1_messages_do_not_give_the_names_away():
    # a learner who returns nothing at all must not be told which names are missing
    for seed in (0, 1, 2):
        with pytest.raises(AssertionError) as info:
            CHECKS["check_conv3x3_names"](lambda *a: [], seed=seed)
        assert "layer" not in str(info.value), str(info.value)


def test_q1_an_answer_that_delegates_to_the_package_fails_without_it():
    def delegate(block, layers, stages):
        from dcn_lessons.models import place_recipe

        first, last = min(stages), max(stages)
        return place_recipe(f"dconv@c{first}-c{last}", block, layers)

    def via_model(block, layers, stages):  # a plain ResNet's 3x3 convs, read off its modules
        from dcn_lessons.models import ResNet

        with torch.device("meta"):
            net = ResNet(block, layers, num_classes=None)
        return [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
                and n.startswith(tuple(f"layer{s - 1}." for s in stages))]

    for answer in (delegate, via_model):
        assert CHECKS["check_conv3x3_names"](answer) is None  # right while the package is there
    for answer in (delegate, via_model):
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_conv3x3_names", answer)
    graded_without_package(CHECKS, "check_conv3x3_names", names)  # the honest answer does not need it


# ------------------------------------------------------------------------------------------ q2

def cost(c, o, h, w, modulated, branch_bias=True, outs=None, macs=False, sampling=True, whole=False):
    k = 9
    outs = outs or (3 if modulated else 2) * k
    params = outs * c * k + (outs if branch_bias else 0) + (o * c * k if whole else 0)
    flops = 2 * outs * c * k * h * w
    if sampling:
        flops += (7 + int(modulated)) * c * k * h * w + 10 * k * h * w
    if whole:
        flops += 2 * o * c * k * h * w
    return params, flops // 2 if macs else flops


def test_q2_accepts_a_correct_answer(capsys):
    assert CHECKS["check_deform_cost"](cost) is None
    assert CHECKS["check_deform_cost"](lambda *a: list(cost(*a))) is None
    assert capsys.readouterr().out == ""


def test_q2_parts_add_up_to_the_package_count():
    for args in ((64, 64, 56, 56, False), (64, 64, 56, 56, True), (17, 5, 7, 9, True), (3, 8, 5, 4, False)):
        part = CHECKS["_cost_parts"](*args)
        assert CHECKS["_cost_ref"](*args) == (part["weight"] + part["bias"], part["branch"] + part["sampling"])
        assert CHECKS["_cost_ref"](*args) == cost(*args)


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: cost(*a, macs=True), "2 FLOPs per multiply-add"),
    (lambda *a: cost(*a, branch_bias=False), "count the bias too"),
    (lambda c, o, h, w, m: cost(c, o, h, w, m, outs=18), "how many outputs has the branch of a DCNv2 layer"),
    (lambda *a: cost(*a, sampling=False), "add the bilinear sampling and the positions"),
    (lambda *a: cost(*a, whole=True), "you counted the whole deformable layer"),
    (lambda *a: (cost(*a)[0], cost(*a)[1] + 1000), "added FLOPs wrong (got"),
    (lambda *a: cost(*a)[0], "expected two numbers"),
    (lambda *a: None, "returned None"),
    (lambda *a: 1 / 0, "raised ZeroDivisionError"),
])
def test_q2_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_deform_cost"](wrong)
    assert message in str(info.value)


def test_q2_messages_do_not_give_the_answer_away():
    for seed in (0, 5):
        for case in CHECKS["check_deform_cost"].cases(seed):
            p, f = cost(*case["args"])
            with pytest.raises(AssertionError) as info:
                CHECKS["check_deform_cost"].judge(case, (p + 7, f + 7))
            assert str(p) not in str(info.value) and str(f) not in str(info.value)


def _counted_with_package(c, o, h, w, modulated):
    from dcn_lessons.models import count_flops, count_parameters
    from dcn_lessons.ops import DeformConv2dPack, ModulatedDeformConv2dPack

    with torch.device("meta"):
        plain = nn.Conv2d(c, o, 3, padding=1, bias=False)
        layer = (ModulatedDeformConv2dPack if modulated else DeformConv2dPack)(c, o, 3, padding=1, bias=False)
    return (count_parameters(layer) - count_parameters(plain),
            count_flops(layer, (1, c, h, w)).total - count_flops(plain, (1, c, h, w)).total)


def _counted_with_flop_counter(c, o, h, w, modulated):
    from dcn_lessons.ops import DeformConv2dPack, ModulatedDeformConv2dPack

    with torch.device("meta"):
        plain = nn.Conv2d(c, o, 3, padding=1, bias=False)
        layer = (ModulatedDeformConv2dPack if modulated else DeformConv2dPack)(c, o, 3, padding=1, bias=False)
        x = torch.empty(1, c, h, w)
        with FlopCounterMode(display=False) as a:
            plain(x)
        with FlopCounterMode(display=False) as b:
            layer(x)
    params = sum(p.numel() for p in layer.parameters()) - sum(p.numel() for p in plain.parameters())
    return params, b.get_total_flops() - a.get_total_flops()


def test_q2_an_answer_that_delegates_to_the_package_fails_without_it():
    assert CHECKS["check_deform_cost"](_counted_with_package) is None  # right while the package is there
    # counting a package layer with FlopCounterMode: the operator's formula is out of the registry while it runs
    with pytest.raises(AssertionError, match="added FLOPs wrong"):
        CHECKS["check_deform_cost"](_counted_with_flop_counter)
    from dcn_lessons.models import count_flops

    assert count_flops(nn.Conv2d(1, 1, 1), (1, 1, 2, 2)).total == 8  # the registry is whole again afterwards
    with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
        graded_without_package(CHECKS, "check_deform_cost", _counted_with_package)
    graded_without_package(CHECKS, "check_deform_cost", cost)


def test_q2_run_restores_the_flop_registry():
    from torch.utils.flop_counter import flop_registry

    before = {k: v for k, v in flop_registry.items() if "dcn_lessons" in str(k)}
    assert len(before) == 2
    with pytest.raises(AssertionError):
        CHECKS["check_deform_cost"](lambda *a: 1 / 0)
    assert {k: v for k, v in flop_registry.items() if "dcn_lessons" in str(k)} == before
