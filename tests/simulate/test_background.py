import numpy as np
import pytest

from emrestore.simulate.background import (
    ContrastDraw,
    ContrastParams,
    apply_contrast,
    draw_contrast,
    smooth_random_field,
    transform_signal,
)


def _signal(rng, kind):
    yy, xx = np.mgrid[0:64, 0:64]
    if kind == "peaks":
        y = np.zeros((64, 64))
        for cy, cx in rng.uniform(0, 64, (30, 2)):
            y += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        return y
    if kind == "flat":
        return 100.0 + 1e-3 * rng.standard_normal((64, 64))
    return -5.0 + rng.standard_normal((64, 64))  # negative mean


@pytest.mark.parametrize("kind", ["peaks", "flat", "negative"])
def test_ratio_constraint_and_normalisation(kind):
    for seed in range(40):
        rng = np.random.default_rng(seed)
        y = _signal(rng, kind)
        res = apply_contrast(y, draw_contrast(rng), rng)
        img = res.image.astype(float)
        assert img.max() == pytest.approx(1.0, abs=1e-6)
        r = img.std() / img.mean()
        assert 0.01 - 1e-6 <= r <= 0.35 + 1e-6
        assert res.info["ratio_after"] == pytest.approx(r, rel=1e-5)
        if kind != "negative" or res.info["d"] > 0:
            # a non-negative signal, or one lifted by the pedestal, stays a detector signal
            assert img.min() >= -1e-6


def test_pedestal_never_makes_pixels_negative():
    # a textured but weak-contrast signal whose target ratio could only be met by subtracting
    # more than its darkest pixel: the pedestal stops at zero instead
    rng = np.random.default_rng(3)
    y = 10.0 + rng.standard_normal((64, 64))
    draw = ContrastDraw(invert=False, beta=None, background="none", ratio_range=(0.2, 0.6),
                        ratio_target=0.6)
    res = apply_contrast(y, draw)
    assert res.image.min() >= 0.0
    assert res.info["d"] == pytest.approx(-y.min())
    assert 0.2 < res.info["ratio_after"] < 0.6


def test_clean_plus_background_is_final_and_linear_gain():
    for seed in range(40):
        rng = np.random.default_rng(seed)
        y = _signal(rng, "peaks")
        draw = draw_contrast(rng)
        res = apply_contrast(y, draw, rng)
        np.testing.assert_allclose(res.no_background + res.background, res.image, atol=1e-6)
        info = res.info
        if draw.beta is None:
            assert info["linear"]
            pred = info["signal_gain"] * y + info["signal_offset"] + res.background
            np.testing.assert_allclose(pred, res.image, atol=1e-5)
            assert (res.signal_gain < 0) == draw.invert
        else:
            assert not info["linear"] and info["signal_gain"] is None
            assert np.isnan(res.signal_gain)
        # the same signal transform applied separately reproduces the no-background image
        np.testing.assert_allclose(transform_signal(y, info), res.no_background, atol=1e-5)


def test_background_shapes():
    y = np.ones((50, 60))
    y[25, 30] = 3.0
    plane = ContrastDraw(background="plane", background_height_fraction=0.4, plane_floor=0.2,
                         plane_angle_rad=0.0, ratio_range=(0.0, 1e9))
    res = apply_contrast(y, plane)
    bg = res.background / res.info["scale"]
    assert bg.max() == pytest.approx(0.4 * 3.0) and bg.min() == pytest.approx(0.2 * 0.4 * 3.0)
    assert np.allclose(np.diff(bg, axis=0), 0) and np.all(np.diff(bg, axis=1) > 0)
    gauss = ContrastDraw(background="gaussian", background_height_fraction=0.5,
                         gaussian_centre=(0.5, 0.5), gaussian_sigma_fraction=0.3,
                         ratio_range=(0.0, 1e9))
    bg = apply_contrast(y, gauss).background
    assert np.unravel_index(np.argmax(bg), bg.shape) in {(24, 29), (24, 30), (25, 29), (25, 30)}
    none = apply_contrast(y, ContrastDraw(ratio_range=(0.0, 1e9)))
    assert not none.background.any()


def test_inversion_and_power():
    y = np.linspace(0.0, 4.0, 100).reshape(10, 10)
    res = apply_contrast(y, ContrastDraw(invert=True, ratio_range=(0.0, 1e9)))
    np.testing.assert_allclose(res.image, (4.0 - y) / 4.0, atol=1e-6)
    res = apply_contrast(y, ContrastDraw(beta=0.5, ratio_range=(0.0, 1e9)))
    np.testing.assert_allclose(res.image, np.sqrt(y) / 2.0, atol=1e-6)


def test_lowfreq_pattern_and_determinism():
    p = ContrastParams(lowfreq_probability=1.0)
    y = _signal(np.random.default_rng(0), "peaks")
    a = apply_contrast(y, draw_contrast(np.random.default_rng(1), p), np.random.default_rng(2))
    b = apply_contrast(y, draw_contrast(np.random.default_rng(1), p), np.random.default_rng(2))
    assert a.image.tobytes() == b.image.tobytes() and a.info["lowfreq"]
    f = smooth_random_field(np.random.default_rng(0), (64, 64), 10.0)
    assert f.min() == 0.0 and f.max() == 1.0
    # smooth: neighbouring pixels differ far less than the full range
    assert np.abs(np.diff(f, axis=1)).max() < 0.1


def test_draw_contrast_frequencies():
    draws = [draw_contrast(np.random.default_rng(s)) for s in range(400)]
    assert 0.4 < np.mean([d.invert for d in draws]) < 0.6
    assert 0.4 < np.mean([d.beta is not None for d in draws]) < 0.6
    assert 0.4 < np.mean([d.background == "plane" for d in draws]) < 0.6
    assert all(0.5 <= d.beta <= 1.5 for d in draws if d.beta is not None)
    assert all(0.0 <= d.background_height_fraction <= 0.5 for d in draws)
    assert draws[0].to_dict()["ratio_range"] == [0.01, 0.35]
