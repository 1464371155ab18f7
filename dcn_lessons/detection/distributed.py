"""Many processes, one training run: PyTorch's ``torch.distributed`` and ``DistributedDataParallel``, set up the
way ``torchrun`` expects.

Start a multi-GPU (or multi-node) run with PyTorch's launcher; each process trains on its own slice of every
batch and DDP averages the gradients, so every process holds the same weights after every step::

    torchrun --nproc-per-node 8 -m dcn_lessons detect train --config dcnv2_mimic_coco --device cuda ...
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --master-port 29500 --nproc-per-node 8 -m ...

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them (the ``env://`` rendezvous), picks the backend (NCCL for CUDA, gloo for the
CPU), binds each process to GPU ``LOCAL_RANK``, and returns a :class:`DistInfo`. Without those variables it
returns the single-process info and initialises nothing, so the same code runs alone.

What is shared and what is not (the engine relies on it):

* the model: :func:`wrap_model` wraps it in ``torch.nn.parallel.DistributedDataParallel``, which broadcasts
  rank 0's parameters and buffers at construction and all-reduces (averages) the gradients in backward;
* the data: each rank reads its own positions of one shuffled order (:func:`shard`), so a step sees
  ``world_size * batch_size`` different images;
* files: only rank 0 (:attr:`DistInfo.is_main`) writes checkpoints, metrics, plots and JSON;
* evaluation: each rank detects on its shard and :func:`all_gather_objects` brings every rank's detections
  to every rank, so rank 0 runs one COCOeval over the whole set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistInfo",
    "env_info",
    "current",
    "init_distributed",
    "shutdown",
    "wrap_model",
    "unwrap",
    "shard",
    "all_reduce_mean",
    "all_gather_objects",
    "broadcast_object",
    "barrier",
]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` in ``0..world_size-1``, ``local_rank`` on its node, ``backend``
    (``"gloo"``, ``"nccl"``, or None when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Any = None

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one process that writes files."""
        return self.rank == 0


def _env_int(name: str) -> int:
    raw = os.environ.get(name, "")
    try:
        v = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: expected an integer (torchrun sets it)") from None
    if v < 0:
        raise ValueError(f"environment variable {name}={raw!r}: expected an integer >= 0")
    return v


def env_info() -> DistInfo:
    """The :class:`DistInfo` ``torchrun``'s variables describe (single process when ``WORLD_SIZE`` is unset or 1);
    initialises nothing. A partial or inconsistent set of variables is an error that names them."""
    if "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] in ("", "1"):
        return DistInfo()
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start the run with "
                         "torchrun (or set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
    rank, world, local = (_env_int(k) for k in _ENV)
    if not rank < world:
        raise ValueError(f"RANK={rank} must be < WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def current() -> DistInfo:
    """The :class:`DistInfo` of the initialised process group (single process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())


def init_distributed(device: str | torch.device = "cpu") -> DistInfo:
    """Join the process group ``torchrun`` set up (``env://``), if any, and return this process's info.

    Args:
        device: ``"cpu"`` (gloo backend) or ``"cuda"`` (NCCL; the process is bound to ``cuda:LOCAL_RANK``).

    Returns:
        a :class:`DistInfo`; with ``WORLD_SIZE`` unset or 1, the single-process info (nothing initialised). A
        second call returns the group already joined.
    """
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        return current()
    info = env_info()
    if not info.enabled:
        return info
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed: cannot run with WORLD_SIZE > 1")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: CUDA is not available in this process")
        if info.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} GPU(s) visible")
        torch.cuda.set_device(info.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size)
    return current()


def shutdown() -> None:
    """Leave the process group (nothing to do when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, device: str | torch.device = "cpu",
               find_unused_parameters: bool = True) -> nn.Module:
    """``DistributedDataParallel(model)`` when ``info.enabled``, else ``model`` itself.

    ``find_unused_parameters=True`` (default) lets a step leave some parameters without a gradient (the mimic
    branch's classifier bias when a rank's images have no positive proposal: Ω is empty); it costs one walk over
    the autograd graph per step, and PyTorch warns once when a step used every parameter. With ``False``, a
    parameter without a gradient makes DDP stop with an error at the next step.
    """
    if not info.enabled:
        return model
    device = torch.device(device)
    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard(n: int, info: DistInfo) -> list[int]:
    """This rank's indices of ``range(n)``: ``rank, rank + world_size, ...`` (every index on exactly one rank)."""
    return list(range(info.rank, n, info.world_size))


def all_reduce_mean(t: Tensor, info: DistInfo) -> Tensor:
    """The mean of ``t`` over ranks (in place; ``t`` itself when not distributed)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def all_gather_objects(obj: Any, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` when not distributed."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not info.enabled:
        return obj
    box: Sequence[Any] = [obj]
    dist.broadcast_object_list(box, src=src)  # type: ignore[arg-type]
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here (nothing when not distributed)."""
    if info.enabled:
        dist.barrier()
