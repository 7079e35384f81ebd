import math

import numpy as np
import pytest

from emrestore.errors import ConfigError, InputError
from emrestore.simulate.dose import (
    DoseParams,
    dose_for_mean_counts,
    dose_from_beam,
    dose_per_pixel,
    draw_dose,
    electrons_per_pixel,
    expected_counts,
)


def test_expected_counts_is_fraction_times_dose_times_pixel_area():
    # 1000 e/Å² on 0.1 Å pixels = 10 e per pixel; 10 % of them reach the detector.
    out = expected_counts(np.full((3, 4), 0.1), 1000.0, 0.1)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)
    assert dose_per_pixel(1000.0, 0.1) == pytest.approx(10.0)
    assert dose_for_mean_counts(1.0, 0.1, 0.1) == pytest.approx(1000.0)


def test_electrons_per_pixel_from_current_and_dwell():
    assert electrons_per_pixel(1.0, 1.0) == pytest.approx(6.2415, rel=1e-4)   # 1 pA · 1 µs / e
    assert electrons_per_pixel(50.0, 2.0) == pytest.approx(100 * 6.2415, rel=1e-4)
    # The same beam on 0.2 Å pixels is 25× denser per Å² than per pixel.
    assert dose_from_beam(1.0, 1.0, 0.2) == pytest.approx(6.2415 / 0.04, rel=1e-4)


@pytest.mark.parametrize("law", ["log-uniform", "uniform", "exponential"])
def test_draw_dose_stays_in_range_and_is_reproducible(law):
    params = DoseParams((500.0, 10000.0), law=law, exponential_scale_e_per_A2=2000.0)
    doses = [draw_dose(np.random.default_rng(i), params) for i in range(2000)]
    assert min(doses) >= 500.0 and max(doses) <= 10000.0
    assert draw_dose(np.random.default_rng(7), params) == draw_dose(np.random.default_rng(7),
                                                                     params)


def test_dose_laws_have_their_shapes():
    rng = np.random.default_rng(0)
    lo, hi = 500.0, 10000.0
    uni = np.array([draw_dose(rng, DoseParams((lo, hi), law="uniform")) for _ in range(4000)])
    logu = np.array([draw_dose(rng, DoseParams((lo, hi), law="log-uniform")) for _ in range(4000)])
    expo = np.array([draw_dose(rng, DoseParams((lo, hi), law="exponential",
                                               exponential_scale_e_per_A2=1000.0))
                     for _ in range(4000)])
    assert np.median(uni) == pytest.approx((lo + hi) / 2, rel=0.05)
    assert np.median(logu) == pytest.approx(math.sqrt(lo * hi), rel=0.08)
    # Truncated exponential with scale 1000: median = lo + 1000·ln 2 (truncation negligible).
    assert np.median(expo) == pytest.approx(lo + 1000 * math.log(2), rel=0.08)


@pytest.mark.parametrize("dose, size", [(-1.0, 0.1), (0.0, 0.1), (float("nan"), 0.1),
                                        (100.0, 0.0), (100.0, -0.2), (100.0, float("inf"))])
def test_bad_units_raise(dose, size):
    with pytest.raises(InputError):
        expected_counts(np.ones((2, 2)), dose, size)


def test_bad_beam_and_image_raise():
    with pytest.raises(InputError):
        electrons_per_pixel(-1.0, 1.0)
    with pytest.raises(InputError):
        electrons_per_pixel(1.0, 0.0)
    with pytest.raises(InputError, match="NaN"):
        expected_counts(np.array([[0.1, np.nan]]), 1000.0, 0.1)


def test_bad_params_raise():
    with pytest.raises(ConfigError):
        DoseParams(law="gaussian")
    with pytest.raises(ConfigError):
        DoseParams(dose_e_per_A2=(0.0, 100.0))
    with pytest.raises(ConfigError):
        DoseParams(dose_e_per_A2=(200.0, 100.0))
