"""Module forms of the RoI pooling family (torchvision.ops-like), and the deformable RoI pooling packs.

* :class:`RoIAlign`, :class:`RoIPool`: thin wrappers of :func:`dcn_lessons.ops.roi_align.roi_align` and
  :func:`dcn_lessons.ops.roi_align.roi_pool`.
* :class:`DeformRoIPoolPack` (DCNv1 §2.2, Fig. 3): offsets predicted per RoI by an fc branch from the
  plain (aligned) RoI pool.
* :class:`ModulatedDeformRoIPoolPack` (DCNv2 §3.2): the same plus a modulation branch with a sigmoid.
* :class:`DeformPSRoIPool` (DCNv1 §2.2, Fig. 4): offsets from a conv branch, PS-RoI-pooled per RoI.

The packs check the input and the boxes once per forward and then call the registered operators
(``torch.ops.dcn_lessons.*``) directly, however many times they pool.

Every offset/mask branch ends in a zero-initialised layer (weights and bias), so a fresh pack equals its
plain counterpart: ``DeformRoIPoolPack`` == ``roi_align(aligned=True)``, ``ModulatedDeformRoIPoolPack`` ==
``0.5 * roi_align(aligned=True)`` (sigmoid(0) = 0.5), ``DeformPSRoIPool`` == ``ps_roi_align``.
The fc branches carry ``lr_mult = 0.01`` (the learning-rate multiplier of the offset fc branch in DCNv1's
deformable Faster R-CNN) so that a param-group helper can find them.
"""

from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
from torch import Tensor, nn

from dcn_lessons._validate import roi as _v
from dcn_lessons.ops.roi_align import BoxesLike, boxes_to_rois, check_input, roi_align
from dcn_lessons.ops.roi_pool import roi_pool

__all__ = ["RoIAlign", "RoIPool", "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack", "DeformPSRoIPool"]

#: Learning-rate multiplier of the offset fc branch of DCNv1's deformable Faster R-CNN.
FC_BRANCH_LR_MULT = 0.01


class RoIAlign(nn.Module):
    """See :func:`dcn_lessons.ops.roi_align.roi_align` (note ``aligned=True`` by default, unlike torchvision).

    Shape:
        - input: ``[N, C, H, W]``; boxes: ``Tensor[K, 5]`` or a list of ``Tensor[L_i, 4]``
        - output: ``[K, C, ph, pw]``
    """

    def __init__(self, output_size: Union[int, tuple[int, int]], spatial_scale: float = 1.0,
                 sampling_ratio: int = -1, aligned: bool = True) -> None:
        super().__init__()
        self.output_size = _v.normalize_output_size(output_size)
        self.spatial_scale = _v.check_spatial_scale(spatial_scale)
        self.sampling_ratio = _v.check_sampling_ratio(sampling_ratio)
        self.aligned = aligned

    def forward(self, input: Tensor, boxes: BoxesLike) -> Tensor:
        return roi_align(input, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


class RoIPool(nn.Module):
    """See :func:`dcn_lessons.ops.roi_align.roi_pool` (``mode`` "max", as torchvision, or "avg" = DCNv1 Eq. 5).

    Shape:
        - input: ``[N, C, H, W]``; boxes: ``Tensor[K, 5]`` or a list of ``Tensor[L_i, 4]``
        - output: ``[K, C, ph, pw]``
    """

    def __init__(self, output_size: Union[int, tuple[int, int]], spatial_scale: float = 1.0,
                 mode: str = "max") -> None:
        super().__init__()
        self.output_size = _v.normalize_output_size(output_size)
        self.spatial_scale = _v.check_spatial_scale(spatial_scale)
        self.mode = _v.check_pool_mode(mode)

    def forward(self, input: Tensor, boxes: BoxesLike) -> Tensor:
        return roi_pool(input, boxes, self.output_size, self.spatial_scale, self.mode)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, mode={self.mode!r}"


def _fc_branch(in_features: int, hidden: int, out_features: int, final: Optional[nn.Module] = None) -> nn.Sequential:
    """fc -> ReLU -> fc -> ReLU -> fc (last one zero-initialised) [-> final], tagged with ``lr_mult``."""
    layers: list[nn.Module] = [
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, out_features),
    ]
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    if final is not None:
        layers.append(final)
    branch = nn.Sequential(*layers)
    branch.lr_mult = FC_BRANCH_LR_MULT  # type: ignore[assignment]
    return branch


class DeformRoIPoolPack(nn.Module):
    """Deformable RoI pooling with its own offset branch (DCNv1 §2.2, Fig. 3; mmcv ``DeformRoIPoolPack``).

    Per RoI: ``x0 = deform_roi_pool(input, rois, None)`` (the aligned RoI pool) ->
    flatten -> ``offset_fc`` (fc(C·ph·pw -> deform_fc_channels) -> ReLU -> fc -> ReLU -> fc(-> 2·ph·pw),
    last fc zero-initialised) -> view ``[K, 2, ph, pw]`` (channel 0 = x, 1 = y, normalised) ->
    ``deform_roi_pool(input, rois, offset)`` (DCNv1 Eq. 6, ``Δp_ij = γ·Δp̂_ij ∘ (w, h)``).
    A fresh layer therefore equals ``roi_align(aligned=True)`` with the same sampling_ratio. ``offset_fc``
    carries ``lr_mult = 0.01``. Note: at zero-init only the last fc of the branch gets a gradient (the
    gradient reaching the hidden layers goes through its zero weights); the others follow once it moves.

    Args:
        output_size: ``ph`` or ``(ph, pw)``.
        in_channels: C, the channels of the input feature map (kept in the output). mmcv calls this argument
            ``output_channels``; that keyword is still accepted, with a DeprecationWarning.
        deform_fc_channels: width of the hidden fc layers.
        spatial_scale, sampling_ratio, gamma: as :func:`dcn_lessons.ops.roi_align.deform_roi_pool`.

    Shape:
        - input: ``[N, C, H, W]``; rois: ``Tensor[K, 5]`` or a list of ``Tensor[L_i, 4]``
        - output: ``[K, C, ph, pw]``
    """

    def __init__(self, output_size: Union[int, tuple[int, int]], in_channels: Optional[int] = None,
                 deform_fc_channels: int = 1024, spatial_scale: float = 1.0, sampling_ratio: int = 0,
                 gamma: float = 0.1, *, output_channels: Optional[int] = None) -> None:
        super().__init__()
        if output_channels is not None:
            if in_channels is not None:
                raise TypeError("in_channels: given twice (as in_channels and as its old name output_channels)")
            warnings.warn(f"{type(self).__name__}(output_channels=...) is now called in_channels (it is the "
                          "input's channel count)", DeprecationWarning, stacklevel=2)
            in_channels = output_channels
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels: expected a positive int (the input's channels), got {in_channels!r}")
        self.output_size = _v.normalize_output_size(output_size)
        self.in_channels = in_channels
        self.deform_fc_channels = int(deform_fc_channels)
        self.spatial_scale = _v.check_spatial_scale(spatial_scale)
        self.sampling_ratio = _v.check_sampling_ratio(sampling_ratio)
        self.gamma = _v.check_gamma(gamma)
        ph, pw = self.output_size
        self.offset_fc = _fc_branch(self.in_channels * ph * pw, self.deform_fc_channels, 2 * ph * pw)

    def _checked_rois(self, input: Tensor, rois: BoxesLike) -> Tensor:
        """The one check of a forward pass: the input's shape and channels, then the boxes."""
        check_input(input)
        if input.shape[1] != self.in_channels:
            raise ValueError(f"input: expected shape [N, {self.in_channels}, H, W] "
                             f"(in_channels={self.in_channels}), got {list(input.shape)}")
        return boxes_to_rois(rois, input, "rois")

    def _pool(self, input: Tensor, rois: Tensor, offset: Optional[Tensor], mask: Optional[Tensor] = None) -> Tensor:
        return torch.ops.dcn_lessons.deform_roi_pool(input, rois, offset, mask, list(self.output_size),
                                                     self.spatial_scale, self.sampling_ratio, self.gamma)

    def forward(self, input: Tensor, rois: BoxesLike) -> Tensor:
        rois = self._checked_rois(input, rois)
        k = rois.shape[0]
        x = self._pool(input, rois, None)
        offset = self.offset_fc(x.reshape(k, self.offset_fc[0].in_features)).view(k, 2, *self.output_size)
        return self._pool(input, rois, offset)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, in_channels={self.in_channels}, "
                f"deform_fc_channels={self.deform_fc_channels}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}")


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """Modulated deformable RoI pooling with offset and mask branches (DCNv2 §3.2, Eq. 2; mmcv
    ``ModulatedDeformRoIPoolPack``).

    As :class:`DeformRoIPoolPack`, plus ``mask_fc``: fc(C·ph·pw -> deform_fc_channels) -> ReLU -> fc -> ReLU ->
    fc(-> ph·pw), last fc zero-initialised, -> sigmoid, viewed ``[K, 1, ph, pw]``; the output is
    ``modulated_deform_roi_pool(input, rois, offset, mask)``. A fresh layer equals
    ``0.5 * roi_align(aligned=True)`` (sigmoid(0) = 0.5: DCNv2's half amplitude at the start of training).
    Both branches carry ``lr_mult = 0.01``.

    Shape:
        - input: ``[N, C, H, W]``; rois: ``Tensor[K, 5]`` or a list of ``Tensor[L_i, 4]``
        - output: ``[K, C, ph, pw]``
    """

    def __init__(self, output_size: Union[int, tuple[int, int]], in_channels: Optional[int] = None,
                 deform_fc_channels: int = 1024, spatial_scale: float = 1.0, sampling_ratio: int = 0,
                 gamma: float = 0.1, *, output_channels: Optional[int] = None) -> None:
        super().__init__(output_size, in_channels, deform_fc_channels, spatial_scale, sampling_ratio, gamma,
                         output_channels=output_channels)
        ph, pw = self.output_size
        self.mask_fc = _fc_branch(self.in_channels * ph * pw, self.deform_fc_channels, ph * pw, nn.Sigmoid())

    def forward(self, input: Tensor, rois: BoxesLike) -> Tensor:
        rois = self._checked_rois(input, rois)
        k = rois.shape[0]
        x = self._pool(input, rois, None).reshape(k, self.offset_fc[0].in_features)
        offset = self.offset_fc(x).view(k, 2, *self.output_size)
        mask = self.mask_fc(x).view(k, 1, *self.output_size)
        return self._pool(input, rois, offset, mask)


class DeformPSRoIPool(nn.Module):
    """Deformable position-sensitive RoI pooling with its offset branch (DCNv1 §2.2, Fig. 4).

    ``offset_conv`` is a **1x1** conv (chosen: the offsets are per-bin, per-position quantities read exactly
    where the score maps are read, so the branch mirrors R-FCN's 1x1 score-map conv and adds no spatial
    context of its own) from ``in_channels`` to ``2·ph·pw`` channels, weight and bias zero-initialised.
    Its output is PS-RoI-pooled per RoI (:func:`~dcn_lessons.ops.roi_align.ps_roi_align`, channel
    ``(c·ph + i)·pw + j`` for c = 0 (x), 1 (y)) into class-agnostic offsets ``[K, 2, ph, pw]``, then
    :func:`~dcn_lessons.ops.roi_align.deform_ps_roi_pool` pools the score maps. A fresh layer equals
    :func:`~dcn_lessons.ops.roi_align.ps_roi_align` with the same sampling_ratio.

    Args:
        output_size: ``ph`` or ``(ph, pw)``.
        output_channels: C_out (e.g. classes + 1); the score maps have ``C_out·ph·pw`` channels.
        spatial_scale, sampling_ratio, gamma: as :func:`~dcn_lessons.ops.roi_align.deform_ps_roi_pool`.
        in_channels: channels of the map the offset branch reads: by default the score maps
            (``C_out·ph·pw``); pass the backbone width and ``offset_input=`` in forward to read the feature
            map instead, as DCNv1 Fig. 4 draws it.

    Shape:
        - input: ``[N, C_out·ph·pw, H, W]`` score maps; rois: ``Tensor[K, 5]`` or list of ``Tensor[L_i, 4]``;
          offset_input (optional): ``[N, in_channels, H, W]``
        - output: ``[K, C_out, ph, pw]``
    """

    def __init__(self, output_size: Union[int, tuple[int, int]], output_channels: int,
                 spatial_scale: float = 1.0, sampling_ratio: int = 0, gamma: float = 0.1,
                 in_channels: Optional[int] = None) -> None:
        super().__init__()
        self.output_size = _v.normalize_output_size(output_size)
        ph, pw = self.output_size
        self.output_channels = int(output_channels)
        self.in_channels = int(in_channels) if in_channels is not None else self.output_channels * ph * pw
        self.spatial_scale = _v.check_spatial_scale(spatial_scale)
        self.sampling_ratio = _v.check_sampling_ratio(sampling_ratio)
        self.gamma = _v.check_gamma(gamma)
        self.offset_conv = nn.Conv2d(self.in_channels, 2 * ph * pw, kernel_size=1)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def forward(self, input: Tensor, rois: BoxesLike, offset_input: Optional[Tensor] = None) -> Tensor:
        ph, pw = self.output_size
        expected = self.output_channels * ph * pw
        if not isinstance(input, Tensor) or input.ndim != 4 or input.shape[1] != expected:
            shape = list(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"input: expected score maps [N, C_out*ph*pw, H, W] = [N, {expected}, H, W], got {shape}")
        src = input if offset_input is None else offset_input
        if src.ndim != 4 or src.shape[1] != self.in_channels or src.shape[0] != input.shape[0] \
                or src.shape[2:] != input.shape[2:]:
            name = "input" if offset_input is None else "offset_input"
            raise ValueError(f"{name}: expected [N, in_channels, H, W] = [{input.shape[0]}, {self.in_channels}, "
                             f"{input.shape[2]}, {input.shape[3]}] for offset_conv, got {list(src.shape)}")
        check_input(input)
        rois = boxes_to_rois(rois, input, "rois")
        offset_map = self.offset_conv(src)  # [N, 2*ph*pw, H, W]
        size = list(self.output_size)
        offset = torch.ops.dcn_lessons.ps_roi_align(offset_map, rois, size, self.spatial_scale, self.sampling_ratio)
        return torch.ops.dcn_lessons.deform_ps_roi_pool(input, rois, offset, size, self.spatial_scale,
                                                        self.sampling_ratio, self.gamma)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, output_channels={self.output_channels}, "
                f"in_channels={self.in_channels}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}")
