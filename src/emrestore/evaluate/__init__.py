"""Evaluation: image-quality metrics (PSNR, SSIM) and detection / localisation metrics."""

from .metrics import MatchResult, chamfer_distance, match_points, psnr, ssim

__all__ = ["MatchResult", "chamfer_distance", "match_points", "psnr", "ssim"]
