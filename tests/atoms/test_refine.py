"""Joint Gaussian refinement and centre of mass: accuracy, precision against the CRLB, SCS."""

import csv

import numpy as np
import pytest
from _columns_synth import si110_dumbbells, square_lattice

from emrestore.atoms.detect import find_candidates, looks_like_counts
from emrestore.atoms.refine import ColumnTable, refine_columns, render_columns
from emrestore.atoms.uncertainty import crlb_columns, crlb_position
from emrestore.errors import InputError
from emrestore.evaluate.metrics import match_points


def _per_axis_rmse(table, truth):
    err = table.positions_px - truth
    return float(np.sqrt(np.mean(err**2)))


# ---- noise-free data ------------------------------------------------------------------------
@pytest.mark.parametrize("widths", ["same", "different"])
def test_noise_free_positions_and_scs_exact(widths):
    truth, image, _ = square_lattice(counts=1000.0, background=7.0)
    start = truth + np.random.default_rng(5).uniform(-1, 1, truth.shape)
    table = refine_columns(image, start, widths=widths, noise="gaussian")
    assert table.converged.all()
    assert _per_axis_rmse(table, truth) < 0.01
    assert np.abs(table.scs_px2 / 1000.0 - 1).max() < 0.01
    assert np.allclose(table.width_px, 2.5, rtol=1e-3)
    assert np.allclose(table.background, 7.0, rtol=1e-3)


def test_noise_free_from_automatic_candidates():
    truth, image, _ = square_lattice(counts=1000.0, background=3.0, seed=4)
    table = refine_columns(image, find_candidates(image))
    m = match_points(table.positions_px, truth, radius=2.0)
    assert m.recall == 1.0 and m.precision == 1.0
    assert m.rmse < 0.01


def test_centre_of_mass_is_unbiased_and_does_not_snap_to_pixels():
    truth, image, _ = square_lattice(counts=1000.0, background=5.0, jitter=0.5, seed=6)
    table = refine_columns(image, np.rint(truth), method="com", noise="gaussian")
    err = table.positions_px - truth
    assert np.sqrt(np.mean(err**2)) < 0.01
    # errors must not follow the sub-pixel phase (grid snapping would give err ≈ -frac)
    frac = truth - np.rint(truth)
    assert abs(np.corrcoef(frac.ravel(), err.ravel())[0, 1]) < 0.5


def test_elliptical_columns():
    rng = np.random.default_rng(7)
    pos = np.array([(y, x) for y in range(12, 120, 20) for x in range(12, 120, 20)], float)
    pos += rng.uniform(-0.5, 0.5, pos.shape)
    yy, xx = np.mgrid[0:128, 0:128]
    major, minor, ang = 3.0, 2.0, np.radians(30)
    img = np.full((128, 128), 2.0)
    e1 = np.array([-np.sin(ang), np.cos(ang)])  # (y, x) of the major axis, displayed angle
    e2 = np.array([np.cos(ang), np.sin(ang)])
    for y, x in pos:
        u = (yy - y) * e1[0] + (xx - x) * e1[1]
        v = (yy - y) * e2[0] + (xx - x) * e2[1]
        img += 40.0 * np.exp(-0.5 * (u**2 / major**2 + v**2 / minor**2))
    table = refine_columns(img, pos + 0.4, elliptical=True, noise="gaussian")
    assert _per_axis_rmse(table, pos) < 0.01
    assert np.allclose(table.width_major_px, major, rtol=1e-3)
    assert np.allclose(table.width_minor_px, minor, rtol=1e-3)
    assert np.allclose(np.degrees(table.width_angle_rad) % 180, 30.0, atol=0.1)
    assert np.allclose(table.scs_px2, 2 * np.pi * 40.0 * major * minor, rtol=1e-3)


def test_plane_background_and_different_widths():
    rng = np.random.default_rng(8)
    pos = np.array([(y, x) for y in range(10, 118, 16) for x in range(10, 118, 16)], float)
    pos += rng.uniform(-0.5, 0.5, pos.shape)
    widths = np.where(np.arange(len(pos)) % 2 == 0, 2.2, 2.9)
    yy, xx = np.mgrid[0:128, 0:128]
    plane = 20.0 + 0.05 * yy - 0.03 * xx
    img = render_columns((128, 128), pos, 900.0, widths, plane)
    table = refine_columns(img, pos + 0.3, widths="different", background="plane",
                           noise="gaussian")
    assert _per_axis_rmse(table, pos) < 0.01
    assert np.allclose(table.width_px, widths, rtol=2e-3)
    assert np.allclose(table.scs_px2, 900.0, rtol=5e-3)


# ---- Poisson data: precision against the CRLB --------------------------------------------------
@pytest.mark.parametrize(("counts", "n_images"), [(100.0, 4), (1000.0, 1), (10000.0, 1)])
def test_poisson_precision_at_crlb_and_unbiased_scs(counts, n_images):
    # 961 well-separated columns per image, σ = 2.5 px, background 1 count/px, automatic noise
    # model. At 100 counts the shared width's error is common to all columns of an image and moves
    # its mean SCS by about ±1 %, so the bias is measured over several images there.
    crlb = crlb_position(counts, 2.5, 1.0)
    scs_means = []
    for k in range(n_images):
        truth, image, rng = square_lattice(shape=(448, 448), counts=counts, background=1.0,
                                           seed=int(counts) + k)
        noisy = rng.poisson(image).astype(np.float32)
        table = refine_columns(noisy, truth + rng.uniform(-1, 1, truth.shape))
        assert table.noise == "poisson"
        m = match_points(table.positions_px, truth, radius=3.0)
        assert m.recall >= 0.998 and m.precision == 1.0
        assert m.rmse / np.sqrt(2) / crlb <= 1.15
        # the reported 1-σ uncertainties are calibrated
        assert np.median(table.sigma_y_px) / crlb == pytest.approx(1.0, abs=0.1)
        scs_means.append(table.scs_px2[m.pred_index].mean())
    assert abs(np.mean(scs_means) / counts - 1) < 0.01


def test_known_zero_background_avoids_boundary_bias():
    truth, image, rng = square_lattice(shape=(512, 512), counts=100.0, background=0.0, seed=11)
    noisy = rng.poisson(image).astype(np.float32)
    table = refine_columns(noisy, truth + rng.uniform(-1, 1, truth.shape), background=0.0)
    assert _per_axis_rmse(table, truth) / crlb_position(100.0, 2.5, 0.0) <= 1.15
    assert abs(table.scs_px2.mean() / 100.0 - 1) < 0.01


def test_si110_dumbbells_both_columns_found_at_crlb():
    truth, image, rng, s, bg, d = si110_dumbbells(sigma_A=0.45, counts=1000.0, seed=3)
    noisy = rng.poisson(image).astype(np.float32)
    table = refine_columns(noisy, find_candidates(noisy), pixel_size_A=0.1)
    m = match_points(table.positions_px, truth, radius=0.3 * d)
    assert m.n_false_negative == 0 and m.n_false_positive == 0
    crlb = crlb_columns([[0.0, 0.0], [d, 0.0]], 1000.0, s, bg, widths="same")
    assert m.rmse / np.sqrt(2) <= 1.3 * np.sqrt(np.mean(crlb[0] ** 2))


def test_merged_dumbbells_are_split_by_model_selection():
    # d = 2.47 σ: the candidates merge most pairs; the split step recovers them
    truth, image, rng, _, _, d = si110_dumbbells(shape=(256, 256), sigma_A=0.55,
                                                  counts=3000.0, seed=5)
    noisy = rng.poisson(image).astype(np.float32)
    cand = find_candidates(noisy)
    assert len(cand) < len(truth)
    table = refine_columns(noisy, cand)
    assert table.info["n_split"] > 0
    m = match_points(table.positions_px, truth, radius=0.3 * d)
    assert m.recall == 1.0 and m.precision == 1.0


def test_offset_analog_data_use_least_squares_and_absorb_offset():
    truth, image, rng = square_lattice(counts=3000.0, background=0.0, seed=12)
    analog = np.rint(33000.0 + image + rng.normal(0, 8.0, image.shape)).astype(np.float32)
    assert not looks_like_counts(analog)
    table = refine_columns(analog, truth + 0.5)
    assert table.noise == "gaussian"
    assert np.allclose(np.median(table.background), 33000.0, atol=1.0)
    assert _per_axis_rmse(table, truth) < 0.1
    assert abs(np.median(table.scs_px2) / 3000.0 - 1) < 0.02


def test_counts_are_recognised():
    _, image, rng = square_lattice(counts=500.0, background=2.0)
    assert looks_like_counts(rng.poisson(image))
    assert not looks_like_counts(image + 0.5)  # not integers


# ---- table and units -------------------------------------------------------------------------
def test_table_units_and_csv(tmp_path):
    truth, image, _ = square_lattice(shape=(96, 96), counts=1000.0, background=2.0)
    t = refine_columns(image, truth, pixel_size_A=0.2, noise="gaussian")
    assert isinstance(t, ColumnTable)
    assert np.allclose(t.x_A, t.x_px * 0.2) and np.allclose(t.scs_A2, t.scs_px2 * 0.04)
    path = tmp_path / "cols.csv"
    t.to_csv(path)
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == len(truth)
    for name in ("x_px", "y_px", "x_A", "y_A", "sigma_x_px", "sigma_y_A", "scs_counts_px2",
                 "scs_counts_A2", "width_px", "background_counts", "converged"):
        assert name in rows[0]
    assert float(rows[0]["x_A"]) == pytest.approx(float(rows[0]["x_px"]) * 0.2, rel=1e-6)
    t2 = refine_columns(image, truth, noise="gaussian")
    assert np.isnan(t2.x_A).all()
    t2.to_csv(path)
    header = open(path).readline()
    assert "scs_counts_px2" in header and "_A" not in header
    assert set(t2.as_dict()) == set(header.strip().split(","))


# ---- bad input -------------------------------------------------------------------------------
def test_bad_input_is_refused_clearly():
    truth, image, _ = square_lattice(shape=(64, 64))
    with pytest.raises(InputError, match="no candidate"):
        refine_columns(image, np.zeros((0, 2)))
    with pytest.raises(InputError, match="smaller than one column window"):
        refine_columns(image[:10, :10], [[5.0, 5.0]], width_px=2.5)
    bad = image.copy()
    bad[1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        refine_columns(bad, truth)
    for ps in (0.0, -0.1, float("nan")):
        with pytest.raises(InputError, match="pixel size"):
            refine_columns(image, truth, pixel_size_A=ps)
    with pytest.raises(InputError, match="outside the image"):
        refine_columns(image, [[100.0, 5.0]])
    with pytest.raises(InputError):
        refine_columns(image, truth, method="magic")
    with pytest.raises(InputError):
        refine_columns(image, truth, noise="poisson-ish")
    with pytest.raises(InputError, match="negative"):
        refine_columns(image - 100.0, truth, noise="poisson")
