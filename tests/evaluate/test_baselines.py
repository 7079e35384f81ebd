"""Classic restorations: units kept, noise reduced, Anscombe inverse unbiased, gain estimated."""

import numpy as np
import pytest
from scipy import stats

from emrestore.errors import InputError
from emrestore.evaluate import baselines as B
from emrestore.evaluate.metrics import psnr


def _lattice(shape=(96, 96), spacing=8.0, sigma=1.6, peak=20.0, background=2.0):
    """Expected counts of a square lattice of Gaussian columns."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    img = np.full(shape, background)
    for cy in np.arange(spacing / 2, shape[0], spacing):
        for cx in np.arange(spacing / 2, shape[1], spacing):
            img += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return img


@pytest.fixture(scope="module")
def noisy():
    clean = _lattice()
    rng = np.random.default_rng(3)
    return rng.poisson(clean).astype(np.float32), clean


def test_inverse_anscombe_is_unbiased_for_poisson_counts():
    # E[anscombe(X)] for X ~ Poisson(lam), computed exactly from the pmf, maps back to lam
    for lam in (0.5, 1.0, 3.0, 10.0, 50.0):
        k = np.arange(0, int(lam + 20 * np.sqrt(lam) + 30))
        expected_d = float(np.sum(stats.poisson.pmf(k, lam) * B.anscombe(k)))
        back = float(B.inverse_anscombe_unbiased(expected_d))
        assert back == pytest.approx(lam, rel=0.02, abs=0.02)
    # the naive algebraic inverse is biased by about 1/4 count: the exact one is not
    assert float(B.inverse_anscombe_unbiased(B.anscombe(0.0))) == pytest.approx(0.0, abs=1e-9)
    assert float(B.inverse_anscombe_unbiased(0.1)) == 0.0  # below zero counts: clamped


def test_filters_keep_shape_units_and_reduce_error(noisy):
    x, clean = noisy
    raw_psnr = psnr(clean, x)
    for name, out in (("gaussian", B.gaussian_filter(x, 1.0)), ("median", B.median_filter(x, 3)),
                      ("wiener", B.wiener_filter(x, 5)), ("nlm", B.nlm_filter(x))):
        assert out.shape == x.shape and out.dtype == np.float32, name
        assert psnr(clean, out) > raw_psnr + 1.0, name
        # counts in, counts out: the mean intensity is kept (median a little lower: skewed noise)
        assert float(out.mean()) == pytest.approx(float(x.mean()), rel=0.12), name


def test_gaussian_tuning_picks_wider_filters_for_noisier_images():
    clean = _lattice()
    rng = np.random.default_rng(0)
    low = [(rng.poisson(clean * 0.05).astype(np.float32) / 0.05, clean) for _ in range(2)]
    high = [(rng.poisson(clean * 20).astype(np.float32) / 20, clean) for _ in range(2)]
    s_low, scores = B.tune_gaussian_sigma(low)
    s_high, _ = B.tune_gaussian_sigma(high)
    assert s_low > s_high
    assert scores[s_low] == max(scores.values())
    with pytest.raises(InputError):
        B.tune_gaussian_sigma([])


def test_gain_and_offset_are_recovered_from_an_analog_image():
    clean = _lattice(shape=(128, 128), peak=30.0, background=5.0)
    rng = np.random.default_rng(1)
    gain, offset = 18.0, 1200.0
    analog = (rng.poisson(clean) * gain + offset).astype(np.float32)
    g, o = B.estimate_gain_offset(analog)
    assert g == pytest.approx(gain, rel=0.1)
    assert o == pytest.approx(offset, abs=0.15 * gain * clean.mean())
    g, o = B.estimate_gain_offset(rng.poisson(clean).astype(np.float32))
    assert g == pytest.approx(1.0, rel=0.1)
    assert o == pytest.approx(0.0, abs=1.0)


def test_sparse_counts_still_get_filtered():
    # most pixels 0: the robust noise estimate is 0, the fallback is not
    rng = np.random.default_rng(5)
    x = rng.poisson(_lattice(peak=1.0, background=0.05)).astype(np.float32)
    assert not np.array_equal(B.wiener_filter(x), x)
    assert not np.array_equal(B.nlm_filter(x), x)


@pytest.mark.skipif(not B.bm3d_available(), reason="optional package bm3d not installed")
def test_bm3d_on_anscombe_counts_beats_raw_and_keeps_units(noisy):
    x, clean = noisy
    gain, offset = 10.0, 500.0
    analog = x * gain + offset
    out = B.bm3d_filter(analog, gain=gain, offset=offset)
    assert out.shape == x.shape and out.dtype == np.float32
    ref = clean * gain + offset
    assert psnr(ref, out) > psnr(ref, analog) + 3.0
    assert float(out.mean()) == pytest.approx(float(ref.mean()), rel=0.03)
    # with the calibration estimated from the image the result is still a denoised image
    est = B.bm3d_filter(analog)
    assert psnr(ref, est) > psnr(ref, analog) + 2.0


def test_bad_parameters_are_refused(noisy):
    x, _ = noisy
    with pytest.raises(InputError):
        B.gaussian_filter(x, -1.0)
    with pytest.raises(InputError):
        B.median_filter(x, 0)
    with pytest.raises(InputError):
        B.bm3d_filter(x, gain=0.0, offset=0.0) if B.bm3d_available() else B.median_filter(x, 0)
