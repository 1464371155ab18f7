"""Frozen batch normalisation, the normalisation of detection backbones (as ``torchvision.ops.FrozenBatchNorm2d``).

Detectors train with one or two images per GPU (on this course's CPU: one or two per step), far too few for batch
statistics, so both papers' detectors (and torchvision's detection models) keep the ImageNet statistics and affine
parameters of BatchNorm fixed: DCNv1's released code sets ``use_global_stats=True`` on every BatchNorm. A frozen
BatchNorm is then the per-channel affine map

    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias

with all four tensors stored as *buffers* (saved and moved with the module, never trained).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    The state-dict keys are those of ``nn.BatchNorm2d`` and ``torchvision.ops.FrozenBatchNorm2d`` (``weight``,
    ``bias``, ``running_mean``, ``running_var``), without ``num_batches_tracked``: a BatchNorm checkpoint loads
    (that key is dropped on load, as torchvision does), and it computes exactly what ``nn.BatchNorm2d`` computes in
    ``eval()`` mode with the same tensors.

    Args:
        num_features: C, the channels of the input.
        eps: added to the variance (1e-5, the default of ``nn.BatchNorm2d`` and torchvision).

    Shapes:
        input ``[N, C, H, W]`` -> output ``[N, C, H, W]``; each buffer ``[C]``.
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"num_features: expected a positive int, got {num_features!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
            raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
        self.num_features = num_features
        self.eps = float(eps)
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        # A BatchNorm2d checkpoint carries a step counter that means nothing here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` -> ``[N, C, H, W]``, one multiply-add per element."""
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"input: expected a 4-D shape [N, {self.num_features}, H, W], got {list(x.shape)}"
            )
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
