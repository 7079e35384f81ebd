"""Inference: units in = units out, seamless tiles, any size and dtype, clear errors, safe files.

The networks here are small untrained convolution stacks with fixed seeds (a receptive field
wider than one pixel, so that tile seams would show); the normaliser is an affine one defined
here, so these tests do not depend on the shipped model zoo.
"""

import hashlib
import tracemalloc
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from emrestore.errors import InputError  # noqa: E402
from emrestore.evaluate.metrics import psnr  # noqa: E402
from emrestore.image import Image  # noqa: E402
from emrestore.restore import (  # noqa: E402
    RestoreWarning,
    restore,
    restore_command,
    tile_windows,
)

pytestmark = pytest.mark.filterwarnings("ignore::emrestore.restore.RestoreWarning")


def affine_normalise(x):
    """offset = minimum, scale = mean above it: equivariant under x -> k x + c (k > 0)."""
    offset = float(x.min())
    scale = float(x.mean(dtype=np.float64)) - offset
    if not scale > 0:
        scale = 1.0
    x_n = x - np.float32(offset)
    x_n *= np.float32(1.0 / scale)
    return x_n, offset, scale


def affine_denormalise(y_n, offset, scale):
    return y_n * np.float32(scale) + np.float32(offset)


NORM = (affine_normalise, affine_denormalise)


class TinyNet(nn.Module):
    """x + f(x), f = three 3x3 conv layers (receptive field 7 px), optionally at half resolution
    (pixel-unshuffle by 2: size multiple 2, receptive field 14 px)."""

    def __init__(self, seed=0, width=8, down=1):
        super().__init__()
        torch.manual_seed(seed)
        c = down * down
        self.down = down
        self.f = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, c, 3, padding=1),
        )

    def forward(self, x):
        h = nn.functional.pixel_unshuffle(x, self.down) if self.down > 1 else x
        h = self.f(h)
        return x + 0.5 * (nn.functional.pixel_shuffle(h, self.down) if self.down > 1 else h)


def tiny(down=1, **card):
    base = {"receptive_field_px": 7 * down, "multiple_of": down, "min_size_px": 8}
    base.update(card)
    return TinyNet(down=down).eval(), base


def lattice(shape=(96, 128), peak=20.0, background=2.0, seed=0):
    """Poisson counts of a Gaussian-column lattice and its expected value."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    truth = background + peak * (np.cos(2 * np.pi * rows / 9.0) * np.cos(2 * np.pi * cols / 11.0)
                                 ) ** 8
    return rng.poisson(truth).astype(np.float32), truth.astype(np.float32)


def run(x, model=None, **kw):
    kw.setdefault("normaliser", NORM)
    kw.setdefault("device", "cpu")
    return restore(x, model or tiny(), **kw)


# ---------------------------------------------------------------------------------------------
# Units


@pytest.mark.parametrize("k", [0.1, 10.0, 1000.0])
def test_scaling_the_input_scales_the_output(k):
    x, _ = lattice()
    y = run(x)
    yk = run(x * np.float32(k))
    assert yk.dtype == np.float32 and yk.shape == x.shape
    rel = np.abs(yk - k * y).max() / (k * np.abs(y).max())
    assert rel < 0.01


def test_mean_is_preserved_and_background_not_negative():
    x, _ = lattice(background=0.3)
    assert (x == 0).mean() > 0.3  # a real count image: many empty pixels
    y = run(x)
    assert abs(y.mean() - x.mean()) / x.mean() < 0.01
    assert y.min() >= 0.0
    # the untrained net does change the mean: the correction is doing the work
    raw = run(x, preserve_mean=False, clip_to_floor=False)
    assert abs(raw.mean() - x.mean()) / x.mean() > 0.003
    assert raw.min() < 0.0


def test_detector_offset_passes_through():
    x, _ = lattice()
    y = run(x)
    for offset in (1000.0, -250.0):
        y_off = run(x + np.float32(offset))
        assert np.abs((y_off - offset) - y).max() < 0.01 * (y.max() - y.min())


def test_data_with_negative_values_keep_their_floor():
    x, _ = lattice()
    x = x - np.float32(5.0)  # an analog signal with its offset subtracted
    y = run(x)
    assert y.min() < 0 and y.min() >= x.min()
    assert abs(y.mean() - x.mean()) < 0.01 * x.std()


def test_image_in_image_out():
    x, _ = lattice()
    im = Image(x, pixel_size_A=0.25, modality="stem", metadata={"source": "here"})
    out = run(im)
    assert isinstance(out, Image)
    assert out.pixel_size_A == 0.25 and out.modality == "stem"
    assert out.metadata["source"] == "here" and "restore" in out.metadata
    assert np.array_equal(out.array, run(x))
    assert "restore" not in im.metadata  # the input is untouched


# ---------------------------------------------------------------------------------------------
# Tiling


@pytest.mark.parametrize(("length", "tile", "overlap", "margin", "multiple"),
                         [(200, 64, 16, 3, 1), (97, 32, 8, 2, 1), (1000, 256, 40, 7, 1),
                          (65, 64, 20, 4, 1), (300, 100, 50, 10, 1), (203, 64, 26, 7, 4),
                          (97, 48, 20, 5, 8)])
def test_tile_windows_are_a_partition_of_unity(length, tile, overlap, margin, multiple):
    total = np.zeros(length + multiple)
    windows = tile_windows(length, tile, overlap, margin, multiple)
    size = len(windows[0][1])  # tiles shrink to the smallest size that covers the axis
    assert size <= max(tile, length + multiple) and size % multiple == 0
    for start, w in windows:
        assert len(w) == size and w.min() >= 0 and start % multiple == 0
        # zero in the margin next to an inner tile edge
        if start > 0:
            assert np.all(w[:margin] == 0)
        if start + size < length:
            assert np.all(w[-margin:] == 0)
        total[start:start + size] += w
    assert np.allclose(total[:length], 1.0, atol=1e-6)


@pytest.mark.parametrize("down", [1, 2])
def test_tiled_equals_whole_image(down):
    x, truth = lattice((203, 241), seed=3)
    model = tiny(down)
    whole = run(x, model, tile=1024)
    tiled = run(x, model, tile=64)
    assert abs(psnr(truth, tiled) - psnr(truth, whole)) < 0.1
    # much stronger than required: the two agree almost to float precision
    assert psnr(whole, tiled) > 90
    # and the test can see seams: abutting tiles with no hand-over differ measurably
    seams = run(x, model, tile=64, overlap=2)
    assert psnr(whole, seams) < psnr(whole, tiled) - 10


def test_with_the_nn_normaliser_and_a_unet():
    """The real pipeline pieces: nn.normalise (quantile offset, clipped-mean scale) and an
    untrained U-Net from the registry (down-sampling by 4, receptive field > 40 px)."""
    from emrestore.nn.blocks import build_model, receptive_field

    net = build_model("unet", {"widths": [4, 8, 8], "blocks": 1}).eval()
    with torch.no_grad():  # a fresh U-Net is the identity (zero head): make it do something
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    card = {"multiple_of": net.multiple_of, "min_size_px": net.min_size_px,
            "receptive_field_px": receptive_field(net)}
    assert card["receptive_field_px"] > 20
    x, truth = lattice((150, 173), seed=6)
    whole = restore(x, (net, card), tile=1024, device="cpu")
    tiled = restore(x, (net, card), tile=64, device="cpu")
    assert psnr(whole, tiled) > 60
    assert abs(psnr(truth, tiled) - psnr(truth, whole)) < 0.1
    scaled = restore(x * np.float32(1000), (net, card), tile=64, device="cpu")
    assert np.abs(scaled - 1000 * tiled).max() < 0.01 * 1000 * np.abs(tiled).max()
    shifted = restore(x + np.float32(500), (net, card), tile=64, device="cpu")
    assert np.abs(shifted - 500 - tiled).max() < 0.01 * (tiled.max() - tiled.min())
    assert abs(tiled.mean() - x.mean()) / x.mean() < 0.01 and tiled.min() >= 0


def test_shipped_stem_hr_keeps_units():
    from emrestore.nn.zoo import list_models

    if "stem-hr" not in [card["name"] for card in list_models()]:
        pytest.skip("the zoo has no stem-hr model yet")
    x, _ = lattice((160, 192), peak=8, background=0.5, seed=8)
    y = restore(x, device="cpu")
    assert y.shape == x.shape and y.dtype == np.float32 and y.min() >= 0
    assert abs(y.mean() - x.mean()) / x.mean() < 0.01
    y10 = restore(x * np.float32(10), device="cpu")
    assert np.abs(y10 - 10 * y).max() < 0.01 * 10 * np.abs(y).max()
    tiled = restore(x, device="cpu", tile=96)
    assert psnr(y, tiled) > 50


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu():
    x, _ = lattice((150, 170), seed=7)
    cpu = run(x, tile=64, device="cpu")
    gpu = run(x, tiny(), tile=64, device="cuda")
    assert np.allclose(cpu, gpu, rtol=1e-4, atol=1e-4 * np.abs(cpu).max())


def test_batch_size_does_not_change_the_result():
    x, _ = lattice((150, 170), seed=4)
    a = run(x, tile=48, batch_size=1)
    b = run(x, tile=48, batch_size=7)
    assert np.allclose(a, b, atol=1e-5 * np.abs(a).max())


# ---------------------------------------------------------------------------------------------
# Sizes, stacks, dtypes


@pytest.mark.parametrize("tile", [512, 48])
def test_odd_sizes(tile):
    x, _ = lattice((97, 131), seed=5)
    model = tiny(down=2)
    y = run(x, model, tile=tile)
    assert y.shape == (97, 131) and np.isfinite(y).all()
    assert abs(y.mean() - x.mean()) / x.mean() < 0.01


def test_stack_is_restored_frame_by_frame():
    frames = np.stack([lattice((64, 80), seed=s)[0] * (s + 1) for s in range(3)])
    out = run(frames)
    assert out.shape == frames.shape and out.dtype == np.float32
    for t in range(3):
        assert np.allclose(out[t], run(frames[t]), rtol=1e-6, atol=1e-6)
    assert run(frames[:1]).shape == (1, 64, 80)  # a one-frame stack stays a stack
    im = run(Image(frames, pixel_size_A=1.0))
    assert im.is_stack and len(im.metadata["restore"]["mean_gain"]) == 3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float16,
                                   np.float64])
def test_dtypes(dtype):
    x, _ = lattice(peak=60, background=5)
    if np.issubdtype(dtype, np.signedinteger):
        x = x - 20  # signed data with negative values
    cast = x.astype(dtype)
    y = run(cast)
    assert y.dtype == np.float32
    ref = run(cast.astype(np.float32))
    assert np.allclose(y, ref, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_are_named():
    x, _ = lattice()
    nan = x.copy()
    nan[3, 7] = np.nan
    with pytest.raises(InputError, match=r"NaN or infinite.*\(3, 7\)"):
        run(nan)
    inf = np.stack([x, x])
    inf[1, 2, 5] = np.inf
    with pytest.raises(InputError, match="frame 1"):
        run(inf)
    with pytest.raises(InputError, match="empty"):
        run(np.zeros((0, 10), np.float32))
    with pytest.raises(InputError, match="1-D"):
        run(np.ones(100, np.float32))
    with pytest.raises(InputError, match=r"20 × 40.*32 pixels"):
        run(np.ones((20, 40), np.float32), tiny(min_size_px=32))
    with pytest.raises(InputError, match="numeric"):
        run(np.array([["a", "b"], ["c", "d"]]))


def test_rgb_is_converted_with_a_warning():
    x, _ = lattice()
    rgb = np.repeat(x[..., None], 3, axis=-1).astype(np.uint8)
    with pytest.warns(UserWarning, match="grey"):
        y = run(rgb)
    assert y.shape == x.shape


def test_large_mean_change_warns():
    x, _ = lattice()

    class Halve(nn.Module):
        def forward(self, t):
            return t * 0.3

    with pytest.warns(RestoreWarning, match="mean"):
        y = run(x, (Halve(), {}))
    assert abs(y.mean() - x.mean()) / x.mean() < 0.01


# ---------------------------------------------------------------------------------------------
# Memory


def test_memory_is_bounded_by_a_few_image_copies():
    """Peak NumPy memory for a 2048² float32 image with 256-pixel tiles stays under
    4 × the image (16 MB) plus the tile batch (measured: 2.1 ×). It grows with the image, not
    with the number of tiles: an 8192² frame measured 554 MB beyond its 268 MB input."""
    x = np.random.default_rng(0).poisson(3.0, (2048, 2048)).astype(np.float32)
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1 / 9)
    model = (conv.eval(), {"receptive_field_px": 3})
    run(x[:64, :64], model, tile=256, normaliser=None)  # lazy imports outside the measurement
    batch = 4
    tracemalloc.start()
    try:
        y = run(x, model, tile=256, batch_size=batch, normaliser=None)  # nn.normalise
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tiles = 3 * batch * 256 * 256 * 4  # batch in, network out, weighted piece
    assert peak < 4 * x.nbytes + tiles, f"peak {peak / 1e6:.1f} MB"
    assert abs(y.mean() - x.mean()) / x.mean() < 0.01


# ---------------------------------------------------------------------------------------------
# Files


def test_restore_command_writes_calibrated_output_and_never_the_input(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    x, _ = lattice()
    src = tmp_path / "scan.tif"
    tifffile.imwrite(src, x.astype(np.uint16), imagej=True, resolution=(50.0, 50.0),
                     metadata={"unit": "nm"})  # 0.2 Å per pixel
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(InputError, match="input"):
        restore_command(src, src, model=tiny(), normaliser=NORM, device="cpu")
    with pytest.raises(InputError, match=r"\.tif, \.tiff"):
        restore_command(src, tmp_path / "out.jpg", model=tiny(), normaliser=NORM)
    written = restore_command(src, tmp_path / "clean.tif", model=tiny(), normaliser=NORM,
                              device="cpu")
    assert [p.name for p in written] == ["clean.tif", "clean_preview.png"]
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before

    from emrestore.io import load_image, read_image

    out = load_image(tmp_path / "clean.tif")
    assert out.pixel_size_A == pytest.approx(0.2, rel=1e-6)
    assert np.allclose(out.array, run(x.astype(np.uint16)), rtol=1e-6)
    preview, _ = read_image(tmp_path / "clean_preview.png")
    assert preview.shape == x.shape and preview.max() == 255 and preview.min() == 0

    # the pixel size can be overridden; .npy output and no preview
    written = restore_command(src, tmp_path / "clean.npy", model=tiny(), normaliser=NORM,
                              pixel_size_A=0.5, preview=False, device="cpu")
    assert [p.name for p in written] == ["clean.npy"]
    # an .npz output keeps the pixel size
    restore_command(src, tmp_path / "clean.npz", model=tiny(), normaliser=NORM,
                    pixel_size_A=0.5, preview=False, device="cpu")
    assert read_image(tmp_path / "clean.npz")[1] == pytest.approx(0.5)
    with pytest.raises(InputError, match="not found"):
        restore_command(tmp_path / "missing.dm4", tmp_path / "x.tif", model=tiny(),
                        normaliser=NORM)


def test_restore_command_refuses_a_preview_over_the_input(tmp_path):
    x, _ = lattice()
    src = tmp_path / "a_preview.png"
    import skimage.io

    skimage.io.imsave(src, x.astype(np.uint8), check_contrast=False)
    before = src.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match="input"):
            restore_command(src, tmp_path / "a.tif", model=tiny(), normaliser=NORM)
    assert src.read_bytes() == before


def test_a_constant_frame_comes_back_unchanged():
    x = np.full((70, 90), 5.0, dtype=np.float32)
    y = run(x, tile=48)
    assert np.array_equal(y, x)
