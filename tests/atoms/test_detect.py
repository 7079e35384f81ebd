import numpy as np
import pytest
from _columns_synth import si110_dumbbells, square_lattice

from emrestore.atoms.detect import (
    estimate_column_sigma,
    estimate_lattice_spacing,
    estimate_noise_std,
    find_candidates,
)
from emrestore.errors import InputError
from emrestore.evaluate.metrics import match_points


def test_lattice_spacing_and_width_from_autocorrelation():
    _, image, rng = square_lattice(spacing=12.5, sigma=2.0, counts=2000.0, background=2.0)
    noisy = rng.poisson(image).astype(np.float32)
    assert estimate_lattice_spacing(noisy) == pytest.approx(12.5, rel=0.02)
    assert estimate_column_sigma(noisy) == pytest.approx(2.0, rel=0.3)


def test_noise_std_matches_white_noise():
    rng = np.random.default_rng(1)
    assert estimate_noise_std(rng.normal(10.0, 3.0, (256, 256))) == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize("method", ["peaks", "log", "dog"])
def test_all_columns_found_in_poisson_lattice(method):
    truth, image, rng = square_lattice(counts=1000.0, background=1.0, seed=2)
    noisy = rng.poisson(image).astype(np.float32)
    cand = find_candidates(noisy, method=method)
    m = match_points(cand, truth, radius=3.0)
    assert m.recall >= (1.0 if method == "peaks" else 0.97)
    assert m.precision >= (0.99 if method == "peaks" else 0.95)


def test_low_dose_columns_found_with_matched_filter():
    # 100 counts per column: found by the second, matched-filter smoothing scale
    truth, image, rng = square_lattice(counts=100.0, background=1.0, seed=3)
    cand = find_candidates(rng.poisson(image).astype(np.float32))
    m = match_points(cand, truth, radius=3.0)
    assert m.recall >= 0.98
    assert m.precision >= 0.9


def test_dumbbells_resolved_by_candidates():
    truth, image, rng, _, _, d = si110_dumbbells(shape=(256, 256), sigma_A=0.45, counts=2000.0)
    cand = find_candidates(rng.poisson(image).astype(np.float32))
    m = match_points(cand, truth, radius=0.3 * d)
    assert m.recall >= 0.98


def test_explicit_parameters_are_used_and_returned():
    _, image, _ = square_lattice()
    cand, info = find_candidates(image, min_separation_px=4.0, sigma_px=2.5, spacing_px=14.2,
                                 return_info=True)
    assert info["min_separation_px"] == 4.0
    assert info["sigma_px"] == 2.5
    assert cand.shape[1] == 2
    assert len(cand) > 200


def test_noise_free_lattice_finds_every_column_without_warnings():
    """A noise-free, coarsely quantised frame whose estimated noise is exactly 0 (nothing to rank
    the two smoothing scales by) still ranks and merges its candidates: no NaN prominence."""
    import warnings

    truth, image, _ = square_lattice(counts=1000.0, background=5.0, spacing=30.0, sigma=1.5,
                                     seed=4)
    image = np.round(image * 10) / 10 + 0.25
    assert estimate_noise_std(image) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cand = find_candidates(image, method="peaks")
    m = match_points(cand, truth, radius=3.0)
    assert m.recall == 1.0 and m.precision == 1.0


def test_flat_image_has_no_candidates():
    assert find_candidates(np.full((64, 64), 7.0)).shape == (0, 2)


def test_bad_arguments():
    _, image, _ = square_lattice(shape=(64, 64))
    with pytest.raises(InputError):
        find_candidates(image, method="magic")
    with pytest.raises(InputError):
        find_candidates(image, threshold=2.0)
    with pytest.raises(InputError):
        find_candidates(image, min_separation_px=0)
    bad = image.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        find_candidates(bad)
