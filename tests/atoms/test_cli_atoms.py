import csv

import numpy as np
import pytest
from _columns_synth import square_lattice

from emrestore.cli import main


@pytest.fixture()
def lattice_file(tmp_path):
    truth, image, rng = square_lattice(shape=(128, 128), counts=2000.0, background=2.0, seed=1)
    path = tmp_path / "lattice.npz"
    np.savez(path, image=rng.poisson(image).astype(np.float32), pixel_size_A=0.1)
    return path, truth


def test_atoms_command_writes_table_and_plot(lattice_file, tmp_path, capsys):
    path, truth = lattice_file
    out, png = tmp_path / "atoms.csv", tmp_path / "atoms.png"
    assert main(["atoms", str(path), "-o", str(out), "--plot", str(png)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(truth)
    assert {"x_px", "y_px", "x_A", "y_A", "sigma_x_A", "scs_counts_A2"} <= set(rows[0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "poisson" in text and f"{len(truth)} converged" in text


@pytest.mark.parametrize("option, good, bad, name", [
    ("--spacing", "14.2", "-3", "spacing_px"),
    ("--relative-threshold", "0", "1.5", "relative_threshold"),
])
def test_detection_options(lattice_file, tmp_path, capsys, option, good, bad, name):
    """A good value finds every column; a bad one is an error naming it and writes nothing."""
    path, truth = lattice_file
    out = tmp_path / "a.csv"
    assert main(["atoms", str(path), option, good, "-o", str(out)]) == 0
    assert len(list(csv.DictReader(open(out)))) == len(truth)
    wrong = tmp_path / "b.csv"
    assert main(["atoms", str(path), option, bad, "-o", str(wrong)]) == 2
    assert not wrong.exists()
    assert name in capsys.readouterr().err


def test_pixel_size_option_overrides_file(lattice_file, tmp_path):
    path, _ = lattice_file
    out = tmp_path / "a.csv"
    assert main(["atoms", str(path), "--pixel-size", "0.2", "-o", str(out)]) == 0
    row = next(csv.DictReader(open(out)))
    assert float(row["x_A"]) == pytest.approx(0.2 * float(row["x_px"]), rel=1e-6)


@pytest.mark.parametrize("pixel", ["0", "-0.1"])
def test_bad_pixel_size_writes_nothing(lattice_file, tmp_path, pixel, capsys):
    path, _ = lattice_file
    out = tmp_path / "a.csv"
    assert main(["atoms", str(path), "--pixel-size", pixel, "-o", str(out)]) == 2
    assert not out.exists()
    assert "pixel size" in capsys.readouterr().err


def test_never_overwrites_the_input(lattice_file, capsys):
    path, _ = lattice_file
    before = path.read_bytes()
    assert main(["atoms", str(path), "-o", str(path)]) == 2
    assert path.read_bytes() == before
    assert "input" in capsys.readouterr().err


def test_bad_images_give_clear_errors(tmp_path, capsys):
    flat = tmp_path / "flat.npy"
    np.save(flat, np.full((64, 64), 5.0))
    out = tmp_path / "x.csv"
    assert main(["atoms", str(flat), "-o", str(out)]) == 2
    assert "no atomic columns" in capsys.readouterr().err
    nan = tmp_path / "nan.npy"
    img = np.ones((64, 64))
    img[3, 3] = np.nan
    np.save(nan, img)
    assert main(["atoms", str(nan), "-o", str(out)]) == 2
    assert "NaN" in capsys.readouterr().err
    assert main(["atoms", str(tmp_path / "missing.npz"), "-o", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, np.random.default_rng(0).poisson(5.0, (6, 6)).astype(float))
    assert main(["atoms", str(tiny), "-o", str(out)]) == 2
    assert not out.exists()
