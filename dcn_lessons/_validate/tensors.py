"""The one checker of tensor arguments for the PyTorch and CUDA tiers (the reference tier takes NumPy arrays).

Shape rules live beside it (``conv.py``, ``roi.py``) and read only ``.shape``; this module checks what only a
tensor has: its type, dtype and device. Every failure names the argument and what was expected.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

__all__ = ["check_tensor", "dtype_names"]

#: The floating dtypes the operators take.
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    """``"float32, float64"`` for ``(torch.float32, torch.float64)``."""
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(name: str, t: Any, like: Optional[torch.Tensor] = None, like_name: str = "input",
                 dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> torch.Tensor:
    """Check that ``t`` is a tensor with one of ``dtypes`` and, when ``like`` is given, ``like``'s dtype and device.

    Raises TypeError (not a tensor, wrong dtype) or ValueError (wrong device), naming ``name`` (and
    ``like_name``). Returns ``t`` unchanged.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if like is None:
        if t.dtype not in dtypes:
            what = "a floating-point tensor" if tuple(dtypes) == FLOAT_DTYPES else "a tensor"
            raise TypeError(f"{name}: expected {what} ({dtype_names(dtypes)}), got dtype {t.dtype}")
        return t
    if t.dtype != like.dtype:
        raise TypeError(f"{name}: expected dtype {like.dtype} (the dtype of {like_name}), got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name}: expected device {like.device} (the device of {like_name}), got {t.device}")
    return t
