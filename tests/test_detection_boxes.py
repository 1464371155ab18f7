"""Box arithmetic, anchors, matching and sampling of the detector (dcn_lessons.detection.boxes, anchors, sampling),
each against a brute-force loop written from the definition."""
from __future__ import annotations

import math

import pytest
import torch

from dcn_lessons.detection import boxes as B
from dcn_lessons.detection.anchors import base_anchors, grid_anchors
from dcn_lessons.detection.sampling import (
    GroundTruth,
    match_boxes,
    matched_gt,
    pad_targets,
    sample_indices,
    sample_mask,
)


def random_boxes(n: int, gen: torch.Generator, size: float = 100.0, min_side: float = 1.0,
                 dtype=torch.float64) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * size
    wh = min_side + torch.rand(n, 2, generator=gen, dtype=dtype) * size / 2
    return torch.cat((xy, xy + wh), 1)


def iou_loop(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def greedy_nms_loop(boxes, scores, thr) -> list[int]:
    """Greedy NMS from its definition: visit by decreasing score (ties: lower index first), keep a box unless a
    kept box overlaps it by more than thr."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(iou_loop(boxes[i], boxes[j]) <= thr for j in kept):
            kept.append(i)
    return kept


# --------------------------------------------------------------------------------------------- IoU
def test_box_iou_matches_the_loop_and_broadcasts():
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(7, g), random_boxes(5, g)
    b[0] = a[0]                                       # identical pair: 1
    b[1] = torch.tensor([500.0, 500.0, 510.0, 510.0])  # disjoint: 0
    b[2] = torch.tensor([3.0, 3.0, 3.0, 9.0])          # zero width
    got = B.box_iou(a, b)
    want = torch.tensor([[iou_loop(x.tolist(), y.tolist()) for y in b] for x in a], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    assert got[0, 0] == 1.0 and (got[:, 1] == 0).all() and (got[:, 2] == 0).all()
    batched = B.box_iou(torch.stack([a, a.flip(0)]), torch.stack([b, b]))
    assert batched.shape == (2, 7, 5)
    torch.testing.assert_close(batched[1], want.flip(0))


def test_box_iou_of_two_degenerate_boxes_is_zero_not_nan():
    p = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    assert B.box_iou(p, p).item() == 0.0


# ------------------------------------------------------------------------------------- box coding
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_is_the_rcnn_parametrisation_and_decode_inverts_it(weights):
    g = torch.Generator().manual_seed(1)
    gt, ref = random_boxes(50, g), random_boxes(50, g)
    t = B.encode_boxes(gt, ref, weights)
    wx, wy, ww, wh = weights
    for k in range(50):
        x1, y1, x2, y2 = gt[k].tolist()
        r1, s1, r2, s2 = ref[k].tolist()
        w, h, wr, hr = x2 - x1, y2 - y1, r2 - r1, s2 - s1
        want = [wx * ((x1 + w / 2) - (r1 + wr / 2)) / wr, wy * ((y1 + h / 2) - (s1 + hr / 2)) / hr,
                ww * math.log(w / wr), wh * math.log(h / hr)]
        assert t[k].tolist() == pytest.approx(want, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(B.decode_boxes(t, ref, weights), gt)


def test_decode_clamps_the_size_deltas():
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]], dtype=torch.float64)
    out = B.decode_boxes(torch.tensor([[0.0, 0.0, 50.0, -3.0]], dtype=torch.float64), ref)
    w, h = (out[0, 2] - out[0, 0]).item(), (out[0, 3] - out[0, 1]).item()
    assert w == pytest.approx(10 * 1000 / 16) and h == pytest.approx(20 * math.exp(-3))
    assert out[0, 0] + out[0, 2] == pytest.approx(10.0)  # centre kept


def test_clip_boxes_per_image():
    boxes = torch.tensor([[[-5.0, -1.0, 200.0, 50.0]], [[10.0, 20.0, 30.0, 300.0]]])
    sizes = torch.tensor([[40, 100], [64, 64]])
    out = B.clip_boxes(boxes, sizes[:, None, :])
    assert out.tolist() == [[[0.0, 0.0, 100.0, 40.0]], [[10.0, 20.0, 30.0, 64.0]]]


# --------------------------------------------------------------------------------------------- NMS
def clustered(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes in a few dense clusters (long suppression chains) and distinct scores."""
    centres = torch.rand(4, 2, generator=gen, dtype=torch.float64) * 80
    c = centres[torch.randint(0, 4, (n,), generator=gen)] + torch.randn(n, 2, generator=gen, dtype=torch.float64) * 4
    wh = 8 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 12
    return torch.cat((c - wh / 2, c + wh / 2), 1), torch.randperm(n, generator=gen).to(torch.float64)


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("rounds", [16, 1])  # 1: the sequential fallback runs
def test_nms_matches_the_greedy_loop(thr, rounds, monkeypatch):
    monkeypatch.setattr(B, "_NMS_ROUNDS", rounds)
    g = torch.Generator().manual_seed(2)
    for n in (0, 1, 60):
        boxes, scores = clustered(n, g)
        keep = B.nms(boxes, scores, thr)
        assert keep.dtype == torch.int64
        assert keep.tolist() == greedy_nms_loop(boxes.tolist(), scores.tolist(), thr)


def test_nms_ties_and_threshold_strictness():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([1.0, 2.0, 1.0])  # IoU(box 0, box 1) = 0.5 exactly: not above 0.5, kept
    assert B.nms(boxes, scores, 0.5).tolist() == [1, 0]  # 2 duplicates 0 (IoU 1); tie: lower index first
    assert B.nms(boxes, scores, 0.49).tolist() == [1]


def test_nms_mask_batched_with_validity_equals_nms_per_image():
    g = torch.Generator().manual_seed(3)
    imgs = [clustered(40, g) for _ in range(3)]
    valid = torch.rand(3, 40, generator=g) > 0.3
    sorted_boxes = []
    for (bx, sc) in imgs:
        order = torch.argsort(sc, descending=True)
        sorted_boxes.append(bx[order])
    keep = B.nms_mask(torch.stack(sorted_boxes), 0.4, valid)
    for i, bx in enumerate(sorted_boxes):
        idx = valid[i].nonzero().flatten()
        sub = B.nms(bx[idx], -idx.to(torch.float64), 0.4)  # already sorted: score = -position
        assert keep[i].nonzero().flatten().tolist() == idx[sub].tolist()


@pytest.mark.parametrize("loop_above", [2000, 5])  # 5: the per-category loop runs
def test_batched_nms_never_suppresses_across_categories(loop_above, monkeypatch):
    monkeypatch.setattr(B, "_BATCHED_NMS_LOOP_ABOVE", loop_above)
    g = torch.Generator().manual_seed(4)
    boxes, scores = clustered(50, g)
    idxs = torch.randint(0, 3, (50,), generator=g)
    keep = B.batched_nms(boxes, scores, idxs, 0.5)
    want = []
    for c in range(3):
        members = (idxs == c).nonzero().flatten().tolist()
        kept = greedy_nms_loop([boxes[i].tolist() for i in members], [scores[i].item() for i in members], 0.5)
        want += [members[k] for k in kept]
    assert sorted(keep.tolist()) == sorted(want)
    assert (scores[keep][:-1] >= scores[keep][1:]).all()  # by decreasing score


# ------------------------------------------------------------------------------------------ anchors
def test_base_anchors_sizes_ratios_and_order():
    a = base_anchors([16, 32], [0.5, 1.0, 2.0], dtype=torch.float64)
    assert a.shape == (6, 4)
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    torch.testing.assert_close(w * h, torch.tensor([16.0, 32.0] * 3, dtype=torch.float64) ** 2)
    torch.testing.assert_close(h / w, torch.tensor([0.5, 0.5, 1.0, 1.0, 2.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(a[:, :2] + a[:, 2:], torch.zeros(6, 2, dtype=torch.float64))  # centred at 0


def test_grid_anchors_count_centres_and_order():
    base = base_anchors([8, 24], [1.0, 2.0])
    a = grid_anchors(base, (3, 5), 16)
    assert a.shape == (3 * 5 * 4, 4)
    centres = (0.5 * (a[:, :2] + a[:, 2:])).view(3, 5, 4, 2)
    for i in range(3):
        for j in range(5):
            assert (centres[i, j] == torch.tensor([(j + 0.5) * 16, (i + 0.5) * 16])).all()
    torch.testing.assert_close(a.view(3, 5, 4, 4)[2, 1] - torch.tensor([24.0, 40.0] * 2), base)


def test_anchor_arguments_are_checked():
    with pytest.raises(ValueError, match="sizes, aspect_ratios"):
        base_anchors([16, -1], [1.0])


# --------------------------------------------------------------------------------- matching and sampling
def gt_of(*rows, labels=None) -> GroundTruth:
    boxes = [torch.tensor(r, dtype=torch.float32).reshape(-1, 4) for r in rows]
    labs = [torch.arange(1, b.shape[0] + 1) if labels is None else torch.tensor(labels[i]) for i, b in enumerate(boxes)]
    return pad_targets(boxes, labs, torch.device("cpu"))


def test_match_boxes_thresholds_low_quality_and_padding():
    gt = gt_of([[0, 0, 10, 10], [100, 100, 120, 120]], [])  # image 1 has no box
    cands = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 14], [0, 0, 20, 20], [50, 50, 60, 60], [100, 100, 110, 110]],
                         dtype=torch.float32)
    ious = [1.0, 100 / 140, 0.25, 0.0, 0.25]
    m = match_boxes(cands.expand(2, -1, -1), gt.boxes, gt.valid, 0.7, 0.3)
    torch.testing.assert_close(m.iou[0], torch.tensor(ious))
    assert m.labels[0].tolist() == [1, 1, 0, 0, 0]
    assert m.gt_index[0].tolist()[:2] == [0, 0] and m.gt_index[0, 4] == 1
    assert m.labels[1].tolist() == [0] * 5 and (m.iou[1] == 0).all()  # no ground truth: all background
    # low quality: candidate 4 is box 1's best (IoU 0.25 < 0.7) and becomes positive
    m = match_boxes(cands.expand(2, -1, -1), gt.boxes, gt.valid, 0.7, 0.3, low_quality=True)
    assert m.labels[0].tolist() == [1, 1, 0, 0, 1]
    # ignored band and invalid candidates; a band starting above 0
    valid = torch.tensor([[True, True, True, False, True]] * 2)
    m = match_boxes(cands.expand(2, -1, -1), gt.boxes, gt.valid, 0.8, 0.5, 0.1, candidate_valid=valid)
    assert m.labels[0].tolist() == [1, -1, 0, -1, 0]
    assert m.labels[1].tolist() == [-1] * 5  # IoU 0 is below bg_iou_low = 0.1


def test_match_boxes_and_matched_gt_without_any_ground_truth():
    gt = gt_of([], [])
    assert gt.boxes.shape == (2, 0, 4)
    m = match_boxes(torch.rand(2, 3, 4).sort(-1).values, gt.boxes, gt.valid, 0.5, 0.5)
    assert (m.labels == 0).all()
    boxes, labels = matched_gt(gt, m.gt_index)
    assert boxes.shape == (2, 3, 4) and (labels == 0).all()


def test_sampling_counts_and_proportions():
    torch.manual_seed(0)
    labels = torch.tensor([[1] * 10 + [0] * 100 + [-1] * 20, [1] * 40 + [0] * 5 + [-1] * 85, [0] * 3 + [-1] * 127])
    for _ in range(20):
        m = sample_mask(labels, 32, 0.25)
        pos, neg = (m & (labels == 1)).sum(1), (m & (labels == 0)).sum(1)
        assert pos.tolist() == [8, 8, 0] and neg.tolist() == [24, 5, 3]
        assert not (m & (labels == -1)).any()
    idx, valid = sample_indices(labels, 32, 0.25)
    assert idx.shape == (3, 32) and valid.sum(1).tolist() == [32, 13, 3]
    picked = labels.gather(1, idx)
    assert (picked[0, :8] == 1).all() and (picked[0, 8:] == 0).all()  # foreground first
    assert (picked[1, :8] == 1).all() and (picked[1, 8:13] == 0).all()


def test_sampling_is_uniform_over_the_candidates():
    torch.manual_seed(1)
    labels = torch.tensor([[1] * 8 + [0] * 8])
    counts = torch.zeros(16)
    for _ in range(400):
        counts += sample_mask(labels, 8, 0.25)[0].float()
    # each positive is drawn with probability 2/8, each negative with 6/8: 100 and 300 of 400 on average
    assert (counts[:8] - 100).abs().max() < 40 and (counts[8:] - 300).abs().max() < 40
