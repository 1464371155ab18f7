"""How far the trained detectors' deformable layers moved from their plain start (issue 13): a script, not a test.

    python benchmarks/capstone_offsets.py                  # the ablation's runs under runs/ablation
    python benchmarks/capstone_offsets.py --runs DIR --images 64

Every offset and mask branch starts at zero (a fresh layer equals its plain counterpart, the mask at 0.5), so
what a trained branch outputs is what training taught it. For each ``runs/<config>/seed<k>/checkpoint.pt`` of a
deformable config, on the first ``--images`` images of the validation split in eval mode, with forward hooks on
the offset branches:

* **deformable / modulated conv**: the mean |Δ| over every offset channel and position, in cells of the layer's
  input map (DCNv1 Eq. 2's Δp_k; multiply by the map's stride for image pixels), and the mean of the mask
  sigmoid(m_k) (DCNv2 Eq. 1) where there is one;
* **deformable RoI pooling**: the mean |γ·offset| (DCNv1 Eq. 6's normalised offset, γ = 0.1), in units of the
  RoI's width or height: 0.01 moves a bin by a hundredth of the box.

Means over seeds go to ``benchmarks/results/capstone_offsets.md``, with each layer's learning-rate multiplier.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def offset_magnitudes(model, cfg, images: int) -> dict[str, float]:
    """``{layer: mean |Δ|}`` (and ``{layer + " mask": mean mask}``) of a trained detector on ``images`` val images.
    Each deformable layer's input is caught with a forward hook and passed again through the layer's own
    ``offset_and_mask`` (conv) or :func:`~dcn_lessons.analysis.sampling.roi_pack_offsets` (RoI pooling)."""
    import torch

    from dcn_lessons.analysis.sampling import roi_pack_offsets
    from dcn_lessons.detection import collate_detection
    from dcn_lessons.detection.cli import eval_dataset
    from dcn_lessons.ops.layers import DeformConv2dPack
    from dcn_lessons.ops.roi_layers import DeformRoIPoolPack

    ds = eval_dataset(cfg, None, None, "warn", length=images)
    batch = collate_detection([ds[i] for i in range(min(images, len(ds)))])
    inputs: dict[str, tuple] = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (DeformConv2dPack, DeformRoIPoolPack))}
    handles = [m.register_forward_hook(lambda mod, args, out, name=n: inputs.__setitem__(name, args))
               for n, m in layers.items()]
    try:
        with torch.no_grad():
            model(batch.images, batch.sizes)
    finally:
        for h in handles:
            h.remove()
    out = {}
    with torch.no_grad():
        for name, layer in layers.items():
            if isinstance(layer, DeformConv2dPack):  # ModulatedDeformConv2dPack is one too
                offset, mask = layer.offset_and_mask(inputs[name][0])
            else:
                offset, _ = roi_pack_offsets(layer, *inputs[name])
                offset, mask = layer.gamma * offset, None
            out[name] = offset.abs().mean().item()
            if mask is not None:
                out[name + " mask"] = mask.mean().item()
    return out


def multipliers(model) -> dict[str, float]:
    """``{layer: lr_mult}`` of the offset branches, from the model's optimizer groups."""
    out = {}
    for g in model.param_groups(1.0):
        for n in g["param_names"]:
            for branch in (".conv_offset.", ".offset_fc."):
                if branch in n:
                    out[n.split(branch)[0]] = g["lr_mult"]
    return out


def measure(checkpoint: Path, images: int) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`offset_magnitudes` and :func:`multipliers` of the run in ``checkpoint``."""
    from dcn_lessons.detection.cli import load_run
    from dcn_lessons.detection.config import config_from_dict

    model, state = load_run(str(checkpoint))
    return offset_magnitudes(model, config_from_dict(state["config"]["detector"]), images), multipliers(model)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/ablation", help="the ablation's run folders (default: runs/ablation)")
    p.add_argument("--images", type=int, default=32, help="validation images (default: 32)")
    p.add_argument("--results", default=str(HERE / "results"), help="where capstone_offsets.md goes")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error(f"--images: expected an int >= 1, got {args.images}")
    runs = Path(args.runs)
    lines = ["# How far the deformable layers moved (capstone ablation runs)", "",
             f"Mean over the seeds' runs under `{runs}`, on the first {args.images} validation images "
             "(`benchmarks/capstone_offsets.py`). Conv offsets in cells of the layer's input map, RoI offsets "
             "(γ·offset) in units of the RoI's size; masks start at 0.5, offsets at 0.", "",
             "| config | layer | lr multiplier | mean abs offset | mean mask | seeds |", "|---|---|---|---|---|---|"]
    found = False
    for config_dir in sorted(d for d in runs.iterdir() if d.is_dir()) if runs.is_dir() else []:
        ckpts = sorted(config_dir.glob("seed*/checkpoint.pt"))
        if not ckpts:
            continue
        measured = [measure(c, args.images) for c in ckpts]
        per_seed, mult = [m for m, _ in measured], measured[0][1]
        if not per_seed[0]:
            continue  # a plain config
        found = True
        for layer in [k for k in per_seed[0] if not k.endswith(" mask")]:
            off = statistics.fmean(s[layer] for s in per_seed)
            mask = [s[layer + " mask"] for s in per_seed if layer + " mask" in s]
            mask_cell = f"{statistics.fmean(mask):.3f}" if mask else "–"
            lines.append(f"| {config_dir.name} | `{layer}` | {mult.get(layer, float('nan')):g} | {off:.4f} | "
                         f"{mask_cell} | {len(per_seed)} |")
    if not found:
        print(f"error: no deformable run with a checkpoint under {runs}", file=sys.stderr)
        return 1
    out = Path(args.results) / "capstone_offsets.md"
    from dcn_lessons.detection.checkpoint import atomic_write_text

    atomic_write_text(out, "\n".join(lines) + "\n")
    print("\n".join(lines) + f"\n\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
