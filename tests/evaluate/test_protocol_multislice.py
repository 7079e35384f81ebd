"""The multislice set of the benchmark: a multislice series and its linear-model twin.

A synthetic cell "scan" (periodic Gaussians on the columns of a real SrTiO3 cell, as in
tests/simulate/test_multislice_set.py) stands in for abTEM, so these tests run without it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import re

import numpy as np
import pytest

from emrestore.errors import ConfigError, InputError
from emrestore.evaluate import protocol as P
from emrestore.evaluate import report as R
from emrestore.simulate import multislice_set
from emrestore.simulate.multislice import MultisliceParams, zone_axis_cell
from emrestore.simulate.multislice_set import reference_cells_from_scan, save_reference_cells

PARAMS = MultisliceParams(voltage_kV=200, convergence_mrad=25, source_fwhm_A=0.5,
                          frozen_phonons=1)
DOSES = (1000.0, 20000.0)


def _write_cells(path, scan, splits=("test", "train")):
    cells = []
    for name, material, axis, split in (("SrTiO3[001]", "SrTiO3", (0, 0, 1), "test"),
                                         ("Si[110]", "Si", (1, 1, 0), "train")):
        if split not in splits:
            continue
        cell = zone_axis_cell(material, axis, thickness_A=12.0)
        cells += reference_cells_from_scan(name, material, axis, cell, scan(cell),
                                           [cell.cell[2, 2]], PARAMS, split)
    save_reference_cells(cells, path)
    return path


@pytest.fixture(scope="module")
def cells_file(tmp_path_factory, gaussian_cell_scan):
    return _write_cells(tmp_path_factory.mktemp("cells") / "cells.npz", gaussian_cell_scan)


@pytest.fixture(scope="module")
def bench(cells_file):
    return P.BenchmarkConfig(materials=("Pt[001]",), doses_e_per_A2=DOSES, size_px=80,
                             thicknesses_A=(), multislice_images=1,
                             multislice_cells=str(cells_file), showcase_dose_e_per_A2=20000.0)


@pytest.fixture(scope="module")
def result(bench):
    return P.run_benchmark(bench, ["raw", "gaussian"], progress=False)


@pytest.fixture(scope="module")
def report_dir(result, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "bench"
    R.write_report(result, out, take_screenshot=False)
    return out


def _rows(result, series):
    return [r for r in result.rows if r["series"] == series]


# ------------------------------------------------------------------------------------------------
def test_config_defaults_and_checks():
    assert P.BenchmarkConfig().multislice_images == 12
    assert P.BenchmarkConfig.quick().multislice_images == 1
    assert P.BenchmarkConfig().multislice_cells is None
    with pytest.raises(ConfigError):
        P.BenchmarkConfig(multislice_images=-1)


def test_scenes_pair_each_multislice_scene_with_its_twin(bench):
    scenes = P.build_scenes(bench)
    ms = [s for s in scenes if s.series in P.MULTISLICE_SERIES]
    assert [s.series for s in ms] == ["multislice", "multislice-twin"]
    assert ms[0].entropy == ms[1].entropy  # the same draws
    assert ms[0].doses_e_per_A2 == DOSES
    dose_entropies = {s.entropy for s in scenes if s.series == "dose"}
    assert ms[0].entropy not in dose_entropies
    off = dataclasses.replace(bench, multislice_images=0)
    assert not any(s.series in P.MULTISLICE_SERIES for s in P.build_scenes(off))
    assert "switched off" in P.multislice_status(off)
    # the sampler settings: the dose series' chain, every frame a test reference cell
    config = P.sampler_config("Pt", (0, 0, 1), 1000.0, 200.0, bench,
                              multislice_model="linear")
    assert config.multislice_fraction == 1.0 and config.multislice_split == "test"
    assert config.multislice_model == "linear"
    assert config.multislice_cells == bench.multislice_cells
    assert config.stem.jitter_sigma_A[1] <= bench.max_jitter_A
    assert config.post.affine_probability == 0.0 and config.contrast.power_probability == 0.0


def test_twin_shares_geometry_and_truth_but_not_the_image(bench):
    ms_scene, twin_scene = [s for s in P.build_scenes(bench) if s.series in P.MULTISLICE_SERIES]
    ms, twin = P.simulate_scene(ms_scene, bench), P.simulate_scene(twin_scene, bench)
    assert len(ms) == len(twin) == len(DOSES)
    for a, b in zip(ms, twin):
        assert a.material == b.material == "SrTiO3 [001]"
        assert a.thickness_A == b.thickness_A and np.isfinite(a.thickness_A)
        assert a.pixel_size_A == b.pixel_size_A and a.gain == b.gain
        # the same columns (centroids weighted by each model's atom profiles: equal to
        # rounding for the aligned columns of a perfect crystal)
        np.testing.assert_allclose(a.truth_px, b.truth_px, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(a.truth_species, b.truth_species)
        # Sr and Ti-O columns are truth; the O columns, which HAADF does not show, are hidden
        assert len(a.truth_px) > 10 and len(a.hidden_px) > 10
        np.testing.assert_allclose(a.hidden_px, b.hidden_px, rtol=0, atol=1e-9)
        assert np.isnan(a.truth_scs).all() and np.isnan(b.truth_scs).all()
        assert not np.array_equal(a.reference, b.reference)  # the image formation differs
        # ... but the same columns through the same probe: strongly correlated references
        assert np.corrcoef(a.reference.ravel(), b.reference.ravel())[0, 1] > 0.7
    # the same specimen at every dose
    np.testing.assert_array_equal(ms[0].truth_px, ms[1].truth_px)


def test_rows_for_both_series_with_shared_truth(result):
    ms, twin = _rows(result, "multislice"), _rows(result, "multislice-twin")
    want = {(wf, d) for wf in ("raw", "gaussian", P.REFERENCE) for d in DOSES}
    assert {(r["workflow"], r["dose_e_per_A2"]) for r in ms} == want
    assert {(r["workflow"], r["dose_e_per_A2"]) for r in twin} == want
    by = {(r["workflow"], r["dose_e_per_A2"]): r for r in twin}
    for r in ms:
        other = by[(r["workflow"], r["dose_e_per_A2"])]
        assert r["n_truth"] == other["n_truth"] > 10  # scored against the same columns
        assert np.isnan(r["scs_mape_pct"]) and np.isnan(other["scs_mape_pct"])
        if r["workflow"] != P.REFERENCE:
            assert np.isfinite(r["psnr_db"]) and np.isfinite(other["psnr_db"])
    # the noise-free images are localised (the synthetic scan's O columns, 4 % of a Sr column's
    # Σ Z², are too faint to be found in the multislice one)
    assert min(r["f1"] for r in twin if r["workflow"] == P.REFERENCE) > 0.9
    assert min(r["f1"] for r in ms if r["workflow"] == P.REFERENCE) > 0.5
    # the dose series is still there and unchanged in kind
    assert {r["workflow"] for r in _rows(result, "dose")} == {"raw", "gaussian", P.REFERENCE}
    assert result.meta["multislice_note"] is None


def test_gaussian_is_tuned_per_series(result):
    for series in ("dose", *P.MULTISLICE_SERIES):
        assert set(result.tuning[series]) == set(DOSES), series
        assert all(v > 0 for v in result.tuning[series].values())
    item = P.TestImage("x", np.zeros((8, 8), np.float32), 0.15, np.zeros((0, 2)),
                       dose_e_per_A2=DOSES[0], series="multislice-twin")
    assert P._gaussian_sigma_A(result.tuning, item) == result.tuning["multislice-twin"][DOSES[0]]
    item.series = "user"  # user images take the dose series' widths
    assert P._gaussian_sigma_A(result.tuning, item) == result.tuning["dose"][DOSES[0]]


def test_report_shows_the_gap(result, report_dir):
    md = (report_dir / "results.md").read_text()
    assert "## Multislice set (sim-to-sim gap)" in md
    assert "only the image formation differs" in md and "within 1 dB" in md
    summary = md.split("## ")[0]  # the headline number sits in the summary at the top
    assert "PSNR gap multislice − twin: largest" in summary
    section = md.split("## Multislice set (sim-to-sim gap)")[1].split("\n## ")[0]
    lines = [ln for ln in section.splitlines() if re.match(r"\| \d", ln)]
    assert len(lines) == len(DOSES) * 3  # raw, gaussian, infinite-dose per dose
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if cells[1] == P.REFERENCE:
            continue
        psnr_ms, psnr_twin, gap = (float(c) for c in cells[2:5])
        assert np.isfinite([psnr_ms, psnr_twin, gap]).all()
        assert gap == pytest.approx(psnr_ms - psnr_twin, abs=0.011)
    gap = R.multislice_gap(result.rows)
    assert all(np.isfinite(e["psnr_db_gap"]) for e in gap if e["workflow"] != P.REFERENCE)
    page = (report_dir / "index.html").read_text()
    assert "Multislice set (sim-to-sim gap)" in page and "multislice_twin.png" in page
    assert (report_dir / "figures" / "multislice_twin.png").exists()
    # the dose series' figures are its own
    assert (report_dir / "figures" / "gallery_Pt__001.png").exists()
    assert len(list((report_dir / "figures").glob("gallery_*.png"))) == 1
    # results.csv: both series, averaged over their cells (no thickness column value)
    with open(report_dir / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for series in P.MULTISLICE_SERIES:
        mine = [r for r in rows if r["series"] == series]
        assert len(mine) == len(DOSES) * 3, series
        assert all(r["thickness_nm"] == "" and r["material"] == "SrTiO3 [001]" for r in mine)
        assert all(r["scs_mape_pct"] == "" for r in mine)
        assert all(r["psnr_db"] for r in mine if r["workflow"] != P.REFERENCE)
    with open(report_dir / "results_per_image.csv", newline="") as fh:
        per_image = [r for r in csv.DictReader(fh) if r["series"] == "multislice"]
    assert per_image and all(float(r["thickness_nm"]) > 0 for r in per_image)


def test_missing_packaged_cells_are_skipped_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setattr(multislice_set, "packaged_cells_path", lambda: tmp_path / "absent.npz")
    bench = P.BenchmarkConfig(materials=("Pt[001]",), doses_e_per_A2=(5000.0,), size_px=64,
                              thicknesses_A=(), multislice_images=1)
    note = P.multislice_status(bench)
    assert note.startswith("skipped") and "absent.npz" in note
    assert [s.series for s in P.build_scenes(bench)] == ["dose"]
    result = P.run_benchmark(bench, ["raw"], progress=False)
    assert {r["series"] for r in result.rows} == {"dose"}
    md = R.markdown_tables(result)
    section = md.split("## Multislice set (sim-to-sim gap)")[1]
    assert "Not run: skipped" in section and "--multislice-cells" in section
    out = tmp_path / "report"
    R.write_report(result, out, take_screenshot=False)
    assert "Not run: skipped" in (out / "index.html").read_text()


def test_a_bad_explicit_cells_file_is_an_input_error(tmp_path, gaussian_cell_scan):
    bench = P.BenchmarkConfig(materials=("Pt[001]",), doses_e_per_A2=(5000.0,), size_px=64,
                              thicknesses_A=(), multislice_cells=str(tmp_path / "nope.npz"))
    with pytest.raises(InputError, match=r"nope\.npz"):
        P.run_benchmark(bench, ["raw"], progress=False)
    with pytest.raises(InputError):
        P.build_scenes(bench)
    train_only = _write_cells(tmp_path / "train.npz", gaussian_cell_scan, splits=("train",))
    with pytest.raises(InputError, match="no 'test' cells"):
        P.multislice_status(dataclasses.replace(bench, multislice_cells=str(train_only)))
    # switched off, the file is not looked at
    assert "switched off" in P.multislice_status(dataclasses.replace(bench,
                                                                     multislice_images=0))


def test_command_line_options(cells_file, tmp_path):
    parser = argparse.ArgumentParser(prog="emrestore")
    R.add_benchmark_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["benchmark", "--quick", "--multislice-images", "2",
                              "--multislice-cells", str(cells_file)])
    config = R.config_from_args(args)
    assert config.multislice_images == 2 and config.multislice_cells == str(cells_file)
    assert R.config_from_args(parser.parse_args(["benchmark", "--quick"])).multislice_images == 1
    off = parser.parse_args(["benchmark", "--multislice-images", "0"])
    assert R.config_from_args(off).multislice_images == 0
    out = tmp_path / "report"
    bad = parser.parse_args(["benchmark", "-o", str(out), "--multislice-cells",
                             str(tmp_path / "nope.npz"), "--no-progress"])
    with pytest.raises(InputError, match=r"nope\.npz"):
        bad.handler(bad)
    assert not out.exists()  # refused before any work or folder


def test_a_detection_at_a_hidden_column_is_neither_right_nor_wrong():
    truth = np.array([[20.0, 20.0], [20.0, 30.0], [30.0, 20.0], [30.0, 30.0]])
    hidden = np.array([[25.0, 25.0]])
    found = np.vstack([truth, hidden + 0.3, [[40.0, 40.0]]])  # + one at a hidden site, + one stray
    plain = P.score_positions(found, truth, (60, 60), border_px=4)
    excused = P.score_positions(found, truth, (60, 60), border_px=4, ignore_px=hidden)
    assert plain["n_matched"] == excused["n_matched"] == 4
    assert plain["n_found"] == 6 and excused["n_found"] == 5  # the stray one still counts
    assert excused["precision"] == pytest.approx(4 / 5)
    assert plain["precision"] == pytest.approx(4 / 6)


def test_twin_renders_with_the_calibrated_profiles(bench):
    """The twin is the linear model after the multislice calibration: its atom-profile ranges
    are the packaged calibrated ones, which are the ranges of configs/sampler-calibrated.toml."""
    from pathlib import Path

    from emrestore.simulate.profiles import MULTISLICE_CALIBRATED_PROFILES
    from emrestore.simulate.sampler import SamplerConfig

    twin = P.sampler_config("Pt", (0, 0, 1), 1000.0, 200.0, bench, multislice_model="linear")
    ms = P.sampler_config("Pt", (0, 0, 1), 1000.0, 200.0, bench, multislice_model="multislice")
    assert twin.profiles == MULTISLICE_CALIBRATED_PROFILES
    assert twin.profiles.gamma_range[1] > ms.profiles.gamma_range[1]
    toml = Path(__file__).resolve().parents[2] / "configs" / "sampler-calibrated.toml"
    if toml.exists():  # a source checkout: the training configs and the package must agree
        assert SamplerConfig.from_toml(toml).profiles == MULTISLICE_CALIBRATED_PROFILES
