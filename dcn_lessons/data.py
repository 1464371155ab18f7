"""Small, bundled data the lessons use: photos from scikit-image, digits from scikit-learn.

Nothing here downloads anything: scikit-image ships a few photos inside the package and
scikit-learn ships the 8x8 handwritten digits. Larger, generated data sets live under
``datasets/`` (see the recipes there).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: The photos that scikit-image ships inside its wheel (no download).
PHOTOS = ("camera", "astronaut", "chelsea", "coffee", "rocket")

#: Every bundled scikit-image picture that makes useful clutter behind the capstone's synthetic objects
#: (:mod:`dcn_lessons.detection.synthetic`): :data:`PHOTOS` plus textures (brick, grass, gravel), scientific
#: images (coins, moon, hubble_deep_field, immunohistochemistry, retina, cell) and printed text (page, text),
#: whose strokes make digit-like distractors. All ship inside scikit-image's wheel; :func:`photo` loads any.
CLUTTER_PHOTOS = PHOTOS + (
    "brick", "grass", "gravel", "coins", "moon", "hubble_deep_field", "immunohistochemistry", "retina", "cell",
    "page", "text",
)

#: Default on-disk root for generated data sets (``datasets/`` at the repository root),
#: overridable with the environment variable ``DCN_LESSONS_DATA``.
def data_root() -> Path:
    import os

    env = os.environ.get("DCN_LESSONS_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "datasets"


def photo(name: str = "camera", size: int | None = 128, gray: bool = True) -> np.ndarray:
    """A bundled scikit-image photo as float64 in [0, 1].

    Args:
        name: one of :data:`PHOTOS` or :data:`CLUTTER_PHOTOS`.
        size: the shorter side after down-sampling by block averaging (``None`` keeps the original).
        gray: convert RGB to luminance (ITU-R BT.601 weights).

    Returns:
        ``[H, W]`` when ``gray`` or when the picture has no colour (camera, the textures, ...), else
        ``[H, W, 3]``; float64 in [0, 1].
    """
    if name not in CLUTTER_PHOTOS:
        raise ValueError(f"name: expected one of {CLUTTER_PHOTOS}, got {name!r}")
    if size is not None and (not isinstance(size, int) or size < 8):
        raise ValueError(f"size: expected an int >= 8 or None, got {size!r}")
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), dtype=np.float64) / 255.0
    if gray and img.ndim == 3:
        img = img[..., :3] @ np.array([0.299, 0.587, 0.114])
    if size is not None:
        factor = max(1, min(img.shape[:2]) // size)
        h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
        img = img[:h, :w]
        img = img.reshape(h // factor, factor, w // factor, factor, *img.shape[2:]).mean(axis=(1, 3))
    return img


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits: images ``[1797, 8, 8]`` in [0, 1] and labels ``[1797]``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float64) / 16.0, d.target.astype(np.int64)


#: Fraction of the digits held out for testing by :func:`digit_split`.
DIGIT_TEST_FRACTION = 0.3


def digit_split(n_digits: int, split: str) -> np.ndarray:
    """Sorted indices of the ``"train"`` (70 %) or ``"test"`` (30 %) part of a fixed split of ``n_digits`` digits.

    The permutation is seeded once for all (seed 12345), whatever the caller's seed, so no digit is ever in
    both parts: lesson 05 (``dcn_lessons.training``) trains and tests on it, and the capstone's synthetic set
    draws its train split from the first part and its val and test splits from the second.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    perm = np.random.default_rng(12345).permutation(n_digits)
    n_test = int(round(DIGIT_TEST_FRACTION * n_digits))
    return np.sort(perm[n_test:] if split == "train" else perm[:n_test])
