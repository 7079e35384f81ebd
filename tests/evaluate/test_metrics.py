import numpy as np
import pytest

from emrestore.errors import InputError
from emrestore.evaluate.metrics import chamfer_distance, match_points, psnr, ssim


def test_psnr_uses_reference_range():
    ref = np.zeros((10, 10))
    ref[0, 0] = 10.0  # data range 10
    test = ref + 1.0  # MSE = 1
    assert psnr(ref, test) == pytest.approx(20.0)
    assert psnr(ref, test, data_range=100.0) == pytest.approx(40.0)
    assert psnr(ref, ref) == float("inf")


def test_ssim_and_errors():
    rng = np.random.default_rng(0)
    ref = rng.random((32, 32))
    assert ssim(ref, ref) == pytest.approx(1.0)
    assert ssim(ref, ref + rng.normal(0, 0.2, ref.shape)) < 0.9
    with pytest.raises(InputError):
        psnr(ref, ref[:10])
    with pytest.raises(InputError):
        psnr(np.ones((4, 4)), np.zeros((4, 4)))  # constant reference, no data range
    with pytest.raises(InputError):
        ssim(ref, np.full_like(ref, np.nan))


def test_matching_counts_and_scores():
    truth = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])
    pred = np.array([[0.5, 0.0], [10.0, -0.5], [25.0, 25.0]])
    m = match_points(pred, truth, radius=2.0)
    assert (m.n_matched, m.n_false_positive, m.n_false_negative) == (2, 1, 2)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 4)
    assert m.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m.jaccard == pytest.approx(2 / 5)
    assert m.rmse == pytest.approx(0.5)
    assert np.allclose(m.bias, [0.25, -0.25])


def test_hungarian_beats_greedy():
    truth = np.array([[0.0, 0.0], [1.0, 0.0]])
    pred = np.array([[1.9, 0.0], [0.1, 0.0]])
    m = match_points(pred, truth, radius=1.0)
    assert m.n_matched == 2
    assert sorted(zip(m.pred_index.tolist(), m.truth_index.tolist())) == [(0, 1), (1, 0)]
    chain_t = np.array([[0.0, 0.0], [1.0, 0.0]])
    chain_p = np.array([[0.6, 0.0], [1.7, 0.0]])
    m2 = match_points(chain_p, chain_t, radius=1.0)
    # greedy nearest-first would pair p0-t1 (0.4) and leave p1 alone: maximum cardinality first
    assert m2.n_matched == 2


def test_chamfer_matches_definition():
    a = np.array([[0.0, 0.0], [0.0, 3.0]])
    b = np.array([[0.0, 1.0]])
    # a->b: 1, 2 (mean 1.5); b->a: 1
    assert chamfer_distance(a, b) == pytest.approx(2.5)
    assert match_points(a, b, 1.5).chamfer == pytest.approx(2.5)
    assert chamfer_distance(np.zeros((0, 2)), b) == float("inf")


def test_exact_zero_distance_and_empty_sets():
    pts = np.random.default_rng(1).uniform(0, 100, (50, 2))
    m = match_points(pts, pts.copy(), radius=1.0)
    assert m.n_matched == 50 and m.rmse == 0.0 and m.f1 == 1.0
    e = match_points(np.zeros((0, 2)), pts, radius=1.0)
    assert e.n_matched == 0 and e.recall == 0.0 and np.isnan(e.rmse)
    with pytest.raises(InputError):
        match_points(pts, pts, radius=0.0)


def test_large_sets_are_fast_and_exact():
    rng = np.random.default_rng(2)
    truth = np.array([(y, x) for y in range(0, 1000, 10) for x in range(0, 1000, 10)], float)
    pred = truth + rng.normal(0, 0.5, truth.shape)
    m = match_points(pred, truth, radius=3.0)
    assert m.n_matched == len(truth)
    assert m.rmse == pytest.approx(0.5 * np.sqrt(2), rel=0.05)
