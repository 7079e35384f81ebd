"""Every architecture maps (N, 1, H, W) to the same shape, for odd sizes too, and reports a
receptive field and size multiple that match its structure."""

import pytest

torch = pytest.importorskip("torch")

from emrestore.errors import ConfigError  # noqa: E402
from emrestore.nn.blocks import (  # noqa: E402
    architectures,
    build_model,
    pad_to_multiple,
    receptive_field,
    unpad,
)

SMALL = {
    "unet": {"widths": [8, 16, 24], "blocks": 1},
    "unet-fast": {"widths": [8, 16], "space_to_depth": 2, "downsample": "conv", "skip": "add",
                  "residual": True, "activation": "silu"},
    "cgrdn": {"features": 8, "growth": 4, "n_layers": 2, "n_rdb": 2, "n_grdb": 2},
    "dae": {"filters": 8},
}


def small(key):
    return build_model(key.split("-")[0], SMALL[key]).eval()


def test_registry_names():
    assert architectures() == ["cgrdn", "dae", "unet"]
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model("resnet")
    with pytest.raises(ConfigError, match="widths"):
        build_model("unet", {"widths": []})
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_model("unet", {"width": [8]})


@pytest.mark.parametrize("key", sorted(SMALL))
@pytest.mark.parametrize("shape", [(32, 32), (37, 45), (17, 64)])
def test_same_shape_out_for_any_size(key, shape):
    torch.manual_seed(0)
    model = small(key)
    x = torch.rand(2, 1, *shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("key", sorted(SMALL))
def test_batch_items_are_independent(key):
    """No layer mixes images of a batch (no batch norm): a batch gives each image's result."""
    torch.manual_seed(1)
    model = small(key)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_pad_to_multiple_round_trip():
    x = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 1, 5, 7)
    padded, pads = pad_to_multiple(x, 4)
    assert padded.shape[-2:] == (8, 8)
    assert torch.equal(unpad(padded, pads), x)
    same, pads = pad_to_multiple(x[..., :4, :4], 4)
    assert pads == (0, 0, 0, 0) and same.shape[-2:] == (4, 4)
    tiny, pads = pad_to_multiple(torch.ones(2, 3), 16)  # too small to reflect: replicate
    assert tiny.shape == (16, 16) and torch.equal(unpad(tiny, pads), torch.ones(2, 3))


def test_receptive_field_matches_the_layers():
    # Three 3x3 convs at full resolution: 7 px. Seed 000's autoencoder: 3x3 conv, pool, conv,
    # pool, conv | conv, up, conv, up, conv: grows with the pooled levels.
    plain = build_model("unet", {"widths": [4], "blocks": 2, "global_residual": True})
    # stem conv + 1 stage conv + head conv = three 3x3 convolutions
    assert receptive_field(plain) == 7
    dae = build_model("dae", {"filters": 4})
    assert 20 <= receptive_field(dae) <= 40
    deeper = build_model("unet", {"widths": [4, 4, 4], "blocks": 1})
    assert receptive_field(deeper) > receptive_field(build_model("unet", {"widths": [4, 4],
                                                                          "blocks": 1}))


def test_fresh_residual_networks_start_as_identity():
    x = torch.rand(1, 1, 32, 32)
    for key in ("unet", "unet-fast", "cgrdn"):
        with torch.no_grad():
            assert torch.equal(small(key)(x), x)


def test_describe_is_plain_data():
    d = small("unet").describe()
    assert d["architecture"] == "unet" and d["multiple_of"] == 4
    assert d["config"]["widths"] == (8, 16, 24) and d["parameters"] > 0
