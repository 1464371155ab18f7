"""dcn_lessons.training's additions for lessons 07-08: cached trained digit networks, scenes of digits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcn_lessons.analysis import Frame
from dcn_lessons.detection.synthetic import area_bucket, coco_area_ranges
from dcn_lessons.training import DigitRun, DigitScenes, digit_model_cache, digit_scenes, train_digit_model

TINY = dict(width=2, steps=3, n_train=64, n_test=32, size=16, eval_every=3, batch_size=16)


#: tiny tensors: one intra-op thread (the fixture in tests/conftest.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_fields_are_checked_and_named():
    assert DigitRun("plain", deform=("conv3",)).deform == ()  # a plain network has no deformable layer
    assert DigitRun("v1", deform="conv3").deform == ("conv3",)
    assert DigitRun("v2").name == "v2@conv2+conv3" and DigitRun().name == "plain"
    with pytest.raises(ValueError, match="variant: expected one of"):
        DigitRun("v3")
    with pytest.raises(ValueError, match=r"deform: expected names among \['conv1', 'conv2', 'conv3'\], got \['fc'\]"):
        DigitRun("v1", deform=("fc",))
    with pytest.raises(ValueError, match="steps: expected a positive int, got 0"):
        DigitRun(steps=0)
    with pytest.raises(ValueError, match="size: expected an int >= 8 divisible by 4"):
        DigitRun(size=18)


def test_the_key_is_every_field():
    a = DigitRun("v1", **TINY)
    assert a.key() == DigitRun("v1", **TINY).key()
    assert len({a.key(), DigitRun("v2", **TINY).key(), DigitRun("v1", **{**TINY, "seed": 1}).key(),
                DigitRun("v1", deform=("conv3",), **TINY).key()}) == 4


def test_runs_of_one_size_share_their_data():
    a, b = DigitRun("plain", **TINY).data(), DigitRun("v2", **{**TINY, "seed": 3}).data()
    assert a[0] is b[0] and a[1] is b[1]  # made once per process
    assert len(a[0]) == 64 and len(a[1]) == 32 and a[0].images.shape[-1] == 16
    assert not set(a[0].source) & set(a[1].source)  # lesson 05's fixed split


def test_lesson_sizes_follow_fast_mode(monkeypatch):
    from dcn_lessons import config

    monkeypatch.setattr(config, "FAST", True)
    assert (DigitRun.lesson("v1").width, DigitRun.lesson("v1").steps) == (8, 40)
    assert DigitRun.lesson("v1", steps=7).steps == 7
    monkeypatch.setattr(config, "FAST", False)
    assert DigitRun.lesson("v2", ("conv3",)) == DigitRun("v2", deform=("conv3",))


def test_trained_once_then_read_from_the_cache(tmp_path):
    run = DigitRun("v2", **TINY)
    first = train_digit_model(run, root=tmp_path)
    assert not first.from_cache and first.path is not None and first.path.parent == digit_model_cache(tmp_path)
    assert not first.model.training and len(first.history.loss) == 3
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no temporary file left
    again = train_digit_model(run, root=tmp_path)
    assert again.from_cache and again.path == first.path
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    assert again.history == first.history
    fresh = train_digit_model(run, cache=False)
    assert not fresh.from_cache and fresh.path is None
    for k, v in first.model.state_dict().items():  # fixed seeds: the same weights again
        assert torch.equal(v, fresh.model.state_dict()[k]), k


def test_a_broken_or_foreign_cache_file_is_replaced(tmp_path):
    run = DigitRun("v1", **TINY)
    path = train_digit_model(run, root=tmp_path).path
    path.write_bytes(b"not a torch file")
    redo = train_digit_model(run, root=tmp_path)
    assert not redo.from_cache and "unreadable" in redo.note
    assert train_digit_model(run, root=tmp_path).from_cache  # written again, whole
    other = DigitRun("v1", **{**TINY, "seed": 5})
    foreign = digit_model_cache(tmp_path) / f"v1-conv2-conv3-{other.key()}.pt"
    path.rename(foreign)  # a file under another run's name that holds this run's weights
    assert not train_digit_model(other, root=tmp_path).from_cache


def test_an_unwritable_data_root_still_trains(tmp_path):
    root = tmp_path / "a_file"
    root.write_text("the data root is a file: nothing can be written under it")
    got = train_digit_model(DigitRun("plain", **TINY), root=root)
    assert got.path is None and "not writable" in got.note and not got.from_cache
    assert len(got.history.loss) == 3


def test_scenes_are_deterministic_and_well_formed():
    a, b = digit_scenes(6, seed=1), digit_scenes(6, seed=1)
    assert isinstance(a, DigitScenes) and a.images.shape == (6, 1, 96, 96) and a.images.dtype == torch.float32
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, digit_scenes(6, seed=2).images)
    for i in range(len(a)):
        m, bx = a.masks[i], a.boxes[i]
        assert m.shape[1:] == (96, 96) and len(m) == len(bx) == len(a.labels[i]) == len(a.sides[i]) >= 1
        assert (m.sum(axis=0) <= 1).all(), "objects overlap"
        img = a.images[i, 0].numpy()
        assert (img[m.any(axis=0)] >= 0.5).all()
        for mask, (x1, y1, x2, y2) in zip(m, bx):
            ys, xs = np.nonzero(mask)
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        np.testing.assert_array_equal(a.areas(i), m.reshape(len(m), -1).sum(1))


def test_default_scenes_hold_every_coco_size():
    s = digit_scenes(30, seed=0)
    ranges = coco_area_ranges(96 * 96)
    buckets = {area_bucket(float(x), ranges) for i in range(len(s)) for x in s.areas(i)}
    assert buckets == {"small", "medium", "large"}


def test_object_and_background_units():
    s = digit_scenes(4, seed=2)
    frame = Frame.block(4)
    for i in range(len(s)):
        for j in range(len(s.masks[i])):
            y, x = s.object_unit(i, j, frame, (24, 24))
            cy, cx = frame.to_pixel(y, x)
            if s.masks[i][j].sum() > 40:  # an object larger than a unit's spacing has a unit centred on it
                assert s.masks[i][j][int(round(float(cy))), int(round(float(cx)))]
        u = s.background_unit(i, frame, (24, 24), distance=(6, 12))
        assert u is not None
        cy, cx = frame.to_pixel(*u)
        d = np.hypot(*(np.argwhere(s.masks[i].any(0)) - [float(cy), float(cx)]).T).min()
        assert 6 <= d <= 12
    empty = DigitScenes(torch.zeros(1, 1, 16, 16), [np.zeros((0, 16, 16), bool)], [np.zeros((0, 4))], [np.zeros(0)],
                        [np.zeros(0)])
    assert empty.background_unit(0, frame, (4, 4)) is None


@pytest.mark.parametrize("kw, match", [
    (dict(n=0), "n: expected a positive int"),
    (dict(size=8), "size: expected an int >= 16"),
    (dict(per_image=(3, 2)), "per_image: expected 1 <= min <= max"),
    (dict(side=(4, 20)), r"side: expected 8 <= min <= max <= size \(96\)"),
])
def test_scene_arguments_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        digit_scenes(**{"n": 1, **kw})
