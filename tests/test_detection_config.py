"""The detector's TOML configs (dcn_lessons.detection.config): the shipped files, what each one changes, and every
kind of bad file refused with the file and the key named."""
from __future__ import annotations

import dataclasses

import pytest

from dcn_lessons.detection.config import (
    CONFIG_DIR,
    ConfigError,
    DetectorConfig,
    available_configs,
    config_from_dict,
    config_to_dict,
    load_config,
)

NAMES = ["regular", "dcnv1", "dcnv2", "dcnv2_mimic"]


def test_the_shipped_configs_and_what_sets_them_apart():
    assert available_configs() == sorted(f"coco/{n}" for n in NAMES) + sorted(NAMES)
    cfgs = {n: load_config(n) for n in available_configs()}
    assert all(isinstance(c, DetectorConfig) and c.name == n for n, c in cfgs.items())
    parts = {n: (cfgs[n].backbone.recipe, cfgs[n].roi_head.pool, cfgs[n].mimic.enabled) for n in NAMES}
    assert parts == {"regular": ("none", "align", False), "dcnv1": ("dconv@c5", "dpool", False),
                     "dcnv2": ("mdconv@c3-c5", "mdpool", False), "dcnv2_mimic": ("mdconv@c3-c5", "mdpool", True)}
    for n in NAMES:  # the COCO variant is the same network at the papers' size
        small, big = cfgs[n], cfgs[f"coco/{n}"]
        assert (big.backbone.recipe, big.roi_head.pool, big.mimic.enabled) == parts[n]
        assert big.input.test_size == 1000 and big.rpn.nms_iou == 0.7 and big.backbone.norm == "frozen_bn"
        assert (big.solver.lr, big.solver.images_per_batch, big.solver.momentum, big.solver.weight_decay) == \
            (0.02, 16, 0.9, 1e-4)
        assert big.solver.steps == pytest.approx((2 / 3, 8 / 9))
        assert small.input.test_size == 128 and small.backbone.width < 1
        # everything outside [input], [backbone], [rpn], [roi_head], [mimic], [solver] sizes is shared
        assert small.mimic.mimic_weight == big.mimic.mimic_weight == 0.1 == big.mimic.cls_weight
        assert big.mimic.rois_per_image == 32 and big.mimic.crop_size == 224 and big.mimic.regions == "fg"
    assert cfgs["dcnv1"].solver.offset_lr_mult == 1.0 and cfgs["dcnv2"].solver.offset_lr_mult == 0.1


def test_round_trip_through_a_dict():
    cfg = load_config("dcnv2_mimic")
    d = config_to_dict(cfg)
    assert isinstance(d["rpn"]["anchor_sizes"], list)
    assert config_from_dict(d) == cfg
    d["roi_head"]["pool"] = "max"
    with pytest.raises(ConfigError, match=r"checkpoint: \[roi_head\] pool = 'max': expected one of"):
        config_from_dict(d, source="checkpoint")


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = (CONFIG_DIR / "regular").as_posix()


@pytest.mark.parametrize("body, pattern", [
    ("[rpn]\nanchor_size = [8]\n", r"bad\.toml: unknown key \[rpn\] anchor_size; expected one of \['anchor_sizes'"),
    ("[rnp]\nchannels = 8\n", r"bad\.toml: unknown key 'rnp'"),
    ("[rpn]\nchannels = 8.5\n", r"bad\.toml: \[rpn\] channels: expected an int, got 8\.5"),
    ("[mimic]\nenabled = 1\n", r"bad\.toml: \[mimic\] enabled: expected true or false, got 1"),
    ("[rpn]\nanchor_sizes = 8\n", r"bad\.toml: \[rpn\] anchor_sizes: expected a list of numbers, got 8"),
    ("[rpn]\naspect_ratios = [1, 'x']\n", r"\[rpn\] aspect_ratios: expected a list of numbers"),
    ("[roi_head]\npool = 'dcn'\n", r"bad\.toml: \[roi_head\] pool = 'dcn': expected one of \('align', 'dpool', 'mdpool'\)"),
    ("[backbone]\nrecipe = 'dconv@c7'\n", r"bad\.toml: \[backbone\] recipe = 'dconv@c7': expected 'none' or KIND@WHERE"),
    ("[rpn]\nfg_iou = 1.5\n", r"\[rpn\] fg_iou = 1\.5: expected a number in \[0, 1\]"),
    ("[rpn]\npost_nms_test = 9999\n", r"\[rpn\] post_nms_test = 9999: expected <= pre_nms_test"),
    ("[mimic]\nstart = 1\n", r"\[mimic\] start = 1\.0: expected a fraction of the training in \[0, 1\)"),
    ("[solver]\nsteps = [0.9, 0.5]\n", r"\[solver\] steps = \(0\.9, 0\.5\): expected increasing fractions"),
    ("num_classes = 0\n", r"bad\.toml: num_classes = 0: expected an int >= 1"),
    ("rpn = 3\n", r"bad\.toml: rpn: expected a table \[rpn\]"),
])
def test_bad_values_name_the_file_and_the_key(tmp_path, body, pattern):
    head, sep, tables = body.partition("[")
    text = f'extends = "{BASE}"\n{head}' + (sep + tables if sep else "")
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, "bad.toml", text))


def test_a_bad_value_in_a_parent_names_the_parent(tmp_path):
    write(tmp_path, "parent.toml", f'extends = "{BASE}"\n[rpn]\nchannels = "wide"\n')
    child = write(tmp_path, "child.toml", 'extends = "parent"\nname = "child"\n')
    with pytest.raises(ConfigError, match=r"parent\.toml: \[rpn\] channels: expected an int"):
        load_config(child)


def test_missing_keys_bad_files_and_names(tmp_path):
    full = (CONFIG_DIR / "_cpu.toml").read_text()
    no_key = full.replace("nms_iou = 0.5\n", "")
    assert no_key != full
    with pytest.raises(ConfigError, match=r"missing\.toml: missing key \[roi_head\] nms_iou"):
        load_config(write(tmp_path, "missing.toml", no_key))
    with pytest.raises(ConfigError, match=r"missing\.toml: missing section \[mimic\]"):
        load_config(write(tmp_path, "missing.toml", full.split("[mimic]")[0]))
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(write(tmp_path, "broken.toml", "[rpn\nchannels = 3"))
    write(tmp_path, "a.toml", 'extends = "b"\n')
    write(tmp_path, "b.toml", 'extends = "a"\n')
    with pytest.raises(ConfigError, match=r"extends itself through a\.toml -> b\.toml -> a\.toml"):
        load_config(tmp_path / "a.toml")
    with pytest.raises(ConfigError, match=r"config file .*nowhere\.toml not found"):
        load_config(write(tmp_path, "lost.toml", 'extends = "nowhere"\n'))
    with pytest.raises(ConfigError, match=r"extends: expected a config name or a list of names"):
        load_config(write(tmp_path, "ext.toml", "extends = 3\n"))
    with pytest.raises(ConfigError, match=r"config: unknown name 'dcnv3'; expected one of"):
        load_config("dcnv3")


def test_a_user_config_overrides_only_what_it_says(tmp_path):
    p = write(tmp_path, "mine.toml", f'extends = "{(CONFIG_DIR / "dcnv2_mimic").as_posix()}"\nname = "mine"\n'
                                     '[mimic]\nregions = "fg_bg"\nrois_per_image = 4\n')
    mine, base = load_config(p), load_config("dcnv2_mimic")
    assert mine.mimic == dataclasses.replace(base.mimic, regions="fg_bg", rois_per_image=4)
    assert mine.rpn == base.rpn and mine.name == "mine"
