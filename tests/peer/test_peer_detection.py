"""The detector's box arithmetic against torchvision's (collected only where torchvision imports):
``box_iou``, ``nms`` and ``batched_nms`` against ``torchvision.ops``, box coding against the ``BoxCoder`` of
torchvision's Faster R-CNN.

    cd /work/main && DCN_LESSONS_PEER=1 PYTHONPATH=$PWD /tmp/peer/bin/python -m pytest tests/peer -q

Where we differ on purpose: IoU of two boxes whose union is empty (torchvision NaN, ours 0), and ties in score
(torchvision's order among equal scores is not specified; ours keeps the lower index first): the cases below use
distinct scores and boxes of positive area.
"""
from __future__ import annotations

import math

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection._utils import BoxCoder  # noqa: E402

from dcn_lessons.detection import boxes as B  # noqa: E402


def clustered(n: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(6, 2, generator=g) * 200
    c = centres[torch.randint(0, 6, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 6
    wh = 4 + torch.rand(n, 2, generator=g) * 40
    scores = torch.randperm(n, generator=g).to(dtype) / n
    return torch.cat((c - wh / 2, c + wh / 2), 1).to(dtype), scores


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_equals_torchvision(dtype):
    a, _ = clustered(70, 0, dtype)
    b, _ = clustered(50, 1, dtype)
    torch.testing.assert_close(B.box_iou(a, b), torchvision.ops.box_iou(a, b))


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("n", [1, 30, 400])
def test_nms_equals_torchvision(thr, n):
    boxes, scores = clustered(n, 2 + n)
    assert B.nms(boxes, scores, thr).tolist() == torchvision.ops.nms(boxes, scores, thr).tolist()


@pytest.mark.parametrize("loop_above", [2000, 10])
def test_batched_nms_equals_torchvision(loop_above, monkeypatch):
    monkeypatch.setattr(B, "_BATCHED_NMS_LOOP_ABOVE", loop_above)
    boxes, scores = clustered(300, 7)
    idxs = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(8))
    for thr in (0.3, 0.5, 0.7):
        ours = B.batched_nms(boxes, scores, idxs, thr)
        theirs = torchvision.ops.batched_nms(boxes, scores, idxs, thr)
        assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coding_equals_torchvisions_box_coder(weights):
    gt, _ = clustered(200, 9, torch.float64)
    ref, _ = clustered(200, 10, torch.float64)
    coder = BoxCoder(weights, bbox_xform_clip=math.log(1000.0 / 16))
    t = B.encode_boxes(gt, ref, weights)
    torch.testing.assert_close(t, coder.encode_single(gt, ref))
    deltas = t + torch.randn(t.shape, generator=torch.Generator().manual_seed(0), dtype=t.dtype)
    deltas[:5, 2:] = 20.0  # beyond the clamp
    torch.testing.assert_close(B.decode_boxes(deltas, ref, weights), coder.decode_single(deltas, ref))
