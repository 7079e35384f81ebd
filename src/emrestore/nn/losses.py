"""Loss terms for image restoration, and a config-driven weighted sum of them.

Every term takes ``pred`` and ``target`` of shape ``(N, C, H, W)`` in the network's normalised
units (``nn.normalise``) and returns a scalar; terms that need physical counts also take the
per-image ``offset`` and ``scale`` (shape ``(N, 1, 1, 1)``) that map them back.

From seed 001 (Lobato et al., eqs 4-15):
  * :func:`l1_std`, :func:`l2_std` — L1 / L2 weighted by ``1 / max(σ_min, std(target))`` per image
    (eqs 4-6), so every example counts the same whatever its contrast;
  * :func:`mlwt` — multi-local whitening transform loss, L1 between local whitenings of both
    images with windows of 2, 4, 8 and 16 px (eqs 7-8);
  * :func:`fourier_power` — ``E|F(y - y_g)|^γ`` with γ = 0.125 (eq 9);
  * :func:`mean_constraint`, :func:`std_constraint` — per-image mean and std differences
    (eqs 10-11);
  * :class:`PatchDiscriminator` and :class:`RelativisticAverageGAN` — the conditional
    relativistic-average patch GAN (eqs 2-3, 12, 15), an optional training stage.
From seed 000 (Gambini et al., eq 2): :func:`weighted_mse` — 1000:1 weight on non-black pixels.
From seed 003 (Lin et al.): :func:`chi2_modified` — ``(I - I_gt)² / (I_gt + max(I_gt)/10)``.
For counting data: :func:`poisson_nll` (Poisson deviance, minimised at the true mean) and
:func:`anscombe` (L2 after the variance-stabilising Anscombe transform).

:class:`CompositeLoss` sums any of these with weights from a dict (a TOML table).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

#: Default floor of the per-image std in the std-weighted losses, in normalised units. The
#: normalised image has a mean signal of 1 above its offset, so 0.01 only bites on flat images.
SIGMA_MIN = 0.01


def _std(x: torch.Tensor) -> torch.Tensor:
    """Per-image std over (C, H, W), shape (N, 1, 1, 1)."""
    return x.flatten(1).std(dim=1, unbiased=False).view(-1, 1, 1, 1)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1).view(-1, 1, 1, 1)


def l1_std(pred, target, *, sigma_min: float = SIGMA_MIN, **_):
    """Seed 001 eqs 4-5: ``E{w_y |y - y_g|}`` with ``w_y = 1 / max(σ_min, std(y))`` per image."""
    w = 1.0 / torch.clamp(_std(target), min=sigma_min)
    return (w * (pred - target).abs()).mean()


def l2_std(pred, target, *, sigma_min: float = SIGMA_MIN, **_):
    """Seed 001 eq 6: ``E{w_y |y - y_g|²}``, same weight as :func:`l1_std`."""
    w = 1.0 / torch.clamp(_std(target), min=sigma_min)
    return (w * (pred - target) ** 2).mean()


def local_whitening(x: torch.Tensor, window: int, *, sigma_min: float = SIGMA_MIN):
    """Seed 001 eq 7: ``(x - mean_S) / max(σ_min, std_S)`` over sliding S×S windows.

    Each output pixel is the window's central pixel (row ``i + S//2``, for even S the lower of
    the two central ones) whitened with the mean and std of its window; shape ``(H-S+1, W-S+1)``.
    Computed in float64: ``E{x²} - E{x}²`` cancels badly in float32 for faint windows.
    """
    x = x.double()
    mean = F.avg_pool2d(x, window, stride=1)
    mean_sq = F.avg_pool2d(x * x, window, stride=1)
    std = torch.sqrt(torch.clamp(mean_sq - mean * mean, min=0.0) + 1e-30)
    c = window // 2
    h, w = mean.shape[-2:]
    centre = x[..., c:c + h, c:c + w]
    return ((centre - mean) / torch.clamp(std, min=sigma_min)).float()


def mlwt(pred, target, *, windows=(2, 4, 8, 16), sigma_min: float = SIGMA_MIN, **_):
    """Seed 001 eq 8: mean over windows of ``E|W_S(y) - W_S(y_g)|``.

    Invariant to a positive affine change of intensity ``a·y + b`` applied to both images over
    any region that contains the window (the whitening removes it), as long as the local std
    exceeds ``σ_min``: it weighs faint features (thin edges, light atoms) like bright ones.
    """
    terms = []
    for s in windows:
        if s > min(pred.shape[-2:]):
            continue
        terms.append((local_whitening(pred, s, sigma_min=sigma_min)
                      - local_whitening(target, s, sigma_min=sigma_min)).abs().mean())
    if not terms:
        raise ValueError(f"image {tuple(pred.shape[-2:])} is smaller than every window {windows}")
    return torch.stack(terms).mean()


def fourier_power(pred, target, *, gamma: float = 0.125, eps: float = 1e-8, **_):
    """Seed 001 eq 9: ``E|F(y - y_g)|^γ`` (orthonormal 2-D FFT), γ = 0.125.

    The power ``γ < 1`` lifts the small high-frequency amplitudes. ``|z|^γ`` is evaluated as
    ``(|z|² + eps)^(γ/2) - eps^(γ/2)`` so that the gradient is finite at zero and the loss is
    exactly zero for identical images.
    """
    diff = (pred - target).float()
    spec = torch.fft.rfft2(diff, norm="ortho")
    power = spec.real ** 2 + spec.imag ** 2
    return ((power + eps) ** (gamma / 2) - eps ** (gamma / 2)).mean()


def mean_constraint(pred, target, **_):
    """Seed 001 eq 10: ``|E{y} - E{y_g}|`` per image, averaged over the batch."""
    return (_mean(pred) - _mean(target)).abs().mean()


def std_constraint(pred, target, **_):
    """Seed 001 eq 11: ``|Std{y} - Std{y_g}|`` per image, averaged over the batch."""
    return (_std(pred) - _std(target)).abs().mean()


def weighted_mse(pred, target, *, ratio: float = 1000.0, black_tolerance: float = 1e-3, **_):
    """Seed 000 eq 2: MSE with weight ``ratio`` on non-black pixels and 1 on black ones.

    "Black" pixels are those at the image's minimum of the target (within ``black_tolerance`` of
    its range). Weights are divided by ``ratio`` (non-black 1, black 1/ratio): the same minimiser
    as the paper's loss, on the scale of a plain MSE.
    """
    flat = target.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    black = target <= lo + black_tolerance * (hi - lo)
    w = torch.where(black, torch.full_like(target, 1.0 / ratio), torch.ones_like(target))
    return (w * (pred - target) ** 2).mean()


def chi2_modified(pred, target, **_):
    """Seed 003: ``(I - I_gt)² / (I_gt + max(I_gt)/10)``, averaged over pixels.

    Seed 003's labels are non-negative; here the target is first shifted to a minimum of 0 per
    image (normalised units can go below zero), so the denominator is ``(t - min t) +
    (max t - min t) / 10``: it penalises false signal in the dark background most.
    """
    flat = target.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    denom = (target - lo) + torch.clamp(hi - lo, min=1e-6) / 10.0
    return ((pred - target) ** 2 / denom).mean()


def _counts(x_n, offset, scale):
    """Normalised units back to detector units (counts for a counting detector)."""
    return x_n * scale + offset


def poisson_nll(pred, target, *, offset=None, scale=None, eps: float = 1e-3, **_):
    """Poisson deviance between the predicted mean λ and the clean mean μ, per pixel.

    With counts ``n ~ Poisson(μ)`` the expected negative log-likelihood of a prediction λ is
    ``λ - μ log λ`` (+ const), minimised at λ = μ; subtracting its minimum gives the deviance
    ``λ - μ - μ log(λ/μ) >= 0``. Evaluated on ``λ, μ`` in units of the image's scale
    (``counts / scale``, so images of any dose weigh alike); both are clamped at ``eps``.
    Without ``offset``/``scale`` the inputs are taken as counts already.
    """
    if offset is not None and scale is not None:
        shift = offset / scale
        lam, mu = pred + shift, target + shift
    else:
        lam, mu = pred, target
    lam = torch.clamp(lam, min=eps)
    mu = torch.clamp(mu, min=eps)
    return (lam - mu - mu * torch.log(lam / mu)).mean()


def anscombe(pred, target, *, offset=None, scale=None, **_):
    """L2 between Anscombe transforms ``2 sqrt(c + 3/8)`` of predicted and clean counts.

    The transform makes Poisson noise of unit variance at every intensity, so the loss weighs a
    pixel by its noise: ``≈ (λ - μ)² / (μ + 3/8)``. Counts are ``x_n * scale + offset`` (the
    simulator's detector units), clamped at 0.
    """
    if offset is not None and scale is not None:
        lam, mu = _counts(pred, offset, scale), _counts(target, offset, scale)
    else:
        lam, mu = pred, target
    a = 2.0 * torch.sqrt(torch.clamp(lam, min=0.0) + 0.375)
    b = 2.0 * torch.sqrt(torch.clamp(mu, min=0.0) + 0.375)
    return ((a - b) ** 2).mean()


def mse(pred, target, **_):
    """Plain mean squared error in normalised units."""
    return F.mse_loss(pred, target)


def l1(pred, target, **_):
    """Plain mean absolute error in normalised units."""
    return F.l1_loss(pred, target)


#: Loss terms by the name used in config files.
TERMS: dict[str, Callable[..., torch.Tensor]] = {
    "l1": l1,
    "mse": mse,
    "l1_std": l1_std,
    "l2_std": l2_std,
    "mlwt": mlwt,
    "fourier": fourier_power,
    "mean": mean_constraint,
    "std": std_constraint,
    "wmse": weighted_mse,
    "chi2": chi2_modified,
    "poisson": poisson_nll,
    "anscombe": anscombe,
}


class CompositeLoss(nn.Module):
    """Weighted sum of named loss terms (seed 001 eq 14), built from a ``{name: weight}`` dict.

    ``options`` passes keyword arguments to single terms, e.g. ``{"fourier": {"gamma": 0.125}}``.
    Calling it returns ``(total, parts)`` where ``parts`` maps each term to its unweighted value
    (detached floats, for logging).
    """

    def __init__(self, weights: Mapping[str, float],
                 options: Mapping[str, Mapping] | None = None):
        super().__init__()
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ConfigError(f"unknown loss term(s) {unknown}; valid names are {sorted(TERMS)}")
        self.weights = {k: float(v) for k, v in weights.items() if float(v) != 0.0}
        if not self.weights:
            raise ConfigError("the loss has no term with a non-zero weight")
        self.options = {k: dict(v) for k, v in (options or {}).items()}
        unknown = sorted(set(self.options) - set(TERMS))
        if unknown:
            raise ConfigError(f"options for unknown loss term(s) {unknown}")

    def forward(self, pred, target, *, offset=None, scale=None):
        total = pred.new_zeros(())
        parts: dict[str, float] = {}
        pred32, target32 = pred.float(), target.float()
        for name, weight in self.weights.items():
            value = TERMS[name](pred32, target32, offset=offset, scale=scale,
                                **self.options.get(name, {}))
            total = total + weight * value
            parts[name] = float(value.detach())
        return total, parts


# ---------------------------------------------------------------------------------------------
# Relativistic-average patch GAN (optional stage)


class PatchDiscriminator(nn.Module):
    """Seed 001 Fig. 10: the 70×70 patch discriminator of pix2pix without zero-padding layers and
    with instance normalisation instead of batch normalisation.

    Conditional (``D_cRap(x, y, y_g)``, eq 15): it sees the distorted input and a clean or
    restored image as two channels and returns a map of raw scores ``C(·)`` (one per patch).
    """

    def __init__(self, in_channels: int = 2, features: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, features, 4, stride=2),
                                   nn.LeakyReLU(0.2, inplace=True)]
        c = features
        for i in range(1, n_layers + 1):
            c_next = features * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(c, c_next, 4, stride=stride),
                       nn.InstanceNorm2d(c_next, affine=True),
                       nn.LeakyReLU(0.2, inplace=True)]
            c = c_next
        layers.append(nn.Conv2d(c, 1, 4, stride=1))
        self.net = nn.Sequential(*layers)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, image], dim=1))


class RelativisticAverageGAN:
    """Relativistic-average losses (seed 001 eqs 2-3, 12 and 15) on raw patch scores.

    ``D_Rap(a, b) = σ(C(a) - E{C(b)})``. Written with ``binary_cross_entropy_with_logits`` for
    numerical stability; the expectations are over the batch and the patches.
    """

    @staticmethod
    def discriminator_loss(c_real: torch.Tensor, c_fake: torch.Tensor) -> torch.Tensor:
        """Eq 15: ``-E log D(y, y_g) - E log(1 - D(y_g, y))``."""
        real = c_real - c_fake.mean()
        fake = c_fake - c_real.mean()
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))

    @staticmethod
    def generator_loss(c_real: torch.Tensor, c_fake: torch.Tensor) -> torch.Tensor:
        """Eq 12: ``-E log(1 - D(y, y_g)) - E log D(y_g, y)``."""
        real = c_real - c_fake.mean()
        fake = c_fake - c_real.mean()
        return (F.binary_cross_entropy_with_logits(real, torch.zeros_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake)))
