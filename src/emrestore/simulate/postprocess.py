"""Post-processing distortions of a recorded image (Lobato et al. 2023, "Post-processing").

What a user or a workflow does to an image after recording, applied to a training pair:

* **interpolation**: a random affine transform (small rotation, zoom, aspect change, shear,
  translation) resampled with cubic convolution, applied identically to the distorted image and
  to every clean image (and label image), so the pair stays aligned; atom positions follow with
  :func:`transform_positions`;
* **Gaussian blur** (σ in [0, 1] px, Lobato et al.): applied to the distorted image only, the
  restoration has to undo it;
* **display export**: scaling to an 8-bit (or other) display range between two percentiles of the
  distorted image, rounded; the clean images get the same linear scaling (not rounded, not
  clipped) so that the pair keeps sharing units;
* **cropping fill**: regions outside a central rectangle of half the image area (and whatever the
  affine transform brought in from outside the field of view) replaced by one constant, the same
  in both images;
* **annotations**: text, arrows, scale bars, rectangles and circles burnt in with the same value
  at the same pixels in both images (the restoration must preserve them).

Order: affine → blur → display export → cropping fill → annotations. Label images (named in
``label_keys`` or of bool/integer dtype) only follow the geometry: nearest-neighbour (integer
labels) or clipped cubic (float labels) resampling, 0 in filled regions, untouched by annotations.
Clean images whose shape is an integer multiple of the distorted image (e.g. 2× labels) get the
same transform expressed on their finer grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import disk, polygon

from .._rng import chance, integer, uniform
from ..errors import ConfigError, InputError
from ._font import CHARACTERS, render_text
from ._interp import resample_along
from .config import check_range
from .detector import check_image

__all__ = [
    "Annotation",
    "Postprocess",
    "PostprocessParams",
    "affine_matrix",
    "apply_postprocess",
    "draw_postprocess",
    "postprocess_masks",
    "transform_positions",
    "warp_affine",
]

ANNOTATION_KINDS = ("text", "arrow", "scale_bar", "rectangle", "circle")
FILL_MODES = ("zero", "min", "max", "mid")


@dataclass(frozen=True)
class PostprocessParams:
    """Probabilities and ranges of the post-processing distortions; ranges are ``(low, high)``.

    Only the blur range (σ in [0, 1] px, distorted image only) and the central-area rule for
    cropping (about 50 % of the image left untouched) are from Lobato et al.; the rest are
    emrestore's choices:

    * affine: rotation ±15°, isotropic zoom 0.9-1.1, aspect (y/x scale ratio) 0.97-1.03, shear
      ±0.05, translation ±3 px; rotations stay below 45° so the two-pass resampling stays exact
      in spirit (the text of a rotated image is rotated too).
    * display: low percentile 0-1 %, high percentile 99-100 %, ``display_bits`` levels.
    * crop: 1-2 regions (band along an edge, corner rectangle or corner triangle) that never
      enter the central rectangle of ``crop_central_fraction`` of the area; the fill is 0, the
      image minimum, maximum or mid-range.
    * annotations: 1-4 of ``annotation_kinds``; font pixel 1-3 px, line width 1-3 px.
    """

    affine_probability: float = 0.3
    rotation_deg: tuple[float, float] = (-15.0, 15.0)
    zoom: tuple[float, float] = (0.9, 1.1)
    aspect: tuple[float, float] = (0.97, 1.03)
    shear: tuple[float, float] = (-0.05, 0.05)
    translation_px: tuple[float, float] = (-3.0, 3.0)
    blur_probability: float = 0.3
    blur_sigma_px: tuple[float, float] = (0.0, 1.0)
    display_probability: float = 0.15
    display_low_percentile: tuple[float, float] = (0.0, 1.0)
    display_high_percentile: tuple[float, float] = (99.0, 100.0)
    display_bits: int = 8
    crop_probability: float = 0.2
    crop_central_fraction: float = 0.5
    crop_regions: tuple[int, int] = (1, 2)
    annotation_probability: float = 0.2
    annotation_count: tuple[int, int] = (1, 4)
    annotation_kinds: tuple[str, ...] = ANNOTATION_KINDS
    text_scale_px: tuple[int, int] = (1, 3)
    line_width_px: tuple[int, int] = (1, 3)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_probability") and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{f.name}: a probability in [0, 1] is required, got {value}")
        check_range("rotation_deg", self.rotation_deg, -44.0, 44.0)
        check_range("zoom", self.zoom, 0.2, 5.0)
        check_range("aspect", self.aspect, 0.2, 5.0)
        check_range("shear", self.shear, -0.5, 0.5)
        check_range("translation_px", self.translation_px)
        check_range("blur_sigma_px", self.blur_sigma_px, 0.0)
        check_range("display_low_percentile", self.display_low_percentile, 0.0, 50.0)
        check_range("display_high_percentile", self.display_high_percentile, 50.0, 100.0)
        if not 1 <= self.display_bits <= 16:
            raise ConfigError(f"display_bits must be in 1..16, got {self.display_bits}")
        if not 0.0 < self.crop_central_fraction <= 1.0:
            raise ConfigError("crop_central_fraction must be in (0, 1], "
                              f"got {self.crop_central_fraction}")
        check_range("crop_regions", self.crop_regions, 1)
        check_range("annotation_count", self.annotation_count, 1)
        unknown = sorted(set(self.annotation_kinds) - set(ANNOTATION_KINDS))
        if unknown or not self.annotation_kinds:
            raise ConfigError(f"annotation_kinds: choose from {ANNOTATION_KINDS}, got "
                              f"{self.annotation_kinds}")
        check_range("text_scale_px", self.text_scale_px, 1)
        check_range("line_width_px", self.line_width_px, 1)

    def all_on(self) -> PostprocessParams:
        """The same ranges with every post-processing distortion switched on."""
        probs = {f.name: 1.0 for f in fields(self) if f.name.endswith("_probability")}
        return replace(self, **probs)


@dataclass(frozen=True)
class Annotation:
    """One burnt-in annotation; coordinates ``(y, x)`` and lengths in pixels.

    ``text``: top-left corner at (y, x). ``scale_bar``: bar of length ``size`` with ``text`` above,
    top-left at (y, x). ``arrow``: tail at (y, x), length ``size``, direction ``angle_deg``
    (0 = +x, 90 = +y). ``rectangle``: outline, top-left (y, x), height ``size``, width
    ``size·aspect``. ``circle``: ring of radius ``size`` centred at (y, x). ``tone`` is "bright"
    (image maximum) or "dark" (minimum); ``boxed`` puts text on a box of the opposite tone.
    """

    kind: str
    y: float
    x: float
    size: float = 0.0
    angle_deg: float = 0.0
    aspect: float = 1.0
    text: str = ""
    scale: int = 1
    width: int = 1
    tone: str = "bright"
    boxed: bool = False


@dataclass(frozen=True)
class Postprocess:
    """The concrete post-processing of one image pair (drawn by :func:`draw_postprocess`).

    ``affine`` is ``(rotation_deg, zoom, aspect, shear, ty_px, tx_px)`` about the image centre, or
    ``None``; ``display`` is ``(low_percentile, high_percentile, bits)`` or ``None``;
    ``fill_regions`` are polygons (tuples of ``(y, x)`` vertices) filled with the ``fill_mode``
    value.
    """

    shape: tuple[int, int]
    affine: tuple[float, float, float, float, float, float] | None = None
    blur_sigma_px: float = 0.0
    display: tuple[float, float, int] | None = None
    fill_regions: tuple[tuple[tuple[float, float], ...], ...] = ()
    fill_mode: str = "zero"
    annotations: tuple[Annotation, ...] = ()

    def to_dict(self) -> dict:
        """Plain-Python record of every drawn value (JSON-serialisable)."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["affine"] = None if self.affine is None else list(self.affine)
        out["display"] = None if self.display is None else list(self.display)
        out["fill_regions"] = [[list(v) for v in poly] for poly in self.fill_regions]
        return out


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

_WORDS = ("HAADF", "ABF", "ADF", "BF", "STEM", "TEM", "SEM", "EELS", "FFT", "SrTiO", "GaN",
          "Si", "Au", "Pt", "MoS", "A", "B", "C", "D", "I", "II")


def _random_text(rng: np.random.Generator) -> str:
    n = int(rng.integers(1, 100))
    templates = (
        lambda: f"{n} nm", lambda: f"{n} Å", lambda: f"{n % 10}.{int(rng.integers(0, 10))} nm",
        lambda: _WORDS[int(rng.integers(0, len(_WORDS)))], lambda: f"({chr(97 + n % 8)})",
        lambda: f"x{n}M", lambda: f"{n}kx", lambda: f"#{n}", lambda: f"{n}0 kV",
        lambda: f"Fig. {n % 9 + 1}", lambda: f"{n}%", lambda: f"{n}:{int(rng.integers(10, 60))}",
    )
    text = templates[int(rng.integers(0, len(templates)))]()
    # Characters the bitmap font lacks are drawn in capitals (or as spaces).
    return "".join(c if c in CHARACTERS else c.upper() if c.upper() in CHARACTERS else " "
                   for c in text)


def _scale_bar_text(rng: np.random.Generator) -> str:
    value = (1, 2, 5, 10, 20, 50)[int(rng.integers(0, 6))]
    return f"{value} {('nm', 'Å', 'µm')[int(rng.integers(0, 3))]}"


def _draw_annotation(rng: np.random.Generator, p: PostprocessParams, shape) -> Annotation:
    h, w = shape
    m = min(h, w)
    kind = p.annotation_kinds[int(rng.integers(0, len(p.annotation_kinds)))]
    common = dict(scale=integer(rng, p.text_scale_px), width=integer(rng, p.line_width_px),
                  tone="bright" if chance(rng, 0.6) else "dark", boxed=chance(rng, 0.3))
    if kind == "text":
        return Annotation("text", y=uniform(rng, (0, h - 8)), x=uniform(rng, (0, w - 8)),
                          text=_random_text(rng), **common)
    if kind == "scale_bar":
        return Annotation("scale_bar", y=uniform(rng, (0.75 * h, 0.95 * h)),
                          x=uniform(rng, (0.02 * w, 0.6 * w)),
                          size=uniform(rng, (0.1 * w, 0.3 * w)), text=_scale_bar_text(rng),
                          **common)
    if kind == "arrow":
        return Annotation("arrow", y=uniform(rng, (0, h)), x=uniform(rng, (0, w)),
                          size=uniform(rng, (0.05 * m, 0.25 * m)),
                          angle_deg=uniform(rng, (0.0, 360.0)), **common)
    if kind == "rectangle":
        return Annotation("rectangle", y=uniform(rng, (0, 0.9 * h)), x=uniform(rng, (0, 0.9 * w)),
                          size=uniform(rng, (0.05 * m, 0.3 * m)), aspect=uniform(rng, (0.5, 2.0)),
                          **common)
    return Annotation("circle", y=uniform(rng, (0, h)), x=uniform(rng, (0, w)),
                      size=uniform(rng, (0.03 * m, 0.15 * m)), **common)


def _draw_fill_region(rng: np.random.Generator, shape, central: tuple[float, float, float, float]
                      ) -> tuple[tuple[float, float], ...]:
    """A polygon outside the central rectangle (top, left, bottom, right edges in px)."""
    h, w = shape
    top, left, bottom, right = central
    lo_y, lo_x, hi_y, hi_x = -0.5, -0.5, h - 0.5, w - 0.5
    kind = ("band", "corner", "triangle")[int(rng.integers(0, 3))]
    if kind == "band":
        side = int(rng.integers(0, 4))
        if side == 0:
            e = lo_y + uniform(rng, (0.2, 1.0)) * (top - lo_y)
            return ((lo_y, lo_x), (lo_y, hi_x), (e, hi_x), (e, lo_x))
        if side == 1:
            e = hi_y - uniform(rng, (0.2, 1.0)) * (hi_y - bottom)
            return ((e, lo_x), (e, hi_x), (hi_y, hi_x), (hi_y, lo_x))
        if side == 2:
            e = lo_x + uniform(rng, (0.2, 1.0)) * (left - lo_x)
            return ((lo_y, lo_x), (lo_y, e), (hi_y, e), (hi_y, lo_x))
        e = hi_x - uniform(rng, (0.2, 1.0)) * (hi_x - right)
        return ((lo_y, e), (lo_y, hi_x), (hi_y, hi_x), (hi_y, e))
    # Corner shapes are built at the top-left corner and mirrored.
    cy, cx = top - lo_y, left - lo_x          # free room before the central rectangle
    if kind == "corner":
        # One side may run past the central rectangle's edge as long as the other stays short.
        if chance(rng, 0.5):
            dy, dx = uniform(rng, (0.2, 1.0)) * cy, uniform(rng, (0.2, 1.0)) * (w / 2)
        else:
            dy, dx = uniform(rng, (0.2, 1.0)) * (h / 2), uniform(rng, (0.2, 1.0)) * cx
        verts = [(0.0, 0.0), (0.0, dx), (dy, dx), (dy, 0.0)]
    else:
        # Legs (ly, lx) with the hypotenuse passing outside the central corner: cy/ly + cx/lx >= 1.
        ly = uniform(rng, (0.3, 1.0)) * (h / 2)
        lx_max = w / 2 if ly <= cy else min(w / 2, cx / (1.0 - cy / ly))
        lx = uniform(rng, (0.3, 1.0)) * lx_max
        verts = [(0.0, 0.0), (0.0, lx), (ly, 0.0)]
    flip_y, flip_x = chance(rng, 0.5), chance(rng, 0.5)
    return tuple(((hi_y - vy) if flip_y else (lo_y + vy), (hi_x - vx) if flip_x else (lo_x + vx))
                 for vy, vx in verts)


def draw_postprocess(rng: np.random.Generator, params: PostprocessParams,
                     shape: tuple[int, int]) -> Postprocess:
    """Draw the concrete post-processing of one image pair of ``shape`` (H, W)."""
    h, w = (int(v) for v in shape)
    if h < 8 or w < 8:
        raise InputError(f"post-processing needs an image of at least 8×8 px, got {shape}")
    p = params
    kw: dict = {}
    if chance(rng, p.affine_probability):
        kw["affine"] = (uniform(rng, p.rotation_deg), uniform(rng, p.zoom), uniform(rng, p.aspect),
                        uniform(rng, p.shear), uniform(rng, p.translation_px),
                        uniform(rng, p.translation_px))
    if chance(rng, p.blur_probability):
        kw["blur_sigma_px"] = uniform(rng, p.blur_sigma_px)
    if chance(rng, p.display_probability):
        kw["display"] = (uniform(rng, p.display_low_percentile),
                         uniform(rng, p.display_high_percentile), int(p.display_bits))
    kw["fill_mode"] = FILL_MODES[int(rng.integers(0, len(FILL_MODES)))]
    if chance(rng, p.crop_probability):
        ratio = math.exp(uniform(rng, (math.log(0.8), math.log(1.25))))
        ch = min(1.0, math.sqrt(p.crop_central_fraction) * ratio) * h
        cw = min(1.0, p.crop_central_fraction * h / ch) * w
        top = (h - ch) / 2 - 0.5
        left = (w - cw) / 2 - 0.5
        central = (top, left, top + ch, left + cw)
        kw["fill_regions"] = tuple(_draw_fill_region(rng, (h, w), central)
                                   for _ in range(integer(rng, p.crop_regions)))
    if chance(rng, p.annotation_probability):
        kw["annotations"] = tuple(_draw_annotation(rng, p, (h, w))
                                  for _ in range(integer(rng, p.annotation_count)))
    return Postprocess(shape=(h, w), **kw)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------

def affine_matrix(post: Postprocess, scale: int = 1) -> np.ndarray:
    """3×3 matrix mapping input pixel ``(y, x, 1)`` to output ``(y, x, 1)`` (identity if off).

    The transform is ``c + t + R(θ)·Shear·Zoom·(p - c)`` about the image centre ``c``. With
    ``scale = k`` the same transform is expressed on a k-times finer pixel grid (pixel ``i`` of
    the coarse grid covers fine pixels ``k·i … k·i + k - 1``).
    """
    h, w = post.shape
    if post.affine is None:
        a = np.eye(3)
    else:
        rot_deg, zoom, aspect, shear, ty, tx = post.affine
        th = math.radians(rot_deg)
        rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        shr = np.array([[1.0, 0.0], [shear, 1.0]])
        zm = np.diag([zoom * math.sqrt(aspect), zoom / math.sqrt(aspect)])
        lin = rot @ shr @ zm
        c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
        a = np.eye(3)
        a[:2, :2] = lin
        a[:2, 2] = c + np.array([ty, tx]) - lin @ c
    if scale != 1:
        k = float(scale)
        to_fine = np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2], [0, 0, 1.0]])
        a = to_fine @ a @ np.linalg.inv(to_fine)
    return a


def transform_positions(positions_px, matrix: np.ndarray) -> np.ndarray:
    """Apply a 3×3 affine ``matrix`` to ``(N, 2)`` ``(y, x)`` pixel positions; returns float64."""
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3):
        raise InputError(f"affine matrix must be 3×3, got {m.shape}")
    return pos @ m[:2, :2].T + m[:2, 2]


def _source_coordinates(inverse: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Source ``(y, x)`` (float32 grids) of every destination pixel under ``inverse``."""
    h, w = shape
    y = np.arange(h, dtype=np.float64)[:, None]
    x = np.arange(w, dtype=np.float64)[None, :]
    ys = (inverse[0, 0] * y).astype(np.float32) + (inverse[0, 1] * x + inverse[0, 2]).astype(
        np.float32)
    xs = (inverse[1, 0] * y).astype(np.float32) + (inverse[1, 1] * x + inverse[1, 2]).astype(
        np.float32)
    return ys, xs


def warp_affine(images: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Resample (…, H, W) images under the forward affine ``matrix`` with cubic convolution.

    Two 1-D passes: along the source rows to the points whose destination column is fixed, then
    along those preimage lines to each destination pixel (Catmull-Smith); each pass is a Keys
    cubic on exact sample positions. Outside the source the edge value is used (see
    :func:`postprocess_masks` for the region). Requires ``|m00|`` of the inverse away from 0
    (rotations below ~60°).
    """
    arr = np.asarray(images, dtype=np.float32)
    h, w = arr.shape[-2:]
    inv = np.linalg.inv(np.asarray(matrix, dtype=np.float64))
    m00, m01, m02 = inv[0]
    m10, m11, m12 = inv[1]
    if abs(m00) < 0.3:
        raise InputError(f"affine transform too far from upright for two-pass resampling "
                         f"(inverse m00 = {m00:.3f})")
    # Positions are affine in (row, column): outer sums of two 1-D vectors, in float32.
    rows = np.arange(h, dtype=np.float64)[:, None]
    cols = np.arange(w, dtype=np.float64)[None, :]
    # Pass 1, along source row u: the destination pixel of column x lies at y* = (u - m01 x -
    # m02) / m00, i.e. at source column m10 y* + m11 x + m12.
    xs = ((m10 / m00) * rows).astype(np.float32) + (
        (m11 - m10 * m01 / m00) * cols + (m12 - m10 * m02 / m00)).astype(np.float32)
    first = resample_along(arr, xs, axis=-1)
    # Pass 2, along the preimage line of each destination column.
    ys = (m00 * rows).astype(np.float32) + (m01 * cols + m02).astype(np.float32)
    return resample_along(first, ys, axis=-2)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------

def _paste(tone: np.ndarray, bitmap: np.ndarray, y0: int, x0: int, value: int) -> None:
    h, w = tone.shape
    bh, bw = bitmap.shape
    ys, xs = max(0, -y0), max(0, -x0)
    ye, xe = min(bh, h - y0), min(bw, w - x0)
    if ye <= ys or xe <= xs:
        return
    region = tone[y0 + ys:y0 + ye, x0 + xs:x0 + xe]
    region[bitmap[ys:ye, xs:xe]] = value


def _fill_polygon(tone: np.ndarray, verts, value: int) -> None:
    v = np.asarray(verts, dtype=np.float64)
    rr, cc = polygon(v[:, 0], v[:, 1], shape=tone.shape)
    tone[rr, cc] = value


def _box(tone: np.ndarray, y0: float, x0: float, y1: float, x1: float, value: int) -> None:
    _fill_polygon(tone, [(y0, x0), (y0, x1), (y1, x1), (y1, x0)], value)


def _render_annotation(tone: np.ndarray, a: Annotation) -> None:
    ink = 1 if a.tone == "bright" else -1
    if a.kind in ("text", "scale_bar"):
        bitmap = render_text(a.text, a.scale)
        bh, bw = bitmap.shape
        if a.kind == "text":
            ty, tx = round(a.y), round(a.x)
            extent = (ty, tx, ty + bh, tx + bw)
        else:
            bar_h = max(2, 2 * a.width)
            bar_y, bar_x = round(a.y), round(a.x)
            length = max(2, round(a.size))
            ty = bar_y - bh - max(2, a.scale * 2)
            tx = bar_x + (length - bw) // 2
            extent = (min(ty, bar_y), min(tx, bar_x), bar_y + bar_h,
                      max(tx + bw, bar_x + length))
        if a.boxed:
            pad = 2 * a.scale
            _box(tone, extent[0] - pad - 0.5, extent[1] - pad - 0.5, extent[2] + pad - 0.5,
                 extent[3] + pad - 0.5, -ink)
        _paste(tone, bitmap, ty, tx, ink)
        if a.kind == "scale_bar":
            _box(tone, bar_y - 0.5, bar_x - 0.5, bar_y + bar_h - 0.5, bar_x + length - 0.5, ink)
        return
    if a.kind == "arrow":
        th = math.radians(a.angle_deg)
        d = np.array([math.sin(th), math.cos(th)])        # (y, x) direction
        n = np.array([d[1], -d[0]])
        tail = np.array([a.y, a.x])
        tip = tail + a.size * d
        head_len, head_half = 3.0 * a.width + 3.0, 2.0 * a.width + 2.0
        neck = tip - min(head_len, 0.8 * a.size) * d
        half = a.width / 2.0
        _fill_polygon(tone, [tail + half * n, neck + half * n, neck - half * n, tail - half * n],
                      ink)
        _fill_polygon(tone, [tip, neck + head_half * n, neck - head_half * n], ink)
        return
    if a.kind == "rectangle":
        y0, x0 = a.y - 0.5, a.x - 0.5
        y1, x1 = y0 + a.size, x0 + a.size * a.aspect
        t = float(a.width)
        for box in ((y0, x0, y0 + t, x1), (y1 - t, x0, y1, x1), (y0, x0, y1, x0 + t),
                    (y0, x1 - t, y1, x1)):
            _box(tone, *box, ink)
        return
    if a.kind == "circle":
        outer = np.zeros(tone.shape, dtype=bool)
        rr, cc = disk((a.y, a.x), a.size, shape=tone.shape)
        outer[rr, cc] = True
        rr, cc = disk((a.y, a.x), max(a.size - a.width, 0.0), shape=tone.shape)
        outer[rr, cc] = False
        tone[outer] = ink
        return
    raise InputError(f"unknown annotation kind {a.kind!r}; choose from {ANNOTATION_KINDS}")


def postprocess_masks(post: Postprocess) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fill, bright, dark)`` bool masks of ``post.shape``.

    ``fill``: pixels replaced by the constant fill (crop regions and, with an affine transform,
    pixels whose source lies outside the field of view); ``bright``/``dark``: annotation pixels
    burnt in with the image maximum / minimum. Annotations are drawn over the fill.
    """
    h, w = post.shape
    fill = np.zeros((h, w), dtype=bool)
    if post.affine is not None:
        ys, xs = _source_coordinates(np.linalg.inv(affine_matrix(post)), (h, w))
        fill |= (ys < -0.5) | (ys > h - 0.5) | (xs < -0.5) | (xs > w - 0.5)
    if post.fill_regions:
        tone = np.zeros((h, w), dtype=np.int8)
        for poly in post.fill_regions:
            _fill_polygon(tone, poly, 1)
        fill |= tone.astype(bool)
    tone = np.zeros((h, w), dtype=np.int8)
    for a in post.annotations:
        _render_annotation(tone, a)
    return fill, tone > 0, tone < 0


# --------------------------------------------------------------------------------------------
# Applying
# --------------------------------------------------------------------------------------------

def _fill_value(image: np.ndarray, mode: str) -> float:
    if mode == "zero":
        return 0.0
    lo, hi = float(image.min()), float(image.max())
    return {"min": lo, "max": hi, "mid": 0.5 * (lo + hi)}[mode]


def _is_integer(arr) -> bool:
    dtype = np.asarray(arr).dtype
    return dtype == np.bool_ or np.issubdtype(dtype, np.integer)


def _put(arr: np.ndarray, mask: np.ndarray, k: int, value) -> None:
    """``arr[mask upsampled k times] = value`` in place, without building the upsampled mask."""
    if k == 1:
        arr[mask] = value
        return
    if not arr.flags.c_contiguous:  # a reshape would copy: index with the upsampled mask
        arr[np.repeat(np.repeat(mask, k, axis=0), k, axis=1)] = value
        return
    h, w = mask.shape
    np.copyto(arr.reshape(h, k, w, k), arr.dtype.type(value), where=mask[:, None, :, None])


def apply_postprocess(distorted: np.ndarray, clean_images: dict[str, np.ndarray],
                      post: Postprocess, rng: np.random.Generator | None = None, *,
                      label_keys: Iterable[str] = ()
                      ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Apply ``post`` to a training pair.

    Parameters
    ----------
    distorted : (H, W) array
        The recorded (distorted) image, in detector units.
    clean_images : dict of name -> array
        Clean target(s) in the same units (e.g. ``clean``, ``clean_no_background``) and label
        images; each of shape (H, W) or an integer multiple (kH, kW).
    post : Postprocess
        From :func:`draw_postprocess`, with ``post.shape == (H, W)``.
    rng : numpy Generator, optional
        Unused: every random choice is already fixed in ``post`` (accepted for symmetry with
        the ``distort_*`` functions).
    label_keys : names in ``clean_images`` that are labels, not intensities (bool and integer
        arrays are always labels).

    Returns
    -------
    distorted_out : (H, W) float32
    clean_out : dict with the same keys (float32 intensities; labels keep their dtype)
    affine : (3, 3) float64 forward matrix of the (H, W) grid; apply it to atom positions with
        :func:`transform_positions` (identity when no affine transform was drawn).
    """
    del rng
    img = check_image(distorted, "distorted image")
    if tuple(img.shape) != tuple(post.shape):
        raise InputError(f"distorted image shape {img.shape} does not match the drawn "
                         f"post-processing shape {post.shape}")
    h, w = img.shape
    labels = set(label_keys)
    scales: dict[str, int] = {}
    for name, value in clean_images.items():
        arr = np.asarray(value)
        if arr.ndim != 2 or arr.shape[0] % h or arr.shape[1] % w or \
                arr.shape[0] // h != arr.shape[1] // w:
            raise InputError(f"clean image {name!r}: shape {arr.shape} is not (k·{h}, k·{w})")
        if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)):
            if not np.all(np.isfinite(arr)):
                raise InputError(f"clean image {name!r} contains NaN or infinite values")
        else:
            labels.add(name)
        scales[name] = arr.shape[0] // h
    matrix = affine_matrix(post)
    intensity = [n for n in clean_images if n not in labels]
    out: dict[str, np.ndarray] = {}

    # 1. Interpolation distortion (all images, one warp per grid size).
    img = img.copy()
    if post.affine is not None:
        # every float image on the (H, W) grid in one call (the weights are computed once)
        same = [n for n in clean_images if scales[n] == 1 and not _is_integer(clean_images[n])]
        stack = np.stack([img] + [np.asarray(clean_images[n], dtype=np.float32) for n in same])
        warped = warp_affine(stack, matrix)
        img = warped[0]
        for i, name in enumerate(same):
            if name in labels:
                arr = np.asarray(clean_images[name])
                out[name] = np.clip(warped[i + 1], float(arr.min()), float(arr.max()))
            else:
                out[name] = warped[i + 1]
        for name in clean_images:
            if name in out:
                continue
            arr = np.asarray(clean_images[name])
            m = affine_matrix(post, scales[name])
            if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
                ys, xs = _source_coordinates(np.linalg.inv(m), arr.shape)
                iy = np.clip(np.rint(ys), 0, arr.shape[0] - 1).astype(np.intp)
                ix = np.clip(np.rint(xs), 0, arr.shape[1] - 1).astype(np.intp)
                out[name] = arr[iy, ix]
            else:
                warped = warp_affine(arr.astype(np.float32), m)
                if name in labels:
                    warped = np.clip(warped, float(arr.min()), float(arr.max()))
                out[name] = warped
    for name in clean_images:
        if name not in out:
            arr = np.asarray(clean_images[name])
            out[name] = arr.copy() if name in labels else arr.astype(np.float32, copy=True)

    # 2. Gaussian blur of the distorted image only.
    if post.blur_sigma_px > 0.05:
        img = ndi.gaussian_filter(img, post.blur_sigma_px, mode="nearest", truncate=3.0)

    # 3. Display export: same linear map for all intensities, rounding only for the recorded one.
    if post.display is not None:
        low_pct, high_pct, bits = post.display
        sample = img[::2, ::2]
        lo, hi = (float(v) for v in np.percentile(sample, [low_pct, high_pct]))
        if hi <= lo:
            hi = lo + 1.0
        top = float(2 ** int(bits) - 1)
        gain, offset = np.float32(top / (hi - lo)), np.float32(-lo * top / (hi - lo))
        img = np.clip(np.rint(img * gain + offset), 0.0, top).astype(np.float32)
        for name in intensity:
            out[name] = out[name] * gain + offset

    # 4-5. Fill and annotations, identical values in every intensity image.
    fill, bright, dark = postprocess_masks(post)
    if fill.any():
        value = np.float32(_fill_value(img, post.fill_mode))
        img[fill] = value
        for name in clean_images:
            _put(out[name], fill, scales[name], 0 if name in labels else value)
    if bright.any() or dark.any():
        vmax, vmin = np.float32(img.max()), np.float32(img.min())
        if vmax == vmin:
            vmax = vmin + np.float32(1.0)
        img[bright] = vmax
        img[dark] = vmin
        for name in intensity:
            _put(out[name], bright, scales[name], vmax)
            _put(out[name], dark, scales[name], vmin)
    return img.astype(np.float32, copy=False), out, matrix

