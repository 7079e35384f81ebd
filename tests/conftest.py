import os

# Tests must be deterministic and never touch a display or the network.
os.environ.setdefault("MPLBACKEND", "Agg")


import numpy as np
import pytest


def _gaussian_cell_scan(cell, step_A: float = 0.2, sigma_A: float = 0.45) -> np.ndarray:
    """A stand-in for an abTEM HAADF cell scan (tests of the multislice set run without abTEM):
    periodic Gaussians of σ = ``sigma_A`` on every projected column of ``cell``, weighted by Σ Z²,
    sampled over one cell; band-limited far below the sampling's Nyquist frequency."""
    from emrestore.simulate.multislice import column_sites

    lx, ly = cell.cell[0, 0], cell.cell[1, 1]
    ny, nx = round(ly / step_A), round(lx / step_A)
    y = np.arange(ny) * ly / ny
    x = np.arange(nx) * lx / nx
    sites = column_sites(cell)
    weight = (sites["composition"] * np.arange(119) ** 2).sum(axis=1)
    img = np.zeros((ny, nx))
    for (py, px), wgt in zip(sites["position_A"], weight):
        dy = (y[:, None] - py + ly / 2) % ly - ly / 2
        dx = (x[None, :] - px + lx / 2) % lx - lx / 2
        img += wgt * np.exp(-(dy**2 + dx**2) / (2 * sigma_A**2))
    return (img / img.max() * 0.05).astype(np.float32)


@pytest.fixture(scope="session")
def gaussian_cell_scan():
    """``gaussian_cell_scan(cell)``: a synthetic HAADF scan of one periodic cell."""
    return _gaussian_cell_scan
