r"""Offsets that learn a known geometry: warp images with a known field, fit a deformable layer, compare in pixels.

**The experiment.** Take source images I, warp them with a known displacement field into J, and fix a plain
convolution ``w``. Train the offsets of one deformable layer with the same weights ``w`` so that its output on the
*warped* images matches the plain conv on the *source* images::

    minimise over Δ   Σ_n Σ_p ‖ deform_conv(J_n, Δ; w)(p) - conv(I_n; w)(p) ‖²

and compare the learned offsets with the displacement the warp applied, per location and kernel point, in pixels.

**Which displacement, and its sign.** Describe the warp by its *forward* map ``ψ(s) = s + u(s)``: the content at
source point s lands at ``ψ(s)`` in the warped image, i.e. ``J(ψ(s)) = I(s)``, or ``J(q) = I(φ(q))`` with
``φ = ψ⁻¹`` (which is how J is computed: every warped pixel q reads the source at ``φ(q)``). Kernel point k of
output p reads ``J(p + p_k + Δ_k(p)) = I(φ(p + p_k + Δ_k(p)))``, and the plain conv reads ``I(p + p_k)``. They agree
for every image exactly when ``φ(p + p_k + Δ_k) = p + p_k``, i.e. ``p + p_k + Δ_k = ψ(p + p_k)``::

    Δ_k(p) = u(p + p_k)

the *forward* displacement (source -> warped), evaluated at the kernel point's regular position in the *source*
frame. A translation that moves the content by t (``J(q) = I(q - t)``) gives ``Δ_k(p) = +t`` for every k and p; an
affine map ``ψ(s) = c + M(s - c) + t`` gives ``Δ_k(p) = (M - 1)(p + p_k - c) + t``: the kernel itself is scaled,
rotated and sheared by M, as in DCNv1 Fig. 1 (c)-(d). :func:`true_offsets` evaluates this.

**Why one offset field for a batch of images.** The offsets are one field ``[1, 2K, H, W]`` shared by N images
warped by the same field (a property of the geometry, not of an image). With one image the problem is
ill-posed: a sample's value constrains its 2-D position only along the image gradient (the aperture problem),
and the learned offsets slide along iso-contours. With N images each offset must satisfy N value constraints at
once, one per image, and the solution is unique where the images are textured. The plain conv has at least K
output channels by default (``out_channels=16``) so that its outputs determine each of the K sampled values.

**Images and accuracy.** :class:`Texture` makes smooth random images (band-limited and periodic: a Gaussian
spectrum of width ``sigma`` pixels) that can be evaluated *exactly* at any real position, so warping a texture
involves no interpolation. The only approximation left is the layer's own bilinear sampling of J (DCNv1 Eq. 3):
it smooths J between pixels, and the best-fitting offsets are biased by a few hundredths of a pixel for
``sigma = 4`` (smoother images, less bias). Any other image tensor is warped with bilinear sampling
(:func:`dcn_lessons.ops.bilinear_sample`, zero outside), which adds its own smoothing and a larger bias.

**What is compared.** Near the border the plain conv reads zero padding and the warped content leaves or enters
the frame, so only *interior* outputs count (:attr:`WarpFit.valid`): those whose kernel points, at the regular
and at the true displaced positions, all lie inside the image. The result is per location and kernel point:
``error = ‖Δ_learned - Δ_true‖₂`` in pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcn_lessons.ops import DeformConv2d, bilinear_sample
from dcn_lessons.reference.deform_conv import deform_sampling_positions

__all__ = [
    "Texture",
    "DisplacementField",
    "AffineField",
    "ElasticField",
    "warp",
    "true_offsets",
    "WarpFit",
    "fit_offsets_to_warp",
]


# ------------------------------------------------------------------------------- band-limited periodic signals
def _band_limited(n: int, size: int, sigma: float, seed: int) -> np.ndarray:
    """``[n, size, size]`` complex spectra (numpy FFT layout) of smooth real random fields: white noise times a
    Gaussian of width ``sigma`` pixels, with the DC and Nyquist terms removed (so that the field is a real
    trigonometric polynomial, exactly evaluable anywhere), normalised to unit standard deviation on the grid."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    gauss = np.exp(-2.0 * (math.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    spec = np.fft.fft2(rng.standard_normal((n, size, size))) * gauss
    if size % 2 == 0:  # the Nyquist row and column: their continuation between pixels is not real
        spec[:, size // 2, :] = 0
        spec[:, :, size // 2] = 0
    spec[:, 0, 0] = 0
    grid = np.fft.ifft2(spec).real
    return spec / grid.std(axis=(1, 2))[:, None, None]


def _evaluate(spec: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """The trigonometric polynomials of ``spec [n, S, S]`` at real positions ``(py, px)`` (any shape P):
    ``f(y, x) = (1/S²) Σ F[a, b] exp(2πi (k_a y + k_b x)/S)``, real part, ``[n, *P]``. On the grid it equals
    ``ifft2(spec)``."""
    size = spec.shape[-1]
    k = np.fft.fftfreq(size) * size
    y, x = np.asarray(py, np.float64), np.asarray(px, np.float64)
    ey = np.exp(2j * math.pi * np.outer(y.ravel(), k) / size)  # [P, S]
    ex = np.exp(2j * math.pi * np.outer(x.ravel(), k) / size)
    vals = np.einsum("nab,pa,pb->np", spec, ey, ex, optimize=True).real / size ** 2
    return vals.reshape((spec.shape[0],) + y.shape)


class Texture:
    """``n`` smooth random images ``[n, 1, size, size]`` that can be evaluated exactly at any real position.

    Each image is a real trigonometric polynomial (periodic with period ``size``): white noise filtered by a
    Gaussian of width ``sigma`` pixels, zero mean, unit standard deviation on the pixel grid.

    Args:
        n: number of images (>= 1); size: side in pixels (>= 4); sigma: smoothness in pixels (> 0); seed.

    Attributes:
        images: float64 ``[n, 1, size, size]``, the values on the grid.
    """

    def __init__(self, n: int = 8, size: int = 32, sigma: float = 4.0, seed: int = 0) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")
        if not isinstance(size, int) or size < 4:
            raise ValueError(f"size: expected an int >= 4, got {size!r}")
        if not sigma > 0:
            raise ValueError(f"sigma: expected > 0, got {sigma!r}")
        self.size, self.sigma = size, float(sigma)
        self._spec = _band_limited(n, size, float(sigma), seed)
        self.images = torch.from_numpy(np.fft.ifft2(self._spec).real.copy())[:, None]

    def sample(self, py: Any, px: Any) -> Tensor:
        """The images at real positions ``(py, px)`` (row, column; any shape P): float64 ``[n, 1, *P]``."""
        return torch.from_numpy(_evaluate(self._spec, py, px))[:, None]


# ------------------------------------------------------------------------------------------ displacement fields
class DisplacementField:
    """A forward displacement field: the content at source point s moves to ``ψ(s) = s + u(s)``.

    Subclasses implement :meth:`__call__` (``u`` at source points); :meth:`inverse` (``φ = ψ⁻¹``) defaults to the
    fixed-point iteration ``s ← q - u(s)``, which converges when u is a contraction (``|∇u| < 1``: no folding).
    """

    def __call__(self, py: Any, px: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(uy, ux)`` at source points ``(py, px)`` (any shape), pixels."""
        raise NotImplementedError

    def inverse(self, qy: Any, qx: Any, iterations: int = 100, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
        """The source points ``s`` with ``s + u(s) = q`` for warped points ``q = (qy, qx)``."""
        qy, qx = np.asarray(qy, np.float64), np.asarray(qx, np.float64)
        sy, sx = qy.copy(), qx.copy()
        for _ in range(iterations):
            uy, ux = self(sy, sx)
            ny, nx = qy - uy, qx - ux
            step = max(float(np.abs(ny - sy).max(initial=0)), float(np.abs(nx - sx).max(initial=0)))
            sy, sx = ny, nx
            if step < tol:
                break
        uy, ux = self(sy, sx)
        residual = max(float(np.abs(sy + uy - qy).max(initial=0)), float(np.abs(sx + ux - qx).max(initial=0)))
        if residual > 1e-6:
            raise ValueError(f"field: the inverse did not converge (residual {residual:.2g} px): the field folds "
                             f"(|grad u| >= 1); use a smaller amplitude or a smoother field")
        return sy, sx


class AffineField(DisplacementField):
    """``ψ(s) = c + M (s - c) + t`` on (row, column) vectors; ``u(s) = ψ(s) - s``; exact inverse.

    Args:
        matrix: ``[2, 2]`` M acting on (row, column) vectors (invertible).
        shift: t = (Δy, Δx) pixels.
        centre: c = (row, column), the point M acts about.
    """

    def __init__(self, matrix: Any = ((1.0, 0.0), (0.0, 1.0)), shift: Any = (0.0, 0.0), centre: Any = (0.0, 0.0)):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.shift = np.asarray(shift, dtype=np.float64)
        self.centre = np.asarray(centre, dtype=np.float64)
        if self.matrix.shape != (2, 2) or self.shift.shape != (2,) or self.centre.shape != (2,):
            raise ValueError(f"matrix, shift, centre: expected shapes [2, 2], [2], [2], got {list(self.matrix.shape)}, "
                             f"{list(self.shift.shape)}, {list(self.centre.shape)}")
        if not np.all(np.isfinite(self.matrix)) or abs(np.linalg.det(self.matrix)) < 1e-12:
            raise ValueError(f"matrix: expected a finite invertible 2x2 matrix, got {self.matrix.tolist()}")

    @classmethod
    def translation(cls, dy: float, dx: float) -> "AffineField":
        """Content moved by (dy, dx) pixels: ``J(q) = I(q - t)``."""
        return cls(shift=(dy, dx))

    @classmethod
    def similarity(cls, scale: float = 1.0, rotation_deg: float = 0.0, shift: Any = (0.0, 0.0),
                   centre: Any = (0.0, 0.0)) -> "AffineField":
        """Scale and rotation about ``centre`` then a shift; the rotation matrix acts on (row, column) vectors as
        in :func:`dcn_lessons.geometry.transform_offsets`."""
        t = math.radians(rotation_deg)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        return cls(scale * rot, shift, centre)

    def __call__(self, py: Any, px: Any) -> tuple[np.ndarray, np.ndarray]:
        y, x = np.asarray(py, np.float64), np.asarray(px, np.float64)
        d = np.stack([y - self.centre[0], x - self.centre[1]], axis=-1)
        moved = d @ (self.matrix - np.eye(2)).T + self.shift
        return moved[..., 0], moved[..., 1]

    def inverse(self, qy: Any, qx: Any, iterations: int = 100, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
        y, x = np.asarray(qy, np.float64), np.asarray(qx, np.float64)
        d = np.stack([y - self.centre[0] - self.shift[0], x - self.centre[1] - self.shift[1]], axis=-1)
        s = d @ np.linalg.inv(self.matrix).T + self.centre
        return s[..., 0], s[..., 1]


class ElasticField(DisplacementField):
    """A smooth random displacement field (elastic distortion, after Simard et al. 2003), exact at any point.

    Each component of u is a band-limited periodic random field of width ``sigma`` pixels (as :class:`Texture`),
    both scaled by one factor so that the largest displacement on the ``size x size`` grid is ``amplitude`` pixels.

    Args:
        size: side of the grid the field is defined on (periodic beyond it); amplitude: max ‖u‖ on the grid;
        sigma: smoothness in pixels; seed.
    """

    def __init__(self, size: int = 32, amplitude: float = 1.5, sigma: float = 6.0, seed: int = 0) -> None:
        if not isinstance(size, int) or size < 4:
            raise ValueError(f"size: expected an int >= 4, got {size!r}")
        if not amplitude >= 0 or not sigma > 0:
            raise ValueError(f"amplitude, sigma: expected amplitude >= 0 and sigma > 0, got {amplitude!r}, {sigma!r}")
        spec = _band_limited(2, size, float(sigma), seed)
        grid = np.fft.ifft2(spec).real
        peak = float(np.sqrt((grid ** 2).sum(axis=0)).max())
        self.size, self.amplitude, self.sigma = size, float(amplitude), float(sigma)
        self._spec = spec * (amplitude / peak if peak > 0 else 0.0)

    def __call__(self, py: Any, px: Any) -> tuple[np.ndarray, np.ndarray]:
        v = _evaluate(self._spec, py, px)
        return v[0], v[1]


# ------------------------------------------------------------------------------------------------ warping
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")


def warp(source: Union[Texture, Tensor], displacement: DisplacementField) -> Tensor:
    """The warped images ``J(q) = I(φ(q))`` (content at s moves to ``s + u(s)``), ``[N, C, H, W]``.

    A :class:`Texture` is evaluated exactly at ``φ(q)``; a tensor ``[N, C, H, W]`` is read there with bilinear
    sampling (DCNv1 Eq. 3, zero outside the image).
    """
    if not isinstance(displacement, DisplacementField):
        raise TypeError(f"displacement: expected a DisplacementField, got {type(displacement).__name__}")
    if isinstance(source, Texture):
        qy, qx = _grid(source.size, source.size)
        return source.sample(*displacement.inverse(qy, qx))
    if not isinstance(source, Tensor) or source.ndim != 4 or not source.is_floating_point():
        raise ValueError(f"source: expected a Texture or a floating tensor [N, C, H, W], got "
                         f"{list(source.shape) if isinstance(source, Tensor) else type(source).__name__}")
    _, _, h, w = source.shape
    sy, sx = displacement.inverse(*_grid(h, w))
    py = torch.as_tensor(sy, dtype=source.dtype, device=source.device)
    px = torch.as_tensor(sx, dtype=source.dtype, device=source.device)
    return torch.stack([bilinear_sample(img, py, px) for img in source])


def true_offsets(displacement: DisplacementField, size: tuple[int, int], kernel_size: int = 3,
                 dilation: int = 1) -> np.ndarray:
    """The offsets a "same" deformable conv must learn to undo ``displacement``: ``Δ_k(p) = u(p + p_k)``.

    Args:
        displacement: the forward field (module docstring for the derivation).
        size: (H, W) of the images; the layer has stride 1 and padding ``dilation*(kernel_size - 1)/2``.
        kernel_size: odd; dilation.

    Returns:
        float64 ``[K, 2, H, W]``: (Δy, Δx) of kernel point k at output (y, x), pixels.
    """
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd positive int, got {kernel_size!r}")
    h, w = (int(v) for v in size)
    k = kernel_size * kernel_size
    pad = dilation * (kernel_size - 1) // 2
    py, px = deform_sampling_positions(np.zeros((1, 2 * k, h, w)), kernel_size, 1, pad, dilation)
    uy, ux = displacement(py[0, 0], px[0, 0])  # [K, H, W]
    return np.stack([uy, ux], axis=1)


@dataclass
class WarpFit:
    """The result of :func:`fit_offsets_to_warp`.

    ``learned``, ``truth``: ``[K, 2, H, W]`` (Δy, Δx) pixels; ``error``: ``[K, H, W]`` ``‖learned - truth‖``;
    ``valid``: ``[H, W]`` the interior outputs that are compared; ``losses``: the training loss per step;
    ``source``, ``warped``: the images ``[N, C, H, W]``.
    """

    learned: np.ndarray
    truth: np.ndarray
    error: np.ndarray
    valid: np.ndarray
    losses: list[float] = field(default_factory=list)
    source: Optional[Tensor] = None
    warped: Optional[Tensor] = None

    @property
    def mean_error(self) -> float:
        """Mean of ``error`` over the valid outputs and every kernel point, pixels."""
        return float(self.error[:, self.valid].mean())

    @property
    def max_error(self) -> float:
        """Largest ``error`` over the valid outputs, pixels."""
        return float(self.error[:, self.valid].max())

    def fraction_within(self, tol: float = 0.1) -> float:
        """Fraction of (valid output, kernel point) pairs whose error is at most ``tol`` pixels."""
        return float((self.error[:, self.valid] <= tol).mean())

    @property
    def median_offset(self) -> np.ndarray:
        """``[2]``: the median learned (Δy, Δx) over the valid outputs and kernel points (for a translation: the
        recovered shift)."""
        return np.median(self.learned.transpose(1, 0, 2, 3)[:, :, self.valid].reshape(2, -1), axis=1)


def fit_offsets_to_warp(
    source: Union[Texture, Tensor],
    displacement: DisplacementField,
    out_channels: int = 16,
    kernel_size: int = 3,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
    weight: Optional[Tensor] = None,
) -> WarpFit:
    """Train the offsets of one deformable layer to undo a known warp, and compare them with the truth.

    The experiment and the derivation of the expected offsets are the module docstring's. The layer is a
    :class:`~dcn_lessons.ops.DeformConv2d` (stride 1, "same" padding, no bias) with the plain conv's weights,
    frozen; the only trainable tensor is its offset field ``[1, 2K, H, W]`` (zero at the start), shared by the N
    images; the loss is the mean squared difference of the two outputs; Adam with a cosine-decaying learning rate.
    Everything runs in float64.

    Args:
        source: a :class:`Texture` (exact warping) or images ``[N, C, H, W]`` (bilinear warping).
        displacement: the known forward field.
        out_channels: channels of the fixed plain conv (>= K recommended).
        kernel_size: odd kernel side.
        steps, lr: Adam steps and initial learning rate.
        seed: seeds the plain conv's weights (N(0, 1/kernel_size²)) when ``weight`` is None.
        weight: ``[out_channels, C, k, k]`` to use instead.

    Returns:
        :class:`WarpFit`; its ``mean_error``, ``fraction_within(0.1)`` and ``median_offset`` are the numbers a
        learner checks.

    Speed: the tensors are tiny, so PyTorch's intra-op threads buy nothing; on a busy 2-core machine their
    spin-waiting made 200 steps on 8 images of 20x20 take 29 s on two threads against 1.4 s on one
    (``torch.set_num_threads(1)``; measured in one process while other jobs ran). This function leaves the
    setting alone.
    """
    if not isinstance(steps, int) or steps < 1 or not lr > 0:
        raise ValueError(f"steps, lr: expected a positive int and a positive rate, got {steps!r}, {lr!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd positive int, got {kernel_size!r}")
    images = (source.images if isinstance(source, Texture) else source).to(torch.float64)
    if images.ndim != 4:
        raise ValueError(f"source: expected images [N, C, H, W], got {list(images.shape)}")
    warped = warp(source, displacement).to(torch.float64)
    n, c, h, w = images.shape
    pad = (kernel_size - 1) // 2
    if weight is None:
        gen = torch.Generator().manual_seed(seed)
        weight = torch.randn(out_channels, c, kernel_size, kernel_size, generator=gen, dtype=torch.float64)
        weight = weight / kernel_size
    weight = weight.detach().to(torch.float64)
    if weight.shape[1:] != (c, kernel_size, kernel_size):
        raise ValueError(f"weight: expected [out_channels, {c}, {kernel_size}, {kernel_size}], got {list(weight.shape)}")
    target = F.conv2d(images, weight, padding=pad)
    layer = DeformConv2d(c, weight.shape[0], kernel_size, padding=pad, bias=False).to(torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
    layer.weight.requires_grad_(False)
    k = kernel_size * kernel_size
    offset = nn.Parameter(torch.zeros(1, 2 * k, h, w, dtype=torch.float64))
    opt = torch.optim.Adam([offset], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        loss = ((layer(warped, offset.expand(n, -1, -1, -1)) - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    learned = offset.detach()[0].view(k, 2, h, w).numpy()
    truth = true_offsets(displacement, (h, w), kernel_size)
    py, px = deform_sampling_positions(np.zeros((1, 2 * k, h, w)), kernel_size, 1, pad, 1)
    ry, rx = py[0, 0], px[0, 0]  # [K, H, W] regular positions

    def inside(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)

    valid = (inside(ry, rx) & inside(ry + truth[:, 0], rx + truth[:, 1])).all(axis=0)
    if not valid.any():
        raise ValueError("displacement: no output has all its samples inside the image; use smaller displacements "
                         "or larger images")
    error = np.linalg.norm(learned - truth, axis=1)
    return WarpFit(learned, truth, error, valid, losses, images, warped)
