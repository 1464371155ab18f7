"""dcn_lessons.analysis.warp: known warps, the offsets that undo them, and a deformable layer that learns them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcn_lessons.analysis import AffineField, ElasticField, Texture, fit_offsets_to_warp, true_offsets, warp
from dcn_lessons.ops import deform_conv2d


#: tiny tensors: one intra-op thread (the fixture in tests/conftest.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def texture():
    return Texture(8, 20, sigma=4.0, seed=0)


def test_texture_is_exact_between_pixels(texture):
    n = texture.size
    yy, xx = np.meshgrid(np.arange(float(n)), np.arange(float(n)), indexing="ij")
    torch.testing.assert_close(texture.sample(yy, xx), texture.images)
    imgs = texture.images[:, 0].numpy()
    assert np.allclose(imgs.mean(axis=(1, 2)), 0, atol=1e-12) and np.allclose(imgs.std(axis=(1, 2)), 1)
    # periodic and band-limited: a half-pixel shift computed by the FFT equals sampling at +0.5
    k = np.fft.fftfreq(n) * n
    shifted = np.fft.ifft2(np.fft.fft2(imgs) * np.exp(2j * np.pi * k[None, None, :] * 0.5 / n)).real
    np.testing.assert_allclose(texture.sample(yy, xx + 0.5)[:, 0].numpy(), shifted, atol=1e-10)


def test_integer_translation_of_a_texture_is_a_roll_and_of_a_tensor_a_shift(texture):
    j = warp(texture, AffineField.translation(2, -3))
    torch.testing.assert_close(j, torch.roll(texture.images, (2, -3), dims=(2, 3)))
    img = torch.arange(36.0).view(1, 1, 6, 6)
    out = warp(img, AffineField.translation(1, 2))
    expected = torch.zeros_like(img)
    expected[..., 1:, 2:] = img[..., :-1, :-2]
    torch.testing.assert_close(out, expected)


def test_fields_and_their_inverses():
    q = np.random.default_rng(0).uniform(0, 24, size=(2, 50))
    for fld in (AffineField.similarity(1.1, 15.0, (0.5, -1.0), (12, 12)), ElasticField(24, 2.0, 6.0, seed=3)):
        sy, sx = fld.inverse(q[0], q[1])
        uy, ux = fld(sy, sx)
        np.testing.assert_allclose(np.stack([sy + uy, sx + ux]), q, atol=1e-8)
    e = ElasticField(24, 1.5, 5.0, seed=1)
    yy, xx = np.meshgrid(np.arange(24.0), np.arange(24.0), indexing="ij")
    assert np.hypot(*e(yy, xx)).max() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="folds"):
        ElasticField(24, 12.0, 2.0, seed=0).inverse(yy, xx)
    with pytest.raises(ValueError, match="matrix"):
        AffineField(np.zeros((2, 2)))


def test_true_offsets_are_the_forward_displacement_at_each_kernel_point():
    m = np.array([[1.1, 0.2], [-0.1, 0.9]])
    fld = AffineField(m, (0.3, -0.4), (5.0, 6.0))
    off = true_offsets(fld, (10, 12))
    assert off.shape == (9, 2, 10, 12)
    for k, (i, j) in enumerate([(i, j) for i in range(3) for j in range(3)]):
        for y, x in [(0, 0), (4, 7), (9, 11)]:
            p = np.array([y - 1 + i, x - 1 + j], dtype=float)
            np.testing.assert_allclose(off[k, :, y, x], (m - np.eye(2)) @ (p - [5.0, 6.0]) + [0.3, -0.4])


def test_the_sign_the_true_offsets_undo_the_warp_and_their_negatives_do_not(texture):
    fld = AffineField.translation(1.3, -0.7)
    j = warp(texture, fld)
    w = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = F.conv2d(texture.images, w, padding=1)
    n = texture.size
    off = torch.from_numpy(true_offsets(fld, (n, n))).reshape(1, 18, n, n).expand(8, -1, -1, -1)

    def interior_error(o):
        return float(((deform_conv2d(j, o.contiguous(), w, padding=1) - target)[..., 4:-4, 4:-4] ** 2).mean())

    assert interior_error(off) < 0.02 * interior_error(-off)


def test_a_deformable_layer_recovers_a_pure_translation_to_within_a_tenth_of_a_pixel(texture):
    t = np.array([1.3, -0.7])
    fit = fit_offsets_to_warp(texture, AffineField.translation(*t), steps=200)
    assert fit.losses[-1] < 0.1 * fit.losses[0]
    assert np.linalg.norm(fit.median_offset - t) < 0.1
    assert fit.mean_error < 0.1
    assert fit.fraction_within(0.1) >= 0.9
    np.testing.assert_allclose(fit.truth, np.broadcast_to(t[None, :, None, None], fit.truth.shape))
    assert fit.valid.sum() >= 0.6 * texture.size ** 2


def test_fit_rejects_bad_arguments(texture):
    with pytest.raises(ValueError, match="kernel_size"):
        fit_offsets_to_warp(texture, AffineField(), kernel_size=2)
    with pytest.raises(ValueError, match="steps"):
        fit_offsets_to_warp(texture, AffineField(), steps=0)
    with pytest.raises(TypeError, match="displacement"):
        warp(texture, (1.0, 2.0))
