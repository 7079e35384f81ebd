"""Microscope file formats: every reader gives the image in its own units and the pixel size in Å.

Files are made here, never downloaded: TIFF with tifffile, MRC with a hand-written header, EMD
(Berkeley) with RosettaSciIO's writer and EMD (Velox) with h5py in Velox's layout. Gatan
DigitalMicrograph and TIA files cannot be written without the vendors' software: their reader
path is checked with RosettaSciIO's answer substituted, and against real files only when
``EMRESTORE_TEST_FILES`` names a folder that holds some.
"""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from emrestore import io as emio
from emrestore.errors import InputError
from emrestore.image import Image
from emrestore.io import load_image, read_image, save_image, to_preview, write_preview

pytest.importorskip("rsciio")


def counts(shape, seed=0):
    return np.random.default_rng(seed).poisson(20.0, shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Writers and round trips


@pytest.mark.parametrize("pixel_size_A", [0.1234, 1.0, 37.5])
def test_tiff_round_trip_keeps_values_and_calibration(tmp_path, pixel_size_A):
    img = counts((40, 56))
    path = save_image(tmp_path / "out.tif", Image(img, pixel_size_A=pixel_size_A))
    back = load_image(path)
    assert back.array.dtype == np.float32 and np.array_equal(back.array, img)
    assert back.pixel_size_A == pytest.approx(pixel_size_A, rel=1e-6)
    # what ImageJ reads: a unit and pixels per unit
    import tifffile

    with tifffile.TiffFile(path) as tif:
        assert tif.imagej_metadata["unit"] == "nm"
        num, den = tif.pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(10.0 / pixel_size_A, rel=1e-6)


def test_tiff_keeps_modality_and_restore_metadata(tmp_path):
    im = Image(counts((16, 16)), pixel_size_A=0.2, modality="stem",
               metadata={"source": "scan.dm4", "restore": {"model": "stem-hr", "tile": 1024}})
    back = load_image(save_image(tmp_path / "r.tif", im))
    assert back.modality == "stem" and back.metadata["restore"]["model"] == "stem-hr"
    assert back.metadata["source"].endswith("r.tif")  # where it was read from now


def test_tiff_stack_and_uncalibrated(tmp_path):
    stack = np.stack([counts((24, 30), s) for s in range(3)])
    save_image(tmp_path / "s.tiff", stack, pixel_size_A=0.5)
    back = load_image(tmp_path / "s.tiff")
    assert back.is_stack and np.array_equal(back.array, stack)
    assert back.pixel_size_A == pytest.approx(0.5)
    with pytest.raises(InputError, match="2-D"):  # read_image stays 2-D only
        read_image(tmp_path / "s.tiff")
    save_image(tmp_path / "u.tif", stack[0])
    assert load_image(tmp_path / "u.tif").pixel_size_A is None


def test_npy_npz_and_png(tmp_path):
    img = counts((20, 30))
    save_image(tmp_path / "a.npy", img)
    assert np.array_equal(np.load(tmp_path / "a.npy"), img)
    save_image(tmp_path / "a.npz", Image(img, pixel_size_A=0.3))
    arr, px = read_image(tmp_path / "a.npz")
    assert np.array_equal(arr, img) and px == pytest.approx(0.3)
    save_image(tmp_path / "b.npz", img)  # no calibration: no pixel_size_A key
    assert read_image(tmp_path / "b.npz")[1] is None
    save_image(tmp_path / "a.png", img)
    png, _ = read_image(tmp_path / "a.png")
    assert png.min() == 0 and png.max() == 255
    with pytest.raises(InputError, match="extension"):
        save_image(tmp_path / "a.jpg", img)


def test_preview_is_a_percentile_stretch(tmp_path):
    ramp = np.linspace(-5, 5, 1000, dtype=np.float32).reshape(20, 50)
    ramp[0, 0] = 1e6  # one hot pixel must not flatten the preview
    u8 = to_preview(ramp, percentiles=(1, 99))
    assert u8.dtype == np.uint8 and u8.min() == 0 and u8.max() == 255
    assert 100 < np.median(u8) < 155
    assert np.all(to_preview(np.full((8, 8), 3.0)) == 128)
    path = write_preview(tmp_path / "p.png", Image(ramp))
    assert read_image(path)[0].shape == (20, 50)


def test_writers_never_overwrite_the_input(tmp_path):
    src = tmp_path / "in.npy"
    np.save(src, counts((8, 8)))
    before = src.read_bytes()
    with pytest.raises(InputError, match="input"):
        save_image(src, counts((8, 8), 1), protect=[src])
    with pytest.raises(InputError, match="input"):
        write_preview(tmp_path / "in.npy", counts((8, 8)), protect=[str(src)])
    assert src.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# MRC


def write_mrc(path, data, cell_A=None):
    """A minimal MRC2014 file: 1024-byte header, then the data (x fastest)."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    nz, ny, nx = data.shape
    mode = {np.dtype(np.float32): 2, np.dtype(np.int16): 1, np.dtype(np.uint16): 6,
            np.dtype(np.uint8): 0}[data.dtype]
    header = np.zeros(256, np.int32)
    header[0:4] = nx, ny, nz, mode
    header[7:10] = nx, ny, nz  # MX, MY, MZ: sampling of the cell
    floats = header.view(np.float32)
    if cell_A is not None:
        floats[10:13] = cell_A[1], cell_A[0], cell_A[2] if len(cell_A) > 2 else 0.0
    floats[13:16] = 90.0
    header[16:19] = 1, 2, 3
    floats[19:22] = data.min(), data.max(), data.mean()
    header[52] = int.from_bytes(b"MAP ", "little")
    header[53] = 0x00004444  # little-endian machine stamp
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.ascontiguousarray(data).tobytes())


def test_mrc_image_stack_and_calibration(tmp_path):
    img = counts((48, 64)).astype(np.int16)
    write_mrc(tmp_path / "a.mrc", img, cell_A=(48 * 0.25, 64 * 0.25))
    arr, px = read_image(tmp_path / "a.mrc")
    assert np.array_equal(arr, img) and px == pytest.approx(0.25, rel=1e-6)
    stack = np.stack([counts((32, 40), s) for s in range(4)])
    write_mrc(tmp_path / "s.mrcs", stack, cell_A=(32 * 1.5, 40 * 1.5, 4.0))
    im = load_image(tmp_path / "s.mrcs")
    assert im.shape == (4, 32, 40) and np.array_equal(im.array, stack)
    assert im.pixel_size_A == pytest.approx(1.5, rel=1e-6)
    # a header without a cell size is not a calibration (rsciio would report 1 nm)
    write_mrc(tmp_path / "u.mrc", img)
    assert read_image(tmp_path / "u.mrc")[1] is None


def test_mrcfile_written_file_if_available(tmp_path):
    mrcfile = pytest.importorskip("mrcfile", reason="mrcfile is not installed")
    img = counts((30, 40))
    with mrcfile.new(tmp_path / "m.mrc") as m:
        m.set_data(img)
        m.voxel_size = 0.8
    arr, px = read_image(tmp_path / "m.mrc")
    assert np.array_equal(arr, img) and px == pytest.approx(0.8, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# EMD


def test_emd_berkeley(tmp_path):
    from rsciio.emd import file_writer

    img = counts((36, 44))
    axes = [{"name": n, "scale": 0.031, "units": "nm", "size": s, "offset": 0.0,
             "navigate": False} for n, s in (("y", 36), ("x", 44))]
    file_writer(str(tmp_path / "b.emd"), {"data": img, "axes": axes,
                                          "metadata": {"General": {"title": "HAADF"}, "Signal": {}},
                                          "original_metadata": {}})
    im = load_image(tmp_path / "b.emd")
    assert np.array_equal(im.array, img) and im.pixel_size_A == pytest.approx(0.31)
    assert im.metadata["title"] == "HAADF" and im.modality == "stem"
    assert im.metadata["format"] == "emd"

    stack = np.stack([img, img + 1])
    nav = {"name": "t", "scale": 1.0, "units": "s", "size": 2, "offset": 0.0, "navigate": True}
    meta = {"General": {"title": "series"}, "Signal": {}}
    file_writer(str(tmp_path / "s.emd"), {"data": stack, "axes": [nav, *axes],
                                          "metadata": meta, "original_metadata": {}})
    im = load_image(tmp_path / "s.emd")
    assert im.shape == (2, 36, 44) and im.pixel_size_A == pytest.approx(0.31)


def write_velox(path, images):
    """Velox EMD layout (version 11): /Version, /Data/Image/<uuid>/{Data (y, x, frame),
    Metadata (JSON bytes, one column per frame)}; pixel sizes in metres."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        version = json.dumps({"format": "Velox", "version": "11"}).encode()
        f.create_dataset("Version", data=np.array([version]))
        group = f.create_group("Data/Image")
        for i, (title, arr, pixel_m) in enumerate(images):
            arr = np.asarray(arr)
            arr = arr[None] if arr.ndim == 2 else arr
            sub = group.create_group(f"{i + 1:032x}")
            sub.create_dataset("Data", data=np.moveaxis(arr, 0, -1))
            meta = {
                "BinaryResult": {"PixelSize": {"width": str(pixel_m), "height": str(pixel_m)},
                                 "PixelUnitX": "m", "PixelUnitY": "m",
                                 "Offset": {"x": "0", "y": "0"}, "DetectorIndex": "0"},
                "Detectors": {"Detector-0": {"DetectorName": title}},
                "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1600000000"}},
                "Scan": {"FrameTime": "1.0"},
                "CustomProperties": {},
            }
            raw = np.frombuffer(json.dumps(meta).encode(), np.uint8)
            sub.create_dataset("Metadata", data=np.repeat(raw[:, None], arr.shape[0], axis=1))


def test_emd_velox_picks_haadf_and_converts_units(tmp_path):
    haadf = counts((48, 40)).astype(np.uint16)
    bf = counts((48, 40), 1)
    write_velox(tmp_path / "v.emd", [("BF", bf, 2.5e-11), ("HAADF", haadf, 2.5e-11)])
    with pytest.warns(UserWarning, match="HAADF"):
        im = load_image(tmp_path / "v.emd")
    assert np.array_equal(im.array, haadf) and im.array.dtype == np.float32
    assert im.pixel_size_A == pytest.approx(0.25, rel=1e-6)  # 25 pm
    assert im.modality == "stem"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arr, px = read_image(tmp_path / "v.emd", signal="BF")
        assert np.array_equal(arr, bf) and px == pytest.approx(0.25, rel=1e-6)
        assert np.array_equal(read_image(tmp_path / "v.emd", signal=0)[0], bf)
    with pytest.raises(InputError, match="DF4"):
        read_image(tmp_path / "v.emd", signal="DF4")
    with pytest.raises(InputError, match="number 5"):
        read_image(tmp_path / "v.emd", signal=5)

    series = np.stack([counts((32, 32), s) for s in range(3)])
    write_velox(tmp_path / "series.emd", [("HAADF", series, 1.0e-10)])
    im = load_image(tmp_path / "series.emd")
    assert im.shape == (3, 32, 32) and im.pixel_size_A == pytest.approx(1.0, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# DigitalMicrograph and TIA: RosettaSciIO's answer substituted (no writer exists)


def _signal(data, scale, units, title="", navigate=None):
    data = np.asarray(data)
    nav = [True] * (data.ndim - 2) if navigate is None else navigate
    axes = [{"name": "t", "scale": 1.0, "units": "", "size": n, "navigate": True}
            for n in data.shape[: len(nav)]]
    axes += [{"name": n, "scale": scale, "units": units, "size": s, "navigate": False}
             for n, s in zip("yx", data.shape[-2:])]
    return {"data": data, "axes": axes, "metadata": {"General": {"title": title}},
            "original_metadata": {}}


@pytest.mark.parametrize(("suffix", "module"), [(".dm3", "digitalmicrograph"),
                                                (".dm4", "digitalmicrograph"),
                                                (".ser", "tia"), (".emi", "tia")])
@pytest.mark.parametrize(("scale", "units", "expected_A"),
                         [(0.012, "nm", 0.12), (1.2e-4, "µm", 1.2), (1.2e-4, "um", 1.2),
                          (35.0, "pm", 0.35), (0.8, "Å", 0.8), (1.0, "", None),
                          (0.5, "1/nm", None), (1.0, "<undefined>", None)])
def test_rsciio_axes_to_pixel_size(tmp_path, monkeypatch, suffix, module, scale, units,
                                   expected_A):
    import importlib

    img = counts((16, 20))
    mod = importlib.import_module(f"rsciio.{module}")
    monkeypatch.setattr(mod, "file_reader", lambda name, **kw: [_signal(img, scale, units)])
    path = tmp_path / f"x{suffix}"
    path.write_bytes(b"stand-in")
    arr, px = read_image(path)
    assert np.array_equal(arr, img)
    assert px == (pytest.approx(expected_A) if expected_A else None)


def test_rsciio_selection_skips_spectra_and_complex(tmp_path, monkeypatch):
    import rsciio.digitalmicrograph as dm

    img = counts((16, 20))
    spectrum = {"data": np.ones(100), "axes": [{"scale": 1, "units": "eV", "navigate": False}]}
    fft = _signal(img.astype(np.complex64), 1.0, "1/nm")
    monkeypatch.setattr(dm, "file_reader", lambda name, **kw: [
        spectrum, fft, _signal(img, 0.02, "nm", "HAADF")])
    (tmp_path / "a.dm4").write_bytes(b"stand-in")
    arr, px = read_image(tmp_path / "a.dm4")
    assert np.array_equal(arr, img) and px == pytest.approx(0.2)
    monkeypatch.setattr(dm, "file_reader", lambda name, **kw: [spectrum])
    with pytest.raises(InputError, match="no 2-D image"):
        read_image(tmp_path / "a.dm4")


def test_rsciio_formats_report_unreadable_files(tmp_path):
    for suffix in (".dm3", ".dm4", ".emd", ".ser", ".mrc"):
        path = tmp_path / f"junk{suffix}"
        path.write_bytes(b"\x00\x01 this is not a microscope file " * 4)
        with pytest.raises(InputError, match=rf"junk\{suffix}: cannot read|no image data"):
            read_image(path)


_REAL = os.environ.get("EMRESTORE_TEST_FILES")


@pytest.mark.skipif(not _REAL, reason="set EMRESTORE_TEST_FILES to a folder of real dm3/dm4/"
                    "ser/emd/mrc files to test them (none can be written here)")
def test_real_files_if_provided():
    files = [p for p in sorted(Path(_REAL).iterdir())
             if p.suffix.lower() in (".dm3", ".dm4", ".ser", ".emi", ".emd", ".mrc")]
    if not files:
        pytest.skip(f"no microscope files in {_REAL}")
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = load_image(path)
        assert im.array.dtype == np.float32 and np.isfinite(im.array).all()
        assert im.pixel_size_A is None or 1e-3 < im.pixel_size_A < 1e5


def test_load_image_override_and_errors(tmp_path):
    np.save(tmp_path / "a.npy", counts((10, 12)))
    assert load_image(tmp_path / "a.npy", pixel_size_A=0.7).pixel_size_A == 0.7
    with pytest.raises(InputError, match="pixel size"):
        load_image(tmp_path / "a.npy", pixel_size_A=-1)
    np.save(tmp_path / "v.npy", np.ones(10))
    with pytest.raises(InputError, match="1-D"):
        load_image(tmp_path / "v.npy")
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "nope.dm4")
    assert emio.READ_SUFFIXES and ".dm4" in emio.READ_SUFFIXES
