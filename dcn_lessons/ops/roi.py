"""PyTorch tier of the RoI pooling family: operators with a hand-written backward.

Every operator here is a :class:`torch.autograd.Function` whose forward and backward are written in
tensor code (no autograd through the gather). The sampling rule is the course's RoI rule (README conventions), that of
``torchvision.ops.roi_align(aligned=True)``:

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

Gradients flow to the features, offsets and masks, never to the boxes (as torchvision and mmcv); the
backward is ``once_differentiable`` (a double backward raises).

The tensor path is written once for the four bilinear kinds as the pair :func:`_forward_torch` /
:func:`_backward_torch`; the CUDA tier (``dcn_lessons.cuda.kernels_for(input)``) implements
``roi_forward`` / ``roi_backward`` with the same arguments, and the operators dispatch per call.
The tensor path is device-agnostic (it runs on a GPU when CuPy is missing).

How the tensor path works: for a chunk of RoIs it builds, vectorised over RoIs, bins and samples, the
row index and bilinear weight of each of the four corners of every sample (a *plan*), in a table
``X`` that holds the input as rows of ``C_out`` channels (``[N*H*W, C]``; for position-sensitive
pooling ``[N*ph*pw*H*W, C_out]`` so that bin ``(i, j)`` reads its own channel block). The forward is a
gather of those rows and a weighted sum (``bmm``); the backward scatters ``weight * grad_output`` back
with ``index_add_``, and the offset/mask gradients come from the per-corner products
``g = <X[row], grad_output[k, :, i, j]>`` weighted by the derivatives of the bilinear weights.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from dcn_lessons._validate import roi as _v

__all__ = [
    "roi_align",
    "roi_pool",
    "deform_roi_pool",
    "modulated_deform_roi_pool",
    "ps_roi_align",
    "deform_ps_roi_pool",
    "boxes_to_rois",
]

BoxesLike = Union[Tensor, Sequence[Tensor]]
KINDS = ("roi_align", "deform_roi_pool", "ps_roi_align", "deform_ps_roi_pool")

#: Upper bound on the number of gathered elements (RoIs x bins x samples x 4 corners x channels)
#: held at once; the tensor path loops over chunks of RoIs to stay under it.
_CHUNK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------------------------
# Argument handling (shape rules live in dcn_lessons._validate.roi; only torch-specific checks here)
# ----------------------------------------------------------------------------------------------


def _check_input(input: Any) -> tuple[int, int, int, int]:
    if not isinstance(input, Tensor):
        raise TypeError(f"input: expected a torch.Tensor [N, C, H, W], got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input: expected a floating-point tensor, got dtype {input.dtype}")
    return _v.check_feature_map(input, "input")


def _check_like(t: Any, name: str, input: Tensor) -> None:
    """``t`` must be a floating tensor with ``input``'s dtype and device."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != input.dtype:
        raise TypeError(f"{name}: expected dtype {input.dtype} (the dtype of input), got {t.dtype}")
    if t.device != input.device:
        raise ValueError(f"{name}: expected device {input.device} (the device of input), got {t.device}")


def boxes_to_rois(boxes: BoxesLike, input: Tensor, name: str = "boxes") -> Tensor:
    """Convert ``boxes`` to the ``[K, 5]`` RoI format and check it against ``input``.

    Args:
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or (as torchvision) a list of
            ``Tensor[L_i, 4]`` rows ``(x1, y1, x2, y2)``, one tensor per image ``i`` of the batch.
        input: the feature map ``[N, C, H, W]``; the boxes must share its dtype and device.

    Returns:
        ``Tensor[K, 5]`` with ``K = sum_i L_i`` (list form: rows of image 0 first).

    Raises ValueError/TypeError naming ``name`` for a wrong shape, dtype, device, a batch index out of
    ``[0, N)``, unordered corners or non-finite coordinates.
    """
    if isinstance(boxes, (list, tuple)):
        parts = []
        for i, b in enumerate(boxes):
            _check_like(b, f"{name}[{i}]", input)
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(
                    f"{name}[{i}]: expected a 2-D tensor [L, 4] of rows (x1, y1, x2, y2), got shape {list(b.shape)}"
                )
            idx = torch.full((b.shape[0], 1), float(i), dtype=b.dtype, device=b.device)
            parts.append(torch.cat([idx, b], dim=1))
        rois = torch.cat(parts, 0) if parts else input.new_zeros((0, 5))
    else:
        _check_like(boxes, name, input)
        rois = boxes
    _v.check_rois(rois, int(input.shape[0]), name=name)
    return rois.detach()


def _prepare(
    input: Any,
    boxes: BoxesLike,
    offset: Optional[Tensor],
    mask: Optional[Tensor],
    output_size: Any,
    spatial_scale: Any,
    sampling_ratio: Any,
    gamma: Any,
    position_sensitive: bool,
    boxes_name: str,
) -> tuple[Tensor, tuple[int, int], float, int, float]:
    n, c, h, w = _check_input(input)
    out_hw = _v.normalize_output_size(output_size)
    scale = _v.check_spatial_scale(spatial_scale)
    ratio = _v.check_sampling_ratio(sampling_ratio)
    g = _v.check_gamma(gamma)
    if position_sensitive:
        _v.check_ps_channels(c, out_hw, "input")
    rois = boxes_to_rois(boxes, input, boxes_name)
    k = int(rois.shape[0])
    if offset is not None:
        _check_like(offset, "offset", input)
        _v.check_roi_offset(offset, k, out_hw)
    if mask is not None:
        _check_like(mask, "mask", input)
        _v.check_roi_mask(mask, k, out_hw)
    return rois, out_hw, scale, ratio, g


def _kernels(input: Tensor) -> Any:
    """The CUDA backend for ``input`` or None (tensor path). The RoI kernels are float32/float64 only: a
    float16/bfloat16 input runs on the tensor path (as torchvision's RoI ops run in float32 under autocast)."""
    from dcn_lessons import cuda as _cuda

    k = _cuda.kernels_for(input)
    return k if k is not None and input.dtype in getattr(k, "roi_dtypes", ()) else None


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


def _table(input: Tensor, out_hw: tuple[int, int], position_sensitive: bool) -> Tensor:
    """The input as a row table ``X``: ``[N*H*W, C]`` or, position-sensitive, ``[N*ph*pw*H*W, C_out]``."""
    n, c, h, w = input.shape
    if not position_sensitive:
        return input.permute(0, 2, 3, 1).reshape(n * h * w, c)
    ph, pw = out_hw
    c_out = c // (ph * pw)
    return input.reshape(n, c_out, ph * pw * h * w).transpose(1, 2).reshape(-1, c_out)


def _untable(grad_x: Tensor, shape: torch.Size, out_hw: tuple[int, int], position_sensitive: bool) -> Tensor:
    n, c, h, w = shape
    if not position_sensitive:
        return grad_x.view(n, h, w, c).permute(0, 3, 1, 2).contiguous()
    ph, pw = out_hw
    c_out = c // (ph * pw)
    return grad_x.view(n, ph * pw * h * w, c_out).transpose(1, 2).reshape(n, c, h, w).contiguous()


def _chunks(rois: Tensor, out_hw: tuple[int, int], spatial_scale: float, sampling_ratio: int,
            aligned: bool, channels: int) -> list[tuple[int, int]]:
    """Split the RoIs into chunks whose gathered values stay under ``_CHUNK_ELEMENTS``."""
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
    step = max(1, _CHUNK_ELEMENTS // per_roi)
    return [(s, min(s + step, k)) for s in range(0, k, step)]


def _check_kind(kind: str) -> tuple[bool, bool]:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return kind.startswith("deform"), kind.endswith("ps_roi_align") or kind.endswith("ps_roi_pool")


def _forward_torch(
    kind: str,
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

    ``kind``: "roi_align" (offset and mask ignored), "deform_roi_pool" (mask optional = modulated),
    "ps_roi_align", "deform_ps_roi_pool". input ``[N, C, H, W]``, rois ``[K, 5]``, offset
    ``[K, 2, ph, pw]`` or None, mask ``[K, 1, ph, pw]`` or None. Returns ``[K, C_out, ph, pw]`` with
    ``C_out = C`` or, position-sensitive, ``C/(ph*pw)``. ``aligned=False`` (roi_align only): no -0.5
    shift, RoI size clamped to >= 1.
    """
    deform, ps = _check_kind(kind)
    if not deform:
        offset, mask = None, None
    ph, pw = output_size
    n, c, h, w = input.shape
    c_out = c // (ph * pw) if ps else c
    k = int(rois.shape[0])
    out = input.new_zeros((k, ph, pw, c_out))
    if k == 0:
        return out.permute(0, 3, 1, 2).contiguous()
    X = _table(input, output_size, ps)
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


def _backward_torch(
    kind: str,
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
    """Tensor-path backward of :func:`_forward_torch` (same arguments plus ``grad_output``).

    Returns ``(grad_input [N, C, H, W], grad_offset [K, 2, ph, pw] or None, grad_mask [K, 1, ph, pw] or
    None)``; the offset (mask) gradient is None exactly when ``offset`` (``mask``) is None or ``kind`` is
    not deformable. Offset gradient (DCNv1 App. A, through the sample positions):
    ``d y/d offset_x = mask/count * gamma*roi_w * sum_samples sum_corners dG/dx * <x(q), grad_y>``.
    """
    deform, ps = _check_kind(kind)
    if not deform:
        offset, mask = None, None
    ph, pw = output_size
    n, c, h, w = input.shape
    c_out = c // (ph * pw) if ps else c
    k = int(rois.shape[0])
    X = _table(input, output_size, ps)
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
    return _untable(grad_x, input.shape, output_size, ps), grad_offset, grad_mask


class _RoIFamily(torch.autograd.Function):
    """Autograd node of the bilinear RoI family: dispatches to CUDA kernels or the tensor path."""

    @staticmethod
    def forward(ctx: Any, kind: str, input: Tensor, rois: Tensor, offset: Optional[Tensor],
                mask: Optional[Tensor], output_size: tuple[int, int], spatial_scale: float,
                sampling_ratio: int, gamma: float, aligned: bool) -> Tensor:
        args = (output_size, spatial_scale, sampling_ratio, gamma)
        kern = _kernels(input) if aligned else None
        if kern is not None:
            out = kern.roi_forward(kind, input, rois, offset, mask, *args)
        else:
            out = _forward_torch(kind, input, rois, offset, mask, *args, aligned=aligned)
        ctx.save_for_backward(input, rois, offset, mask)
        ctx.params = (kind, args, aligned)
        ctx.kern = kern  # the backward runs where the forward ran
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Optional[Tensor], ...]:
        input, rois, offset, mask = ctx.saved_tensors
        kind, args, aligned = ctx.params
        grad_output = grad_output.contiguous()
        kern = ctx.kern
        if kern is not None:
            gi, go, gm = kern.roi_backward(kind, grad_output, input, rois, offset, mask, *args)
        else:
            gi, go, gm = _backward_torch(kind, grad_output, input, rois, offset, mask, *args, aligned=aligned)
        need = ctx.needs_input_grad
        return (None, gi if need[1] else None, None, go if need[3] else None, gm if need[4] else None,
                None, None, None, None, None)


# ----------------------------------------------------------------------------------------------
# Public operators
# ----------------------------------------------------------------------------------------------


def roi_align(
    input: Tensor,
    boxes: BoxesLike,
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """RoI Align: DCNv1 Eq. (5) with each bin's sum replaced by the mean of bilinear samples (Eq. 3-4).

    ``y(i, j) = (1/count) * sum_{samples p in bin(i, j)} x(p0 + p)``, the course's RoI rule (README conventions)
    (= ``torchvision.ops.roi_align``). Note the default ``aligned=True`` (torchvision's default is False).

    Args:
        input: ``[N, C, H, W]`` floating tensor.
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image pixels, or a list of
            ``Tensor[L_i, 4]`` per image; same dtype and device as ``input``.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map pixels per image pixel (e.g. 1/16).
        sampling_ratio: samples per bin side; ``<= 0``: ``ceil(roi_h/ph)`` x ``ceil(roi_w/pw)``, which is 0 for
            a degenerate RoI (its bins are 0).
        aligned: shift by -0.5 pixel (True); False: no shift and RoI sizes clamped to >= 1 (Mask R-CNN legacy).

    Returns:
        ``[K, C, ph, pw]``; K = 0 gives an empty ``[0, C, ph, pw]``. Samples beyond one pixel outside the map
        read 0, those within one pixel are clamped to the border.
    """
    rois, out_hw, scale, ratio, _ = _prepare(input, boxes, None, None, output_size, spatial_scale,
                                             sampling_ratio, 0.1, False, "boxes")
    if not isinstance(aligned, bool):
        raise TypeError(f"aligned: expected a bool, got {aligned!r}")
    return _RoIFamily.apply("roi_align", input, rois, None, None, out_hw, scale, ratio, 0.0, aligned)


def deform_roi_pool(
    input: Tensor,
    rois: BoxesLike,
    offset: Optional[Tensor],
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> Tensor:
    """Deformable RoI pooling, DCNv1 Eq. (6): ``y(i, j) = (1/count) sum_p x(p0 + p + Δp_ij)``.

    ``Δp_ij = γ·(offset[k, 0, i, j]·roi_w, offset[k, 1, i, j]·roi_h)`` (DCNv1 §2.2, normalised offsets, x
    first), the samples taken with the RoI rule of :func:`roi_align` (aligned). Same as mmcv's DeformRoIPool.

    Args:
        input: ``[N, C, H, W]``.
        rois: ``Tensor[K, 5]`` or a list of ``Tensor[L_i, 4]`` (see :func:`roi_align`).
        offset: ``[K, 2, ph, pw]`` or None (zero offsets: equals ``roi_align(aligned=True)``).
        output_size: ``ph`` or ``(ph, pw)``; spatial_scale, sampling_ratio as :func:`roi_align`.
        gamma: the offset scale γ (0.1 in DCNv1).

    Returns:
        ``[K, C, ph, pw]``. Differentiable with respect to ``input`` and ``offset``; the offset gradient is 0
        in a clamped direction (sample within one pixel outside the map, or beyond the last row/column) and
        for samples more than one pixel outside.
    """
    rois_t, out_hw, scale, ratio, g = _prepare(input, rois, offset, None, output_size, spatial_scale,
                                               sampling_ratio, gamma, False, "rois")
    return _RoIFamily.apply("deform_roi_pool", input, rois_t, offset, None, out_hw, scale, ratio, g, True)


def modulated_deform_roi_pool(
    input: Tensor,
    rois: BoxesLike,
    offset: Optional[Tensor],
    mask: Optional[Tensor],
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> Tensor:
    """Modulated deformable RoI pooling, DCNv2 Eq. (2): ``y(k) = Σ_j x(p_kj + Δp_k)·Δm_k / n_k``.

    As :func:`deform_roi_pool`, then bin ``(i, j)`` of RoI k is multiplied by ``mask[k, 0, i, j]``
    (meant to lie in [0, 1], e.g. a sigmoid output; not enforced).

    Args:
        offset: ``[K, 2, ph, pw]`` or None (zero offsets); mask: ``[K, 1, ph, pw]`` or None (all ones).

    Returns:
        ``[K, C, ph, pw]``; differentiable with respect to input, offset and mask.
    """
    rois_t, out_hw, scale, ratio, g = _prepare(input, rois, offset, mask, output_size, spatial_scale,
                                               sampling_ratio, gamma, False, "rois")
    return _RoIFamily.apply("deform_roi_pool", input, rois_t, offset, mask, out_hw, scale, ratio, g, True)


def ps_roi_align(
    input: Tensor,
    boxes: BoxesLike,
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoI Align (R-FCN's PS RoI pooling with the RoI rule; DCNv1 §2.2, Fig. 4).

    Output channel c of bin (i, j) averages the samples of bin (i, j) read from input channel
    ``(c*ph + i)*pw + j`` (= ``torchvision.ops.ps_roi_align``).

    Args:
        input: ``[N, C_out*ph*pw, H, W]`` position-sensitive score maps.
        boxes, output_size, spatial_scale, sampling_ratio: as :func:`roi_align` (always aligned).

    Returns:
        ``[K, C_out, ph, pw]``.
    """
    rois, out_hw, scale, ratio, _ = _prepare(input, boxes, None, None, output_size, spatial_scale,
                                             sampling_ratio, 0.1, True, "boxes")
    return _RoIFamily.apply("ps_roi_align", input, rois, None, None, out_hw, scale, ratio, 0.0, True)


def deform_ps_roi_pool(
    input: Tensor,
    rois: BoxesLike,
    offset: Optional[Tensor],
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> Tensor:
    """Deformable position-sensitive RoI pooling (DCNv1 §2.2, Fig. 4): Eq. (6) on PS score maps.

    Bin (i, j) of output channel c reads input channel ``(c*ph + i)*pw + j`` at the samples of bin (i, j)
    moved by ``γ·(offset_x·roi_w, offset_y·roi_h)``. Offsets are class-agnostic (one per bin, shared by all
    output channels). In DCNv1 they come from a conv branch of ``2*ph*pw`` channels pooled per RoI with PS
    RoI pooling; :class:`dcn_lessons.ops.roi_layers.DeformPSRoIPool` does exactly that.

    Args:
        input: ``[N, C_out*ph*pw, H, W]``; offset ``[K, 2, ph, pw]`` or None (= :func:`ps_roi_align`).

    Returns:
        ``[K, C_out, ph, pw]``; differentiable with respect to input and offset.
    """
    rois_t, out_hw, scale, ratio, g = _prepare(input, rois, offset, None, output_size, spatial_scale,
                                               sampling_ratio, gamma, True, "rois")
    return _RoIFamily.apply("deform_ps_roi_pool", input, rois_t, offset, None, out_hw, scale, ratio, g, True)


# ----------------------------------------------------------------------------------------------
# Plain RoI pooling (max / avg), tensor path only
# ----------------------------------------------------------------------------------------------


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
    step = max(1, _CHUNK_ELEMENTS // (ph * pw * per * max(channels, 1)))
    return [(s, min(s + step, k)) for s in range(0, k, step)]


class _RoIPool(torch.autograd.Function):
    """Autograd node of plain RoI pooling (max or avg), tensor path."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, rois: Tensor, output_size: tuple[int, int],
                spatial_scale: float, mode: str) -> Tensor:
        n, c, h, w = input.shape
        ph, pw = output_size
        k = int(rois.shape[0])
        X = _table(input, output_size, False)
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
        ctx.save_for_backward(rois, argmax)
        ctx.params = (input.shape, output_size, spatial_scale, mode)
        return out.permute(0, 3, 1, 2).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Optional[Tensor], ...]:
        rois, argmax = ctx.saved_tensors
        shape, output_size, spatial_scale, mode = ctx.params
        n, c, h, w = shape
        go = grad_output.permute(0, 2, 3, 1)  # [K, ph, pw, C]
        grad_x = grad_output.new_zeros((n * h * w, c))
        if mode == "max":
            hit = argmax >= 0
            chan = torch.arange(c, device=argmax.device).expand_as(argmax)
            flat = (argmax * c + chan)[hit]
            grad_x.view(-1).index_add_(0, flat, go[hit])
        else:
            for s, e in _pool_chunks(rois, output_size, spatial_scale, c):
                rows, valid, count = _pool_plan(rois[s:e], (h, w), output_size, spatial_scale)
                wgt = valid.to(go.dtype) / count.clamp(min=1).to(go.dtype)[..., None]
                contrib = wgt[..., None] * go[s:e, :, :, None, :]
                grad_x.index_add_(0, rows.reshape(-1), contrib.reshape(-1, c))
        gi = _untable(grad_x, torch.Size(shape), output_size, False) if ctx.needs_input_grad[0] else None
        return gi, None, None, None, None


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
    rois, out_hw, scale, _, _ = _prepare(input, boxes, None, None, output_size, spatial_scale, 0, 0.1,
                                         False, "boxes")
    return _RoIPool.apply(input, rois, out_hw, scale, mode)
