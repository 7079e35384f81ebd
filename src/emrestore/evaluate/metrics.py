"""Image-quality and detection metrics.

Image quality
-------------
:func:`psnr` and :func:`ssim` compare a test image with a reference. **Data-range convention:** the
data range is ``reference.max() - reference.min()`` (the reference image's own range, computed
once, never the test image's), unless ``data_range`` is given. Both functions use the same
convention, so the numbers are comparable between methods that output different value ranges.
For images in counts the natural explicit choice is the reference's peak-to-background range;
say which one you use when you report numbers.

Detection
---------
:func:`match_points` pairs predicted and true positions one-to-one within a radius by the Hungarian
algorithm (minimum total distance among the assignments with the largest number of pairs) and
reports, following Yan (2024, eqs. 8-12):

- precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 P R / (P + R),
- Jaccard = TP / (TP + FP + FN),
- Chamfer distance = mean over predictions of the distance to the nearest true point + mean over
  true points of the distance to the nearest prediction (all points, matched or not),

with TP the matched pairs, FP the unmatched predictions and FN the unmatched true points. (The
thesis's eqs. 10 and 11 swap the names precision and recall relative to this, the usual, usage.)
For the matched pairs it also gives the localisation RMSE and bias (mean of prediction − truth).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["MatchResult", "chamfer_distance", "match_points", "psnr", "ssim"]


def _pair_images(reference, test):
    ref = np.asarray(reference, dtype=np.float64)
    tst = np.asarray(test, dtype=np.float64)
    if ref.shape != tst.shape:
        raise InputError(f"images differ in shape: reference {ref.shape}, test {tst.shape}")
    if ref.size == 0:
        raise InputError("empty images")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(tst))):
        raise InputError("images contain NaN or infinite values")
    return ref, tst


def _data_range(ref, data_range):
    if data_range is None:
        dr = float(ref.max() - ref.min())
        if dr <= 0:
            raise InputError(
                "the reference image is constant, so its data range is 0: pass data_range"
            )
        return dr
    dr = float(data_range)
    if not dr > 0:
        raise InputError(f"data_range must be > 0, got {data_range!r}")
    return dr


def psnr(reference, test, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range² / MSE)``.

    Parameters
    ----------
    reference, test : arrays of equal shape
    data_range : float, optional
        Default: ``reference.max() - reference.min()`` (see the module notes).

    Returns
    -------
    float
        PSNR in dB (``inf`` for identical images).
    """
    ref, tst = _pair_images(reference, test)
    dr = _data_range(ref, data_range)
    mse = float(np.mean((ref - tst) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(dr * dr / mse))


def ssim(reference, test, *, data_range: float | None = None, **kwargs) -> float:
    """Structural similarity (scikit-image's implementation) with the same data-range convention.

    Extra keyword arguments go to :func:`skimage.metrics.structural_similarity` (e.g.
    ``gaussian_weights=True``).
    """
    from skimage.metrics import structural_similarity

    ref, tst = _pair_images(reference, test)
    dr = _data_range(ref, data_range)
    return float(structural_similarity(ref, tst, data_range=dr, **kwargs))


def _as_points(points, name):
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"{name} must be an (N, 2) array of (y, x), got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{name} contains NaN or infinite coordinates")
    return pts


def chamfer_distance(predicted, truth) -> float:
    """Symmetric Chamfer distance (Yan 2024, eq. 8), in the units of the coordinates.

    ``inf`` if exactly one of the sets is empty, ``0`` if both are.
    """
    from scipy.spatial import cKDTree

    p = _as_points(predicted, "predicted")
    t = _as_points(truth, "truth")
    if len(p) == 0 and len(t) == 0:
        return 0.0
    if len(p) == 0 or len(t) == 0:
        return float("inf")
    d_pt, _ = cKDTree(t).query(p)
    d_tp, _ = cKDTree(p).query(t)
    return float(d_pt.mean() + d_tp.mean())


@dataclass(frozen=True)
class MatchResult:
    """One-to-one matching of predicted to true positions.

    ``pred_index[i]`` is matched to ``truth_index[i]``. Localisation errors are prediction − truth
    over the matched pairs, in the units of the coordinates: ``rmse`` is the root mean square
    of the distance, ``rmse_y`` / ``rmse_x`` per axis, ``bias`` the mean (dy, dx).
    """

    pred_index: np.ndarray
    truth_index: np.ndarray
    n_predicted: int
    n_truth: int
    radius: float
    precision: float
    recall: float
    f1: float
    jaccard: float
    chamfer: float
    rmse: float
    rmse_y: float
    rmse_x: float
    bias: np.ndarray

    @property
    def n_matched(self) -> int:
        return int(self.pred_index.size)

    @property
    def n_false_positive(self) -> int:
        return self.n_predicted - self.n_matched

    @property
    def n_false_negative(self) -> int:
        return self.n_truth - self.n_matched

    def as_dict(self) -> dict:
        return {
            "n_predicted": self.n_predicted, "n_truth": self.n_truth,
            "n_matched": self.n_matched, "n_false_positive": self.n_false_positive,
            "n_false_negative": self.n_false_negative, "radius": self.radius,
            "precision": self.precision, "recall": self.recall, "f1": self.f1,
            "jaccard": self.jaccard, "chamfer": self.chamfer, "rmse": self.rmse,
            "rmse_y": self.rmse_y, "rmse_x": self.rmse_x,
            "bias_y": float(self.bias[0]), "bias_x": float(self.bias[1]),
        }


def match_points(predicted, truth, radius: float) -> MatchResult:
    """Match predicted to true positions one-to-one within ``radius`` (Hungarian assignment).

    Candidate pairs are the pairs closer than ``radius`` (found with a k-d tree); the bipartite
    graph they form is split into connected components and each is solved exactly with
    :func:`scipy.optimize.linear_sum_assignment`, maximising the number of pairs first and then
    minimising their total distance. Memory and time stay proportional to the number of points.

    Parameters
    ----------
    predicted, truth : (N, 2) and (M, 2) arrays of (y, x)
    radius : float
        Largest distance at which two points may be matched (same units as the points; a third to
        a half of the nearest-neighbour distance is typical).

    Returns
    -------
    MatchResult
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    p = _as_points(predicted, "predicted")
    t = _as_points(truth, "truth")
    r = float(radius)
    if not r > 0:
        raise InputError(f"radius must be > 0, got {radius!r}")
    np_, nt = len(p), len(t)
    pi_list: list[int] = []
    ti_list: list[int] = []
    if np_ and nt:
        sdm = cKDTree(p).sparse_distance_matrix(cKDTree(t), r, output_type="coo_matrix")
        rows, cols, dist = sdm.row, sdm.col, sdm.data
        # exact zeros are dropped by sparse matrices: add them back
        zero_pairs = cKDTree(p).query_ball_tree(cKDTree(t), 0.0)
        extra = [(i, j) for i, js in enumerate(zero_pairs) for j in js]
        if extra:
            ez = np.array(extra)
            rows = np.concatenate([rows, ez[:, 0]])
            cols = np.concatenate([cols, ez[:, 1]])
            dist = np.concatenate([dist, np.zeros(len(ez))])
        if rows.size:
            n_nodes = np_ + nt
            graph = coo_matrix((np.ones(rows.size), (rows, cols + np_)), shape=(n_nodes, n_nodes))
            _, labels = connected_components(graph, directed=False)
            edge_label = labels[rows]
            order = np.argsort(edge_label, kind="stable")
            bounds = np.flatnonzero(np.diff(edge_label[order])) + 1
            for chunk in np.split(order, bounds):
                er, ec, ed = rows[chunk], cols[chunk], dist[chunk]
                ur, ir = np.unique(er, return_inverse=True)
                uc, ic = np.unique(ec, return_inverse=True)
                if ur.size == 1 or uc.size == 1:
                    k = int(np.argmin(ed))
                    pi_list.append(int(er[k]))
                    ti_list.append(int(ec[k]))
                    continue
                big = 1.0 + 2.0 * r * (ur.size + uc.size)  # larger than any sum of real costs
                cost = np.full((ur.size, uc.size), big)
                cost[ir, ic] = ed
                a, b = linear_sum_assignment(cost)
                ok = cost[a, b] < big
                pi_list += ur[a[ok]].tolist()
                ti_list += uc[b[ok]].tolist()
    pi = np.array(pi_list, dtype=int)
    ti = np.array(ti_list, dtype=int)
    order = np.argsort(ti, kind="stable")
    pi, ti = pi[order], ti[order]
    tp = pi.size
    fp, fn = np_ - tp, nt - tp
    precision = tp / (tp + fp) if (tp + fp) else 0.0
    recall = tp / (tp + fn) if (tp + fn) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if (precision + recall) else 0.0
    jaccard = tp / (tp + fp + fn) if (tp + fp + fn) else 1.0
    if tp:
        err = p[pi] - t[ti]
        rmse = float(np.sqrt(np.mean(np.sum(err * err, axis=1))))
        rmse_y = float(np.sqrt(np.mean(err[:, 0] ** 2)))
        rmse_x = float(np.sqrt(np.mean(err[:, 1] ** 2)))
        bias = err.mean(0)
    else:
        rmse = rmse_y = rmse_x = float("nan")
        bias = np.array([np.nan, np.nan])
    return MatchResult(
        pred_index=pi, truth_index=ti, n_predicted=np_, n_truth=nt, radius=r,
        precision=float(precision), recall=float(recall), f1=float(f1), jaccard=float(jaccard),
        chamfer=chamfer_distance(p, t), rmse=rmse, rmse_y=rmse_y, rmse_x=rmse_x, bias=bias,
    )
