import json

import numpy as np
import pytest

from emrestore.errors import InputError
from emrestore.simulate import tem
from emrestore.simulate.tem import TemDistortion, TemDistortionParams


def _off(shape=(64, 64), **kw) -> TemDistortion:
    base = dict(shape=shape, mtf=(1.0, 1.0, 1.0), detector="analog")
    base.update(kw)
    return TemDistortion(**base)


# --- MTF --------------------------------------------------------------------------------------

def test_mtf_is_one_at_zero_frequency_and_includes_the_pixel_sinc():
    a, b, c = 0.6, 0.5, 1.2
    m = tem.mtf((64, 64), a, b, c)
    assert m[0, 0] == pytest.approx(1.0)
    # Column 32 of a 64-wide FFT grid is the Nyquist frequency (u = -1): sinc(π/2) = 2/π.
    assert m[0, 32] == pytest.approx(tem.mtf_radial(1.0, a, b, c) * 2 / np.pi)
    assert m[32, 32] == pytest.approx(tem.mtf_radial(np.sqrt(2), a, b, c) * (2 / np.pi) ** 2)


def test_drawn_mtfs_are_positive_and_monotone_radially():
    rng = np.random.default_rng(0)
    g = np.linspace(0, 10, 1000)
    for _ in range(200):
        a, b, c = tem.draw_mtf_params(rng)
        radial = tem.mtf_radial(g, a, b, c)
        assert radial[0] == pytest.approx(1.0)
        assert np.all(radial >= 0) and np.all(np.diff(radial) <= 1e-15)


def test_mtf_rule_rejects_rising_or_negative_profiles():
    assert tem.mtf_is_valid(0.5, 0.4, 1.5)
    assert not tem.mtf_is_valid(1.5, 2.0, 0.5)     # rises near g = 0
    assert not tem.mtf_is_valid(1.5, 0.5, 2.0)     # goes negative far out


def test_apply_mtf_keeps_the_dose_and_blurs():
    img = np.zeros((64, 64), dtype=np.float32)
    img[32, 32] = 100.0
    out = tem.apply_mtf(img, 0.5, 0.3, 0.8)
    assert out.sum() == pytest.approx(100.0, rel=1e-5)
    assert out[32, 32] < 50.0 and out[32, 33] > 0.5


# --- detector noise ---------------------------------------------------------------------------

def test_shot_noise_mean_equals_variance():
    lam = np.full((512, 512), 4.5, dtype=np.float32)
    out = tem.distort_tem(lam, _off((512, 512)), np.random.default_rng(1))
    assert out.mean() == pytest.approx(4.5, rel=0.02)
    assert out.var() == pytest.approx(out.mean(), rel=0.02)


def test_readout_and_fixed_pattern_add_their_variance():
    lam = np.full((400, 400), 50.0, dtype=np.float32)
    rng = np.random.default_rng(2)
    fpn = tem.fixed_pattern_noise(lam, 0.04, rng)
    assert fpn.std() == pytest.approx(50.0 * 0.04, rel=0.03)
    d = _off((400, 400), read_noise_e=2.0, adc_gain_adu_per_e=4.0, adc_offset_adu=100.0)
    out = tem.distort_tem(lam, d, rng)
    assert out.mean() == pytest.approx(4.0 * 50.0 + 100.0, abs=0.2)
    # (Poisson 50 + read 4) e² × gain² + quantisation 1/12 ADU².
    assert out.var() == pytest.approx(16.0 * 54.0 + 1 / 12, rel=0.03)


def test_dark_current_map_body_and_hot_pixels():
    rng = np.random.default_rng(3)
    body = tem.dark_current_map((500, 500), 1.5, 0.4, 0.0, rng)
    assert body.mean() == pytest.approx(1.5, rel=0.01) and body.min() > 0
    assert body.std() == pytest.approx(0.6, rel=0.03)
    # A narrow body (σ = 0.15) leaves the hot pixels alone in [μ + 5σ, μ + 8σ].
    dcnu = tem.dark_current_map((500, 500), 1.5, 0.1, 1e-3, rng)
    hot = dcnu >= 1.5 + 5 * 0.15 - 1e-6
    assert 190 <= hot.sum() <= 320                                 # ~250 hot pixels
    assert np.all(dcnu[hot] <= 1.5 + 8 * 0.15 + 1e-6)


def test_flicker_noise_has_the_requested_sigma_and_a_falling_spectrum():
    field = tem.flicker_noise((256, 256), 0.7, np.random.default_rng(4))
    assert field.std() == pytest.approx(0.7, rel=1e-3) and abs(field.mean()) < 1e-3
    power = np.abs(np.fft.fft2(field)) ** 2
    assert power[1:4, 1:4].mean() > 100 * power[100:120, 100:120].mean()


def test_reset_noise_is_one_value_per_row():
    img = np.random.default_rng(5).random((50, 60)).astype(np.float32)
    out = tem.reset_noise(img, 1.0, np.random.default_rng(6))
    step = out - img
    assert np.allclose(step, step[:, :1], atol=1e-6) and step[:, 0].std() > 0.5


def test_black_and_zinger_clusters_grow_by_random_walk():
    img = np.full((128, 128), 10.0, dtype=np.float32)
    d = _off((128, 128), detector="counting", black_pixel_points=5, black_pixel_walk_steps=12,
             zinger_points=5, zinger_walk_steps=12)
    out = tem.distort_tem(img * 0 + 10.0, d, np.random.default_rng(7))
    assert np.count_nonzero(out <= 1) > 15         # clusters, not 5 single pixels
    assert np.count_nonzero(out >= 20) > 15


def test_quantisation_integer_levels_and_adc_range():
    lam = np.random.default_rng(8).uniform(0, 3000, (64, 64)).astype(np.float32)
    d = _off(adc_bits=12, adc_gain_adu_per_e=2.0, adc_offset_adu=50.0)
    out = tem.distort_tem(lam, d, np.random.default_rng(9))
    assert np.all(out == np.round(out)) and out.min() >= 0 and out.max() <= 4095
    assert np.count_nonzero(out == 4095) > 100                     # saturated ADC
    clipped = tem.distort_tem(lam, _off(upper_clip_fraction=0.2), np.random.default_rng(9))
    assert np.count_nonzero(clipped == clipped.max()) > 100


def test_same_seed_same_bytes_and_record_is_json():
    lam = np.random.default_rng(0).uniform(0, 20, (70, 70)).astype(np.float32)
    outs = []
    for _ in range(2):
        rng = np.random.default_rng(123)
        d = tem.draw_tem_distortion(rng, TemDistortionParams().all_on(), (64, 64),
                                    max_expected_counts=20.0)
        blurred = tem.apply_mtf(lam, *d.mtf)
        outs.append(tem.distort_tem(blurred, d, rng).tobytes())
        json.dumps(d.to_dict())
    assert outs[0] == outs[1]


def test_to_detector_units_matches_the_mean_of_the_recorded_frame():
    d = _off((256, 256), adc_gain_adu_per_e=8.0, adc_offset_adu=300.0, fpn_sigma=0.02,
             read_noise_e=0.5, flicker_sigma_e=0.3, reset_sigma_e=0.2)
    lam = np.full((256, 256), 30.0, dtype=np.float32)
    out = tem.distort_tem(lam, d, np.random.default_rng(10))
    assert out.mean() == pytest.approx(tem.to_detector_units(lam, d).mean(), rel=2e-3)


def test_bad_input_raises():
    bad = np.ones((32, 32))
    bad[0, 0] = np.inf
    with pytest.raises(InputError):
        tem.distort_tem(bad, _off((32, 32)), np.random.default_rng(0))
    with pytest.raises(InputError):
        tem.distort_tem(np.ones((16, 16)), _off((32, 32)), np.random.default_rng(0))
    with pytest.raises(InputError):
        tem.apply_mtf(np.full((8, 8), np.nan), 0.5, 0.5, 0.5)
