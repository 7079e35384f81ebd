"""Reading images from files and writing outputs safely.

Formats read: ``.npy``, ``.npz``, ``.tif``/``.tiff``, ``.png`` (and the other formats that
scikit-image reads) natively; ``.dm3``/``.dm4`` (Gatan DigitalMicrograph), ``.emd`` (Velox and
Berkeley/NCEM), ``.ser``/``.emi`` (TIA) and ``.mrc``/``.mrcs`` through RosettaSciIO
(``rsciio``). :func:`read_image` returns ``(image, pixel_size_A)``: a 2-D float32 array in the
file's own units (counts stay counts) and the pixel size in Å, or ``None`` when the file does
not say. :func:`load_image` returns an :class:`~emrestore.image.Image` and also keeps stacks
of frames ``(frames, rows, cols)``.

Formats written by :func:`save_image`: ``.tif``/``.tiff`` (float32 with an ImageJ calibration
in nm, which ImageJ/Fiji and :func:`read_image` read back), ``.npy``, ``.npz`` (``image`` and
``pixel_size_A``) and ``.png`` (an 8-bit percentile-stretched preview, see
:func:`write_preview`).

Outputs are written with :func:`write_atomically`: to a temporary file in the destination folder,
then renamed over the destination, so that a crash never leaves half a file and an input is never
overwritten.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = [
    "READ_SUFFIXES",
    "WRITE_SUFFIXES",
    "check_image",
    "check_pixel_size",
    "check_stack",
    "load_image",
    "read_image",
    "save_image",
    "to_preview",
    "write_atomically",
    "write_preview",
]

# Luminance weights (ITU-R BT.709), applied without rescaling so that grey values keep the
# file's units.
_RGB_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])

# ImageJ / TIFF length units -> Å
_UNIT_TO_A = {
    "a": 1.0, "å": 1.0, "angstrom": 1.0, "ang": 1.0, "\u212b": 1.0,
    "nm": 10.0, "nanometer": 10.0, "nanometre": 10.0,
    "pm": 0.01, "picometer": 0.01,
    "um": 1e4, "µm": 1e4, "\u03bcm": 1e4, "micron": 1e4, "microns": 1e4, "micrometer": 1e4,
    "mm": 1e7, "cm": 1e8, "m": 1e10,
}


def check_pixel_size(pixel_size_A: float | None, *, what: str = "pixel size") -> float | None:
    """Return ``pixel_size_A`` as a float (or ``None``); :class:`InputError` unless it is > 0."""
    if pixel_size_A is None:
        return None
    try:
        value = float(pixel_size_A)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be a number in Å, got {pixel_size_A!r}") from exc
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{what} must be a positive number of Å per pixel, got {pixel_size_A!r}")
    return value


def check_image(image, *, name: str = "image", allow_rgb: bool = True) -> np.ndarray:
    """Validate an image array and return it as a 2-D float32 array.

    RGB(A) images are converted to grey (luminance, same units) with a warning; singleton leading
    axes are dropped. Raises :class:`InputError` for another number of dimensions, an empty array,
    or NaN/Inf values.
    """
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise InputError(f"{name}: complex values are not an image (take abs() or .real first)")
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and min(arr.shape[:2]) > 4 and allow_rgb:
        warnings.warn(f"{name}: colour (RGB) image converted to grey by luminance", stacklevel=3)
        arr = arr[..., :3].astype(np.float64) @ _RGB_WEIGHTS
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2-D image (rows, cols), got shape {arr.shape}")
    if arr.size == 0 or min(arr.shape) < 1:
        raise InputError(f"{name}: the image is empty (shape {arr.shape})")
    out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        n = int(bad.sum())
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"{name}: {n} pixel(s) are NaN or infinite (first at row, col = {first}); "
            "fill or crop them before analysis"
        )
    return out


def _pixel_size_from_tiff(tif) -> float | None:
    """Pixel size in Å from ImageJ metadata or the TIFF resolution tags, if they are meaningful."""
    try:
        page = tif.pages[0]
        tags = page.tags
        xres = tags.get("XResolution")
        if xres is None:
            return None
        num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
        if not num or not den:
            return None
        per_unit = num / den  # pixels per unit
        if per_unit <= 0:
            return None
        ij = tif.imagej_metadata or {}
        unit = ij.get("unit")
        if unit:
            factor = _UNIT_TO_A.get(str(unit).strip().lower().replace("\\u00b5", "µ"))
            if factor is None:
                return None
            return factor / per_unit
        resunit = tags.get("ResolutionUnit")
        code = int(resunit.value) if resunit is not None else 2
        factor = {3: 1e8, 2: 2.54e8}.get(code)  # centimetre, inch
        if factor is None:
            return None
        size = factor / per_unit
        # 72 or 96 dpi defaults written by image editors give ~0.3 mm "pixels": not a calibration.
        return size if size < 1e4 else None
    except Exception:  # calibration is optional; a broken tag must not stop reading the image
        return None


def _emrestore_info(tif) -> dict:
    """Metadata that :func:`save_image` stored in the ImageJ ``Info`` text, if any."""
    try:
        info = (tif.imagej_metadata or {}).get("Info")
        data = json.loads(info)["emrestore"] if info else {}
        return dict(data) if isinstance(data, dict) else {}
    except (ValueError, KeyError, TypeError):
        return {}


def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if "image" in keys:
                image = data["image"]
            elif len(keys) == 1:
                image = data[keys[0]]
            else:
                raise InputError(
                    f"{path}: an .npz file needs an 'image' array (found keys {keys})"
                )
            pixel = None
            for key in ("pixel_size_A", "pixel_size"):
                if key in keys:
                    pixel = float(np.asarray(data[key]).reshape(-1)[0])
                    break
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read as .npz ({exc})") from exc
    return image, pixel


# Formats read through RosettaSciIO: suffix -> (rsciio module, reader keyword arguments)
_RSCIIO_READERS = {
    ".dm3": ("digitalmicrograph", {}),
    ".dm4": ("digitalmicrograph", {}),
    ".emd": ("emd", {}),
    ".ser": ("tia", {}),
    ".emi": ("tia", {}),
    ".mrc": ("mrc", {}),
    ".mrcs": ("mrc", {}),
}

#: Suffixes :func:`read_image` and :func:`load_image` know (others are tried with scikit-image).
READ_SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".png", *_RSCIIO_READERS)

#: Suffixes :func:`save_image` writes.
WRITE_SUFFIXES = (".tif", ".tiff", ".npy", ".npz", ".png")


def _unit_factor_A(unit) -> float | None:
    """Å per ``unit`` for a length unit string (``nm``, ``µm``, ``Å``, ...), else ``None``."""
    if unit is None:
        return None
    key = str(unit).strip().lower().replace("\\u00b5", "µ").replace("\u03bc", "µ")
    return _UNIT_TO_A.get(key)


def _image_axes(axes) -> list:
    """The (row, column) axis dicts: the last two array axes."""
    ordered = sorted(axes, key=lambda ax: int(ax.get("index_in_array", axes.index(ax))))
    return ordered[-2:]


def _pixel_size_from_axes(axes, path: Path) -> float | None:
    """Pixel size in Å from RosettaSciIO axis dicts (the two image axes), or ``None``."""
    spatial = _image_axes(axes)
    if len(spatial) != 2 or any(ax.get("navigate", False) for ax in spatial):
        return None
    sizes = []
    for ax in spatial:
        factor = _unit_factor_A(ax.get("units"))
        try:
            scale = float(ax.get("scale", 1.0))
        except (TypeError, ValueError):
            return None
        if factor is None or not np.isfinite(scale) or scale <= 0:
            return None
        sizes.append(scale * factor)
    y_A, x_A = sizes
    if abs(y_A - x_A) > 1e-3 * max(y_A, x_A):
        warnings.warn(
            f"{path}: pixels are not square ({y_A:.4g} Å × {x_A:.4g} Å); using the column "
            "(x) size", stacklevel=4)
    return x_A


def _guess_modality(signal: dict) -> str | None:
    """'stem'/'tem' when the file's metadata say so plainly, else ``None``."""
    title = str(signal.get("metadata", {}).get("General", {}).get("title", "")).upper()
    if "HAADF" in title or "ADF" in title.split():
        return "stem"
    om = signal.get("original_metadata", {})
    try:  # DigitalMicrograph: ImageList.TagGroup0.ImageTags.Microscope Info.Illumination Mode
        for group in om.get("ImageList", {}).values():
            mode = group["ImageTags"]["Microscope Info"]["Illumination Mode"]
            mode = str(mode).upper()
            if "STEM" in mode:
                return "stem"
            if "TEM" in mode:
                return "tem"
    except (AttributeError, KeyError, TypeError):
        pass
    return None


def _is_image_signal(signal: dict) -> bool:
    data = signal.get("data")
    axes = signal.get("axes", [])
    if data is None or np.iscomplexobj(data):
        return False
    n_signal = sum(1 for ax in axes if not ax.get("navigate", False))
    n_nav = sum(1 for ax in axes if ax.get("navigate", False))
    if np.ndim(data) not in (2, 3) or len(axes) != np.ndim(data):
        return False
    # (rows, cols) or (frames, rows, cols); some readers (EMD Berkeley) mark no axis as a
    # navigation axis, then the first of three is taken as the frame axis
    return (n_signal == 2 and n_nav <= 1) or (n_signal == 3 and n_nav == 0)


def _select_signal(signals: list, path: Path, signal):
    """Pick one image (or image stack) out of what RosettaSciIO returned."""
    images = [s for s in signals if _is_image_signal(s)]
    titles = [str(s.get("metadata", {}).get("General", {}).get("title", "")) for s in images]
    if not images:
        kinds = [f"{np.shape(s.get('data'))}" for s in signals]
        raise InputError(
            f"{path}: no 2-D image or image stack in this file (found data of shapes {kinds})")
    if signal is not None:
        if isinstance(signal, (int, np.integer)):
            if not 0 <= int(signal) < len(images):
                raise InputError(f"{path}: image number {signal} does not exist; the file holds "
                                 f"{len(images)} image(s): {titles}")
            return images[int(signal)]
        matches = [s for s, t in zip(images, titles) if str(signal).lower() in t.lower()]
        if not matches:
            raise InputError(f"{path}: no image titled {signal!r}; the file holds {titles}")
        return matches[0]
    if len(images) == 1:
        return images[0]
    preferred = [i for i, t in enumerate(titles) if "HAADF" in t.upper()]
    index = preferred[0] if preferred else 0
    warnings.warn(f"{path}: the file holds {len(images)} images {titles}; using "
                  f"{titles[index]!r} (choose another with signal=)", stacklevel=4)
    return images[index]


def _read_rsciio(path: Path, signal=None):
    module_name, kwargs = _RSCIIO_READERS[path.suffix.lower()]
    try:
        import importlib

        module = importlib.import_module(f"rsciio.{module_name}")
    except ImportError as exc:
        raise InputError(
            f"{path}: reading {path.suffix} files needs RosettaSciIO "
            "(pip install rosettasciio)") from exc
    try:
        signals = module.file_reader(str(path), **kwargs)
    except Exception as exc:
        raise InputError(f"{path}: cannot read as {path.suffix} ({type(exc).__name__}: {exc})"
                         ) from exc
    chosen = _select_signal(list(signals), path, signal)
    data = np.asarray(chosen["data"])
    axes = list(chosen.get("axes", []))
    pixel = _pixel_size_from_axes(axes, path)
    if module_name == "mrc":
        # rsciio reports 1 nm per pixel when the header has no cell size: not a calibration
        header = chosen.get("original_metadata", {}).get("std_header", {})
        no_cell = any(float(np.ravel(header.get(k, [1.0]))[0]) == 0 for k in ("Xlen", "MX"))
        if "fei_header" not in chosen.get("original_metadata", {}) and no_cell:
            pixel = None
    general = chosen.get("metadata", {}).get("General", {})
    metadata = {"source": str(path), "format": path.suffix.lower().lstrip(".")}
    if general.get("title"):
        metadata["title"] = str(general["title"])
    return data, pixel, metadata, _guess_modality(chosen)


def _read_raw(path, *, signal=None):
    """(array as stored, pixel size in Å or None, metadata dict, modality or None)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if path.is_dir():
        raise InputError(f"expected an image file, got a folder: {path}")
    suffix = path.suffix.lower()
    pixel = None
    metadata = {"source": str(path), "format": suffix.lstrip(".")}
    modality = None
    if suffix == ".npy":
        try:
            image = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(f"{path}: cannot read as .npy ({exc})") from exc
    elif suffix == ".npz":
        image, pixel = _read_npz(path)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                image = tif.asarray()
                pixel = _pixel_size_from_tiff(tif)
                saved = _emrestore_info(tif)
        except Exception as exc:
            raise InputError(f"{path}: cannot read as TIFF ({exc})") from exc
        modality = saved.pop("modality", None)
        if modality not in ("stem", "tem", "sem"):
            modality = None
        metadata.update(saved)
    elif suffix in _RSCIIO_READERS:
        image, pixel, metadata, modality = _read_rsciio(path, signal)
    else:
        try:
            import skimage.io

            image = skimage.io.imread(path)
        except Exception as exc:
            raise InputError(f"{path}: cannot read this file as an image ({exc})") from exc
        if image.ndim == 3 and image.shape[-1] == 2:  # grey + alpha
            image = image[..., 0]
    if np.asarray(image).size == 0:
        raise InputError(f"{path}: the file holds no image data")
    pixel = check_pixel_size(pixel, what=f"{path}: pixel size stored in the file")
    return image, pixel, metadata, modality


def read_image(path, *, allow_rgb: bool = True, signal=None) -> tuple[np.ndarray, float | None]:
    """Read a 2-D image from a file.

    Parameters
    ----------
    path : str or Path
        ``.npy``, ``.npz`` (array ``image`` and optional scalar ``pixel_size_A``),
        ``.tif``/``.tiff`` (pixel size from the ImageJ unit or the resolution tags, when present),
        ``.dm3``/``.dm4``, ``.emd`` (Velox or Berkeley), ``.ser``/``.emi``, ``.mrc`` (through
        RosettaSciIO, pixel size from the axis calibration), or ``.png`` and the other formats
        scikit-image reads.
    allow_rgb : bool
        Convert a colour image to grey (with a warning) instead of refusing it.
    signal : int or str, optional
        For files holding several images (a Velox file with HAADF, DF and BF): the number of the
        image, or a part of its title. By default the HAADF image, else the first.

    Returns
    -------
    image : ndarray, float32, shape (rows, cols)
        The values as stored (no rescaling).
    pixel_size_A : float or None
        Å per pixel if the file records it.

    Raises
    ------
    InputError
        Missing or unreadable file, unsupported format, wrong number of dimensions, NaN/Inf values,
        non-positive pixel size.
    """
    image, pixel, _, _ = _read_raw(path, signal=signal)
    image = check_image(image, name=str(path), allow_rgb=allow_rgb)
    return image, pixel


def check_stack(image, *, name: str = "image", allow_rgb: bool = True) -> np.ndarray:
    """Validate a 2-D image or a (frames, rows, cols) stack without copying it.

    The dtype is kept (any real numeric type; booleans become uint8); singleton leading axes are
    dropped; an RGB(A) image or stack (last axis 3 or 4) is converted to grey by luminance with a
    warning (float32, same units).

    Raises
    ------
    InputError
        Not numeric, complex, 1-D, more than 3-D, empty, or with NaN/Inf values (the message
        names the first bad pixel).
    """
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise InputError(f"{name}: complex values are not an image (take abs() or .real first)")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.size == 0:
        raise InputError(f"{name}: the image is empty (shape {arr.shape})")
    if arr.ndim < 2:
        raise InputError(
            f"{name}: expected a 2-D image (rows, cols), got a {arr.ndim}-D array of shape "
            f"{arr.shape} (reshape a flattened image to (rows, cols) first)")
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim in (3, 4) and arr.shape[-1] in (3, 4) and min(arr.shape[-3:-1]) > 4 and allow_rgb:
        warnings.warn(f"{name}: colour (RGB) image converted to grey by luminance", stacklevel=3)
        grey = np.empty(arr.shape[:-1], np.float32)
        for index in np.ndindex(arr.shape[:-3]):
            grey[index] = arr[index][..., :3].astype(np.float32) @ _RGB_WEIGHTS.astype(np.float32)
        arr = grey
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise InputError(f"{name}: expected a 2-D image (rows, cols) or a stack (frames, rows, "
                         f"cols), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.inexact):
        frames = arr[None] if arr.ndim == 2 else arr
        for t, frame in enumerate(frames):
            bad = ~np.isfinite(frame)
            if bad.any():
                n = int(bad.sum())
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                where = f"row, col = {first}" + (f" of frame {t}" if arr.ndim == 3 else "")
                raise InputError(
                    f"{name}: {n} pixel(s) are NaN or infinite (first at {where}); "
                    "fill or crop them before analysis")
    return arr


def load_image(path, *, allow_rgb: bool = True, signal=None, pixel_size_A=None):
    """Read an image or a stack of frames from a file, with its calibration.

    Parameters
    ----------
    path : str or Path
        Any format :func:`read_image` reads.
    allow_rgb : bool
        Convert colour to grey (with a warning) instead of refusing it.
    signal : int or str, optional
        Which image of a multi-image file (see :func:`read_image`).
    pixel_size_A : float, optional
        Overrides the file's calibration (Å per pixel).

    Returns
    -------
    Image
        float32 ``(rows, cols)`` or ``(frames, rows, cols)`` array in the file's units, the pixel
        size in Å (``None`` if unknown), the modality when the file says it, and ``metadata``
        with the source path, the format and the image title.
    """
    from .image import Image

    image, pixel, metadata, modality = _read_raw(path, signal=signal)
    arr = check_stack(image, name=str(path), allow_rgb=allow_rgb).astype(np.float32, copy=False)
    if pixel_size_A is not None:
        pixel = check_pixel_size(pixel_size_A)
    return Image(arr, pixel_size_A=pixel, modality=modality, metadata=metadata)


def _array_pixel_info(image, pixel_size_A):
    """(validated array, pixel size in Å or None, JSON text of the Image's metadata or None)."""
    from .image import Image

    info = None
    if isinstance(image, Image):
        arr = image.array
        pixel = image.pixel_size_A if pixel_size_A is None else pixel_size_A
        keep = {k: v for k, v in image.metadata.items() if k not in ("source", "format")}
        if image.modality is not None:
            keep["modality"] = image.modality
        if keep:
            info = json.dumps({"emrestore": keep}, default=str)
    else:
        arr, pixel = image, pixel_size_A
    arr = check_stack(arr, name="image to save", allow_rgb=False)
    return arr, check_pixel_size(pixel), info


def to_preview(image, *, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """An 8-bit grey rendering: values between the two percentiles mapped to 0…255.

    For a stack the first frame is used. A flat image gives mid-grey.
    """
    arr = check_stack(np.asarray(image), name="image to preview", allow_rgb=False)
    frame = np.asarray(arr[0] if arr.ndim == 3 else arr, dtype=np.float32)
    lo, hi = np.percentile(frame, percentiles)
    if not hi > lo:
        return np.full(frame.shape, 128, np.uint8)
    scaled = (frame - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def write_preview(path, image, *, percentiles: tuple[float, float] = (0.5, 99.5),
                  protect: Iterable = ()) -> Path:
    """Write an 8-bit percentile-stretched PNG preview of an image (see :func:`to_preview`)."""
    if hasattr(image, "array"):
        image = image.array
    u8 = to_preview(image, percentiles=percentiles)
    return write_atomically(path, lambda tmp: _imsave_png(tmp, u8), protect=protect)


def _imsave_png(path: str, u8: np.ndarray) -> None:
    import skimage.io

    skimage.io.imsave(path, u8, check_contrast=False)


def _write_tiff(path: str, arr: np.ndarray, pixel_size_A: float | None,
                info: str | None = None) -> None:
    import tifffile

    kwargs: dict = {"imagej": True, "metadata": {"axes": "TYX" if arr.ndim == 3 else "YX"}}
    if info:
        kwargs["metadata"]["Info"] = info  # ImageJ: Image > Show Info
    if pixel_size_A is not None:
        # ImageJ keeps a unit string and pixels per unit; nm is understood by every reader
        per_nm = 10.0 / pixel_size_A
        kwargs["resolution"] = (per_nm, per_nm)
        kwargs["metadata"]["unit"] = "nm"
    tifffile.imwrite(path, arr, **kwargs)


def save_image(path, image, *, pixel_size_A: float | None = None, protect: Iterable = (),
               percentiles: tuple[float, float] = (0.5, 99.5)) -> Path:
    """Write an image (or stack) to a file chosen by its extension, through a temporary file.

    Parameters
    ----------
    path : str or Path
        ``.tif``/``.tiff``: float32 ImageJ TIFF calibrated in nm (stacks as ImageJ ``TYX``);
        ``.npy``: float32 array; ``.npz``: ``image`` and ``pixel_size_A`` (NaN when unknown is not
        written: the key is left out); ``.png``: 8-bit preview (see :func:`to_preview`).
    image : ndarray or Image
        The values (written as float32 except for the PNG preview).
    pixel_size_A : float, optional
        Å per pixel; defaults to the Image's own.
    protect : iterable of paths
        Files never to be overwritten (the inputs).

    Returns
    -------
    Path
        The file written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise InputError(f"cannot write {path.name}: the extension must be one of "
                         f"{', '.join(WRITE_SUFFIXES)}")
    arr, pixel, info = _array_pixel_info(image, pixel_size_A)
    if suffix == ".png":
        return write_preview(path, arr, percentiles=percentiles, protect=protect)
    data = np.ascontiguousarray(arr, dtype=np.float32)
    if suffix in (".tif", ".tiff"):
        return write_atomically(path, lambda tmp: _write_tiff(tmp, data, pixel, info),
                                protect=protect)
    if suffix == ".npy":
        return write_atomically(path, lambda tmp: np.save(tmp, data), protect=protect)
    extra = {} if pixel is None else {"pixel_size_A": np.float64(pixel)}
    return write_atomically(path, lambda tmp: np.savez(tmp, image=data, **extra), protect=protect)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomically(
    path,
    writer: Callable[[str], object],
    *,
    protect: Iterable = (),
) -> Path:
    """Write a file through a temporary file in the same folder, then rename it into place.

    Parameters
    ----------
    path : str or Path
        Destination.
    writer : callable
        ``writer(tmp_path)`` writes the whole content to ``tmp_path`` (a string path that keeps the
        destination's extension, so format detection by suffix works). The result gets the
        permissions of a normally created file (0666 less the umask).
    protect : iterable of paths
        Files that must never be overwritten (the inputs): if ``path`` is one of them,
        :class:`InputError` is raised before anything is written.

    Returns
    -------
    Path
        The destination.
    """
    path = Path(path)
    for p in protect:
        if p is not None and _same_file(path, Path(p)):
            raise InputError(f"refusing to write over the input file {p}; choose another output")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise InputError(f"output folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=folder)
    os.close(fd)
    try:
        writer(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
