"""Lattice vectors, the a/b distance protocol of Gambini et al. (2023) and sublattice splitting."""

import numpy as np
import pytest

from emrestore.atoms.lattice import (
    distance_histogram,
    fractional_coordinates,
    lattice_distances,
    lattice_vectors,
    neighbour_vectors,
    split_sublattices,
    strain_error,
)
from emrestore.errors import InputError


def grid(n_rows, n_cols, a_vec, b_vec, origin=(0.0, 0.0)):
    """Lattice points origin + i a + j b as (y, x)."""
    i, j = np.mgrid[0:n_rows, 0:n_cols]
    return (
        np.asarray(origin)
        + i.ravel()[:, None] * np.asarray(b_vec, float)
        + j.ravel()[:, None] * np.asarray(a_vec, float)
    )


def srtio3_like(n=14, a=20.0):
    """Sr columns on the corners, Ti–O columns in the centres of an a × a square cell."""
    sr = grid(n, n, (0, a), (a, 0), origin=(30.0, 30.0))
    return sr, sr + a / 2


def test_neighbour_vectors_square():
    pos = grid(5, 5, (0, 10.0), (10.0, 0))
    nb = neighbour_vectors(pos, k=4)
    assert nb.vectors.shape == (25, 4, 2) and nb.indices.shape == (25, 4)
    centre = 12
    np.testing.assert_allclose(nb.distances[centre], 10.0)
    got = {tuple(v) for v in np.round(nb.vectors[centre], 9)}
    assert got == {(0.0, 10.0), (0.0, -10.0), (10.0, 0.0), (-10.0, 0.0)}
    assert neighbour_vectors(pos[[0, 1, 5]], k=10).vectors.shape == (3, 2, 2)  # k clipped to N - 1


@pytest.mark.parametrize(
    ("a_vec", "b_vec"),
    [
        ((0.0, 10.0), (15.0, 0.0)),  # rectangular
        ((2.0, 17.0), (11.0, -4.0)),  # oblique, reduced
        ((0.0, 12.0), (12 * np.sqrt(3) / 2, 6.0)),  # hexagonal
    ],
)
def test_lattice_vectors_recover_basis(a_vec, b_vec):
    rng = np.random.default_rng(0)
    pos = grid(16, 16, a_vec, b_vec) + rng.normal(0, 0.05, (256, 2))
    a, b = lattice_vectors(pos)
    # same lattice: each found vector is an integer combination of the truth and vice versa
    true = np.column_stack([a_vec, b_vec])
    m = np.linalg.solve(true, np.column_stack([a, b]))
    np.testing.assert_allclose(m, np.round(m), atol=0.02)
    assert abs(round(np.linalg.det(np.round(m)))) == 1
    assert np.hypot(*a) <= np.hypot(*b) + 0.1 or abs(a[1]) >= abs(b[1])
    # convention: a points to +x, b points down (+y)
    assert a[1] > 0 and b[0] > 0


def test_lattice_vectors_skip_motif_vectors():
    """Honeycomb: the bond (reached from half the columns per direction) is not a translation."""
    rng = np.random.default_rng(1)
    d = 10.0
    a1, a2 = np.array([0.0, np.sqrt(3) * d]), np.array([1.5 * d, np.sqrt(3) / 2 * d])
    A = grid(14, 14, a1, a2)
    pos = np.vstack([A, A + np.array([d, 0.0])]) + rng.normal(0, 0.05, (392, 2))
    a, b = lattice_vectors(pos)
    np.testing.assert_allclose([np.hypot(*a), np.hypot(*b)], np.sqrt(3) * d, rtol=2e-3)
    # Si [110]-like dumbbells: partner 13.6 px apart, centred rectangular cell 54.3 × 38.4 px
    c = grid(10, 10, (0, 38.4), (54.3, 0))
    c = np.vstack([c, c + np.array([27.15, 19.2])])
    pos = np.vstack([c, c + np.array([13.6, 0.0])]) + rng.normal(0, 0.05, (400, 2))
    a, b = lattice_vectors(pos)
    np.testing.assert_allclose(sorted([np.hypot(*a), np.hypot(*b)]), [33.22, 33.22], rtol=2e-3)


def test_fractional_coordinates_integer_on_lattice():
    pos = grid(4, 5, (1.0, 9.0), (8.0, -1.0), origin=(3.0, 4.0))
    f = fractional_coordinates(pos, (1.0, 9.0), (8.0, -1.0), origin_px=(3.0, 4.0))
    np.testing.assert_allclose(f, np.round(f), atol=1e-9)


def test_lattice_distances_and_strain_error_match_noise():
    """Seed-000 protocol: the a/b distance spread is √2 σ / |a| for position noise σ."""
    rng = np.random.default_rng(2)
    a, b, sigma = 20.0, 16.0, 0.05
    truth = grid(24, 24, (0, a), (b, 0))
    pos = truth + rng.normal(0, sigma, truth.shape)
    d = lattice_distances(pos)
    assert d["unit"] == "px"
    np.testing.assert_allclose(np.hypot(*d["a_vec"]), a, rtol=1e-3)
    np.testing.assert_allclose(np.hypot(*d["b_vec"]), b, rtol=1e-3)
    # the last column has no +a neighbour, the last row no +b neighbour
    assert np.isnan(d["a"]).sum() == 24 and np.isnan(d["b"]).sum() == 24
    assert (d["a_index"] == -1).sum() == 24
    np.testing.assert_allclose(np.nanmean(d["a"]), a, rtol=1e-3)
    for key, length in (("a", a), ("b", b)):
        expected = np.sqrt(2) * sigma / length
        assert strain_error(d[key]) == pytest.approx(expected, rel=0.12)
    # in Å with a pixel size
    d_A = lattice_distances(pos, d["a_vec"], d["b_vec"], pixel_size_A=0.1)
    assert d_A["unit"] == "A"
    np.testing.assert_allclose(d_A["a"], d["a"] * 0.1)
    # noise-free: zero spread
    assert strain_error(lattice_distances(truth)["a"]) < 1e-12


def test_distance_histogram_numbers():
    rng = np.random.default_rng(3)
    d = np.r_[rng.normal(10.0, 0.1, 500), np.nan]
    h = distance_histogram(d, bins=20)
    assert h["counts"].sum() == 500 and h["edges"].size == 21 and h["n"] == 500
    assert h["strain_error"] == pytest.approx(h["std"] / h["mean"])
    assert h["mean"] == pytest.approx(10.0, abs=0.02)


def test_split_sublattices_by_intensity_srtio3():
    rng = np.random.default_rng(4)
    sr, tio = srtio3_like()
    pos = np.vstack([sr, tio]) + rng.normal(0, 0.02, (2 * len(sr), 2))
    inten = np.r_[rng.normal(10.0, 0.5, len(sr)), rng.normal(6.0, 0.5, len(tio))]
    labels = split_sublattices(pos, inten)  # automatic number by BIC
    assert set(labels.tolist()) == {0, 1}
    assert np.all(labels[: len(sr)] == 0) and np.all(labels[len(sr) :] == 1)  # 0 = brightest
    # each sublattice alone is the a × a Sr lattice
    a, b = lattice_vectors(pos[labels == 0])
    np.testing.assert_allclose([np.hypot(*a), np.hypot(*b)], 20.0, rtol=1e-3)
    # geometrically, Sr + Ti–O is one centred lattice: one site
    assert np.all(split_sublattices(pos) == 0)


def test_split_sublattices_by_geometry_honeycomb_and_dumbbells():
    rng = np.random.default_rng(5)
    d = 10.0
    A = grid(14, 14, (0.0, np.sqrt(3) * d), (1.5 * d, np.sqrt(3) / 2 * d))
    pos = np.vstack([A, A + np.array([d, 0.0])]) + rng.normal(0, 0.05, (392, 2))
    labels = split_sublattices(pos)
    assert len(set(labels[:196])) == 1 and len(set(labels[196:])) == 1
    assert labels[0] != labels[196]
    c = grid(10, 10, (0, 38.4), (54.3, 0))
    c = np.vstack([c, c + np.array([27.15, 19.2])])
    pos = np.vstack([c, c + np.array([13.6, 0.0])]) + rng.normal(0, 0.05, (400, 2))
    labels = split_sublattices(pos, method="geometry")
    assert np.bincount(labels).tolist() == [200, 200]
    assert len(set(labels[:200])) == 1


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((2, 2)), "at least 3"),
        (np.array([[0.0, 0.0], [1.0, np.nan], [2.0, 3.0], [5.0, 1.0]]), "NaN"),
        (np.column_stack([np.arange(10.0), 2 * np.arange(10.0)]), "collinear"),
        (np.zeros((5, 3)), r"\(N, 2\)"),
        (np.zeros((5, 2)), "collinear"),
    ],
)
def test_bad_positions_raise_input_error(bad, match):
    for fn in (lattice_vectors, lattice_distances, split_sublattices):
        with pytest.raises(InputError, match=match):
            fn(bad)
    with pytest.raises(InputError):
        neighbour_vectors(bad)


def test_other_bad_inputs():
    pos = grid(6, 6, (0, 10.0), (10.0, 0))
    with pytest.raises(InputError, match="pixel_size_A"):
        lattice_distances(pos, pixel_size_A=0)
    with pytest.raises(InputError, match="collinear"):
        lattice_distances(pos, (0, 10.0), (0, 20.0))
    with pytest.raises(InputError, match="at least 2"):
        strain_error([1.0, np.nan])
    with pytest.raises(InputError, match="intensities"):
        split_sublattices(pos, np.ones(5))
    with pytest.raises(InputError, match="method"):
        split_sublattices(pos, method="colour")
    # one row of columns with sub-pixel scatter: not collinear to machine precision, but 1D
    rng = np.random.default_rng(0)
    row = np.column_stack([rng.normal(0, 0.01, 20), np.arange(20) * 10.0])
    with pytest.raises(InputError, match=r"(one|two) lattice direction"):
        lattice_vectors(row)
