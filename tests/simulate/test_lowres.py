import numpy as np
import pytest
from scipy import ndimage

from emrestore.errors import ConfigError, InputError
from emrestore.simulate.lowres import LOWRES_TYPES, LowResParams, render_lowres, voronoi_labels


def test_voronoi_labels_partition_the_image():
    rng = np.random.default_rng(0)
    shape = (64, 80)
    seeds = np.column_stack([rng.uniform(0, 63, 40), rng.uniform(0, 79, 40)])
    lab = voronoi_labels(seeds, shape)
    assert lab.shape == shape and lab.min() >= 0 and lab.max() < 40
    # every pixel belongs to (one of) its nearest seed(s)
    s = np.rint(seeds)
    yy, xx = np.indices(shape)
    d = np.hypot(yy[..., None] - s[:, 0], xx[..., None] - s[:, 1])
    own = np.take_along_axis(d, lab[..., None], axis=2)[..., 0]
    np.testing.assert_allclose(own, d.min(axis=2), atol=1e-9)
    # each cell is one connected region
    for k in np.unique(lab):
        assert ndimage.label(lab == k)[1] == 1


@pytest.mark.parametrize("kind", [t for t in LOWRES_TYPES if t != "cracks"])
def test_each_type_renders(kind):
    params = LowResParams(types=(kind,), type_probability=1.0)
    img, info = render_lowres(np.random.default_rng(1), (96, 128), params)
    assert img.shape == (96, 128) and img.dtype == np.float32
    assert np.all(np.isfinite(img)) and img.min() >= 0 and img.max() > 0
    assert info["types"] == [kind] and kind in info


def test_grains_fill_the_whole_field():
    params = LowResParams(types=("grains",), type_probability=1.0, grain_border_probability=0.0)
    img, info = render_lowres(np.random.default_rng(2), (128, 128), params)
    assert 15 <= info["grains"]["count"] <= 175
    assert img.min() > 0  # every pixel lies in some grain with a positive plane


def test_cracks_darken_and_subset_is_respected():
    base = LowResParams(types=("bands",), type_probability=1.0, band_width=(2.0, 2.0))
    cracked = LowResParams(types=("bands", "cracks"), type_probability=1.0,
                           band_width=(2.0, 2.0), crack_depth=(1.0, 1.0))
    a, _ = render_lowres(np.random.default_rng(3), (64, 64), base)
    b, info = render_lowres(np.random.default_rng(3), (64, 64), cracked)
    assert info["types"] == ["bands", "cracks"]
    assert np.all(b <= a + 1e-6) and (a - b).max() > 0.5 * a.max()


def test_same_seed_same_bytes_and_budget_types():
    for seed in range(5):
        a, ia = render_lowres(np.random.default_rng(seed), (64, 64))
        b, ib = render_lowres(np.random.default_rng(seed), (64, 64))
        assert a.tobytes() == b.tobytes() and ia == ib
        assert set(ia["types"]) <= set(LOWRES_TYPES) and set(ia["types"]) - {"cracks"}


def test_params_validation():
    with pytest.raises(ConfigError):
        LowResParams(types=("clouds",))
    with pytest.raises(ConfigError):
        LowResParams(types=("cracks",))
    with pytest.raises(InputError):
        render_lowres(np.random.default_rng(0), (1, 5))
