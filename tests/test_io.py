import os
import warnings

import numpy as np
import pytest

from emrestore.errors import InputError
from emrestore.io import check_image, read_image, write_atomically


def test_npy_and_npz(tmp_path):
    img = np.arange(12, dtype=np.uint16).reshape(3, 4)
    np.save(tmp_path / "a.npy", img)
    arr, px = read_image(tmp_path / "a.npy")
    assert arr.dtype == np.float32 and np.array_equal(arr, img) and px is None
    np.savez(tmp_path / "b.npz", image=img, pixel_size_A=0.12)
    arr, px = read_image(tmp_path / "b.npz")
    assert np.array_equal(arr, img) and px == pytest.approx(0.12)
    np.savez(tmp_path / "c.npz", data=img)  # a single array under another name
    assert np.array_equal(read_image(tmp_path / "c.npz")[0], img)
    np.savez(tmp_path / "d.npz", x=img, y=img)
    with pytest.raises(InputError, match="'image'"):
        read_image(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", image=img, pixel_size_A=0.0)
    with pytest.raises(InputError, match="pixel size"):
        read_image(tmp_path / "e.npz")


def test_tiff_calibration(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    img = np.random.default_rng(0).integers(0, 1000, (16, 20)).astype(np.uint16)
    # ImageJ: 20 pixels per nm -> 0.5 Å per pixel
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, resolution=(20.0, 20.0),
                     metadata={"unit": "nm"})
    arr, px = read_image(tmp_path / "ij.tif")
    assert np.array_equal(arr, img) and px == pytest.approx(0.5)
    # plain TIFF in centimetres: 1e8 px per cm -> 1 Å per pixel
    tifffile.imwrite(tmp_path / "cm.tif", img, resolution=(1e8, 1e8), resolutionunit="CENTIMETER")
    assert read_image(tmp_path / "cm.tif")[1] == pytest.approx(1.0)
    # 72 dpi written by an image editor is not a calibration
    tifffile.imwrite(tmp_path / "dpi.tif", img, resolution=(72.0, 72.0), resolutionunit="INCH")
    assert read_image(tmp_path / "dpi.tif")[1] is None


def test_png_rgb_is_converted_with_a_warning(tmp_path):
    import skimage.io

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 100
    skimage.io.imsave(tmp_path / "c.png", rgb, check_contrast=False)
    with pytest.warns(UserWarning, match="grey"):
        arr, px = read_image(tmp_path / "c.png")
    assert arr.shape == (8, 8) and np.allclose(arr, 71.54, atol=0.01) and px is None
    grey = (np.arange(64).reshape(8, 8) * 3).astype(np.uint8)
    skimage.io.imsave(tmp_path / "g.png", grey, check_contrast=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(read_image(tmp_path / "g.png")[0], grey)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    with pytest.raises(InputError, match="cannot read"):
        read_image(tmp_path / "junk.npy")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match=r"TIFF|no image data"):
        read_image(tmp_path / "junk.tif")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match="2-D"):
        read_image(tmp_path / "cube.npy")
    nan = np.ones((4, 4))
    nan[2, 3] = np.inf
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(InputError, match=r"\(2, 3\)"):
        read_image(tmp_path / "nan.npy")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


def test_check_image_squeezes_and_rejects():
    assert check_image(np.ones((1, 5, 6))).shape == (5, 6)
    with pytest.raises(InputError):
        check_image(np.ones((0, 5)))
    with pytest.raises(InputError):
        check_image(np.ones((3, 3), dtype=complex))


def test_write_atomically(tmp_path):
    out = tmp_path / "out.txt"
    write_atomically(out, lambda p: open(p, "w").write("hello"))
    assert out.read_text() == "hello"
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # not the temporary file's private 0600

    def failing(p):
        open(p, "w").write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(out, failing)
    assert out.read_text() == "hello"  # the old content survives
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.txt"]  # no temporary left
    src = tmp_path / "input.npy"
    np.save(src, np.ones((3, 3)))
    before = src.read_bytes()
    with pytest.raises(InputError, match="input"):
        write_atomically(src, lambda p: open(p, "w").write("x"), protect=[src])
    assert src.read_bytes() == before
    with pytest.raises(InputError, match="folder"):
        write_atomically(tmp_path / "nope" / "x.txt", lambda p: None)
