"""The normalisation used by training and inference: round trip, exact equivariance under a
change of units (x -> k x + c) of the whole normalise -> network -> denormalise path."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emrestore.nn.blocks import build_model  # noqa: E402
from emrestore.nn.normalise import (  # noqa: E402
    denormalise,
    from_card,
    image_statistics,
    normalisation_card,
    normalise,
)


def counts(seed=0, shape=(64, 80), mean=5.0):
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    truth = 0.2 + (np.cos(rows / 1.7) * np.cos(cols / 2.1)) ** 8
    return rng.poisson(truth * mean / truth.mean()).astype(np.float32)


def test_round_trip_numpy_and_torch():
    x = counts()
    x_n, off, sc = normalise(x)
    assert x_n.dtype == np.float32 and x_n.shape == x.shape
    np.testing.assert_allclose(denormalise(x_n, off, sc), x, rtol=1e-6, atol=1e-5)
    t = torch.from_numpy(x)[None, None]
    t_n, t_off, t_sc = normalise(t)
    assert t_off.shape == (1, 1, 1, 1)
    torch.testing.assert_close(denormalise(t_n, t_off, t_sc), t, rtol=1e-6, atol=1e-5)
    # numpy and torch agree on the statistics
    np.testing.assert_allclose(float(t_off), float(off[0, 0]), rtol=1e-6)
    np.testing.assert_allclose(float(t_sc), float(sc[0, 0]), rtol=1e-5)


def test_statistics_are_per_image():
    a, b = counts(1), 100.0 * counts(2) + 1000.0
    _, off, sc = normalise(np.stack([a, b]))
    _, off_a, sc_a = normalise(a)
    _, off_b, sc_b = normalise(b)
    np.testing.assert_allclose(off.ravel(), [off_a.item(), off_b.item()])
    np.testing.assert_allclose(sc.ravel(), [sc_a.item(), sc_b.item()])


@pytest.mark.parametrize("mean", [0.05, 1.0, 1000.0])
def test_mean_signal_is_one(mean):
    """Sparse counting data (0.05 counts/px) and bright data both map onto O(1) values."""
    x = counts(3, mean=mean)
    x_n, _off, sc = normalise(x)
    assert sc.item() > 0
    assert 0.5 < float(np.mean(x_n)) < 1.5


def test_constant_image_does_not_divide_by_zero():
    x_n, _, sc = normalise(np.full((16, 16), 7.0, np.float32))
    assert np.all(np.isfinite(x_n)) and sc.item() == 7.0
    x_n, _off, sc = normalise(np.zeros((16, 16), np.float32))
    assert np.all(x_n == 0) and sc.item() == 1.0


@pytest.mark.parametrize("k, c", [(0.01, 0.0), (37.0, 0.0), (1.0, 500.0), (12.5, -800.0)])
def test_network_path_is_equivariant_to_units(k, c):
    """y(k x + c) = k y(x) + c for the full denormalise(net(normalise(x))) path."""
    torch.manual_seed(0)
    net = build_model("unet", {"widths": [8, 16], "blocks": 1, "activation": "silu"}).eval()
    with torch.no_grad():  # make the fresh net non-trivial (the head starts at zero)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = counts(4).astype(np.float64)

    def path(img):
        x_n, off, sc = normalise(img)
        with torch.no_grad():
            y_n = net(torch.from_numpy(x_n.astype(np.float32))[None, None])[0, 0].numpy()
        return denormalise(y_n.astype(np.float64), off, sc)

    y = path(x)
    y_k = path(k * x + c)
    assert np.abs(y - x).max() > 1e-2  # the network does something
    np.testing.assert_allclose(y_k, k * y + c, rtol=1e-5, atol=1e-5 * k * np.abs(y).max())


def test_quantiles_subsample_large_images_deterministically():
    rng = np.random.default_rng(5)
    big = rng.gamma(2.0, 3.0, (1500, 1400)).astype(np.float32)
    off, sc = image_statistics(big, max_samples=1 << 16)
    off_full, sc_full = image_statistics(big, max_samples=1 << 30)
    assert abs(off.item() - off_full.item()) < 0.05 * sc_full.item()
    assert abs(sc.item() - sc_full.item()) < 0.01 * sc_full.item()
    t_off, _t_sc = image_statistics(torch.from_numpy(big), max_samples=1 << 16)
    np.testing.assert_allclose(t_off.item(), off.item(), rtol=1e-6)


def test_integer_and_card_entry():
    x = (counts(6) * 3).astype(np.uint16)
    x_n, _off, _sc = normalise(x)
    assert x_n.dtype == np.float32
    entry = normalisation_card()
    norm, _denorm = from_card(entry)
    x_n2, _off2, _sc2 = norm(x)
    np.testing.assert_array_equal(x_n, x_n2)
    assert entry["params"]["offset_quantile"] == 0.01
