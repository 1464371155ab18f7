"""A small training bench for lesson 05: digits under random geometry, a small CNN whose convolutions can
be swapped for deformable ones (DCNv1 §2.1 / DCNv2 §3.1-3.2), a short training loop, and the learned sampling
locations of a layer.

* :func:`geometric_digits` -- scikit-learn's bundled 8x8 handwritten digits, each warped onto an
  ``size x size`` canvas by a random affine map (scale, rotation, shear, small shift): a task where the
  geometry of the object varies from sample to sample, the case deformable convolution was made for.
* :class:`DigitNet` and :func:`make_model` -- a three-layer CNN; ``variant="plain" | "v1" | "v2"`` swaps the
  chosen 3x3 convolutions for :class:`~dcn_lessons.ops.layers.DeformConv2dPack` (v1) or
  :class:`~dcn_lessons.ops.layers.ModulatedDeformConv2dPack` (v2), keeping the plain weights, so every variant
  starts from the same numbers (a fresh v1 model *equals* the plain one; a fresh v2 one scales the deformable
  layers' weighted sums by sigmoid(0) = 0.5).
* :func:`train` -- Adam on the cross-entropy with the offset branches at ``lr * offset_lr_mult``
  (:func:`~dcn_lessons.ops.layers.offset_param_groups`), returning a :class:`History`.
* :func:`layer_input`, :func:`sampling_locations`, :func:`image_sampling_locations` -- where a deformable
  layer samples (DCNv1 Eq. 2: ``p0 + p_k + Δp_k``) for one image, in the layer's input coordinates or in image
  pixels.
* :class:`DigitRun` and :func:`train_digit_model` -- the trained networks lessons 07 and 08 look inside: one run
  with fixed seeds, its weights cached under the data root (``datasets/digit_models/``) so that a lesson trains
  each network once.
* :func:`digit_scenes` -- several digits of very different sizes per image, with instance masks: small, medium
  and large objects and background for DCNv1 Table 2 and DCNv2 Fig. 1-2 in miniature.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcn_lessons.data import digits
from dcn_lessons.ops.layers import DeformConv2dPack, ModulatedDeformConv2dPack, offset_param_groups
from dcn_lessons.reference.deform_conv import deform_sampling_positions

__all__ = [
    "VARIANTS",
    "GeometricDigits",
    "geometric_digits",
    "DigitNet",
    "to_deformable",
    "make_model",
    "History",
    "evaluate",
    "train",
    "LayerSamples",
    "layer_input",
    "sampling_locations",
    "image_sampling_locations",
    "feature_to_pixel",
    "pixel_to_feature",
    "CACHE_VERSION",
    "DigitRun",
    "TrainedDigitNet",
    "digit_model_cache",
    "train_digit_model",
    "DigitScenes",
    "digit_scenes",
]

#: The three model variants: plain convolutions, DCNv1 (offsets), DCNv2 (offsets and modulation).
VARIANTS = ("plain", "v1", "v2")

#: Fraction of the digits held out for testing (a fixed split, independent of the data seed).
TEST_FRACTION = 0.3


# ------------------------------------------------------------------------------------------------ data
@dataclass
class GeometricDigits:
    """Warped digits. ``images [n, 1, size, size]`` float32 in [0, 1], ``labels [n]`` int64, and the
    transform of each sample: ``scale [n]``, ``rotation [n]`` (degrees, counter-clockwise), ``shear [n]``
    (x += shear * y), ``shift [n, 2]`` (canvas fraction, (y, x)), ``source [n]`` (index into
    :func:`dcn_lessons.data.digits`)."""

    images: Tensor
    labels: Tensor
    scale: np.ndarray
    rotation: np.ndarray
    shear: np.ndarray
    shift: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _split_indices(n_digits: int, split: str) -> np.ndarray:
    perm = np.random.default_rng(12345).permutation(n_digits)  # fixed: train and test never share a digit
    n_test = int(round(TEST_FRACTION * n_digits))
    return np.sort(perm[n_test:] if split == "train" else perm[:n_test])


def geometric_digits(
    n: int,
    size: int = 24,
    seed: int = 0,
    split: str = "train",
    scale: tuple[float, float] = (0.55, 1.15),
    rotation: float = 50.0,
    shear: float = 0.35,
    shift: float = 0.08,
    fill: float = 0.8,
) -> GeometricDigits:
    """``n`` digits of the ``split`` drawn with replacement, each under a random affine map.

    The 8x8 digit (normalised coordinates u in [-1, 1]^2) is placed on the canvas (normalised v) by
    ``v = fill * s * R(θ) @ Sh(h) @ u + t`` with s ~ U(scale), θ ~ U(±rotation) degrees, h ~ U(±shear),
    t ~ U(±shift)^2, and read back with bilinear sampling (``F.grid_sample``, zeros outside the digit).

    Args:
        n: number of samples (>= 1).
        size: canvas side in pixels (>= 8).
        seed: seeds the choice of digits and transforms; the same arguments give the same data set.
        split: ``"train"`` or ``"test"``: a fixed 70/30 split of the 1797 digits, whatever the seed.
        scale, rotation, shear, shift, fill: the ranges above.

    Returns:
        a :class:`GeometricDigits`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size: expected an int >= 8, got {size!r}")
    if not (0 < scale[0] <= scale[1]):
        raise ValueError(f"scale: expected 0 < low <= high, got {scale!r}")
    imgs, labels = digits()
    pool = _split_indices(len(labels), split)
    rng = np.random.default_rng(seed)
    src = rng.choice(pool, size=n, replace=True)
    s = rng.uniform(scale[0], scale[1], n)
    rot = rng.uniform(-rotation, rotation, n)
    sh = rng.uniform(-shear, shear, n)
    t = rng.uniform(-shift, shift, (n, 2))
    th = np.deg2rad(rot)
    c, si = np.cos(th), np.sin(th)
    # forward map in (x, y) order as affine_grid expects; rotation counter-clockwise on screen (y down)
    R = np.stack([np.stack([c, si], -1), np.stack([-si, c], -1)], -2)  # [n, 2, 2]
    Sh = np.zeros((n, 2, 2))
    Sh[:, 0, 0] = Sh[:, 1, 1] = 1.0
    Sh[:, 0, 1] = sh
    A = fill * s[:, None, None] * (R @ Sh)
    Ainv = np.linalg.inv(A)
    txy = t[:, ::-1]  # (x, y)
    theta = np.concatenate([Ainv, -(Ainv @ txy[:, :, None])], axis=2)  # canvas -> digit
    src_img = torch.from_numpy(imgs[src]).float()[:, None]
    grid = F.affine_grid(torch.from_numpy(theta).float(), [n, 1, size, size], align_corners=False)
    out = F.grid_sample(src_img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return GeometricDigits(
        images=out.clamp_(0, 1).contiguous(),
        labels=torch.from_numpy(labels[src]).long(),
        scale=s, rotation=rot, shear=sh, shift=t, source=src,
    )


# ----------------------------------------------------------------------------------------------- model
class DigitNet(nn.Module):
    """A small CNN: three 3x3 convolutions (padding 1) each followed by batch norm and ReLU, two 2x2
    max-pools, global average pooling, a linear head.

    ``conv1 [1 -> w] -> pool -> conv2 [w -> 2w] -> pool -> conv3 [2w -> 2w] -> mean over space -> fc [2w -> 10]``. Input ``[N, 1, S, S]`` (S divisible by 4), output logits ``[N, 10]``.
    ``strides`` gives each conv's input sampling step in image pixels (1, 2, 4).
    """

    strides = {"conv1": 1, "conv2": 2, "conv3": 4}

    def __init__(self, width: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width: expected a positive int, got {width!r}")
        self.conv1: nn.Module = nn.Conv2d(1, width, 3, padding=1)
        self.conv2: nn.Module = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3: nn.Module = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(width), nn.BatchNorm2d(2 * width), nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, n_classes)
        self.variant = "plain"

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean(dim=(2, 3)))


def to_deformable(conv: nn.Conv2d, variant: str, offset_groups: int = 1) -> nn.Module:
    """A deformable copy of ``conv``: same weight and bias, zero-initialised offset branch.

    ``variant="v1"`` -> :class:`DeformConv2dPack` (equals ``conv`` until trained); ``"v2"`` ->
    :class:`ModulatedDeformConv2dPack` (equals ``0.5 * conv_without_bias + bias`` until trained);
    ``"plain"`` returns ``conv`` itself.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv: expected an nn.Conv2d, got {type(conv).__name__}")
    if variant == "plain":
        return conv
    cls = DeformConv2dPack if variant == "v1" else ModulatedDeformConv2dPack
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
              conv.dilation, conv.groups, offset_groups=offset_groups, bias=conv.bias is not None)  # type: ignore[arg-type]
    with torch.no_grad():
        new.weight.copy_(conv.weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)  # type: ignore[union-attr]
    return new.to(conv.weight.dtype)


def make_model(
    variant: str = "plain", width: int = 16, seed: int = 0, deform: Sequence[str] = ("conv2", "conv3")
) -> DigitNet:
    """A :class:`DigitNet` whose ``deform`` layers are deformable (``variant`` "v1"/"v2") or not ("plain").

    The plain network is built first from ``torch.manual_seed(seed)`` and then converted with
    :func:`to_deformable`, so the three variants of one seed start from the same weights.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    bad = [d for d in deform if d not in DigitNet.strides]
    if bad:
        raise ValueError(f"deform: expected names among {sorted(DigitNet.strides)}, got {bad}")
    torch.manual_seed(seed)
    net = DigitNet(width)
    for name in deform:
        setattr(net, name, to_deformable(getattr(net, name), variant))
    net.variant = variant
    return net


# -------------------------------------------------------------------------------------------- training
@dataclass
class History:
    """What :func:`train` recorded: the loss of every step, test accuracy at ``eval_steps``, and ``seconds``,
    the wall time of the whole call (training steps and the test evaluations)."""

    variant: str
    loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, data: GeometricDigits, batch_size: int = 256) -> float:
    """Accuracy of ``model`` on ``data`` (fraction in [0, 1]); the model is left in eval mode."""
    model.eval()
    correct = 0
    for s in range(0, len(data), batch_size):
        logits = model(data.images[s:s + batch_size])
        correct += int((logits.argmax(1) == data.labels[s:s + batch_size]).sum())
    return correct / len(data)


def train(
    model: nn.Module,
    train_set: GeometricDigits,
    test_set: Optional[GeometricDigits] = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    offset_lr_mult: float = 1.0,
    eval_every: int = 100,
    seed: int = 0,
) -> History:
    """Train with Adam on the cross-entropy for ``steps`` mini-batches (reshuffled every epoch).

    The offset/mask branches (``conv_offset``) get ``lr * offset_lr_mult`` (DCNv2 §3.2 uses 0.1 with SGD on
    detection; :func:`~dcn_lessons.ops.layers.offset_param_groups`). The test accuracy is measured every
    ``eval_every`` steps and after the last one. ``seed`` fixes the order of the batches.
    """
    if steps < 1 or batch_size < 1 or eval_every < 1:
        raise ValueError(f"steps, batch_size, eval_every: expected positive ints, got {steps}, {batch_size}, {eval_every}")
    opt = torch.optim.Adam(offset_param_groups(model, lr, offset_lr_mult), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    hist = History(variant=str(getattr(model, "variant", type(model).__name__)))
    order = torch.randperm(len(train_set), generator=gen)
    pos = 0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(train_set), generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        model.train()
        loss = F.cross_entropy(model(train_set.images[idx]), train_set.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.loss.append(loss.item())
        if test_set is not None and (step % eval_every == 0 or step == steps):
            hist.eval_steps.append(step)
            hist.test_acc.append(evaluate(model, test_set))
    hist.seconds = time.perf_counter() - start
    return hist


# -------------------------------------------------------------------------------- sampling locations
class LayerSamples(NamedTuple):
    """Where a deformable layer samples for one image (DCNv1 Eq. 2, DCNv2 Eq. 1).

    ``py, px [G, K, Ho, Wo]``: row and column of kernel point k of output (y, x), offset group g;
    ``mask [G, K, Ho, Wo]`` (the Δm_k of a v2 layer) or None (v1).
    """

    py: np.ndarray
    px: np.ndarray
    mask: Optional[np.ndarray]


@torch.no_grad()
def sampling_locations(layer: nn.Module, features: Tensor) -> LayerSamples:
    """The sampling positions ``p0 + p_k + Δp_k`` of a :class:`DeformConv2dPack` (or modulated) layer.

    Args:
        layer: a ``DeformConv2dPack`` or ``ModulatedDeformConv2dPack``.
        features: the layer's input for ONE image, ``[C, H, W]`` or ``[1, C, H, W]``.

    Returns:
        :class:`LayerSamples` in the layer's input coordinates (row, column; may lie outside the map).
        A freshly built layer returns the regular grid ``(y*stride - pad + i*dil, x*stride - pad + j*dil)``.
    """
    if not isinstance(layer, DeformConv2dPack):
        raise TypeError(f"layer: expected a DeformConv2dPack or ModulatedDeformConv2dPack, got {type(layer).__name__}")
    if features.ndim == 3:
        features = features[None]
    if features.ndim != 4 or features.shape[0] != 1:
        raise ValueError(f"features: expected [C, H, W] or [1, C, H, W], got {list(features.shape)}")
    off, m = layer.offset_and_mask(features.to(layer.conv_offset.weight.dtype))
    kk = layer.kernel_size[0] * layer.kernel_size[1]
    offset = off.double().numpy()
    mask = None if m is None else m.double().numpy().reshape(layer.offset_groups, kk, *m.shape[2:])
    py, px = deform_sampling_positions(offset, layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    return LayerSamples(py[0], px[0], mask)


@torch.no_grad()
def layer_input(model: nn.Module, name: str, image: Tensor) -> Tensor:
    """The input of ``model``'s submodule ``name`` when ``model`` runs on ``image`` (``[1, H, W]`` or
    ``[1, 1, H, W]``): ``[1, C, h, w]``. Runs the model once in eval mode with a forward hook."""
    module = dict(model.named_modules()).get(name)
    if module is None:
        raise ValueError(f"name: {name!r} is not a submodule of {type(model).__name__}")
    if image.ndim == 3:
        image = image[None]
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
    try:
        model.eval()
        model(image)
    finally:
        handle.remove()
    return seen[0]


def feature_to_pixel(p: Any, stride: int) -> Any:
    """Image-pixel coordinate of feature coordinate ``p`` (a number or an array) of a map whose input has
    stride ``stride`` (``DigitNet.strides``: 1, 2, 4, the 2x2 max-pools): ``stride*p + (stride - 1)/2``, the
    centre of the block of pixels that feature p summarises."""
    return stride * p + (stride - 1) / 2


def pixel_to_feature(q: Any, stride: int, size: int) -> Any:
    """The inverse of :func:`feature_to_pixel`, rounded to the nearest feature and clipped into ``[0, size)``:
    the unit (one coordinate) of a map of ``size`` features nearest to image pixel ``q`` (number or array)."""
    return np.clip(np.rint((np.asarray(q) - (stride - 1) / 2) / stride), 0, size - 1).astype(int)


def image_sampling_locations(model: DigitNet, name: str, image: Tensor) -> LayerSamples:
    """:func:`sampling_locations` of layer ``name`` for ``image``, mapped to image pixel coordinates
    with :func:`feature_to_pixel`."""
    s = model.strides[name]
    ls = sampling_locations(getattr(model, name), layer_input(model, name, image))
    return LayerSamples(feature_to_pixel(ls.py, s), feature_to_pixel(ls.px, s), ls.mask)


# ---------------------------------------------------------------------------- trained networks, cached
#: Bumped whenever :func:`train_digit_model` would train different weights for the same :class:`DigitRun`; part of
#: every cache key, so older cache files are simply not found.
CACHE_VERSION = 1


@dataclass(frozen=True)
class DigitRun:
    """One training run of lesson 05's digit classifier, as lessons 07 and 08 use it.

    Every field is part of the cache key of :func:`train_digit_model`. The defaults are lesson 05's full-mode run
    (``DigitNet`` of width 16, ``conv2`` and ``conv3`` deformable, 600 Adam steps on 6000 warped 24x24 training
    digits, tested on 1000 others); :meth:`lesson` gives the fast-mode sizes when ``DCN_LESSONS_FAST=1``.

    Attributes:
        variant: ``"plain"``, ``"v1"`` or ``"v2"`` (:func:`make_model`).
        deform: the convolutions made deformable (ignored for ``"plain"``), e.g. ``("conv3",)``.
        width, seed: of :func:`make_model`; ``seed`` also orders the batches.
        steps, batch_size, lr, offset_lr_mult, eval_every: of :func:`train`.
        n_train, n_test, size: the data, ``geometric_digits(n_train, size, seed=0, split="train")`` and
            ``geometric_digits(n_test, size, seed=1, split="test")`` (lesson 05's sets).
    """

    variant: str = "plain"
    deform: tuple[str, ...] = ("conv2", "conv3")
    width: int = 16
    steps: int = 600
    n_train: int = 6000
    n_test: int = 1000
    size: int = 24
    batch_size: int = 64
    lr: float = 3e-3
    offset_lr_mult: float = 1.0
    eval_every: int = 60
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {self.variant!r}")
        deform = (self.deform,) if isinstance(self.deform, str) else tuple(self.deform)
        bad = [d for d in deform if d not in DigitNet.strides]
        if bad:
            raise ValueError(f"deform: expected names among {sorted(DigitNet.strides)}, got {bad}")
        if self.variant == "plain":
            deform = ()
        object.__setattr__(self, "deform", deform)
        for name in ("width", "steps", "n_train", "n_test", "batch_size", "eval_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if not isinstance(self.size, int) or self.size < 8 or self.size % 4:
            raise ValueError(f"size: expected an int >= 8 divisible by 4 (DigitNet's two 2x2 pools), got {self.size!r}")

    @classmethod
    def lesson(cls, variant: str = "plain", deform: Sequence[str] = ("conv2", "conv3"), **changes: Any) -> "DigitRun":
        """The run a lesson trains: lesson 05's full-mode sizes, or in fast mode (``DCN_LESSONS_FAST=1``) width 8,
        40 steps on 800 training and 200 test digits; ``changes`` override any field."""
        from dcn_lessons.config import fast_or_full

        sizes = fast_or_full(dict(width=8, steps=40, n_train=800, n_test=200, eval_every=20), {})
        return cls(variant=variant, deform=tuple(deform), **{**sizes, **changes})

    @property
    def name(self) -> str:
        """A short label: ``"plain"``, ``"v1@conv2+conv3"``, ..."""
        return self.variant if self.variant == "plain" else f"{self.variant}@{'+'.join(self.deform)}"

    def key(self) -> str:
        """The cache key: a hash of every field and :data:`CACHE_VERSION`."""
        import hashlib
        import json
        from dataclasses import asdict

        text = json.dumps({"version": CACHE_VERSION, **asdict(self)}, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def data(self) -> tuple[GeometricDigits, GeometricDigits]:
        """The training and test sets of this run (lesson 05's seeds and splits); made once per process for each
        ``(n_train, n_test, size)``, since the runs a lesson trains share them (training never changes them)."""
        return _lesson_data(self.n_train, self.n_test, self.size)


@functools.lru_cache(maxsize=4)
def _lesson_data(n_train: int, n_test: int, size: int) -> tuple[GeometricDigits, GeometricDigits]:
    return (geometric_digits(n_train, size=size, seed=0, split="train"),
            geometric_digits(n_test, size=size, seed=1, split="test"))


@dataclass
class TrainedDigitNet:
    """What :func:`train_digit_model` returns: the trained network (in eval mode), its :class:`History` (the
    training that made the weights, also when they came from the cache), and where the weights were read or
    written (``path``; None when nothing was cached, ``note`` then says why)."""

    run: DigitRun
    model: DigitNet
    history: History
    from_cache: bool
    path: Optional[Any] = None
    note: str = ""


def digit_model_cache(root: Any = None) -> Any:
    """The folder of cached digit networks: ``<data root>/digit_models`` (:func:`dcn_lessons.data.data_root`,
    ``datasets/`` of the checkout unless ``DCN_LESSONS_DATA`` says otherwise), or ``root/digit_models``."""
    from pathlib import Path

    from dcn_lessons.data import data_root

    return Path(root if root is not None else data_root()) / "digit_models"


def _read_cached(path: Any, run: DigitRun) -> Optional[tuple[dict, dict]]:
    """``(state_dict, history fields)`` of a cache file written for ``run``, or None if it is not one."""
    from dataclasses import asdict

    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("key") != run.key():
        return None
    want = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(run).items()}
    got = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(blob.get("run", {})).items()}
    if got != want or not isinstance(blob.get("state_dict"), dict) or not isinstance(blob.get("history"), dict):
        return None
    return blob["state_dict"], blob["history"]


def train_digit_model(run: DigitRun, cache: bool = True, root: Any = None, verbose: bool = False) -> TrainedDigitNet:
    """Train :func:`make_model` as ``run`` says (fixed seeds), or load the weights a previous call cached.

    The weights, the training history and the run's fields are cached in ``digit_model_cache(root)/<name>-<key>.pt``
    (written to a temporary file in the same folder and renamed, so a file is never half-written; read with
    ``torch.load(weights_only=True)``, so a cache file runs no code). A cache file that cannot be read or was made
    for another run is ignored and replaced. When the folder cannot be written (a read-only checkout, the grading
    sandbox) the network is trained and returned all the same, and :attr:`TrainedDigitNet.note` says why nothing
    was cached.

    Args:
        run: what to train (:class:`DigitRun`).
        cache: False trains without reading or writing the cache.
        root: the data root (default :func:`dcn_lessons.data.data_root`).
        verbose: print one line saying whether the network was trained or loaded.

    Returns:
        :class:`TrainedDigitNet`, the model in eval mode.
    """
    import os
    import pickle
    import tempfile
    import zipfile
    from dataclasses import asdict

    if not isinstance(run, DigitRun):
        raise TypeError(f"run: expected a DigitRun, got {type(run).__name__}")
    model = make_model(run.variant, width=run.width, seed=run.seed, deform=run.deform)
    folder = digit_model_cache(root)
    path = folder / f"{run.name.replace('@', '-').replace('+', '-')}-{run.key()}.pt"
    note = ""
    if cache and path.is_file():
        try:
            found = _read_cached(path, run)
        except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            found, note = None, f"cache file {path.name} unreadable ({type(e).__name__}), trained again"
        if found is not None:
            model.load_state_dict(found[0])
            model.eval()
            hist = History(**found[1])
            if verbose:
                print(f"{run.name}: loaded from {path}")
            return TrainedDigitNet(run, model, hist, True, path, "")
    train_set, test_set = run.data()
    hist = train(model, train_set, test_set, steps=run.steps, batch_size=run.batch_size, lr=run.lr,
                 offset_lr_mult=run.offset_lr_mult, eval_every=run.eval_every, seed=run.seed)
    model.eval()
    if not cache:
        return TrainedDigitNet(run, model, hist, False, None, "cache=False")
    blob = {"key": run.key(), "run": asdict(run), "state_dict": model.state_dict(), "history": asdict(hist)}
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:  # a read-only data root: the trained network is still good, only not kept
        note = f"not cached ({folder} is not writable: {type(e).__name__}: {e.strerror or e})"
        path = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    if verbose:
        print(f"{run.name}: trained in {hist.seconds:.1f} s" + (f", saved to {path}" if path else f"; {note}"))
    return TrainedDigitNet(run, model, hist, False, path, note)


# ------------------------------------------------------------------------------------ scenes of digits
@dataclass
class DigitScenes:
    """Images holding several digits of very different sizes on a black canvas, with their instance masks.

    ``images [n, 1, S, S]`` float32 in [0, 1]; per image ``masks[i] [M_i, S, S]`` bool (the pixels where that digit's
    own coverage is at least 0.5), ``boxes[i] [M_i, 4]`` (x1, y1, x2, y2): the tight box of the mask in pixel edges
    (column c spans [c, c + 1), COCO's convention), ``labels[i] [M_i]``, ``sides[i] [M_i]`` (the side in pixels
    of the canvas the 8x8 digit was drawn onto). ``areas(i)`` gives the masks' pixel counts (COCO's ``area``).
    """

    images: Tensor
    masks: list
    boxes: list
    labels: list
    sides: list

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def areas(self, i: int) -> np.ndarray:
        """Pixel counts of the masks of image ``i``."""
        return self.masks[i].reshape(len(self.masks[i]), -1).sum(axis=1)

    def _unit_centres(self, frame: Any, map_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        uy, ux = np.meshgrid(np.arange(map_size[0]), np.arange(map_size[1]), indexing="ij")
        cy, cx = frame.to_pixel(uy, ux)
        return np.stack([uy.ravel(), ux.ravel()], 1), np.stack([np.ravel(cy), np.ravel(cx)], 1)

    def object_unit(self, i: int, j: int, frame: Any, map_size: tuple[int, int]) -> tuple[int, int]:
        """The unit ``(y, x)`` of a feature map (its :class:`~dcn_lessons.analysis.Frame` and ``(h, w)``) that sits
        on object ``j`` of image ``i``: among the units whose centre falls on a pixel of the object's mask, the one
        nearest to the mask's centroid (the unit nearest to the centroid when no centre falls on the mask)."""
        mask = self.masks[i][j]
        units, centres = self._unit_centres(frame, map_size)
        ys, xs = np.nonzero(mask)
        d = np.hypot(centres[:, 0] - ys.mean(), centres[:, 1] - xs.mean())
        h, w = mask.shape
        iy = np.clip(np.rint(centres[:, 0]), 0, h - 1).astype(int)
        ix = np.clip(np.rint(centres[:, 1]), 0, w - 1).astype(int)
        on = mask[iy, ix]
        best = int(np.argmin(np.where(on, d, np.inf))) if on.any() else int(np.argmin(d))
        return int(units[best, 0]), int(units[best, 1])

    def background_unit(self, i: int, frame: Any, map_size: tuple[int, int],
                        distance: tuple[float, float] = (6.0, 12.0)) -> Optional[tuple[int, int]]:
        """A unit of the map whose centre lies on no object, between ``distance`` pixels (Euclidean, inclusive) from
        the nearest object pixel: near enough for objects to be in its receptive field. The first such unit in
        raster order, or None."""
        units, centres = self._unit_centres(frame, map_size)
        pix = np.argwhere(self.masks[i].any(axis=0)) if len(self.masks[i]) else np.zeros((0, 2))
        if not len(pix):
            return None
        d = np.sqrt(((centres[:, None, :] - pix[None, :, :]) ** 2).sum(-1)).min(axis=1)
        ok = np.nonzero((d >= distance[0]) & (d <= distance[1]))[0]
        return None if not len(ok) else (int(units[ok[0], 0]), int(units[ok[0], 1]))


def digit_scenes(
    n: int,
    size: int = 96,
    per_image: tuple[int, int] = (2, 4),
    side: tuple[int, int] = (8, 44),
    seed: int = 0,
    split: str = "test",
    rotation: float = 30.0,
) -> DigitScenes:
    """``n`` scenes of ``per_image`` digits each, of sides drawn log-uniformly in ``side`` pixels, without overlap.

    Each digit is one :func:`geometric_digits` sample (``fill=1``, scale 0.9-1.1, rotation ±``rotation``°, shear
    ±0.2, no shift) of its own side, pasted at a random place where its box keeps a 2-pixel margin from the
    others' (placements that do not fit are redrawn, then skipped); the canvas takes the maximum of the pasted
    digits. With the defaults on a 96x96 canvas the masks span COCO's three sizes under
    :func:`dcn_lessons.detection.synthetic.coco_area_ranges` (small up to 30.7 pixels, large from 276.5): the
    scenes of DCNv1 Table 2 and DCNv2 Fig. 1-2 in miniature, for networks trained on lesson 05's digits.

    Args:
        n: number of images (>= 1); size: canvas side (>= 16); per_image: (min, max) digits per image;
        side: (min, max) digit side in pixels, 8 <= min <= max <= size; seed; split: ``"train"`` or ``"test"``
        (which digits, :func:`geometric_digits`'s fixed split); rotation: degrees.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size: expected an int >= 16, got {size!r}")
    lo, hi = (int(v) for v in per_image)
    if not 1 <= lo <= hi:
        raise ValueError(f"per_image: expected 1 <= min <= max, got {per_image!r}")
    s_lo, s_hi = (int(v) for v in side)
    if not 8 <= s_lo <= s_hi <= size:
        raise ValueError(f"side: expected 8 <= min <= max <= size ({size}), got {side!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    images = np.zeros((n, 1, size, size), dtype=np.float32)
    masks, boxes, labels, sides = [], [], [], []
    for i in range(n):
        placed: list[tuple[int, int, int]] = []  # (y0, x0, side)
        obj_masks, obj_labels, obj_sides = [], [], []
        for _ in range(int(rng.integers(lo, hi + 1))):
            s = int(round(float(np.exp(rng.uniform(np.log(s_lo), np.log(s_hi))))))
            for _attempt in range(20):
                y0, x0 = (int(v) for v in rng.integers(0, size - s + 1, size=2))
                if all(y0 >= py + ps + 2 or py >= y0 + s + 2 or x0 >= px + ps + 2 or px >= x0 + s + 2
                       for py, px, ps in placed):
                    break
            else:
                continue
            d = geometric_digits(1, size=s, seed=int(rng.integers(2**31)), split=split, scale=(0.9, 1.1),
                                 rotation=rotation, shear=0.2, shift=0.0, fill=1.0)
            patch = d.images[0, 0].numpy()
            m = np.zeros((size, size), dtype=bool)
            m[y0:y0 + s, x0:x0 + s] = patch >= 0.5
            if not m.any():
                continue
            region = images[i, 0, y0:y0 + s, x0:x0 + s]
            np.maximum(region, patch, out=region)
            placed.append((y0, x0, s))
            obj_masks.append(m)
            obj_labels.append(int(d.labels[0]))
            obj_sides.append(s)
        mk = np.stack(obj_masks) if obj_masks else np.zeros((0, size, size), dtype=bool)
        bx = np.zeros((len(mk), 4))
        for j, m in enumerate(mk):
            ys, xs = np.nonzero(m)
            bx[j] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        masks.append(mk)
        boxes.append(bx)
        labels.append(np.array(obj_labels, dtype=np.int64))
        sides.append(np.array(obj_sides, dtype=np.int64))
    return DigitScenes(torch.from_numpy(images), masks, boxes, labels, sides)
