"""dcn_lessons.analysis: frames, stacked sampling locations (DCNv1 Fig. 5-6), RoI bins (Fig. 7) and effective
dilation (Table 2), each checked against a tier below (brute force, an independent formula, lesson 05's code)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dcn_lessons.analysis import (
    CATEGORIES,
    Frame,
    LayerGeometry,
    Level,
    dilation_by_object_size,
    effective_dilation,
    format_dilation_table,
    layer_level,
    model_levels,
    object_size_labels,
    receptive_field,
    roi_bin_locations,
    roi_pack_offsets,
    stacked_sampling_locations,
)
from dcn_lessons.geometry import constant_offset_field, transform_offsets
from dcn_lessons.ops import DeformRoIPoolPack, ModulatedDeformRoIPoolPack, deform_roi_pool
from dcn_lessons.reference.roi import bin_samples, roi_geometry
from dcn_lessons.training import DigitNet, feature_to_pixel, geometric_digits, make_model
from dcn_lessons.widgets.sampling import follow_unit, layer_samples

G3 = LayerGeometry.of(3, 1, 1, 1)


# ------------------------------------------------------------------------------------------------- frames
def test_block_frame_is_lesson_05s_feature_to_pixel():
    p = np.array([0.0, 1.0, 2.5, 7.0])
    for s in (1, 2, 4):
        y, x = Frame.block(s).to_pixel(p, p)
        np.testing.assert_allclose(y, feature_to_pixel(p, s))
        np.testing.assert_allclose(x, feature_to_pixel(p, s))
        back = Frame.block(s).from_pixel(y, x)
        np.testing.assert_allclose(back[0], p)


def test_frame_after_composes_window_operations():
    # ResNet stem: 7x7/2 pad 3, then 3x3/2 pad 1 max-pool: stride 4, unit u centred on pixel 4u
    stem = Frame().after(7, 2, 3).after(3, 2, 1)
    assert stem == Frame(4, 0)
    # a 2x2/2 pool summarises a block: the block frame
    assert Frame().after(2, 2, 0) == Frame.block(2)
    # a 'same' 3x3 conv keeps the frame, whatever its dilation
    assert Frame.block(2).after(3, 1, 2, 2) == Frame.block(2)
    assert Frame(2, 0.5).after(LayerGeometry.of(3, 2, 0)) == Frame(4, 2.5)
    with pytest.raises(ValueError, match="stride"):
        Frame(0)
    with pytest.raises(ValueError, match="kernel_size"):
        Frame().after(0)


def test_receptive_field_of_a_chain():
    assert receptive_field([G3] * 3, (10, 10)) == (7, 13, 7, 13)  # 7x7
    chain = [G3, LayerGeometry.of(3, 2, 1), LayerGeometry.of(3, 1, 2, 2)]
    # unit 5 reads rows [3, 7] of the dilated layer's input, [2*3-1, 2*7-1+2] = [5, 15] below the strided layer,
    # and [4, 16] of the image
    assert receptive_field(chain, (5, 5)) == (4, 16, 4, 16)
    assert receptive_field([G3] * 3, (0, 1), image_size=(8, 8)) == (0, 3, 0, 4)
    with pytest.raises(ValueError, match="layers"):
        receptive_field([], (0, 0))


# --------------------------------------------------------------------------------------- stacked sampling
def _plain_level(ho, wo, frame=Frame(), geometry=G3, mask=None):
    return Level(np.zeros((1, 9, 2, ho, wo)), mask, geometry, frame)


def test_three_plain_3x3_layers_give_729_points_on_the_7x7_grid():
    s = stacked_sampling_locations([_plain_level(12, 12)] * 3, (5, 6))
    assert [len(p) for p in s.points] == [9, 81, 729]
    np.testing.assert_allclose(s.centre, [5, 6])
    pts = s.points[-1]
    ys, xs = np.unique(pts[:, 0]), np.unique(pts[:, 1])
    np.testing.assert_array_equal(ys, np.arange(2, 9))
    np.testing.assert_array_equal(xs, np.arange(3, 10))
    # multiplicity of a point = number of paths: the 1-D counts (1, 3, 6, 7, 6, 3, 1) in each direction
    counts = {}
    for p in map(tuple, pts):
        counts[p] = counts.get(p, 0) + 1
    one_d = [1, 3, 6, 7, 6, 3, 1]
    for (y, x), c in counts.items():
        assert c == one_d[int(y) - 2] * one_d[int(x) - 3]
    np.testing.assert_allclose(s.weights[-1], 1.0)
    # the children of a point sit together: block k of level 2 is level 1's point k plus the regular pattern
    grid = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=float)
    np.testing.assert_allclose(s.points[1][9:18], s.points[0][1] + grid)


def test_nearest_mode_reproduces_lesson_05s_follow_unit():
    model = make_model("v2", width=2, seed=4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name in ("conv2", "conv3"):
            branch = getattr(model, name).conv_offset
            branch.weight.copy_(0.3 * torch.randn(branch.weight.shape, generator=g))
            branch.bias.copy_(0.5 * torch.randn(branch.bias.shape, generator=g))
    image = geometric_digits(1, size=16, seed=1).images[0]
    names = ("conv3", "conv2")
    levels = model_levels(model, image, names, {n: Frame.block(DigitNet.strides[n]) for n in names})
    ref = {n: layer_samples(model, n, image) for n in names}
    for unit in [(0, 0), (1, 2), (3, 3)]:
        ours = stacked_sampling_locations(levels, unit, interpolation="nearest")
        pts, w = follow_unit(ref, unit, names)
        np.testing.assert_allclose(ours.points[1], pts, atol=1e-9)
        np.testing.assert_allclose(ours.weights[1], w, atol=1e-12)
        pts1, w1 = follow_unit(ref, unit, names[:1])
        np.testing.assert_allclose(ours.points[0], pts1, atol=1e-9)
        # bilinear and nearest agree on the top level (an integer unit)
        np.testing.assert_allclose(stacked_sampling_locations(levels, unit).points[0], pts1, atol=1e-9)


def _linear_level(ho, wo, a, b, frame, geometry=G3):
    """Offsets Δ_k(u) = a_k + b_k * (uy + 2 ux): linear in the unit, so bilinear interpolation is exact."""
    uy, ux = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
    off = a[:, :, None, None] + b[:, :, None, None] * (uy + 2 * ux)[None, None]
    return Level(off[None], None, geometry, frame)


def test_bilinear_reads_a_linear_offset_field_exactly_through_a_pool_and_a_strided_dilated_layer():
    rng = np.random.default_rng(0)
    a1, b1 = 0.3 * rng.normal(size=(9, 2)), 0.03 * rng.normal(size=(9, 2))
    a2, b2 = rng.normal(size=(9, 2)), 0.05 * rng.normal(size=(9, 2))
    bottom_geo = LayerGeometry.of(3, 2, 2, 2)  # stride 2, dilation 2, 'same' padding
    top = _linear_level(6, 6, a1, b1, Frame.block(4))  # its input: 4 px per feature
    bottom = _linear_level(16, 16, a2, b2, Frame(1.0, 0.0), bottom_geo)  # output frame: stride 2, origin 0
    s = stacked_sampling_locations([top, bottom], (3, 3))
    grid = np.array([[i, j] for i in range(3) for j in range(3)], dtype=float)
    # independent evaluation: top positions, pixels, bottom units, bottom positions
    expected = []
    for k in range(9):
        q = np.array([3, 3]) - 1 + grid[k] + a1[k] + b1[k] * (3 + 2 * 3)
        p = 4 * q + 1.5
        u = p / 2.0  # bottom output frame: pixel = 2u
        assert np.all((u >= 0) & (u <= 15))
        for m in range(9):
            expected.append(2 * u - 2 + 2 * grid[m] + a2[m] + b2[m] * (u[0] + 2 * u[1]))
    np.testing.assert_allclose(s.points[1], np.array(expected), atol=1e-9)
    np.testing.assert_allclose(s.centre, [4 * 3 + 1.5, 4 * 3 + 1.5])


def test_points_outside_the_map_use_the_border_offsets_and_masks_multiply():
    off = np.zeros((1, 9, 2, 4, 4))
    off[0, :, 0, :, 0] = 0.5  # units of column 0 move their samples down by 0.5
    lv = Level(off, np.full((1, 9, 4, 4), 0.5), G3, Frame())
    s = stacked_sampling_locations([lv, lv], (0, 0))
    # level 1 of unit (0, 0) reaches column -1: clamped to column 0 (the border unit's offsets, 0.5 down)
    child = s.points[1][:9]  # children of the top-left point (-0.5, -1)
    grid = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=float)
    np.testing.assert_allclose(child, s.points[0][0] + grid + [0.5, 0.0])
    np.testing.assert_allclose(s.weights[1], 0.25)
    with pytest.raises(ValueError, match="unit"):
        stacked_sampling_locations([lv], (4, 0))
    with pytest.raises(ValueError, match="interpolation"):
        stacked_sampling_locations([lv], (0, 0), interpolation="cubic")
    with pytest.raises(ValueError, match="group"):
        stacked_sampling_locations([lv], (0, 0), group=1)


def test_layer_level_of_plain_and_deformable_layers():
    x = torch.randn(1, 2, 7, 7)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    lv = layer_level(conv, x, Frame())
    assert lv.offset.shape == (1, 9, 2, 4, 4) and lv.mask is None and not lv.offset.any()
    from dcn_lessons.ops import DeformConv2dPack
    d = DeformConv2dPack(2, 3, 3, stride=2, padding=1)
    with torch.no_grad():
        d.conv_offset.bias.copy_(torch.arange(18.0) / 10)
    lv = layer_level(d, x[0], Frame())
    np.testing.assert_allclose(lv.offset[0, :, :, 1, 2], (np.arange(18.0) / 10).reshape(9, 2), atol=1e-5)
    with pytest.raises(TypeError, match="layer"):
        layer_level(nn.ReLU(), x, Frame())


# -------------------------------------------------------------------------------------------------- RoI bins
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_roi_bins_tile_the_box_and_follow_the_reference_samples(scale):
    roi = (4.0, 8.0, 36.0, 24.0)  # x1, y1, x2, y2
    bins = roi_bin_locations(roi, None, 4, spatial_scale=scale, sampling_ratio=2)
    assert bins.boxes.shape == (4, 4, 4) and bins.samples.shape == (4, 4, 4, 2)
    np.testing.assert_allclose(bins.boxes[0, 0, :2], [8 - 0.5, 4 - 0.5])
    np.testing.assert_allclose(bins.boxes[-1, -1, 2:], [24 - 0.5, 36 - 0.5])
    np.testing.assert_allclose(bins.boxes[0, 1, 1], bins.boxes[0, 0, 3])  # adjacent bins share an edge
    geo = roi_geometry(np.array([0, *roi]), (4, 4), scale, 2, True)
    ref = np.array(list(bin_samples(geo, 1, 2, (4, 4))))
    np.testing.assert_allclose(bins.samples[1, 2], (ref + 0.5) / scale - 0.5)


def test_roi_bins_move_by_gamma_times_offset_times_size_and_pack_offsets_are_what_the_pack_uses():
    offset = np.zeros((2, 3, 3))
    offset[0, 1, 1], offset[1, 1, 1] = 0.5, -1.0  # x, y of the centre bin
    plain = roi_bin_locations((0, 0, 30, 60), None, 3, gamma=0.1)
    moved = roi_bin_locations((0, 0, 30, 60), offset, 3, gamma=0.1)
    np.testing.assert_allclose(moved.shift[1, 1], [0.1 * -1.0 * 60, 0.1 * 0.5 * 30])
    np.testing.assert_allclose(moved.boxes[1, 1], plain.boxes[1, 1] + np.tile(moved.shift[1, 1], 2))
    np.testing.assert_allclose(moved.boxes[0, 0], plain.boxes[0, 0])
    torch.manual_seed(0)
    feats = torch.randn(1, 2, 12, 12)
    rois = torch.tensor([[0.0, 1.0, 2.0, 9.0, 10.0]])
    for cls in (DeformRoIPoolPack, ModulatedDeformRoIPoolPack):
        pack = cls(3, 2, deform_fc_channels=8, sampling_ratio=2)
        with torch.no_grad():
            pack.offset_fc[-1].bias.copy_(torch.linspace(-1, 1, 18))
        off, mask = roi_pack_offsets(pack, feats, rois)
        np.testing.assert_allclose(off.reshape(-1).numpy(), np.linspace(-1, 1, 18), atol=1e-6)
        assert (mask is None) == (cls is DeformRoIPoolPack)
        expected = deform_roi_pool(feats, rois, off, 3, 1.0, 2, 0.1) * (1 if mask is None else mask)
        torch.testing.assert_close(pack(feats, rois), expected)
    with pytest.raises(ValueError, match="offset"):
        roi_bin_locations((0, 0, 4, 4), np.zeros((2, 2, 2)), 3)
    with pytest.raises(ValueError, match="roi"):
        roi_bin_locations((5, 0, 4, 4))


# ---------------------------------------------------------------------------------------- effective dilation
@pytest.mark.parametrize("d", [1, 2, 3])
def test_zero_offset_filter_of_dilation_d_has_effective_dilation_d(d):
    eff = effective_dilation(np.zeros((2, 18, 5, 6)), 3, d)
    assert eff.shape == (2, 1, 5, 6)
    np.testing.assert_allclose(eff, d)


def test_effective_dilation_of_scaled_and_rotated_kernels():
    scaled = constant_offset_field(transform_offsets(3, scale=1.5), 1, 2, 2)
    np.testing.assert_allclose(effective_dilation(scaled), 1.5)
    rotated = constant_offset_field(transform_offsets(3, rotation_deg=30.0), 1, 2, 2)
    np.testing.assert_allclose(effective_dilation(torch.from_numpy(rotated)), 1.0)
    # stretched: 6 row pairs 2 apart, 6 column pairs 0.5 apart -> mean 1.25 (aspect 4: rows x2, columns x0.5)
    stretched = constant_offset_field(transform_offsets(3, aspect=4.0), 1, 1, 1)
    np.testing.assert_allclose(effective_dilation(stretched), 1.25)
    np.testing.assert_allclose(effective_dilation(np.zeros((1, 10, 2, 2)), (1, 5)), 1.0)
    with pytest.raises(ValueError, match="kernel_size"):
        effective_dilation(np.zeros((1, 2, 2, 2)), 1)


def _ranges(small, medium):
    return {"all": [0, 1e10], "small": [0, small], "medium": [small, medium], "large": [medium, 1e10]}


def test_default_size_buckets_are_cocos_scaled_to_the_image():
    from dcn_lessons.detection.synthetic import coco_area_ranges

    a_s, a_l = coco_area_ranges(48 * 64)["small"][1], coco_area_ranges(48 * 64)["medium"][1]
    np.testing.assert_allclose([a_s, a_l], [32 ** 2 / 100, 96 ** 2 / 100])  # 48x64 is 1/100 of 480x640
    # boxes one pixel high whose area is on the small limit, just above it, and above the medium limit
    for area, expected in ((a_s, 1), (a_s + 0.5, 2), (a_l + 0.5, 3)):
        box = np.array([[0.0, 0.0, area, 1.0]])
        assert object_size_labels(np.array([[0.0, 0.0]]), (48, 64), boxes=box)[0] == expected
    assert object_size_labels(np.array([[5.0, 0.0]]), (48, 64), boxes=box)[0] == 0


def test_object_size_labels_from_boxes_and_masks():
    boxes = np.array([[0, 0, 4, 4], [10, 10, 20, 20], [0, 0, 40, 40]], dtype=float)  # areas 16, 100, 1600
    centres = np.array([[1, 1], [12, 15], [30, 30], [45, 45]], dtype=float)
    labels = object_size_labels(centres, (48, 48), boxes=boxes, area_ranges=_ranges(50, 500))
    np.testing.assert_array_equal(labels, [1, 2, 3, 0])  # the smallest object containing the centre wins
    masks = np.zeros((1, 48, 48), bool)
    masks[0, 5:9, 5:15] = True  # 40 pixels
    np.testing.assert_array_equal(object_size_labels(np.array([[6, 6], [20, 20]]), (48, 48), masks=masks,
                                                     area_ranges=_ranges(50, 500)), [1, 0])
    assert CATEGORIES[0] == "background"
    with pytest.raises(ValueError, match="centres"):
        object_size_labels(np.zeros((3, 3)), (8, 8))
    with pytest.raises(ValueError, match="masks"):
        object_size_labels(np.zeros((1, 2)), (8, 8), masks=np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError, match="area_ranges"):
        object_size_labels(np.zeros((1, 2)), (8, 8), boxes=boxes, area_ranges=_ranges(500, 50))


def test_dilation_by_object_size_groups_filters_by_their_centre():
    h = w = 16
    frame = Frame.block(2)  # the layer's input: 8x8 features, 2 px each
    off = np.zeros((18, 8, 8))
    wide = transform_offsets(3, scale=2.0).reshape(-1)
    off[:, 4:, 4:] = wide[:, None, None]  # units whose centre lies in the bottom-right quarter
    boxes = [np.array([[8, 8, 16, 16]], dtype=float)]  # area 64: 'large' with the limits (10, 50)
    stats = dilation_by_object_size([off], G3, frame, (h, w), boxes=boxes, area_ranges=_ranges(10, 50))
    assert stats["large"].count == 16 and stats["background"].count == 48
    np.testing.assert_allclose([stats["large"].mean, stats["large"].std], [2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(stats["background"].mean, 1.0)
    assert stats["small"].count == 0 and np.isnan(stats["small"].mean)
    table = format_dilation_table({"conv3": stats})
    assert "conv3" in table and "2.00 ± 0.00" in table
    with pytest.raises(ValueError, match="boxes"):
        dilation_by_object_size([off, off], G3, frame, (h, w), boxes=boxes)
