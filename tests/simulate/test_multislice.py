"""Multislice engine (abTEM, optional extra): physics on tiny cells, cache, conventions.

The tests that run abTEM are skipped, with the reason shown, when abTEM is not installed; the
cell builder, the Fourier tiling and the parameter checks run without it.
"""

import dataclasses
import math
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
from ase import Atoms

from emrestore.errors import ConfigError, InputError
from emrestore.simulate import multislice as ms
from emrestore.simulate.multislice import (
    MultisliceParams,
    column_sites,
    simulate_multislice,
    tile_periodic,
    zone_axis_cell,
)
from emrestore.simulate.optics import Probe, probe_intensity

SKIP_REASON = "abTEM is not installed (optional extra: pip install emrestore[multislice])"

A_STO = 3.905


@pytest.fixture(scope="module")
def abtem():
    return pytest.importorskip("abtem", reason=SKIP_REASON)


# Tiny and coarse on purpose: SrTiO3 [001], one cell scanned (the potential repeated 2 x 2 so the
# probe does not meet itself), 2 and 4 cells thick, 2 frozen phonons, HAADF 70-200 mrad at 200 kV.
TINY = MultisliceParams(voltage_kV=200.0, convergence_mrad=25.0, haadf_mrad=(70.0, 200.0),
                        frozen_phonons=2, seed=3, lateral_padding_A=2.0, beam_spread=0.0,
                        scan_step_A=0.3, device="cpu")


@pytest.fixture(scope="module")
def sto_run(abtem, tmp_path_factory):
    cache = tmp_path_factory.mktemp("ms-cache")
    cell = zone_axis_cell("SrTiO3", (0, 0, 1), 4 * A_STO)
    result = simulate_multislice(cell, TINY, cache_dir=cache, shape=(10, 10),
                                 pixel_size_A=A_STO / 10, thickness_series_A=[2 * A_STO,
                                                                              4 * A_STO],
                                 num_workers=1)
    return cell, cache, result


def test_srtio3_haadf_z_contrast_and_thickness(sto_run):
    _, _, result = sto_run
    haadf = result["HAADF"]
    assert haadf.array.shape == (2, 10, 10) and haadf.array.dtype == np.float32
    assert haadf.pixel_size_A == pytest.approx(A_STO / 10)
    assert haadf.metadata["detector_mrad"] == [70.0, 200.0]
    np.testing.assert_allclose(result["thickness_A"], [2 * A_STO, 4 * A_STO], rtol=1e-6)
    img = haadf.array
    sr, tio, o = img[:, 0, 0], img[:, 5, 5], 0.5 * (img[:, 0, 5] + img[:, 5, 0])
    for t in range(2):  # Sr (Z = 38) > Ti-O (22 + 8) > O (8), at both thicknesses
        assert sr[t] > 1.3 * tio[t] > 1.3 * o[t]
    assert np.all(sr[1] > sr[0]) and tio[1] > tio[0] and o[1] > o[0]
    assert img[1].mean() > 1.3 * img[0].mean()  # more scattering to high angles when thicker
    # fractions of the incident beam: HAADF a few percent at most, BF + ABF most of the beam
    assert 0 < img.max() < 0.1
    bright = result["BF"].array + result["ABF"].array
    assert np.all(bright > 0.5) and np.all(bright < 1.0)
    assert result["cell_scan"].shape[:2] == (4, 2)


def test_cache_hit_returns_identical_data_without_recomputation(sto_run, monkeypatch):
    cell, cache, first = sto_run
    assert not first["HAADF"].metadata["from_cache"]
    assert len(list(cache.glob("*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the cache was missed: abTEM ran again")

    monkeypatch.setattr(ms, "_run_abtem", fail)
    again = simulate_multislice(cell, TINY, cache_dir=cache, shape=(10, 10),
                                pixel_size_A=A_STO / 10,
                                thickness_series_A=[2 * A_STO, 4 * A_STO])
    assert again["HAADF"].metadata["from_cache"]
    for name in ms.DETECTORS:
        np.testing.assert_array_equal(again[name].array, first[name].array)
    # the source blur is applied after the cache: a hit, and a smoother image
    blurred = simulate_multislice(cell, dataclasses.replace(TINY, source_fwhm_A=0.8),
                                  cache_dir=cache, shape=(10, 10), pixel_size_A=A_STO / 10,
                                  thickness_series_A=[2 * A_STO, 4 * A_STO])
    assert blurred["HAADF"].metadata["from_cache"]
    assert blurred["HAADF"].array.max() < first["HAADF"].array.max()
    # another phonon seed is another key
    with pytest.raises(AssertionError, match="cache was missed"):
        simulate_multislice(cell, dataclasses.replace(TINY, seed=4), cache_dir=cache,
                            thickness_series_A=[2 * A_STO])


def test_finite_specimen_is_padded_and_sampled_at_pixel_centres(abtem):
    # one Au atom at (x, y) = (1.5, 3.0) Å in a 4.5 x 4.5 x 2 Å box: its HAADF peak is at pixel
    # (row, col) = (y, x) / dr, which also checks the [x, y] -> [row, col] transposition
    atoms = Atoms("Au", positions=[(1.5, 3.0, 1.0)], cell=np.diag([4.5, 4.5, 2.0]), pbc=False)
    params = MultisliceParams(frozen_phonons=0, lateral_padding_A=2.5, beam_spread=0.0,
                              device="cpu")
    result = simulate_multislice(atoms, params, pixel_size_A=0.3, num_workers=1)
    img = result["HAADF"].array
    assert img.shape == (15, 15)
    assert np.unravel_index(np.argmax(img), img.shape) == (10, 5)
    assert img[10, 5] > 20 * np.median(img)
    assert result["HAADF"].metadata["layout"]["mode"] == "finite"
    assert "cell_scan" not in result


def test_abtem_probe_matches_the_fast_model_probe(abtem):
    # aberrations that break every symmetry: a sign or axis mix-up would mirror the probe
    probe = Probe(200.0, 25.0, defocus_A=20.0, c3_A=1e4, astigmatism_A=8.0,
                  astigmatism_angle_rad=0.3, coma_A=1500.0, coma_angle_rad=0.4,
                  threefold_A=800.0, threefold_angle_rad=1.0)
    params = MultisliceParams.from_probe(probe)
    n, dx = 256, 0.05
    with abtem.config.set({"diagnostics.progress_bar": False, "device": "cpu"}):
        wave = abtem.Probe(energy=params.voltage_kV * 1e3,
                           semiangle_cutoff=params.convergence_mrad, extent=n * dx, gpts=n,
                           C10=params.defocus_A, C30=params.c3_A, C12=params.astigmatism_A,
                           phi12=params.astigmatism_angle_rad, C21=params.coma_A,
                           phi21=params.coma_angle_rad, C23=params.threefold_A,
                           phi23=params.threefold_angle_rad)
        psi = wave.build(scan=[((n // 2) * dx, (n // 2) * dx)]).compute().array
    theirs = (np.abs(np.asarray(psi)) ** 2).reshape(n, n).T  # [x, y] -> [row, col]
    theirs = theirs / theirs.sum()
    ours = probe_intensity((n, n), dx, probe)
    assert np.abs(theirs - ours).max() < 0.05 * ours.max()
    assert np.abs(theirs[::-1, ::-1] - ours).max() > 0.3 * ours.max()  # mirrored: far off


def test_importing_the_module_does_not_import_abtem():
    code = ("import sys, emrestore, emrestore.simulate.multislice; "
            "sys.exit(1 if 'abtem' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_clear_error_without_abtem(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    cell = zone_axis_cell("SrTiO3", (0, 0, 1), A_STO)
    with pytest.raises(ImportError, match=r"pip install emrestore\[multislice\]"):
        simulate_multislice(cell, TINY)
    monkeypatch.setitem(sys.modules, "abtem", None)
    with pytest.raises(ImportError, match=r"emrestore\[multislice\]"):
        ms._import_abtem()
    assert not ms.abtem_available()


# ---- without abTEM ------------------------------------------------------------------------


def test_params_share_the_fast_model_optics():
    probe = Probe(300.0, 21.0, defocus_A=-12.0, c3_A=3e4, c5_A=1e6, coma_A=50.0,
                  source_fwhm_A=0.6)
    p = MultisliceParams.from_probe(probe, frozen_phonons=4)
    assert p.probe == Probe(300.0, 21.0, defocus_A=-12.0, c3_A=3e4, c5_A=1e6, coma_A=50.0,
                            source_fwhm_A=0.6)
    assert p.frozen_phonons == 4
    ranges = p.detector_ranges_mrad()
    assert ranges["ABF"] == (10.5, 21.0) and ranges["BF"] == (0.0, 10.5)
    # the automatic grid keeps 200 mrad inside abTEM's 2/3 anti-aliasing aperture
    assert p.wavelength_A / (3 * p.grid_sampling_A) >= 0.2
    assert p.nyquist_step_A == pytest.approx(p.wavelength_A / (4 * 0.021))
    assert MultisliceParams.from_dict(p.to_dict()) == p
    with pytest.raises(ConfigError, match="sampling_A"):
        MultisliceParams(sampling_A=0.1)
    with pytest.raises(ConfigError, match="device"):
        MultisliceParams(device="tpu")
    with pytest.raises(ConfigError, match="ordered"):
        MultisliceParams(adf_mrad=(70.0, 40.0))


@pytest.mark.parametrize("material, axis, size, n_columns", [
    ("SrTiO3", (0, 0, 1), (3.905, 3.905), 4),
    ("SrTiO3", (1, 1, 0), (3.905, 5.523), 6),
    ("Si", (1, 1, 0), (5.431, 7.681), 8),
    ("MoS2-bulk", (0, 0, 1), (3.16, 5.473), 4),
])
def test_zone_axis_cell_is_rectangular_and_complete(material, axis, size, n_columns):
    cell = zone_axis_cell(material, axis, 40.0)
    lx, ly, lz = np.diag(cell.cell.array)
    assert (lx, ly) == pytest.approx(size, abs=2e-3)
    assert lz == pytest.approx(40.0, abs=cell.info["period_A"] / 2)
    assert np.allclose(cell.cell.array, np.diag([lx, ly, lz])) and all(cell.pbc)
    frac = cell.get_scaled_positions(wrap=False)
    assert np.all((frac >= -1e-9) & (frac < 1))
    # every atom has a distinct site and the density is the crystal's
    assert len(np.unique(np.round(cell.positions, 4), axis=0)) == len(cell)
    assert len(column_sites(cell)["label"]) == n_columns


def test_srtio3_columns_and_layered_cells():
    sites = column_sites(zone_axis_cell("SrTiO3", (0, 0, 1), 7.81))
    assert sorted(sites["label"].tolist()) == ["O", "O", "OTi", "Sr"]
    assert sites["composition"][list(sites["label"]).index("Sr"), 38] == 2
    mono = zone_axis_cell("MoS2-1L", (0, 0, 1))
    assert len(mono) == 6 and mono.info["repeats"] == 1
    with pytest.raises(InputError, match="layered"):
        zone_axis_cell("MoS2-1L", (0, 0, 1), 20.0)
    with pytest.raises(InputError, match="rectangular"):
        zone_axis_cell("DyScO3", (1, 1, 0))


def test_tile_periodic_is_exact_for_band_limited_images():
    ly, lx = 3.0, 4.0

    def f(y, x):
        return (1.0 + 0.5 * np.cos(2 * math.pi * (2 * x / lx + y / ly) + 0.3)
                + 0.2 * np.sin(2 * math.pi * 3 * y / ly))

    ny, nx = 9, 12
    y, x = np.meshgrid(np.arange(ny) * ly / ny, np.arange(nx) * lx / nx, indexing="ij")
    samples = f(y, x)
    out = tile_periodic(samples, (ly, lx), (17, 23), 0.37, origin_A=(0.1, -0.4))
    yy, xx = np.meshgrid(0.1 + 0.37 * np.arange(17), -0.4 + 0.37 * np.arange(23),
                         indexing="ij")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, f(yy, xx), atol=2e-6)
    # a rotated crystal: the same function at rotated coordinates
    t = math.radians(30.0)
    rot = tile_periodic(samples, (ly, lx), (11, 13), 0.29, rotation_deg=30.0)
    yy, xx = np.meshgrid(0.29 * np.arange(11), 0.29 * np.arange(13), indexing="ij")
    np.testing.assert_allclose(
        rot, f(-math.sin(t) * xx + math.cos(t) * yy, math.cos(t) * xx + math.sin(t) * yy),
        atol=2e-6)
    # the fast path: the series on a fine periodic grid, then a periodic cubic spline
    fast = tile_periodic(samples, (ly, lx), (11, 13), 0.29, rotation_deg=30.0, method="spline")
    np.testing.assert_allclose(fast, rot, atol=1e-3 * np.ptp(samples))
    # source blur keeps the mean and damps the modulation; a stack keeps its leading axis
    blurred = tile_periodic(np.stack([samples, 2 * samples]), (ly, lx), (30, 40), 0.1,
                            source_fwhm_A=1.0)
    assert blurred.shape == (2, 30, 40)
    assert blurred[0].std() < out.std() and blurred[1].mean() == pytest.approx(2.0, rel=0.05)


def test_bad_atoms_are_rejected():
    skew = Atoms("Si", positions=[(0, 0, 0)], cell=[[4, 0, 0], [1, 4, 0], [0, 0, 4]], pbc=True)
    with pytest.raises(InputError, match="rectangular"):
        simulate_multislice(skew, TINY)
    with pytest.raises(InputError, match=r"ase\.Atoms"):
        simulate_multislice(np.zeros((3, 3)), TINY)
