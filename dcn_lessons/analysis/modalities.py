r"""DCNv2 §2.1's three views of the spatial support of one network node.

A *node* is one location ``(y, x)`` of a feature map (the output of a submodule of a model), optionally one
channel of it. Its *response* is the sum over its channels (the selected one, or all of them) at that location,
``r(I) = Σ_c F_c(I)[y, x]``, as in the effective-receptive-field paper DCNv2 cites (Luo et al. 2016: a gradient
of 1 at the node in every channel); :func:`saliency_region` compares the whole channel vector instead.

* :func:`effective_receptive_field` -- "the gradient of the node response with respect to intensity
  perturbations of each image pixel": ``|∂r/∂I|`` summed over the image channels, ``[H, W]``. For a plain
  network it is zero outside the theoretical receptive field (:func:`~dcn_lessons.analysis.frames.receptive_field`).
* :func:`effective_sampling_locations` -- "the gradient of the network node with respect to the sampling / bin
  locations": every sampling position ``p + p_k + Δp_k`` of one (deformable) layer, weighted by
  ``‖∂r/∂Δp_k(p)‖``, the gradient with respect to its offset (the position is the regular grid plus the offset, so
  the two gradients are the same). A plain ``nn.Conv2d`` is temporarily replaced by its deformable twin (same
  weights, zero offsets, :func:`dcn_lessons.training.to_deformable`), which computes the same thing, so plain
  networks get the view too; the gradient at zero offsets follows the course's position rule (forward
  differences at integer positions). :func:`effective_bin_locations` does the same for the bins of deformable
  RoI pooling.
* :func:`saliency_region` -- "the smallest image region giving the same response as the full image, within a
  small error bound ... found by progressively masking parts of the image". The paper's §2.1 states this in words
  and refers to its appendix for the procedure, which we have not reproduced; our own precise, deterministic
  version:

  - *masking*: ``I_S`` keeps the image inside the region S and sets every other pixel to ``fill`` (0 by
    default: the mean pixel for inputs normalised by the data set's mean, black for lesson 05's digits);
  - *error*: ``e(S) = ‖r(I_S) - r(I)‖₂ / ‖r(I)‖₂`` with ``r = F[:, y, x]`` the node's channel vector (the
    relative error of the response, ``relative_to="response"``, the default). A response with a large constant
    part (biases, batch norm shifts) makes every error look small; ``relative_to="masked"`` divides by
    ``‖r(I_∅) - r(I)‖₂`` instead, I_∅ the fully masked image, so that e(S) is the share of the *image-driven*
    change of the response that the region fails to reproduce (1 for the empty region);
  - *growth*: a nested family ``S_1 ⊂ S_2 ⊂ ... ⊂ S_m`` = the whole image. ``order="square"``: squares (clipped
    to the image) of half-side 0, 1, 2, ... pixels centred on the node's centre; ``order="erf"``: the pixels in
    decreasing order of the effective receptive field (ties by distance to the centre, then raster order), with
    ``steps`` pixel counts growing geometrically from 1 to H·W (each about ``(H·W)^(1/steps)`` times the last);
  - *region*: ``S_t`` for the smallest t such that ``e(S_j) <= eps`` for every j >= t ("stays within": a region
    whose error happens to dip below the bound while a larger one exceeds it is not accepted). The whole image
    has error 0, so the region always exists. One forward pass per candidate, batched: for squares ``m`` is one more
    than the Chebyshev distance from the centre to the farthest pixel (about half the image side for a central
    node), for the ERF order at most ``steps``.

All functions run the model in eval mode and put the train/eval flags of its modules back afterwards; they never
touch parameter ``.grad`` (gradients come from ``torch.autograd.grad``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor, nn

from dcn_lessons.analysis.frames import Frame
from dcn_lessons.analysis.sampling import RoIBins, roi_bin_locations
from dcn_lessons.ops import DeformConv2dPack, DeformRoIPoolPack
from dcn_lessons.training import sampling_locations, to_deformable

__all__ = [
    "Node",
    "feature_map",
    "node_response",
    "effective_receptive_field",
    "EffectiveSamples",
    "effective_sampling_locations",
    "effective_bin_locations",
    "SaliencyRegion",
    "saliency_region",
]

ORDERS = ("square", "erf")


class Node(NamedTuple):
    """A node: location ``(y, x)`` of a feature map, and one ``channel`` or None (all channels)."""

    y: int
    x: int
    channel: Optional[int] = None


class _Stop(Exception):
    """Raised by the hook that captures a submodule's output, to skip the rest of the forward pass."""


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, f in flags.items():
            m.training = f


def _as_batch(image: Any, model: nn.Module) -> Tensor:
    if not isinstance(image, Tensor):
        raise TypeError(f"image: expected a torch.Tensor [C, H, W] or [1, C, H, W], got {type(image).__name__}")
    x = image[None] if image.ndim == 3 else image
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"image: expected [C, H, W] or [1, C, H, W] (one image), got {list(image.shape)}")
    p = next(model.parameters(), None)
    return x.detach().to(p.dtype if p is not None else x.dtype)


def feature_map(model: nn.Module, image: Tensor, output: Optional[str] = None) -> Tensor:
    """``[N, C, h, w]``: the output of submodule ``output`` of ``model`` (None: of the model itself) on ``image``
    (``[N, C, H, W]``). The forward pass stops once that submodule has run; gradients flow as usual. A vector
    output ``[N, C]`` (a classifier's logits) is returned as a 1x1 map, so its node is ``(0, 0, class)``."""
    if output is None:
        out = model(image)
    else:
        module = model.get_submodule(output)
        seen: list[Tensor] = []

        def hook(mod: nn.Module, args: Any, out: Tensor) -> None:
            seen.append(out)
            raise _Stop

        handle = module.register_forward_hook(hook)
        try:
            model(image)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not seen:
            raise ValueError(f"output: submodule {output!r} did not run in the forward pass")
        out = seen[0]
    if isinstance(out, Tensor) and out.ndim == 2:  # a vector output (logits): a 1x1 map, node (0, 0, class)
        out = out[:, :, None, None]
    if not isinstance(out, Tensor) or out.ndim != 4:
        raise ValueError(f"output: expected a feature map [N, C, h, w] (or a vector [N, C]), got "
                         f"{list(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
    return out


def node_response(fmap: Tensor, node: Node) -> Tensor:
    """``[N, C']``: the node's channel vector (C' = 1 for one channel, else all C channels) from ``fmap [N, C, h, w]``."""
    node = Node(*node)
    _, c, h, w = fmap.shape
    if not (0 <= node.y < h and 0 <= node.x < w):
        raise ValueError(f"node: expected (y, x) on the {h}x{w} feature map, got ({node.y}, {node.x})")
    if node.channel is not None and not 0 <= node.channel < c:
        raise ValueError(f"node: channel {node.channel} is not among the {c} channels of the feature map")
    v = fmap[:, :, node.y, node.x]
    return v if node.channel is None else v[:, node.channel:node.channel + 1]


def effective_receptive_field(model: nn.Module, image: Tensor, node: Any, output: Optional[str] = None) -> np.ndarray:
    """The effective receptive field of ``node`` (DCNv2 §2.1, after Luo et al. 2016): ``|∂r/∂I|`` ``[H, W]``.

    Args:
        model: the network (run in eval mode).
        image: ``[C, H, W]`` or ``[1, C, H, W]``.
        node: a :class:`Node` or ``(y, x[, channel])`` on the map of ``output``.
        output: name of the submodule whose output holds the node; None: the model's output.

    Returns:
        float64 ``[H, W]``: the absolute gradient of the response ``r`` (sum over the node's channels), summed
        over the image channels. One backward pass.
    """
    with _eval_mode(model):
        x = _as_batch(image, model).requires_grad_(True)
        r = node_response(feature_map(model, x, output), Node(*node)).sum()
        (g,) = torch.autograd.grad(r, x)
    return g[0].abs().sum(0).double().numpy()


class EffectiveSamples(NamedTuple):
    """Sampling positions of one layer weighted by their gradient (DCNv2's effective sampling locations).

    ``points [n, 2]``: (row, column) image pixels of every sampling position ``p + p_k + Δp_k`` of the layer
    (all offset groups, kernel points and output units, in that order); ``grad [n, 2]``: ``∂r/∂(Δy, Δx)`` per
    input-map pixel; ``weights [n]``: ``‖grad‖``. Positions that do not influence the node have weight 0.
    """

    points: np.ndarray
    grad: np.ndarray
    weights: np.ndarray


@contextmanager
def _deformable_view(model: nn.Module, layer: str) -> Iterator[DeformConv2dPack]:
    """Yield ``model.<layer>`` as a deformable layer: itself, or (for an ``nn.Conv2d``) its zero-offset deformable
    twin put in its place for the duration of the block."""
    module = model.get_submodule(layer)
    if isinstance(module, DeformConv2dPack):
        yield module
        return
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"layer: expected {layer!r} to be an nn.Conv2d or a DeformConv2dPack, got "
                        f"{type(module).__name__}")
    parent_name, _, attr = layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    twin = to_deformable(module, "v1")
    setattr(parent, attr, twin)
    try:
        yield twin
    finally:
        setattr(parent, attr, module)


def effective_sampling_locations(
    model: nn.Module, image: Tensor, node: Any, layer: str, frame: Frame, output: Optional[str] = None
) -> EffectiveSamples:
    """Every sampling position of ``layer`` weighted by ``‖∂r/∂Δp‖`` (DCNv2 §2.1, effective sampling locations).

    Args:
        model, image, node, output: as :func:`effective_receptive_field`.
        layer: name of a ``DeformConv2dPack`` (or modulated) submodule, or of a plain ``nn.Conv2d`` (then its
            zero-offset deformable twin stands in for it during the call; the model is restored afterwards).
        frame: the :class:`~dcn_lessons.analysis.frames.Frame` of ``layer``'s input map.

    Returns:
        :class:`EffectiveSamples`. One forward and one backward pass (the offsets are read from the layer's own
        ``conv_offset`` branch with a hook, and the gradient is taken with respect to them).
    """
    with _eval_mode(model), _deformable_view(model, layer) as dlayer:
        seen: list[Tensor] = []
        seen_input: list[Tensor] = []
        h1 = dlayer.conv_offset.register_forward_hook(lambda m, a, out: seen.append(out))
        h2 = dlayer.register_forward_hook(lambda m, a, out: seen_input.append(a[0].detach()))
        try:
            x = _as_batch(image, model)
            r = node_response(feature_map(model, x, output), Node(*node)).sum()
        finally:
            h1.remove()
            h2.remove()
        if not seen:
            raise ValueError(f"layer: {layer!r} did not run before the node's map was computed")
        k = dlayer.kernel_size[0] * dlayer.kernel_size[1]
        split = 2 * dlayer.offset_groups * k
        if r.requires_grad:
            (g,) = torch.autograd.grad(r, seen[0], allow_unused=True)
            g = torch.zeros_like(seen[0]) if g is None else g
        else:
            g = torch.zeros_like(seen[0])
        ls = sampling_locations(dlayer, seen_input[0])
    grad = g[0, :split].double().reshape(dlayer.offset_groups, k, 2, *g.shape[2:])  # [G, K, 2, Ho, Wo]
    grad = grad.permute(0, 1, 3, 4, 2).reshape(-1, 2).numpy()
    y, x = frame.to_pixel(ls.py, ls.px)  # [G, K, Ho, Wo]
    points = np.stack([y.ravel(), x.ravel()], axis=1)
    return EffectiveSamples(points, grad, np.linalg.norm(grad, axis=1))


def effective_bin_locations(
    pack: DeformRoIPoolPack,
    features: Tensor,
    roi: Any,
    head: Optional[Callable[[Tensor], Tensor]] = None,
) -> tuple[RoIBins, np.ndarray]:
    """The bins of ``pack`` for one ``roi`` weighted by the gradient of a node with respect to their locations.

    The node is ``head(pooled).sum()`` (e.g. one class score of a RoI head; None: the sum of the pooled features).
    The gradient with respect to the normalised offset (x, y) of bin (i, j) is divided by ``γ·(w, h)`` (the bin
    moves by ``γ·offset·(w, h)`` feature pixels), giving ``∂node/∂(bin position)`` per feature pixel; its norm is
    the bin's weight.

    Args:
        pack: a :class:`~dcn_lessons.ops.DeformRoIPoolPack` (or modulated); a fresh one is aligned RoI pooling.
        features: ``[1, C, H, W]``.
        roi: ``(x1, y1, x2, y2)`` or ``(0, x1, y1, x2, y2)`` in input-image pixels.
        head: maps the pooled ``[1, C, ph, pw]`` to the node.

    Returns:
        ``(bins, weights)``: :class:`~dcn_lessons.analysis.sampling.RoIBins` (image pixels) and ``[ph, pw]``.
    """
    if not isinstance(pack, DeformRoIPoolPack):
        raise TypeError(f"pack: expected a DeformRoIPoolPack or ModulatedDeformRoIPoolPack, got {type(pack).__name__}")
    r = torch.as_tensor(np.asarray(roi, dtype=np.float64).reshape(-1), dtype=features.dtype)
    if r.numel() == 4:
        r = torch.cat([r.new_zeros(1), r])
    rois = r.view(1, 5)
    seen: list[Tensor] = []
    with _eval_mode(pack):
        handle = pack.offset_fc.register_forward_hook(lambda m, a, out: seen.append(out))
        try:
            pooled = pack(features.detach(), rois)
        finally:
            handle.remove()
        node = (head(pooled) if head is not None else pooled).sum()
        (g,) = torch.autograd.grad(node, seen[0])
    ph, pw = pack.output_size
    offset = seen[0].detach().view(2, ph, pw)
    g = g.detach().double().view(2, ph, pw)
    w = float(r[3] - r[1]) * pack.spatial_scale
    h = float(r[4] - r[2]) * pack.spatial_scale
    gx = g[0] / (pack.gamma * w) if w > 0 else torch.zeros_like(g[0])
    gy = g[1] / (pack.gamma * h) if h > 0 else torch.zeros_like(g[1])
    bins = roi_bin_locations(rois[0], offset, (ph, pw), pack.spatial_scale,
                             pack.sampling_ratio, pack.gamma)
    return bins, torch.sqrt(gx ** 2 + gy ** 2).numpy()


# -------------------------------------------------------------------------------------- saliency region
class SaliencyRegion(NamedTuple):
    """What :func:`saliency_region` returns.

    ``mask [H, W]`` bool: the region; ``error``: its relative error ``e(S)``; ``sizes [m]`` and ``errors [m]``:
    pixel count and error of every candidate of the growth (the last is the whole image, error 0); ``index``: the
    chosen candidate; ``order [H*W]``: the pixels (flat indices) in the order the region grows.
    """

    mask: np.ndarray
    error: float
    sizes: np.ndarray
    errors: np.ndarray
    index: int
    order: np.ndarray


def _growth(order: str, height: int, width: int, centre: tuple[float, float], erf: Optional[np.ndarray],
            steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixel order (flat indices) and the candidate sizes of the nested family."""
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    dist = np.hypot(yy - centre[0], xx - centre[1]).ravel()
    raster = np.arange(height * width)
    if order == "square":
        cheb = np.maximum(np.abs(yy - centre[0]), np.abs(xx - centre[1])).ravel()
        ring = np.floor(cheb + 1e-9)  # pixel belongs to the square of half-side ring (centre may be fractional)
        idx = np.lexsort((raster, dist, ring))
        sizes = np.searchsorted(ring[idx], np.unique(ring), side="right")
    else:
        assert erf is not None
        idx = np.lexsort((raster, dist, -erf.ravel()))
        sizes = np.unique(np.geomspace(1, height * width, steps).round().astype(int))
    return idx, sizes


def saliency_region(
    model: nn.Module,
    image: Tensor,
    node: Any,
    output: Optional[str] = None,
    eps: float = 0.1,
    order: str = "square",
    centre: Optional[tuple[float, float]] = None,
    fill: float = 0.0,
    steps: int = 32,
    batch_size: int = 16,
    relative_to: str = "response",
) -> SaliencyRegion:
    """The error-bounded saliency region of ``node`` (DCNv2 §2.1), by the rule of the module docstring.

    Args:
        model, image, node, output: as :func:`effective_receptive_field`.
        eps: the error bound (relative, > 0).
        order: ``"square"`` (squares around ``centre``) or ``"erf"`` (pixels by decreasing effective receptive field).
        centre: (row, column) image pixel the squares grow from; None: the pixel where the ERF is largest (first in
            raster order on ties). For a unit of a map with :class:`~dcn_lessons.analysis.frames.Frame` f, pass
            ``f.to_pixel(y, x)``.
        fill: the value of masked pixels.
        steps: number of candidates for ``order="erf"``.
        batch_size: masked images per forward pass.
        relative_to: ``"response"`` (divide by ``‖r(I)‖``) or ``"masked"`` (by ``‖r(I_∅) - r(I)‖``).

    Returns:
        :class:`SaliencyRegion`.
    """
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
    if relative_to not in ("response", "masked"):
        raise ValueError(f"relative_to: expected 'response' or 'masked', got {relative_to!r}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps: expected a positive number, got {eps!r}")
    if not (isinstance(steps, int) and steps >= 1) or not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"steps, batch_size: expected positive ints, got {steps!r}, {batch_size!r}")
    node = Node(*node)
    x = _as_batch(image, model)
    _, _, height, width = x.shape
    erf = None
    if order == "erf" or centre is None:
        erf = effective_receptive_field(model, x, node, output)
    if centre is None:
        assert erf is not None
        centre = tuple(float(v) for v in np.unravel_index(int(np.argmax(erf)), erf.shape))
    idx, sizes = _growth(order, height, width, (float(centre[0]), float(centre[1])), erf, steps)
    rank = np.empty(height * width, dtype=np.int64)
    rank[idx] = np.arange(height * width)
    rank_t = torch.from_numpy(rank.reshape(height, width))
    errors = np.zeros(len(sizes))
    with _eval_mode(model), torch.no_grad():
        ref = node_response(feature_map(model, x, output), node)[0]
        if relative_to == "response":
            norm = float(ref.norm())
        else:
            empty = node_response(feature_map(model, torch.full_like(x, fill), output), node)[0]
            norm = float((empty - ref).norm())
        if norm == 0.0:
            what = "is 0 on the full image" if relative_to == "response" else "does not change when the image is masked"
            raise ValueError(f"node: the response at {tuple(node)} {what}, so a relative error is undefined; pick "
                             f"another node or channel")
        for s in range(0, len(sizes), batch_size):
            chunk = torch.as_tensor(sizes[s:s + batch_size])
            keep = (rank_t[None] < chunk[:, None, None]).to(x.dtype)[:, None]  # [b, 1, H, W]
            masked = x * keep + fill * (1 - keep)
            resp = node_response(feature_map(model, masked, output), node)
            errors[s:s + len(chunk)] = ((resp - ref).norm(dim=1) / norm).double().numpy()
    ok = errors <= eps
    # the smallest t with every candidate j >= t within the bound (the last candidate, the whole image, has error 0)
    bad = np.nonzero(~ok)[0]
    t = int(bad[-1] + 1) if len(bad) else 0
    t = min(t, len(sizes) - 1)
    mask = (rank < sizes[t]).reshape(height, width)
    return SaliencyRegion(mask, float(errors[t]), sizes, errors, t, idx)
