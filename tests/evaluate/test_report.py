"""The benchmark report: tables, figures, index.html, a protected output folder, the command."""

import argparse
import csv
import re

import numpy as np
import pytest

from emrestore.errors import InputError
from emrestore.evaluate import protocol as P
from emrestore.evaluate import report as R

TINY = dict(materials=("SrTiO3[001]",), doses_e_per_A2=(500.0, 20000.0), images_per_dose=1,
            size_px=96, thicknesses_A=(50.0, 200.0), thickness_images=1,
            thickness_material="Pt[001]", multislice_images=0)


@pytest.fixture(scope="module")
def result():
    config = P.BenchmarkConfig(**TINY)
    return P.run_benchmark(config, ["raw", "gaussian", "median"], progress=False)


@pytest.fixture(scope="module")
def report_dir(result, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "bench"
    index = R.write_report(result, out, command="emrestore benchmark --test",
                           take_screenshot=False)
    assert index == out / "index.html"
    return out


def test_results_csv_has_every_metric_per_workflow_and_dose(report_dir):
    with open(report_dir / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    expected = {"series", "workflow", "material", "dose_e_per_A2", "thickness_nm", "n_images",
                "psnr_db", "ssim", "f1", "jaccard", "chamfer_pm", "rmse_pm", "crlb_pm",
                "strain_a_pct", "strain_b_pct", "scs_mape_pct", "seconds"}
    assert expected <= set(rows[0])
    dose_rows = [r for r in rows if r["series"] == "dose"]
    pairs = {(r["workflow"], float(r["dose_e_per_A2"])) for r in dose_rows}
    for wf in ("raw", "gaussian", "median", P.REFERENCE):
        for dose in TINY["doses_e_per_A2"]:
            assert (wf, dose) in pairs
    thick = {float(r["thickness_nm"]) for r in rows if r["series"] == "thickness"}
    assert thick == {5.0, 20.0}
    raw_low = [r for r in dose_rows if r["workflow"] == "raw" and r["dose_e_per_A2"] == "500"]
    assert 0 <= float(raw_low[0]["f1"]) <= 1
    with open(report_dir / "results_per_image.csv", newline="") as fh:
        per_image = list(csv.DictReader(fh))
    assert len(per_image) == 4 * (2 + 2)  # 3 workflows + reference, 2 doses + 2 thicknesses


def test_markdown_and_html_show_the_tables(report_dir):
    md = (report_dir / "results.md").read_text()
    assert "| dose (e⁻/Å²) | workflow | PSNR (dB) |" in md
    assert "## Thickness series" in md and "lowest strain error" in md
    page = (report_dir / "index.html").read_text()
    assert page.count("<table>") == 2 and "emrestore benchmark --test" in page


def test_index_shows_every_figure_and_every_figure_exists(report_dir):
    page = (report_dir / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    pngs = sorted(p.relative_to(report_dir).as_posix()
                  for p in (report_dir / "figures").glob("*.png"))
    assert sorted(sources) == pngs
    for key in ("strain_vs_dose", "metrics_vs_dose", "precision_vs_thickness", "line_profile",
                "residual_fft", "gallery_"):
        assert any(key in p for p in pngs), key
    for p in pngs:
        data = (report_dir / p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # every figure has a caption that says what to look at
    assert page.count("<figcaption>") == len(pngs)


def test_the_profile_line_crosses_two_species(result):
    show = R._pick_profile_showcase(result.showcase)
    start, u, length = R._profile_line(show["item"])
    item = show["item"]
    rel = item.truth_px - start
    on = (np.abs(rel @ np.array([-u[1], u[0]])) < 1.5) & (rel @ u >= 0) & (rel @ u <= length)
    scs = item.truth_scs[on]
    assert on.sum() >= 4 and scs.min() < 0.8 * scs.max()  # Sr and Ti-O columns alternate


def test_user_files_are_never_overwritten(result, tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(InputError, match="not an emrestore benchmark report"):
        R.write_report(result, tmp_path, take_screenshot=False)
    assert (tmp_path / "mine.txt").read_text() == "precious"
    assert not (tmp_path / "results.csv").exists()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        R.prepare_output_dir(not_a_dir)


def test_an_earlier_report_is_rewritten(result, report_dir):
    before = (report_dir / "results.csv").read_text()
    R.write_report(result, report_dir, take_screenshot=False)
    assert (report_dir / "results.csv").read_text() == before
    assert not list(report_dir.glob(".*.tmp*"))  # no temporary files left behind


def test_benchmark_command_end_to_end(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="emrestore")
    R.add_benchmark_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "report"
    args = parser.parse_args(["benchmark", "-o", str(out), "--materials", "Pt[001]",
                              "--doses", "1000,20000", "--size", "80", "--per-dose", "1",
                              "--thicknesses", "--workflows", "raw", "gaussian",
                              "--max-jitter", "0", "--multislice-images", "0",
                              "--no-progress"])
    assert args.handler(args) == 0
    text = capsys.readouterr().out
    assert "| 20000 | raw |" in text and "report ->" in text
    for name in ("results.csv", "results.md", "index.html", "benchmark.json",
                 "figures/strain_vs_dose.png"):
        assert (out / name).exists(), name
    assert not (out / "figures" / "precision_vs_thickness.png").exists()  # no thickness series
    config = R.config_from_args(args)
    assert config.max_jitter_A == 0.0 and config.thicknesses_A == ()
    bad = parser.parse_args(["benchmark", "--doses", "lots"])
    with pytest.raises(InputError, match="--doses"):
        R.config_from_args(bad)


def test_multislice_gap_verdict_is_per_workflow():
    """One workflow outside the 1 dB target does not put the others outside it."""
    from emrestore.evaluate.report import _largest_gap_text

    text = _largest_gap_text([(1.15, "gaussian", 200.0), (0.70, "gaussian", 500.0),
                              (0.73, "stem-hr", 200.0), (-0.86, "stem-hr", 500.0)])
    assert text.startswith("largest +1.15 dB (gaussian at 200 e⁻/Å²)")
    assert "within the 1 dB target at every dose: stem-hr" in text
    assert "outside it: gaussian (+1.15 dB at 200 e⁻/Å²)" in text
    inside = _largest_gap_text([(0.4, "stem-hr", 200.0), (-0.9, "stem-hr", 1000.0)])
    assert "outside" not in inside and inside.startswith("largest -0.90 dB")
