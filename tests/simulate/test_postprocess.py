import json

import numpy as np
import pytest

from emrestore.errors import InputError
from emrestore.simulate import postprocess as pp
from emrestore.simulate.postprocess import Annotation, Postprocess, PostprocessParams


def _blobs(shape, centres, sigma=1.5):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    out = np.zeros(shape)
    for cy, cx in centres:
        out += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return out.astype(np.float32)


def _centroid(image, cy, cx, r=7):
    y0, x0 = int(np.rint(cy)) - r, int(np.rint(cx)) - r
    win = image[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1].astype(float)
    yy, xx = np.mgrid[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
    return np.array([(win * yy).sum() / win.sum(), (win * xx).sum() / win.sum()])


@pytest.mark.parametrize("affine", [(12.0, 1.05, 1.02, 0.03, 1.5, -2.0),
                                    (-14.0, 0.92, 0.98, -0.05, -2.7, 0.4),
                                    (0.0, 1.0, 1.0, 0.0, 0.37, -1.61)])
def test_affine_moves_peaks_to_transform_positions(affine):
    shape = (128, 128)
    centres = np.array([(64.0, 64.0), (30.3, 40.7), (95.2, 88.9), (40.0, 100.0)])
    post = Postprocess(shape=shape, affine=affine)
    image = _blobs(shape, centres)
    distorted, clean, matrix = pp.apply_postprocess(image, {"clean": image.copy()}, post)
    predicted = pp.transform_positions(centres, matrix)
    for p in predicted:
        np.testing.assert_allclose(_centroid(distorted, *p), p, atol=0.1)
        np.testing.assert_allclose(_centroid(clean["clean"], *p), p, atol=0.1)
    np.testing.assert_array_equal(distorted, clean["clean"])      # same warp, no blur


def test_affine_on_a_twice_finer_label_grid():
    post = Postprocess(shape=(64, 64), affine=(10.0, 1.05, 1.0, 0.02, 2.0, -1.0))
    fine_centre = np.array([[70.5, 60.5]])
    label = _blobs((128, 128), fine_centre, sigma=3.0)
    _, out, _ = pp.apply_postprocess(np.zeros((64, 64), np.float32), {"heat": label}, post,
                                     label_keys=["heat"])
    p = pp.transform_positions(fine_centre, pp.affine_matrix(post, scale=2))[0]
    np.testing.assert_allclose(_centroid(out["heat"], *p, r=10), p, atol=0.1)
    assert out["heat"].min() >= 0 and out["heat"].max() <= label.max() + 1e-6


def test_identity_warp_is_exact():
    img = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    np.testing.assert_array_equal(pp.warp_affine(img, np.eye(3)), img)


def test_annotations_and_crop_fill_are_identical_in_both_images():
    rng = np.random.default_rng(1)
    params = PostprocessParams().all_on()
    for _ in range(20):
        distorted = rng.normal(1000, 30, (96, 96)).astype(np.float32)
        clean = np.full((96, 96), 1000.0, dtype=np.float32)
        post = pp.draw_postprocess(rng, params, (96, 96))
        d_out, c_out, _ = pp.apply_postprocess(distorted, {"clean": clean}, post)
        fill, bright, dark = pp.postprocess_masks(post)
        marked = fill | bright | dark
        assert marked.any()
        np.testing.assert_array_equal(d_out[marked], c_out["clean"][marked])
        # Annotations take the extreme values of the recorded image.
        assert np.all(d_out[bright] == d_out.max()) and np.all(d_out[dark] == d_out.min())


def test_text_is_drawn_with_the_bitmap_font():
    post = Postprocess(shape=(40, 80), annotations=(Annotation("text", 5, 5, text="10 nm",
                                                               scale=2),))
    _, bright, dark = pp.postprocess_masks(post)
    assert not dark.any()
    ys, xs = np.nonzero(bright)
    assert ys.min() == 5 and ys.max() == 5 + 14 - 1          # 7 font rows × 2 px
    assert xs.min() >= 5 and xs.max() < 5 + 5 * 12          # 5 glyphs 5+1 px wide × 2


def test_crop_regions_spare_the_central_half():
    rng = np.random.default_rng(2)
    p = PostprocessParams(crop_probability=1.0, affine_probability=0.0,
                          annotation_probability=0.0)
    for _ in range(50):
        post = pp.draw_postprocess(rng, p, (100, 100))
        fill, _, _ = pp.postprocess_masks(post)
        assert fill.any()
        assert not fill[40:60, 40:60].any()
        assert fill.mean() <= 0.5 + 1e-9


def test_blur_only_touches_the_distorted_image():
    img = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    post = Postprocess(shape=(64, 64), blur_sigma_px=0.9)
    d_out, c_out, matrix = pp.apply_postprocess(img, {"clean": img}, post)
    np.testing.assert_array_equal(c_out["clean"], img)
    assert d_out.std() < 0.7 * img.std()
    np.testing.assert_array_equal(matrix, np.eye(3))


def test_display_export_is_quantised_and_shared_with_the_clean_image():
    img = np.random.default_rng(4).normal(33000, 200, (64, 64)).astype(np.float32)
    post = Postprocess(shape=(64, 64), display=(0.5, 99.5, 8))
    d_out, c_out, _ = pp.apply_postprocess(img, {"clean": img}, post)
    assert d_out.min() >= 0 and d_out.max() <= 255 and np.all(d_out == np.round(d_out))
    np.testing.assert_array_equal(d_out, np.clip(np.rint(c_out["clean"]), 0, 255))


def test_labels_follow_geometry_only():
    img = np.random.default_rng(5).random((64, 64)).astype(np.float32)
    mask = np.zeros((64, 64), dtype=bool)
    mask[30:34, 30:34] = True
    post = Postprocess(shape=(64, 64), affine=(0.0, 1.0, 1.0, 0.0, 3.0, -2.0),
                       fill_regions=(((-0.5, -0.5), (-0.5, 63.5), (10, 63.5), (10, -0.5)),),
                       annotations=(Annotation("circle", 32, 32, size=6, width=2),))
    _, out, _ = pp.apply_postprocess(img, {"atoms": mask}, post)
    assert out["atoms"].dtype == bool
    np.testing.assert_array_equal(np.argwhere(out["atoms"]), np.add(np.argwhere(mask), (3, -2)))
    fill, _, _ = pp.postprocess_masks(post)
    assert not out["atoms"][fill].any()


def test_same_seed_same_bytes_and_record_is_json():
    img = np.random.default_rng(6).random((80, 80)).astype(np.float32)
    results = []
    for _ in range(2):
        rng = np.random.default_rng(99)
        post = pp.draw_postprocess(rng, PostprocessParams().all_on(), (80, 80))
        d_out, c_out, _ = pp.apply_postprocess(img, {"clean": img * 2}, post)
        results.append(d_out.tobytes() + c_out["clean"].tobytes())
        json.dumps(post.to_dict())
    assert results[0] == results[1]


def test_bad_input_raises():
    post = Postprocess(shape=(32, 32))
    bad = np.zeros((32, 32), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(InputError):
        pp.apply_postprocess(bad, {}, post)
    with pytest.raises(InputError):
        pp.apply_postprocess(np.zeros((32, 32)), {"clean": bad}, post)
    with pytest.raises(InputError):
        pp.apply_postprocess(np.zeros((32, 32)), {"clean": np.zeros((48, 48))}, post)
    with pytest.raises(InputError):
        pp.apply_postprocess(np.zeros((16, 32)), {}, post)
