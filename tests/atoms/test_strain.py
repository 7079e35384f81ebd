"""Strain from column positions against a reference lattice, and its agreement with GPA."""

import numpy as np
import pytest

from emrestore.atoms.strain import (
    bragg_peaks,
    deformation_to_strain,
    fit_reference_lattice,
    gpa,
    gpa_strain,
    reciprocal_vectors,
    sample_map,
    strain_from_positions,
    strain_map,
)
from emrestore.errors import InputError

A = 20.0  # px, square cell of the SrTiO3-like test lattice
REF = ((0.0, A), (A, 0.0))  # unstrained (a_vec, b_vec) as (dy, dx)


def srtio3_positions(n=14, with_oxygen=False):
    """Sr at the cell corners, Ti–O at the centres (and optionally the two O columns), (y, x)."""
    i, j = np.mgrid[0:n, 0:n]
    sr = np.column_stack([i.ravel() * A, j.ravel() * A]) + 30.0
    parts = [sr, sr + A / 2]
    if with_oxygen:
        parts += [sr + np.array([A / 2, 0.0]), sr + np.array([0.0, A / 2])]
    return np.vstack(parts)


def deform(pos, F_xy, centre=(150.0, 150.0)):
    """Apply a deformation gradient given in (x, y) components about a centre; pos is (y, x)."""
    F_yx = np.asarray(F_xy)[::-1, ::-1]
    c = np.asarray(centre)
    return (pos - c) @ F_yx.T + c


def rotation_xy(theta):
    """Counter-clockwise as displayed (y down)."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, s], [-s, c]])


def render(pos, shape, sigma=2.0):
    """Sum of unit Gaussians at (y, x) positions."""
    img = np.zeros(shape)
    yy = np.arange(shape[0])[:, None]
    xx = np.arange(shape[1])[None, :]
    r = int(np.ceil(5 * sigma))
    for y, x in pos:
        iy, ix = round(y), round(x)
        y0, y1 = max(0, iy - r), min(shape[0], iy + r + 1)
        x0, x1 = max(0, ix - r), min(shape[1], ix + r + 1)
        if y0 < y1 and x0 < x1:
            img[y0:y1, x0:x1] += np.exp(
                -((yy[y0:y1] - y) ** 2 + (xx[:, x0:x1] - x) ** 2) / (2 * sigma**2)
            )
    return img


# ------------------------------------------------------------------------------------------------
def test_deformation_to_strain_exact_polar_split():
    eps = np.array([[0.01, 0.003], [0.003, -0.02]])
    F = rotation_xy(0.3) @ (np.eye(2) + eps)
    s = deformation_to_strain(F)
    assert s["rotation"] == pytest.approx(0.3, abs=1e-12)
    assert s["exx"] == pytest.approx(0.01, abs=1e-12)
    assert s["eyy"] == pytest.approx(-0.02, abs=1e-12)
    assert s["exy"] == pytest.approx(0.003, abs=1e-12)
    # small displacement gradient: the linear definitions, ω = (∂ux/∂y − ∂uy/∂x)/2
    D = np.array([[1e-4, 3e-4], [-1e-4, 0.0]])
    s = deformation_to_strain(np.eye(2) + D)
    assert s["exy"] == pytest.approx(1e-4, abs=1e-7)
    assert s["rotation"] == pytest.approx(2e-4, abs=1e-7)


@pytest.mark.parametrize("with_oxygen", [False, True])
def test_uniform_strain_from_positions(with_oxygen):
    """1 % tensile strain along x, 0.02 px noise: mean strain within 5e-4 of the truth."""
    rng = np.random.default_rng(0)
    truth = srtio3_positions(with_oxygen=with_oxygen)
    pos = deform(truth, [[1.01, 0.0], [0.0, 1.0]]) + rng.normal(0, 0.02, truth.shape)
    s = strain_from_positions(pos, pixel_size_A=0.2, reference=REF)
    assert s["valid"].all() and s["on_lattice"].all()
    assert np.mean(s["exx"]) == pytest.approx(0.01, abs=5e-4)
    for key in ("eyy", "exy", "rotation"):
        assert abs(np.mean(s[key])) < 5e-4, key
    # the homogeneous fit over all columns is tighter still
    assert s["global"]["exx"] == pytest.approx(0.01, abs=1e-4)
    assert abs(s["global"]["eyy"]) < 1e-4
    np.testing.assert_allclose(s["a_vec"], REF[0])
    np.testing.assert_allclose(s["a_vec_measured"], [0.0, 20.2], atol=5e-3)
    np.testing.assert_allclose(s["a_vec_A"], [0.0, 4.0])
    # displacements grow linearly along x: u_x = 0.01 (x − x̄)
    x = truth[:, 1]
    np.testing.assert_allclose(s["displacement_px"][:, 1], 0.01 * (x - x.mean()), atol=0.1)
    assert s["displacement_A"].shape == pos.shape
    # indexed on the Sr lattice of the reference: Sr, Ti–O (and the two O) sites
    n_sites = 4 if with_oxygen else 2
    assert s["sublattice"].max() + 1 == n_sites


def test_uniform_rotation_and_shear_from_positions():
    rng = np.random.default_rng(1)
    truth = srtio3_positions()
    theta = np.deg2rad(3.0)
    pos = deform(truth, rotation_xy(theta)) + rng.normal(0, 0.02, truth.shape)
    s = strain_from_positions(pos, reference=REF)
    assert np.mean(s["rotation"]) == pytest.approx(theta, abs=2e-4)
    assert s["global"]["rotation"] == pytest.approx(theta, abs=5e-5)
    for key in ("exx", "eyy", "exy"):
        assert abs(np.mean(s[key])) < 5e-4, key
    # pure shear exy = 0.005 and compression eyy = -0.01 together
    F = np.array([[1.0, 0.005], [0.005, 0.99]])
    pos = deform(truth, F) + rng.normal(0, 0.02, truth.shape)
    s = strain_from_positions(pos, reference={"a_vec": REF[0], "b_vec": REF[1]})
    assert np.mean(s["exy"]) == pytest.approx(0.005, abs=5e-4)
    assert np.mean(s["eyy"]) == pytest.approx(-0.01, abs=5e-4)
    assert abs(np.mean(s["rotation"])) < 5e-4


def test_reference_choices():
    rng = np.random.default_rng(2)
    truth = srtio3_positions()
    pos = deform(truth, [[1.01, 0.0], [0.0, 1.0]]) + rng.normal(0, 0.02, truth.shape)
    # no reference: the lattice of the same columns, so a uniform strain reads as zero
    s = strain_from_positions(pos)
    assert abs(np.mean(s["exx"])) < 5e-4 and abs(s["global"]["exx"]) < 1e-12
    # a strained film (x > 200 px) on an unstrained substrate given as the reference region
    film = truth[:, 1] > 200
    pos = truth.copy()
    pos[film, 1] = 200 + (truth[film, 1] - 200) * 1.02
    pos += rng.normal(0, 0.02, pos.shape)
    s = strain_from_positions(pos, reference=~film)
    interior = film & (truth[:, 1] > 230)
    assert np.mean(s["exx"][interior]) == pytest.approx(0.02, abs=5e-4)
    assert abs(np.mean(s["exx"][truth[:, 1] < 170])) < 5e-4


def test_fit_reference_lattice_indices_and_sites():
    truth = srtio3_positions(n=8, with_oxygen=True)
    fit = fit_reference_lattice(truth, REF[0], REF[1])
    np.testing.assert_allclose(fit["a_vec"], REF[0], atol=1e-9)
    assert fit["residual_rms_px"] < 1e-9
    assert np.bincount(fit["sublattice"]).tolist() == [64, 64, 64, 64]
    taus = {tuple(np.round(t % 1.0, 6)) for t in fit["tau"]}
    assert taus == {(0.0, 0.0), (0.5, 0.5), (0.0, 0.5), (0.5, 0.0)}


def test_off_lattice_columns_are_flagged():
    truth = srtio3_positions(n=16)
    extra = np.array([[35.0, 45.0], [123.0, 207.0], [255.0, 64.0]])
    s = strain_from_positions(np.vstack([truth, extra]), reference=REF)
    assert not s["on_lattice"][-3:].any() and s["on_lattice"][:-3].all()
    assert np.isnan(s["exx"][-3:]).all()
    assert np.abs(s["exx"][:-3]).max() < 1e-9


def test_strain_map_interpolates_column_values():
    truth = srtio3_positions(n=8)
    s = strain_from_positions(deform(truth, [[1.01, 0.0], [0.0, 1.0]]), reference=REF)
    pos = deform(truth, [[1.01, 0.0], [0.0, 1.0]])
    maps = strain_map(pos, s, (200, 220))
    assert set(maps) == {"exx", "eyy", "exy", "rotation"} and maps["exx"].shape == (200, 220)
    assert np.isnan(maps["exx"][0, 0])  # outside the convex hull of the columns
    np.testing.assert_allclose(maps["exx"][80:120, 80:120], 0.01, atol=1e-9)
    near = strain_map(pos, s, (200, 220), method="nearest")
    assert np.isfinite(near["exx"]).all()


# ------------------------------------------------------------------------------------------------
def lattice_image(F_xy=None, displacement=None, size=256, a=16.0, sigma=2.0):
    """Positions (covering the image and a margin) and the rendered image."""
    n = int(size / a) + 6
    i, j = np.mgrid[-3:n, -3:n]
    ref = np.column_stack([i.ravel() * a, j.ravel() * a])
    pos = ref.copy()
    if F_xy is not None:
        pos = deform(ref, F_xy, centre=(size / 2, size / 2))
    if displacement is not None:
        pos = pos + displacement(ref)
    return ref, pos, render(pos, (size, size), sigma)


def test_gpa_uniform_strain_matches_truth():
    _, pos, img = lattice_image([[1.01, 0.0], [0.0, 1.0]])
    g1, g2 = reciprocal_vectors((0.0, 16.0), (16.0, 0.0))
    res = gpa(img, g1, g2)
    e = res["edge_px"]
    inner = (slice(e, -e), slice(e, -e))
    assert np.mean(res["exx"][inner]) == pytest.approx(0.01, abs=1e-4)  # target 1e-3
    for key in ("eyy", "exy", "rotation"):
        assert np.abs(res[key][inner]).max() < 1e-4, key
    # the two strongest spots are the first-order ones, at the strained lattice's frequencies
    found = sorted(bragg_peaks(img), key=lambda g: abs(g[1]))
    np.testing.assert_allclose(found[0], [1 / 16, 0.0], atol=2e-4)
    np.testing.assert_allclose(found[1], [0.0, 1 / (16 * 1.01)], atol=2e-4)
    # automatic spots: strain relative to the image's own lattice, i.e. ≈ 0
    auto = gpa_strain(img)
    assert abs(np.mean(auto["exx"][inner])) < 1e-3
    # positions give the same number
    s = strain_from_positions(pos, reference=((0.0, 16.0), (16.0, 0.0)))
    assert np.mean(s["exx"]) == pytest.approx(np.mean(res["exx"][inner]), abs=1e-4)


def test_gpa_rotation_and_reference_region():
    theta = np.deg2rad(1.0)
    _, _, img = lattice_image(rotation_xy(theta))
    g1, g2 = reciprocal_vectors((0.0, 16.0), (16.0, 0.0))
    res = gpa(img, g1, g2)
    e = res["edge_px"]
    assert np.mean(res["rotation"][e:-e, e:-e]) == pytest.approx(theta, abs=1e-4)
    assert abs(np.mean(res["exx"][e:-e, e:-e])) < 1e-4
    region = np.zeros(img.shape, dtype=bool)
    region[100:150, 100:150] = True
    rel = gpa(img, g1, g2, reference_region=region)
    assert abs(np.mean(rel["rotation"][e:-e, e:-e])) < 1e-4


def test_per_column_strain_agrees_with_gpa_on_a_varying_field():
    """u_x = A sin(2π x / L): εxx = 0.01 cos(2π x / L). Compare both maps at interior columns."""
    rng = np.random.default_rng(4)
    size, L = 256, 256.0
    amp = 0.01 * L / (2 * np.pi)

    def disp(ref):
        return np.column_stack([np.zeros(len(ref)), amp * np.sin(2 * np.pi * ref[:, 1] / L)])

    ref, pos, img = lattice_image(displacement=disp, size=size)
    res = gpa(img, *reciprocal_vectors((0.0, 16.0), (16.0, 0.0)))
    margin = res["edge_px"]
    inside = np.all((pos > margin) & (pos < size - margin), axis=1)
    noisy = pos + rng.normal(0, 0.02, pos.shape)
    s = strain_from_positions(noisy, reference=((0.0, 16.0), (16.0, 0.0)))
    truth = 0.01 * np.cos(2 * np.pi * ref[inside, 1] / L)
    for key in ("exx", "eyy", "exy", "rotation"):
        g = sample_map(res[key], pos[inside])
        c = s[key][inside]
        t = truth if key == "exx" else 0.0
        assert np.sqrt(np.mean((g - t) ** 2)) < 5e-4, key  # GPA vs truth (smoothing only)
        assert np.sqrt(np.mean((c - g) ** 2)) < 1e-3, key  # per column (0.02 px noise) vs GPA
        assert abs(np.mean(c - g)) < 2e-4, key


def test_bad_inputs():
    truth = srtio3_positions(n=6)
    with pytest.raises(InputError, match="at least 3"):
        strain_from_positions(truth[:2])
    with pytest.raises(InputError, match="NaN"):
        strain_from_positions(np.vstack([truth, [[np.nan, 1.0]]]))
    with pytest.raises(InputError, match="collinear"):
        strain_from_positions(np.column_stack([np.arange(9.0), np.arange(9.0)]))
    with pytest.raises(InputError, match="not lattice translations"):
        strain_from_positions(truth, reference=((0.0, 13.0), (13.0, 0.0)))
    with pytest.raises(InputError, match="reference"):
        strain_from_positions(truth, reference="substrate")
    with pytest.raises(InputError, match="pixel_size_A"):
        strain_from_positions(truth, pixel_size_A=-1)
    img = np.zeros((64, 64))
    with pytest.raises(InputError, match="collinear"):
        gpa(img, (0.0, 0.1), (0.0, 0.2))
    with pytest.raises(InputError, match="Nyquist"):
        gpa(img, (0.0, 0.6), (0.1, 0.0))
    with pytest.raises(InputError, match="NaN"):
        gpa(np.full((64, 64), np.nan), (0.0, 0.1), (0.1, 0.0))
    with pytest.raises(InputError, match="too small"):
        gpa(np.zeros((8, 8)), (0.0, 0.1), (0.1, 0.0))
    with pytest.raises(InputError, match="flat"):
        bragg_peaks(np.zeros((64, 64)))
    with pytest.raises(InputError, match="Bragg"):
        bragg_peaks(np.add.outer(np.arange(64.0), np.zeros(64)) % 7, min_angle_deg=89.9)
