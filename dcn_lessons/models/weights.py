"""Load plain (torchvision-format) ResNet weights into any variant: plain, DCNv1, DCNv2, frozen-BN, trunk only.

Both papers start from an ImageNet-trained plain ResNet and add deformable layers whose offset branches start at
zero (weights and bias), so every key of the plain checkpoint has a place in the
deformable network, with the same shape, and the only keys left unfilled are the offset branches'
(``<layer>.conv_offset.weight`` / ``.bias``), which stay zero. :func:`load_plain_weights` checks exactly that
before it copies anything: any other missing key, any key the model has no place for, or any shape mismatch
raises a ValueError that lists them, and the model is left untouched.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Union

import torch
from torch import Tensor, nn

from dcn_lessons.models.norm import FrozenBatchNorm2d
from dcn_lessons.ops import DeformConv2dPack

__all__ = ["LoadReport", "load_plain_weights", "is_offset_key"]

StateSource = Union[Mapping[str, Tensor], str, os.PathLike]


def is_offset_key(key: str) -> bool:
    """True for a parameter of an offset (and mask) branch: ``....conv_offset.weight`` / ``....conv_offset.bias``."""
    parts = key.split(".")
    return len(parts) >= 2 and parts[-2] == "conv_offset"


@dataclass(repr=False)
class LoadReport:
    """What :func:`load_plain_weights` did.

    Keys are the ResNet's (without the ``body.`` prefix of a wrapping module), except ``new_keys``.

    Attributes:
        loaded: keys copied from the checkpoint.
        offset_keys: the model's offset-branch keys the checkpoint did not have (left at zero).
        new_keys: other keys of the wrapping model that are not part of the ResNet (e.g. ``conv5_reduce.weight``
            of :class:`~dcn_lessons.models.ResNetFeatures`), left as initialised.
        ignored: checkpoint keys the model has no place for by design (``fc.*`` in a trunk without classifier,
            ``*.num_batches_tracked`` into frozen BatchNorm).
    """

    loaded: list[str] = field(default_factory=list)
    offset_keys: list[str] = field(default_factory=list)
    new_keys: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"LoadReport(loaded={len(self.loaded)} keys, offset_keys={len(self.offset_keys)} left at zero, "
                f"new_keys={self.new_keys!r}, ignored={len(self.ignored)})")


def _read(source: StateSource) -> Mapping[str, Tensor]:
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"source: no such file {os.fspath(source)!r}")
        state = torch.load(source, map_location="cpu", weights_only=True)
    else:
        state = source
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise TypeError(
            f"source: expected a state dict (a mapping from key to tensor, as torchvision's checkpoints) or a path "
            f"to one, got {type(state).__name__}"
        )
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(
            f"source: expected a tensor for every key, got non-tensors at {bad[:5]!r} "
            "(a training checkpoint? pass its 'state_dict' or 'model' entry)"
        )
    return state


def _find_resnet(model: nn.Module) -> tuple[nn.Module, str]:
    from dcn_lessons.models.resnet import ResNet

    if isinstance(model, ResNet):
        return model, ""
    body = getattr(model, "body", None)
    if isinstance(body, ResNet):
        return body, "body."
    raise TypeError(
        f"model: expected a dcn_lessons.models.ResNet or a module with one as .body (ResNetFeatures), "
        f"got {type(model).__name__}"
    )


def load_plain_weights(model: nn.Module, source: StateSource, *, reset_offsets: bool = True) -> LoadReport:
    """Copy a plain ResNet checkpoint (torchvision's keys) into ``model``, checking every key and shape first.

    Args:
        model: a :class:`~dcn_lessons.models.ResNet` (any recipe, norm, width, dilation, stride placement) or a
            module holding one as ``.body`` (:class:`~dcn_lessons.models.ResNetFeatures`).
        source: a state dict or the path of a file saved with ``torch.save(state_dict)`` (e.g. torchvision's
            ``resnet50-*.pth`` downloaded once; read with ``weights_only=True``).
        reset_offsets: zero every offset branch after loading (the papers' initialisation), so the loaded DCNv1
            network computes what the plain one does even if the model had been trained before.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: a ResNet key other than an offset branch's is missing from the checkpoint, the checkpoint has
            a key the model has no place for, or a shape differs (another depth or ``width``); nothing is copied.
        TypeError / FileNotFoundError: ``source`` is not a state dict or a readable file.

    The loaded DCNv2 network is not the plain one: its modulated convs start at half amplitude (mask 0.5), and the
    BatchNorm after each one was fitted to the full amplitude (see :mod:`dcn_lessons.models.resnet`).
    """
    state = _read(source)
    net, prefix = _find_resnet(model)
    own = net.state_dict()
    frozen_bn = {name for name, m in net.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    has_fc = getattr(net, "fc", None) is not None
    report = LoadReport()

    unexpected = []
    for k in state:
        if k in own:
            continue
        owner = k.rsplit(".", 1)[0]
        if (k.endswith(".num_batches_tracked") and owner in frozen_bn) or (not has_fc and k.split(".")[0] == "fc"):
            report.ignored.append(k)
        else:
            unexpected.append(k)
    missing = []
    for k in own:
        if k in state:
            continue
        if is_offset_key(k):
            report.offset_keys.append(k)
        elif k.endswith(".num_batches_tracked"):
            continue  # BatchNorm's step counter, absent from frozen-BN checkpoints: BatchNorm fills it in
        else:
            missing.append(k)
    shapes = [
        f"{k}: model {list(own[k].shape)}, checkpoint {list(state[k].shape)}"
        for k in state if k in own and own[k].shape != state[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint (only offset branches may be): {missing[:8]}"
                        + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"in the checkpoint but not in the model: {unexpected[:8]}"
                        + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""))
    if shapes:
        problems.append(f"shape mismatches (another depth or width?): {shapes[:8]}"
                        + (f" and {len(shapes) - 8} more" if len(shapes) > 8 else ""))
    if problems:
        raise ValueError("source: not a plain checkpoint of this ResNet; nothing was loaded. " + "; ".join(problems))

    to_load = {k: v for k, v in state.items() if k in own}
    result = net.load_state_dict(to_load, strict=False)
    left = [k for k in result.missing_keys if not is_offset_key(k)]
    assert not left and not result.unexpected_keys, (left, result.unexpected_keys)
    report.loaded = list(to_load)
    if reset_offsets:
        for m in net.modules():
            if isinstance(m, DeformConv2dPack):
                m.init_offset()
    if prefix:
        body_keys = {prefix + k for k in own}
        report.new_keys = [k for k in model.state_dict() if k not in body_keys]
    return report
