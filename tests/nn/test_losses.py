"""Physics and invariances of the loss terms."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emrestore.errors import ConfigError  # noqa: E402
from emrestore.nn import losses  # noqa: E402


def image(seed=0, n=2, size=48):
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(size).view(-1, 1).float()
    cols = torch.arange(size).view(1, -1).float()
    base = 0.2 + (torch.cos(rows / 1.9) * torch.cos(cols / 2.3)) ** 8
    return (base + 0.05 * torch.rand(n, 1, size, size, generator=g)).float()


@pytest.mark.parametrize("name", sorted(losses.TERMS))
def test_zero_for_identical_images_and_positive_otherwise(name):
    y = image(0)
    off = torch.zeros(2, 1, 1, 1)
    sc = torch.full((2, 1, 1, 1), 10.0)  # counts = 10 × normalised
    fn = losses.TERMS[name]
    same = fn(y, y.clone(), offset=off, scale=sc)
    assert abs(float(same)) < 1e-6
    other = fn(y + 0.1 * image(1), y, offset=off, scale=sc)
    assert float(other) > 1e-4


def test_poisson_nll_is_minimised_at_the_true_mean():
    """E[NLL(λ; n)] with n ~ Poisson(μ) is smallest at λ = μ: on sampled counts, and for the
    deviance against the clean mean."""
    rng = np.random.default_rng(0)
    mu = 3.7
    n = torch.from_numpy(rng.poisson(mu, 10_000).astype(np.float32)).view(1, 1, 100, 100)
    lams = np.linspace(2.0, 6.0, 81)
    nll = [float(losses.poisson_nll(torch.full_like(n, lam), n)) for lam in lams]
    assert abs(lams[int(np.argmin(nll))] - n.mean().item()) <= 0.025 + 1e-6
    target = torch.full((1, 1, 8, 8), mu)
    dev = [float(losses.poisson_nll(torch.full_like(target, lam), target)) for lam in lams]
    assert abs(lams[int(np.argmin(dev))] - mu) < 0.05 + 1e-9
    assert min(dev) >= 0.0


def test_whitening_loss_is_invariant_to_affine_intensity_changes():
    pred, target = image(2), image(3)
    base = float(losses.mlwt(pred, target, sigma_min=1e-6))
    # the same positive affine change of both images: globally, and per image in the batch
    a = torch.tensor([3.0, 0.5]).view(2, 1, 1, 1)
    b = torch.tensor([-2.0, 7.0]).view(2, 1, 1, 1)
    assert float(losses.mlwt(a * pred + b, a * target + b, sigma_min=1e-6)) == pytest.approx(
        base, rel=1e-3)
    # ... and locally: a different affine change in each 16-px block changes only the windows
    # that straddle block edges; the whitened values of windows inside a block are unchanged.
    gain = 1.0 + torch.arange(3).repeat_interleave(16).float()
    local = gain.view(1, 1, -1, 1) * gain.view(1, 1, 1, -1)
    for s in (2, 4, 8, 16):
        w_p = losses.local_whitening(pred, s)
        w_l = losses.local_whitening(local * pred + 5.0 * local, s)
        inside = w_p[..., : 16 - s + 1, : 16 - s + 1]
        torch.testing.assert_close(w_l[..., : 16 - s + 1, : 16 - s + 1], inside, rtol=1e-3,
                                   atol=1e-3)
    # ... whereas an L1 loss is not invariant
    assert float(losses.l1(3 * pred, 3 * target)) == pytest.approx(3 * float(
        losses.l1(pred, target)), rel=1e-5)


def test_fourier_loss_zero_for_identical_and_weighs_high_frequencies():
    y = image(4)
    assert float(losses.fourier_power(y, y.clone())) == 0.0
    rows = torch.arange(48).float().view(-1, 1)
    low = 0.1 * torch.cos(2 * np.pi * rows / 48).expand(48, 48)[None, None]
    high = 0.1 * torch.cos(np.pi * rows).expand(48, 48)[None, None]
    # equal L2 error energy; γ = 0.125 compresses amplitude so both count about the same
    assert float(losses.fourier_power(y + high, y)) > 0
    assert float(losses.fourier_power(y + low, y)) > 0


def test_std_weighting_gives_each_image_equal_importance():
    y = image(5)
    y_bright = 10 * y
    err = 0.1 * image(6)
    assert float(losses.l1_std(y + err, y)) == pytest.approx(
        float(losses.l1_std(y_bright + 10 * err, y_bright)), rel=1e-5)


def test_mean_and_std_constraints():
    y = image(7)
    assert float(losses.mean_constraint(y + 0.3, y)) == pytest.approx(0.3, rel=1e-5)
    assert float(losses.std_constraint(y + 0.3, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.std_constraint(2 * y, y)) == pytest.approx(float(y[0].std(
        unbiased=False) + y[1].std(unbiased=False)) / 2, rel=1e-4)


def test_weighted_mse_favours_non_black_pixels():
    target = torch.zeros(1, 1, 10, 10)
    target[..., 5:, :] = 1.0
    err = torch.zeros_like(target)
    err_black, err_bright = err.clone(), err.clone()
    err_black[..., :5, :] = 0.5
    err_bright[..., 5:, :] = 0.5
    ratio = float(losses.weighted_mse(target + err_bright, target)) / float(
        losses.weighted_mse(target + err_black, target))
    assert ratio == pytest.approx(1000.0, rel=1e-4)


def test_chi2_penalises_false_signal_in_the_background():
    target = torch.zeros(1, 1, 10, 10)
    target[..., 5:, :] = 1.0
    bump = torch.zeros_like(target)
    fake_bg, fake_atom = bump.clone(), bump.clone()
    fake_bg[..., 0, 0] = 0.5
    fake_atom[..., 9, 9] = 0.5
    assert float(losses.chi2_modified(target + fake_bg, target)) > 5 * float(
        losses.chi2_modified(target + fake_atom, target))


def test_anscombe_weighs_by_poisson_noise():
    off = torch.zeros(1, 1, 1, 1)
    one = torch.ones(1, 1, 1, 1)
    dim = torch.full((1, 1, 4, 4), 25.0)
    bright = torch.full((1, 1, 4, 4), 2500.0)
    # an error of one noise std costs about the same at 25 and at 2500 counts (≈ 1), whereas
    # a plain squared error differs by the factor 100 between them
    e_dim = float(losses.anscombe(dim + 5.0, dim, offset=off, scale=one))
    e_bright = float(losses.anscombe(bright + 50.0, bright, offset=off, scale=one))
    assert e_dim == pytest.approx(e_bright, rel=0.15)
    assert e_bright == pytest.approx(1.0, rel=0.05)


def test_composite_loss_from_weights():
    loss = losses.CompositeLoss({"l1_std": 1.0, "fourier": 0.5, "mean": 0.0},
                                {"fourier": {"gamma": 0.25}})
    pred, target = image(8), image(9)
    total, parts = loss(pred, target)
    assert set(parts) == {"l1_std", "fourier"}
    expect = parts["l1_std"] + 0.5 * float(losses.fourier_power(pred, target, gamma=0.25))
    assert float(total) == pytest.approx(expect, rel=1e-5)
    with pytest.raises(ConfigError, match="unknown loss"):
        losses.CompositeLoss({"ssim": 1.0})
    with pytest.raises(ConfigError, match="non-zero"):
        losses.CompositeLoss({"l1": 0.0})


def test_relativistic_gan_losses_are_symmetric():
    disc = losses.PatchDiscriminator(features=8)
    x = image(10, size=96)
    with torch.no_grad():
        c_real, c_fake = disc(x, x), disc(x, torch.flip(x, dims=(-1,)))
    assert c_real.shape[-1] >= 1
    gan = losses.RelativisticAverageGAN
    d, g = gan.discriminator_loss(c_real, c_fake), gan.generator_loss(c_real, c_fake)
    # swapping real and fake swaps the two losses
    assert float(d) == pytest.approx(float(gan.generator_loss(c_fake, c_real)), rel=1e-6)
    assert float(g) == pytest.approx(float(gan.discriminator_loss(c_fake, c_real)), rel=1e-6)
    # indistinguishable inputs (equal constant scores): both at 2 log 2
    flat = torch.full_like(c_real, 0.7)
    same = gan.discriminator_loss(flat, flat.clone())
    assert float(same) == pytest.approx(2 * np.log(2), rel=1e-5)
