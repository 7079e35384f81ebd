"""Atom counting: Gaussian mixture with ICL/BIC selection (StatSTEM method) and library matching."""

import numpy as np
import pytest

from emrestore.atoms.counting import (
    count_atoms_gmm,
    count_atoms_library,
    fit_gaussian_mixture_1d,
    select_gaussian_mixture_1d,
)
from emrestore.errors import InputError

N_MAX = 15


def linear_scs(n):
    return 0.8 * n  # e.g. e⁻·Å² per atom


def concave_scs(n):
    """Saturating SCS(n), as for heavy columns channelling: the spacing shrinks with thickness."""
    return 20.0 * (1.0 - np.exp(-n / 20.0))


def simulate(scs_fn, noise_fraction, seed, n_columns=600):
    rng = np.random.default_rng(seed)
    n_true = rng.integers(1, N_MAX + 1, n_columns)
    spacing = np.diff(scs_fn(np.arange(1, N_MAX + 1))).min()
    scs = scs_fn(n_true) + rng.normal(0, noise_fraction * spacing, n_columns)
    return n_true, scs


@pytest.mark.parametrize(
    ("scs_fn", "noise_fraction", "seed"),
    [
        (linear_scs, 0.2, 0),
        (concave_scs, 0.25, 1),  # noise = 1/4 of the smallest spacing (at 15 atoms)
    ],
)
def test_gmm_icl_selects_components_and_counts(scs_fn, noise_fraction, seed):
    n_true, scs = simulate(scs_fn, noise_fraction, seed)
    counts, info = count_atoms_gmm(scs, max_components=20)
    assert info["n_components"] == N_MAX
    assert info["offset"] == 1
    assert np.mean(counts == n_true) >= 0.95
    # the criterion curve has its minimum at the selected number of components
    assert info["components"][np.argmin(info["criterion_values"])] == N_MAX
    assert info["posterior"].shape == (scs.size, N_MAX)
    np.testing.assert_allclose(info["posterior"].sum(axis=1), 1.0)
    # the fitted width is the noise
    spacing = np.diff(scs_fn(np.arange(1, N_MAX + 1))).min()
    assert info["sigma"] == pytest.approx(noise_fraction * spacing, rel=0.15)


def test_gmm_icl_at_quarter_spacing_is_as_good_as_knowing_the_truth():
    """Equal spacing, noise = spacing / 4: the Bayes limit itself is ≈ 95.7 % correct counts.

    A one-Gaussian model has zero classification entropy and can win ICL here; the selection
    must still find the 15 components, and the counts must match those of a classifier that
    knows the true SCS values (nearest true mean).
    """
    n_true, scs = simulate(linear_scs, 0.25, 100)
    counts, info = count_atoms_gmm(scs, max_components=20)
    assert info["n_components"] == N_MAX
    oracle = np.abs(scs[:, None] - linear_scs(np.arange(1, N_MAX + 1))).argmin(axis=1) + 1
    assert np.mean(counts == n_true) >= np.mean(oracle == n_true) - 0.01
    assert np.mean(counts == n_true) >= 0.94


def test_gmm_bic_min_count_and_determinism():
    rng = np.random.default_rng(2)
    n_true = rng.integers(3, 9, 400)
    scs = linear_scs(n_true) + rng.normal(0, 0.1, 400)
    counts, info = count_atoms_gmm(scs, max_components=10, criterion="bic")
    assert info["n_components"] == 6 and info["criterion"] == "bic"
    assert info["offset"] == 3  # μ₁ / spacing of a linear SCS through zero
    assert np.all(counts == n_true)
    counts2, info2 = count_atoms_gmm(scs, max_components=10, criterion="bic")
    assert np.array_equal(counts, counts2) and np.array_equal(info["means"], info2["means"])
    counts_m, info_m = count_atoms_gmm(scs, max_components=10, min_count=5)
    assert info_m["offset"] == 5 and np.all(counts_m == n_true + 2)
    counts_f, info_f = count_atoms_gmm(scs, n_components=6)
    assert info_f["components"].tolist() == [6] and np.all(counts_f == n_true)


def test_fit_gaussian_mixture_recovers_parameters():
    rng = np.random.default_rng(3)
    x = np.r_[rng.normal(0.0, 1.0, 3000), rng.normal(6.0, 2.0, 1000)]
    fit = fit_gaussian_mixture_1d(x, 2, shared_variance=False)
    np.testing.assert_allclose(fit["means"], [0.0, 6.0], atol=0.15)
    np.testing.assert_allclose(fit["sigmas"], [1.0, 2.0], rtol=0.08)
    np.testing.assert_allclose(fit["weights"], [0.75, 0.25], atol=0.02)
    sel = select_gaussian_mixture_1d(x, 4, criterion="bic", shared_variance=False)
    assert sel["n_components"] == 2 and sel["bic"].shape == (4,)


def test_library_matching():
    library = concave_scs(np.arange(1, N_MAX + 1))
    n_true = np.random.default_rng(4).integers(1, N_MAX + 1, 500)
    assert np.array_equal(count_atoms_library(concave_scs(n_true), library), n_true)  # exact
    # nearest value with a little noise, and library entries in any order with their own counts
    rng = np.random.default_rng(5)
    noisy = concave_scs(n_true) + rng.normal(0, 0.05, 500)
    perm = rng.permutation(N_MAX)
    got = count_atoms_library(noisy, library[perm], counts=np.arange(1, N_MAX + 1)[perm])
    spacing = np.diff(library).min()
    assert np.mean(got == n_true) > 0.99 and 0.05 < spacing / 4
    assert count_atoms_library([5.0], [7.0]).tolist() == [1]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: count_atoms_gmm([1.0]), "at least 2"),
        (lambda: count_atoms_gmm([1.0, np.nan, 2.0]), "NaN"),
        (lambda: count_atoms_gmm(np.ones((3, 3))), "1D"),
        (lambda: count_atoms_gmm([1.0, 2.0, 3.0], criterion="aic"), "criterion"),
        (lambda: count_atoms_gmm([1.0, 2.0, 3.0], min_count=-1), "min_count"),
        (lambda: count_atoms_gmm([1.0, 2.0, 3.0], max_components=0), "max_components"),
        (lambda: count_atoms_library([1.0, np.inf], [1.0, 2.0]), "NaN"),
        (lambda: count_atoms_library([1.0], [1.0, 2.0], counts=[1]), "one count"),
        (lambda: fit_gaussian_mixture_1d([1.0, 2.0], 3), "cannot fit"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(InputError, match=match):
        call()
