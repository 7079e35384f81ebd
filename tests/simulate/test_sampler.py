"""The sampler end to end: determinism, units, labels that match the images, configs."""

import dataclasses

import numpy as np
import pytest

from emrestore.errors import ConfigError
from emrestore.simulate.dose import DoseParams
from emrestore.simulate.sampler import SamplerConfig, all_distortions_on, simulate_pair


def _quiet(config: SamplerConfig) -> SamplerConfig:
    """No distortion but counting shot noise, so label geometry can be checked exactly."""
    from emrestore.simulate.gallery import gallery_config

    return gallery_config(config.modality, config.size)


@pytest.mark.parametrize("modality", ["stem", "tem", "sem"])
@pytest.mark.parametrize("resolution", ["hr", "lr"])
def test_same_seed_same_bytes(modality, resolution):
    a = simulate_pair(modality, resolution, (64, 64), rng=11)
    b = simulate_pair(modality, resolution, (64, 64), rng=11)
    assert a[0].dtype == np.float32 and a[1].dtype == np.float32
    assert a[0].tobytes() == b[0].tobytes()
    assert a[1].tobytes() == b[1].tobytes()
    assert a[2]["params"] == b[2]["params"]
    c = simulate_pair(modality, resolution, (64, 64), rng=12)
    assert a[0].tobytes() != c[0].tobytes()


def test_clean_is_expected_value_of_distorted():
    """With counting shot noise only, the clean image is the Poisson mean of the input."""
    config = dataclasses.replace(_quiet(SamplerConfig()), size=(128, 128))
    diffs, means = [], []
    for seed in range(6):
        distorted, clean, _ = simulate_pair(config=config, rng=seed)
        diffs.append((distorted - clean).mean())
        means.append(clean.mean())
        # Poisson: variance of the residual equals the mean count
        resid = distorted - clean
        assert resid.var() == pytest.approx(clean.mean(), rel=0.1)
    assert abs(np.mean(diffs)) < 0.02 * np.mean(means)


def test_dose_sets_counts_in_physical_units():
    """Mean counts = mean fractional intensity × dose (e⁻/Å²) × pixel area (Å²)."""
    base = dataclasses.replace(_quiet(SamplerConfig()), size=(96, 96))
    low = simulate_pair(config=base, rng=3)
    high = simulate_pair(config=dataclasses.replace(
        base, hr_dose=DoseParams(dose_e_per_A2=(12000.0, 12000.0))), rng=3)
    ratio = high[1].mean() / low[1].mean()
    assert ratio == pytest.approx(12000.0 / base.hr_dose.dose_e_per_A2[0], rel=1e-4)
    lab = low[2]
    peak = lab["detector_fraction"] * lab["dose_e_per_A2"] * lab["pixel_size_A"] ** 2
    assert low[1].max() <= peak * (1 + 1e-4)


def test_column_labels_sit_on_clean_maxima():
    """Isolated columns: each label position is the local maximum of the no-background image."""
    base = _quiet(SamplerConfig())
    # isolated atoms ("individual points" specimens), no support, no contrast inversion
    specimen = dataclasses.replace(base.specimen, p_crystal=0.0, p_amorphous=0.0, p_points=1.0,
                                   p_support=0.0, n_points=(25, 25), p_defects=0.0)
    contrast = dataclasses.replace(base.contrast, invert_probability=0.0, power_probability=0.0)
    # 0.3 Å pixels: the probe (FWHM ~1 Å) spans a few pixels, so 12 px isolate an atom
    config = dataclasses.replace(base, size=(128, 128), material=None, specimen=specimen,
                                 contrast=contrast, hr_pixel_size_A=(0.3, 0.3))
    _, _, labels = simulate_pair(config=config, rng=5)
    image = labels["clean_no_background"].astype(np.float64)
    image -= image.min() - 1e-9 * image.max()
    pos = labels["columns"]["position_px"]
    assert len(pos) > 5
    # isolated: no other atom within 12 px in projection, and away from the border
    from scipy.spatial import cKDTree

    nearest = cKDTree(pos).query(pos, k=2)[0][:, 1]
    isolated = (nearest > 12) & np.all((pos > 6) & (pos < 121), axis=1)
    errors = []
    for y, x in pos[isolated]:
        r, c = round(y), round(x)
        win = np.log(image[r - 1:r + 2, c - 1:c + 2])
        assert win.argmax() == 4, "the label is not at the local maximum"
        # sub-pixel peak: parabola through the log of the 3x3 neighbourhood
        dy = 0.5 * (win[0, 1] - win[2, 1]) / (win[0, 1] - 2 * win[1, 1] + win[2, 1])
        dx = 0.5 * (win[1, 0] - win[1, 2]) / (win[1, 0] - 2 * win[1, 1] + win[1, 2])
        errors.append(np.hypot(r + dy - y, c + dx - x))
    assert len(errors) >= 5
    assert np.max(errors) < 0.1


def test_super_resolved_label_preserves_integrated_intensity():
    config = dataclasses.replace(_quiet(SamplerConfig()), size=(64, 64),
                                 super_resolution_label=True)
    _, _, labels = simulate_pair(config=config, rng=2)
    fine, coarse = labels["clean_2x"], labels["clean_no_background"]
    assert fine.shape == (128, 128)
    assert fine.sum() == pytest.approx(coarse.sum(), rel=0.02)


def test_all_distortions_on_runs_and_records_everything():
    config = all_distortions_on(SamplerConfig(size=(96, 96)))
    distorted, clean, labels = simulate_pair(config=config, rng=1)
    assert np.isfinite(distorted).all() and np.isfinite(clean).all()
    detector = labels["params"]["detector"]
    assert detector["detector"] == "analog" and detector["jitter_kind"] == "xy"
    assert labels["params"]["postprocess"]["affine"] is not None


def test_config_round_trip_and_errors(tmp_path):
    config = SamplerConfig(modality="tem", size=(128, 96))
    assert SamplerConfig.from_dict(config.to_dict()) == config
    toml = tmp_path / "sim.toml"
    toml.write_text('modality = "sem"\nsize = [64, 80]\n[hr_dose]\ndose_e_per_A2 = [200.0, 400.0]\n'
                    '[stem]\njitter_probability = 0.5\n')
    loaded = SamplerConfig.from_toml(toml)
    assert loaded.modality == "sem" and loaded.size == (64, 80)
    assert loaded.hr_dose.dose_e_per_A2 == (200.0, 400.0)
    assert loaded.stem.jitter_probability == 0.5
    toml.write_text("[stem]\njiter_probability = 0.5\n")
    with pytest.raises(ConfigError, match="jiter_probability"):
        SamplerConfig.from_toml(toml)
    with pytest.raises(ConfigError):
        SamplerConfig(modality="xray")


def _isolated_atoms(pixel_A: float, dose: float, **stem_overrides) -> SamplerConfig:
    """25 isolated atoms on a 128² STEM frame, no other distortion than ``stem_overrides``."""
    base = SamplerConfig()
    specimen = dataclasses.replace(base.specimen, p_crystal=0.0, p_amorphous=0.0, p_points=1.0,
                                   p_support=0.0, n_points=(25, 25), p_defects=0.0)
    contrast = dataclasses.replace(base.contrast, invert_probability=0.0, power_probability=0.0)
    stem = dataclasses.replace(_quiet(base).stem, **stem_overrides)
    return dataclasses.replace(
        _quiet(base), size=(128, 128), material=None, specimen=specimen, contrast=contrast,
        hr_pixel_size_A=(pixel_A, pixel_A), hr_dose=DoseParams(dose_e_per_A2=(dose, dose)),
        stem=stem)


def test_recorded_positions_follow_the_scan_distortion():
    """Isolated atoms scanned with a strong drift and some line jitter: each column shows in the
    recorded image at ``position_recorded_px``, not at its physical ``position_px``."""
    config = _isolated_atoms(0.3, 1e6, jitter_probability=1.0,
                             jitter_kind_probabilities=(0.0, 0.0, 1.0), jitter_sigma_A=(0.05, 0.05),
                             drift_probability=1.0, drift_px_per_line=(0.04, 0.04))
    image, _, labels = simulate_pair(config=config, rng=5)
    cols = labels["columns"]
    physical, recorded = cols["position_px"], cols["position_recorded_px"]
    assert recorded.shape == physical.shape
    moved = np.linalg.norm(recorded - physical, axis=1)
    assert np.median(moved) > 0.5  # the distortion really moves the columns
    from scipy.spatial import cKDTree

    nearest = cKDTree(physical).query(physical, k=2)[0][:, 1]
    ok = (nearest > 12) & np.all((recorded > 6) & (recorded < 121), axis=1)
    assert ok.sum() >= 5
    im = image.astype(np.float64) - np.median(image)
    err_recorded, err_physical = [], []
    for (y, x), (py, px) in zip(recorded[ok], physical[ok]):
        r, c = round(y), round(x)
        win = np.clip(im[r - 4:r + 5, c - 4:c + 5], 0, None)
        yy, xx = np.mgrid[r - 4:r + 5, c - 4:c + 5]
        cy, cx = (win * yy).sum() / win.sum(), (win * xx).sum() / win.sum()
        err_recorded.append(np.hypot(cy - y, cx - x))
        err_physical.append(np.hypot(cy - py, cx - px))
    assert np.median(err_recorded) < 0.5, (err_recorded, err_physical)
    assert np.median(err_recorded) < 0.5 * np.median(err_physical)


def test_recorded_positions_follow_the_detector_memory():
    """A slow analog detector (long fast-scan tail), no scan jitter: every column peaks to the right
    of its physical position, at ``position_recorded_px``."""
    from scipy.interpolate import RectBivariateSpline
    from scipy.spatial import cKDTree

    config = _isolated_atoms(0.2, 1e7, counting_probability=0.0, fast_scan_probability=1.0,
                             fast_scan_alpha=(6.0, 6.0), fast_scan_decay_px=(1.5, 1.5),
                             fast_scan_phase_rad=(0.5 * np.pi, 0.5 * np.pi))
    image, _, labels = simulate_pair(config=config, rng=6)
    cols = labels["columns"]
    physical, recorded = cols["position_px"], cols["position_recorded_px"]
    nearest = cKDTree(physical).query(physical, k=2)[0][:, 1]
    ok = (nearest > 14) & np.all((recorded > 8) & (recorded < 119), axis=1)
    assert ok.sum() >= 5
    shift = recorded[ok, 1] - physical[ok, 1]
    assert np.allclose(recorded[ok, 0], physical[ok, 0], atol=0.01) and np.ptp(shift) < 0.01
    assert shift[0] > 1.0
    spline = RectBivariateSpline(np.arange(128), np.arange(128), image.astype(np.float64))
    found = []
    for y, x in recorded[ok]:  # the recorded peak, on a 0.05 px grid around the label
        xs = np.arange(x - 3, x + 3, 0.05)
        found.append(xs[np.argmax(spline(y, xs)[0])])
    err_recorded = np.abs(np.array(found) - recorded[ok, 1])
    err_physical = np.abs(np.array(found) - physical[ok, 1])
    assert np.median(err_recorded) < 0.2 < shift[0] - 0.2 < np.median(err_physical)
