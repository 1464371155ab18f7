"""The detector (dcn_lessons.detection.model, rpn, roi_head, mimic, inputs): losses on hand-made cases, every
config in train and eval mode, the zero-initialised RoI pooling heads, R-CNN feature mimicking, COCO results and
the checks of bad input. Tiny batches (64-pixel images): the whole file runs in seconds."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from dcn_lessons.detection import SynthSpec, SyntheticDetection, collate_detection
from dcn_lessons.detection.boxes import encode_boxes
from dcn_lessons.detection.config import load_config
from dcn_lessons.detection.mimic import MimicBranch, mimic_loss
from dcn_lessons.detection.model import DeformableFasterRCNN, to_coco_results
from dcn_lessons.detection.roi_head import RoIHead, RoISample
from dcn_lessons.detection.rpn import RegionProposalNetwork
from dcn_lessons.detection.sampling import Matches, pad_targets

CPU_CONFIGS = ["regular", "dcnv1", "dcnv2", "dcnv2_mimic"]
SPEC = SynthSpec(image_size=(64, 64), objects=(1, 2), distractors=(0, 1))


@pytest.fixture(scope="module")
def batch():
    ds = SyntheticDetection("train", length=3, spec=SPEC, data_seed=5)
    return collate_detection([ds[i] for i in range(3)]), ds


def model_of(name: str, num_classes: int = 8, seed: int = 0, **mimic) -> DeformableFasterRCNN:
    cfg = load_config(name)
    if mimic:
        cfg = dataclasses.replace(cfg, mimic=dataclasses.replace(cfg.mimic, **mimic))
    torch.manual_seed(seed)
    return DeformableFasterRCNN(cfg, num_classes)


def smooth_l1(x: float, beta: float) -> float:
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


# ------------------------------------------------------------------------------------- hand-made losses
def test_rpn_loss_on_a_hand_made_case():
    cfg = dataclasses.replace(load_config("regular").rpn, anchor_sizes=(8.0, 16.0), aspect_ratios=(1.0,),
                              batch_per_image=256)
    rpn = RegionProposalNetwork(4, cfg).train()
    anchors = rpn.anchors(torch.zeros(1, 4, 1, 2))  # a 1x2 map: anchors at (8, 8) and (24, 8)
    assert anchors.tolist() == [[4, 4, 12, 12], [0, 0, 16, 16], [20, 4, 28, 12], [16, 0, 32, 16]]
    gt = pad_targets([torch.tensor([[0.0, 0.0, 16.0, 16.0]])], [torch.tensor([3])], torch.device("cpu"))
    # IoUs 0.25, 1, 0, 0: one positive, three negatives, all four sampled (256 per image)
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    d = [0.1, -0.2, 0.05, 0.3]
    deltas = torch.zeros(1, 4, 4)
    deltas[0, 1] = torch.tensor(d)
    deltas[0, 0] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # a negative's deltas do not count
    losses = rpn.loss(anchors, logits, deltas, torch.tensor([[16, 32]]), gt)
    want_cls = (bce(0.5, 0) + bce(-1.0, 1) + bce(2.0, 0) + bce(0.0, 0)) / 4
    want_box = sum(smooth_l1(v, 1 / 9) for v in d) / 4  # target: the anchor is the box, t* = 0
    assert losses["loss_rpn_cls"].item() == pytest.approx(want_cls, rel=1e-6)
    assert losses["loss_rpn_box"].item() == pytest.approx(want_box, rel=1e-6)


def test_rpn_ignores_anchors_in_the_padding():
    cfg = dataclasses.replace(load_config("regular").rpn, anchor_sizes=(16.0,), aspect_ratios=(1.0,))
    rpn = RegionProposalNetwork(4, cfg).train()
    anchors = rpn.anchors(torch.zeros(1, 4, 1, 2))
    gt = pad_targets([torch.tensor([[0.0, 0.0, 16.0, 16.0]])], [torch.tensor([1])], torch.device("cpu"))
    logits = torch.tensor([[0.0, 3.0]])
    # image 16 x 16: the second anchor (centre x = 24) lies in the padding, its logit must not count
    losses = rpn.loss(anchors, logits, torch.zeros(1, 2, 4), torch.tensor([[16, 16]]), gt)
    assert losses["loss_rpn_cls"].item() == pytest.approx(bce(0.0, 1), rel=1e-6)


def test_roi_head_loss_on_a_hand_made_case():
    head = RoIHead(4, 3, load_config("regular").roi_head)
    t0 = [0.5, -0.25, 2.0, 0.1]
    sample = RoISample(boxes=torch.zeros(1, 3, 4), valid=torch.tensor([[True, True, False]]),
                       labels=torch.tensor([[2, 0, 1]]),
                       targets=torch.tensor([[t0, [0.0] * 4, [1.0] * 4]]),
                       proposal_matches=None)  # type: ignore[arg-type]
    logits = torch.tensor([[0.1, 0.2, 1.5, -0.3], [2.0, 0.0, 0.5, 0.0], [0.0, 9.0, 0.0, 0.0]])
    deltas = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    losses = head.loss(logits, deltas, sample)

    def ce(row, k):
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))

    want_cls = (ce(logits[0].tolist(), 2) + ce(logits[1].tolist(), 0)) / 2  # the invalid slot is left out
    want_box = sum(smooth_l1(p - t, 1.0) for p, t in zip(deltas[0, 2].tolist(), t0)) / 2  # class 2's deltas only
    assert losses["loss_cls"].item() == pytest.approx(want_cls, rel=1e-6)
    assert losses["loss_box"].item() == pytest.approx(want_box, rel=1e-6)


def test_roi_sampling_labels_and_targets():
    torch.manual_seed(0)
    cfg = dataclasses.replace(load_config("regular").roi_head, batch_per_image=8, positive_fraction=0.25)
    head = RoIHead(4, 5, cfg)
    gt = pad_targets([torch.tensor([[10.0, 10.0, 50.0, 50.0]])], [torch.tensor([4])], torch.device("cpu"))
    props = torch.tensor([[[12.0, 10.0, 50.0, 52.0], [30.0, 30.0, 60.0, 60.0], [0, 0, 5, 5], [40, 40, 63, 63],
                           [11.0, 11.0, 49.0, 49.0], [0, 30, 20, 60]]])
    s = head.sample(props, torch.tensor([[True] * 5 + [False]]), gt)
    assert s.boxes.shape == (1, 7, 4)  # N = min(8, 6 proposals + 1 box)
    fg = s.labels[0] > 0
    assert fg.sum() == 2 and (s.labels[0][fg] == 4).all()  # at most 8 * 0.25 foreground, class of the box
    assert s.valid[0].sum() == 5  # 2 of the 3 foreground candidates, the 3 valid background; never the invalid one
    torch.testing.assert_close(s.targets[0][fg], encode_boxes(gt.boxes[0, :1].expand(2, 4), s.boxes[0][fg],
                                                                cfg.box_weights))
    assert (s.targets[0][~fg] == 0).all()
    assert s.proposal_matches.iou.shape == (1, 6)


# ------------------------------------------------------------------------------------- every config
@pytest.mark.parametrize("name", CPU_CONFIGS)
def test_every_config_trains_and_detects(name, batch):
    b, ds = batch
    model = model_of(name, ds.num_classes).train()
    losses = model(b.images, b.targets)
    want = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    if name == "dcnv2_mimic":
        want |= {"loss_mimic", "loss_mimic_cls"}
    assert set(losses) == want
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.roi_head.fc6.weight.grad.abs().sum() > 0 and model.backbone.body.conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        dets = model(b.images, b.sizes)
    assert len(dets) == 3
    for d, (h, w) in zip(dets, b.sizes.tolist()):
        n = d["boxes"].shape[0]
        assert d["boxes"].shape == (n, 4) and d["scores"].shape == (n,) and d["labels"].dtype == torch.int64
        assert 0 < n <= model.cfg.roi_head.detections_per_image  # a fresh head scores every class about 1/(C+1)
        assert (d["scores"] > model.cfg.roi_head.score_thresh).all() and (d["scores"][:-1] >= d["scores"][1:]).all()
        assert ((d["labels"] >= 1) & (d["labels"] <= ds.num_classes)).all()
        bx = d["boxes"]
        assert (bx[:, 0] >= 0).all() and (bx[:, 2] <= w).all() and (bx[:, 1] >= 0).all() and (bx[:, 3] <= h).all()


@pytest.mark.parametrize("name", ["coco/regular", "coco/dcnv1", "coco/dcnv2", "coco/dcnv2_mimic"])
def test_paper_sized_configs_build(name):
    with torch.device("meta"):
        model = DeformableFasterRCNN(name)
    cfg = model.cfg
    assert model.num_classes == 80 and cfg.rpn.post_nms_train == 2000 and cfg.rpn.post_nms_test == 1000
    assert cfg.rpn.batch_per_image == 256 and cfg.roi_head.batch_per_image == 512
    assert cfg.solver.lr == 0.02 and cfg.solver.images_per_batch == 16 and cfg.input.test_size == 1000
    assert model.backbone.body.layers == (3, 4, 6, 3) and model.roi_head.fc6.out_features == 1024
    assert (model.mimic is not None) == name.endswith("mimic")
    if model.mimic is not None:
        assert model.mimic.cfg.rois_per_image == 32 and model.mimic.cfg.crop_size == 224


def test_the_reduction_conv_starts_as_dcnv1_only_on_a_pretrained_trunk():
    from dcn_lessons.detection.model import build_backbone

    cfg = load_config("regular").backbone
    torch.manual_seed(0)
    scratch = build_backbone(cfg).conv5_reduce.weight
    assert scratch.std().item() == pytest.approx(math.sqrt(2 / cfg.reduce_channels), rel=0.1)  # He, fan_out
    frozen = build_backbone(dataclasses.replace(cfg, norm="frozen_bn")).conv5_reduce.weight
    assert frozen.std().item() == pytest.approx(0.01, rel=0.1)  # DCNv1's N(0, 0.01)


@pytest.mark.parametrize("stride", [16, 8, 4])
def test_output_stride_sets_the_maps_anchors_and_pooling_scale(stride):
    cfg = load_config("regular")
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, output_stride=stride, width=0.25))
    model = DeformableFasterRCNN(cfg, 8)
    feats = model.backbone(torch.rand(1, 3, 64, 96))
    assert feats["conv4"].shape[-2:] == feats["conv5"].shape[-2:] == (64 // stride, 96 // stride)
    assert model.backbone.strides == {"conv4": stride, "conv5": stride}
    assert model.rpn.stride == stride and model.roi_head.pool.spatial_scale == 1 / stride
    anchors = model.rpn.anchors(feats["conv4"])
    centres = 0.5 * (anchors[:, :2] + anchors[:, 2:])
    assert centres.min() == stride / 2 and centres[:, 0].max() == 96 - stride / 2


def test_param_groups_carry_the_papers_multipliers():
    for name, conv_mult, fc_mult in (("dcnv1", 1.0, 0.01), ("dcnv2", 0.1, 0.1)):
        model = model_of(name)
        mults = {n: g["lr_mult"] for g in model.param_groups(0.02) for n in g["param_names"]}
        offsets = [n for n in mults if ".conv_offset." in n]
        assert offsets and all(mults[n] == conv_mult for n in offsets)
        fcs = [n for n in mults if n.startswith("roi_head.pool.")]
        assert fcs and all(mults[n] == fc_mult for n in fcs)
        assert mults["roi_head.fc6.weight"] == 1.0 and mults["backbone.body.conv1.weight"] == 1.0
    assert {g["lr_mult"] for g in model_of("regular").param_groups(0.02)} == {1.0}


# ------------------------------------------------------------------------------ zero-initialised pools
def test_fresh_deformable_heads_equal_the_aligned_head():
    torch.manual_seed(0)
    cfg = load_config("regular").roi_head
    heads = {p: RoIHead(16, 3, dataclasses.replace(cfg, pool=p, sampling_ratio=2)) for p in ("align", "dpool", "mdpool")}
    for p in ("dpool", "mdpool"):
        missing, unexpected = heads[p].load_state_dict(heads["align"].state_dict(), strict=False)
        assert not unexpected and all(k.startswith("pool.") for k in missing)
    feature = torch.randn(2, 16, 6, 7)
    boxes = torch.tensor([[0, 3.0, 5.0, 60.0, 40.0], [1, 20.0, 0.0, 100.0, 90.0], [1, 50.0, 50.0, 58.0, 53.0]])
    plain = heads["align"].pool(feature, boxes)
    torch.testing.assert_close(heads["dpool"].pool(feature, boxes), plain)
    torch.testing.assert_close(heads["mdpool"].pool(feature, boxes), 0.5 * plain)  # sigmoid(0) = 0.5
    torch.testing.assert_close(heads["dpool"].box_features(feature, boxes), heads["align"].box_features(feature, boxes))


# ------------------------------------------------------------------------------------------ mimicking
def test_mimic_loss_values():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    assert mimic_loss(f, f.clone(), 2).item() == pytest.approx(0.0, abs=1e-7)
    assert mimic_loss(f, -f, 2).item() == pytest.approx(3.0)  # (2 + 2 + 2) / 2 images
    assert mimic_loss(f, -f, 2, "mean").item() == pytest.approx(2.0)
    g = torch.tensor([[0.0, 1.0], [1.0, 0.0], [3.0, 4.0]])
    assert mimic_loss(f, g, 1).item() == pytest.approx(2.0)  # 1 + 1 + 0
    assert mimic_loss(f[:0], g[:0], 1).item() == 0.0


def omega_case(model: DeformableFasterRCNN):
    """One 64-pixel image with two boxes and hand-made proposals around them (so Ω is known)."""
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    gt = pad_targets([torch.tensor([[8.0, 8.0, 30.0, 40.0], [36.0, 20.0, 60.0, 44.0]])], [torch.tensor([2, 5])],
                     torch.device("cpu"))
    props = torch.tensor([[[9.0, 8.0, 30.0, 41.0], [36.0, 21.0, 59.0, 44.0], [8.0, 12.0, 28.0, 38.0],
                           [0.0, 0.0, 10.0, 10.0], [40.0, 0.0, 64.0, 12.0], [14.0, 20.0, 40.0, 50.0]]])
    valid = torch.tensor([[True] * 6])
    matches = model.roi_head.sample(props, valid, gt).proposal_matches
    return images, gt, props, valid, matches


def test_omega_is_drawn_from_the_proposals_by_region():
    model = model_of("dcnv2_mimic")
    images, gt, props, valid, m = omega_case(model)
    fg = (m.iou[0] >= 0.5).nonzero().flatten().tolist()
    assert fg == [0, 1, 2]
    for regions, want in (("fg", fg), ("bg", [3, 4, 5]), ("fg_bg", list(range(6)))):
        branch = MimicBranch(8, 256, dataclasses.replace(model.mimic.cfg, regions=regions, rois_per_image=8))
        om = branch.select(props, valid, m, gt)
        rows = sorted(props[0].tolist().index(r[1:]) for r in om.rois.tolist())
        assert rows == want and (om.rois[:, 0] == 0).all()  # proposals only: no ground-truth box added
        assert om.labels.tolist() == [[2, 5, 2][want.index(i)] if i in fg else 0 for i in sorted(rows)] or \
            sorted(om.labels.tolist()) == sorted([2, 5, 2][fg.index(i)] if i in fg else 0 for i in rows)
    branch = MimicBranch(8, 256, dataclasses.replace(model.mimic.cfg, rois_per_image=2))
    torch.manual_seed(0)
    draws = {tuple(sorted(map(tuple, branch.select(props, valid, m, gt).rois.tolist()))) for _ in range(30)}
    assert all(len(d) == 2 for d in draws) and len(draws) == 3  # 2 of the 3 positives, drawn at random


def test_mimic_gradients_reach_the_shared_fc_and_the_trunk():
    model = model_of("dcnv2_mimic").train()
    images, gt, props, valid, m = omega_case(model)
    om = model.mimic.select(props, valid, m, gt)
    x = images - 0.5
    conv5 = model.backbone(x)["conv5"]
    f_frcnn = model.roi_head.box_features(conv5, om.rois)
    losses = model.mimic(x, om, f_frcnn, model.backbone, model.roi_head)
    assert losses["loss_mimic"].item() > 0
    losses["loss_mimic"].backward(retain_graph=True)
    assert model.roi_head.fc7.weight.grad.abs().sum() > 0 and model.roi_head.fc6.weight.grad.abs().sum() > 0
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    assert model.mimic.rcnn_cls.weight.grad is None  # the mimic loss does not touch the R-CNN classifier
    model.zero_grad()
    losses["loss_mimic_cls"].backward()
    assert model.mimic.rcnn_cls.weight.grad.abs().sum() > 0 and model.roi_head.fc7.weight.grad.abs().sum() > 0
    # identical features: zero loss
    S = float(model.mimic.cfg.crop_size)
    same = model.mimic(x, om, model.roi_head.box_features(model.backbone(model.mimic.crops(x, om.rois))["conv5"],
                                                          torch.tensor([[k, 0, 0, S, S] for k in range(3)], dtype=torch.float32)),
                       model.backbone, model.roi_head)
    assert same["loss_mimic"].item() == pytest.approx(0.0, abs=1e-5)


def test_an_empty_omega_gives_zero_losses_that_reach_every_branch_parameter():
    # a batch with no positive proposal: the losses are zero, and every parameter of the branch still gets a
    # (zero) gradient, so DistributedDataParallel sees the same parameters used on every step
    model = model_of("dcnv2_mimic").train()
    images, gt, props, valid, m = omega_case(model)
    om = model.mimic.select(props, torch.zeros_like(valid), m, gt)
    assert om.rois.shape[0] == 0
    f_frcnn = torch.zeros(0, 256, requires_grad=True)
    losses = model.mimic(images - 0.5, om, f_frcnn, model.backbone, model.roi_head)
    assert all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    for name, p in model.mimic.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0, name


def test_the_crops_leave_batchnorm_running_statistics_alone():
    cfg = load_config("dcnv2_mimic")
    model = DeformableFasterRCNN(dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, norm="bn")), 8)
    model.train()
    images, gt, props, valid, m = omega_case(model)
    om = model.mimic.select(props, valid, m, gt)
    bn = model.backbone.body.bn1
    before = bn.running_mean.clone()
    model.mimic(images, om, torch.zeros(om.rois.shape[0], 256), model.backbone, model.roi_head)
    assert torch.equal(bn.running_mean, before) and bn.momentum == 0.1
    model.backbone(images)  # the detector's own pass does update them
    assert not torch.equal(bn.running_mean, before)


def test_mimic_crops_are_the_boxes_resized():
    """On a linear ramp bilinear resampling is exact: output pixel (i, j) of a crop of box (x1, y1, x2, y2) is
    the image at the centre of its cell, x = x1 + (j + 0.5)·w/S in pixel edges (x − 0.5 in pixel indices)."""
    model = model_of("dcnv2_mimic")
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    img = torch.stack((xs, ys, 2 * xs - ys))[None]  # channel values: pixel index x, y, 2x - y
    for box in ([8.0, 16.0, 40.0, 32.0], [2.0, 3.0, 62.0, 60.5], [20.0, 20.0, 30.0, 50.0]):
        crops = model.mimic.crops(img, torch.tensor([[0.0] + box]))
        s = model.mimic.cfg.crop_size
        assert crops.shape == (1, 3, s, s)
        x1, y1, x2, y2 = box
        c = (torch.arange(float(s)) + 0.5) / s
        x = (x1 + c * (x2 - x1) - 0.5)[None, :].expand(s, s)
        y = (y1 + c * (y2 - y1) - 0.5)[:, None].expand(s, s)
        torch.testing.assert_close(crops[0], torch.stack((x, y, 2 * x - y)), atol=1e-4, rtol=0)


def test_mimic_branch_leaves_inference_unchanged(batch, monkeypatch):
    b, ds = batch
    with_branch = model_of("dcnv2_mimic", ds.num_classes)
    without = model_of("dcnv2_mimic", ds.num_classes, seed=1, enabled=False)
    assert without.mimic is None
    missing = without.load_state_dict({k: v for k, v in with_branch.state_dict().items() if not k.startswith("mimic.")})
    assert not missing.missing_keys and not missing.unexpected_keys
    for m in (with_branch, without):
        m.eval()

    def refuse(*a, **k):
        raise AssertionError("the mimic branch ran at inference")

    monkeypatch.setattr(MimicBranch, "forward", refuse)
    monkeypatch.setattr(MimicBranch, "select", refuse)
    with torch.no_grad():
        a, c = with_branch(b.images, b.sizes), without(b.images, b.sizes)
    for da, dc in zip(a, c):
        assert da.keys() == dc.keys() and all(torch.equal(da[k], dc[k]) for k in da)


def test_the_mimic_branch_starts_at_its_fraction_of_training(batch, monkeypatch):
    b, ds = batch
    model = model_of("dcnv2_mimic", ds.num_classes, start=0.5).train()
    assert model.mimic_active  # never told where training is: the branch runs from the first step
    selected, crops = [], []
    select, crop = MimicBranch.select, MimicBranch.crops
    monkeypatch.setattr(MimicBranch, "select", lambda self, *a: selected.append(1) or select(self, *a))
    monkeypatch.setattr(MimicBranch, "crops", lambda self, *a: crops.append(1) or crop(self, *a))
    for iteration, active in ((0, False), (4, False), (5, True), (9, True)):
        model.set_iteration(iteration, 10)  # round(0.5 * 10) = 5: steps 5..9 mimic
        assert model.mimic_active is active
        n = len(selected)
        losses = model(b.images, b.targets)
        assert (len(selected) > n) is active
        if not active:  # zeros, no crops, and a (zero) gradient for every parameter of the branch (DDP)
            assert losses["loss_mimic"].item() == 0 == losses["loss_mimic_cls"].item() and not crops
            model.zero_grad()
            sum(losses.values()).backward()
            for name, p in model.mimic.named_parameters():
                assert p.grad is not None and torch.count_nonzero(p.grad) == 0, name
    paper = model_of("dcnv2_mimic", start=0.0)
    paper.set_iteration(0, 10)
    assert paper.mimic_active and not model_of("dcnv2").mimic_active
    for bad in ((-1, 10), (1, 0), (1.5, 10)):
        with pytest.raises(ValueError, match=r"iteration, iterations: expected ints"):
            model.set_iteration(*bad)


def test_mimic_without_any_positive_gives_zero_losses_attached_to_the_graph():
    model = model_of("dcnv2_mimic").train()
    images = torch.rand(1, 3, 64, 64)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images, targets)
    assert losses["loss_mimic"].item() == 0 and losses["loss_mimic"].requires_grad
    sum(losses.values()).backward()
    assert model.mimic.rcnn_cls.weight.grad is not None


# ---------------------------------------------------------------------------------------- COCO results
def test_to_coco_results_maps_labels_and_boxes_back_to_the_file():
    dets = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "scores": torch.tensor([0.9]),
             "labels": torch.tensor([2])}]
    # the file was 200 x 100 (h, w), shown at 100 x 50 and flipped
    targets = [{"image_id": 7, "size": torch.tensor([100, 50]), "orig_size": torch.tensor([200, 100]),
                "flipped": True}]
    res = to_coco_results(dets, targets, cat_ids=[5, 11, 13])
    assert res == [{"image_id": 7, "category_id": 11, "bbox": [40.0, 40.0, 40.0, 80.0], "score": 0.9}]
    with pytest.raises(ValueError, match="cat_ids"):
        to_coco_results([{**dets[0], "labels": torch.tensor([4])}], targets, cat_ids=[5, 11, 13])


# ---------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_the_argument_named():
    model = model_of("regular").train()
    img = torch.rand(2, 3, 64, 64)

    def tgt(boxes, labels=(1,), size=(64, 64)):
        return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
                "size": torch.tensor(size)}

    ok = tgt([[1.0, 2.0, 30.0, 40.0]])
    cases = [
        ((torch.rand(2, 1, 64, 64), [ok, ok]), ValueError, r"images: expected a batch \[B, 3, H, W\]"),
        ((torch.rand(3, 64, 64), [ok, ok]), ValueError, r"images: expected a batch"),
        ((img.to(torch.int64), [ok, ok]), TypeError, r"images: expected a floating-point tensor"),
        ((img, [ok]), ValueError, r"targets: expected 2 target dicts"),
        ((img, [ok, tgt([[1.0, 2.0, 70.0, 40.0]])]), ValueError, r"targets\[1\]\['boxes'\]: row 0 .* outside the image"),
        ((img, [ok, tgt([[1.0, 2.0, 30.0, 40.0]], size=(32, 32))]), ValueError, r"targets\[1\]\['boxes'\].*outside"),
        ((img, [tgt([[5.0, 2.0, 5.0, 40.0]]), ok]), ValueError, r"targets\[0\]\['boxes'\]: row 0 .* zero or negative area"),
        ((img, [tgt([[5.0, 2.0, 9.0, float("nan")]]), ok]), ValueError, r"targets\[0\]\['boxes'\].*non-finite"),
        ((img, [ok, tgt([[1.0, 2.0, 30.0, 40.0]], labels=(9,))]), ValueError, r"targets\[1\]\['labels'\]: entry 0 = 9"),
        ((img, [ok, tgt([[1.0, 2.0, 30.0, 40.0]], labels=(0,))]), ValueError, r"targets\[1\]\['labels'\].*1\.\.8"),
        ((img, [ok, {"boxes": ok["boxes"]}]), ValueError, r"targets\[1\]: expected a dict with 'boxes'"),
        ((img, [ok, {**ok, "labels": torch.tensor([1.0])}]), TypeError, r"targets\[1\]\['labels'\]: expected an int"),
        ((img, [ok, {**ok, "boxes": torch.zeros(1, 5)}]), ValueError, r"targets\[1\]\['boxes'\]: expected shape \[n, 4\]"),
        ((img, [ok, tgt([[1.0, 2.0, 30.0, 40.0]], size=(80, 64))]), ValueError, r"sizes: row 1 = \[80, 64\]"),
        ((img, torch.tensor([[64, 64], [64, 64]])), ValueError, r"targets: in training mode"),
    ]
    for (images, second), exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            model(images, second)
    model.eval()
    for second, exc, pattern in [(torch.tensor([[64, 64]]), ValueError, r"sizes: expected shape \[2, 2\]"),
                                 (torch.tensor([[64, 64], [0, 64]]), ValueError, r"sizes: row 1 = \[0, 64\]"),
                                 (torch.tensor([[64.0, 64.0]] * 2), TypeError, r"sizes: expected an integer tensor"),
                                 (None, ValueError, r"sizes: expected the \(h, w\)")]:
        with pytest.raises(exc, match=pattern):
            model(img, second)
    with torch.no_grad():
        assert len(model(img, [[64, 64], [50, 40]])) == 2  # a list of pairs is fine


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="num_classes"):
        DeformableFasterRCNN("regular", num_classes=0)
    with pytest.raises(TypeError, match="cfg"):
        DeformableFasterRCNN(3)  # type: ignore[arg-type]
