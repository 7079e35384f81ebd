"""The U-Net's fixed blurred-input channels and starting a wider network from narrower weights."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from emrestore.errors import ConfigError
from emrestore.nn.blocks import build_model
from emrestore.nn.train import widen_input_layer
from emrestore.nn.unet import UNetConfig, gaussian_kernel_1d, separable_blur

SMALL = {"widths": [8, 16], "blocks": 1, "residual": True, "space_to_depth": 2,
         "downsample": "conv", "skip": "add", "activation": "silu"}


def test_separable_blur_matches_scipy_gaussian():
    rng = np.random.default_rng(0)
    img = rng.poisson(5.0, (40, 48)).astype(np.float32)
    for sigma in (0.7, 2.0, 4.0):
        got = separable_blur(torch.from_numpy(img)[None, None], gaussian_kernel_1d(sigma))[0, 0]
        want = ndimage.gaussian_filter(img.astype(float), sigma, mode="mirror", truncate=3.0)
        # interior: the same filter up to the kernel's normalisation after truncation
        r = int(np.ceil(3 * sigma))
        np.testing.assert_allclose(got.numpy()[r:-r, r:-r], want[r:-r, r:-r], rtol=2e-3)
        assert got.sum().item() == pytest.approx(img.sum(), rel=0.02)  # counts are kept
    tiny = torch.ones(1, 1, 5, 5)  # smaller than the kernel: clamped padding, still flat
    assert torch.allclose(separable_blur(tiny, gaussian_kernel_1d(4.0)), tiny, atol=1e-6)


def test_widened_network_starts_as_the_narrow_one():
    torch.manual_seed(0)
    narrow = build_model("unet", SMALL)
    for p in narrow.parameters():  # a trained-looking net, not the zero-initialised head
        p.data.normal_(0, 0.1)
    wide = build_model("unet", {**SMALL, "input_blurs": [1.0, 3.0]})
    assert wide.stem[0].weight.shape[1] == 3 * narrow.stem[0].weight.shape[1]
    wide.load_state_dict(widen_input_layer(narrow.state_dict(), wide), strict=True)
    x = torch.rand(2, 1, 32, 32) * 4
    with torch.no_grad():
        torch.testing.assert_close(wide._forward(x), narrow._forward(x))
    assert "blur_kernel_0" not in wide.state_dict()  # derived from the config, not stored
    with pytest.raises(ConfigError, match="input_blurs"):
        UNetConfig(input_blurs=(0.0,))
