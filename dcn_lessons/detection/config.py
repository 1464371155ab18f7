"""The detector's configuration: TOML files under ``dcn_lessons/detection/configs/``, read with ``tomllib`` and
checked key by key.

**The files.** ``regular``, ``dcnv1`` (``dconv@c5`` + deformable RoI pooling), ``dcnv2`` (``mdconv@c3-c5`` +
modulated deformable RoI pooling) and ``dcnv2_mimic`` (DCNv2 + R-CNN feature mimicking) are CPU-sized (a small
ResNet, ~128-pixel images, anchors and sampling scaled to them); ``coco/<name>`` is the same network at the
papers' size (ResNet-50, shorter side 1000, the papers' proposal counts, sampling and solver). A file may start
with ``extends = "other"`` (or a list, merged left to right) and then only states what differs; files whose
name starts with ``_`` are shared parts, not configs. After merging, **every key must be present** (the files,
not Python defaults, are the one place values live): ``_cpu.toml`` lists all of them with a comment each.

**Checks.** An unknown section or key, a value of the wrong type, a missing key, or a value out of its range
raises :class:`ConfigError` naming the file that set it, the key and what was expected. Integers are accepted
where a float is expected; nothing else is converted.

Use :func:`load_config` (a name from :func:`available_configs`, or a path to a ``.toml`` file),
:func:`config_to_dict` / :func:`config_from_dict` to store a config with a checkpoint and read it back.
"""
from __future__ import annotations

import math
import tomllib
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping, Union

__all__ = [
    "CONFIG_DIR",
    "ConfigError",
    "InputConfig",
    "BackboneConfig",
    "RPNConfig",
    "RoIHeadConfig",
    "MimicConfig",
    "SolverConfig",
    "DetectorConfig",
    "available_configs",
    "load_config",
    "config_from_dict",
    "config_to_dict",
]

#: The folder of the shipped configs (``*.toml`` and ``coco/*.toml``).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

POOLS = ("align", "dpool", "mdpool")
NORMS = ("bn", "gn", "frozen_bn")
MIMIC_REGIONS = ("fg", "fg_bg", "bg")
REDUCTIONS = ("sum", "mean")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


class _Invalid(ValueError):
    """Raised by a section's checks with the key's name; the loader adds the file and the section."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _need(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise _Invalid(key, message)


def _fraction(v: float) -> bool:
    return 0.0 <= v <= 1.0


@dataclass(frozen=True)
class InputConfig:
    """[input]: what the model and the data pipeline do to images.

    Attributes:
        pixel_mean, pixel_std: per-channel (RGB) normalisation of images in [0, 1], done by the model.
        train_sizes: shorter sides drawn for training (scale jitter; one value: a fixed resize).
        test_size: shorter side at evaluation.
        max_size: the longer side is at most this.
        flip: probability of a horizontal flip in training.
    """

    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    train_sizes: tuple[int, ...]
    test_size: int
    max_size: int
    flip: float

    def __post_init__(self) -> None:
        _need(len(self.pixel_mean) == 3, "pixel_mean", "expected 3 numbers (R, G, B)")
        _need(len(self.pixel_std) == 3 and all(s > 0 for s in self.pixel_std), "pixel_std",
              "expected 3 positive numbers (R, G, B)")
        _need(len(self.train_sizes) >= 1 and all(s >= 16 for s in self.train_sizes), "train_sizes",
              "expected at least one shorter side, each >= 16")
        _need(self.test_size >= 16, "test_size", "expected an int >= 16")
        _need(self.max_size >= max(max(self.train_sizes), self.test_size), "max_size",
              "expected >= every train size and the test size")
        _need(_fraction(self.flip), "flip", "expected a probability in [0, 1]")


@dataclass(frozen=True)
class BackboneConfig:
    """[backbone]: the ResNet trunk (:class:`dcn_lessons.models.ResNet`), conv4 and a stride-16 conv5.

    Attributes:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101).
        layers: blocks in conv2..conv5, e.g. ``[3, 4, 6, 3]`` for ResNet-50.
        width: channel multiplier (1: the real network; ImageNet weights exist only there).
        recipe: deformable convs, ``"none"``, ``"dconv@c5"`` (DCNv1), ``"mdconv@c3-c5"`` (DCNv2) ...
        offset_groups: offset groups of each deformable conv.
        norm: ``"bn"``, ``"gn"`` (GroupNorm, :attr:`gn_groups` groups) or ``"frozen_bn"`` (pretrained trunks).
        gn_groups: groups of GroupNorm (must divide every channel count); ignored for other norms.
        frozen_stages: 0 trains everything; k freezes the stem and conv2..conv(k) (the papers: 2, for a
            pretrained trunk).
        stride_in_1x1: bottlenecks stride in the first 1x1 conv (the MSRA ResNet the papers used).
        reduce_channels: DCNv1 §2.3's 1x1 conv reducing conv5 to this many channels; 0: none.
        output_stride: stride of conv4 and conv5: 16 (the papers), or, for images many times smaller than the
            papers', 8 (the stem's max-pool dropped) or 4 (the stem's 7x7 conv at stride 1 too).
    """

    block: str
    layers: tuple[int, ...]
    width: float
    recipe: str
    offset_groups: int
    norm: str
    gn_groups: int
    frozen_stages: int
    stride_in_1x1: bool
    reduce_channels: int
    output_stride: int

    def __post_init__(self) -> None:
        from dcn_lessons.models import parse_recipe

        _need(self.block in ("basic", "bottleneck"), "block", "expected 'basic' or 'bottleneck'")
        _need(len(self.layers) == 4 and all(n >= 1 for n in self.layers), "layers",
              "expected 4 positive block counts (conv2..conv5)")
        _need(self.width > 0, "width", "expected a positive number")
        try:
            parse_recipe(self.recipe)
        except ValueError as e:
            raise _Invalid("recipe", str(e).removeprefix("recipe: ")) from None
        _need(self.offset_groups >= 1, "offset_groups", "expected an int >= 1")
        _need(self.norm in NORMS, "norm", f"expected one of {NORMS}")
        _need(self.gn_groups >= 1, "gn_groups", "expected an int >= 1")
        _need(0 <= self.frozen_stages <= 5, "frozen_stages", "expected an int in 0..5")
        _need(self.reduce_channels >= 0, "reduce_channels", "expected an int >= 0 (0: no reduction)")
        _need(self.output_stride in (4, 8, 16), "output_stride", "expected 16 (the papers), 8 or 4")


@dataclass(frozen=True)
class RPNConfig:
    """[rpn]: the region proposal network on conv4 (Faster R-CNN §3.1).

    Attributes:
        anchor_sizes: anchor sides in input pixels (area = size²).
        aspect_ratios: anchor height/width ratios.
        channels: width of the RPN's 3x3 conv.
        pre_nms_train, pre_nms_test: best-scoring anchors per image decoded before NMS.
        post_nms_train, post_nms_test: proposals per image kept after NMS.
        nms_iou: NMS threshold on proposals (0.7).
        min_size: proposals narrower or lower than this (pixels) are dropped.
        fg_iou, bg_iou: anchor labels: foreground at IoU >= fg_iou (and each box's best anchor), background
            below bg_iou, ignored between.
        batch_per_image: anchors sampled per image for the loss (256 in the papers).
        positive_fraction: at most this fraction of them foreground (0.5: "up to 1:1").
        smooth_l1_beta: beta of the smooth L1 box loss (1/9: sigma 3 of the papers' code).
    """

    anchor_sizes: tuple[float, ...]
    aspect_ratios: tuple[float, ...]
    channels: int
    pre_nms_train: int
    post_nms_train: int
    pre_nms_test: int
    post_nms_test: int
    nms_iou: float
    min_size: float
    fg_iou: float
    bg_iou: float
    batch_per_image: int
    positive_fraction: float
    smooth_l1_beta: float

    def __post_init__(self) -> None:
        _need(len(self.anchor_sizes) >= 1 and all(a > 0 for a in self.anchor_sizes), "anchor_sizes",
              "expected at least one positive size")
        _need(len(self.aspect_ratios) >= 1 and all(r > 0 for r in self.aspect_ratios), "aspect_ratios",
              "expected at least one positive ratio")
        for k in ("channels", "pre_nms_train", "post_nms_train", "pre_nms_test", "post_nms_test", "batch_per_image"):
            _need(getattr(self, k) >= 1, k, "expected an int >= 1")
        _need(self.post_nms_train <= self.pre_nms_train, "post_nms_train", "expected <= pre_nms_train")
        _need(self.post_nms_test <= self.pre_nms_test, "post_nms_test", "expected <= pre_nms_test")
        for k in ("nms_iou", "fg_iou", "bg_iou", "positive_fraction"):
            _need(_fraction(getattr(self, k)), k, "expected a number in [0, 1]")
        _need(self.bg_iou <= self.fg_iou, "bg_iou", "expected <= fg_iou")
        _need(self.min_size >= 0, "min_size", "expected a number >= 0")
        _need(self.smooth_l1_beta >= 0, "smooth_l1_beta", "expected a number >= 0")


@dataclass(frozen=True)
class RoIHeadConfig:
    """[roi_head]: RoI pooling on conv5, two fc layers, (C+1)-way classification, class-specific boxes.

    Attributes:
        pool: ``"align"`` (aligned RoI pooling), ``"dpool"`` (DCNv1 deformable RoI pooling) or ``"mdpool"``
            (DCNv2 modulated deformable RoI pooling).
        output_size: bins per side (7).
        sampling_ratio: samples per bin side (<= 0: adaptive, ceil(bin size)).
        gamma: the offset scale γ of deformable RoI pooling (0.1).
        deform_fc_channels: hidden width of the offset (and mask) fc branches.
        fc_channels: width of the two fc layers (1024 in the papers).
        batch_per_image: RoIs sampled per image for the loss (512 in the papers).
        positive_fraction: at most this fraction of them foreground (0.25: 1:3).
        fg_iou: foreground at IoU >= fg_iou (0.5); bg_iou_low, bg_iou: background in [bg_iou_low, bg_iou).
        box_weights: weights (wx, wy, ww, wh) of the box coding (10, 10, 5, 5).
        smooth_l1_beta: beta of the smooth L1 box loss (1: sigma 1 of the papers' code).
        score_thresh: detections below this class score are dropped.
        nms_iou: per-class NMS threshold of the detections.
        detections_per_image: at most this many detections per image.
    """

    pool: str
    output_size: int
    sampling_ratio: int
    gamma: float
    deform_fc_channels: int
    fc_channels: int
    batch_per_image: int
    positive_fraction: float
    fg_iou: float
    bg_iou: float
    bg_iou_low: float
    box_weights: tuple[float, ...]
    smooth_l1_beta: float
    score_thresh: float
    nms_iou: float
    detections_per_image: int

    def __post_init__(self) -> None:
        _need(self.pool in POOLS, "pool", f"expected one of {POOLS}")
        for k in ("output_size", "deform_fc_channels", "fc_channels", "batch_per_image", "detections_per_image"):
            _need(getattr(self, k) >= 1, k, "expected an int >= 1")
        _need(self.gamma > 0, "gamma", "expected a positive number")
        for k in ("positive_fraction", "fg_iou", "bg_iou", "bg_iou_low", "score_thresh", "nms_iou"):
            _need(_fraction(getattr(self, k)), k, "expected a number in [0, 1]")
        _need(self.bg_iou_low <= self.bg_iou <= self.fg_iou, "bg_iou", "expected bg_iou_low <= bg_iou <= fg_iou")
        _need(len(self.box_weights) == 4 and all(w > 0 for w in self.box_weights), "box_weights",
              "expected 4 positive numbers (wx, wy, ww, wh)")
        _need(self.smooth_l1_beta >= 0, "smooth_l1_beta", "expected a number >= 0")


@dataclass(frozen=True)
class MimicConfig:
    """[mimic]: R-CNN feature mimicking (DCNv2 §3.3; :mod:`dcn_lessons.detection.mimic`).

    Attributes:
        enabled: build the branch (training only; it never runs at inference).
        rois_per_image: |Ω| at most, per image (32 in DCNv2).
        crop_size: side of the resized crops (224 in DCNv2).
        regions: which proposals to mimic (DCNv2 Table 3): ``"fg"`` (IoU >= fg_iou, the paper's choice),
            ``"fg_bg"`` (any proposal) or ``"bg"`` (IoU < fg_iou).
        fg_iou: the IoU that makes a proposal positive (0.5).
        mimic_weight, cls_weight: weights of the mimic loss and of the R-CNN classification loss (0.1 each).
        reduction: ``"sum"`` (DCNv2's formula: the sum over Ω of each image, averaged over images) or
            ``"mean"`` (the mean over all of Ω).
        start: the fraction of the training iterations that runs without the branch, in [0, 1). DCNv2 mimics
            from the first step (0), but it fine-tunes an ImageNet-trained net whose RoI features already tell
            classes apart; a net trained from scratch first has to learn that, and the cosine term, pulling
            each RoI's feature towards that of its crop, pulls as hard towards features that are the same for
            every RoI (the README's capstone section has the measurements). The training engine tells the
            model where it is (:meth:`~dcn_lessons.detection.model.DeformableFasterRCNN.set_iteration`); a model
            trained by other code mimics from its first step.
    """

    enabled: bool
    rois_per_image: int
    crop_size: int
    regions: str
    fg_iou: float
    mimic_weight: float
    cls_weight: float
    reduction: str
    start: float

    def __post_init__(self) -> None:
        _need(self.rois_per_image >= 1, "rois_per_image", "expected an int >= 1")
        _need(self.crop_size >= 16, "crop_size", "expected an int >= 16 (one stride-16 cell)")
        _need(self.regions in MIMIC_REGIONS, "regions", f"expected one of {MIMIC_REGIONS}")
        _need(_fraction(self.fg_iou), "fg_iou", "expected a number in [0, 1]")
        for k in ("mimic_weight", "cls_weight"):
            _need(self.__getattribute__(k) >= 0, k, "expected a number >= 0")
        _need(self.reduction in REDUCTIONS, "reduction", f"expected one of {REDUCTIONS}")
        _need(0 <= self.start < 1, "start", "expected a fraction of the training in [0, 1)")


@dataclass(frozen=True)
class SolverConfig:
    """[solver]: SGD with momentum and a step schedule (what the training engine reads).

    Attributes:
        lr: base learning rate for :attr:`images_per_batch` images a batch (0.02 for 16 in the papers; scale it
            linearly for another batch size).
        images_per_batch: the batch the rate is given for.
        iterations: training iterations.
        steps: iterations (as fractions of :attr:`iterations`) where the rate is multiplied by
            :attr:`lr_decay` (2/3 and 8/9 in DCNv2).
        lr_decay: the factor at each step (0.1).
        momentum, weight_decay: SGD's (0.9, 1e-4).
        warmup_iters, warmup_factor: linear warm-up from ``lr·warmup_factor`` over the first iterations.
        offset_lr_mult: learning-rate multiplier β of the offset (and mask) conv branches of the trunk (DCNv1:
            1; DCNv2: 0.1).
        roi_offset_lr_mult: the multiplier of the offset (and mask) fc branches of deformable RoI pooling
            (DCNv1: 0.01; our reading of DCNv2, whose added layers all train at 0.1: 0.1). See
            :meth:`~dcn_lessons.detection.model.DeformableFasterRCNN.param_groups`.
    """

    lr: float
    images_per_batch: int
    iterations: int
    steps: tuple[float, ...]
    lr_decay: float
    momentum: float
    weight_decay: float
    warmup_iters: int
    warmup_factor: float
    offset_lr_mult: float
    roi_offset_lr_mult: float

    def __post_init__(self) -> None:
        _need(self.lr > 0, "lr", "expected a positive number")
        _need(self.images_per_batch >= 1, "images_per_batch", "expected an int >= 1")
        _need(self.iterations >= 1, "iterations", "expected an int >= 1")
        _need(all(0 < s < 1 for s in self.steps) and list(self.steps) == sorted(self.steps), "steps",
              "expected increasing fractions of the training in (0, 1)")
        _need(0 < self.lr_decay <= 1, "lr_decay", "expected a number in (0, 1]")
        _need(0 <= self.momentum < 1, "momentum", "expected a number in [0, 1)")
        _need(self.weight_decay >= 0, "weight_decay", "expected a number >= 0")
        _need(self.warmup_iters >= 0, "warmup_iters", "expected an int >= 0")
        _need(0 < self.warmup_factor <= 1, "warmup_factor", "expected a number in (0, 1]")
        _need(self.offset_lr_mult > 0, "offset_lr_mult", "expected a positive number")
        _need(self.roi_offset_lr_mult > 0, "roi_offset_lr_mult", "expected a positive number")


@dataclass(frozen=True)
class DetectorConfig:
    """A whole configuration: top-level keys and one section per part.

    Attributes:
        name: the config's name (``"dcnv2_mimic"``, ``"coco/dcnv2"``).
        description: one line on what it is.
        num_classes: C, the object classes of the data it is meant for (8 for the synthetic set, 80 for COCO);
            the model builder can override it with the dataset's.
    """

    name: str
    description: str
    num_classes: int
    input: InputConfig
    backbone: BackboneConfig
    rpn: RPNConfig
    roi_head: RoIHeadConfig
    mimic: MimicConfig
    solver: SolverConfig

    def __post_init__(self) -> None:
        _need(self.num_classes >= 1, "num_classes", "expected an int >= 1")


_SECTIONS: dict[str, type] = {k: t for k, t in typing.get_type_hints(DetectorConfig).items() if is_dataclass(t)}
_TOP_KEYS = ("name", "description", "num_classes")


# ------------------------------------------------------------------------------------------ type checks
def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return "a list of " + {int: "ints", float: "numbers", str: "strings"}[typing.get_args(tp)[0]]
    return {int: "an int", float: "a number", str: "a string", bool: "true or false"}[tp]


def _convert(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (an int may stand for a float; TOML arrays become tuples), or raise TypeError."""
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list):
            raise TypeError
        return tuple(_convert(v, typing.get_args(tp)[0]) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise TypeError
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    raise TypeError


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ------------------------------------------------------------------------------------------ building
def _build(data: Mapping[str, Any], origin: Mapping[tuple[str, str], str], source: str) -> DetectorConfig:
    """A checked :class:`DetectorConfig` from merged data; ``origin[(section, key)]`` names the file of a key."""

    def where(section: str, key: str) -> str:
        return origin.get((section, key), source)

    def label(section: str, key: str) -> str:
        return f"[{section}] {key}" if section else key

    for key in data:
        if key not in _SECTIONS and key not in _TOP_KEYS:
            raise ConfigError(f"{where('', key)}: unknown key {key!r}; expected the keys {list(_TOP_KEYS)} and "
                              f"the sections {list(_SECTIONS)}")
    top_hints = _hints(DetectorConfig)
    kwargs: dict[str, Any] = {}
    for key in _TOP_KEYS:
        if key not in data:
            raise ConfigError(f"{source}: missing key {key!r} (every key must be set, here or in a file it extends)")
        try:
            kwargs[key] = _convert(data[key], top_hints[key])
        except TypeError:
            raise ConfigError(f"{where('', key)}: {key}: expected {_type_name(top_hints[key])}, "
                              f"got {data[key]!r}") from None
    for section, cls in _SECTIONS.items():
        table = data.get(section)
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: missing section [{section}]" if table is None else
                              f"{where('', section)}: {section}: expected a table [{section}], got {table!r}")
        hints = _hints(cls)
        for key in table:
            if key not in hints:
                raise ConfigError(f"{where(section, key)}: unknown key [{section}] {key}; expected one of "
                                  f"{list(hints)}")
        values = {}
        for key, tp in hints.items():
            if key not in table:
                raise ConfigError(f"{source}: missing key [{section}] {key} (every key must be set, here or in "
                                  f"a file it extends)")
            try:
                values[key] = _convert(table[key], tp)
            except TypeError:
                raise ConfigError(f"{where(section, key)}: {label(section, key)}: expected {_type_name(tp)}, "
                                  f"got {table[key]!r}") from None
        try:
            kwargs[section] = cls(**values)
        except _Invalid as e:
            raise ConfigError(f"{where(section, e.key)}: {label(section, e.key)} = {values.get(e.key)!r}: "
                              f"{e}") from None
    try:
        return DetectorConfig(**kwargs)
    except _Invalid as e:
        raise ConfigError(f"{where('', e.key)}: {e.key} = {kwargs.get(e.key)!r}: {e}") from None


def _merge(base: dict, over: Mapping[str, Any]) -> None:
    """Merge ``over`` into ``base``: tables key by key, everything else replaced."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key].update(value)
        else:
            base[key] = dict(value) if isinstance(value, dict) else value


def _origins(raw: Mapping[str, Any], file: str) -> dict:
    """``{(section, key): file}`` for every key ``raw`` sets (top-level keys under section ``""``)."""
    out = {("", key): file for key in raw}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update({(key, k): file for k in value})
    return out


def _read(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict]:
    """Merged data and key origins of ``path`` and the files it extends."""
    if path in chain:
        raise ConfigError(f"{path}: extends itself through {' -> '.join(p.name for p in chain + (path,))}")
    if not path.is_file():
        raise ConfigError(f"{chain[-1] if chain else path}: config file {path} not found")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    parents = raw.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: extends: expected a config name or a list of names, got {parents!r}")
    data: dict = {}
    origin: dict = {}
    for parent in parents:
        pdata, porigin = _read(_resolve(parent, path.parent), chain + (path,))
        _merge(data, pdata)
        origin.update(porigin)
    _merge(data, raw)
    origin.update(_origins(raw, str(path)))
    return data, origin


def _resolve(name: str, folder: Path) -> Path:
    """A name relative to ``folder`` (``"dcnv2"``, ``"../dcnv2"``), with or without ``.toml``."""
    p = Path(name)
    if p.suffix != ".toml":
        p = p.with_name(p.name + ".toml")
    return (folder / p).resolve() if not p.is_absolute() else p


def available_configs() -> list[str]:
    """The shipped configs: ``["dcnv1", "dcnv2", "dcnv2_mimic", "regular", "coco/dcnv1", ...]``."""
    names = [p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in sorted(CONFIG_DIR.rglob("*.toml"))]
    return [n for n in names if not Path(n).name.startswith("_")]


def load_config(name_or_path: Union[str, Path]) -> DetectorConfig:
    """Read and check a config: a shipped name (:func:`available_configs`) or a path to a ``.toml`` file.

    Raises:
        ConfigError: an unknown name or a missing file, invalid TOML, an unknown/missing key, a wrong type or an
            out-of-range value, naming the file and the key.
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml"):
        path = Path(name_or_path).resolve()
    else:
        if text not in available_configs():
            raise ConfigError(f"config: unknown name {text!r}; expected one of {available_configs()} or a path to "
                              f"a .toml file")
        path = _resolve(text, CONFIG_DIR)
    data, origin = _read(path, ())
    return _build(data, origin, str(path))


def config_to_dict(cfg: DetectorConfig) -> dict:
    """The config as plain data (tuples as lists), e.g. to store in a checkpoint; :func:`config_from_dict`
    reads it back (checked again)."""
    def plain(v: Any) -> Any:
        if is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        return list(v) if isinstance(v, tuple) else v

    return plain(cfg)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> DetectorConfig:
    """A checked config from :func:`config_to_dict`'s output (errors name ``source``)."""
    return _build(data, {}, source)
