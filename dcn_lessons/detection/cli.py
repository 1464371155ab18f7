"""The detector's command line: ``python -m dcn_lessons detect <command>`` (or ``main(argv)``).

Commands are entries of :data:`COMMANDS`, each a :class:`Command`: a name, a one-line help, a function that
adds its options to an ``argparse`` parser (every option with a help text), and a function that runs it and
returns the exit code: ``make-data``, ``train``, ``evaluate``, ``predict`` and ``ablate``. Heavy modules are
imported inside ``run`` (``--help`` stays quick); the work itself lives in the modules beside this one
(:mod:`~dcn_lessons.detection.engine`, :mod:`~dcn_lessons.detection.evaluate`, :mod:`~dcn_lessons.detection.predict`,
:mod:`~dcn_lessons.detection.ablate`). Commands that read data share :func:`add_data_arguments` and
:func:`open_dataset`; those that read a checkpoint share :func:`load_run`.

``train`` and ``evaluate`` run under ``torchrun`` unchanged (one process per GPU,
:mod:`~dcn_lessons.detection.distributed`).

Errors the user can fix (a bad option value, a bad data set, an existing folder) print one line starting with
``error:`` and exit with 2; ``--help`` on any command explains every option.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

from dcn_lessons.config import FAST

__all__ = ["Command", "COMMANDS", "build_parser", "main", "add_data_arguments", "add_device_arguments", "open_dataset",
           "default_root", "detector_config", "detector_transforms", "eval_dataset", "load_run", "synthetic_source",
           "train_config", "train_dataset"]

#: The synthetic set's folder name under the data root (``datasets/`` or ``$DCN_LESSONS_DATA``).
DEFAULT_NAME = "synthetic"


class Command(NamedTuple):
    """One subcommand: ``add_arguments(parser)`` declares its options, ``run(args)`` returns an exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A problem the user can fix; printed as one ``error:`` line, exit code 2."""


def default_root() -> Path:
    """Where ``make-data`` writes by default: ``<data root>/synthetic`` (:func:`dcn_lessons.data.data_root`)."""
    from dcn_lessons.data import data_root

    return data_root() / DEFAULT_NAME


# ---------------------------------------------------------------------------------------- shared options
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def add_data_arguments(p: argparse.ArgumentParser, prefix: str = "", what: str = "data") -> None:
    """Add ``--{prefix}data-root`` and ``--{prefix}ann-file`` (e.g. ``prefix="val-"`` for a second set).

    Without them a command reads the synthetic set written by ``make-data``; with them any COCO-format set,
    e.g. COCO 2017: ``--data-root /data/coco/val2017 --ann-file /data/coco/annotations/instances_val2017.json``.
    """
    p.add_argument(f"--{prefix}data-root", metavar="DIR", default=None,
                   help=f"folder holding the {what} images (the annotation records' file_name are relative to it), "
                        f"e.g. COCO 2017's train2017/ or val2017/; default: the synthetic set's split folder under "
                        f"{default_root()}")
    p.add_argument(f"--{prefix}ann-file", metavar="FILE", default=None,
                   help=f"COCO-format annotation file of the {what}, e.g. COCO 2017's "
                        "annotations/instances_train2017.json or instances_val2017.json; "
                        "default: the synthetic set's")
    p.add_argument(f"--{prefix}on-bad", choices=("warn", "error"), default="warn",
                   help="what to do with a bad record in the annotation file (a box outside its image, an unknown "
                        "category, a missing image file, ...): warn = skip it and print one warning that counts "
                        "them (default), error = stop at the first")


def open_dataset(data_root: Optional[str], ann_file: Optional[str], split: str, **kwargs: Any):
    """A :class:`~dcn_lessons.detection.coco.CocoDetection` from the two options (either both given, or neither:
    then the synthetic set's ``split`` under :func:`default_root`). ``kwargs`` go to ``CocoDetection``.

    Raises :class:`CommandError` when only one is given or the synthetic set has not been written yet.
    """
    from dcn_lessons.detection.coco import CocoDetection
    from dcn_lessons.detection.synthetic import split_paths

    if (data_root is None) != (ann_file is None):
        raise CommandError("--data-root and --ann-file go together: give both (any COCO-format set) or neither "
                           "(the synthetic set)")
    if data_root is None:
        image_dir, ann = split_paths(default_root(), split)
        if not ann.is_file():
            raise CommandError(f"{ann}: no synthetic {split} split yet; run `python -m dcn_lessons detect make-data` "
                               "first, or pass --data-root and --ann-file")
        return CocoDetection(image_dir, ann, **kwargs)
    return CocoDetection(data_root, ann_file, **kwargs)


# -------------------------------------------------------------------------------------------- make-data
def _make_data_arguments(p: argparse.ArgumentParser) -> None:
    from dcn_lessons.detection.synthetic import PRESETS, split_counts

    full, fast = split_counts(False), split_counts(True)
    p.add_argument("--out", metavar="DIR", default=None,
                   help=f"folder to write the set into (default: {default_root()}); it gets train/, val/, test/ and "
                        "annotations/instances_{train,val,test}.json, COCO 2017's layout")
    p.add_argument("--seed", type=_count, default=0, help="seed of the set: the same seed and spec give the same "
                                                          "bytes (default: 0)")
    for split in ("train", "val", "test"):
        p.add_argument(f"--{split}", type=_count, default=None, metavar="N",
                       help=f"images in the {split} split (default: {full[split]}; {fast[split]} in fast mode, "
                            "DCN_LESSONS_FAST=1); 0 skips the split")
    p.add_argument("--image-size", type=_positive_int, default=None, metavar="PX",
                   help="side of the square images in pixels (default: the spec's, 128)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="named spec to start from: default (strong warps, rotation, aspect and scale changes) or mild "
                        "(the control with almost no geometric change); default: default")
    p.add_argument("--spec", metavar="FILE", default=None,
                   help="JSON file of SynthSpec fields to change from the preset, e.g. "
                        "{\"warp\": 0.2, \"rotation\": 90} "
                        "(dcn_lessons.detection.synthetic.SynthSpec lists them; datasets/README.md explains each)")
    p.add_argument("--workers", type=_positive_int, default=min(2, os.cpu_count() or 1), metavar="N",
                   help="processes drawing images; the bytes do not depend on it (default: min(2, CPUs))")
    p.add_argument("--force", action="store_true",
                   help="replace a different set already in the folder (an identical one is always kept as it is)")
    p.add_argument("--preview", metavar="PNG", default=None,
                   help="also draw the first 12 train images with their boxes and class names into this PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _load_spec(preset: str, path: Optional[str], image_size: Optional[int]):
    from dcn_lessons.detection.synthetic import PRESETS, SynthSpec

    changes: dict = {}
    if path is not None:
        try:
            changes = json.loads(Path(path).read_text())
        except OSError as e:
            raise CommandError(f"--spec {path}: cannot read it ({e.strerror or e})") from e
        except json.JSONDecodeError as e:
            raise CommandError(f"--spec {path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from e
        if not isinstance(changes, dict):
            raise CommandError(f"--spec {path}: expected a JSON object of SynthSpec fields")
    if image_size is not None:
        changes["image_size"] = [image_size, image_size]
    try:
        return SynthSpec.from_dict({**PRESETS[preset].to_dict(), **changes})
    except (TypeError, ValueError) as e:
        raise CommandError(f"--spec{' ' + path if path else ''}: {e}") from e


def _make_data(args: argparse.Namespace) -> int:
    from dcn_lessons.detection import synthetic as syn

    spec = _load_spec(args.preset, args.spec, args.image_size)
    defaults = syn.split_counts(FAST)
    counts = {s: (getattr(args, s) if getattr(args, s) is not None else defaults[s]) for s in ("train", "val", "test")}
    root = Path(args.out) if args.out else default_root()
    total = sum(counts.values())
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"make-data {root.name}", unit="img")
    start = time.perf_counter()
    try:
        written = syn.write_dataset(root, spec, seed=args.seed, counts=counts, workers=args.workers,
                                    progress=bar.update if bar else None, force=args.force)
    except FileExistsError as e:
        raise CommandError(str(e)) from e
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    if not written:
        print(f"{root}: already holds this set (seed {args.seed}, same spec and counts); nothing to do")
    else:
        print(f"wrote {total} images to {root} in {seconds:.1f} s ({args.workers} worker(s))")
    for split, n in counts.items():
        if n:
            print("  " + _summary(root, split))
    if args.preview:
        _preview(root, Path(args.preview))
        print(f"preview: {args.preview}")
    return 0


def _summary(root: Path, split: str) -> str:
    """One line per split: images, empty images, objects, and objects per COCO area bucket."""
    from dcn_lessons.detection.synthetic import area_bucket, split_paths

    doc = json.loads(split_paths(root, split)[1].read_text())
    ranges = doc["info"]["dcn_lessons"]["area_ranges"]
    n_img = len(doc["images"])
    with_obj = {a["image_id"] for a in doc["annotations"]}
    buckets = {"small": 0, "medium": 0, "large": 0}
    for a in doc["annotations"]:
        buckets[area_bucket(a["area"], ranges)] += 1
    n = len(doc["annotations"])
    share = ", ".join(f"{k} {v / max(n, 1):.0%}" for k, v in buckets.items())
    return (f"{split}: {n_img} images ({n_img - len(with_obj)} without objects), {n} objects ({share}; "
            f"small < {ranges['small'][1]:.1f} px^2 < medium < {ranges['medium'][1]:.1f} px^2 < large)")


def _preview(root: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from dcn_lessons.detection.coco import plot_items
    from dcn_lessons.detection.synthetic import split_paths

    folder, ann = split_paths(root, "train")
    if not ann.is_file():
        folder, ann = split_paths(root, "val")
    from dcn_lessons.detection.coco import CocoDetection

    ds = CocoDetection(folder, ann, masks=True)
    fig = plot_items([ds[i] for i in range(min(12, len(ds)))], ds.label_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, out)


MAKE_DATA = Command("make-data", "generate the synthetic COCO-format detection set (images + annotations)",
                    _make_data_arguments, _make_data)

# ------------------------------------------------------------------------ shared by train/evaluate/predict
def _device_text(text: str) -> str:
    import torch

    try:
        d = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:K, got {text!r}") from None
    if d.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:K, got {text!r}")
    return text


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--device`` (and nothing else: mixed precision is a training option)."""
    p.add_argument("--device", type=_device_text, default="cpu",
                   help="where to run: cpu (default), cuda or cuda:K; under torchrun, cuda means cuda:LOCAL_RANK for "
                        "each process")


def _resolve_device(text: str, info: Any):
    """The device of this process: ``cuda`` under torchrun is ``cuda:LOCAL_RANK``; a CUDA device needs CUDA."""
    import torch

    d = torch.device(text)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"--device {text}: CUDA is not available (no GPU, or a CPU-only PyTorch)")
        if d.index is None:
            d = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return d


def detector_config(name: str):
    """The detector config ``name`` (a shipped name or a .toml file); a bad one is a :class:`CommandError`."""
    from dcn_lessons.detection.config import ConfigError, load_config

    try:
        return load_config(name)
    except ConfigError as e:
        raise CommandError(f"--config: {e}") from e


def _config_names() -> str:
    from dcn_lessons.detection.config import available_configs

    try:
        return ", ".join(available_configs())
    except OSError:
        return "(none found)"


def synthetic_source() -> tuple[Any, int]:
    """``(spec, seed)`` of the synthetic set written by ``make-data`` (from its val or train annotation file), or
    the default spec and seed 0 when none is written: on-the-fly images then match the written ones."""
    from dcn_lessons.detection.synthetic import SynthSpec, split_paths

    for split in ("val", "train", "test"):
        ann = split_paths(default_root(), split)[1]
        try:
            info = json.loads(ann.read_text())["info"]["dcn_lessons"]
            return SynthSpec.from_dict(info["spec"]), int(info["seed"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return SynthSpec(), 0


def detector_transforms(cfg: Any, train: bool):
    """The data pipeline of a detector config's ``[input]``: training, scale jitter over ``train_sizes`` and a
    horizontal flip; evaluation, the shorter side resized to ``test_size`` (the longer at most ``max_size``)."""
    from dcn_lessons.detection.coco import Compose, RandomHorizontalFlip, RandomResize

    if train:
        return Compose([RandomResize(cfg.input.train_sizes, cfg.input.max_size),
                        RandomHorizontalFlip(cfg.input.flip)])
    return Compose([RandomResize((cfg.input.test_size,), cfg.input.max_size)])


def eval_dataset(cfg: Any, data_root: Optional[str], ann_file: Optional[str], on_bad: str, split: str = "val",
                 length: Optional[int] = None):
    """The data set to evaluate on: a COCO-format set (``data_root`` + ``ann_file``), else the synthetic
    ``split`` written by ``make-data``, else (nothing written) the same split drawn on the fly (``length``
    images, default the split's size), resized to the config's test size."""
    from dcn_lessons.detection.coco import SyntheticDetection
    from dcn_lessons.detection.synthetic import split_counts, split_paths

    tf = detector_transforms(cfg, train=False)
    if data_root is None and ann_file is None and not split_paths(default_root(), split)[1].is_file():
        spec, seed = synthetic_source()
        return SyntheticDetection(split, length=length or split_counts(FAST)[split], data_seed=seed, spec=spec,
                                  transforms=tf, fresh=False)
    return open_dataset(data_root, ann_file, split, transforms=tf, on_bad=on_bad)


def _categories(ds: Any) -> list[dict]:
    return [{"id": int(c["id"]), "name": str(c["name"])} for c in ds.categories]


def load_run(checkpoint: str, device: Any = "cpu"):
    """``(model, state)`` from a checkpoint written by ``train``: the model rebuilt from the config stored in it,
    its weights loaded, in eval mode on ``device``. A missing or foreign file is a :class:`CommandError`."""
    from dcn_lessons.detection.checkpoint import CheckpointError, load_checkpoint
    from dcn_lessons.detection.config import ConfigError, config_from_dict
    from dcn_lessons.detection.model import DeformableFasterRCNN

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoint.pt"
    try:
        state = load_checkpoint(path)
        config = state.get("config") or {}
        cfg = config_from_dict(config["detector"], source=f"{path} (its config)")
        categories = config["data"]["categories"]
    except CheckpointError as e:
        raise CommandError(str(e)) from e
    except (ConfigError, KeyError, TypeError) as e:
        raise CommandError(f"{path}: no usable detector config inside ({e}); was it written by `detect train`?") from e
    model = DeformableFasterRCNN(cfg, num_classes=len(categories))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


# ------------------------------------------------------------------------------------------------ train
def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="dcnv2_mimic", metavar="NAME|FILE",
                   help=f"detector config: a shipped name ({_config_names()}) or a .toml file; its [solver] gives the "
                        "learning rate, schedule, momentum and weight decay (default: dcnv2_mimic)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="run folder: checkpoint.pt, metrics.jsonl, metrics.png, detections.json, summary.json "
                        "(default: runs/<config>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, exactly where it stopped (same settings "
                        "required); without a checkpoint there it starts afresh")
    add_device_arguments(p)
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 autocast + gradient scaler); CUDA only")
    p.add_argument("--iterations", type=_positive_int, default=None, metavar="N",
                   help="optimizer steps (default: the config's [solver] iterations; 4 in fast mode, "
                        "DCN_LESSONS_FAST=1)")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="images per process and step (default: the config's images_per_batch divided by the number "
                        "of processes; the learning rate is scaled linearly to the total batch)")
    p.add_argument("--seed", type=_count, default=0, help="seed of the weights, the data order and the sampling "
                                                          "(default: 0)")
    p.add_argument("--workers", type=_count, default=1, metavar="N",
                   help="DataLoader worker processes preparing batches while the model trains (default: 1; 0 loads "
                        "in the training process)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="N",
                   help="steps between checkpoints (default: 500, or the run's length if shorter); one is always "
                        "written at the end")
    p.add_argument("--log-every", type=_positive_int, default=20, metavar="N",
                   help="steps per line of metrics.jsonl (default: 20)")
    p.add_argument("--eval-every", type=_count, default=0, metavar="N",
                   help="evaluate on the validation set every N steps (default: 0, only at the end)")
    p.add_argument("--no-eval", action="store_true", help="do not evaluate at the end")
    p.add_argument("--clip-grad-norm", type=float, default=0.0, metavar="X",
                   help="clip the gradient norm to X (default: 0, no clipping)")
    p.add_argument("--train-data", choices=("auto", "fly", "files"), default="auto",
                   help="synthetic set only: files = the train split written by make-data; fly = fresh images drawn "
                        "every epoch (no image is seen twice, but drawing costs ~20 ms of CPU an image, which on 2 "
                        "cores slows each step ~1.4x); auto (default) = files when make-data has written them, "
                        "else fly")
    p.add_argument("--train-images", type=_positive_int, default=None, metavar="N",
                   help="draw N fresh images per epoch (implies --train-data fly; default: the train split's size)")
    add_data_arguments(p, what="training data")
    add_data_arguments(p, prefix="val-", what="validation data")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def train_config(cfg: Any, args: argparse.Namespace, world_size: int):
    """The engine's :class:`~dcn_lessons.detection.engine.TrainConfig`: the config's ``[solver]`` and the run's
    options (fast mode: 4 steps unless ``--iterations``)."""
    from dcn_lessons.detection.engine import TrainConfig

    iterations = args.iterations or (4 if FAST else cfg.solver.iterations)
    batch = args.batch_size or max(1, cfg.solver.images_per_batch // world_size)
    try:
        return TrainConfig.from_solver(
            cfg.solver, iterations=iterations, batch_size=batch, seed=args.seed, workers=args.workers,
            checkpoint_every=args.checkpoint_every or min(500, iterations), log_every=min(args.log_every, iterations),
            eval_every=args.eval_every, amp=args.amp, clip_grad_norm=args.clip_grad_norm)
    except ValueError as e:
        raise CommandError(str(e)) from e


def train_dataset(cfg: Any, args: argparse.Namespace, seed: int):
    """``(dataset, description)`` of the training data the options name (module docstring of the engine)."""
    from dcn_lessons.detection.coco import SyntheticDetection
    from dcn_lessons.detection.synthetic import split_counts, split_paths

    tf = detector_transforms(cfg, train=True)
    if args.data_root is not None or args.ann_file is not None:
        ds = open_dataset(args.data_root, args.ann_file, "train", transforms=tf, on_bad=args.on_bad, seed=seed)
        return ds, {"source": "coco", "data_root": str(args.data_root), "ann_file": str(args.ann_file)}
    use_files = args.train_data == "files" or (
        args.train_data == "auto" and args.train_images is None and split_paths(default_root(), "train")[1].is_file())
    if use_files:
        return open_dataset(None, None, "train", transforms=tf, on_bad=args.on_bad, seed=seed), \
            {"source": "synthetic files", "root": str(default_root())}
    spec, data_seed = synthetic_source()
    n = args.train_images or split_counts(FAST)["train"]
    ds = SyntheticDetection("train", length=n, data_seed=data_seed, spec=spec, transforms=tf, fresh=True, seed=seed)
    return ds, {"source": "synthetic on the fly", "images_per_epoch": n, "data_seed": data_seed,
                "spec": spec.to_dict()}


def _train(args: argparse.Namespace) -> int:
    from dcn_lessons.detection import distributed as D
    from dcn_lessons.detection.checkpoint import CheckpointError, seed_everything
    from dcn_lessons.detection.config import config_to_dict
    from dcn_lessons.detection.engine import NonFiniteLossError, train
    from dcn_lessons.detection.evaluate import evaluate, format_summary
    from dcn_lessons.detection.model import DeformableFasterRCNN

    cfg = detector_config(args.config)
    if args.amp and not args.device.startswith("cuda"):
        raise CommandError("--amp: mixed precision needs --device cuda")
    if (args.train_images is not None or args.train_data != "auto") and args.data_root is not None:
        raise CommandError("--train-data/--train-images are for the synthetic set; --data-root/--ann-file name the "
                           "training data themselves")
    if args.train_images is not None and args.train_data == "files":
        raise CommandError("--train-images: the number of images drawn on the fly; --train-data files reads the "
                           "written split, whatever its size")
    info = D.init_distributed(args.device)
    try:
        device = _resolve_device(args.device, info)
        tc = train_config(cfg, args, info.world_size)
        train_set, data = train_dataset(cfg, args, tc.seed)
        val_set = None if args.no_eval else eval_dataset(cfg, args.val_data_root, args.val_ann_file, args.val_on_bad)
        if val_set is not None and val_set.cat_ids != train_set.cat_ids:
            raise CommandError(f"the validation set's categories {val_set.label_names[:10]} differ from the training "
                               f"set's {train_set.label_names[:10]}: pass --val-data-root and --val-ann-file of the "
                               "same data set, or --no-eval")
        out = Path(args.out) if args.out else Path("runs") / cfg.name.replace("/", "_")
        seed_everything(tc.seed)
        model = DeformableFasterRCNN(cfg, num_classes=train_set.num_classes)
        config = {"detector": config_to_dict(cfg), "data": {**data, "categories": _categories(train_set)}}

        def evaluate_fn(net, iteration):
            return evaluate(net, val_set, out, batch_size=tc.batch_size, device=device, workers=tc.workers,
                            info=info, extra={"iteration": iteration, "checkpoint": str(out / "checkpoint.pt")})

        if info.is_main:
            print(f"train {cfg.name}: {tc.iterations} steps of {tc.batch_size} x {info.world_size} image(s) on "
                  f"{device}, {data['source']}; run folder {out}")
        try:
            res = train(model, train_set, tc, out, device=device, resume=args.resume, config=config,
                        evaluate=None if val_set is None else evaluate_fn, progress=not args.quiet,
                        title=f"{cfg.name}: {cfg.description}")
        except NonFiniteLossError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except CheckpointError as e:
            raise CommandError(str(e)) from e
    finally:
        D.shutdown()
    if info.is_main:
        rate = res.images_seen / res.train_time_s if res.train_time_s > 0 else float("nan")
        print(f"trained to iteration {res.iteration} in {res.train_time_s:.1f} s of steps ({rate:.1f} images/s); "
              f"checkpoint {res.checkpoint}, metrics {res.metrics}" + (f", plot {res.plot}" if res.plot else ""))
        if res.evaluation is not None:
            print(format_summary(res.evaluation))
    return 0


TRAIN = Command("train", "train a detector config (checkpoints, metrics, resumable; torchrun for many GPUs)",
                _train_arguments, _train)


# --------------------------------------------------------------------------------------------- evaluate
def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from dcn_lessons.detection.evaluate import AREA_MODES

    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint written by train (checkpoint.pt, or its run folder)")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="synthetic set only: the split to evaluate (default: val)")
    add_data_arguments(p, what="evaluation data")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where detections.json (COCO results) and summary.json go (default: <run folder>/eval-<split>)")
    add_device_arguments(p)
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="N", help="images per batch (default: 8)")
    p.add_argument("--workers", type=_count, default=0, metavar="N", help="DataLoader worker processes (default: 0)")
    p.add_argument("--area-ranges", choices=AREA_MODES, default="auto",
                   help="object size buckets of APs/APm/APl: auto = the annotation file's (the synthetic set's, COCO's "
                        "32²/96² scaled to the image area) or else COCO's; coco = COCO's; scaled = COCO's scaled to "
                        "the median image area (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _evaluate(args: argparse.Namespace) -> int:
    from dcn_lessons.detection import distributed as D
    from dcn_lessons.detection.config import config_from_dict
    from dcn_lessons.detection.evaluate import evaluate, format_summary

    info = D.init_distributed(args.device)
    try:
        device = _resolve_device(args.device, info)
        model, state = load_run(args.checkpoint, device)
        cfg = config_from_dict(state["config"]["detector"])
        ds = eval_dataset(cfg, args.data_root, args.ann_file, args.on_bad, split=args.split)
        saved = [c["name"] for c in state["config"]["data"]["categories"]]
        if saved != ds.label_names:
            raise CommandError(f"the model was trained on the categories {saved}, the data set has {ds.label_names}")
        ckpt = Path(args.checkpoint)
        run = ckpt if ckpt.is_dir() else ckpt.parent
        out = Path(args.out) if args.out else run / f"eval-{args.split}"
        summary = evaluate(model, ds, out, batch_size=args.batch_size, device=device, workers=args.workers,
                           area_mode=args.area_ranges, progress=not args.quiet, info=info,
                           extra={"checkpoint": str(ckpt), "iteration": int(state["iteration"])})
    finally:
        D.shutdown()
    if info.is_main:
        print(summary["table"], end="")
        print(format_summary(summary))
        print(f"wrote {out / 'detections.json'} and {out / 'summary.json'}")
    return 0


EVALUATE = Command("evaluate", "COCO AP of a trained checkpoint (pycocotools COCOeval); writes results and summary",
                   _evaluate_arguments, _evaluate)

# ---------------------------------------------------------------------------------------------- predict
def _layer_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if text.strip().lower() == "none":
        return []
    if not names:
        raise argparse.ArgumentTypeError(f"expected layer names separated by commas, or none; got {text!r}")
    return names


def _score(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a score in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a score in [0, 1], got {text!r}")
    return v


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint written by train (checkpoint.pt, or its run folder)")
    p.add_argument("inputs", metavar="IMAGE", nargs="+",
                   help="image files, or folders whose images (png, jpg, ...) are all read")
    p.add_argument("--out", metavar="DIR", default="predictions",
                   help="folder for one PNG per image and predictions.json (default: predictions)")
    p.add_argument("--score-thresh", type=_score, default=0.5, metavar="S",
                   help="draw detections scoring at least S (default: 0.5)")
    p.add_argument("--max-detections", type=_positive_int, default=10, metavar="N",
                   help="at most N detections per image, the best (default: 10)")
    p.add_argument("--layers", type=_layer_list, default=None, metavar="NAMES",
                   help="deformable conv layers whose sampling points are drawn, top down, separated by commas "
                        "(e.g. backbone.body.layer4.0.conv2); none = no sampling points (default: the last three "
                        "deformable layers, as DCNv1 Fig. 6; a plain config has none)")
    add_device_arguments(p)


def _predict(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from dcn_lessons.detection.checkpoint import atomic_write_text
    from dcn_lessons.detection.config import config_from_dict
    from dcn_lessons.detection.predict import draw_prediction, image_files, predict, read_image, save_prediction

    try:
        files = image_files(args.inputs)
    except FileNotFoundError as e:
        raise CommandError(str(e)) from e
    device = _resolve_device(args.device, _single())
    model, state = load_run(args.checkpoint, device)
    cfg = config_from_dict(state["config"]["detector"])
    names = [c["name"] for c in state["config"]["data"]["categories"]]
    out = Path(args.out)
    records = []
    for f in files:
        try:
            image = read_image(f)
            pred = predict(model, image, cfg.input.test_size, cfg.input.max_size, args.score_thresh, args.layers,
                           args.max_detections)
        except ValueError as e:
            raise CommandError(str(e)) from e
        png = out / f"{f.stem}.png"
        save_prediction(draw_prediction(pred, names, title=f"{f.name}: {cfg.name}"), png)
        records.append({"file": str(f), "figure": str(png), "detections": [
            {"label": names[int(lab) - 1], "score": round(float(s), 4), "box_xyxy": [round(v, 2) for v in b]}
            for b, s, lab in zip(pred.boxes_original.tolist(), pred.scores.tolist(), pred.labels.tolist())]})
        print(f"{f}: {len(pred.boxes)} detection(s) -> {png}")
    atomic_write_text(out / "predictions.json", json.dumps(records, indent=1) + "\n")
    print(f"wrote {out / 'predictions.json'}")
    return 0


def _single():
    from dcn_lessons.detection.distributed import DistInfo

    return DistInfo()


PREDICT = Command("predict", "draw a checkpoint's detections, learned sampling points and RoI bins on images",
                  _predict_arguments, _predict)


# ----------------------------------------------------------------------------------------------- ablate
def _ablate_arguments(p: argparse.ArgumentParser) -> None:
    from dcn_lessons.detection.ablate import DEFAULT_CONFIGS

    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), metavar="NAME",
                   help=f"configs to train (default: {' '.join(DEFAULT_CONFIGS)}); names or .toml files")
    p.add_argument("--seeds", nargs="+", type=_count, default=[0, 1, 2], metavar="S",
                   help="seeds of each config (default: 0 1 2); the table gives mean ± std over them")
    p.add_argument("--runs", metavar="DIR", default="runs/ablation",
                   help="where each (config, seed) run is kept; a finished one is not trained again, an interrupted "
                        "one resumes (default: runs/ablation)")
    p.add_argument("--results", metavar="DIR", default="benchmarks/results",
                   help="where ablation.md, ablation.csv and ablation.png go (default: benchmarks/results)")
    p.add_argument("--iterations", type=_positive_int, default=None, metavar="N",
                   help="steps of every run (default: each config's own; 4 in fast mode)")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="images per step (default: each config's images_per_batch)")
    p.add_argument("--workers", type=_count, default=1, metavar="N", help="DataLoader workers of each run (default: 1)")
    p.add_argument("--train-images", type=_positive_int, default=None, metavar="N",
                   help="train on N fresh synthetic images per epoch, drawn on the fly (default: the written train "
                        "split, or as many drawn when none is written)")
    add_data_arguments(p, prefix="val-", what="validation data")
    add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _ablate(args: argparse.Namespace) -> int:
    from dcn_lessons.detection.ablate import AblationSettings, run_ablation

    settings = AblationSettings(
        configs=tuple(args.configs), seeds=tuple(args.seeds), runs=Path(args.runs), results=Path(args.results),
        iterations=args.iterations if args.iterations else (4 if FAST else None), batch_size=args.batch_size,
        workers=args.workers, train_images=args.train_images, val_data_root=args.val_data_root,
        val_ann_file=args.val_ann_file, val_on_bad=args.val_on_bad, device=args.device, progress=not args.quiet)
    table = run_ablation(settings)
    print(table.markdown)
    print(f"wrote {', '.join(str(p) for p in table.files)}")
    return 0


ABLATE = Command("ablate", "train the four configs over several seeds: DCNv2 Tables 1/3 in miniature (resumable)",
                 _ablate_arguments, _ablate)

#: The subcommands, in the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (MAKE_DATA, TRAIN, EVALUATE, PREDICT, ABLATE)


# ------------------------------------------------------------------------------------------------- main
class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported on one line (no usage block): ``<prog>: error: <what> (--help
    explains every option)``, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (--help explains every option)\n")


def build_parser(prog: str = "python -m dcn_lessons detect") -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`."""
    parser = _Parser(prog=prog, description="Deformable Faster R-CNN: data, training, evaluation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.help)
        c.add_arguments(p)
        p.set_defaults(_run=c.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit code."""
    args = build_parser().parse_args(argv)
    from dcn_lessons.detection.coco import DatasetError

    try:
        return int(args._run(args))
    except (CommandError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
