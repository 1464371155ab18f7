"""COCO evaluation of the detector with pycocotools, on one process or many.

:func:`evaluate` runs the model over a data set, turns its detections into COCO results, runs
``pycocotools.cocoeval.COCOeval`` (``iouType="bbox"``) and returns (and writes) a summary:

* **results** (:func:`dcn_lessons.detection.model.to_coco_results`): the detector returns ``boxes [n, 4]``
  ``(x1, y1, x2, y2)`` in the pixels of the image it was given (resized, maybe flipped);
  :func:`~dcn_lessons.detection.coco.boxes_to_original` maps them back to the file's pixels, labels ``1..C``
  become the data set's COCO category ids (``cat_ids[label - 1]``: COCO 2017's 80 ids run up to 90) and boxes
  become ``[x, y, w, h]``;
* **ground truth**: the data set's own ``pycocotools.coco.COCO`` (:class:`~dcn_lessons.detection.coco.CocoDetection`
  keeps the records it did not skip, so a skipped record is out of training and evaluation alike), restricted to
  the images of the data set; for :class:`~dcn_lessons.detection.coco.SyntheticDetection`, the same records
  :func:`~dcn_lessons.detection.synthetic.write_dataset` would write (:func:`ground_truth`);
* **area ranges** (:func:`area_ranges`): COCO's small / medium / large split objects at 32² and 96² pixels on
  images of about 640 x 480. On the 128 x 128 synthetic images nearly every object would be "small", so for a set
  written by ``make-data`` the ranges are scaled by the image area
  (:func:`~dcn_lessons.detection.synthetic.coco_area_ranges`: 54.6 and 491.5 px² on 128 x 128, i.e. the same
  0.33 % and 3 % of the image); they are read from the annotation file's ``info`` (or from the spec, on the
  fly). Real COCO keeps COCO's ranges. The summary says which ranges were used;
* **many processes**: each rank detects on its shard (:func:`~dcn_lessons.detection.distributed.shard`),
  :func:`~dcn_lessons.detection.distributed.all_gather_objects` brings every rank's results to every rank, and
  one COCOeval runs over the whole set (on rank 0; its summary is broadcast).

Summary keys: ``AP`` (IoU 0.50:0.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``, ``AR10``,
``AR100``, ``ARs``, ``ARm``, ``ARl`` (COCOeval's ``stats`` in order; -1 where the set has no object of that
size), ``AP_per_class`` ``{name: AP}``, ``images``, ``detections``, ``area_ranges`` and ``area_source``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from dcn_lessons.detection import distributed as D
from dcn_lessons.detection.checkpoint import atomic_write_text
from dcn_lessons.detection.coco import collate_detection
from dcn_lessons.detection.model import to_coco_results

__all__ = [
    "STAT_NAMES",
    "AREA_MODES",
    "COCO_AREA_RANGES",
    "detect",
    "ground_truth",
    "area_ranges",
    "coco_evaluate",
    "evaluate",
    "RESULTS_NAME",
    "SUMMARY_NAME",
    "format_summary",
]

#: COCOeval's ``stats``, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

#: COCO's own area ranges (pixels²), as ``pycocotools.cocoeval.Params`` sets them.
COCO_AREA_RANGES = {"all": [0.0, 1e10], "small": [0.0, 32.0 ** 2], "medium": [32.0 ** 2, 96.0 ** 2],
                    "large": [96.0 ** 2, 1e10]}

#: ``auto``: the annotation file's scaled ranges when it has them (the synthetic set), else COCO's; ``coco``:
#: COCO's; ``scaled``: COCO's scaled by the median image area
#: (:func:`~dcn_lessons.detection.synthetic.coco_area_ranges`).
AREA_MODES = ("auto", "coco", "scaled")

RESULTS_NAME = "detections.json"
SUMMARY_NAME = "summary.json"


@torch.no_grad()
def detect(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    workers: int = 0,
    info: Optional[D.DistInfo] = None,
    progress: bool = False,
    collate: Callable = collate_detection,
) -> list[dict]:
    """COCO results of ``model`` on every image of ``dataset`` (:func:`~dcn_lessons.detection.model.to_coco_results`),
    on every rank.

    Each rank runs its shard (items ``rank, rank + W, ...``) with the model in eval mode (``model(images,
    sizes)``; a DDP wrapper is unwrapped: inference needs no gradient averaging, and ranks may run different
    numbers of batches); the results are gathered so every rank returns all of them (image order).
    """
    info = D.current() if info is None else info
    device = torch.device(device)
    net = D.unwrap(model)
    was_training = net.training
    net.eval()
    part = Subset(dataset, D.shard(len(dataset), info))
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(part), desc="evaluate", unit="img", dynamic_ncols=True)
    results: list[dict] = []
    try:
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            outputs = net(batch.images, batch.sizes)
            results.extend(to_coco_results(outputs, batch.targets, dataset.cat_ids))
            if bar is not None:
                bar.update(len(batch.targets))
    finally:
        if bar is not None:
            bar.close()
        net.train(was_training)
    gathered = D.all_gather_objects(results, info)
    merged = [r for part_results in gathered for r in part_results]
    merged.sort(key=lambda r: (r["image_id"], -r["score"]))
    return merged


def _quiet_coco(doc: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def ground_truth(dataset: Any):
    """The ``pycocotools.coco.COCO`` to evaluate ``dataset`` against, and the image ids it covers.

    A :class:`~dcn_lessons.detection.coco.CocoDetection`: its ``coco`` (the records it kept) and its ``ids``. A
    :class:`~dcn_lessons.detection.coco.SyntheticDetection`: the records ``write_dataset`` would write for its
    current epoch's images (each image is drawn once more, with its masks: areas are mask areas), with the
    spec's area ranges in ``info``.

    Returns:
        ``(coco, image_ids)``.
    """
    from dcn_lessons.detection.coco import SyntheticDetection

    if hasattr(dataset, "coco") and hasattr(dataset, "ids"):
        return dataset.coco, list(dataset.ids)
    if not isinstance(dataset, SyntheticDetection):
        raise TypeError(f"dataset: expected a CocoDetection or SyntheticDetection (or anything with .coco and .ids), "
                        f"got {type(dataset).__name__}")
    from dcn_lessons.detection import synthetic as syn

    images, anns = [], []
    for i in range(len(dataset)):
        k = dataset.image_index(i)
        s = syn.make_image(dataset.spec, dataset.data_seed, dataset.split, k)
        h, w = s.image.shape[:2]
        images.append({"id": k + 1, "file_name": f"{k:06d}.png", "width": w, "height": h})
        anns.extend(syn.coco_annotations(s, k + 1))
    h, w = dataset.spec.image_size
    doc = {"info": {"dcn_lessons": {"area_ranges": syn.coco_area_ranges(h * w), "split": dataset.split,
                                    "seed": dataset.data_seed, "spec": dataset.spec.to_dict()}},
           "images": images, "annotations": anns, "categories": syn.coco_categories(dataset.spec)}
    return _quiet_coco(doc), [im["id"] for im in images]


def area_ranges(coco_gt: Any, mode: str = "auto") -> tuple[dict, str]:
    """The area ranges to evaluate with (module docstring) and where they came from.

    Args:
        coco_gt: the ground truth ``COCO``.
        mode: one of :data:`AREA_MODES`.

    Returns:
        ``(ranges, source)``: ranges ``{"all", "small", "medium", "large"}`` of ``[low, high]`` px², and
        ``"annotation file"``, ``"COCO"`` or ``"scaled to median image area W x H"``.
    """
    if mode not in AREA_MODES:
        raise ValueError(f"mode: expected one of {AREA_MODES}, got {mode!r}")
    if mode in ("auto",):
        try:
            ranges = coco_gt.dataset["info"]["dcn_lessons"]["area_ranges"]
            return {k: [float(a), float(b)] for k, (a, b) in ranges.items()}, "annotation file (scaled to the images)"
        except (KeyError, TypeError, ValueError):
            return dict(COCO_AREA_RANGES), "COCO"
    if mode == "coco":
        return dict(COCO_AREA_RANGES), "COCO"
    from dcn_lessons.detection.synthetic import coco_area_ranges

    areas = [img["width"] * img["height"] for img in coco_gt.dataset.get("images", [])]
    if not areas:
        raise ValueError("coco_gt: no images to take the median area of")
    a = float(np.median(areas))
    return coco_area_ranges(a), f"scaled to the median image area {a:.0f} px²"


def coco_evaluate(coco_gt: Any, results: Sequence[dict], image_ids: Optional[Sequence[int]] = None,
                  ranges: Optional[dict] = None) -> tuple[dict, str]:
    """Run ``COCOeval(iouType="bbox")`` of ``results`` against ``coco_gt``.

    Args:
        coco_gt: ground truth ``COCO``.
        results: COCO result records (:func:`~dcn_lessons.detection.model.to_coco_results`).
        image_ids: the images evaluated (default: every image of ``coco_gt``).
        ranges: area ranges ``{"all", "small", "medium", "large"}`` (default COCO's).

    Returns:
        ``(summary, table)``: the stats by :data:`STAT_NAMES` plus ``AP_per_class``, and COCOeval's printed table.
        With no detection at all every AP and AR is 0 (-1 for an area range without objects), as COCOeval
        would give; pycocotools itself cannot load an empty result list.
    """
    from pycocotools.cocoeval import COCOeval

    ranges = dict(COCO_AREA_RANGES) if ranges is None else ranges
    if list(ranges) != ["all", "small", "medium", "large"]:
        raise ValueError(f"ranges: expected the keys all, small, medium, large in that order, got {list(ranges)}")
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    if not results:
        gt = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=ids, iscrowd=False))
        has = {k: any(lo <= a["area"] <= hi for a in gt) for k, (lo, hi) in ranges.items()}
        bucket = {"": "all", "s": "small", "m": "medium", "l": "large"}
        stats = {}
        for s in STAT_NAMES:
            suffix = s[-1] if s[-1] in "sml" else ""
            stats[s] = 0.0 if has[bucket[suffix]] else -1.0
        counts = {}
        for a in gt:
            counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
        stats["AP_per_class"] = {names[c]: (0.0 if c in counts else -1.0) for c in sorted(names)}
        return stats, "no detections: every AP and AR is 0\n"
    with contextlib.redirect_stdout(io.StringIO()):  # loadRes prints progress
        dt = coco_gt.loadRes([dict(r) for r in results])
    ev = COCOeval(coco_gt, dt, "bbox")
    ev.params.imgIds = ids
    ev.params.areaRng = [list(v) for v in ranges.values()]
    ev.params.areaRngLbl = list(ranges)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
    # precision [T, R, K, A, M]: IoU thresholds, recall points, categories, area ranges, max detections
    prec = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[:, :, k]
        p = p[p > -1]
        per_class[names[cid]] = float(p.mean()) if p.size else -1.0
    stats["AP_per_class"] = per_class
    return stats, buf.getvalue()


def evaluate(
    model: nn.Module,
    dataset: Any,
    out_dir: Optional[str | os.PathLike] = None,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    workers: int = 0,
    area_mode: str = "auto",
    progress: bool = False,
    info: Optional[D.DistInfo] = None,
    extra: Optional[dict] = None,
) -> dict:
    """Detect on ``dataset``, evaluate with COCOeval, and (rank 0, when ``out_dir`` is given) write
    ``detections.json`` (COCO results, the file pycocotools' ``loadRes`` and the COCO server read) and
    ``summary.json`` (the summary plus ``extra``, e.g. the checkpoint and its iteration), both atomically.

    Every rank must call it (the detections are gathered); every rank returns the same summary
    (module docstring: keys). ``summary["table"]`` is COCOeval's printed table.
    """
    info = D.current() if info is None else info
    results = detect(model, dataset, batch_size=batch_size, device=device, workers=workers, info=info,
                     progress=progress)
    summary: Optional[dict] = None
    if info.is_main:
        coco_gt, ids = ground_truth(dataset)
        ranges, source = area_ranges(coco_gt, area_mode)
        stats, table = coco_evaluate(coco_gt, results, ids, ranges)
        summary = {**stats, "images": len(ids), "detections": len(results), "area_ranges": ranges,
                   "area_source": source, "table": table, **(extra or {})}
        if out_dir is not None:
            out = Path(out_dir)
            atomic_write_text(out / RESULTS_NAME, json.dumps(results))
            atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=1) + "\n")
    return D.broadcast_object(summary, info)


def format_summary(summary: dict) -> str:
    """Two lines for a terminal: AP, AP50, AP75, APs/m/l, then AR100, images and detections."""
    def f(v: float) -> str:
        return "  -  " if v < 0 else f"{v:.3f}"

    return (f"AP {f(summary['AP'])}  AP50 {f(summary['AP50'])}  AP75 {f(summary['AP75'])}  "
            f"APs {f(summary['APs'])}  APm {f(summary['APm'])}  APl {f(summary['APl'])}\n"
            f"AR100 {f(summary['AR100'])}  on {summary['images']} images, {summary['detections']} detections "
            f"(area ranges: {summary['area_source']})")
