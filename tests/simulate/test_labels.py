import math

import numpy as np
import pytest

from emrestore.errors import InputError
from emrestore.simulate.labels import (
    DEFAULT_SIGMA_PER_SPACING,
    circular_mask,
    column_radius_A,
    default_sigma_px,
    detectable_columns,
    gaussian_mask,
    group_centroids,
    mean_nearest_neighbour_spacing,
    nearest_neighbour_distances,
    sigma_from_fwhm,
)


def _lattice(a=10.0, n=6, off=5.0):
    yy, xx = np.meshgrid(np.arange(n) * a + off, np.arange(n) * a + off, indexing="ij")
    return np.column_stack([yy.ravel(), xx.ravel()])


def test_gaussian_mask_peaks_at_one_on_labels():
    pos = _lattice()
    m = gaussian_mask(pos, (64, 64), 1.5)
    assert m.dtype == np.float32
    idx = pos.astype(int)
    np.testing.assert_allclose(m[idx[:, 0], idx[:, 1]], 1.0, atol=1e-6)
    assert m.max() == pytest.approx(1.0, abs=1e-6)
    # sub-pixel position: the nearest pixel holds exp(-d^2 / 2 sigma^2)
    m = gaussian_mask([[10.3, 20.6]], (32, 32), 2.0)
    d2 = 0.3**2 + 0.4**2
    assert m[10, 21] == pytest.approx(math.exp(-d2 / 8.0), rel=1e-5)
    assert m.sum() == pytest.approx(2 * math.pi * 4.0, rel=1e-3)  # unnormalised Gaussian


def test_gaussian_mask_sum_and_max_modes():
    pos = [[10.0, 10.0], [10.0, 12.0]]
    s = gaussian_mask(pos, (21, 23), 2.0, combine="sum")
    m = gaussian_mask(pos, (21, 23), 2.0, combine="max")
    assert s[10, 11] == pytest.approx(2 * math.exp(-1 / 8), rel=1e-5)
    assert m[10, 11] == pytest.approx(math.exp(-1 / 8), rel=1e-5)
    assert m.max() <= 1.0 + 1e-6 and s.max() > 1.0
    with pytest.raises(InputError):
        gaussian_mask(pos, (8, 8), 1.0, combine="mean")


def test_gaussian_mask_default_sigma_is_proportional_to_spacing():
    pos = _lattice(a=12.0)
    assert mean_nearest_neighbour_spacing(pos) == pytest.approx(12.0)
    assert default_sigma_px(pos) == pytest.approx(DEFAULT_SIGMA_PER_SPACING * 12.0)
    np.testing.assert_allclose(gaussian_mask(pos, (80, 80)),
                               gaussian_mask(pos, (80, 80), DEFAULT_SIGMA_PER_SPACING * 12.0))


def test_masks_near_edges_and_empty():
    m = gaussian_mask([[0.2, -0.4], [31.6, 31.9]], (32, 32), 3.0)
    assert m[0, 0] > 0.9 and m[31, 31] > 0.9
    c = circular_mask([[0.0, 0.0]], (16, 16), 3.0)
    assert c[0, 0] == 1 and c.sum() == sum(1 for y in range(4) for x in range(4)
                                           if y * y + x * x <= 9)
    assert not gaussian_mask(np.zeros((0, 2)), (5, 5), 1.0).any()
    assert not circular_mask([], (5, 5), 1.0).any()


def test_circular_mask_is_binary_discs():
    pos = _lattice(a=16.0, n=4, off=8.0)
    m = circular_mask(pos, (64, 64), 4.0)
    assert set(np.unique(m)) == {0.0, 1.0}
    area = m.sum() / len(pos)
    assert area == pytest.approx(math.pi * 16.0, rel=0.1)
    idx = pos.astype(int)
    assert np.all(m[idx[:, 0], idx[:, 1]] == 1)


def test_spacing_statistics():
    assert math.isnan(mean_nearest_neighbour_spacing([[1.0, 2.0]]))
    assert math.isnan(mean_nearest_neighbour_spacing(np.zeros((0, 2))))
    pts = [[0, 0], [0, 1], [0, 10], [0, 12]]
    assert mean_nearest_neighbour_spacing(pts) == pytest.approx(1.5)
    assert mean_nearest_neighbour_spacing(pts, "median") == pytest.approx(1.5)
    with pytest.raises(InputError):
        mean_nearest_neighbour_spacing(pts, "mode")


def test_table2_radius_and_fwhm():
    assert sigma_from_fwhm(2.3548200450309493) == pytest.approx(1.0)
    r = column_radius_A(0.025, 25.0, 0.8)
    assert r == pytest.approx(math.hypot(0.5, 0.4))
    assert column_radius_A(0.025, 25.0, 0.8, small=True) == pytest.approx(0.7 * r)


def test_circular_mask_matches_the_disc_definition_exactly():
    rng = np.random.default_rng(5)
    for radius in (0.5, 1.0, 2.0, 2.5, 3.7, 7.0):
        # half-integer and integer positions put pixel centres exactly on the circle
        pos = np.vstack([rng.uniform(-5, 45, (40, 2)),
                         rng.integers(-3, 43, (40, 2)) + rng.choice([0.0, 0.5], (40, 2))])
        yy, xx = np.mgrid[0:40, 0:36]
        d2 = (yy[None] - pos[:, 0, None, None]) ** 2 + (xx[None] - pos[:, 1, None, None]) ** 2
        expected = np.any(d2 <= radius**2, axis=0).astype(np.float32)
        np.testing.assert_array_equal(circular_mask(pos, (40, 36), radius), expected)


def test_nearest_neighbour_distances_match_brute_force():
    rng = np.random.default_rng(6)
    pts = np.vstack([rng.uniform(0, 50, (300, 2)), [[10.0, 10.0], [10.0, 10.0]]])
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(nearest_neighbour_distances(pts), d.min(axis=1))
    assert np.isnan(nearest_neighbour_distances([[1.0, 2.0]])).all()


def _blobs(shape, centres, sigma, background=0.1):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.full(shape, background)
    for y, x in centres:
        img += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma ** 2))
    return img


def test_detectable_columns_merges_what_the_image_does_not_resolve():
    # Two equal Gaussians are resolved (a dip between them) only beyond d = 2σ (Sparrow).
    sigma = 3.0
    pairs = [((20.0, 15.0), (20.0, 15.0 + 1.6 * sigma)),   # unresolved dumbbell
             ((50.0, 15.0), (50.0, 15.0 + 3.0 * sigma))]   # resolved dumbbell
    centres = [p for pair in pairs for p in pair]
    img = _blobs((70, 40), centres, sigma)
    groups = detectable_columns(img, centres, pixel_size_A=0.5, radius_A=10.0)
    assert groups[0] == groups[1] >= 0
    assert len({groups[2], groups[3], groups[0]}) == 3
    cent = group_centroids(centres, groups)
    assert len(cent) == 3
    np.testing.assert_allclose(cent[groups[0]], (20.0, 15.0 + 0.8 * sigma))
    np.testing.assert_allclose(cent[groups[2]], centres[2])


def test_detectable_columns_hides_smears_peakless_columns_and_non_candidates():
    sigma = 3.0
    line = [(15.0, 10.0 + 1.5 * sigma * k) for k in range(5)]   # a row no probe separates
    single = [(45.0, 20.0)]
    ghost = [(45.0, 45.0)]            # labelled, but the image has no peak there
    hidden = [(30.0, 45.0)]           # shows a peak but is not a candidate
    img = _blobs((60, 60), line + single + hidden, sigma)
    positions = line + single + ghost + hidden
    candidates = np.array([True] * 7 + [False])
    groups = detectable_columns(img, positions, candidates, pixel_size_A=1.0, radius_A=8.0)
    assert np.all(groups[:5] == -1)                 # a smear of 5 > max_group
    assert groups[5] == 0                           # the lone column is the only truth
    assert groups[6] == -1 and groups[7] == -1
    assert detectable_columns(img, line, pixel_size_A=1.0, radius_A=8.0,
                              max_group=5).tolist() == [0] * 5


def test_detectable_columns_rejects_bad_input():
    with pytest.raises(InputError, match="2-D"):
        detectable_columns(np.zeros((2, 3, 3)), [(1.0, 1.0)])
    with pytest.raises(InputError, match="one entry per column"):
        detectable_columns(np.zeros((8, 8)), [(1.0, 1.0)], [True, False])
    assert detectable_columns(np.zeros((8, 8)), np.zeros((0, 2))).shape == (0,)
