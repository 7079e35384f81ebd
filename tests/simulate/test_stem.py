import json
import math

import numpy as np
import pytest

from emrestore.errors import InputError
from emrestore.simulate import stem
from emrestore.simulate.stem import (
    FastScanResponse,
    StemDistortion,
    StemDistortionParams,
)


def _off(shape=(64, 64), **kw) -> StemDistortion:
    """A distortion with every effect off (counting detector) unless overridden."""
    base = dict(modality="stem", shape=shape, pixel_size_A=0.1, geometry_seed=1,
                detector="counting")
    base.update(kw)
    return StemDistortion(**base)


def _blobs(shape, centres, sigma=1.5):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    out = np.zeros(shape)
    for cy, cx in centres:
        out += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return out


def _centroid(image, cy, cx, r=6):
    y0, x0 = int(np.rint(cy)) - r, int(np.rint(cx)) - r
    win = image[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1].astype(float)
    yy, xx = np.mgrid[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
    return (win * yy).sum() / win.sum(), (win * xx).sum() / win.sum()


# --- detector statistics ----------------------------------------------------------------------

def test_poisson_mean_equals_variance_on_a_flat_image():
    lam = np.full((512, 512), 7.3, dtype=np.float32)
    counts = stem.distort_stem(lam, _off((512, 512)), np.random.default_rng(0))
    assert counts.mean() == pytest.approx(7.3, rel=0.02)
    assert counts.var() == pytest.approx(counts.mean(), rel=0.02)
    assert np.all(counts == np.round(counts)) and counts.min() >= 0


def test_pmt_noise_adds_gain_spread_and_read_noise_in_variance():
    counts = np.full((400, 400), 20.0, dtype=np.float32)
    out = stem.pmt_noise(counts, np.random.default_rng(1), gain_spread=0.3, read_noise_e=0.5)
    assert out.mean() == pytest.approx(20.0, abs=0.02)
    assert out.var() == pytest.approx(0.3 ** 2 * 20 + 0.5 ** 2, rel=0.03)


def test_pmt_gain_spread_follows_eq_44():
    # sqrt((1 - η + 1/(δ-1)) / (m_c η) + δ_c²/m_c²) with m_c=100, η=0.2, δ=5, δ_c²=100.
    assert stem.pmt_gain_spread(100, 0.2, 5.0) == pytest.approx(math.sqrt(1.05 / 20 + 0.01))
    with pytest.raises(InputError):
        stem.pmt_gain_spread(100, 0.2, 1.0)


def test_analog_output_shares_units_with_to_detector_units():
    d = _off((256, 256), detector="analog", adc_gain_adu_per_e=25.0, adc_offset_adu=33000.0,
             pmt_gain_spread=0.25, read_noise_e=0.3,
             fast_scan=FastScanResponse(alpha=3.0, decay_px=1.0, period_px=20.0, phase_rad=1.5))
    lam = np.full((256, 256), 12.0, dtype=np.float32)
    out = stem.distort_stem(lam, d, np.random.default_rng(2))
    clean = stem.to_detector_units(lam, d)
    assert clean[0, 0] == pytest.approx(12.0 * 25.0 + 33000.0)
    assert out.mean() == pytest.approx(clean.mean(), abs=1.0)       # ~0.04 e of 12 e
    assert np.all(out == np.round(out)) and out.max() <= 2 ** 16 - 1


# --- scan geometry ----------------------------------------------------------------------------

@pytest.mark.parametrize("phi", [0.0, 0.3, 0.6, 0.7])
def test_ar1_lag1_autocorrelation_and_stationary_width(phi):
    series = stem.ar1_series(20000, phi, 0.5, np.random.default_rng(3))
    lag1 = np.corrcoef(series[:-1], series[1:])[0, 1]
    assert abs(lag1 - phi) < 0.05
    assert series.std() == pytest.approx(0.5 / math.sqrt(1 - phi ** 2), rel=0.05)


def test_ar1_rejects_nonstationary_phi():
    with pytest.raises(InputError):
        stem.ar1_series(10, 1.0, 0.5, np.random.default_rng(0))


def test_line_jitter_is_sinusoidally_modulated():
    n, period = 4000, 20.0
    series = stem.line_jitter(n, 1.0, period, 0.0, np.random.default_rng(4))
    # Lines where the modulation sin(2π i/P) vanishes carry no jitter.
    assert np.all(series[:: int(period / 2)] == pytest.approx(0.0, abs=1e-9))
    envelope = np.abs(np.sin(2 * np.pi * np.arange(n) / period))
    assert np.std(series[envelope > 0.9]) == pytest.approx(1.0, rel=0.1)


def test_linear_drift_is_zero_at_the_middle_line():
    drift = stem.linear_drift(101, 0.02)
    assert drift[50] == 0.0 and drift[100] == pytest.approx(1.0) and drift[0] == pytest.approx(-1)


@pytest.mark.parametrize("dx, dy", [(2.0, 0.0), (0.0, -3.0), (1.37, 0.0), (0.0, 0.62),
                                    (-0.8, 1.4)])
def test_scan_jitter_moves_features_by_minus_the_displacement(dx, dy):
    # Output pixel (i, j) records (i + dy, j + dx): a feature appears shifted by (-dy, -dx).
    image = _blobs((64, 64), [(32.0, 32.0)])
    out = stem.scan_jitter(image, np.full(64, dx), np.full(64, dy))
    cy, cx = _centroid(out, 32 - dy, 32 - dx)
    assert cy == pytest.approx(32 - dy, abs=0.03) and cx == pytest.approx(32 - dx, abs=0.03)


def test_scan_jitter_with_margin_crops_the_centre_and_integer_shift_is_exact():
    rng = np.random.default_rng(5)
    big = rng.random((80, 90)).astype(np.float32)
    out = stem.scan_jitter(big, np.zeros(60), np.zeros(60), (60, 70))
    np.testing.assert_array_equal(out, big[10:70, 10:80])
    out = stem.scan_jitter(big, np.full(60, 3.0), np.full(60, -2.0), (60, 70))
    np.testing.assert_allclose(out, big[8:68, 13:83], atol=1e-6)


def test_scan_jitter_per_pixel_and_per_line_paths_agree():
    rng = np.random.default_rng(6)
    img = rng.random((50, 50)).astype(np.float32)
    dx = rng.normal(size=40)
    dy = rng.normal(size=40)
    a = stem.scan_jitter(img, dx, dy, (40, 40))
    b = stem.scan_jitter(img, np.repeat(dx[:, None], 40, axis=1), dy, (40, 40))
    np.testing.assert_allclose(a, b, atol=2e-3)     # per-pixel path rounds to 1/2048 px


def test_distorted_coordinates_predict_where_atoms_are_recorded():
    shape = (128, 128)
    d = _off(shape, jitter_kind="xy", jitter_sigma_x_px=0.25, jitter_phi_x=0.7,
             jitter_sigma_y_px=0.1, jitter_phi_y=0.5, drift_x_px_per_line=0.01,
             drift_y_px_per_line=0.008, geometry_seed=11)
    m = stem.margin_px(d)
    atoms = np.array([(y, x) for y in range(20, 110, 22) for x in range(20, 110, 22)], float)
    image = _blobs((128 + 2 * m, 128 + 2 * m), atoms + m, sigma=2.0)
    dy, dx = stem.scan_displacements(d)
    recorded = stem.scan_jitter(image, dx, dy, shape)
    predicted = stem.distorted_coordinates(atoms, d)
    for (py, px) in predicted:
        cy, cx = _centroid(recorded, py, px, r=5)
        assert cy == pytest.approx(py, abs=0.25) and cx == pytest.approx(px, abs=0.25)


def test_column_centroid_rule_follows_line_to_line_jitter():
    """Uncorrelated x-jitter of 1.5 px per line on columns 3 px wide: each column is recorded as
    a ragged stack of shifted slices. The line through its centre is off the recorded centroid
    by about the jitter's σ; the width-weighted rule lands on it."""
    shape = (128, 128)
    sigma = 3.0
    d = _off(shape, jitter_kind="x", jitter_sigma_x_px=1.5, jitter_phi_x=0.0, geometry_seed=4)
    m = stem.margin_px(d)
    atoms = np.array([(y, x) for y in range(24, 108, 20) for x in range(24, 108, 20)], float)
    image = _blobs((128 + 2 * m, 128 + 2 * m), atoms + m, sigma=sigma)
    dy, dx = stem.scan_displacements(d)
    recorded = stem.scan_jitter(image, dx, dy, shape)
    point = stem.distorted_coordinates(atoms, d)
    centroid = stem.distorted_coordinates(atoms, d, width_px=sigma)
    measured = np.array([_centroid(recorded, y, x, r=8) for y, x in centroid])
    err_point = np.abs(measured[:, 1] - point[:, 1])
    err_centroid = np.abs(measured[:, 1] - centroid[:, 1])
    assert np.median(err_point) > 0.5
    assert err_centroid.max() < 0.15
    np.testing.assert_allclose(centroid[:, 0], measured[:, 0], atol=0.15)
    with pytest.raises(InputError, match="width_px"):
        stem.distorted_coordinates(atoms, d, width_px=0.0)


def test_margin_covers_every_displacement():
    rng = np.random.default_rng(7)
    params = StemDistortionParams().all_on()
    for _ in range(10):
        d = stem.draw_stem_distortion(rng, params, (64, 64), pixel_size_A=0.2)
        dy, dx = stem.scan_displacements(d)
        assert stem.margin_px(d) >= max(np.abs(dy).max(), np.abs(dx).max()) + 2
    assert stem.margin_px(_off()) == 0


# --- fast scan --------------------------------------------------------------------------------

@pytest.mark.parametrize("response", [
    FastScanResponse(alpha=0.5, decay_px=0.1, period_px=4.0, phase_rad=math.pi / 2),
    FastScanResponse(alpha=6.0, decay_px=1.5, period_px=10.0, phase_rad=1.2),
    FastScanResponse(alpha=3.0, decay_px=0.7, period_px=40.0, phase_rad=2.3),
])
def test_fast_scan_psf_is_normalised_and_causal(response):
    n = 32
    psf = stem.fast_scan_psf(n, response)
    x = np.arange(-(n - 1), n)
    assert psf.shape == (2 * n - 1,)
    assert psf.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(psf[x > 0] == 0.0)
    assert psf[x == 0][0] > 0


def test_apply_fast_scan_trails_to_the_right_only_and_keeps_the_mean():
    response = FastScanResponse(alpha=4.0, decay_px=1.0, period_px=30.0, phase_rad=1.6)
    img = np.zeros((3, 200), dtype=np.float32)
    img[:, 100] = 1.0
    out = stem.apply_fast_scan(img, response)
    assert np.all(np.abs(out[:, :100]) < 1e-6)               # nothing before the impulse
    assert out[:, 100:].sum(axis=1) == pytest.approx(np.ones(3), abs=0.02)
    flat = np.full((4, 128), 5.0, dtype=np.float32)
    np.testing.assert_allclose(stem.apply_fast_scan(flat, response), 5.0, rtol=1e-5)


@pytest.mark.parametrize("response, sigma", [
    (FastScanResponse(alpha=0.5, decay_px=0.1, period_px=4.0, phase_rad=math.pi / 2), 1.5),
    (FastScanResponse(alpha=6.0, decay_px=1.5, period_px=10.0, phase_rad=1.2), 3.0),
    (FastScanResponse(alpha=3.0, decay_px=0.7, period_px=40.0, phase_rad=2.3), 2.0),
])
def test_fast_scan_shift_is_where_the_recorded_column_peaks(response, sigma):
    """Columns at sub-pixel positions, trailed by the detector: the recorded peak (a parabola
    through the maximum of the cubic-spline profile on a 0.1 px grid) sits at position +
    fast_scan_shift_px."""
    shift = stem.fast_scan_shift_px(response, sigma)
    x = np.arange(400, dtype=np.float64)
    for centre in (100.0, 200.3, 300.7):
        row = np.exp(-0.5 * ((x - centre) / sigma) ** 2)[None].astype(np.float32)
        out = stem.apply_fast_scan(row, response)[0].astype(np.float64)
        fine = np.arange(centre - 3 * sigma, centre + 3 * sigma + 8, 0.1)
        profile = _cubic(out, fine)
        k = int(np.argmax(profile))
        y0, y1, y2 = profile[k - 1:k + 2]
        peak = fine[k] + 0.05 * (y0 - y2) / (y0 - 2 * y1 + y2)
        assert peak == pytest.approx(centre + shift, abs=0.12)
    assert stem.fast_scan_shift_px(None, sigma) == 0.0
    with pytest.raises(InputError, match="sigma_px"):
        stem.fast_scan_shift_px(response, -1.0)


def test_fast_scan_shift_grows_with_the_detector_memory():
    slow = FastScanResponse(alpha=6.0, decay_px=1.5, period_px=16.0, phase_rad=2.3)
    fast = FastScanResponse(alpha=0.5, decay_px=0.1, period_px=16.0, phase_rad=2.3)
    assert stem.fast_scan_shift_px(slow, 2.0) > 1.5 > 0.2 > stem.fast_scan_shift_px(fast, 2.0) > 0


def _cubic(values, at):
    from scipy.interpolate import CubicSpline

    return CubicSpline(np.arange(values.size), values)(at)


def test_fast_scan_correlates_noise_along_rows_not_columns():
    noise = np.random.default_rng(8).normal(size=(256, 256)).astype(np.float32)
    out = stem.apply_fast_scan(noise, FastScanResponse(3.0, 1.0, 30.0, 1.6))
    along = np.corrcoef(out[:, :-1].ravel(), out[:, 1:].ravel())[0, 1]
    across = np.corrcoef(out[:-1].ravel(), out[1:].ravel())[0, 1]
    assert along > 0.3 and abs(across) < 0.02


# --- pixel defects, clip, quantisation --------------------------------------------------------

def test_row_lines_black_pixels_and_zingers():
    rng = np.random.default_rng(9)
    img = rng.uniform(10, 20, (64, 64)).astype(np.float32)
    rows = stem.row_line_noise(img, 3, rng, length_fraction=(1.0, 1.0))
    changed = np.where(np.any(rows != img, axis=1))[0]
    assert 1 <= changed.size <= 3
    for r in changed:
        assert np.ptp(rows[r]) == 0.0                       # a whole line at one value
    black = stem.black_pixels(img, 40, rng)
    assert np.all(black <= img) and np.count_nonzero(black < 2.0) >= 30
    hot = stem.zingers(img, 40, rng)
    assert np.all(hot >= img) and np.count_nonzero(hot > 30.0) >= 30


def test_clip_and_quantise_bounds():
    img = np.linspace(-5, 300, 1000, dtype=np.float32).reshape(10, 100)
    assert stem.clip_upper(img, 120.0).max() <= 120.0
    q = stem.quantise(img, 1.0, bits=8)
    assert q.min() >= 0 and q.max() <= 255 and np.all(q == np.round(q))
    assert set(np.unique(stem.quantise(img * 0.01, 1.0))) <= set(range(0, 4))


def test_upper_clip_saturates_the_recorded_image():
    lam = np.random.default_rng(10).uniform(5, 50, (64, 64)).astype(np.float32)
    out = stem.distort_stem(lam, _off(upper_clip_fraction=0.3), np.random.default_rng(11))
    assert np.count_nonzero(out == out.max()) > 50


# --- drawing, determinism, validation ---------------------------------------------------------

def test_same_seed_same_bytes_and_record_is_json():
    params = StemDistortionParams().all_on()
    lam = np.random.default_rng(0).uniform(0, 30, (96, 96)).astype(np.float32)
    outs = []
    for _ in range(2):
        rng = np.random.default_rng(42)
        d = stem.draw_stem_distortion(rng, params, (80, 80), pixel_size_A=0.15,
                                      max_expected_counts=30.0)
        outs.append(stem.distort_stem(lam, d, rng).tobytes())
        json.dumps(d.to_dict())
    assert outs[0] == outs[1]


def test_all_on_switches_every_effect_on_and_sem_has_no_black_pixels():
    rng = np.random.default_rng(12)
    p = StemDistortionParams().all_on()
    d = stem.draw_stem_distortion(rng, p, (64, 64), pixel_size_A=0.1)
    assert d.jitter_kind == "xy" and d.detector == "analog" and d.fast_scan is not None
    assert d.line_jitter_amplitude_px > 0 and d.row_lines > 0 and d.black_pixel_fraction > 0
    assert d.zinger_fraction > 0 and d.upper_clip_fraction is not None
    assert (d.drift_x_px_per_line, d.drift_y_px_per_line) != (0.0, 0.0)
    sem = stem.draw_stem_distortion(rng, p, (64, 64), "sem", pixel_size_A=0.1)
    assert sem.black_pixel_fraction == 0.0


def test_jitter_amplitude_is_converted_from_angstrom():
    p = StemDistortionParams(jitter_probability=1.0, jitter_sigma_A=(0.2, 0.2),
                             jitter_kind_probabilities=(0, 0, 1))
    d = stem.draw_stem_distortion(np.random.default_rng(0), p, (32, 32), pixel_size_A=0.05)
    assert d.jitter_sigma_x_px == pytest.approx(4.0) and d.jitter_sigma_y_px == pytest.approx(4.0)


def test_gain_is_capped_to_fit_the_adc():
    p = StemDistortionParams(counting_probability=0.0, adc_gain_adu_per_e=(100.0, 100.0))
    d = stem.draw_stem_distortion(np.random.default_rng(0), p, (32, 32), pixel_size_A=0.1,
                                  max_expected_counts=5000.0)
    assert d.adc_offset_adu + d.adc_gain_adu_per_e * 5000.0 < 2 ** d.adc_bits - 1


def test_bad_input_raises():
    d = _off((32, 32))
    bad = np.ones((32, 32), dtype=np.float32)
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        stem.distort_stem(bad, d, np.random.default_rng(0))
    with pytest.raises(InputError):
        stem.distort_stem(np.ones((16, 32)), d, np.random.default_rng(0))
    with pytest.raises(InputError):
        stem.distort_stem(np.ones((4, 32, 32)), d, np.random.default_rng(0))
    with pytest.raises(InputError):
        stem.draw_stem_distortion(np.random.default_rng(0), StemDistortionParams(), (32, 32),
                                  pixel_size_A=-0.1)
    with pytest.raises(InputError):
        stem.draw_stem_distortion(np.random.default_rng(0), StemDistortionParams(), (32, 32),
                                  "tem", pixel_size_A=0.1)


def test_params_round_trip_through_a_config_dict():
    from emrestore.errors import ConfigError
    from emrestore.simulate.config import from_dict, to_dict
    from emrestore.simulate.dose import DoseParams
    from emrestore.simulate.postprocess import PostprocessParams
    from emrestore.simulate.tem import TemDistortionParams

    for cls in (StemDistortionParams, TemDistortionParams, PostprocessParams, DoseParams):
        params = cls()
        assert from_dict(cls, json.loads(json.dumps(to_dict(params)))) == params
    with pytest.raises(ConfigError):
        from_dict(StemDistortionParams, {"jitter_probability": 1.5})
