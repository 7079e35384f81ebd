"""The shipped atom finder (``atoms-hr``): loads without pickle, is what ``find_atoms`` uses by
default, and finds the columns of simulated frames it has never seen."""

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")

from emrestore.atoms.find import atom_model_available, find_atoms  # noqa: E402
from emrestore.nn.atomnet_train import (  # noqa: E402
    column_spacing_px,
    detection_counts,
    recorded_positions,
    visible_columns,
)
from emrestore.nn.zoo import list_models, weights_dir  # noqa: E402

pytestmark = pytest.mark.skipif(not atom_model_available("atoms-hr"),
                                reason="the zoo has no atoms-hr model")


def frame(material, zone, dose, seed, pixel=0.12):
    """A 192² HR-STEM frame with the detector and scan distortions of the sampler, and its
    visible columns where they show in the recorded image."""
    from emrestore.simulate.dose import DoseParams
    from emrestore.simulate.postprocess import PostprocessParams
    from emrestore.simulate.sampler import SamplerConfig, aligned_crystal, simulate_pair

    cfg = SamplerConfig(size=(192, 192), hr_pixel_size_A=(pixel, pixel),
                        hr_dose=DoseParams(dose_e_per_A2=(dose, dose)),
                        detector_fraction=(0.15, 0.15), super_resolution_label=False)
    cfg = aligned_crystal(cfg, material, zone, mistilt_std_deg=0.2)
    cfg = dataclasses.replace(
        cfg, probe=dataclasses.replace(cfg.probe, corrected_probability=1.0),
        specimen=dataclasses.replace(cfg.specimen, p_support=0.0, p_defects=0.0),
        post=PostprocessParams(affine_probability=0.0, blur_probability=0.0,
                               display_probability=0.0, crop_probability=0.0,
                               annotation_probability=0.0),
        contrast=dataclasses.replace(cfg.contrast, invert_probability=0.0,
                                     power_probability=0.0))
    image, _, labels = simulate_pair(config=cfg, rng=seed)
    cols = labels["columns"]
    vis = visible_columns(cols["position_px"], cols["species"], cols["atom_count"], pixel)
    pos = recorded_positions(cols)
    return image, pos[vis], pos[~vis], column_spacing_px(cols["position_px"][vis])


def f1(pred, truth, hidden, spacing, shape):
    r = 0.25 * spacing
    tp, fp, fn = detection_counts(pred, truth, r, ignore=hidden, shape=shape, border_px=r)[:3]
    return 2 * tp / max(2 * tp + fp + fn, 1)


def test_card_and_weights_load_without_pickle():
    card = next(c for c in list_models(task="atoms") if c["name"] == "atoms-hr")
    assert card["task"] == "atoms" and card["input"] in ("raw", "restored", "both")
    assert 0.0 < card["decode"]["threshold"] < 1.0
    raw = (weights_dir() / "atoms-hr.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])  # safetensors: a JSON header, then raw tensors
    assert header["__metadata__"]["task"] == "atoms"


@pytest.mark.parametrize("material, zone, dose, seed", [
    ("SrTiO3", (0, 0, 1), 5000.0, 3),
    ("Au", (0, 0, 1), 2000.0, 4),
    ("Pt", (0, 1, 1), 2000.0, 2),
])
def test_auto_uses_the_network_and_beats_tuned_local_maxima(material, zone, dose, seed):
    image, truth, hidden, spacing = frame(material, zone, dose, seed)
    table = find_atoms(image, pixel_size=0.12, restore=False, refine=False)
    assert table.info["detection"]["method"] == "network"
    net = f1(table.positions_px, truth, hidden, spacing, image.shape)
    from emrestore.atoms.detect import find_candidates

    peaks = max(f1(find_candidates(image, method="peaks", threshold=t,
                                   min_separation_px=k * spacing, spacing_px=spacing),
                   truth, hidden, spacing, image.shape)
                for t in (0.1, 0.2, 0.35) for k in (0.4, 0.6))
    assert net >= 0.85, net
    assert net >= peaks - 0.02, (net, peaks)
