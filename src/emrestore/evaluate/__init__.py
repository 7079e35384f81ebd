"""Evaluation: image-quality and detection metrics, classic baselines and the benchmark protocol.

- :mod:`~emrestore.evaluate.metrics`: PSNR, SSIM, point matching (F1, Jaccard, Chamfer);
- :mod:`~emrestore.evaluate.baselines`: Gaussian, median, Wiener, NLM and Anscombe + BM3D;
- :mod:`~emrestore.evaluate.protocol`: the test set, workflows and scoring (``run_benchmark``);
- :mod:`~emrestore.evaluate.report`: tables, figures and ``index.html`` (``write_report``).
"""

from .metrics import MatchResult, chamfer_distance, match_points, psnr, ssim
from .protocol import BenchmarkConfig, BenchmarkResult, resolve_workflows, run_benchmark
from .report import write_report

__all__ = [
    "BenchmarkConfig",
    "BenchmarkResult",
    "MatchResult",
    "chamfer_distance",
    "match_points",
    "psnr",
    "resolve_workflows",
    "run_benchmark",
    "ssim",
    "write_report",
]
