"""Lesson 09's checks: silent on a correct answer, a teaching message on the typical wrong ones, no answer printed,
and an answer that only calls the package fails once the package's own implementation is unavailable."""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dcn_lessons.detection.boxes import box_iou
from dcn_lessons.exercises import load
from test_exercises_lesson07 import graded_without_package

CHECKS = load("lesson09")
NAMES = ["check_encode_boxes", "check_decode_boxes", "check_select_omega", "check_mimic_loss"]
CAP = math.log(1000 / 16)


#: tiny tensors: one intra-op thread (the fixture in tests/conftest.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("check", NAMES)
def test_the_unavailable_names_exist(check):
    assert CHECKS[check].unavailable
    for name in CHECKS[check].unavailable:
        module, _, attr = name.partition(":")
        assert hasattr(importlib.import_module(module), attr), name


# ------------------------------------------------------------------------------------------ q1

def centre_size(b, plus_one=0.0):
    w = b[..., 2] - b[..., 0] + plus_one
    h = b[..., 3] - b[..., 1] + plus_one
    return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, w, h


def encode(t, r, weights, plus_one=0.0, corners=False, by_target=False, log=True, sign=1.0, order=(0, 1, 2, 3),
           scale="multiply", invert=False):
    x, y, w, h = centre_size(t, plus_one)
    xr, yr, wr, hr = centre_size(r, plus_one)
    if corners:
        x, y, xr, yr = t[..., 0], t[..., 1], r[..., 0], r[..., 1]
    su, sv = (w, h) if by_target else (wr, hr)
    dw, dh = (torch.log(w / wr), torch.log(h / hr)) if log else (w / wr, h / hr)
    if invert:
        dw, dh = -dw, -dh
    out = torch.stack((sign * (x - xr) / su, sign * (y - yr) / sv, dw, dh), -1)
    wv = torch.tensor(weights, dtype=out.dtype)
    out = out * wv if scale == "multiply" else out / wv if scale == "divide" else out
    return out[..., list(order)]


def decode(d, r, weights, plus_one=0.0, cap="after", exp=True, corners=True, scale="divide", order=(0, 1, 2, 3)):
    d = d[..., list(order)]
    wv = torch.tensor(weights, dtype=d.dtype)
    dd = d / wv if scale == "divide" else d * wv
    if cap == "after":
        dd = torch.cat((dd[..., :2], dd[..., 2:].clamp(max=CAP)), -1)
    elif cap == "before":
        dd = torch.cat((dd[..., :2], d[..., 2:].clamp(max=CAP) / wv[2:]), -1)
    elif cap == "all":
        dd = dd.clamp(max=CAP)
    xr, yr, wr, hr = centre_size(r, plus_one)
    x, y = dd[..., 0] * wr + xr, dd[..., 1] * hr + yr
    w, h = (torch.exp(dd[..., 2]) * wr, torch.exp(dd[..., 3]) * hr) if exp else ((1 + dd[..., 2]) * wr,
                                                                                 (1 + dd[..., 3]) * hr)
    if not corners:
        return torch.stack((x, y, w, h), -1)
    return torch.stack((x - 0.5 * w, y - 0.5 * h, x + 0.5 * w - plus_one, y + 0.5 * h - plus_one), -1)


def test_q1_accepts_a_correct_answer(capsys):
    assert CHECKS["check_encode_boxes"](encode) is None
    assert CHECKS["check_decode_boxes"](decode) is None
    assert CHECKS["check_encode_boxes"](lambda *a: encode(*a).numpy().astype(np.float32)) is None
    assert CHECKS["check_decode_boxes"](lambda *a: decode(*a).tolist()) is None
    for seed in (1, 12345):
        CHECKS["check_encode_boxes"](encode, seed=seed)
        CHECKS["check_decode_boxes"](decode, seed=seed)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("wrong, message", [
    (lambda t, r, w: encode(t, r, w, corners=True), "top-left corners"),
    (lambda t, r, w: encode(t, r, w, plus_one=1.0), "'+1'"),
    (lambda t, r, w: encode(t, r, w, log=False), "log space"),
    (lambda t, r, w: encode(t, r, w, invert=True), "upside down"),
    (lambda t, r, w: encode(t, r, w, sign=-1.0), "wrong sign"),
    (lambda t, r, w: encode(t, r, w, by_target=True), "REFERENCE's size"),
    (lambda t, r, w: encode(t, r, w, scale="divide"), "weights multiply"),
    (lambda t, r, w: encode(t, r, w, scale="none"), "weights were left out"),
    (lambda t, r, w: encode(t, r, w, order=(1, 0, 3, 2)), "(dx, dy, dw, dh)"),
    (lambda t, r, w: encode(r, t, w), "arguments are (targets, references)"),
    (lambda t, r, w: encode(t, r, w)[..., :2], "expected shape"),
    (lambda t, r, w: encode(t, r, w) + 0.01, "numbers are wrong; the first at"),
    (lambda t, r, w: None, "returned None"),
    (lambda t, r, w: ..., "not written yet"),
])
def test_q1_encode_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_encode_boxes"](wrong)
    assert message in str(info.value)


@pytest.mark.parametrize("wrong, message", [
    (lambda d, r, w: decode(d, r, w, cap="none"), "log(1000/16)"),
    (lambda d, r, w: decode(d, r, w, cap="before"), "after taking its weight out"),
    (lambda d, r, w: decode(d, r, w, cap="all"), "only the two size deltas are capped"),
    (lambda d, r, w: decode(d, r, w, corners=False), "not the centre and the size"),
    (lambda d, r, w: decode(d, r, w, scale="multiply"), "undoes the weights"),
    (lambda d, r, w: decode(d, r, w, exp=False), "undo the log"),
    (lambda d, r, w: decode(d, r, w, plus_one=1.0), "'+1'"),
    (lambda d, r, w: decode(d, r, w, order=(1, 0, 3, 2)), "x before y"),
    (lambda d, r, w: decode(d, r, w) + 0.01, "numbers are wrong; the first at"),
    (lambda d, r, w: decode(d, r, w)[..., None], "expected shape"),
    (lambda d, r, w: 1 / 0, "raised ZeroDivisionError"),
])
def test_q1_decode_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_decode_boxes"](wrong)
    assert message in str(info.value)


def test_q1_an_uncapped_decoder_that_overflows_is_told_so():
    case = CHECKS["check_decode_boxes"].cases(0)[4]  # large deltas, the RoI head's weights
    d, r, w = case["args"]
    huge = decode(d * 1000, r, w, cap="none")
    assert not torch.isfinite(huge).all()
    with pytest.raises(AssertionError, match="not all finite"):
        CHECKS["check_decode_boxes"].judge(case, huge)


@pytest.mark.parametrize("check, fn, index", [("check_encode_boxes", encode, 1), ("check_decode_boxes", decode, 2)])
def test_q1_messages_do_not_give_the_answer_away(check, fn, index):
    for seed in (0, 4):
        case = CHECKS[check].cases(seed)[index]
        want = fn(*case["args"]).numpy()
        for wrong in (want * 1.3 + 0.7, want + 0.01):
            with pytest.raises(AssertionError) as info:
                CHECKS[check].judge(case, wrong)
            text = str(info.value)
            assert "got" in text and "expected" not in text
            for v in want.ravel():
                assert f"{v:.6g}" not in text and f"{v:.3f}" not in text


def test_q1_an_answer_that_delegates_to_the_package_fails_without_it():
    def enc(t, r, w):
        from dcn_lessons.detection.boxes import encode_boxes

        return encode_boxes(t, r, w)

    def dec(d, r, w):
        from dcn_lessons.detection.boxes import decode_boxes

        return decode_boxes(d, r, w)

    def enc_by_decoding(t, r, w):  # the other function of the pair, inverted numerically, is no way out either
        from dcn_lessons.detection.boxes import _centre_size

        x, y, ww, hh = _centre_size(t)
        xr, yr, wr, hr = _centre_size(r)
        return torch.stack((w[0] * (x - xr) / wr, w[1] * (y - yr) / hr, w[2] * torch.log(ww / wr),
                            w[3] * torch.log(hh / hr)), -1)

    for check, answer in (("check_encode_boxes", enc), ("check_decode_boxes", dec),
                          ("check_encode_boxes", enc_by_decoding)):
        assert CHECKS[check](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, check, answer)
    graded_without_package(CHECKS, "check_encode_boxes", encode)
    graded_without_package(CHECKS, "check_decode_boxes", decode)


# ------------------------------------------------------------------------------------------ q2

def omega(proposals, valid, gt_boxes, gt_valid, k, seed, threshold=0.5, strict=False, use_valid=True,
          use_gt_valid=True, across_images=False, fixed=False, per_batch=False, include_gt=False, batch_col=True,
          replace=False):
    g = torch.Generator().manual_seed(0 if fixed else seed)
    rows = []
    all_gt = gt_boxes[gt_valid] if gt_boxes.shape[1] else gt_boxes.reshape(0, 4)
    for i in range(proposals.shape[0]):
        keep = valid[i] if use_valid else torch.ones_like(valid[i])
        idx = torch.nonzero(keep).flatten()
        boxes = proposals[i][idx]
        gts = all_gt if across_images else (gt_boxes[i][gt_valid[i]] if use_gt_valid else gt_boxes[i])
        if include_gt:
            boxes = torch.cat((boxes, gt_boxes[i][gt_valid[i]]))
        if len(boxes) == 0 or len(gts) == 0:
            continue
        iou = box_iou(boxes, gts).max(dim=1).values
        cand = boxes[(iou > threshold) if strict else (iou >= threshold)]
        if replace:
            pick = cand[torch.randint(len(cand), (min(k, len(cand)),), generator=g)] if len(cand) else cand
        else:
            pick = cand[torch.randperm(len(cand), generator=g)[: (10**9 if per_batch else k)]]
        col = torch.full((len(pick), 1), float(i if batch_col else 0), dtype=pick.dtype)
        rows.append(torch.cat((col, pick), 1))
    return torch.cat(rows) if rows else torch.zeros(0, 5)


def test_q2_accepts_a_correct_answer(capsys):
    assert CHECKS["check_select_omega"](omega) is None
    assert CHECKS["check_select_omega"](lambda *a: omega(*a).numpy()) is None
    for seed in (1, 2024):
        CHECKS["check_select_omega"](omega, seed=seed)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: omega(*a, strict=True), "threshold included"),
    (lambda *a: omega(*a, threshold=0.7), "one you left out overlaps a box of its image with IoU"),
    (lambda *a: omega(*a, threshold=0.3), "is not positive"),
    (lambda *a: omega(*a, use_valid=False), "empty slot"),
    (lambda *a: omega(*a, use_gt_valid=False), "padding row of gt_boxes"),
    (lambda *a: omega(*a, across_images=True), "another image"),
    (lambda *a: omega(*a, fixed=True), "the same 4 proposals for all 4 seeds"),
    (lambda *a: omega(*a, per_batch=True), "expected at most k"),
    (lambda *a: omega(*a, include_gt=True), "ground-truth box of image"),
    (lambda *a: omega(*a, batch_col=False), "column 0 is the index of the image"),
    (lambda *a: omega(*a, replace=True), "appears twice"),
    (lambda *a: omega(*a)[:, 1:], "expected RoIs [M, 5]"),
    (lambda *a: None, "returned None"),
])
def test_q2_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_select_omega"](wrong)
    assert message in str(info.value)


def test_q2_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_branch(proposals, valid, gt_boxes, gt_valid, k, seed):
        import dataclasses

        from dcn_lessons.detection.config import load_config
        from dcn_lessons.detection.mimic import MimicBranch
        from dcn_lessons.detection.sampling import GroundTruth, match_boxes

        torch.manual_seed(seed)
        m = match_boxes(proposals, gt_boxes, gt_valid, 0.5, 0.5, candidate_valid=valid)
        gt = GroundTruth(gt_boxes, torch.ones(gt_valid.shape, dtype=torch.int64), gt_valid)
        branch = MimicBranch(1, 4, dataclasses.replace(load_config("dcnv2_mimic").mimic, rois_per_image=k))
        return branch.select(proposals, valid, m, gt).rois

    def via_sampler(proposals, valid, gt_boxes, gt_valid, k, seed):
        from dcn_lessons.detection.sampling import sample_indices

        torch.manual_seed(seed)
        best = torch.zeros(valid.shape, dtype=proposals.dtype)
        if gt_boxes.shape[1]:
            best = (box_iou(proposals, gt_boxes) * gt_valid[:, None, :]).max(2).values
        labels = torch.where((best >= 0.5) & valid, 1, -1)
        idx, ok = sample_indices(labels, k, 1.0)
        rows = torch.arange(proposals.shape[0])[:, None].expand_as(idx)
        b, i = rows[ok], idx[ok]
        return torch.cat((b[:, None].to(proposals.dtype), proposals[b, i]), 1)

    for answer in (via_branch, via_sampler):
        assert CHECKS["check_select_omega"](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_select_omega", answer)
    graded_without_package(CHECKS, "check_select_omega", omega)


# ------------------------------------------------------------------------------------------ q3

def mimic(a, b, n, how="sum", cos="F"):
    if cos == "dot":
        c = (a * b).sum(1)
    elif cos == "dim0":
        c = F.cosine_similarity(a, b, dim=0)
    else:
        c = F.cosine_similarity(a, b, dim=1)
    terms = {"neg": -c, "plus": 1 + c, "cos": c}.get(how, 1 - c)
    if how == "mean":
        return terms.mean()
    if how == "batch":
        return terms.sum()
    if how == "l2":
        return (a - b).norm(dim=1).sum() / n
    return terms.sum() / n


def test_q3_accepts_a_correct_answer(capsys):
    def by_hand(a, b, n):  # the lengths with vector_norm: a zero feature gives cosine 0 and a finite gradient
        na, nb = torch.linalg.vector_norm(a, dim=1), torch.linalg.vector_norm(b, dim=1)
        return (1 - (a * b).sum(1) / (na * nb).clamp(min=1e-8)).sum() / n

    assert CHECKS["check_mimic_loss"](mimic) is None
    assert CHECKS["check_mimic_loss"](by_hand) is None
    for seed in (1, 99):
        CHECKS["check_mimic_loss"](mimic, seed=seed)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("wrong, message", [
    (lambda a, b, n: mimic(a, b, n, how="mean"), "averaged over the boxes of Ω"),
    (lambda a, b, n: mimic(a, b, n, how="batch"), "sum over the whole batch"),
    (lambda a, b, n: mimic(a, b, n, how="cos"), "0 when the two features point the same way"),
    (lambda a, b, n: mimic(a, b, n, how="neg"), "not −cos"),
    (lambda a, b, n: mimic(a, b, n, how="plus"), "not 1 + cos"),
    (lambda a, b, n: mimic(a, b, n, cos="dot"), "divide by the lengths"),
    (lambda a, b, n: mimic(a, b, n, cos="dim0"), "along the feature axis"),
    (lambda a, b, n: mimic(a, b, n, how="l2"), "not a distance"),
    (lambda a, b, n: mimic(a, b, n).item(), "carries no gradient"),
    (lambda a, b, n: mimic(a.detach(), b.detach(), n), "carries no gradient"),
    (lambda a, b, n: (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).sum() / n, "count its cosine as 0"),
    (lambda a, b, n: (1 - (a * b).sum(1) / (((a * a).sum(1) * (b * b).sum(1)).sqrt()).clamp(min=1e-8)).sum() / n,
     "gradient holds NaN or inf"),
    (lambda a, b, n: mimic(a, b.detach(), n), "no gradient reaches f_frcnn"),
    (lambda a, b, n: mimic(a, b, n) + (a.detach() - a).sum(), "gradient with respect to f_rcnn is not"),
    (lambda a, b, n: torch.stack([mimic(a, b, n)] * 2), "expected one number"),
    (lambda a, b, n: mimic(a, b, n) + 0.1, "which is too large"),
    (lambda a, b, n: None, "returned None"),
])
def test_q3_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_mimic_loss"](wrong)
    assert message in str(info.value)


def test_q3_messages_do_not_give_the_answer_away():
    for seed in (0, 6):
        for case in CHECKS["check_mimic_loss"].cases(seed)[:4]:
            a, b, n = case["args"]
            want = float(mimic(a, b, n))
            with pytest.raises(AssertionError) as info:
                CHECKS["check_mimic_loss"].judge(case, {"value": torch.tensor(want * 1.1 + 0.05), "grad_rcnn": None,
                                                        "grad_frcnn": None, "why": ""})
            text = str(info.value)
            assert f"{want:.6g}" not in text and f"{want:.3f}" not in text and "expected" not in text


def test_q3_an_answer_that_delegates_to_the_package_fails_without_it():
    def delegate(a, b, n):
        from dcn_lessons.detection.mimic import mimic_loss

        return mimic_loss(a, b, n)

    assert CHECKS["check_mimic_loss"](delegate) is None
    with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
        graded_without_package(CHECKS, "check_mimic_loss", delegate)
    graded_without_package(CHECKS, "check_mimic_loss", mimic)
