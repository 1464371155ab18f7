"""Parameters and FLOPs of the papers' networks, counted by PyTorch's ``FlopCounterMode``.

``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of every operator it sees that has a formula in its
registry (convolutions, matrix products, attention ...). Our deformable convolution is a custom operator
(``torch.ops.dcn_lessons.deform_conv2d``, registered with ``torch.library`` with a fake implementation), so this
module registers formulas for it and for its backward (:func:`deform_conv2d_flop`,
:func:`deform_conv2d_backward_flop`), and then counts any network the usual way, on the ``meta`` device (shapes
only: a 1000-pixel ResNet-101 costs nothing to count).

The convention is PyTorch's for ``aten.convolution``: a multiply-add is 2 FLOPs and the bias is not counted, so a
plain 3x3 conv costs ``2 * N * O * (C/groups) * 9 * Ho * Wo``. Many papers (the ResNet paper's "3.8 x 10^9 FLOPs"
for ResNet-50 among them) count multiply-adds, half of this: :class:`FlopReport` gives both.

What the deformable formula counts, beyond the GEMM (exactly, per item):

* per *sampling position* (one per image, offset group, kernel point and output pixel, ``N*G*K*Ho*Wo``): 10 FLOPs:
  2 adds to move the grid point by (Δy, Δx), 2 subtractions for the fractional parts (ly, lx), 2 for their
  complements (hy = 1 - ly, hx = 1 - lx), 4 multiplies for the corner weights hy*hx, hy*lx, ly*hx, ly*lx;
* per *sample* (the positions times the C/G channels of their group, ``N*C*K*Ho*Wo``): 7 FLOPs, the bilinear sum
  of the 4 corners (4 multiplies, 3 adds, DCNv1 Eq. 3-4), plus 1 multiply by the mask when modulated
  (DCNv2 Eq. 1);
* the GEMM of the columns with the weight: ``2 * N * O * (C/groups) * K * Ho * Wo``, as a plain conv.

So ``flops = 2*N*O*(C/groups)*K*Ho*Wo + (7 + [mask])*N*C*K*Ho*Wo + 10*N*G*K*Ho*Wo``: relative to the plain conv the
sampling adds ``(7 + [mask]) / (2 * O/groups)`` (0.8 % for O = 512) plus the positions' share. The offset branch
is a plain ``nn.Conv2d`` and is counted by PyTorch's own formula; the sigmoid of the mask is an elementwise op,
which ``FlopCounterMode`` does not count for any network.

The backward (:func:`deform_conv2d_backward_flop`) counts, for what it is asked to compute: the GEMM for the
columns' gradient (once, if any of the input, offset or mask gradients is wanted); for the input gradient, the
scatter of each sample's gradient to its 4 corners (4 multiplies and 4 adds, one more multiply with a mask); for
the offset gradient, per sample 2 x 7 FLOPs for the two derivatives of the bilinear sum (DCNv1 Eq. 7), 2 multiplies
by the column gradient (one more with a mask) and 2 adds to accumulate; for the mask gradient, the sample (7) times
the column gradient and accumulated (2); for the weight gradient, the columns again (7 per sample, one more with a
mask) and the GEMM; and the 10 position FLOPs once. Like ``aten.convolution_backward``'s formula, only what is
asked for is counted.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from math import prod
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

__all__ = [
    "FORMULAS_REGISTERED",
    "FlopReport",
    "count_flops",
    "count_parameters",
    "deform_conv2d_flop",
    "deform_conv2d_backward_flop",
    "register_deform_conv2d_flops",
]

#: FLOPs per sampling position: 2 adds (grid + offset), 2 + 2 subtractions (fractions, complements), 4 multiplies.
POSITION_FLOPS = 10
#: FLOPs per sample of the bilinear sum over the 4 corners: 4 multiplies and 3 adds.
SAMPLE_FLOPS = 7


def _geometry(input_shape: Sequence[int], offset_shape: Sequence[int], weight_shape: Sequence[int],
              out_shape: Sequence[int]) -> tuple[int, int, int, int, int, int, int]:
    n, c = int(input_shape[0]), int(input_shape[1])
    o, cg, kh, kw = (int(s) for s in weight_shape)
    k = kh * kw
    g = int(offset_shape[1]) // (2 * k)
    pixels = int(out_shape[2]) * int(out_shape[3])
    return n, c, o, cg, k, g, pixels


def deform_conv2d_flop(input_shape: Sequence[int], offset_shape: Sequence[int], weight_shape: Sequence[int],
                       bias_shape: Optional[Sequence[int]], mask_shape: Optional[Sequence[int]], *args: Any,
                       out_shape: Sequence[int], **kwargs: Any) -> int:
    """FLOPs of one deformable convolution forward (DCNv1 Eq. 2, DCNv2 Eq. 1), from the shapes (module docstring).

    ``2*N*O*(C/groups)*K*Ho*Wo`` (GEMM) ``+ (7 + [mask])*N*C*K*Ho*Wo`` (bilinear samples, mask multiply)
    ``+ 10*N*G*K*Ho*Wo`` (positions and corner weights). The bias is not counted (as for ``aten.convolution``).
    Shapes: input ``[N, C, H, W]``, offset ``[N, 2*G*K, Ho, Wo]``, weight ``[O, C/groups, kh, kw]``, mask
    ``[N, G*K, Ho, Wo]`` or None, output ``[N, O, Ho, Wo]``.
    """
    n, c, o, cg, k, g, pixels = _geometry(input_shape, offset_shape, weight_shape, out_shape)
    gemm = 2 * n * o * cg * k * pixels
    samples = (SAMPLE_FLOPS + (1 if mask_shape is not None else 0)) * n * c * k * pixels
    positions = POSITION_FLOPS * n * g * k * pixels
    return gemm + samples + positions


def deform_conv2d_backward_flop(grad_output_shape: Sequence[int], input_shape: Sequence[int],
                                offset_shape: Sequence[int], weight_shape: Sequence[int],
                                mask_shape: Optional[Sequence[int]], stride: Any, padding: Any, dilation: Any,
                                needs: Sequence[bool], *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of the backward of one deformable convolution, for the gradients in ``needs`` (input, offset,
    weight, mask), counted as the module docstring says."""
    n, c, o, cg, k, g, pixels = _geometry(input_shape, offset_shape, weight_shape, grad_output_shape)
    has_mask = mask_shape is not None
    want_input, want_offset, want_weight, want_mask = (bool(x) for x in needs)
    want_mask = want_mask and has_mask
    samples = n * c * k * pixels
    gemm = 2 * n * o * cg * k * pixels
    flops = 0
    if want_input or want_offset or want_mask:
        flops += gemm  # columns' gradient: weight^T @ grad_output
    if want_input:
        flops += (8 + has_mask) * samples  # scatter to 4 corners: 4 multiplies, 4 adds (+ mask)
    if want_offset:
        flops += (2 * SAMPLE_FLOPS + 2 + has_mask + 2) * samples  # d/dy, d/dx; times the column grad; accumulate
    if want_mask:
        flops += (SAMPLE_FLOPS + 2) * samples  # the sample, times the column grad, accumulated
    if want_weight:
        flops += (SAMPLE_FLOPS + has_mask) * samples + gemm  # the columns again, then grad_output @ columns^T
    if want_input or want_offset or want_mask or want_weight:
        flops += POSITION_FLOPS * n * g * k * pixels
    return flops


def register_deform_conv2d_flops() -> bool:
    """Register the two formulas with ``torch.utils.flop_counter`` (once; later calls do nothing).

    Returns True when the operators exist (``torch.ops.dcn_lessons.deform_conv2d`` is registered by importing
    :mod:`dcn_lessons.ops`) and their formulas are registered.
    """
    import dcn_lessons.ops  # noqa: F401  (registers the operators)
    from torch.utils.flop_counter import flop_registry

    ns = torch.ops.dcn_lessons
    if not (hasattr(ns, "deform_conv2d") and hasattr(ns, "deform_conv2d_backward")):
        return False
    for op, formula in ((ns.deform_conv2d, deform_conv2d_flop), (ns.deform_conv2d_backward, deform_conv2d_backward_flop)):
        if op not in flop_registry:
            register_flop_formula(op)(formula)
    return True


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones once); buffers such as BatchNorm statistics are not parameters."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class FlopReport:
    """FLOPs of one call, PyTorch's convention (a multiply-add = 2 FLOPs).

    Attributes:
        total: all FLOPs counted.
        by_operator: ``{"aten.convolution": ..., "dcn_lessons.deform_conv2d": ...}``.
        by_module: FLOPs per module name (``""`` is the whole model; nested modules include their children).
    """

    total: int
    by_operator: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> float:
        """Multiply-adds: ``total / 2`` (the convention of the ResNet paper and many detection papers)."""
        return self.total / 2


def _to_meta(model: nn.Module) -> nn.Module:
    if all(t.device.type == "meta" for t in list(model.parameters()) + list(model.buffers())):
        return model
    return copy.deepcopy(model).to("meta")


def count_flops(model: nn.Module, *inputs: Union[Tensor, Sequence[int]], backward: bool = False,
                device: Optional[str] = "meta") -> FlopReport:
    """Count the FLOPs of ``model(*inputs)`` (and of a backward pass if ``backward``) with ``FlopCounterMode``.

    Args:
        model: any module; run in its current train/eval mode.
        inputs: tensors, or shapes (tuples of ints) for tensors to make (float32).
        backward: also count the backward of ``sum`` of the output(s) (every gradient autograd computes).
        device: ``"meta"`` (default): a copy of the model on the meta device counts without computing (the model
            is deep-copied unless it is already there); None: run where the model is, on real tensors.

    Returns:
        A :class:`FlopReport`. The deformable operator is counted by :func:`deform_conv2d_flop` (registered here
        if it was not).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not inputs:
        raise ValueError("inputs: expected at least one tensor or shape")
    if device not in ("meta", None):
        raise ValueError(f"device: expected 'meta' or None, got {device!r}")
    register_deform_conv2d_flops()
    if device == "meta":
        model = _to_meta(model)
    dev = torch.device("meta") if device == "meta" else next(
        (t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    args = []
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor):
            args.append(x.to(dev) if device == "meta" else x)
        elif isinstance(x, (tuple, list, torch.Size)) and all(isinstance(s, int) and s > 0 for s in x):
            args.append(torch.randn(*x, device=dev))
        else:
            raise TypeError(f"inputs[{i}]: expected a tensor or a shape (a tuple of positive ints), got {x!r}")
    with FlopCounterMode(display=False, depth=None) as counter:
        out = model(*args)
        if backward:
            leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, Tensor) and t.requires_grad]
            if not leaves:
                raise ValueError("backward: the model's output does not require grad (all parameters frozen?)")
            sum(t.sum() for t in leaves).backward()
    counts = counter.get_flop_counts()
    by_op = {str(op): int(v) for op, v in counts.get("Global", {}).items()}
    # FlopCounterMode names modules "<RootClass>.<path>"; the root's own entry equals "Global".
    by_module = {("" if name == "Global" else name.split(".", 1)[1]): int(sum(v.values()))
                 for name, v in counts.items() if name == "Global" or "." in name}
    return FlopReport(total=int(counter.get_total_flops()), by_operator=by_op, by_module=by_module)


#: Importing this module (``import dcn_lessons.models`` does) registers the formulas, so that any
#: ``FlopCounterMode`` a user opens counts the deformable operator too.
FORMULAS_REGISTERED: bool = register_deform_conv2d_flops()
