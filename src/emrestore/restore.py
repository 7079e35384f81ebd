"""Restore images with a trained network: whole-image normalisation, tiled inference, units kept.

The pipeline for one frame ``x`` (any real dtype; computed in float32):

1. **Normalise on the whole frame**: ``x_n, offset, scale = normalise(x)`` (the model's
   normaliser, :mod:`emrestore.nn.normalise`). The statistics come from the whole frame, never
   from a tile, so every tile sees the same mapping and neighbouring tiles agree. An affine
   normaliser (offset and scale proportional to the data) makes the whole pipeline equivariant:
   ``restore(k·x + c) = k·restore(x) + c`` for ``k > 0``, which is how the output stays in the
   input's units without being told the dose (dose-blind), and how an analog detector's additive
   offset passes through.
2. **Tiled inference**: the normalised frame is cut into overlapping ``tile × tile`` pieces run in
   batches. Each tile's output is weighted by a separable window that is 0 in the ``margin``
   pixels next to an inner tile edge (where the network sees its own zero padding instead of the
   neighbouring pixels), 1 in the tile's core and a raised-cosine (cos²/sin²) hand-over between
   neighbours. The windows of all tiles sum to exactly 1 at every pixel (a partition of unity),
   so the result is accumulated straight into one float32 output array: no weight array, no list
   of tiles, no float64 copies of the image. Tiles start at multiples of the network's size
   multiple (a network that down-samples is shift-equivariant only by that multiple, so every
   tile then sees the pixels in the same phase as the whole image) and shrink to the smallest
   size that covers the frame with the same number of tiles. Frames no larger than ``tile`` run
   whole. Padding (reflection) is only ever added at the bottom/right edge, up to the multiple.
3. **Back to the input's units**: ``denormalise(y_n, offset, scale)``.
4. **Floor**: the output is clipped at the frame's own minimum. Noise only widens the spread of
   values, so a restored (denoised) value below the lowest recorded value is an artefact; for
   counts (no value below 0) this means no negative background, and data that do have negative
   values (an analog signal with its offset subtracted) keep them down to their own minimum.
5. **Mean**: Poisson noise and most detector noise are mean-preserving, so the restored frame
   must have the mean of the recorded one. The remaining bias of the network is removed by one
   global gain about the floor, ``y ← f + (y − f)·(mean(x) − f)/(mean(y) − f)``, which keeps the
   floor and the equivariance (an additive shift is used when that ratio is undefined). The gain
   applied is recorded in ``Image.metadata['restore']['mean_gain']``; a gain far from 1 means the
   image is unlike the model's training data and a warning is raised.

Memory: besides the input, one float32 normalised frame and one float32 output per frame
(``2 × 4 × H × W`` bytes), the normaliser's temporaries, one batch of tiles and the network's
activations for that batch (about ``batch_size × tile² × 4 × channels × a few`` bytes, independent
of the image size). Measured for an 8192 × 8192 float32 frame with :mod:`emrestore.nn.normalise`
and 512-pixel tiles: 554 MB NumPy peak beyond the 268 MB input (2.1 × the image), 1.17 GB
maximum resident size of the whole process with a 3 × 3 convolution as the network.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError
from .image import Image
from .io import check_pixel_size, check_stack, load_image, save_image, write_preview

__all__ = ["ModelSpec", "RestoreWarning", "restore", "restore_command", "tile_windows"]

#: Default tile side (px). On a CPU larger tiles are cheaper per pixel (less overlap, and one
#: 1024² tile costs about what four 512² tiles in a batch cost in memory); measured with an
#: untrained default U-Net on 1024², CPU-seconds for tile 1024 / 512 / 512×4 / 256×4:
#: 6.5 / 7.3 / 9.5 / 10.3.
DEFAULT_TILE = 1024
#: Rows denormalised at a time (bounds the temporaries of a float64-returning denormaliser).
_CHUNK_ROWS = 256
#: A mean correction outside [1/x, x] triggers a warning.
_GAIN_WARN = 1.25


class RestoreWarning(UserWarning):
    """Something about a restoration the user should know (the result is still produced)."""


@dataclass(frozen=True)
class ModelSpec:
    """What restore needs to know about a network (from its model card).

    Attributes
    ----------
    name : model name (zoo name or ``"custom"``).
    min_size_px : smallest image side the network accepts, in pixels.
    multiple_of : the network's size multiple; tiles are padded to it.
    receptive_field_px : full width of the region of the input that affects one output pixel
        (32 when the card does not say); sets the default tile overlap.
    normalisation : the card's normalisation entry; its ``params`` are passed to
        :func:`emrestore.nn.normalise.normalise`.
    """

    name: str = "custom"
    min_size_px: int = 1
    multiple_of: int = 1
    receptive_field_px: int = 32
    normalisation: object = None

    @classmethod
    def from_card(cls, card: dict | None, name: str = "custom") -> ModelSpec:
        card = dict(card or {})

        def integer(key: str, default: int, low: int) -> int:
            value = card.get(key, default)
            try:
                value = int(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"model card {key} must be an integer, got {value!r}") from exc
            if value < low:
                raise ConfigError(f"model card {key} must be >= {low}, got {value}")
            return value

        return cls(
            name=str(card.get("name", name)),
            min_size_px=integer("min_size_px", 1, 1),
            multiple_of=integer("multiple_of", 1, 1),
            receptive_field_px=integer("receptive_field_px", 32, 1),
            normalisation=card.get("normalisation"),
        )


# ---------------------------------------------------------------------------------------------
# Models and normalisers


@functools.lru_cache(maxsize=4)
def _zoo_model_cached(name: str, device: str, stamp: float):
    from .nn.zoo import load_model

    return load_model(name, device=device)


def _zoo_model(name: str, device: str):
    """A zoo model (cached; a user's card/weights path is reloaded when the file changes)."""
    path = Path(name)
    stamp = path.stat().st_mtime if path.suffix in (".json", ".safetensors") and path.exists() \
        else 0.0
    return _zoo_model_cached(name, device, stamp)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_model(model, device: str):
    """(torch module in eval mode on ``device``, ModelSpec)."""
    from torch import nn

    if isinstance(model, (str, os.PathLike)):
        model = os.fspath(model)
        module, card = _zoo_model(model, device)
        return module, ModelSpec.from_card(card, name=model)
    if isinstance(model, nn.Module):
        module, card = model, {}
    elif isinstance(model, (tuple, list)) and len(model) == 2 and isinstance(model[0], nn.Module):
        module, card = model
    else:
        raise ConfigError(
            "model must be a zoo name (see `emrestore models`), a torch module, or a "
            f"(module, card) pair; got {type(model).__name__}")
    card = dict(card or {})
    for key in ("multiple_of", "min_size_px"):  # a RestorationNet knows these itself
        if key not in card and isinstance(getattr(module, key, None), int):
            card[key] = getattr(module, key)
    module = module.to(device).eval()
    return module, ModelSpec.from_card(card)


def _resolve_normaliser(normaliser, spec: ModelSpec) -> tuple[Callable, Callable]:
    """(normalise, denormalise) from an object, a pair of callables, or the nn default."""
    if normaliser is None:
        from .nn.normalise import denormalise, normalise

        params = spec.normalisation.get("params") if isinstance(spec.normalisation, dict) else None
        if params:
            normalise = functools.partial(normalise, **params)
        return normalise, denormalise
    if isinstance(normaliser, (tuple, list)) and len(normaliser) == 2:
        return normaliser[0], normaliser[1]
    if hasattr(normaliser, "normalise") and hasattr(normaliser, "denormalise"):
        return normaliser.normalise, normaliser.denormalise
    raise ConfigError("normaliser must be a (normalise, denormalise) pair or an object with "
                      "normalise() and denormalise()")


# ---------------------------------------------------------------------------------------------
# Tiling


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


@dataclass(frozen=True)
class _AxisPlan:
    """Tiles along one axis of the canvas (the image padded at the end to the size multiple)."""

    length: int  # image length along the axis
    tile: int  # network input length
    starts: tuple[int, ...]  # first pixel of each tile, multiples of the network's size multiple
    windows: tuple[np.ndarray | None, ...]  # weights over each tile (None = all ones)


def _raised_cosine(x: np.ndarray) -> np.ndarray:
    """0 → 1 hand-over on x ∈ [0, 1] (sin²), clipped outside."""
    return np.sin(0.5 * np.pi * np.clip(x, 0.0, 1.0)) ** 2


def _plan_axis(length: int, tile: int, overlap: int, margin: int, multiple: int) -> _AxisPlan:
    """Tile starts and hand-over windows along one axis.

    Tiles start at multiples of the network's size multiple, so that a network with
    down-sampling sees every tile in the same phase as the whole image (it is only
    shift-equivariant by that multiple). The image is padded at its end only, for the same reason.
    """
    canvas = _round_up(length, multiple)
    if canvas <= tile:
        return _AxisPlan(length, canvas, (0,), (None,))
    step = max(tile - overlap - multiple, 1)  # rounding a start to the multiple moves it < multiple
    n = math.ceil((canvas - tile) / step) + 1
    # the smallest tile that still covers the axis with n tiles: less work for the same overlaps
    tile = min(tile, _round_up(math.ceil((canvas + (n - 1) * (overlap + multiple)) / n), multiple))
    starts = np.rint(np.linspace(0, canvas - tile, n) / multiple).astype(int) * multiple
    # hand-over zone k between tiles k and k+1, centred in their overlap [starts[k+1], starts[k]+T)
    centres = 0.5 * (starts[1:] + starts[:-1] + tile)
    half = min(0.5 * (starts[:-1] + tile - starts[1:]).min() - margin,  # stay off padded edges
               0.5 * np.diff(centres).min() if n > 2 else np.inf)  # zones must not overlap
    half = max(float(half), 0.5)
    windows = []
    for k, s in enumerate(starts):
        p = np.arange(s, s + tile, dtype=np.float64)
        w = np.ones(tile)
        if k > 0:
            w *= _raised_cosine((p - (centres[k - 1] - half)) / (2 * half))
        if k < n - 1:
            w *= 1.0 - _raised_cosine((p - (centres[k] - half)) / (2 * half))
        windows.append(w.astype(np.float32))
    return _AxisPlan(length, tile, tuple(int(s) for s in starts), tuple(windows))


def tile_windows(length: int, tile: int, overlap: int, margin: int = 0,
                 multiple_of: int = 1) -> list[tuple[int, np.ndarray]]:
    """The 1-D tiling of an axis: ``(start, weights over the tile)`` per tile.

    The weights of all tiles sum to 1 at every pixel (tiles may reach past ``length`` by less
    than ``multiple_of`` pixels: the image is padded there). Exposed for inspection and tests;
    :func:`restore` uses the separable product of the row and the column windows.
    """
    plan = _plan_axis(length, tile, overlap, margin, multiple_of)
    return [(s, np.ones(plan.tile, np.float32) if w is None else w)
            for s, w in zip(plan.starts, plan.windows)]


def _tile_geometry(spec: ModelSpec, tile: int | None, overlap: int | None) -> tuple[int, int, int]:
    """(tile, overlap, margin) in pixels, checked against the network."""
    m = spec.multiple_of
    tile = DEFAULT_TILE if tile is None else int(tile)
    if tile < 1:
        raise InputError(f"tile must be a positive number of pixels, got {tile}")
    tile = _round_up(max(tile, spec.min_size_px, 16, 4 * m), m)
    margin = min(spec.receptive_field_px // 2, tile // 8)
    if overlap is None:
        overlap = 2 * margin + max(16, margin)
    overlap = int(overlap)
    if overlap < 0:
        raise InputError(f"overlap must be >= 0 pixels, got {overlap}")
    overlap = min(max(overlap, 2), tile // 2)
    if overlap < 2 * margin + 2:
        margin = max(0, (overlap - 2) // 2)
    return tile, overlap, margin


def _run_frame(x_n: np.ndarray, module, spec: ModelSpec, device: str, tile: int, overlap: int,
               margin: int, batch_size: int, out: np.ndarray, bar=None) -> None:
    """Network output (normalised units) of one normalised frame, written into ``out``."""
    import torch

    h, w = x_n.shape
    rows = _plan_axis(h, tile, overlap, margin, spec.multiple_of)
    cols = _plan_axis(w, tile, overlap, margin, spec.multiple_of)
    th, tw = rows.tile, cols.tile
    out[...] = 0.0
    batch = np.empty((min(batch_size, len(rows.starts) * len(cols.starts)), 1, th, tw),
                     np.float32)
    placed: list[tuple[int, int, np.ndarray | None, np.ndarray | None]] = []

    def flush() -> None:
        n = len(placed)
        with torch.inference_mode():
            y = module(torch.from_numpy(batch[:n]).to(device))
        if tuple(y.shape) != (n, 1, th, tw):
            raise ConfigError(f"the network returned shape {tuple(y.shape)} for input "
                              f"{(n, 1, th, tw)}; restore needs a 1-channel same-size output")
        y = y.float().cpu().numpy()
        for k, (r, c, wr, wc) in enumerate(placed):
            vh, vw = min(th, h - r), min(tw, w - c)  # image pixels inside this tile
            piece = y[k, 0, :vh, :vw]
            if wr is not None:
                piece = piece * wr[:vh, None]
            if wc is not None:
                piece = piece * wc[None, :vw]
            out[r:r + vh, c:c + vw] += piece
        if bar is not None:
            bar.update(n)
        placed.clear()

    for r, wr in zip(rows.starts, rows.windows):
        for c, wc in zip(cols.starts, cols.windows):
            piece = x_n[r:r + th, c:c + tw]
            k = len(placed)
            if piece.shape == (th, tw):
                batch[k, 0] = piece
            else:  # the last tile of an axis reaches into the padding
                batch[k, 0] = _pad_reflect(piece, ((0, th - piece.shape[0]),
                                                   (0, tw - piece.shape[1])))
            placed.append((r, c, wr, wc))
            if len(placed) == len(batch):
                flush()
    if placed:
        flush()


def _pad_reflect(a: np.ndarray, pads) -> np.ndarray:
    """Reflection padding; edge replication where the image is too small to reflect."""
    small = any(p >= n for (p0, p1), n in zip(pads, a.shape) for p in (p0, p1) if p)
    return np.pad(a, pads, mode="edge" if small else "reflect")


def _count_tiles(h: int, w: int, spec: ModelSpec, tile: int, overlap: int, margin: int) -> int:
    rows = _plan_axis(h, tile, overlap, margin, spec.multiple_of)
    cols = _plan_axis(w, tile, overlap, margin, spec.multiple_of)
    return len(rows.starts) * len(cols.starts)


# ---------------------------------------------------------------------------------------------
# Public API


def restore(image, model="stem-hr", *, tile: int | None = DEFAULT_TILE,
            overlap: int | None = None, device: str | None = None, batch_size: int | None = None,
            progress: bool = False, normaliser=None, clip_to_floor: bool = True,
            preserve_mean: bool = True):
    """Restore (denoise) an image or a stack of frames with a trained network.

    Dose-blind and unit-preserving: no dose is needed, and the output is in the input's units
    (counts in, counts out; scaling the input by k scales the output by k; an additive detector
    offset passes through). See the module docstring for the steps and the guarantees.

    Parameters
    ----------
    image : ndarray or Image
        ``(rows, cols)`` image or ``(frames, rows, cols)`` stack (restored frame by frame), of any
        real dtype (uint8/16, signed int, float16/32/64). An RGB image is converted to grey with a
        warning.
    model : str or path or torch.nn.Module or (module, card)
        A zoo name (``emrestore models`` lists them), the path of a model card or weights file,
        or a network with its card (a dict that may give ``min_size_px``, ``multiple_of``,
        ``receptive_field_px`` and ``normalisation``).
    tile : int, optional
        Tile side in pixels (rounded up to the network's size multiple); frames no larger than
        this run whole. ``None`` means the default (1024). Memory for the network grows with
        ``batch_size × tile²``.
    overlap : int, optional
        Minimum overlap of neighbouring tiles in pixels; default from the receptive field
        (``2 × margin + max(16, margin)``, ``margin = min(receptive_field_px // 2, tile // 8)``),
        at most ``tile // 2``.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ...; default CUDA when available, else the CPU (with PyTorch's
        default thread count, all cores).
    batch_size : int, optional
        Tiles per network call (default 1 on a CPU, where batching does not speed convolutions
        up and costs memory; 8 on a GPU).
    progress : bool
        Show a progress bar over tiles.
    normaliser : (normalise, denormalise) or object with those methods, optional
        Defaults to the model's (:mod:`emrestore.nn.normalise`). ``normalise(frame)`` returns
        ``(frame_n, offset, scale)``; ``denormalise(y_n, offset, scale)`` maps back elementwise.
    clip_to_floor : bool
        Clip the output at the frame's minimum (no negative background for counts).
    preserve_mean : bool
        Apply the global gain that makes the output mean equal the input mean.

    Returns
    -------
    ndarray (float32, same shape) or Image
        An :class:`~emrestore.image.Image` when an Image was given (same calibration, with
        ``metadata['restore']`` describing the run), else an array.

    Raises
    ------
    InputError
        Empty, 1-D, NaN/Inf, or a frame smaller than the network's minimum size.
    """
    is_image = isinstance(image, Image)
    given_shape = np.shape(image.array if is_image else image)
    arr = check_stack(image.array if is_image else image, name="image to restore")
    frames = arr[None] if arr.ndim == 2 else arr
    n_frames, h, w = frames.shape

    device = device or _default_device()
    module, spec = _resolve_model(model, device)
    if min(h, w) < spec.min_size_px:
        raise InputError(
            f"image to restore is {h} × {w} pixels, smaller than the {spec.min_size_px} pixels "
            f"the network {spec.name!r} needs on each side; use a larger field of view")
    normalise, denormalise = _resolve_normaliser(normaliser, spec)
    tile, overlap, margin = _tile_geometry(spec, tile, overlap)
    if batch_size is None:
        batch_size = 1 if str(device).startswith("cpu") else 8
    batch_size = max(1, int(batch_size))

    result = np.empty((n_frames, h, w), np.float32)
    gains = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_frames * _count_tiles(h, w, spec, tile, overlap, margin),
                   desc="restore", unit="tile")
    try:
        for t in range(n_frames):
            frame = np.asarray(frames[t], dtype=np.float32)
            gains.append(_restore_frame(
                frame, result[t], module, spec, device, normalise, denormalise, tile, overlap,
                margin, batch_size, clip_to_floor, preserve_mean, bar))
            del frame
    finally:
        if bar is not None:
            bar.close()
    finite_gains = [g for g in gains if np.isfinite(g)]
    if finite_gains and max(max(finite_gains), 1 / min(finite_gains)) > _GAIN_WARN:
        worst = max(finite_gains, key=lambda g: abs(math.log(g)))
        warnings.warn(
            f"the network changed the mean signal above the floor by a factor {1 / worst:.3g} "
            "(corrected); "
            "this image may be unlike the data the model was trained on", RestoreWarning,
            stacklevel=2)
    out = result[0] if arr.ndim == 2 else result
    if out.size == math.prod(given_shape) and out.shape != given_shape:  # singleton axes back
        out = out.reshape(given_shape)
    if not is_image:
        return out
    metadata = dict(image.metadata)
    metadata["restore"] = {"model": spec.name, "tile": tile, "overlap": overlap,
                           "mean_gain": [float(g) for g in gains]}
    return image.replace(array=out, metadata=metadata)


def _restore_frame(frame: np.ndarray, out: np.ndarray, module, spec: ModelSpec, device: str,
                   normalise, denormalise, tile: int, overlap: int, margin: int,
                   batch_size: int, clip_to_floor: bool, preserve_mean: bool, bar) -> float:
    """Restore one float32 frame into ``out``; returns the mean gain applied (NaN if none)."""
    floor = float(frame.min())
    mean_in = float(frame.mean(dtype=np.float64))
    if float(frame.max()) == floor:
        # a constant frame holds no structure to restore; a network would only invent some
        out[...] = frame
        if bar is not None:
            bar.update(_count_tiles(*frame.shape, spec, tile, overlap, margin))
        return math.nan
    x_n, offset, scale = normalise(frame)
    x_n = np.asarray(x_n, dtype=np.float32)
    if x_n.shape != frame.shape:
        raise ConfigError(f"the normaliser returned shape {x_n.shape} for a frame {frame.shape}")
    _run_frame(x_n, module, spec, device, tile, overlap, margin, batch_size, out, bar)
    del x_n
    for r in range(0, out.shape[0], _CHUNK_ROWS):
        out[r:r + _CHUNK_ROWS] = denormalise(out[r:r + _CHUNK_ROWS], offset, scale)
    if clip_to_floor:
        np.maximum(out, np.float32(floor), out=out)
    gain = math.nan
    if preserve_mean:
        mean_out = float(out.mean(dtype=np.float64))
        above_in, above_out = mean_in - floor, mean_out - floor
        if above_in > 0 and above_out > 1e-6 * max(abs(mean_in), abs(floor), 1e-30):
            gain = above_in / above_out
            out -= np.float32(floor)
            out *= np.float32(gain)
            out += np.float32(floor)
        else:
            out += np.float32(mean_in - mean_out)
    return gain


def restore_command(input_path, output_path, *, model="stem-hr", pixel_size_A: float | None = None,
                    tile: int | None = None, preview: bool = True, progress: bool = False,
                    device: str | None = None, normaliser=None) -> list[Path]:
    """``emrestore restore IN -o OUT``: read a file, restore it, write the result (and a preview).

    Parameters
    ----------
    input_path : path
        Any file :func:`emrestore.io.load_image` reads (dm3/dm4, emd, ser/emi, mrc, tif, png,
        npy/npz); stacks are restored frame by frame.
    output_path : path
        ``.tif``/``.tiff`` (float32, ImageJ calibration in nm), ``.npy`` or ``.npz``; never the
        input file.
    model : str or (module, card)
        Zoo model name (or anything :func:`restore` accepts).
    pixel_size_A : float, optional
        Overrides the file's pixel size (Å) written into the output's calibration.
    tile : int, optional
        Tile side in pixels (default 1024).
    preview : bool
        Also write ``<OUT stem>_preview.png`` (8-bit, percentile-stretched).
    progress, device, normaliser
        Passed to :func:`restore`.

    Returns
    -------
    list of Path
        The files written.
    """
    src, dst = Path(input_path), Path(output_path)
    suffix = dst.suffix.lower()
    if suffix not in (".tif", ".tiff", ".npy", ".npz"):
        raise InputError(f"output {dst.name}: choose a .tif, .tiff, .npy or .npz file name")
    preview_path = dst.with_name(dst.stem + "_preview.png")
    for target in (dst, preview_path) if preview else (dst,):
        if target.resolve() == src.resolve() or (
                target.exists() and src.exists() and target.samefile(src)):
            raise InputError(f"refusing to write over the input file {src}; choose another output")
    if not dst.parent.exists() and str(dst.parent):
        raise InputError(f"output folder does not exist: {dst.parent}")
    image = load_image(src)
    if pixel_size_A is not None:
        image = image.replace(pixel_size_A=check_pixel_size(pixel_size_A))
    restored = restore(image, model, tile=tile, device=device, progress=progress,
                       normaliser=normaliser)
    written = [save_image(dst, restored, protect=[src])]
    if preview:
        written.append(write_preview(preview_path, restored.array, protect=[src]))
    return written
