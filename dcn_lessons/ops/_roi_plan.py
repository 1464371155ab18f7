"""The tensor path of the aligned RoI family: the sampling plan, forward and backward.

Written once for the four bilinear kinds of :data:`dcn_lessons.backends.ROI_KINDS` (roi_align, deformable,
position-sensitive, deformable position-sensitive; the modulated form is deform_roi_pool with a mask). The
sampling rule is the course's RoI rule (README conventions), that of ``torchvision.ops.roi_align(aligned=True)``:

* an RoI row ``(b, x1, y1, x2, y2)`` (input-image pixels) starts at ``x1*spatial_scale - 0.5`` (likewise
  y) and is ``roi_w = (x2 - x1)*spatial_scale`` wide; bin ``(i, j)`` of ``ph x pw`` bins is
  ``roi_h/ph x roi_w/pw``;
* each bin takes ``gh x gw`` samples, ``gh = sampling_ratio`` or, when ``sampling_ratio <= 0``,
  ``ceil(roi_h/ph)`` (likewise ``gw``), at ``start + i*bin_h + (s + 0.5)*bin_h/gh``; the bin value is
  the mean of its samples (``count = max(gh*gw, 1)``, so a degenerate RoI gives 0);
* a sample at ``y < -1`` or ``y > H`` (likewise x) is 0; otherwise ``y`` is clamped into ``[0, H-1]``
  and read bilinearly from ``floor(y)`` and ``floor(y) + 1``;
* its gradient with respect to the position is taken with the floor held fixed, and is 0 in a clamped
  direction (``y <= 0`` or ``y >= H-1``) and for a sample outside.

How: for a chunk of RoIs it builds, vectorised over RoIs, bins and samples, the row index and bilinear weight of
each of the four corners of every sample (a *plan*), in a table ``X`` that holds the input as rows of ``C_out``
channels (``[N*H*W, C]``; for position-sensitive pooling ``[N*ph*pw*H*W, C_out]`` so that bin ``(i, j)`` reads
its own channel block). The forward is a gather of those rows and a weighted sum (``bmm``); the backward scatters
``weight * grad_output`` back with ``index_add_``, and the offset/mask gradients come from the per-corner
products ``g = <X[row], grad_output[k, :, i, j]>`` weighted by the derivatives of the bilinear weights.
Arguments are assumed valid (the public functions of :mod:`dcn_lessons.ops.roi_align` check them once).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dcn_lessons.backends import RoIKind

__all__ = ["roi_forward_tensor", "roi_backward_tensor", "table", "untable", "CHUNK_ELEMENTS"]

#: Upper bound on the number of gathered elements (RoIs x bins x samples x 4 corners x channels)
#: held at once; the tensor path loops over chunks of RoIs to stay under it.
CHUNK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------------------------
# The RoI sampling rule, vectorised
# ----------------------------------------------------------------------------------------------


def _axis_rule(coord: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 1-D RoI rule on an axis of ``size`` pixels, elementwise over ``coord``.

    Returns ``(idx, weight, dweight, inside)``, each with a trailing corner axis of length 2
    (low, high corner) except ``inside``: ``idx`` are the corner indices (always in ``[0, size-1]``),
    ``weight`` the linear weights ``(1 - f, f)``, ``dweight`` their derivatives with respect to
    ``coord`` (``(-1, +1)``, or 0 where the coordinate is clamped: ``coord <= 0`` or
    ``coord >= size - 1``), ``inside`` is ``-1 <= coord <= size``.
    """
    inside = (coord >= -1) & (coord <= size)
    c = coord.clamp(min=0)
    lo = c.floor()
    top = lo >= size - 1
    lo = torch.where(top, torch.full_like(lo, size - 1), lo)
    c = torch.where(top, lo, c)
    hi = torch.where(top, lo, lo + 1)
    frac = c - lo
    active = ((coord > 0) & ~top).to(coord.dtype)
    idx = torch.stack([lo, hi], -1).long()
    weight = torch.stack([1 - frac, frac], -1)
    dweight = torch.stack([-active, active], -1)
    return idx, weight, dweight, inside


def _grid_size(extent: Tensor, bins: int, sampling_ratio: int) -> Tensor:
    """Samples per bin side: ``sampling_ratio`` if > 0 else ``ceil(extent / bins)`` (may be 0)."""
    if sampling_ratio > 0:
        return torch.full(extent.shape, sampling_ratio, dtype=torch.long, device=extent.device)
    return torch.ceil(extent / bins).long()


class _Plan:
    """Corner rows and weights of every sample of a chunk of RoIs (see the module docstring).

    Shapes (``B = Kc*ph*pw`` bins, ``S = gh_max*gw_max*4`` corner slots per bin):
    ``rows [Kc, ph, pw, S]`` (long), ``weight [Kc, ph, pw, S]`` (bilinear weight, 0 for padded or
    outside samples), ``dwdy``/``dwdx`` like ``weight`` (derivatives w.r.t. the sample position; only when
    ``want_position_grad``), ``scale [Kc, ph, pw]`` (= mask/count), ``roi_w``/``roi_h`` ``[Kc]``.
    """

    def __init__(
        self,
        rois: Tensor,
        offset: Optional[Tensor],
        mask: Optional[Tensor],
        hw: tuple[int, int],
        out_hw: tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        gamma: float,
        aligned: bool,
        position_sensitive: bool,
        want_position_grad: bool,
    ) -> None:
        H, W = hw
        ph, pw = out_hw
        dev, dt = rois.device, rois.dtype
        shift = 0.5 if aligned else 0.0
        b = rois[:, 0].long()
        x1 = rois[:, 1] * spatial_scale - shift
        y1 = rois[:, 2] * spatial_scale - shift
        roi_w = (rois[:, 3] - rois[:, 1]) * spatial_scale
        roi_h = (rois[:, 4] - rois[:, 2]) * spatial_scale
        if not aligned:
            roi_w = roi_w.clamp(min=1.0)
            roi_h = roi_h.clamp(min=1.0)
        bin_w, bin_h = roi_w / pw, roi_h / ph
        gh = _grid_size(roi_h, ph, sampling_ratio)
        gw = _grid_size(roi_w, pw, sampling_ratio)
        Gh = max(int(gh.max()), 1)
        Gw = max(int(gw.max()), 1)
        count = (gh * gw).clamp(min=1).to(dt)

        ii = torch.arange(ph, device=dev, dtype=dt)
        jj = torch.arange(pw, device=dev, dtype=dt)
        sy = torch.arange(Gh, device=dev, dtype=dt)
        sx = torch.arange(Gw, device=dev, dtype=dt)
        # bin starts [Kc, ph, pw]
        ystart = (y1[:, None] + ii[None, :] * bin_h[:, None])[:, :, None].expand(-1, ph, pw)
        xstart = (x1[:, None] + jj[None, :] * bin_w[:, None])[:, None, :].expand(-1, ph, pw)
        if offset is not None:  # DCNv1 §2.2: the bin moves by gamma * (offset_x * roi_w, offset_y * roi_h)
            xstart = xstart + gamma * roi_w[:, None, None] * offset[:, 0]
            ystart = ystart + gamma * roi_h[:, None, None] * offset[:, 1]
        step_y = bin_h / gh.clamp(min=1).to(dt)
        step_x = bin_w / gw.clamp(min=1).to(dt)
        y = ystart[..., None] + (sy + 0.5) * step_y[:, None, None, None]  # [Kc, ph, pw, Gh]
        x = xstart[..., None] + (sx + 0.5) * step_x[:, None, None, None]  # [Kc, ph, pw, Gw]
        iy, wy, dwy, in_y = _axis_rule(y, H)
        ix, wx, dwx, in_x = _axis_rule(x, W)
        in_y = in_y & (sy.long()[None, None, None, :] < gh[:, None, None, None])
        in_x = in_x & (sx.long()[None, None, None, :] < gw[:, None, None, None])
        valid = (in_y[..., :, None, None, None] & in_x[..., None, :, None, None]).to(dt)  # [Kc,ph,pw,Gh,Gw,1,1]

        def pair(a: Tensor, bb: Tensor) -> Tensor:  # [.., Gh, 2] x [.., Gw, 2] -> [.., Gh, Gw, 2, 2]
            return a[..., :, None, :, None] * bb[..., None, :, None, :]

        kc = rois.shape[0]
        self.weight = (pair(wy, wx) * valid).reshape(kc, ph, pw, -1)
        if want_position_grad:
            self.dwdy = (pair(dwy, wx) * valid).reshape(kc, ph, pw, -1)
            self.dwdx = (pair(wy, dwx) * valid).reshape(kc, ph, pw, -1)
        pix = (iy[..., :, None, :, None] * W + ix[..., None, :, None, :]).reshape(kc, ph, pw, -1)
        if position_sensitive:  # bin (i, j) reads the channel block (c*ph + i)*pw + j, rows of table X
            bins = torch.arange(ph * pw, device=dev).view(1, ph, pw)
            base = (b.view(-1, 1, 1) * (ph * pw) + bins) * (H * W)
        else:
            base = (b * (H * W)).view(-1, 1, 1).expand(-1, ph, pw)
        self.rows = base[..., None] + pix
        scale = (1.0 / count).view(-1, 1, 1).expand(-1, ph, pw)
        self.inv_count = scale
        self.scale = scale * mask[:, 0] if mask is not None else scale
        self.roi_w, self.roi_h = roi_w, roi_h


def table(input: Tensor, out_hw: tuple[int, int], position_sensitive: bool) -> Tensor:
    """The input as a row table ``X``: ``[N*H*W, C]`` or, position-sensitive, ``[N*ph*pw*H*W, C_out]``."""
    n, c, h, w = input.shape
    if not position_sensitive:
        return input.permute(0, 2, 3, 1).reshape(n * h * w, c)
    ph, pw = out_hw
    c_out = c // (ph * pw)
    return input.reshape(n, c_out, ph * pw * h * w).transpose(1, 2).reshape(-1, c_out)


def untable(grad_x: Tensor, shape: torch.Size, out_hw: tuple[int, int], position_sensitive: bool) -> Tensor:
    n, c, h, w = shape
    if not position_sensitive:
        return grad_x.view(n, h, w, c).permute(0, 3, 1, 2).contiguous()
    ph, pw = out_hw
    c_out = c // (ph * pw)
    return grad_x.view(n, ph * pw * h * w, c_out).transpose(1, 2).reshape(n, c, h, w).contiguous()


def _chunks(rois: Tensor, out_hw: tuple[int, int], spatial_scale: float, sampling_ratio: int,
            aligned: bool, channels: int) -> list[tuple[int, int]]:
    """Split the RoIs into chunks whose gathered values stay under ``CHUNK_ELEMENTS``."""
    k = int(rois.shape[0])
    if k == 0:
        return []
    ph, pw = out_hw
    if sampling_ratio > 0:
        per = sampling_ratio * sampling_ratio
    else:
        ext = (rois[:, 3:5] - rois[:, 1:3]) * spatial_scale
        if not aligned:
            ext = ext.clamp(min=1.0)
        gh = int(torch.ceil(ext[:, 1] / ph).max())
        gw = int(torch.ceil(ext[:, 0] / pw).max())
        per = max(gh, 1) * max(gw, 1)
    per_roi = ph * pw * per * 4 * max(channels, 1)
    step = max(1, CHUNK_ELEMENTS // per_roi)
    return [(s, min(s + step, k)) for s in range(0, k, step)]


def roi_forward_tensor(
    kind: RoIKind,
    input: Tensor,
    rois: Tensor,
    offset: Optional[Tensor],
    mask: Optional[Tensor],
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    aligned: bool = True,
) -> Tensor:
    """Tensor-path forward of the bilinear RoI family (arguments already checked).

    ``kind``: a :class:`~dcn_lessons.backends.RoIKind` (offset and mask are ignored unless it is deformable;
    a mask makes deform_roi_pool the modulated kind). input ``[N, C, H, W]``, rois ``[K, 5]``, offset
    ``[K, 2, ph, pw]`` or None, mask ``[K, 1, ph, pw]`` or None. Returns ``[K, C_out, ph, pw]`` with
    ``C_out = C`` or, position-sensitive, ``C/(ph*pw)``. ``aligned=False`` (roi_align only): no -0.5
    shift, RoI size clamped to >= 1.
    """
    deform, ps = kind.deformable, kind.position_sensitive
    if not deform:
        offset, mask = None, None
    ph, pw = output_size
    n, c, h, w = input.shape
    c_out = c // (ph * pw) if ps else c
    k = int(rois.shape[0])
    out = input.new_zeros((k, ph, pw, c_out))
    if k == 0:
        return out.permute(0, 3, 1, 2).contiguous()
    X = table(input, output_size, ps)
    rois = rois.to(input.dtype)
    for s, e in _chunks(rois, output_size, spatial_scale, sampling_ratio, aligned, c_out):
        plan = _Plan(rois[s:e], None if offset is None else offset[s:e], None if mask is None else mask[s:e],
                     (h, w), output_size, spatial_scale, sampling_ratio, gamma, aligned, ps, False)
        kc = e - s
        nb, S = kc * ph * pw, plan.rows.shape[-1]
        weff = (plan.weight * plan.scale[..., None]).reshape(nb, 1, S)
        vals = X.index_select(0, plan.rows.reshape(-1)).view(nb, S, c_out)
        out[s:e] = torch.bmm(weff, vals).view(kc, ph, pw, c_out)
    return out.permute(0, 3, 1, 2).contiguous()


def roi_backward_tensor(
    kind: RoIKind,
    grad_output: Tensor,
    input: Tensor,
    rois: Tensor,
    offset: Optional[Tensor],
    mask: Optional[Tensor],
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    aligned: bool = True,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Tensor-path backward of :func:`roi_forward_tensor` (same arguments plus ``grad_output``).

    Returns ``(grad_input [N, C, H, W], grad_offset [K, 2, ph, pw] or None, grad_mask [K, 1, ph, pw] or
    None)``; the offset (mask) gradient is None exactly when ``offset`` (``mask``) is None or ``kind`` is
    not deformable. Offset gradient (DCNv1 App. A, through the sample positions):
    ``d y/d offset_x = mask/count * gamma*roi_w * sum_samples sum_corners dG/dx * <x(q), grad_y>``.
    """
    deform, ps = kind.deformable, kind.position_sensitive
    if not deform:
        offset, mask = None, None
    ph, pw = output_size
    n, c, h, w = input.shape
    c_out = c // (ph * pw) if ps else c
    k = int(rois.shape[0])
    X = table(input, output_size, ps)
    grad_x = torch.zeros_like(X)
    grad_offset = None if offset is None else torch.zeros_like(offset)
    grad_mask = None if mask is None else torch.zeros_like(mask)
    go_all = grad_output.permute(0, 2, 3, 1)  # [K, ph, pw, C_out]
    rois = rois.to(input.dtype)
    need_g = offset is not None or mask is not None
    for s, e in _chunks(rois, output_size, spatial_scale, sampling_ratio, aligned, c_out):
        plan = _Plan(rois[s:e], None if offset is None else offset[s:e], None if mask is None else mask[s:e],
                     (h, w), output_size, spatial_scale, sampling_ratio, gamma, aligned, ps, offset is not None)
        kc = e - s
        nb, S = kc * ph * pw, plan.rows.shape[-1]
        go = go_all[s:e].reshape(nb, 1, c_out)
        weff = (plan.weight * plan.scale[..., None]).reshape(nb, S, 1)
        rows = plan.rows.reshape(-1)
        grad_x.index_add_(0, rows, (weff * go).reshape(-1, c_out))
        if need_g:
            vals = X.index_select(0, rows).view(nb, S, c_out)
            g = torch.bmm(vals, go.transpose(1, 2)).view(kc, ph, pw, S)  # <x(q), grad_y> per corner
            if grad_mask is not None:
                grad_mask[s:e, 0] = (plan.weight * g).sum(-1) * plan.inv_count
            if grad_offset is not None:
                gx = (plan.dwdx * g).sum(-1) * plan.scale * (gamma * plan.roi_w).view(-1, 1, 1)
                gy = (plan.dwdy * g).sum(-1) * plan.scale * (gamma * plan.roi_h).view(-1, 1, 1)
                grad_offset[s:e] = torch.stack([gx, gy], 1)
    return untable(grad_x, input.shape, output_size, ps), grad_offset, grad_mask
