"""One loader for any COCO-format detection set, its augmentations, and the collate the detector takes.

* :class:`CocoDetection` reads images and a COCO annotation file through pycocotools: the synthetic set of
  :mod:`dcn_lessons.detection.synthetic` and real COCO 2017 on disk go through the same code.
* :class:`SyntheticDetection` draws the synthetic set on the fly (fresh training images every epoch) and
  returns exactly what :class:`CocoDetection` returns for the written files.
* :class:`RandomHorizontalFlip`, :class:`RandomResize` (scale jitter; with one size, the papers' fixed
  shorter-side resize) and :class:`Compose` keep boxes and masks consistent with the pixels.
* :func:`collate_detection` batches images of different sizes into a padded tensor plus each image's size.

**What an item is.** ``image [3, H, W]`` float32 in [0, 1] (RGB; grey and RGBA files are converted; no
normalisation: that belongs to the model, like torchvision's ``GeneralizedRCNNTransform``) and a target dict:

* ``boxes [n, 4]`` float32, ``(x1, y1, x2, y2)`` in pixel edges of the returned image (COCO's
  ``[x, y, w, h]`` becomes ``(x, y, x + w, y + h)``; a pixel ``(i, j)`` spans ``[j, j + 1) x [i, i + 1)``);
* ``labels [n]`` int64 in ``1..C``, contiguous; the dataset's ``cat_ids[label - 1]`` is the COCO category id
  (COCO 2017's 80 ids run up to 90), ``label_names[label - 1]`` its name; 0 is left for the background;
* ``image_id`` (int, the file's id), ``orig_size [2]`` and ``size [2]`` int64 ``(h, w)`` of the file and of
  the returned image, ``flipped`` (bool), ``ann_ids [n]`` int64 (the annotation records kept),
  ``iscrowd [n]`` int64, and with ``masks=True`` ``masks [n, H, W]`` uint8 instance masks.

:func:`boxes_to_original` maps boxes predicted on a returned image back to the file's pixels, for COCO results.

**Bad input.** The annotation file is checked once, when the dataset is made; what is wrong with the file as
a whole is refused with :class:`DatasetError` (it names the file): a file that is missing, empty, not JSON,
not an object with ``images``, ``annotations`` and ``categories`` lists, with no category, or with two
categories or two images of the same id. What is wrong with one record is either skipped (``on_bad="warn"``,
the default: one :class:`DatasetWarning` counts the skipped records by kind and names their ids, and
``dataset.skipped`` lists each) or refused (``on_bad="error"``: :class:`DatasetError` at the first one). The
record kinds are :data:`BAD_RECORD_KINDS`: a malformed image or annotation record, an image whose file is
missing (skipped with its annotations), an annotation naming an image that is not in ``images``, a category
id not in ``categories``, a box of zero or negative width or height, a box outside its image, a repeated
annotation id, a segmentation pycocotools cannot read (only with ``masks=True``). A box that overshoots its
image by at most :data:`BOX_TOLERANCE` pixel (rounding in the file) is clipped to the image and counted in the
warning; a larger overshoot is a bad record: a box is never moved silently. An image file that cannot be
decoded, or whose size differs from its record's ``width``/``height`` (its boxes would be wrong), is refused
with :class:`DatasetError` naming the file and the image id when the item is read.

**Randomness.** Augmentation draws from ``numpy.random.default_rng([seed, epoch, index])``: an item is the same
whichever worker reads it and in whatever order, and a resumed run that sets the same epoch (:meth:`set_epoch`)
sees the same augmented images.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dcn_lessons.detection import synthetic as _syn

__all__ = [
    "DatasetError",
    "DatasetWarning",
    "BAD_RECORD_KINDS",
    "BOX_TOLERANCE",
    "Skipped",
    "load_annotation_file",
    "CocoDetection",
    "SyntheticDetection",
    "Compose",
    "RandomHorizontalFlip",
    "RandomResize",
    "DetectionBatch",
    "collate_detection",
    "boxes_to_original",
    "plot_items",
]

#: A box may overshoot its image by this many pixels (rounding in the file) and is then clipped.
BOX_TOLERANCE = 1.0

#: The kinds of bad record that are skipped (``on_bad="warn"``) or refused (``on_bad="error"``).
BAD_RECORD_KINDS = (
    "malformed image",
    "missing image file",
    "annotation of a skipped image",
    "malformed annotation",
    "repeated annotation id",
    "unknown image",
    "unknown category",
    "empty box",
    "box outside image",
    "bad segmentation",
)


class DatasetError(ValueError):
    """A data set that cannot be used as it is; the message names the file and the record."""


class DatasetWarning(UserWarning):
    """Records were skipped (or boxes clipped) while loading an annotation file; the message counts them."""


@dataclass(frozen=True)
class Skipped:
    """One skipped record: its ``kind`` (:data:`BAD_RECORD_KINDS`), ``record`` (``"image"`` or
    ``"annotation"``), its ``id`` (None when it has none) and a ``message`` that says what is wrong."""

    kind: str
    record: str
    id: Any
    message: str


# ------------------------------------------------------------------------------------------ annotations
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_annotation_file(ann_file: str | os.PathLike) -> dict:
    """Read a COCO annotation file and check its overall form; what is wrong raises :class:`DatasetError`.

    Checked: the file exists and is not empty; it is JSON; it is an object whose ``images``, ``annotations``
    and ``categories`` are lists; there is at least one category; category ids (ints) and image ids are
    unique. Single records are checked by :class:`CocoDetection` (they can be skipped).
    """
    path = Path(ann_file)
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the annotation file ({e.strerror or e})") from e
    if not raw.strip():
        raise DatasetError(f"{path}: the annotation file is empty")
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise DatasetError(f"{path}: not valid JSON{where} ({e.msg if hasattr(e, 'msg') else e})") from e
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: expected a JSON object with images, annotations and categories, "
                           f"got a {type(doc).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise DatasetError(f"{path}: no {key!r} list (a COCO annotation file has images, annotations "
                               "and categories)")
        if not isinstance(doc[key], list):
            raise DatasetError(f"{path}: {key!r} must be a list, got a {type(doc[key]).__name__}")
    if not doc["categories"]:
        raise DatasetError(f"{path}: 'categories' is empty: nothing to detect")
    seen: set = set()
    for k, c in enumerate(doc["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise DatasetError(f"{path}: categories[{k}] must be an object with an int 'id' and a str 'name', "
                               f"got {str(c)[:80]}")
        if c["id"] in seen:
            raise DatasetError(f"{path}: category id {c['id']} appears twice in 'categories'")
        seen.add(c["id"])
    seen = set()
    for img in doc["images"]:
        iid = img.get("id") if isinstance(img, dict) else None
        if _is_int(iid):
            if iid in seen:
                raise DatasetError(f"{path}: image id {iid} appears twice in 'images'")
            seen.add(iid)
    return doc


class _Checker:
    """Sorts records into kept and skipped (or raises at the first bad one)."""

    def __init__(self, ann_file: Path, on_bad: str) -> None:
        self.ann_file = ann_file
        self.on_bad = on_bad
        self.skipped: list[Skipped] = []
        self.clipped: list[Any] = []

    def bad(self, kind: str, record: str, rid: Any, message: str) -> None:
        if self.on_bad == "error":
            raise DatasetError(f"{self.ann_file}: {record} id {rid}: {message}")
        self.skipped.append(Skipped(kind, record, rid, message))

    def warn(self) -> None:
        if not self.skipped and not self.clipped:
            return
        parts = []
        for kind in BAD_RECORD_KINDS:
            ids = [s.id for s in self.skipped if s.kind == kind]
            if ids:
                shown = ", ".join(str(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
                rec = next(s.record for s in self.skipped if s.kind == kind)
                parts.append(f"{len(ids)} {kind} ({rec} ids {shown})")
        msg = f"{self.ann_file}: skipped {len(self.skipped)} records: " + "; ".join(parts) if parts else \
            f"{self.ann_file}: skipped no records"
        if self.clipped:
            shown = ", ".join(str(i) for i in self.clipped[:5]) + (", ..." if len(self.clipped) > 5 else "")
            msg += f"; clipped {len(self.clipped)} boxes that overshot their image by <= {BOX_TOLERANCE:g} px " \
                   f"(annotation ids {shown})"
        warnings.warn(msg + " (dataset.skipped lists each)", DatasetWarning, stacklevel=3)


def _check_images(doc: dict, image_dir: Optional[Path], chk: _Checker) -> dict:
    images = {}
    for k, img in enumerate(doc["images"]):
        rid = img.get("id") if isinstance(img, dict) else None
        if rid is None:
            chk.bad("malformed image", "image", f"(images[{k}])", "not an object with an 'id'")
            continue
        problems = []
        if not _is_int(rid):
            problems.append(f"id {rid!r} is not an int")
        if not isinstance(img.get("file_name"), str) or not img.get("file_name"):
            problems.append("no 'file_name'")
        for key in ("width", "height"):
            if not _is_int(img.get(key)) or img[key] < 1:
                problems.append(f"{key!r} must be a positive int, got {img.get(key)!r}")
        if problems:
            chk.bad("malformed image", "image", rid, "; ".join(problems))
            continue
        if image_dir is not None and not (image_dir / img["file_name"]).is_file():
            chk.bad("missing image file", "image", rid, f"file {image_dir / img['file_name']} not found")
            continue
        images[rid] = img
    return images


def _check_segmentation(seg: Any, h: int, w: int) -> Optional[str]:
    if isinstance(seg, list):
        if not seg or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(_is_num(v) for v in p)
                              for p in seg):
            return "a polygon segmentation must be a list of lists of >= 3 (x, y) pairs"
        return None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [h, w]:
            return f"RLE size {seg['size']} differs from its image's [height, width] = [{h}, {w}]"
        return None
    return "segmentation must be polygons or an RLE object with 'size' and 'counts'"


def _check_annotations(doc: dict, images: dict, cats: set, all_image_ids: set, masks: bool,
                       chk: _Checker) -> list[dict]:
    kept: list[dict] = []
    seen: set = set()
    for k, a in enumerate(doc["annotations"]):
        rid = a.get("id") if isinstance(a, dict) else None
        if not isinstance(a, dict) or not _is_int(rid):
            chk.bad("malformed annotation", "annotation", rid if rid is not None else f"(annotations[{k}])",
                    "not an object with an int 'id'")
            continue
        if rid in seen:
            chk.bad("repeated annotation id", "annotation", rid, "this annotation id appears earlier in the file")
            continue
        seen.add(rid)
        bbox = a.get("bbox")
        problems = []
        if "image_id" not in a:
            problems.append("no 'image_id'")
        if not _is_int(a.get("category_id")):
            problems.append(f"'category_id' must be an int, got {a.get('category_id')!r}")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
            problems.append(f"'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        if a.get("iscrowd", 0) not in (0, 1):
            problems.append(f"'iscrowd' must be 0 or 1, got {a.get('iscrowd')!r}")
        if problems:
            chk.bad("malformed annotation", "annotation", rid, "; ".join(problems))
            continue
        iid = a["image_id"]
        if iid not in images:
            if iid in all_image_ids:
                chk.bad("annotation of a skipped image", "annotation", rid, f"its image {iid} was skipped")
            else:
                chk.bad("unknown image", "annotation", rid, f"names image id {iid!r}, which is not in 'images'")
            continue
        if a["category_id"] not in cats:
            chk.bad("unknown category", "annotation", rid,
                    f"category id {a['category_id']} is not in 'categories' (ids {sorted(cats)[:10]}...)"
                    if len(cats) > 10 else
                    f"category id {a['category_id']} is not in 'categories' (ids {sorted(cats)})")
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            chk.bad("empty box", "annotation", rid, f"box [x, y, w, h] = {bbox} has zero or negative size")
            continue
        img = images[iid]
        W, H = img["width"], img["height"]
        x1, y1, x2, y2 = x, y, x + w, y + h
        t = BOX_TOLERANCE
        if x1 < -t or y1 < -t or x2 > W + t or y2 > H + t:
            chk.bad("box outside image", "annotation", rid,
                    f"box [x, y, w, h] = {bbox} reaches outside its image {iid} ({W} x {H} pixels)")
            continue
        c = (max(x1, 0.0), max(y1, 0.0), min(x2, float(W)), min(y2, float(H)))
        if c != (x1, y1, x2, y2):
            if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
                chk.bad("box outside image", "annotation", rid,
                        f"box [x, y, w, h] = {bbox} lies outside its image {iid} ({W} x {H} pixels)")
                continue
            chk.clipped.append(rid)
        if masks:
            err = _check_segmentation(a.get("segmentation"), H, W)
            if err:
                chk.bad("bad segmentation", "annotation", rid, err)
                continue
        kept.append({**a, "_xyxy": c})
    return kept


# ------------------------------------------------------------------------------------------------ base
class _DetectionData(torch.utils.data.Dataset):
    """What both datasets share: categories and labels, the epoch, and applying the transforms."""

    categories: list[dict]
    transforms: Optional[Callable]
    seed: int
    epoch: int = 0

    def _set_categories(self, categories: list[dict]) -> None:
        cats = sorted(categories, key=lambda c: c["id"])
        self.categories = cats
        #: COCO category id of label ``k`` is ``cat_ids[k - 1]`` (labels are 1..C, 0 is the background).
        self.cat_ids = [c["id"] for c in cats]
        self.label_names = [c["name"] for c in cats]
        self.cat_id_to_label = {c: k + 1 for k, c in enumerate(self.cat_ids)}

    @property
    def num_classes(self) -> int:
        """C, the number of object classes (the detector's classifier has C + 1 outputs)."""
        return len(self.cat_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: it seeds the augmentation (and, on the fly, which images are drawn)."""
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def _index(self, index: Any) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index: {index} out of range for a data set of {n} images")
        return int(index) % n

    def _finish(self, image: Tensor, target: dict, index: int) -> tuple[Tensor, dict]:
        if self.transforms is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, target = self.transforms(image, target, rng)
        return image, target


def _to_tensor(arr: np.ndarray) -> Tensor:
    """``[H, W, 3]`` uint8 -> ``[3, H, W]`` float32 in [0, 1] (converted in NumPy: a torch op on a small
    permuted tensor pays its thread pool's start-up on every call)."""
    out = np.empty((3,) + arr.shape[:2], dtype=np.float32)
    np.divide(arr.transpose(2, 0, 1), np.float32(255.0), out=out)
    return torch.from_numpy(out)


def _target(image_id: int, h: int, w: int, boxes: np.ndarray, labels: Sequence[int], ann_ids: Sequence[int],
            iscrowd: Sequence[int], masks: Optional[np.ndarray]) -> dict:
    t = {
        "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
        "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
        "image_id": int(image_id),
        "orig_size": torch.tensor([h, w], dtype=torch.int64),
        "size": torch.tensor([h, w], dtype=torch.int64),
        "flipped": False,
        "ann_ids": torch.as_tensor(np.asarray(ann_ids, dtype=np.int64).reshape(-1)),
        "iscrowd": torch.as_tensor(np.asarray(iscrowd, dtype=np.int64).reshape(-1)),
    }
    if masks is not None:
        t["masks"] = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8).reshape(-1, h, w))
    return t


# --------------------------------------------------------------------------------------------- loaders
class CocoDetection(_DetectionData):
    """Images and boxes of a COCO-format data set through pycocotools (module docstring: item, bad input).

    Args:
        image_dir: the folder the records' ``file_name`` are relative to (COCO 2017: ``.../train2017``).
        ann_file: the annotation file (COCO 2017: ``.../annotations/instances_train2017.json``).
        transforms: called as ``transforms(image, target, rng)`` (e.g. a :class:`Compose`), or None.
        masks: also return instance masks (decoded with ``pycocotools``: polygons or RLE).
        on_bad: ``"warn"`` skips bad records with one counted :class:`DatasetWarning`; ``"error"`` refuses
            the first with :class:`DatasetError`.
        keep_crowd: keep ``iscrowd=1`` annotations (default: dropped, as torchvision's COCO training does;
            COCOeval still reads them from :attr:`coco`).
        check_files: look for every image file now (a missing one is a bad record) rather than at read time.
        drop_empty: leave out images with no annotation kept (real COCO training does; the synthetic set's
            empty images are meant as negatives).
        seed: seeds the augmentation with the epoch and index.

    Attributes:
        coco: a ``pycocotools.coco.COCO`` of the records kept (evaluate against it: a skipped record is then
            out of training and evaluation alike).
        ids: the image ids, item ``i`` is image ``ids[i]`` (sorted).
        categories, cat_ids, label_names, cat_id_to_label: the category table and the label mapping.
        skipped: a :class:`Skipped` for each record left out.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Optional[Callable] = None,
        masks: bool = False,
        on_bad: str = "warn",
        keep_crowd: bool = False,
        check_files: bool = True,
        drop_empty: bool = False,
        seed: int = 0,
    ) -> None:
        if on_bad not in ("warn", "error"):
            raise ValueError(f"on_bad: expected 'warn' or 'error', got {on_bad!r}")
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found")
        self.transforms = transforms
        self.masks = bool(masks)
        self.keep_crowd = bool(keep_crowd)
        self.seed = int(seed)
        self.epoch = 0
        doc = load_annotation_file(self.ann_file)
        chk = _Checker(self.ann_file, on_bad)
        all_ids = {img.get("id") for img in doc["images"] if isinstance(img, dict)}
        images = _check_images(doc, self.image_dir if check_files else None, chk)
        self._set_categories(doc["categories"])
        anns = _check_annotations(doc, images, set(self.cat_ids), all_ids, self.masks, chk)
        self.skipped = chk.skipped
        self.clipped = chk.clipped
        chk.warn()

        clean = {k: v for k, v in doc.items() if k not in ("images", "annotations")}
        clean["images"] = list(images.values())
        clean["annotations"] = [{k: v for k, v in a.items() if k != "_xyxy"} for a in anns]
        from pycocotools.coco import COCO

        self.coco = COCO()
        self.coco.dataset = clean
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
            self.coco.createIndex()
        self._boxes = {a["id"]: a["_xyxy"] for a in anns}
        per_image: dict = {iid: [] for iid in images}
        for a in anns:
            if self.keep_crowd or not a.get("iscrowd", 0):
                per_image[a["image_id"]].append(a)
        self._anns = per_image
        ids = sorted(images)
        self.ids = [i for i in ids if per_image[i]] if drop_empty else ids

    def __len__(self) -> int:
        return len(self.ids)

    def read_image(self, index: int) -> Tensor:
        """The file of item ``index`` as ``[3, H, W]`` float32 in [0, 1], untransformed; refuses a file that
        cannot be decoded or whose size is not its record's (:class:`DatasetError` names file and image id)."""
        from PIL import Image, UnidentifiedImageError

        info = self.coco.imgs[self.ids[self._index(index)]]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read image id {info['id']} ({e})") from e
        if arr.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(
                f"{path}: image id {info['id']} is {arr.shape[1]} x {arr.shape[0]} pixels but its record in "
                f"{self.ann_file} says {info['width']} x {info['height']}: its boxes would be wrong")
        return _to_tensor(arr)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        i = self._index(index)
        iid = self.ids[i]
        info = self.coco.imgs[iid]
        image = self.read_image(i)
        anns = self._anns[iid]
        h, w = info["height"], info["width"]
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if (self.masks and anns) else (
            np.zeros((0, h, w), np.uint8) if self.masks else None)
        target = _target(
            iid, h, w,
            np.array([self._boxes[a["id"]] for a in anns], dtype=np.float64).reshape(-1, 4),
            [self.cat_id_to_label[a["category_id"]] for a in anns],
            [a["id"] for a in anns],
            [int(a.get("iscrowd", 0)) for a in anns], masks)
        return self._finish(image, target, i)


class SyntheticDetection(_DetectionData):
    """The synthetic set drawn on the fly: item ``i`` is :func:`~dcn_lessons.detection.synthetic.make_image`
    ``(spec, data_seed, split, epoch * length + i)`` when ``fresh`` (new images every epoch), image ``i``
    otherwise; items are exactly those :class:`CocoDetection` returns for the files
    :func:`~dcn_lessons.detection.synthetic.write_dataset` writes for epoch 0 (same pixels, boxes, labels,
    image ids ``index + 1``, annotation ids, masks).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        length: items per epoch.
        data_seed: the set's seed (as ``make-data --seed``).
        spec: the :class:`~dcn_lessons.detection.synthetic.SynthSpec`.
        transforms, masks, seed: as :class:`CocoDetection`.
        fresh: new images every epoch; default True for ``"train"``, False otherwise (a fixed val/test).
    """

    def __init__(
        self,
        split: str = "train",
        length: int = 2000,
        data_seed: int = 0,
        spec: Optional[_syn.SynthSpec] = None,
        transforms: Optional[Callable] = None,
        masks: bool = False,
        fresh: Optional[bool] = None,
        seed: int = 0,
    ) -> None:
        if split not in _syn.SPLITS:
            raise ValueError(f"split: expected one of {tuple(_syn.SPLITS)}, got {split!r}")
        if not _is_int(length) or length < 1:
            raise ValueError(f"length: expected an int >= 1, got {length!r}")
        self.split = split
        self.length = length
        self.data_seed = int(data_seed)
        self.spec = spec if spec is not None else _syn.SynthSpec()
        self.transforms = transforms
        self.masks = bool(masks)
        self.fresh = (split == "train") if fresh is None else bool(fresh)
        self.seed = int(seed)
        self.epoch = 0
        self._set_categories(_syn.coco_categories(self.spec))

    def __len__(self) -> int:
        return self.length

    def image_index(self, index: int) -> int:
        """The stream index drawn for item ``index`` in the current epoch."""
        i = self._index(index)
        return self.epoch * self.length + i if self.fresh else i

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        i = self._index(index)
        k = self.image_index(i)
        s = _syn.make_image(self.spec, self.data_seed, self.split, k)
        h, w = s.image.shape[:2]
        boxes = s.boxes.copy()
        boxes[:, 2:] += boxes[:, :2]
        image = _to_tensor(s.image)
        ann_ids = [_syn.annotation_id(k + 1, j) for j in range(len(s.labels))]
        target = _target(k + 1, h, w, boxes, s.labels, ann_ids, np.zeros(len(s.labels)),
                         s.masks if self.masks else None)
        return self._finish(image, target, i)


# ------------------------------------------------------------------------------------------ transforms
class Compose:
    """Apply transforms in order; each is called as ``t(image, target, rng)``."""

    def __init__(self, transforms: Iterable[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: dict, rng: np.random.Generator) -> tuple[Tensor, dict]:
        for t in self.transforms:
            image, target = t(image, target, rng)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``: ``x -> W - x``, so a box ``(x1, y1, x2, y2)``
    becomes ``(W - x2, y1, W - x1, y2)`` (pixel edges); masks are mirrored; ``target["flipped"]`` toggles."""

    def __init__(self, p: float = 0.5) -> None:
        if not (_is_num(p) and 0 <= p <= 1):
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, image: Tensor, target: dict, rng: np.random.Generator) -> tuple[Tensor, dict]:
        if rng.random() >= self.p:
            return image, target
        W = image.shape[-1]
        target = dict(target)
        b = target["boxes"]
        target["boxes"] = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], dim=1)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        target["flipped"] = not target["flipped"]
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResize:
    """Resize so that the shorter side is one of ``sizes`` (drawn uniformly; one size: a fixed resize, as the
    papers' "shorter side 600" or 800/1000), the longer side at most ``max_size``; the aspect ratio is kept.

    Scale jitter for training is several sizes, e.g. ``RandomResize((96, 112, 128, 144, 160))`` for the
    128-pixel synthetic set. The image is resampled bilinearly (antialiased when shrinking); boxes are scaled
    by ``(W'/W, H'/H)`` (exact in pixel edges); masks are resampled bilinearly and thresholded at 0.5, so a
    mask's tight box stays within about a pixel of its scaled box. ``target["size"]`` becomes ``(H', W')``.
    """

    def __init__(self, sizes: int | Sequence[int], max_size: Optional[int] = None) -> None:
        sizes = (sizes,) if _is_int(sizes) else tuple(sizes)
        if not sizes or not all(_is_int(s) and s >= 1 for s in sizes):
            raise ValueError(f"sizes: expected positive ints, got {sizes!r}")
        if max_size is not None and (not _is_int(max_size) or max_size < max(sizes)):
            raise ValueError(f"max_size: expected None or an int >= max(sizes) = {max(sizes)}, got {max_size!r}")
        self.sizes = sizes
        self.max_size = max_size

    def __call__(self, image: Tensor, target: dict, rng: np.random.Generator) -> tuple[Tensor, dict]:
        h, w = image.shape[-2:]
        short = self.sizes[int(rng.integers(len(self.sizes)))]
        scale = short / min(h, w)
        if self.max_size is not None and max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) == (h, w):
            return image, target
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=(nh < h or nw < w))[0].clamp_(0.0, 1.0)
        target = dict(target)
        sx, sy = nw / w, nh / h
        target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=target["boxes"].dtype)
        if "masks" in target:
            m = target["masks"]
            if m.shape[0]:
                m = F.interpolate(m[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0] >= 0.5
            target["masks"] = m.to(torch.uint8).reshape(-1, nh, nw)
        target["size"] = torch.tensor([nh, nw], dtype=torch.int64)
        return image, target

    def __repr__(self) -> str:
        return f"RandomResize(sizes={self.sizes}, max_size={self.max_size})"


def boxes_to_original(boxes: Tensor, target: dict) -> Tensor:
    """Map ``boxes [n, 4]`` (x1, y1, x2, y2) on a returned image back to its file's pixels: undo the resize
    (``size`` -> ``orig_size``) and, when ``target["flipped"]``, the flip. Resize and flip commute, so the
    order they were applied in does not matter."""
    h, w = (int(v) for v in target["size"])
    oh, ow = (int(v) for v in target["orig_size"])
    b = boxes * torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=boxes.dtype, device=boxes.device)
    if target.get("flipped"):
        b = torch.stack([ow - b[:, 2], b[:, 1], ow - b[:, 0], b[:, 3]], dim=1)
    return b


# --------------------------------------------------------------------------------------------- collate
class DetectionBatch(NamedTuple):
    """A batch: ``images [B, 3, Hp, Wp]`` (each image at the top left, the rest ``pad_value``), ``sizes [B, 2]``
    int64 ``(h, w)`` of each image before padding, ``targets`` the list of target dicts."""

    images: Tensor
    sizes: Tensor
    targets: list

    def to(self, device: Any, non_blocking: bool = False) -> "DetectionBatch":
        """The batch on ``device`` (every tensor in the targets too)."""
        mv = (lambda v: v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v)
        return DetectionBatch(mv(self.images), mv(self.sizes), [{k: mv(v) for k, v in t.items()} for t in self.targets])


def collate_detection(batch: Sequence[tuple[Tensor, dict]], size_divisible: int = 16,
                      pad_value: float | Sequence[float] = 0.0) -> DetectionBatch:
    """Batch ``(image, target)`` items of different sizes: one padded tensor and each image's size.

    Why padded plus sizes (as torchvision's ``ImageList``): the backbone runs once on the whole batch, and
    the sizes tell anchors and proposals where each image ends, so nothing is placed in the padding. Images
    sit at the top left, so box coordinates need no change; the padded height and width are rounded up to a
    multiple of ``size_divisible`` (16, the stride of conv4 and conv5: every image's feature cells then cover
    the same pixels as they would alone). ``pad_value`` (one number or one per channel) lets a model that
    normalises with a mean pad with that mean, so the padding is 0 after normalisation.

    Args:
        batch: items as the datasets return them (``image [3, H_i, W_i]``).
    Returns:
        a :class:`DetectionBatch`.
    """
    if not batch:
        raise ValueError("batch: expected at least one (image, target) item")
    if not _is_int(size_divisible) or size_divisible < 1:
        raise ValueError(f"size_divisible: expected an int >= 1, got {size_divisible!r}")
    images = [b[0] for b in batch]
    for k, im in enumerate(images):
        if not isinstance(im, Tensor) or im.ndim != 3 or im.shape[0] != images[0].shape[0]:
            raise ValueError(f"batch[{k}]: expected an image tensor [C, H, W] with C = {images[0].shape[0]}, "
                             f"got {getattr(im, 'shape', type(im).__name__)}")
    c = images[0].shape[0]
    hp = max(im.shape[1] for im in images)
    wp = max(im.shape[2] for im in images)
    hp = -(-hp // size_divisible) * size_divisible
    wp = -(-wp // size_divisible) * size_divisible
    pv = torch.as_tensor(pad_value, dtype=images[0].dtype).reshape(-1)
    if pv.numel() not in (1, c):
        raise ValueError(f"pad_value: expected one number or {c} (one per channel), got {pad_value!r}")
    out = pv.reshape(-1, 1, 1).expand(c, hp, wp).repeat(len(images), 1, 1, 1) if pv.numel() == c else \
        torch.full((len(images), c, hp, wp), float(pv), dtype=images[0].dtype)
    for k, im in enumerate(images):
        out[k, :, : im.shape[1], : im.shape[2]] = im
    sizes = torch.tensor([[im.shape[1], im.shape[2]] for im in images], dtype=torch.int64)
    return DetectionBatch(out, sizes, [b[1] for b in batch])


# -------------------------------------------------------------------------------------------- figures
def plot_items(items: Sequence[tuple[Tensor, dict]], label_names: Sequence[str], cols: int = 4,
               masks: bool = True, scores: Optional[Sequence[Tensor]] = None, size: float = 2.6):
    """A grid of images with their boxes and class names (and masks, tinted, when the targets have them).

    Args:
        items: ``(image, target)`` pairs as the datasets return them (or detections: a target-like dict with
            ``boxes`` and ``labels``).
        label_names: name of label ``k`` is ``label_names[k - 1]``.
        scores: optional per-item scores ``[n]`` printed after the names.
    Returns:
        the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    n = len(items)
    if n == 0:
        raise ValueError("items: expected at least one (image, target) pair")
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        image, target = items[k]
        img = image.permute(1, 2, 0).clamp(0, 1).numpy().copy()
        labels = target["labels"].tolist()
        if masks and "masks" in target:
            for m, lab in zip(target["masks"], labels):
                c = np.asarray(colours((lab - 1) % 10)[:3])
                mk = m.numpy().astype(bool)
                img[mk] = 0.55 * img[mk] + 0.45 * c
        ax.imshow(img, interpolation="nearest", extent=(0, img.shape[1], img.shape[0], 0))
        for j, ((x1, y1, x2, y2), lab) in enumerate(zip(target["boxes"].tolist(), labels)):
            c = colours((lab - 1) % 10)
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=c, lw=1.2))
            text = label_names[lab - 1] + (f" {float(scores[k][j]):.2f}" if scores is not None else "")
            ax.text(x1, y1, text, color="white", fontsize=7, va="bottom",
                    bbox=dict(facecolor=c, alpha=0.8, pad=0.5, lw=0))
        ax.set_title(f"image {target.get('image_id', k)}", fontsize=8)
    fig.tight_layout()
    return fig
