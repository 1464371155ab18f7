"""The capstone's data: the synthetic COCO-format set, the COCO loader, augmentation, collate, bad input, make-data."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dcn_lessons.detection import synthetic as syn
from dcn_lessons.detection.coco import (
    BAD_RECORD_KINDS,
    CocoDetection,
    Compose,
    DatasetError,
    DatasetWarning,
    RandomHorizontalFlip,
    RandomResize,
    SyntheticDetection,
    boxes_to_original,
    collate_detection,
)

SPEC = syn.SynthSpec()
COUNTS = {"train": 6, "val": 6, "test": 0}


def _tight_xyxy(mask: torch.Tensor) -> list[float]:
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "set"
    assert syn.write_dataset(root, SPEC, seed=3, counts=COUNTS, workers=1)
    return root


# ------------------------------------------------------------------------------------------- generator
def test_spec_checks_name_the_field() -> None:
    for bad, name in [({"side": (0.5, 0.1)}, "side"), ({"classes": ("2", "2")}, "classes"),
                      ({"classes": ("hexagon",)}, "classes"), ({"warp": -0.1}, "warp"),
                      ({"objects": (3, 1)}, "objects"),
                      ({"image_size": (8, 8)}, "image_size"), ({"empty_fraction": 1.5}, "empty_fraction")]:
        with pytest.raises(ValueError, match=name):
            SPEC.replace(**bad)
    with pytest.raises(ValueError, match="unknown fields"):
        syn.SynthSpec.from_dict({"wrap": 0.1})
    assert syn.SynthSpec.from_dict(SPEC.to_dict()) == SPEC
    assert len(SPEC.classes) >= 6


def test_area_ranges_scale_cocos_thresholds_by_image_area() -> None:
    r = syn.coco_area_ranges(640 * 480)
    assert r["small"][1] == 32 ** 2 and r["medium"] == [32 ** 2, 96 ** 2]
    r = syn.coco_area_ranges(128 * 128)
    assert r["small"][1] == pytest.approx(54.6, abs=0.05) and r["large"][0] == pytest.approx(491.5, abs=0.05)
    assert [syn.area_bucket(a, r) for a in (10, 54, 55, 491, 492)] == ["small"] * 2 + ["medium"] * 2 + ["large"]


def test_tps_interpolates_and_reproduces_affine_maps() -> None:
    rng = np.random.default_rng(0)
    g = np.linspace(-1, 1, 4)
    ctrl = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    vals = rng.normal(0, 0.2, ctrl.shape)
    tps = syn.tps_fit(ctrl, vals)
    np.testing.assert_allclose(syn.tps_warp(tps, ctrl), vals, atol=1e-10)
    # an affine function is its own thin-plate interpolant (zero bending energy), everywhere
    A, b = np.array([[0.3, -0.2], [0.1, 0.4]]), np.array([0.05, -0.1])
    tps = syn.tps_fit(ctrl, ctrl @ A.T + b)
    pts = rng.uniform(-2, 2, (50, 2))
    np.testing.assert_allclose(syn.tps_warp(tps, pts), pts @ A.T + b, atol=1e-9)
    with pytest.raises(ValueError, match="values"):
        syn.tps_fit(ctrl, vals[:3])


def test_polygon_sdf_against_brute_force() -> None:
    from matplotlib.path import Path as MplPath

    star = syn._star(5, 0.45)
    pts = np.random.default_rng(1).uniform(-1.2, 1.2, (400, 2))
    sd = syn.polygon_sdf(pts, star)
    # distance: to densely sampled edges; sign: matplotlib's point-in-polygon
    t = np.linspace(0, 1, 2001)[:, None, None]
    dense = (star[None] + t * (np.roll(star, -1, 0) - star)[None]).reshape(-1, 2)
    brute = np.sqrt(((pts[:, None] - dense[None]) ** 2).sum(-1)).min(1)
    inside = MplPath(star[:, ::-1]).contains_points(pts[:, ::-1])
    np.testing.assert_allclose(np.abs(sd), brute, atol=1e-3)
    assert np.array_equal(sd < 0, inside)


def test_make_image_is_deterministic_and_index_addressable() -> None:
    a = syn.make_image(SPEC, 7, "train", 4)
    for _ in range(2):
        syn.make_image(SPEC, 7, "train", 3)  # drawing others in between changes nothing
    b = syn.make_image(SPEC, 7, "train", 4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.image, syn.make_image(SPEC, 8, "train", 4).image)
    assert not np.array_equal(a.image, syn.make_image(SPEC, 7, "val", 4).image)
    with pytest.raises(ValueError, match="split"):
        syn.make_image(SPEC, 0, "dev", 0)
    with pytest.raises(ValueError, match="index"):
        syn.make_image(SPEC, 0, "train", -1)


def test_ground_truth_is_what_was_drawn() -> None:
    """Masks are disjoint and non-empty, boxes are their tight boxes, areas their pixel counts; with the warp,
    pose and clutter switched off an object is exactly its template (a flat-coloured square)."""
    n_obj = 0
    for i in range(12):
        s = syn.make_image(SPEC, 0, "val", i)
        n_obj += len(s.labels)
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
        assert (s.masks.sum(0) <= 1).all() and (s.areas >= SPEC.min_area).all()
        for m, box, area in zip(s.masks, s.boxes, s.areas):
            assert _tight_xyxy(torch.from_numpy(m)) == [box[0], box[1], box[0] + box[2], box[1] + box[3]]
            assert m.sum() == area
        assert ((s.labels >= 1) & (s.labels <= len(SPEC.classes))).all()
    assert n_obj > 12
    flat = SPEC.replace(classes=("square",), warp=0.0, rotation=0.0, shear=0.0, aspect=(1.0, 1.0), noise=0.0,
                        distractors=(0, 0), objects=(1, 1), empty_fraction=0.0, max_truncation=0.0)
    s = syn.make_image(flat, 0, "train", 0)
    (x, y, w, h), side = s.boxes[0], s.sides[0]
    assert abs(w - 0.85 * side) <= 1.01 and abs(h - 0.85 * side) <= 1.01  # the square's half side is 0.85
    inner = s.image[int(y) + 1:int(y + h) - 1, int(x) + 1:int(x + w) - 1].reshape(-1, 3).astype(float)
    assert inner.std(0).max() < 0.15 * 255 / 2  # one colour, gently shaded


def test_scale_range_covers_small_medium_and_large() -> None:
    ranges = syn.coco_area_ranges(128 * 128)
    buckets = [syn.area_bucket(a, ranges) for i in range(40) for a in syn.make_image(SPEC, 1, "train", i).areas]
    share = {b: buckets.count(b) / len(buckets) for b in ("small", "medium", "large")}
    assert all(v >= 0.05 for v in share.values()), share


def test_digit_split_is_lesson_05s() -> None:
    from dcn_lessons.data import digit_split
    from dcn_lessons.training import _split_indices

    for split in ("train", "test"):
        assert np.array_equal(digit_split(1797, split), _split_indices(1797, split))
    assert not set(digit_split(1797, "train")) & set(digit_split(1797, "test"))


# ------------------------------------------------------------------------------------------------ files
def test_same_seed_same_bytes_whatever_the_workers(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert syn.write_dataset(again, SPEC, seed=3, counts=COUNTS, workers=2)
    assert _hashes(tiny) == _hashes(again)
    assert not syn.write_dataset(again, SPEC, seed=3, counts=COUNTS)  # identical: left alone
    with pytest.raises(FileExistsError, match="force"):
        syn.write_dataset(again, SPEC, seed=4, counts=COUNTS)
    assert _hashes(tiny) == _hashes(again)  # the refusal touched nothing
    assert syn.write_dataset(again, SPEC, seed=4, counts=COUNTS, force=True)
    assert _hashes(tiny) != _hashes(again)
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temporary folder left behind


def test_coco_json_is_what_pycocotools_reads(tiny: Path) -> None:
    from pycocotools import mask as mask_utils

    doc = json.loads(syn.split_paths(tiny, "val")[1].read_text())
    assert [c["name"] for c in doc["categories"]] == list(SPEC.classes)
    assert doc["info"]["dcn_lessons"]["spec"] == SPEC.to_dict()
    for a in doc["annotations"]:
        rle = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        assert list(mask_utils.toBbox(rle)) == a["bbox"] and mask_utils.area(rle) == a["area"]
        assert a["iscrowd"] == 0
    img = {i["id"]: i for i in doc["images"]}
    assert all(img[k]["width"] == 128 and img[k]["height"] == 128 for k in img)


def test_round_trip_files_equal_on_the_fly_and_the_drawing(tiny: Path) -> None:
    files = CocoDetection(*syn.split_paths(tiny, "val"), masks=True)
    live = SyntheticDetection("val", COUNTS["val"], data_seed=3, masks=True)
    assert files.label_names == live.label_names == list(SPEC.classes) and files.num_classes == 8
    for i in range(len(files)):
        (x1, t1), (x2, t2) = files[i], live[i]
        drawn = syn.make_image(SPEC, 3, "val", i)
        assert x1.shape == (3, 128, 128) and x1.dtype == torch.float32
        assert torch.equal(x1, x2) and torch.equal(x1, torch.from_numpy(drawn.image).permute(2, 0, 1) / 255.0)
        for key in ("boxes", "labels", "masks", "ann_ids", "orig_size"):
            assert torch.equal(t1[key], t2[key]), key
        assert t1["image_id"] == t2["image_id"] == i + 1
        assert torch.equal(t1["masks"].bool(), torch.from_numpy(drawn.masks))
        assert t1["labels"].tolist() == drawn.labels.tolist()
        for m, b in zip(t1["masks"], t1["boxes"]):
            assert _tight_xyxy(m) == b.tolist()


def test_cocoeval_of_the_ground_truth_against_itself_is_one(tiny: Path) -> None:
    from pycocotools.cocoeval import COCOeval

    ds = CocoDetection(*syn.split_paths(tiny, "val"))
    ranges = syn.coco_area_ranges(128 * 128)
    for iou_type in ("bbox", "segm"):
        res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "segmentation": a["segmentation"], "score": 1.0} for a in ds.coco.dataset["annotations"]]
        with contextlib.redirect_stdout(io.StringIO()):
            dt = ds.coco.loadRes(res)
            ev = COCOeval(ds.coco, dt, iou_type)
            ev.params.areaRng = list(ranges.values())
            ev.params.areaRngLbl = list(ranges)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0), iou_type


def test_fresh_images_every_epoch_and_order_free_augmentation() -> None:
    aug = Compose([RandomHorizontalFlip(0.5), RandomResize((96, 128, 160))])
    ds = SyntheticDetection("train", 4, data_seed=0, transforms=aug)
    first = [ds[i] for i in range(4)]
    backwards = [ds[i] for i in reversed(range(4))][::-1]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) for a, b in zip(first, backwards))
    ds.set_epoch(1)
    assert [ds.image_index(i) for i in range(4)] == [4, 5, 6, 7]
    assert ds[0][1]["image_id"] == 5 and first[0][1]["image_id"] == 1
    ds.set_epoch(0)
    assert torch.equal(ds[0][0], first[0][0])
    assert not SyntheticDetection("val", 4).fresh
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)


# ------------------------------------------------------------------------------------ transforms, collate
def test_flip_and_resize_keep_boxes_and_masks_together(tiny: Path) -> None:
    ds = CocoDetection(*syn.split_paths(tiny, "train"), masks=True)
    i = max(range(len(ds)), key=lambda k: len(ds[k][1]["boxes"]))
    image, target = ds[i]
    rng = np.random.default_rng(0)
    fi, ft = RandomHorizontalFlip(1.0)(image, target, rng)
    assert torch.equal(fi, image.flip(-1)) and ft["flipped"]
    for m, b in zip(ft["masks"], ft["boxes"]):
        assert _tight_xyxy(m) == b.tolist()  # exact: a flip maps pixel edges to pixel edges
    back = RandomHorizontalFlip(1.0)(fi, ft, rng)[1]
    assert torch.equal(back["boxes"], target["boxes"]) and not back["flipped"]
    for size in (80, 200):
        ri, rt = RandomResize(size)(fi, ft, rng)
        assert ri.shape[-2:] == (size, size) and rt["size"].tolist() == [size, size]
        assert rt["orig_size"].tolist() == [128, 128]
        for m, b in zip(rt["masks"], rt["boxes"]):
            if m.any():
                assert np.allclose(_tight_xyxy(m), b.tolist(), atol=1.5 * max(1, size / 128))
        torch.testing.assert_close(boxes_to_original(rt["boxes"], rt), target["boxes"])
    assert RandomResize(128, max_size=150)(image, target, rng)[0] is image  # nothing to do: the same tensor
    with pytest.raises(ValueError, match="max_size"):
        RandomResize((100, 200), max_size=150)


def test_collate_pads_to_the_stride_and_keeps_sizes() -> None:
    items = [(torch.rand(3, 100, 120), {"boxes": torch.zeros(0, 4)}),
             (torch.rand(3, 90, 70), {"boxes": torch.zeros(0, 4)})]
    b = collate_detection(items, size_divisible=16, pad_value=(0.5, 0.25, 0.0))
    assert b.images.shape == (2, 3, 112, 128) and b.sizes.tolist() == [[100, 120], [90, 70]]
    assert torch.equal(b.images[1, :, :90, :70], items[1][0])
    assert b.images[1, :, 95, 100].tolist() == [0.5, 0.25, 0.0] and b.images[0, 1, 105, 0] == 0.25
    assert b.targets[0] is items[0][1] and b.to("cpu").images.shape == b.images.shape
    assert collate_detection(items, size_divisible=1).images.shape == (2, 3, 100, 120)
    with pytest.raises(ValueError, match="pad_value"):
        collate_detection(items, pad_value=(0.0, 1.0))
    with pytest.raises(ValueError, match="batch"):
        collate_detection([])


# ------------------------------------------------------------------------------------------- bad input
def _make_set(tmp: Path, annotations: list, images: list | None = None, categories: list | None = None,
              sizes: tuple = ((24, 32), (20, 16))) -> tuple[Path, Path]:
    from PIL import Image

    folder = tmp / "images"
    folder.mkdir(exist_ok=True)
    for k, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8)).save(folder / f"{k + 1}.png")
    if images is None:
        images = [{"id": k + 1, "file_name": f"{k + 1}.png", "height": h, "width": w} for k, (h, w) in enumerate(sizes)]
    doc = {"images": images, "annotations": annotations,
           "categories": categories if categories is not None else [{"id": 3, "name": "a"}, {"id": 9, "name": "b"}]}
    ann = tmp / "ann.json"
    ann.write_text(json.dumps(doc))
    return folder, ann


def _ann(i: int, image_id: int = 1, cat: int = 3, bbox=(2.0, 3.0, 10.0, 8.0)) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": list(bbox), "area": 1.0, "iscrowd": 0}


def _load(folder: Path, ann: Path, **kw) -> tuple[CocoDetection, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(folder, ann, **kw)
    return ds, [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]


def test_a_good_set_loads_without_warnings(tmp_path: Path) -> None:
    folder, ann = _make_set(tmp_path, [_ann(1), _ann(2, image_id=2, cat=9, bbox=(0, 0, 16, 20))])
    ds, warned = _load(folder, ann)
    assert not warned and not ds.skipped and len(ds) == 2
    image, t = ds[1]
    assert image.shape == (3, 20, 16) and t["boxes"].tolist() == [[0, 0, 16, 20]] and t["labels"].tolist() == [2]
    assert ds.cat_ids == [3, 9] and t["image_id"] == 2 and t["orig_size"].tolist() == [20, 16]
    assert ds[0][1]["boxes"].tolist() == [[2, 3, 12, 11]]


@pytest.mark.parametrize("content, message", [
    (None, "annotation file not found"),
    ("", "is empty"),
    ("{\"images\": [", "not valid JSON at line 1"),
    ("[1, 2]", "expected a JSON object"),
    ("{\"images\": [], \"annotations\": []}", "no 'categories'"),
    ("{\"images\": {}, \"annotations\": [], \"categories\": []}", "'images' must be a list"),
    ("{\"images\": [], \"annotations\": [], \"categories\": []}", "'categories' is empty"),
    ("{\"images\": [], \"annotations\": [], "
     "\"categories\": [{\"id\": 1, \"name\": \"a\"}, {\"id\": 1, \"name\": \"b\"}]}",
     "category id 1 appears twice"),
    ("{\"images\": [{\"id\": 1}, {\"id\": 1}], \"annotations\": [], \"categories\": [{\"id\": 1, \"name\": \"a\"}]}",
     "image id 1 appears twice"),
])
def test_a_bad_annotation_file_is_refused_with_its_name(tmp_path: Path, content, message) -> None:
    ann = tmp_path / "instances.json"
    if content is not None:
        ann.write_text(content)
    with pytest.raises(DatasetError, match=message) as e:
        CocoDetection(tmp_path, ann)
    assert str(ann) in str(e.value)


@pytest.mark.parametrize("record, kind, fragment", [
    (_ann(7, image_id=5), "unknown image", "image id 5"),
    (_ann(7, cat=4), "unknown category", "category id 4"),
    (_ann(7, bbox=(2, 3, 0, 8)), "empty box", "zero or negative"),
    (_ann(7, bbox=(2, 3, 10, -1)), "empty box", "zero or negative"),
    (_ann(7, bbox=(25, 3, 10, 8)), "box outside image", "reaches outside"),
    (_ann(7, bbox=(-3, 3, 10, 8)), "box outside image", "reaches outside"),
    ({"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3]}, "malformed annotation", "'bbox'"),
    ({"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, float("nan")]}, "malformed annotation", "'bbox'"),
])
def test_a_bad_record_is_skipped_with_a_counted_warning_or_refused(tmp_path: Path, record, kind, fragment) -> None:
    folder, ann = _make_set(tmp_path, [_ann(1), record, _ann(8, image_id=2)])
    ds, warned = _load(folder, ann)
    assert [(s.kind, s.id) for s in ds.skipped] == [(kind, 7)] and fragment in ds.skipped[0].message
    assert len(warned) == 1 and f"skipped 1 records: 1 {kind} (annotation ids 7)" in warned[0] and str(ann) in warned[0]
    assert ds[0][1]["ann_ids"].tolist() == [1] and ds[1][1]["ann_ids"].tolist() == [8]
    assert 7 not in ds.coco.anns  # out of evaluation too
    with pytest.raises(DatasetError, match=f"{re.escape(str(ann))}: annotation id 7: .*{re.escape(fragment)}"):
        CocoDetection(folder, ann, on_bad="error")


def test_a_small_overshoot_is_clipped_and_counted(tmp_path: Path) -> None:
    folder, ann = _make_set(tmp_path, [_ann(1, bbox=(-0.5, 2, 10, 8)), _ann(2, bbox=(20, 2, 12.75, 22.5))])
    ds, warned = _load(folder, ann)
    assert not ds.skipped and ds.clipped == [1, 2]
    assert ds[0][1]["boxes"].tolist() == [[0, 2, 9.5, 10], [20, 2, 32, 24]]
    assert len(warned) == 1 and "clipped 2 boxes" in warned[0]


def test_missing_image_file_skips_the_image_and_its_annotations(tmp_path: Path) -> None:
    folder, ann = _make_set(tmp_path, [_ann(1), _ann(2, image_id=2)])
    (folder / "2.png").unlink()
    ds, warned = _load(folder, ann)
    assert len(ds) == 1 and [(s.kind, s.id) for s in ds.skipped] == [("missing image file", 2),
                                                                     ("annotation of a skipped image", 2)]
    assert "1 missing image file (image ids 2)" in warned[0] and "2.png" in ds.skipped[0].message
    with pytest.raises(DatasetError, match="image id 2: file .*2.png not found"):
        CocoDetection(folder, ann, on_bad="error")


def test_unreadable_or_resized_image_is_refused_when_read(tmp_path: Path) -> None:
    folder, ann = _make_set(tmp_path, [_ann(1), _ann(2, image_id=2)])
    (folder / "2.png").write_bytes(b"not a png")
    ds, _ = _load(folder, ann)
    with pytest.raises(DatasetError, match=r"2.png: cannot read image id 2"):
        ds[1]
    from PIL import Image

    Image.fromarray(np.zeros((24, 33, 3), np.uint8)).save(folder / "1.png")
    with pytest.raises(DatasetError, match=r"1.png: image id 1 is 33 x 24 pixels but its record .* says 32 x 24"):
        ds[0]


def test_malformed_image_records_and_segmentations(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "1.png", "height": 24, "width": 32}, {"id": 2, "file_name": "2.png", "height": 0}]
    seg_ok = {"segmentation": [[2, 3, 12, 3, 12, 11]]}
    seg_bad = {"segmentation": {"size": [5, 5], "counts": "abc"}}
    records = [{**_ann(1), **seg_ok}, {**_ann(3), **seg_bad}, _ann(4, image_id=2)]
    folder, ann = _make_set(tmp_path, records, images=images)
    ds, warned = _load(folder, ann, masks=True)
    assert [(s.kind, s.id) for s in ds.skipped] == [("malformed image", 2), ("bad segmentation", 3),
                                                    ("annotation of a skipped image", 4)]
    assert "'height' must be a positive int" in ds.skipped[0].message
    image, t = ds[0]
    assert t["masks"].shape == (1, 24, 32) and t["masks"].dtype == torch.uint8 and t["masks"].sum() > 0
    assert set(s.kind for s in ds.skipped) <= set(BAD_RECORD_KINDS)


def test_crowd_annotations_are_dropped_unless_kept(tmp_path: Path) -> None:
    folder, ann = _make_set(tmp_path, [_ann(1), {**_ann(2), "iscrowd": 1}])
    assert CocoDetection(folder, ann)[0][1]["ann_ids"].tolist() == [1]
    t = CocoDetection(folder, ann, keep_crowd=True)[0][1]
    assert t["ann_ids"].tolist() == [1, 2] and t["iscrowd"].tolist() == [0, 1]
    assert len(CocoDetection(folder, ann, drop_empty=True)) == 1


# ------------------------------------------------------------------------------------------------- CLI
def test_make_data_command(tmp_path: Path, capsys) -> None:
    from dcn_lessons.detection.cli import build_parser, main

    out = tmp_path / "set"
    args = ["make-data", "--out", str(out), "--train", "3", "--val", "2", "--test", "0", "--quiet", "--workers", "1"]
    assert main(args + ["--preview", str(tmp_path / "p.png")]) == 0
    printed = capsys.readouterr().out
    assert "wrote 5 images" in printed and "train: 3 images" in printed and (tmp_path / "p.png").stat().st_size > 0
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().out
    assert main(args + ["--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and err.count("\n") == 1
    spec = tmp_path / "spec.json"
    spec.write_text('{"warp": -1}')
    assert main(args + ["--spec", str(spec), "--force"]) == 2 and "warp" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["make-data", "--train", "-3"])
    assert e.value.code == 2 and "expected an integer >= 0" in capsys.readouterr().err
    help_text = build_parser()._subparsers._group_actions[0].choices["make-data"].format_help()
    for option in ("--out", "--seed", "--train", "--val", "--test", "--image-size", "--spec", "--workers", "--force",
                   "--preview"):
        assert option in help_text
