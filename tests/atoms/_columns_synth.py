"""Synthetic images of Gaussian atomic columns with known truth, for the atoms tests."""

from __future__ import annotations

import numpy as np

from emrestore.atoms.refine import render_columns


def square_lattice(shape=(256, 256), spacing=14.2, sigma=2.5, counts=1000.0, background=1.0,
                   jitter=0.5, margin=6.0, seed=0):
    """Square lattice of columns with random sub-pixel offsets.

    Returns (positions (N, 2) (y, x) px, noise-free image, numpy Generator).
    """
    rng = np.random.default_rng(seed)
    ys = np.arange(margin, shape[0] - margin, spacing)
    xs = np.arange(margin, shape[1] - margin, spacing)
    pos = np.array([(y, x) for y in ys for x in xs], dtype=float)
    pos += rng.uniform(-jitter, jitter, pos.shape)
    image = render_columns(shape, pos, counts, sigma, background)
    return pos, image, rng


def si110_dumbbells(shape=(512, 512), pixel_size_A=0.1, sigma_A=0.45, counts=1000.0,
                    background_fraction=0.2, seed=0, margin_A=1.0):
    """Si [110]-like dumbbells: pairs 1.358 Å apart along y on a centred 5.431 × 3.840 Å cell.

    Returns (positions, noise-free image, rng, sigma_px, background, separation_px).
    """
    rng = np.random.default_rng(seed)
    a = 5.431
    ay, ax = a / pixel_size_A, a / np.sqrt(2) / pixel_size_A
    d = a / 4 / pixel_size_A
    centres = [((iy + oy) * ay + 20, (ix + ox) * ax + 20)
               for iy in range(-1, int(shape[0] / ay) + 2)
               for ix in range(-1, int(shape[1] / ax) + 2)
               for oy, ox in ((0.0, 0.0), (0.5, 0.5))]
    centres = np.array(centres)
    half = np.array([d / 2, 0.0])
    pos = np.concatenate([centres - half, centres + half])
    m = margin_A / pixel_size_A
    keep = ((pos[:, 0] > m) & (pos[:, 0] < shape[0] - 1 - m)
            & (pos[:, 1] > m) & (pos[:, 1] < shape[1] - 1 - m))
    pos = pos[keep] + rng.normal(0, 0.02, (int(keep.sum()), 2))
    s = sigma_A / pixel_size_A
    bg = background_fraction * counts / (2 * np.pi * s * s)
    return pos, render_columns(shape, pos, counts, s, bg), rng, s, bg, d
