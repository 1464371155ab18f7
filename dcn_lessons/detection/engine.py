r"""The training engine: SGD with warm-up and steps, checkpoints that resume exactly, metrics, one to many processes.

:func:`train` trains any module with the detector's API (train mode: ``model(images, targets)`` returns a dict
of named scalar losses, the total is their sum) on any of the detection data sets
(:class:`~dcn_lessons.detection.coco.CocoDetection`, :class:`~dcn_lessons.detection.coco.SyntheticDetection`),
with the papers' recipe: SGD with momentum and weight decay, a linear warm-up, the learning rate divided by 10 at
fixed fractions of training (DCNv1 §4 / DCNv2 §4: 2/3 and 8/9 for COCO), offset branches at a multiple of the
base rate (:func:`dcn_lessons.ops.offset_param_groups`).

**One step** (:func:`train`'s loop): wait for the next batch (timed: *data wait*), tell the model which step
this is when it has a ``set_iteration(iteration, iterations)`` method (the detector's mimic branch starts at a
fraction of training), run the model under
``torch.autocast`` (mixed precision only on CUDA, ``amp = true``), average the loss terms over the processes, stop
if any is not finite, backward through ``torch.amp.GradScaler`` (a no-op without AMP), clip the gradient norm if
asked, step optimizer, scaler and scheduler. Every ``log_every`` steps a line goes to ``metrics.jsonl``; every
``checkpoint_every`` steps (and at the end) ``checkpoint.pt`` is rewritten atomically; at the end ``metrics.png``
draws the curves.

**Exact resume.** A run killed at any moment (SIGKILL included) and resumed with ``resume=True`` ends with the same
weights, bit for bit on the CPU, as one that was never interrupted. What makes it so:

* the checkpoint is written atomically (:func:`~dcn_lessons.detection.checkpoint.atomic_write`): the last one
  is always whole;
* it holds the model, optimizer (momentum buffers), scheduler and AMP scaler states, the iteration, and every
  process's random states (Python, NumPy, torch CPU and CUDA), taken after the step that ends at the checkpoint;
* the data order is a pure function of the position: :class:`TrainSampler` yields ``(epoch, index)`` pairs,
  epoch ``e``'s order is a permutation seeded by ``(seed, e)``, and a rank that has done ``k`` steps starts at
  item ``k * batch_size`` of its stream. Items themselves are pure functions of ``(epoch, index)`` (the data sets
  seed their augmentation, and the on-the-fly images, with them), so neither prefetching nor the number of
  DataLoader workers changes what a step sees; the DataLoader draws its worker seed from its own generator, so
  it never touches torch's global random state;
* ``metrics.jsonl`` is cut back to the checkpoint's iteration, so lines logged after it and before the kill are
  not kept twice.

Bit-exactness needs deterministic kernels, which the CPU has (our CPU operators, and PyTorch's with a fixed
thread count). On a GPU, ``atomicAdd`` backwards (ours and PyTorch's) make any two runs differ in the last bits,
resumed or not; the state restored is the same.

**Non-finite loss.** If a loss term is NaN or infinite, the step is not taken and :class:`NonFiniteLossError`
names the term, the iteration and the last good checkpoint (a checkpoint is never written after a bad step).

**Many processes** (``torchrun``, :mod:`dcn_lessons.detection.distributed`): the model is wrapped in
``DistributedDataParallel``; rank ``r`` of ``W`` reads items ``r, r + W, ...`` of each epoch's order; loss terms
are averaged over ranks before they are logged and checked (so a NaN on one rank stops all of them); only rank
0 writes files; the checkpoint carries each rank's random state. ``batch_size`` is per process: a step sees
``W * batch_size`` images, and ``reference_batch`` scales the learning rate linearly to it (Goyal et al. 2017).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from dcn_lessons.detection import distributed as D
from dcn_lessons.detection.checkpoint import (
    CheckpointError,
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from dcn_lessons.detection.coco import collate_detection

__all__ = [
    "TrainConfig",
    "TrainResult",
    "NonFiniteLossError",
    "TrainSampler",
    "WarmupMultiStep",
    "build_optimizer",
    "build_scheduler",
    "train",
    "read_metrics",
    "plot_metrics",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "PLOT_NAME",
]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "metrics.png"

#: TrainConfig fields that may differ between a checkpoint and the run resuming it (they change neither the
#: weights nor the data order).
RESUME_MAY_CHANGE = ("log_every", "checkpoint_every", "eval_every", "workers", "plot")


# ------------------------------------------------------------------------------------------------ config
def _check_number(name: str, v: Any, lo: float, *, integer: bool = False, strict: bool = False,
                  hi: Optional[float] = None) -> None:
    ok_type = (isinstance(v, int) if integer else isinstance(v, (int, float))) and not isinstance(v, bool)
    if not ok_type or not math.isfinite(v) or (v <= lo if strict else v < lo) or (hi is not None and v > hi):
        kind = "an int" if integer else "a number"
        rng = f"{'>' if strict else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
        raise ValueError(f"{name}: expected {kind} {rng}, got {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the ``[train]`` table of a config file; :meth:`from_dict` checks every key).

    Attributes:
        iterations: optimizer steps in the run.
        batch_size: images per process and step (a step sees ``world_size * batch_size``).
        lr: base learning rate (for ``reference_batch`` images a step when that is set).
        reference_batch: the batch ``lr`` is meant for; when > 0 the rate is scaled by
            ``world_size * batch_size / reference_batch`` (the linear scaling rule). 0: ``lr`` as given.
        momentum, weight_decay: SGD's (the papers: 0.9 and 1e-4).
        lr_steps: fractions of ``iterations`` at which the rate is multiplied by ``lr_gamma`` (the papers'
            COCO schedule: 2/3 and 8/9), increasing, in (0, 1).
        lr_gamma: the factor at each step (0.1).
        warmup_iters: steps of linear warm-up from ``warmup_factor * lr`` to ``lr`` (0: none).
        warmup_factor: the rate at step 0, as a fraction of ``lr``.
        offset_lr_mult: learning-rate multiplier of offset and modulation branches (DCNv2 §3.2: 0.1), for models
            without their own ``param_groups`` (:func:`build_optimizer`).
        lr_rules: more multipliers (same condition), ``{fnmatch pattern on parameter names: multiplier}`` (e.g.
            DCNv1's 0.01 for the fc offset branch of deformable RoI pooling); see
            :func:`dcn_lessons.ops.offset_param_groups`.
        clip_grad_norm: clip the global gradient norm to this value (0: no clipping).
        amp: mixed precision (float16 autocast and a gradient scaler); CUDA only.
        seed: seeds the data order and the random states of the step.
        workers: DataLoader worker processes (0: load in the training process).
        log_every: steps per line of ``metrics.jsonl`` (and per progress-bar update of the averages).
        checkpoint_every: steps between checkpoints (one is always written at the end).
        eval_every: steps between evaluations during training, when an evaluation is given (0: only at the end).
        find_unused_parameters: DDP's option (see :func:`~dcn_lessons.detection.distributed.wrap_model`).
        plot: draw ``metrics.png`` at the end.
    """

    iterations: int = 1000
    batch_size: int = 8
    lr: float = 0.02
    reference_batch: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: tuple[float, ...] = (2 / 3, 8 / 9)
    lr_gamma: float = 0.1
    warmup_iters: int = 100
    warmup_factor: float = 1 / 3
    offset_lr_mult: float = 0.1
    lr_rules: dict = field(default_factory=dict)
    clip_grad_norm: float = 0.0
    amp: bool = False
    seed: int = 0
    workers: int = 0
    log_every: int = 20
    checkpoint_every: int = 500
    eval_every: int = 0
    find_unused_parameters: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.lr_steps, list):
            object.__setattr__(self, "lr_steps", tuple(self.lr_steps))
        if not isinstance(self.lr_rules, dict):
            raise ValueError(f"lr_rules: expected a table {{pattern: multiplier}}, got {self.lr_rules!r}")
        object.__setattr__(self, "lr_rules", dict(self.lr_rules))
        for name in ("iterations", "batch_size", "log_every", "checkpoint_every"):
            _check_number(name, getattr(self, name), 1, integer=True)
        for name in ("reference_batch", "warmup_iters", "seed", "workers", "eval_every"):
            _check_number(name, getattr(self, name), 0, integer=True)
        _check_number("lr", self.lr, 0, strict=True)
        _check_number("momentum", self.momentum, 0, hi=1)
        _check_number("weight_decay", self.weight_decay, 0)
        _check_number("lr_gamma", self.lr_gamma, 0, strict=True, hi=1)
        _check_number("warmup_factor", self.warmup_factor, 0, strict=True, hi=1)
        _check_number("offset_lr_mult", self.offset_lr_mult, 0, strict=True)
        _check_number("clip_grad_norm", self.clip_grad_norm, 0)
        for name in ("amp", "find_unused_parameters", "plot"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        steps = self.lr_steps
        if not isinstance(steps, tuple) or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                                   and 0 < s < 1 for s in steps) \
                or any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"lr_steps: expected increasing fractions of the run in (0, 1), e.g. [0.667, 0.889], "
                             f"got {self.lr_steps!r}")
        for k, v in self.lr_rules.items():
            if not isinstance(k, str):
                raise ValueError(f"lr_rules: keys are parameter-name patterns (str), got {k!r}")
            _check_number(f"lr_rules[{k!r}]", v, 0, strict=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "[train]") -> "TrainConfig":
        """A config from a mapping (a TOML ``[train]`` table); an unknown key or a bad value raises ValueError
        naming ``source`` and the key."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{source}: expected a table of training settings, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"{source}: unknown key(s) {extra}; the training settings are {sorted(known)}")
        try:
            return cls(**dict(d))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def to_dict(self) -> dict:
        """JSON/TOML-ready fields (tuples as lists); :meth:`from_dict` inverts it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (checked again)."""
        return TrainConfig(**{**asdict(self), **changes})

    @classmethod
    def from_solver(cls, solver: Any, **run: Any) -> "TrainConfig":
        """The settings of a detector config's ``[solver]`` table
        (:class:`dcn_lessons.detection.config.SolverConfig`: ``lr`` for ``images_per_batch`` images, the steps,
        momentum, weight decay, warm-up, offset multiplier) plus the run's own (``batch_size``, ``seed``,
        ``workers``, ``checkpoint_every``, ``amp``, ...; keyword arguments, checked as :meth:`from_dict` does)."""
        base = {"lr": solver.lr, "reference_batch": solver.images_per_batch, "iterations": solver.iterations,
                "lr_steps": tuple(solver.steps), "lr_gamma": solver.lr_decay, "momentum": solver.momentum,
                "weight_decay": solver.weight_decay, "warmup_iters": solver.warmup_iters,
                "warmup_factor": solver.warmup_factor, "offset_lr_mult": solver.offset_lr_mult}
        return cls.from_dict({**base, **run}, source="[solver] and the run's options")

    def step_iterations(self) -> list[int]:
        """The iterations at which the rate is multiplied by ``lr_gamma``: ``round(f * iterations)``."""
        return [int(round(f * self.iterations)) for f in self.lr_steps]


# --------------------------------------------------------------------------------------------- schedule
class WarmupMultiStep:
    """The papers' learning-rate factor at step ``t`` (multiplies each parameter group's initial rate)::

        factor(t) = warm(t) * gamma ** #{s in steps : s <= t}
        warm(t)   = warmup_factor + (1 - warmup_factor) * t / warmup_iters   for t < warmup_iters, else 1

    (Goyal et al. 2017's linear warm-up, as Detectron trains DCNv1/DCNv2.) A plain object, so the scheduler's
    ``state_dict`` saves it with the checkpoint.
    """

    def __init__(self, steps: Sequence[int], gamma: float = 0.1, warmup_iters: int = 0,
                 warmup_factor: float = 1 / 3) -> None:
        self.steps = [int(s) for s in steps]
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, t: int) -> float:
        warm = 1.0
        if t < self.warmup_iters:
            warm = self.warmup_factor + (1.0 - self.warmup_factor) * t / self.warmup_iters
        return warm * self.gamma ** sum(1 for s in self.steps if s <= t)


def build_optimizer(model: nn.Module, cfg: TrainConfig, world_size: int = 1) -> torch.optim.SGD:
    """SGD with the config's momentum and weight decay over the trainable parameters, grouped by learning-rate
    multiplier; the base rate is ``cfg.lr``, scaled by ``world_size * batch_size / reference_batch`` when
    ``reference_batch`` is set.

    The groups are the model's own when it has a ``param_groups(base_lr)`` method (the detector's: its config
    sets the multipliers of its offset branches), else :func:`dcn_lessons.ops.offset_param_groups` with
    ``cfg.offset_lr_mult`` and ``cfg.lr_rules``. Frozen parameters are left out."""
    from dcn_lessons.ops import offset_param_groups

    lr = cfg.lr * (world_size * cfg.batch_size / cfg.reference_batch if cfg.reference_batch else 1.0)
    if hasattr(model, "param_groups"):
        groups = model.param_groups(lr)
    else:
        groups = offset_param_groups(model, lr, cfg.offset_lr_mult, extra_rules=cfg.lr_rules or None)
    kept = []
    for g in groups:
        pairs = [(n, p) for n, p in zip(g["param_names"], g["params"]) if p.requires_grad]
        if pairs:
            kept.append({**g, "param_names": [n for n, _ in pairs], "params": [p for _, p in pairs]})
    if not kept:
        raise ValueError("model: no trainable parameter (every parameter has requires_grad=False)")
    return torch.optim.SGD(kept, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :class:`WarmupMultiStep` from the config, stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupMultiStep(cfg.step_iterations(), cfg.lr_gamma, cfg.warmup_iters, cfg.warmup_factor))


# ------------------------------------------------------------------------------------------------- data
class TrainSampler(Sampler):
    """An endless stream of ``(epoch, index)`` pairs for one rank, that can start anywhere.

    Epoch ``e``'s order is ``numpy.random.default_rng([seed, e]).permutation(n)``, padded at the end with its own
    first items to a multiple of ``world_size`` (as ``DistributedSampler`` pads); rank ``r`` takes its positions
    ``r, r + world_size, ...``: ``per_rank = ceil(n / world_size)`` items an epoch. Item ``p`` of the rank's
    stream is in epoch ``p // per_rank``; the stream starts at item ``start`` (a run resumed after ``k`` steps of
    ``b`` images starts at ``k * b``).
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        for name, v, lo in (("n", n, 1), ("seed", seed, 0), ("rank", rank, 0), ("world_size", world_size, 1),
                            ("start", start, 0)):
            _check_number(name, v, lo, integer=True)
        if rank >= world_size:
            raise ValueError(f"rank: expected < world_size = {world_size}, got {rank}")
        self.n, self.seed, self.rank, self.world_size, self.start = n, seed, rank, world_size, start
        self.per_rank = -(-n // world_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's indices in epoch ``epoch`` (``per_rank`` of them)."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        total = self.per_rank * self.world_size
        if total > self.n:
            perm = np.concatenate([perm, np.resize(perm, total - self.n)])
        return perm[self.rank::self.world_size]

    def position(self, item: int) -> tuple[int, int]:
        """``(epoch, offset in the epoch)`` of item ``item`` of this rank's stream."""
        return divmod(item, self.per_rank)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = self.position(self.start)
        while True:
            order = self.epoch_order(epoch)
            for i in order[offset:]:
                yield epoch, int(i)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 2 ** 62


class _EpochItems(Dataset):
    """``dataset`` indexed by ``(epoch, index)``: selects the epoch (``set_epoch``, when the data set has one:
    it seeds augmentation and on-the-fly images) and returns item ``index``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


# ----------------------------------------------------------------------------------------------- errors
class NonFiniteLossError(RuntimeError):
    """A loss term was NaN or infinite; the step was not taken. Attributes: ``term``, ``value``, ``iteration``
    (the step that failed, 1-based), ``checkpoint`` (the last good one, or None) and its ``checkpoint_iteration``."""

    def __init__(self, term: str, value: float, iteration: int, checkpoint: Optional[Path],
                 checkpoint_iteration: int) -> None:
        self.term, self.value, self.iteration = term, value, iteration
        self.checkpoint, self.checkpoint_iteration = checkpoint, checkpoint_iteration
        where = (f"the last good checkpoint is {checkpoint} (iteration {checkpoint_iteration})" if checkpoint
                 else "no checkpoint was written before it")
        super().__init__(f"loss term {term!r} is {value} at iteration {iteration}; training stopped before that "
                         f"update; {where}")


@dataclass
class TrainResult:
    """What :func:`train` returns: the ``iteration`` reached, ``train_time_s`` (training steps only, summed over
    resumed runs), ``images_seen`` (all processes), the last ``evaluation`` summary (or None), and the files."""

    iteration: int
    train_time_s: float
    images_seen: int
    checkpoint: Optional[Path]
    metrics: Optional[Path]
    plot: Optional[Path]
    evaluation: Optional[dict] = None


# ----------------------------------------------------------------------------------------------- metrics
def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a last line cut short by a kill is ignored; any other bad line is an
    error naming the file and the line)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {k + 1} is not JSON: {line[:80]!r}") from None
    return out


def _cut_metrics(path: Path, iteration: int) -> None:
    """Keep the records of ``path`` up to ``iteration`` (rewritten atomically)."""
    kept = [r for r in read_metrics(path) if r.get("iteration", 0) <= iteration]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def plot_metrics(records: Sequence[dict], title: str = ""):
    """The curves of a run: every loss term and the total (log scale), the learning rate, images/s and the share
    of each step spent waiting for data, and AP / AP50 of the evaluations when there are any. Returns a matplotlib
    ``Figure`` (no pyplot state)."""
    from matplotlib.figure import Figure

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    ncols = 4 if evals else 3
    fig = Figure(figsize=(4.2 * ncols, 3.4))
    axes = fig.subplots(1, ncols)
    it = [r["iteration"] for r in train]
    terms = [k for k in (train[0] if train else {}) if k.startswith("loss")]
    for k in terms:
        axes[0].plot(it, [r[k] for r in train], label=k, lw=1.6 if k == "loss" else 1.0,
                     color="k" if k == "loss" else None)
    axes[0].set_yscale("log")
    axes[0].set_title("loss terms")
    if terms:
        axes[0].legend(fontsize=7)
    axes[1].plot(it, [r["lr"] for r in train], color="tab:purple")
    axes[1].set_title("learning rate")
    axes[2].plot(it, [r["images_per_s"] for r in train], color="tab:green", label="images/s")
    axes[2].set_title("throughput")
    ax2 = axes[2].twinx()
    ax2.plot(it, [100 * r["data_wait_share"] for r in train], color="tab:red", lw=0.8, label="data wait %")
    ax2.set_ylabel("% of step waiting for data", color="tab:red")
    axes[2].set_ylabel("images/s", color="tab:green")
    if evals:
        ei = [r["iteration"] for r in evals]
        for key in ("AP", "AP50", "AP75"):
            axes[3].plot(ei, [r["eval"].get(key, float("nan")) for r in evals], marker="o", label=key)
        axes[3].set_ylim(0, 1)
        axes[3].set_title("evaluation")
        axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("iteration")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93) if title else None)
    return fig


def _save_plot(records: Sequence[dict], path: Path, title: str) -> Path:
    fig = plot_metrics(records, title)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))


class _Window:
    """Sums over the steps since the last metrics line."""

    def __init__(self) -> None:
        self.steps = 0
        self.losses: dict[str, float] = {}
        self.data_s = 0.0
        self.step_s = 0.0
        self.images = 0

    def add(self, losses: Mapping[str, float], data_s: float, step_s: float, images: int) -> None:
        self.steps += 1
        for k, v in losses.items():
            self.losses[k] = self.losses.get(k, 0.0) + v
        self.data_s += data_s
        self.step_s += step_s
        self.images += images

    def record(self, iteration: int, epoch: int, lr: float, elapsed: float) -> dict:
        n = max(self.steps, 1)
        rec: dict[str, Any] = {"iteration": iteration, "epoch": epoch, "lr": lr}
        rec["loss"] = sum(self.losses.values()) / n
        rec.update({k: v / n for k, v in self.losses.items()})
        rec["images_per_s"] = self.images / self.step_s if self.step_s > 0 else 0.0
        rec["step_s"] = self.step_s / n
        rec["data_wait_s"] = self.data_s / n
        rec["data_wait_share"] = self.data_s / self.step_s if self.step_s > 0 else 0.0
        rec["train_time_s"] = elapsed
        return rec


# ------------------------------------------------------------------------------------------------- train
def _check_losses(out: Any) -> dict[str, Tensor]:
    if not isinstance(out, Mapping) or not out:
        raise TypeError(f"model: in train mode expected a non-empty dict of named scalar losses, got "
                        f"{type(out).__name__}")
    for k, v in out.items():
        if not isinstance(v, Tensor) or v.numel() != 1:
            raise TypeError(f"model: loss {k!r} must be a scalar tensor, got {getattr(v, 'shape', type(v).__name__)}")
    return dict(out)


def _state(model: nn.Module, optimizer, scheduler, scaler, iteration: int, rngs: list, cfg: TrainConfig,
           config: Optional[dict], world: int, train_time: float, images_seen: int, dataset_len: int) -> dict:
    return {
        "iteration": iteration,
        "model": D.unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rngs,
        "train": cfg.to_dict(),
        "config": config,
        "world_size": world,
        "dataset_len": dataset_len,
        "train_time_s": train_time,
        "images_seen": images_seen,
        "torch_version": torch.__version__,
    }


def _rank_seed(*key: int) -> int:
    """A seed for one rank's global generators, from ``(seed, rank[, iteration])``."""
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


def _postfix(w: dict, lr: float) -> dict:
    """The progress bar's numbers: each loss term, the learning rate, images/s and the data wait."""
    post = {k.replace("loss_", ""): f"{w[k]:.3f}" for k in w if k.startswith("loss")}
    post.update(lr=f"{lr:.2g}", img_s=f"{w['images_per_s']:.1f}", data=f"{100 * w['data_wait_share']:.0f}%")
    return post


def _resume_checks(state: dict, cfg: TrainConfig, config: Optional[dict], path: Path, info: D.DistInfo,
                   dataset_len: int) -> None:
    saved = dict(state.get("train") or {})
    now = cfg.to_dict()
    differ = sorted(k for k in set(saved) | set(now) if k not in RESUME_MAY_CHANGE and saved.get(k) != now.get(k))
    if differ:
        shown = ", ".join(f"{k} = {saved.get(k)!r} there, {now.get(k)!r} now" for k in differ[:4])
        raise CheckpointError(f"{path}: cannot resume: the training settings differ ({shown}); start a new run in "
                              "another folder, or resume with the settings of the checkpoint")
    if config is not None and state.get("config") is not None and state["config"] != config:
        keys = sorted(k for k in set(config) | set(state["config"]) if config.get(k) != state["config"].get(k))
        raise CheckpointError(f"{path}: cannot resume: the configuration differs in {keys}")
    if state.get("world_size", 1) != info.world_size or state.get("dataset_len") != dataset_len:
        warnings.warn(f"{path}: written with {state.get('world_size')} process(es) and {state.get('dataset_len')} "
                      f"items an epoch, resumed with {info.world_size} and {dataset_len}: training continues, but "
                      "not in the data order the uninterrupted run would have had", RuntimeWarning, stacklevel=3)


def train(
    model: nn.Module,
    dataset: Any,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
    config: Optional[dict] = None,
    evaluate: Optional[Callable[[nn.Module, int], dict]] = None,
    progress: bool = True,
    collate: Callable = collate_detection,
    title: str = "",
) -> TrainResult:
    """Train ``model`` on ``dataset`` for ``cfg.iterations`` steps (module docstring: the step, exact resume,
    non-finite losses, many processes).

    Args:
        model: train mode ``model(images [B, 3, H, W], targets: list[dict]) -> {name: scalar loss}``; moved to
            ``device``; wrapped in DDP when the process group is initialised
            (:mod:`~dcn_lessons.detection.distributed`).
        dataset: items ``(image, target)`` as the detection data sets return them; ``set_epoch(e)`` is called when
            it has one.
        cfg: the :class:`TrainConfig`.
        out_dir: where ``checkpoint.pt``, ``metrics.jsonl`` and ``metrics.png`` go (rank 0 only writes).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:k"`` (with torchrun, each process uses ``cuda:LOCAL_RANK``).
        resume: continue from ``out_dir/checkpoint.pt`` if there is one (else start afresh). Without it, an
            existing checkpoint in ``out_dir`` is an error (nothing is overwritten by accident).
        config: the whole experiment's settings (JSON-able), saved in the checkpoint so that evaluation and
            prediction can rebuild the model; a resume checks it is unchanged.
        evaluate: ``evaluate(model, iteration) -> summary dict`` (e.g. AP), called on every rank every
            ``cfg.eval_every`` steps and at the end; the model is put back in train mode afterwards. A resumed
            run that had finished its steps is evaluated when ``metrics.jsonl`` holds no evaluation of its last
            step (it was trained without evaluation).
        progress: a tqdm bar on rank 0 (loss terms, learning rate, images/s, data wait).
        collate: batches items into something with ``images``, ``targets`` and ``.to(device)``
            (:func:`~dcn_lessons.detection.coco.collate_detection`).
        title: written above the plot.

    Returns:
        a :class:`TrainResult`.

    Raises:
        NonFiniteLossError: a loss term was not finite (nothing was written for that step).
        CheckpointError: ``resume`` with a checkpoint of different settings, or a checkpoint in the way.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg: expected a TrainConfig, got {type(cfg).__name__}")
    device = torch.device(device)
    if cfg.amp and device.type != "cuda":
        raise ValueError(f"amp: mixed precision needs a CUDA device, got device {device}")
    n = len(dataset)
    if n < 1:
        raise ValueError("dataset: it has no items")
    info = D.current()
    out = Path(out_dir)
    ckpt_path, metrics_path, plot_path = out / CHECKPOINT_NAME, out / METRICS_NAME, out / PLOT_NAME
    if ckpt_path.exists() and not resume:
        raise CheckpointError(f"{ckpt_path}: a run is already there; pass resume (--resume) to continue it, or "
                              "choose another folder")

    model.to(device)
    optimizer = build_optimizer(model, cfg, info.world_size)
    scheduler = build_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp)

    start, train_time, images_seen = 0, 0.0, 0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        _resume_checks(state, cfg, config, ckpt_path, info, n)
        for part, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            obj.load_state_dict(state[part])
        start, train_time = int(state["iteration"]), float(state["train_time_s"])
        images_seen = int(state["images_seen"])
        if len(state["rng"]) == info.world_size:
            set_rng_state(state["rng"][info.rank])
        else:  # another number of processes: a fresh stream per rank (the warning of _resume_checks said so)
            seed_everything(_rank_seed(cfg.seed, info.rank, start))
        if info.is_main:
            _cut_metrics(metrics_path, start)
    else:
        seed_everything(_rank_seed(cfg.seed, info.rank))
        if info.is_main and metrics_path.exists():
            metrics_path.unlink()
    last_ckpt = start
    D.barrier(info)

    net = D.wrap_model(model, info, device, cfg.find_unused_parameters)
    sampler = TrainSampler(n, cfg.seed, info.rank, info.world_size, start=start * cfg.batch_size)
    loader = DataLoader(_EpochItems(dataset), batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        collate_fn=collate, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))
    bar = None
    if progress and info.is_main and start < cfg.iterations:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=start, desc="train", unit="it", dynamic_ncols=True)
    evaluation: Optional[dict] = None
    window = _Window()
    metrics_file = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        metrics_file = open(metrics_path, "a", encoding="utf-8")
    batches = iter(loader)
    # a finished run resumed without an evaluation of its last step on record (it was trained without one, e.g.
    # --no-eval; the final checkpoint is written after the final evaluation, so a kill cannot cause it): evaluate
    evaluate_now = evaluate is not None and start >= cfg.iterations
    if evaluate_now:
        on_record = info.is_main and any(r.get("iteration") == start and "eval" in r
                                         for r in read_metrics(metrics_path))
        evaluate_now = not D.broadcast_object(on_record, info)  # every rank takes part in an evaluation

    def run_evaluation(at: int) -> dict:
        result = evaluate(net, at)
        net.train()
        if metrics_file is not None:
            shown = {k: v for k, v in result.items() if k != "table"}
            metrics_file.write(json.dumps({"iteration": at, "eval": shown}) + "\n")
            metrics_file.flush()
        return result

    set_iteration = getattr(model, "set_iteration", None)  # a schedule inside the model (the mimic branch's start)
    net.train()
    iteration = start
    try:
        while iteration < cfg.iterations:
            t0 = time.perf_counter()
            batch = next(batches).to(device, non_blocking=True)
            t_data = time.perf_counter() - t0
            if set_iteration is not None:
                set_iteration(iteration, cfg.iterations)
            with torch.autocast(device.type, dtype=torch.float16, enabled=cfg.amp):
                losses = _check_losses(net(batch.images, batch.targets))
            total = sum(losses.values())
            values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
            values = D.all_reduce_mean(values, info).tolist()  # the one host sync of a step
            for name, v in zip(losses, values):
                if not math.isfinite(v):
                    raise NonFiniteLossError(name, v, iteration + 1, ckpt_path if last_ckpt else None, last_ckpt)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if cfg.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_mult", 1.0)
            scheduler.step()
            iteration += 1
            step_s = time.perf_counter() - t0
            train_time += step_s
            images = cfg.batch_size * info.world_size
            images_seen += images
            window.add(dict(zip(losses, values)), t_data, step_s, images)
            if bar is not None:
                bar.update(1)
                if window.steps == 1 or iteration % max(1, cfg.log_every // 4) == 0:
                    bar.set_postfix(_postfix(window.record(iteration, 0, lr, train_time), lr), refresh=False)
            if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                epoch = sampler.position(iteration * cfg.batch_size - 1)[0]
                rec = window.record(iteration, epoch, lr, train_time)
                window = _Window()
                if metrics_file is not None:
                    metrics_file.write(json.dumps(rec) + "\n")
                    metrics_file.flush()
            due_eval = evaluate is not None and (iteration == cfg.iterations or
                                                 (cfg.eval_every and iteration % cfg.eval_every == 0))
            if due_eval:
                evaluation = run_evaluation(iteration)
            if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations:
                rngs = D.all_gather_objects(rng_state(), info)
                if info.is_main:
                    save_checkpoint(ckpt_path, _state(model, optimizer, scheduler, scaler, iteration, rngs, cfg,
                                                      config, info.world_size, train_time, images_seen, n))
                last_ckpt = iteration
        if evaluate_now:
            evaluation = run_evaluation(iteration)
    finally:
        if bar is not None:
            bar.close()
        if metrics_file is not None:
            metrics_file.close()
        del batches
    if info.is_main and cfg.plot:
        _save_plot(read_metrics(metrics_path), plot_path, title)
    D.barrier(info)
    return TrainResult(iteration, train_time, images_seen, ckpt_path if info.is_main else None,
                       metrics_path if info.is_main else None, plot_path if info.is_main and cfg.plot else None,
                       evaluation)
