"""The papers' instruments for looking inside deformable networks (lessons 07-08).

* :mod:`~dcn_lessons.analysis.frames` -- :class:`Frame`, where a feature lies in the image; the theoretical
  :func:`receptive_field` of a chain of layers.
* :mod:`~dcn_lessons.analysis.sampling` -- sampling locations of stacked deformable layers for one unit
  (DCNv1 Fig. 5-6, 9^3 = 729 points for three 3x3 layers) and the bins of deformable RoI pooling (Fig. 7).
* :mod:`~dcn_lessons.analysis.dilation` -- effective dilation by object size (DCNv1 Table 2).
* :mod:`~dcn_lessons.analysis.modalities` -- DCNv2 §2.1's three views of one node: effective receptive field,
  effective sampling / bin locations, error-bounded saliency region.
* :mod:`~dcn_lessons.analysis.warp` -- offsets that learn a known geometry: warp images with a known field, fit
  one deformable layer, compare its offsets with the true displacement in pixels.
* :mod:`~dcn_lessons.analysis.draw` -- matplotlib helpers that draw what the instruments return.

Every function returns NumPy arrays (or tensors for images) that a lesson can draw; coordinates in the image are
``imshow``'s (row, column), pixel centres at integers.
"""
from dcn_lessons.analysis.dilation import (
    CATEGORIES,
    DilationStats,
    dilation_by_object_size,
    effective_dilation,
    format_dilation_table,
    object_size_labels,
)
from dcn_lessons.analysis.frames import Frame, LayerGeometry, receptive_field
from dcn_lessons.analysis.modalities import (
    EffectiveSamples,
    Node,
    SaliencyRegion,
    effective_bin_locations,
    effective_receptive_field,
    effective_sampling_locations,
    feature_map,
    node_response,
    saliency_region,
)
from dcn_lessons.analysis.sampling import (
    Level,
    RoIBins,
    StackedSamples,
    layer_level,
    level_from_samples,
    model_levels,
    roi_bin_locations,
    roi_pack_offsets,
    stacked_sampling_locations,
)
from dcn_lessons.analysis.warp import (
    AffineField,
    DisplacementField,
    ElasticField,
    Texture,
    WarpFit,
    fit_offsets_to_warp,
    true_offsets,
    warp,
)

__all__ = [
    "AffineField",
    "CATEGORIES",
    "DilationStats",
    "DisplacementField",
    "EffectiveSamples",
    "ElasticField",
    "Frame",
    "LayerGeometry",
    "Level",
    "Node",
    "RoIBins",
    "SaliencyRegion",
    "StackedSamples",
    "Texture",
    "WarpFit",
    "dilation_by_object_size",
    "effective_bin_locations",
    "effective_dilation",
    "effective_receptive_field",
    "effective_sampling_locations",
    "feature_map",
    "fit_offsets_to_warp",
    "format_dilation_table",
    "layer_level",
    "level_from_samples",
    "model_levels",
    "node_response",
    "object_size_labels",
    "receptive_field",
    "roi_bin_locations",
    "roi_pack_offsets",
    "saliency_region",
    "stacked_sampling_locations",
    "true_offsets",
    "warp",
]
