"""dcn_lessons.analysis.draw: every helper draws what an instrument returns on a plain Agg figure."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from dcn_lessons.analysis import (
    AffineField,
    Frame,
    LayerGeometry,
    Level,
    Texture,
    effective_receptive_field,
    effective_sampling_locations,
    roi_bin_locations,
    saliency_region,
    stacked_sampling_locations,
    true_offsets,
)
from dcn_lessons.analysis.draw import (
    draw_heatmap,
    draw_image,
    draw_offset_field,
    draw_region,
    draw_roi_bins,
    draw_stacked,
    draw_weighted_points,
)


def test_every_helper_draws_and_returns_its_artists():
    torch.manual_seed(0)
    fig = Figure(figsize=(8, 2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 6)
    image = torch.rand(1, 12, 12)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1))  # no dead units
    assert draw_image(axes[0], image).get_array().shape == (12, 12)
    lv = Level(np.zeros((1, 9, 2, 12, 12)), None, LayerGeometry.of(3, 1, 1), Frame())
    dots, centre = draw_stacked(axes[0], stacked_sampling_locations([lv, lv], (6, 6)))
    assert len(dots.get_offsets()) == 81
    es = effective_sampling_locations(model, image, (6, 6), "0", Frame())
    pts = draw_weighted_points(axes[1], es.points, es.weights)
    assert 0 < len(pts.get_offsets()) <= 81
    bins = roi_bin_locations((1, 1, 10, 9), None, 3)
    assert len(draw_roi_bins(axes[2], bins)) == 10  # 9 rectangles and the sample points
    assert len(draw_roi_bins(axes[2], bins, np.arange(9.0).reshape(3, 3), samples=False)) == 9
    erf = effective_receptive_field(model, image, (6, 6))
    assert draw_heatmap(axes[3], erf, image).get_array().max() == 1.0
    region = saliency_region(model, image, (6, 6), centre=(6, 6))
    shown = draw_region(axes[4], image, region).get_array()
    assert np.allclose(shown[region.mask], draw_image(axes[4], image).get_array()[region.mask])
    tex = Texture(1, 12, 3.0)
    truth = true_offsets(AffineField.similarity(1.1, 10, centre=(6, 6)), (12, 12))
    arrows = draw_offset_field(axes[5], truth + 0.1, truth, step=3)
    assert len(arrows) == 2 and len(arrows[0].U) == 16
    assert tex.images.shape == (1, 1, 12, 12)
    fig.savefig(__import__("io").BytesIO(), format="png")
