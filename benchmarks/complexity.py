"""Parameters and FLOPs of the papers' networks beside the papers' own figures -> benchmarks/results/complexity.md.

    .venv/bin/python benchmarks/complexity.py            # writes benchmarks/results/complexity.md (a few seconds)
    .venv/bin/python benchmarks/complexity.py --print    # prints it instead

Everything is counted by ``dcn_lessons.models.count_flops`` (PyTorch's ``FlopCounterMode``, with the formula this
package registers for the deformable operator) on the ``meta`` device: shapes only, nothing is computed, so the
machine does not matter and a 1000-pixel ResNet-101 costs nothing.

The detection rows need a Faster R-CNN. The course's detector (lesson 09) is not this file's business; for
counting, :class:`FasterRCNNCounted` puts together the layers of DCNv1's released Faster R-CNN
(``faster_rcnn/symbols/resnet_v1_101_rcnn_dcn.py`` and its COCO config in msracver/Deformable-ConvNets): RPN on
conv4 (3x3 conv to 512, 12 anchors), conv5 dilated (stride 16), a 1x1 conv + ReLU reducing conv5 to 256 channels,
7x7 RoI pooling of 300 RoIs (the test-time proposals), two fc layers of 1024, 81 classes and class-specific boxes.
The RoI pooling operators themselves have no FLOP formula (as for any pooling in ``FlopCounterMode``); their fc
branches are counted.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dcn_lessons.models import count_flops, count_parameters, resnet, resnet_backbone
from dcn_lessons.ops import ModulatedDeformRoIPoolPack, RoIAlign

OUT = Path(__file__).resolve().parent / "results" / "complexity.md"
G = 1e9
M = 1e6

#: DCNv1's released Faster R-CNN (code and COCO config): what FasterRCNNCounted builds.
RELEASED = dict(rpn_channels=512, anchors=12, reduce_channels=256, pooled=7, rois=300, fc=1024, classes=81)


class PaperMdpool(nn.Module):
    """Modulated deformable RoI pooling with ONE fc branch for offsets and mask together: fc(C*7*7 -> 1024), fc(1024
    -> 1024), fc(1024 -> 3*7*7) (our reading of DCNv2 §3.3). For counting only: the second pooling is a plain
    RoIAlign here (the pooling op has no FLOP formula either way), so only the branch's shapes matter."""

    def __init__(self, channels: int, pooled: int, hidden: int, spatial_scale: float) -> None:
        super().__init__()
        self.pool = RoIAlign(pooled, spatial_scale, 2)
        self.branch = nn.Sequential(nn.Linear(channels * pooled * pooled, hidden), nn.ReLU(),
                                    nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3 * pooled * pooled))

    def forward(self, x: Tensor, rois: Tensor) -> Tensor:
        pooled = self.pool(x, rois)
        self.branch(pooled.flatten(1))
        return self.pool(x, rois)


class ReleasedDpool(nn.Module):
    """DCNv1's deformable RoI pooling as released: offsets = fc(C*7*7 -> 2*7*7) on the plain pooled features. For
    counting only (the second pooling is a plain RoIAlign: no FLOP formula for pooling either way)."""

    def __init__(self, channels: int, pooled: int, spatial_scale: float) -> None:
        super().__init__()
        self.pool = RoIAlign(pooled, spatial_scale, 2)
        self.offset = nn.Linear(channels * pooled * pooled, 2 * pooled * pooled)

    def forward(self, x: Tensor, rois: Tensor) -> Tensor:
        self.offset(self.pool(x, rois).flatten(1))
        return self.pool(x, rois)


class FasterRCNNCounted(nn.Module):
    """DCNv1's released Faster R-CNN, as a network to count (no proposals, no losses; see the module docstring)."""

    def __init__(self, depth: int, recipe: Optional[str], pool: str = "align", offset_groups: int = 1,
                 stride_in_1x1: bool = True, rpn_channels: int = 512, anchors: int = 12, reduce_channels: int = 256,
                 pooled: int = 7, rois: int = 300, fc: int = 1024, classes: int = 81) -> None:
        super().__init__()
        self.backbone = resnet_backbone(depth, recipe=recipe, offset_groups=offset_groups, dilate_conv5=True,
                                        reduce_channels=reduce_channels, stride_in_1x1=stride_in_1x1, frozen_stages=0)
        c4 = self.backbone.out_channels["conv4"]
        self.rpn_conv = nn.Conv2d(c4, rpn_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(rpn_channels, 2 * anchors, 1)
        self.rpn_box = nn.Conv2d(rpn_channels, 4 * anchors, 1)
        scale = 1.0 / self.backbone.strides["conv5"]
        if pool == "align":
            self.pool: nn.Module = RoIAlign(pooled, scale, 2)
        elif pool == "mdpool":  # the course's layer (mmcv's design): separate offset and mask branches
            self.pool = ModulatedDeformRoIPoolPack(pooled, in_channels=reduce_channels, deform_fc_channels=fc,
                                                   spatial_scale=scale)
        elif pool == "mdpool-paper":
            self.pool = PaperMdpool(reduce_channels, pooled, fc, scale)
        elif pool == "dpool-released":
            self.pool = ReleasedDpool(reduce_channels, pooled, scale)
        else:
            raise ValueError(f"pool: expected 'align', 'mdpool', 'mdpool-paper' or 'dpool-released', got {pool!r}")
        self.fc1 = nn.Linear(reduce_channels * pooled * pooled, fc)
        self.fc2 = nn.Linear(fc, fc)
        self.cls = nn.Linear(fc, classes)
        self.box = nn.Linear(fc, 4 * classes)
        self.rois = rois

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        feats = self.backbone(images)
        h = F.relu(self.rpn_conv(feats["conv4"]))
        rpn = (self.rpn_cls(h), self.rpn_box(h))
        rois = images.new_zeros(self.rois, 5)  # 300 proposals of image 0 (their values do not change the count)
        x = self.pool(feats["conv5"], rois).flatten(1)
        x = F.relu(self.fc2(F.relu(self.fc1(x))))
        return (*rpn, self.cls(x), self.box(x))


def meta(fn, *args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return fn(*args, **kwargs).eval()


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def section_imagenet() -> list[str]:
    published = {  # (params, multiply-adds) as published; the ResNet paper gives no parameter count
        (50, False): "torchvision: 25.6M, 4.09 GFLOPS (multiply-adds)",
        (101, False): "torchvision: 44.5M, 7.80 GFLOPS (multiply-adds)",
        (50, True): "ResNet paper, Table 1: 3.8 x 10^9 FLOPs (multiply-adds)",
        (101, True): "ResNet paper, Table 1: 7.6 x 10^9 FLOPs (multiply-adds)",
    }
    lines = ["## 1. The ImageNet networks (224 x 224, with the classifier)", "",
             row("network", "stride in", "params", "GFLOPs (PyTorch: 2 per multiply-add)", "G multiply-adds",
                 "published"),
             row(*["---"] * 6)]
    for depth in (50, 101):
        for s1 in (False, True):
            m = meta(resnet, depth, stride_in_1x1=s1)
            r = count_flops(m, (1, 3, 224, 224))
            lines.append(row(f"ResNet-{depth}", "1x1 (Caffe/MSRA)" if s1 else "3x3 (torchvision)",
                             f"{count_parameters(m) / M:.2f}M", f"{r.total / G:.2f}", f"{r.macs / G:.2f}",
                             published[(depth, s1)]))
    lines += ["", "Both figures match once the conventions agree: torchvision and the ResNet paper count "
              "multiply-adds and call them FLOPs; PyTorch's `FlopCounterMode` counts 2 FLOPs per multiply-add. "
              "The ResNet paper's network strides in the first 1x1 conv of a block, torchvision's (\"ResNet v1.5\") "
              "in the 3x3 conv, which then runs at the higher resolution: +0.23 G multiply-adds for ResNet-50. "
              "The DCN papers start from the MSRA (Caffe) models, so the detection rows below stride in the 1x1 "
              "conv. Parameters do not depend on where the stride sits.", ""]
    return lines


def section_recipes() -> list[str]:
    lines = ["## 2. What each recipe adds to the trunk (no classifier, conv5 dilated, stride in 1x1)", "",
             "At 224 x 224 and at a 1000 x 1000 image. \"Offset branches\" are the plain convs that predict offsets "
             "(and masks); \"sampling\" is what the deformable operator costs beyond the GEMM of the plain conv it "
             "replaces (bilinear samples, mask multiply, positions: the formula of "
             "`dcn_lessons.models.complexity`).", "",
             row("trunk", "recipe", "deformable layers", "params", "+ params", "GFLOPs @224", "+ GFLOPs @224",
                 "GFLOPs @1000", "+ GFLOPs @1000", "of which sampling @1000", "sampling / replaced GEMM"),
             row(*["---"] * 11)]
    for depth in (50, 101):
        base = None
        for recipe in (None, "dconv@c5", "dconv@c4-c5", "dconv@c3-c5", "mdconv@c3-c5"):
            m = meta(resnet, depth, num_classes=None, dilate_conv5=True, stride_in_1x1=True, recipe=recipe)
            p = count_parameters(m)
            f224 = count_flops(m, (1, 3, 224, 224))
            f1000 = count_flops(m, (1, 3, 1000, 1000))
            sampling, share = 0, ""
            if recipe is not None:  # the deformable op's count minus the GEMM its plain conv would have cost
                gemm = _gemm_of_deformable_layers(m, (1, 3, 1000, 1000))
                sampling = f1000.by_operator["dcn_lessons.deform_conv2d"] - gemm
                share = f"{100 * sampling / gemm:.1f} %"
            if base is None:
                base = (p, f224.total, f1000.total)
            lines.append(row(f"ResNet-{depth}", recipe or "none", len(m.deformable_layers), f"{p / M:.2f}M",
                             f"{(p - base[0]) / M:.3f}M", f"{f224.total / G:.2f}", f"{(f224.total - base[1]) / G:.2f}",
                             f"{f1000.total / G:.1f}", f"{(f1000.total - base[2]) / G:.1f}", f"{sampling / G:.2f}",
                             share))
    lines += ["", "ResNet-50 has 13 3x3 convs in conv3-conv5 (4 + 6 + 3 bottleneck blocks, one 3x3 each), "
              "ResNet-101 has 30; DCNv2 §3.1 counts 12 for ResNet-50. Most of the added FLOPs are the offset "
              "branches' (a plain 3x3 conv with 18 or 27 outputs on the same input); the sampling costs "
              "(7 + mask) / (2 x output channels) of the replaced conv's GEMM, plus the positions: a few "
              "per cent where the convs are narrow (conv3, 128 channels), under 1 % in conv5 (512).", ""]
    return lines


def _gemm_of_deformable_layers(model: nn.Module, shape: tuple[int, ...]) -> int:
    """2 * multiply-adds of the plain convs the deformable layers replace, from their output sizes."""
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda mod, i, o, n=n: sizes.__setitem__(n, tuple(o.shape))) for n in model.deformable_layers]
    with torch.no_grad():
        model(torch.empty(shape, device="meta"))
    for h in hooks:
        h.remove()
    total = 0
    for n, (b, o, ho, wo) in sizes.items():
        w = model.get_submodule(n).weight
        total += 2 * b * o * w.shape[1] * w.shape[2] * w.shape[3] * ho * wo
    return total


def _detection_rows(depth: int, variants, sizes) -> dict[str, tuple[int, list]]:
    out = {}
    for name, kw in variants:
        m = meta(FasterRCNNCounted, depth, **kw)
        out[name] = (count_parameters(m), [count_flops(m, (1, 3, *hw)) for hw in sizes])
    return out


def section_dcnv2() -> list[str]:
    sizes = [(1000, 1000), (1000, 1333)]
    variants = [
        ("regular", dict(recipe=None)),
        ("dconv@c3-c5", dict(recipe="dconv@c3-c5")),
        ("mdconv@c3-c5", dict(recipe="mdconv@c3-c5")),
        ("mdconv@c3-c5 + mdpool, one fc branch", dict(recipe="mdconv@c3-c5", pool="mdpool-paper")),
        ("mdconv@c3-c5 + mdpool, the course's layer", dict(recipe="mdconv@c3-c5", pool="mdpool")),
    ]
    paper = {"regular": ("51.3M", "326.7"), "mdconv@c3-c5 + mdpool, one fc branch": ("65.5M", "346.2"),
             "mdconv@c3-c5 + mdpool, the course's layer": ("65.5M", "346.2")}
    res = _detection_rows(50, variants, sizes)
    lines = ["## 3. DCNv2 Table 1: Faster R-CNN, ResNet-50, shorter side 1000", "",
             "Our network is `FasterRCNNCounted` (this script): the layers of DCNv1's released Faster R-CNN (RPN: 3x3 "
             "conv to 512 on conv4, 12 anchors; conv5 dilated to stride 16; 1x1 conv to 256 + ReLU; 7x7 RoI pooling "
             "of 300 RoIs; 2 fc of 1024; 81 classes, class-specific boxes), ResNet striding in the 1x1 conv. mdpool "
             "comes in two forms: \"one fc branch\" predicts offsets and masks together (fc 1024, fc 1024, fc to "
             "3 x 49: our reading of DCNv2 §3.3); \"the course's layer\" is `dcn_lessons.ops.ModulatedDeformRoIPoolPack` "
             "(mmcv's design: a separate 3-layer fc branch for the masks). DCNv2 gives the shorter side only; we "
             "count a square 1000 x 1000 image and a 4:3 one, 1000 x 1333.", "",
             row("variant", "params", "GFLOPs 1000x1000", "GFLOPs 1000x1333", "paper params", "paper GFLOPs"),
             row(*["---"] * 6)]
    for name, (p, fl) in res.items():
        pp, pf = paper.get(name, ("", ""))
        lines.append(row(name, f"{p / M:.1f}M", f"{fl[0].total / G:.1f}", f"{fl[1].total / G:.1f}", pp, pf))
    p0, (sq0, wide0) = res["regular"]
    pd, (sqd, wided) = res["mdconv@c3-c5 + mdpool, one fc branch"]
    pc, (sqc, widec) = res["mdconv@c3-c5 + mdpool, the course's layer"]
    pm, (sqm, widem) = res["mdconv@c3-c5"]
    bym = wide0.by_module
    trunk = sum(v for k, v in bym.items() if k.startswith("backbone.body.") and k.count(".") == 2)
    rpn = sum(bym.get(k, 0) for k in ("rpn_conv", "rpn_cls", "rpn_box"))
    head = sum(bym.get(k, 0) for k in ("fc1", "fc2", "cls", "box"))
    lines += [
        "",
        f"Where the regular network's FLOPs go at 1000 x 1333: trunk (conv1-conv5) {trunk / G:.1f} G, 1x1 reduction "
        f"{bym.get('backbone.conv5_reduce', 0) / G:.1f} G, RPN {rpn / G:.1f} G, RoI head {head / G:.1f} G "
        "(300 RoIs).",
        "",
        "The differences, one by one:",
        "",
        "* **Convention.** The paper's figures fit 2 FLOPs per multiply-add, PyTorch's convention: counted in "
        f"multiply-adds our whole network is {sq0.total / 2 / G:.1f} G (1000 x 1000) to {wide0.total / 2 / G:.1f} G "
        f"(1000 x 1333), about half of 326.7 G; counted as 2 per multiply-add it is {sq0.total / G:.1f} to "
        f"{wide0.total / G:.1f} G, which brackets it.",
        f"* **What the deformable parts add** is where we can compare most directly. The paper: +14.2M parameters "
        f"and +19.5 GFLOPs for mdconv@c3-c5 + mdpool. Ours with the one-branch mdpool: +{(pd - p0) / M:.1f}M "
        f"(mdconv@c3-c5's 13 offset/mask branches {(pm - p0) / M:.2f}M, the mdpool branch {(pd - pm) / M:.2f}M) and "
        f"+{(sqd.total - sq0.total) / G:.1f} GFLOPs at 1000 x 1000 (+{(wided.total - wide0.total) / G:.1f} at 1000 x "
        f"1333): the FLOPs agree at the square size; our parameters are {(pd - p0) / M - 14.2:.1f}M more, which we "
        "have not accounted for. The course's two-branch layer adds "
        f"+{(pc - p0) / M:.1f}M: its separate mask branch costs another {(pc - pd) / M:.1f}M and "
        f"{(sqc.total - sqd.total) / G:.1f} GFLOPs, so it is not the paper's layer by size.",
        f"* **The whole network.** Our regular network has {p0 / M:.1f}M parameters, {51.3 - p0 / M:.1f}M fewer than "
        f"the paper's 51.3M, and {sq0.total / G:.1f} GFLOPs at 1000 x 1000 / {wide0.total / G:.1f} at 1000 x 1333 "
        "against 326.7. Our ResNet-50 trunk is exact (section 1), so the gap is in the heads; the released DCNv1 "
        "head is the only one we can check here, and it does not reproduce the paper's totals. We do not know "
        "which head, image size or RoI count the paper counted, and say so rather than fit one. (One coincidence "
        f"worth naming, not an explanation: our trunk alone at 1000 x 1333, {trunk / G:.1f} G, is within "
        f"{abs(trunk / G / 326.7 - 1) * 100:.1f} % of 326.7 G.)",
        "",
    ]
    return lines


def section_dcnv1() -> list[str]:
    sizes = [(600, 1000)]
    variants = [
        ("regular", dict(recipe=None)),
        ("dconv@c5 (4 offset groups, as released) + dpool (one fc, as released)",
         dict(recipe="dconv@c5", offset_groups=4, pool="dpool-released")),
        ("dconv@c5 (1 offset group) + dpool (one fc)", dict(recipe="dconv@c5", pool="dpool-released")),
    ]
    res = _detection_rows(101, variants, sizes)
    paper = {"regular": "58.3M", "dconv@c5 (4 offset groups, as released) + dpool (one fc, as released)": "59.9M"}
    lines = ["## 4. DCNv1 Table 4: Faster R-CNN, ResNet-101 (parameters; the table gives run times, not FLOPs)", "",
             "The same network with ResNet-101; DCNv1's deformable version converts the three 3x3 convs of conv5 "
             "(`dconv@c5`) and replaces RoI pooling by deformable RoI pooling, whose offsets come from one fc layer "
             "on the pooled 256 x 7 x 7 features (the released code; DCNv1 Eq. 6). FLOPs at the released test size, "
             "shorter side 600 (the config's SCALES: 600, at most 1000), here 600 x 1000.", "",
             row("variant", "params", "GFLOPs 600x1000", "paper params"), row(*["---"] * 4)]
    for name, (p, fl) in res.items():
        lines.append(row(name, f"{p / M:.1f}M", f"{fl[0].total / G:.1f}", paper.get(name, "")))
    p0 = res["regular"][0]
    p4 = res["dconv@c5 (4 offset groups, as released) + dpool (one fc, as released)"][0]
    p1 = res["dconv@c5 (1 offset group) + dpool (one fc)"][0]
    lines += ["", f"The deformable parts add {(p4 - p0) / M:.2f}M as released (4 offset groups in conv5: 3 x 331,848 "
              f"= 1.00M; the dpool fc 12,544 x 98 + 98 = 1.23M) and {(p1 - p0) / M:.2f}M with one offset group; the "
              f"paper's difference is 1.6M, between the two. The totals differ by {(p0 / M) - 58.3:+.1f}M (ours "
              "larger here, smaller in section 3): our ResNet-101 trunk is exact (section 1), so this is the head "
              "again, and the released head does not reproduce the paper's total; we leave it unexplained rather "
              "than fit a head to the number.", ""]
    return lines


def build(args: argparse.Namespace) -> str:
    lines = ["# Parameters and FLOPs of the papers' networks", "",
             f"Made by `benchmarks/complexity.py` (torch {torch.__version__}); counted with "
             "`torch.utils.flop_counter.FlopCounterMode` on the meta device (shapes only, so no machine is "
             "involved). FLOPs: PyTorch's convention, 2 per multiply-add, biases and elementwise ops not counted; "
             "the deformable operator by the formula registered in `dcn_lessons/models/complexity.py`.", ""]
    lines += section_imagenet()
    lines += section_recipes()
    lines += section_dcnv2()
    lines += section_dcnv1()
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true", help="print the report instead of writing the file")
    args = ap.parse_args(argv)
    text = build(args)
    if args.print:
        sys.stdout.write(text)
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=OUT.parent, prefix=OUT.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, OUT)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
