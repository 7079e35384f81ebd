"""The benchmark protocol on a tiny configuration: test set, workflows, scoring, user images."""

import dataclasses
import json

import numpy as np
import pytest

from emrestore.errors import ConfigError, InputError
from emrestore.evaluate import protocol as P

TINY = dict(materials=("Pt[001]",), doses_e_per_A2=(300.0, 20000.0), images_per_dose=1,
            size_px=96, thicknesses_A=(), thickness_images=1, multislice_images=0)
IDENTITY = '''
import numpy as np

def identity(image):
    return np.array(image, copy=True)

def wrong_shape(image):
    return image[:-1]

def not_finite(image):
    out = np.array(image, dtype=float)
    out[0, 0] = np.nan
    return out
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "myfilters.py"
    path.write_text(IDENTITY)
    return path


@pytest.fixture(scope="module")
def tiny(plugin):
    config = P.BenchmarkConfig(**TINY)
    result = P.run_benchmark(config, ["raw", "gaussian", f"{plugin}:identity"], progress=False)
    return config, result


def _row(result, workflow, dose):
    (row,) = [r for r in result.rows if r["workflow"] == workflow
              and r["dose_e_per_A2"] == dose]
    return row


# ------------------------------------------------------------------------------------------------
def test_material_names_and_zone_axes():
    assert P.parse_material("SrTiO3[001]") == ("SrTiO3", (0, 0, 1))
    assert P.parse_material("Si:110") == ("Si", (1, 1, 0))
    assert P.parse_material("Si") == ("Si", (1, 1, 0))  # the dumbbell axis by default
    assert P.parse_material("Pt [1 1 1]") == ("Pt", (1, 1, 1))
    assert P.parse_material("Au") == ("Au", (0, 0, 1))
    with pytest.raises(InputError):
        P.parse_material("Unobtainium[001]")
    with pytest.raises(InputError):
        P.parse_material("Si[000]")


def test_config_is_checked_and_quick_is_small():
    with pytest.raises(ConfigError):
        P.BenchmarkConfig(doses_e_per_A2=())
    with pytest.raises(ConfigError):
        P.BenchmarkConfig(doses_e_per_A2=(-5.0,))
    quick, full = P.BenchmarkConfig.quick(), P.BenchmarkConfig()
    assert len(quick.materials) == 1 and len(quick.doses_e_per_A2) == 3
    assert len(P.build_scenes(quick)) < len(P.build_scenes(full))


def test_sampler_settings_realistic_and_ideal():
    bench = P.BenchmarkConfig(**TINY)
    real = P.sampler_config("Pt", (0, 0, 1), 1000.0, 200.0, bench)
    assert real.stem.jitter_sigma_A[1] <= 0.3 and real.stem.drift_probability == 0.0
    assert real.stem.counting_probability == pytest.approx(0.25)  # the sampler's default
    assert real.detector_fraction == (0.10, 0.15)
    assert real.post.affine_probability == 0.0 and real.contrast.invert_probability == 0.0
    ideal = P.sampler_config("Pt", (0, 0, 1), 1000.0, 400.0, bench, ideal=True)
    assert ideal.stem.counting_probability == 1.0 and ideal.stem.jitter_probability == 0.0
    assert ideal.specimen.p_support == 0.0 and ideal.specimen.p_defects == 0.0
    # twice the dose series' thickness: twice the detector's share of the beam
    assert ideal.detector_fraction == pytest.approx((0.2, 0.3))


def test_a_scene_is_one_specimen_at_every_dose_and_is_reproducible():
    bench = P.BenchmarkConfig(**TINY)
    scene = P.build_scenes(bench)[0]
    a = P.simulate_scene(scene, bench)
    b = P.simulate_scene(scene, bench)
    assert [it.dose_e_per_A2 for it in a] == list(bench.doses_e_per_A2)
    assert np.array_equal(a[0].truth_px, a[1].truth_px) and len(a[0].truth_px) > 20
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.reference, y.reference)
    # the expected image scales with the dose (in electrons)
    e0 = (a[0].reference - a[0].offset) / a[0].gain
    e1 = (a[1].reference - a[1].offset) / a[1].gain
    ratio = bench.doses_e_per_A2[1] / bench.doses_e_per_A2[0]
    assert float(e1.sum() / e0.sum()) == pytest.approx(ratio, rel=1e-3)


def _grid(n=12, spacing=10.0, origin=15.0):
    yy, xx = np.mgrid[0:n, 0:n] * spacing + origin
    return np.column_stack([yy.ravel(), xx.ravel()])


def test_scores_count_hits_misses_and_false_columns():
    truth = _grid()
    shape = (140, 140)
    found = truth + np.array([0.3, 0.0])
    found = np.delete(found, [40, 41], axis=0)                       # two columns missed
    found = np.vstack([found, [[20.0, 20.0], [70.0, 70.0], [120.0, 20.0]]])  # three false ones
    s = P.score_positions(found, truth, shape, border_px=6)
    assert s["n_truth"] == 144 and s["n_matched"] == 142 and s["n_found"] == 145
    assert s["recall"] == pytest.approx(142 / 144)
    assert s["precision"] == pytest.approx(142 / 145)
    assert s["jaccard"] == pytest.approx(142 / (142 + 3 + 2))
    assert s["rmse_px"] == pytest.approx(0.3)
    assert s["radius_px"] == pytest.approx(2.5)
    # a found column just inside the border whose true column lies just outside is neither
    edge_truth = np.vstack([truth, [[5.0, 60.0]]])
    edge_found = np.vstack([truth, [[6.5, 60.0]]])
    s = P.score_positions(edge_found, edge_truth, shape, border_px=6)
    assert s["f1"] == 1.0 and s["n_found"] == 145 and s["n_truth"] == 144


def test_strain_error_matches_the_position_noise():
    truth = _grid(n=20, spacing=10.0, origin=10.0)
    rng = np.random.default_rng(0)
    sigma = 0.2
    found = truth + rng.normal(0, sigma, truth.shape)
    match = P.score_positions(found, truth, (220, 220), border_px=2)
    pairs = P._lattice_pairs(truth)
    sa, sb = P._strain_errors(found, match, truth, pairs)
    expected = 100 * np.sqrt(2) * sigma / 10.0  # std of a distance / spacing, in %
    assert sa == pytest.approx(expected, rel=0.2)
    assert sb == pytest.approx(expected, rel=0.2)


def test_workflows_resolve_skip_and_validate(plugin):
    flows, skipped = P.resolve_workflows(["raw", "median", "no-such-model", f"{plugin}:identity"])
    assert [w.name for w in flows] == ["raw", "median", f"{plugin}:identity"]
    assert skipped[0][0] == "no-such-model" and "shipped" in skipped[0][1]
    item = P.TestImage(name="x", image=np.ones((20, 20), np.float32), pixel_size_A=0.1,
                       truth_px=np.zeros((0, 2)))
    with pytest.raises(InputError, match="shape"):
        P.resolve_workflows([f"{plugin}:wrong_shape"])[0][0].apply(item.image, item)
    with pytest.raises(InputError, match="NaN"):
        P.resolve_workflows([f"{plugin}:not_finite"])[0][0].apply(item.image, item)
    with pytest.raises(InputError, match="no function"):
        P.resolve_workflows([f"{plugin}:missing"])
    with pytest.raises(InputError, match="cannot import"):
        P.resolve_workflows(["surely_not_a_module_xyz:f"])
    with pytest.raises(InputError, match="twice"):
        P.resolve_workflows(["raw", "raw"])
    with pytest.raises(InputError, match="tuned"):
        P.resolve_workflows(["gaussian"])


def test_default_workflows_are_restoration_models_only(tmp_path, monkeypatch):
    """An atom finder in the zoo is not a restoration workflow (it broke `make demo`)."""
    pytest.importorskip("torch")
    from emrestore.nn import zoo

    cards = {c["name"]: c for c in zoo.list_models()}
    if not {"stem-hr", "atoms-hr"} <= set(cards):
        pytest.skip("needs the shipped stem-hr and atoms-hr cards")
    for name, shipped in (("rest-a", "stem-hr"), ("atoms-a", "atoms-hr")):
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(cards[shipped], name=name)))
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
    monkeypatch.setattr(zoo, "weights_dir", lambda: tmp_path)
    assert P._shipped_models() == ["rest-a"]
    names = P.default_workflow_names(bm3d=False)
    assert "rest-a" in names and "atoms-a" not in names


def test_tiny_benchmark_physics(tiny):
    config, result = tiny
    low, high = config.doses_e_per_A2
    names = {r["workflow"] for r in result.rows}
    assert names == {"raw", "gaussian", f"{result.workflows[2].name}", P.REFERENCE}
    # more dose, more columns found in the raw image, and a smaller Poisson limit
    assert _row(result, "raw", high)["f1"] > _row(result, "raw", low)["f1"] + 0.3
    assert _row(result, "raw", high)["crlb_pm"] < _row(result, "raw", low)["crlb_pm"]
    # at low dose the (separately tuned) Gaussian filter beats the raw image on PSNR
    assert _row(result, "gaussian", low)["psnr_db"] > _row(result, "raw", low)["psnr_db"] + 3
    # the noise-free image: every column found, a few pm off at most
    ref = _row(result, P.REFERENCE, high)
    assert ref["f1"] > 0.95 and ref["rmse_pm"] < 5.0 and ref["scs_mape_pct"] < 10.0
    # σ tuned on other images: wider at the lower dose
    assert result.tuning["dose"][low] >= result.tuning["dose"][high]


def test_identity_plugin_scores_exactly_like_raw(tiny):
    _, result = tiny
    plug = result.workflows[2].name
    for dose in TINY["doses_e_per_A2"]:
        a, b = _row(result, "raw", dose), _row(result, plug, dose)
        for key in P.METRICS:
            if key == "seconds":
                continue
            assert a[key] == pytest.approx(b[key], nan_ok=True), key


def test_aggregate_groups_missing_values_together():
    rows = [dict(series="user", workflow="raw", dose_e_per_A2=float("nan"),
                 thickness_nm=float("nan"), material="", **{m: float(k) for m in P.METRICS})
            for k in range(3)]
    (agg,) = P.aggregate(rows)
    assert agg["n_images"] == 3 and agg["f1"] == pytest.approx(1.0)


def test_user_image_set(tiny, tmp_path):
    config, _ = tiny
    item = P.simulate_scene(P.build_scenes(config)[0], config)[0]
    np.save(tmp_path / "frame1.npy", item.image)
    np.save(tmp_path / "frame1.reference.npy", item.reference)
    lines = ["y_px,x_px,scs"] + [f"{y},{x},{s}" for (y, x), s in zip(item.truth_px,
                                                                      item.truth_scs)]
    (tmp_path / "frame1.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "frame1.json").write_text(json.dumps(
        {"dose_e_per_A2": item.dose_e_per_A2, "pixel_size_A": item.pixel_size_A,
         "gain": item.gain, "offset": item.offset}))
    result = P.run_benchmark(dataclasses.replace(config, doses_e_per_A2=(300.0,)),
                             ["raw", "gaussian"], images=tmp_path, progress=False)
    rows = {r["workflow"]: r for r in result.rows}
    assert set(rows) == {"raw", "gaussian", P.REFERENCE}
    assert all(r["series"] == "user" and r["image"] == "frame1" for r in rows.values())
    assert np.isfinite(rows["raw"]["psnr_db"]) and rows[P.REFERENCE]["f1"] > 0.95
    assert np.isfinite(rows["raw"]["crlb_pm"])
    # the same image scored as part of the simulated set gives the same raw numbers
    sim = next(r for r in tiny[1].rows if r["workflow"] == "raw"
           and r["dose_e_per_A2"] == item.dose_e_per_A2)
    assert rows["raw"]["f1"] == pytest.approx(sim["f1"])
    (tmp_path / "frame2.npy").write_bytes((tmp_path / "frame1.npy").read_bytes())
    with pytest.raises(InputError, match="position file"):
        P.load_user_images(tmp_path)
    (tmp_path / "frame2.csv").write_text("y_px,x_px\n10,10\n")
    with pytest.raises(InputError, match="pixel size"):
        P.load_user_images(tmp_path)
    assert len(P.load_user_images(tmp_path, pixel_size_A=0.1)) == 2


def test_parallel_workers_give_the_same_numbers(plugin):
    config = P.BenchmarkConfig(**{**TINY, "doses_e_per_A2": (2000.0,), "size_px": 80,
                                  "thicknesses_A": (100.0,)})
    names = ["raw", f"{plugin}:identity"]
    one = P.run_benchmark(config, names, progress=False, workers=1)
    two = P.run_benchmark(config, names, progress=False, workers=2)
    assert len(one.rows) == len(two.rows) == 2 * 3
    for a, b in zip(one.rows, two.rows):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], str):
                assert a[key] == b[key]
            elif key != "seconds":
                assert a[key] == pytest.approx(b[key], nan_ok=True), key
