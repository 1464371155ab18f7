"""Plain (quantised) RoI pooling, max or average (Fast R-CNN; DCNv1 Eq. (5) for ``mode="avg"``).

The RoI corners are rounded to the integer grid and each bin covers whole pixels (as ``torchvision.ops.roi_pool``);
unlike the aligned family (:mod:`dcn_lessons.ops.roi_align`) nothing is interpolated, which is the quantisation
RoI Align removed. Tensor code on every device; registered as ``torch.ops.dcn_lessons.roi_pool``.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from dcn_lessons._validate import roi as _v
from dcn_lessons.ops._roi_plan import CHUNK_ELEMENTS, table, untable
from dcn_lessons.ops.roi_align import BoxesLike, boxes_to_rois, check_input

__all__ = ["roi_pool"]


def _round_half_away(t: Tensor) -> Tensor:
    """C's ``round``: halves away from zero (torch.round rounds halves to even)."""
    return torch.sign(t) * torch.floor(t.abs() + 0.5)


def _pool_plan(rois: Tensor, hw: tuple[int, int], out_hw: tuple[int, int],
               spatial_scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Pixels of every bin of ``rois`` (torchvision roi_pool's integer grid).

    Returns ``rows [Kc, ph, pw, P]`` (row of table ``[N*H*W, C]``; padded slots point at a valid row),
    ``valid [Kc, ph, pw, P]`` (bool) and ``count [Kc, ph, pw]`` (pixels in the bin, 0 for an empty bin);
    ``P = Bh*Bw`` scanned row-major (h outer).
    """
    H, W = hw
    ph, pw = out_hw
    dev, dt = rois.device, rois.dtype
    b = rois[:, 0].long()
    xs = _round_half_away(rois[:, 1] * spatial_scale).long()
    ys = _round_half_away(rois[:, 2] * spatial_scale).long()
    xe = _round_half_away(rois[:, 3] * spatial_scale).long()
    ye = _round_half_away(rois[:, 4] * spatial_scale).long()
    roi_w = (xe - xs + 1).clamp(min=1).to(dt)
    roi_h = (ye - ys + 1).clamp(min=1).to(dt)
    ii = torch.arange(ph, device=dev, dtype=dt)
    jj = torch.arange(pw, device=dev, dtype=dt)
    bh, bw = roi_h / ph, roi_w / pw
    hs = (torch.floor(ii[None] * bh[:, None]).long() + ys[:, None]).clamp(0, H)  # [Kc, ph]
    he = (torch.ceil((ii[None] + 1) * bh[:, None]).long() + ys[:, None]).clamp(0, H)
    ws = (torch.floor(jj[None] * bw[:, None]).long() + xs[:, None]).clamp(0, W)  # [Kc, pw]
    we = (torch.ceil((jj[None] + 1) * bw[:, None]).long() + xs[:, None]).clamp(0, W)
    Bh = max(int((he - hs).max()), 1)
    Bw = max(int((we - ws).max()), 1)
    hh = hs[..., None] + torch.arange(Bh, device=dev)  # [Kc, ph, Bh]
    ww = ws[..., None] + torch.arange(Bw, device=dev)  # [Kc, pw, Bw]
    vh = hh < he[..., None]
    vw = ww < we[..., None]
    hh = hh.clamp(max=H - 1)
    ww = ww.clamp(max=W - 1)
    pix = hh[:, :, None, :, None] * W + ww[:, None, :, None, :]  # [Kc, ph, pw, Bh, Bw]
    valid = vh[:, :, None, :, None] & vw[:, None, :, None, :]
    kc = rois.shape[0]
    rows = (b.view(-1, 1, 1, 1, 1) * (H * W) + pix).reshape(kc, ph, pw, -1)
    valid = valid.reshape(kc, ph, pw, -1)
    count = (he - hs)[:, :, None] * (we - ws)[:, None, :]
    return rows, valid, count.clamp(min=0)


def _pool_chunks(rois: Tensor, out_hw: tuple[int, int], spatial_scale: float, channels: int) -> list[tuple[int, int]]:
    k = int(rois.shape[0])
    if k == 0:
        return []
    ph, pw = out_hw
    ext = ((rois[:, 3:5] - rois[:, 1:3]) * spatial_scale).abs() + 2
    per = int(torch.ceil(ext[:, 1] / ph + 1).max()) * int(torch.ceil(ext[:, 0] / pw + 1).max())
    step = max(1, CHUNK_ELEMENTS // (ph * pw * per * max(channels, 1)))
    return [(s, min(s + step, k)) for s in range(0, k, step)]


def roi_pool_forward_tensor(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                            mode: str) -> tuple[Tensor, Tensor]:
    """``(output [K, C, ph, pw], argmax [K, ph, pw, C])`` (arguments already checked); argmax is the table row
    ``b*H*W + y*W + x`` of each bin's first maximum in a row-major scan (-1 for an empty bin, and for avg)."""
    n, c, h, w = input.shape
    ph, pw = output_size
    k = int(rois.shape[0])
    X = table(input, output_size, False)
    out = input.new_zeros((k, ph, pw, c))
    argmax = torch.full((k, ph, pw, c), -1, dtype=torch.long, device=input.device)
    rois = rois.to(input.dtype)
    for s, e in _pool_chunks(rois, output_size, spatial_scale, c):
        rows, valid, count = _pool_plan(rois[s:e], (h, w), output_size, spatial_scale)
        vals = X.index_select(0, rows.reshape(-1)).view(*rows.shape, c)  # [Kc, ph, pw, P, C]
        if mode == "max":
            vals = vals.masked_fill(~valid[..., None], float("-inf"))
            best, where = vals.max(dim=3)  # first maximum in the row-major scan
            nonempty = (count > 0)[..., None]
            out[s:e] = torch.where(nonempty, best, torch.zeros_like(best))
            src = torch.gather(rows[..., None].expand(-1, -1, -1, -1, c), 3, where[:, :, :, None, :])[:, :, :, 0]
            argmax[s:e] = torch.where(nonempty, src, torch.full_like(src, -1))
        else:
            wgt = valid.to(input.dtype) / count.clamp(min=1).to(input.dtype)[..., None]
            out[s:e] = (vals * wgt[..., None]).sum(3)
    return out.permute(0, 3, 1, 2).contiguous(), argmax


def roi_pool_backward_tensor(grad_output: Tensor, rois: Tensor, argmax: Tensor, input_shape: tuple[int, ...],
                             output_size: tuple[int, int], spatial_scale: float, mode: str) -> Tensor:
    """``grad_input [N, C, H, W]`` of :func:`roi_pool_forward_tensor`: max routes each bin's gradient to its
    argmax; avg spreads it evenly over the bin's pixels."""
    n, c, h, w = input_shape
    go = grad_output.permute(0, 2, 3, 1)  # [K, ph, pw, C]
    grad_x = grad_output.new_zeros((n * h * w, c))
    if mode == "max":
        hit = argmax >= 0
        chan = torch.arange(c, device=argmax.device).expand_as(argmax)
        flat = (argmax * c + chan)[hit]
        grad_x.view(-1).index_add_(0, flat, go[hit])
    else:
        rois = rois.to(grad_output.dtype)
        for s, e in _pool_chunks(rois, output_size, spatial_scale, c):
            rows, valid, count = _pool_plan(rois[s:e], (h, w), output_size, spatial_scale)
            wgt = valid.to(go.dtype) / count.clamp(min=1).to(go.dtype)[..., None]
            contrib = wgt[..., None] * go[s:e, :, :, None, :]
            grad_x.index_add_(0, rows.reshape(-1), contrib.reshape(-1, c))
    return untable(grad_x, torch.Size(input_shape), output_size, False)


def roi_pool(
    input: Tensor,
    boxes: BoxesLike,
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    mode: str = "max",
) -> Tensor:
    """Plain RoI pooling on the integer grid (Fast R-CNN; DCNv1 Eq. (5) for ``mode="avg"``).

    The RoI corners are rounded (``round(x*spatial_scale)``, halves away from zero, as C),
    ``roi_w = max(x2' - x1' + 1, 1)``; bin (i, j) covers rows ``floor(i*roi_h/ph) <= py < ceil((i+1)*roi_h/ph)``
    (shifted by the RoI start, clipped to the map) and likewise columns (= ``torchvision.ops.roi_pool``).
    ``mode="max"``: the bin's maximum, gradient routed to the first maximum in a row-major scan;
    ``mode="avg"``: Eq. (5) literally, ``y(i, j) = Σ_{p in bin(i, j)} x(p0 + p) / n_ij``. An empty bin
    (entirely outside the map) gives 0 and no gradient.

    Args:
        input: ``[N, C, H, W]``; boxes: ``Tensor[K, 5]`` or list of ``Tensor[L_i, 4]``;
        output_size: ``ph`` or ``(ph, pw)``; mode: "max" or "avg".

    Returns:
        ``[K, C, ph, pw]``.
    """
    mode = _v.check_pool_mode(mode)
    out_hw = _v.normalize_output_size(output_size)
    check_input(input)
    scale = _v.check_spatial_scale(spatial_scale)
    rois = boxes_to_rois(boxes, input, "boxes")
    return torch.ops.dcn_lessons.roi_pool(input, rois, list(out_hw), scale, mode)[0]
