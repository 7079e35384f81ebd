"""Low-resolution objects (seed 001, "generating low-resolution images").

A low-resolution image is the linear superposition of a random subset of object types, each type
included with probability ``LowResParams.type_probability`` (at least one additive type):

* soft particles (15-85): eq. 17 with an elliptical radius, r_m^y = a r_m^x, a ~ U[0.8, 1.2],
  randomly rotated; n ~ U[4, 16], h_i ~ U[0.5, 1]; r_m^x ~ U[0.01, 0.05] min(H, W) pixels. The
  profile is cut smoothly to zero between 4 and 5 r_m (it is below 1 % of its peak there).
* sharp particles (15-40): a polygon with 3-5 vertices or an ellipse (p = 0.5 each), randomly
  rotated, of radius U[0.02, 0.1] min(H, W), masking a random positive plane so that the particle is
  not flat.
* grains: a Voronoi tessellation of 15-175 seeds (each pixel belongs to its nearest seed); each
  cell masks its own random positive plane; with probability 0.5 the cell borders (1-2 px) are drawn
  at U[0.5, 1.5] x mean(grain intensity).
* bands (our definition; the paper names them only): 1-4 straight stripes at random angles, width
  U[0.02, 0.25] min(H, W), soft edges (tanh, 0.5-6 px), random positive amplitude.
* boxes (our definition): 1-8 rotated rectangles, sides U[0.05, 0.4] min(H, W), filled with a
  random positive plane like the sharp particles.
* cracks (our definition): 1-4 thin dark polylines (random walks of 3-12 segments, width 1-3 px).
  A crack removes material, so it multiplies the superposition of the other objects by
  (1 - depth), depth ~ U[0.3, 1] on the crack, instead of adding a negative object.

Each object type is rendered into its own layer, scaled to a maximum of U[0.3, 1], and the layers
are added. Object centres are the "individual points" of the paper: uniform in the field enlarged by
10 % on each side. "Random positive plane": base U[0.5, 1] x (1 + t (u - u_c) / R), t ~ U[0, 0.5],
u the coordinate along a random direction and R the object (or, for grains, the field) radius, so
the intensity stays in [0.5, 1.5] x base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse as draw_ellipse
from skimage.draw import line_aa
from skimage.draw import polygon as draw_polygon

from .._rng import chance, integer, uniform
from ..errors import ConfigError, InputError
from .config import check_range

__all__ = ["LOWRES_TYPES", "LowResParams", "render_lowres", "voronoi_labels"]

LOWRES_TYPES = ("soft_particles", "sharp_particles", "grains", "bands", "boxes", "cracks")


@dataclass(frozen=True)
class LowResParams:
    """Ranges for the low-resolution objects; sizes are fractions of min(H, W) unless in px."""

    types: tuple[str, ...] = LOWRES_TYPES
    type_probability: float = 0.5
    layer_weight: tuple[float, float] = (0.3, 1.0)
    soft_count: tuple[int, int] = (15, 85)
    soft_radius: tuple[float, float] = (0.01, 0.05)
    soft_anisotropy: tuple[float, float] = (0.8, 1.2)
    soft_n: tuple[float, float] = (4.0, 16.0)
    soft_h: tuple[float, float] = (0.5, 1.0)
    sharp_count: tuple[int, int] = (15, 40)
    sharp_vertices: tuple[int, int] = (3, 5)
    sharp_radius: tuple[float, float] = (0.02, 0.1)
    sharp_polygon_probability: float = 0.5
    grain_count: tuple[int, int] = (15, 175)
    grain_border_probability: float = 0.5
    grain_border_intensity: tuple[float, float] = (0.5, 1.5)
    grain_border_width_px: tuple[int, int] = (1, 2)
    band_count: tuple[int, int] = (1, 4)
    band_width: tuple[float, float] = (0.02, 0.25)
    band_edge_px: tuple[float, float] = (0.5, 6.0)
    box_count: tuple[int, int] = (1, 8)
    box_side: tuple[float, float] = (0.05, 0.4)
    crack_count: tuple[int, int] = (1, 4)
    crack_segments: tuple[int, int] = (3, 12)
    crack_width_px: tuple[int, int] = (1, 3)
    crack_depth: tuple[float, float] = (0.3, 1.0)
    plane_tilt: tuple[float, float] = (0.0, 0.5)

    def __post_init__(self):
        unknown = sorted(set(self.types) - set(LOWRES_TYPES))
        if unknown:
            raise ConfigError(f"types: unknown low-resolution type(s) {unknown}; "
                              f"valid are {list(LOWRES_TYPES)}")
        if not set(self.types) - {"cracks"}:
            raise ConfigError("types: need at least one type other than 'cracks'")
        for name in ("type_probability", "sharp_polygon_probability", "grain_border_probability"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
        for name in ("soft_count", "sharp_count", "grain_count", "band_count", "box_count",
                     "crack_count", "crack_segments", "crack_width_px", "grain_border_width_px"):
            check_range(name, getattr(self, name), lo=1)
        check_range("sharp_vertices", self.sharp_vertices, lo=3)
        for name in ("layer_weight", "soft_radius", "soft_anisotropy", "soft_h", "sharp_radius",
                     "band_width", "band_edge_px", "box_side", "crack_depth",
                     "grain_border_intensity"):
            check_range(name, getattr(self, name), lo=0.0)
        check_range("soft_n", self.soft_n, lo=1.0)
        check_range("plane_tilt", self.plane_tilt, lo=0.0, hi=0.99)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _centres(rng, n, shape):
    h, w = shape
    y = rng.uniform(-0.1 * h, 1.1 * h, n)
    x = rng.uniform(-0.1 * w, 1.1 * w, n)
    return y, x


def _plane(rng, params, yy, xx, cy, cx, radius):
    base = uniform(rng, (0.5, 1.0))
    tilt = uniform(rng, params.plane_tilt)
    th = uniform(rng, (0.0, 2.0 * math.pi))
    u = ((xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)) / max(radius, 1e-9)
    return base * (1.0 + tilt * np.clip(u, -1.0, 1.0))


def voronoi_labels(seeds_yx: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Index of the nearest seed (rounded to pixels) for every pixel (exact Euclidean EDT)."""
    h, w = shape
    s = np.rint(np.asarray(seeds_yx, dtype=float)).astype(np.int64)
    s[:, 0] = np.clip(s[:, 0], 0, h - 1)
    s[:, 1] = np.clip(s[:, 1], 0, w - 1)
    ids = np.full((h, w), -1, dtype=np.int64)
    ids[s[:, 0], s[:, 1]] = np.arange(s.shape[0])
    _, (iy, ix) = ndimage.distance_transform_edt(ids < 0, return_indices=True)
    return ids[iy, ix]


# --------------------------------------------------------------------------------------------
# object types
# --------------------------------------------------------------------------------------------


def _soft_particles(rng, shape, p):
    h, w = shape
    img = np.zeros(shape)
    n = integer(rng, p.soft_count)
    cy, cx = _centres(rng, n, shape)
    size = min(h, w)
    rho2 = np.linspace(0.0, 25.0, 1024)
    rho = np.sqrt(rho2)
    taper = np.clip(5.0 - rho, 0.0, 1.0)
    taper = 0.5 - 0.5 * np.cos(math.pi * taper)
    for i in range(n):
        rx = uniform(rng, p.soft_radius) * size
        ry = rx * uniform(rng, p.soft_anisotropy)
        th = uniform(rng, (0.0, math.pi))
        nn = uniform(rng, p.soft_n)
        h1, h2, h3 = (uniform(rng, p.soft_h) for _ in range(3))
        table = (h1 * np.exp(-0.5 * rho2) + h2 * np.exp(-rho) + h3 / (1.0 + rho ** (2.0 * nn)))
        table *= taper
        reach = 5.0 * max(rx, ry)
        y0, y1 = max(int(cy[i] - reach), 0), min(int(cy[i] + reach) + 2, h)
        x0, x1 = max(int(cx[i] - reach), 0), min(int(cx[i] + reach) + 2, w)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1) - cy[i])[:, None]
        dx = (np.arange(x0, x1) - cx[i])[None, :]
        c, s = math.cos(th), math.sin(th)
        u = (dx * c + dy * s) / rx
        v = (-dx * s + dy * c) / ry
        q = u * u + v * v
        idx = np.minimum((q * ((rho2.size - 1) / 25.0)).astype(np.int64), rho2.size - 1)
        img[y0:y1, x0:x1] += table[idx]
    return img, {"count": n}


def _sharp_particles(rng, shape, p):
    h, w = shape
    img = np.zeros(shape)
    n = integer(rng, p.sharp_count)
    cy, cx = _centres(rng, n, shape)
    size = min(h, w)
    n_poly = 0
    for i in range(n):
        radius = uniform(rng, p.sharp_radius) * size
        rot = uniform(rng, (0.0, 2.0 * math.pi))
        if chance(rng, p.sharp_polygon_probability):
            k = integer(rng, p.sharp_vertices)
            ang = rot + np.sort(rng.uniform(0.0, 2.0 * math.pi, k))
            rad = radius * rng.uniform(0.7, 1.0, k)
            rr, cc = draw_polygon(cy[i] + rad * np.sin(ang), cx[i] + rad * np.cos(ang), shape)
            n_poly += 1
        else:
            ry = radius * uniform(rng, (0.5, 1.0))
            rr, cc = draw_ellipse(cy[i], cx[i], ry, radius, shape=shape, rotation=rot)
        if rr.size:
            img[rr, cc] = _plane(rng, p, rr, cc, cy[i], cx[i], radius)
    return img, {"count": n, "polygons": n_poly, "ellipses": n - n_poly}


def _grains(rng, shape, p):
    h, w = shape
    n = integer(rng, p.grain_count)
    seeds = np.column_stack([rng.uniform(0, h - 1, n), rng.uniform(0, w - 1, n)])
    lab = voronoi_labels(seeds, shape)
    base = rng.uniform(0.5, 1.0, n)
    tilt = rng.uniform(*p.plane_tilt, n)
    th = rng.uniform(0.0, 2.0 * math.pi, n)
    radius = 0.5 * math.hypot(h, w)
    yy = np.arange(h, dtype=float)[:, None]
    xx = np.arange(w, dtype=float)[None, :]
    s = np.rint(seeds)
    u = ((xx - s[lab, 1]) * np.cos(th)[lab] + (yy - s[lab, 0]) * np.sin(th)[lab]) / radius
    img = base[lab] * (1.0 + tilt[lab] * u)
    border = chance(rng, p.grain_border_probability)
    info = {"count": n, "border": border}
    if border:
        edge = np.zeros(shape, dtype=bool)
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        width = integer(rng, p.grain_border_width_px)
        if width > 1:
            edge = ndimage.binary_dilation(edge, iterations=width - 1)
        value = uniform(rng, p.grain_border_intensity) * float(img.mean())
        img[edge] = value
        info["border_width_px"] = width
    return img, info, lab


def _bands(rng, shape, p):
    h, w = shape
    img = np.zeros(shape)
    n = integer(rng, p.band_count)
    yy = np.arange(h, dtype=float)[:, None]
    xx = np.arange(w, dtype=float)[None, :]
    for _ in range(n):
        th = uniform(rng, (0.0, math.pi))
        d = (xx - rng.uniform(0, w)) * math.cos(th) + (yy - rng.uniform(0, h)) * math.sin(th)
        half = 0.5 * uniform(rng, p.band_width) * min(h, w)
        edge = uniform(rng, p.band_edge_px)
        img += uniform(rng, (0.5, 1.0)) * 0.5 * (1.0 + np.tanh((half - np.abs(d)) / edge))
    return img, {"count": n}


def _boxes(rng, shape, p):
    h, w = shape
    img = np.zeros(shape)
    n = integer(rng, p.box_count)
    cy, cx = _centres(rng, n, shape)
    size = min(h, w)
    for i in range(n):
        a = 0.5 * uniform(rng, p.box_side) * size
        b = 0.5 * uniform(rng, p.box_side) * size
        th = uniform(rng, (0.0, math.pi))
        c, s = math.cos(th), math.sin(th)
        corners = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
        xs = cx[i] + corners[:, 0] * c - corners[:, 1] * s
        ys = cy[i] + corners[:, 0] * s + corners[:, 1] * c
        rr, cc = draw_polygon(ys, xs, shape)
        if rr.size:
            img[rr, cc] += _plane(rng, p, rr, cc, cy[i], cx[i], math.hypot(a, b))
    return img, {"count": n}


def _cracks(rng, shape, p):
    h, w = shape
    mask = np.zeros(shape)
    n = integer(rng, p.crack_count)
    size = min(h, w)
    for _ in range(n):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        th = uniform(rng, (0.0, 2.0 * math.pi))
        depth = uniform(rng, p.crack_depth)
        layer = np.zeros(shape)
        for _ in range(integer(rng, p.crack_segments)):
            step = uniform(rng, (0.03, 0.12)) * size
            th += rng.normal(0.0, 0.4)
            y2, x2 = y + step * math.sin(th), x + step * math.cos(th)
            rr, cc, val = line_aa(round(y), round(x), round(y2), round(x2))
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            np.maximum.at(layer, (rr[ok], cc[ok]), val[ok])
            y, x = y2, x2
        width = integer(rng, p.crack_width_px)
        if width > 1:
            layer = ndimage.grey_dilation(layer, size=(width, width))
        mask = np.maximum(mask, depth * layer)
    return mask, {"count": n}


_ADDITIVE = {
    "soft_particles": _soft_particles,
    "sharp_particles": _sharp_particles,
    "bands": _bands,
    "boxes": _boxes,
}


def render_lowres(rng: np.random.Generator, shape: tuple[int, int],
                  params: LowResParams | None = None) -> tuple[np.ndarray, dict]:
    """Render one low-resolution image; returns ``(float32 image, info)``.

    ``info`` records the chosen types, per-type counts and layer weights (JSON-serialisable);
    when grains were drawn, their label image is *not* included (use ``voronoi_labels``).
    """
    p = params or LowResParams()
    if len(shape) != 2 or min(shape) < 2:
        raise InputError(f"shape must be (H, W) with H, W >= 2, got {shape!r}")
    shape = (int(shape[0]), int(shape[1]))
    chosen = [t for t in p.types if chance(rng, p.type_probability)]
    additive = [t for t in chosen if t != "cracks"]
    if not additive:
        candidates = [t for t in p.types if t != "cracks"]
        additive = [candidates[int(rng.integers(len(candidates)))]]
        chosen = [*additive, *(["cracks"] if "cracks" in chosen else [])]
    img = np.zeros(shape)
    info: dict = {"types": [t for t in p.types if t in chosen]}
    for t in p.types:
        if t not in additive:
            continue
        if t == "grains":
            layer, sub, _ = _grains(rng, shape, p)
        else:
            layer, sub = _ADDITIVE[t](rng, shape, p)
        peak = float(layer.max())
        weight = uniform(rng, p.layer_weight)
        if peak > 0:
            img += (weight / peak) * layer
        sub["weight"] = weight
        info[t] = sub
    if "cracks" in chosen:
        mask, sub = _cracks(rng, shape, p)
        img *= 1.0 - mask
        info["cracks"] = sub
    return img.astype(np.float32), info
