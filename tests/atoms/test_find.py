"""find_atoms: peaks on a simulated lattice, the network path, the two overrides, fallbacks and
clear errors."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emrestore.atoms.find import atom_model_available, find_atoms  # noqa: E402
from emrestore.errors import InputError  # noqa: E402
from emrestore.image import Image  # noqa: E402
from emrestore.nn.atomnet import AtomNet, AtomNetConfig  # noqa: E402
from emrestore.nn.atomnet_train import detection_counts, visible_columns  # noqa: E402


@pytest.fixture(autouse=True)
def no_shipped_models(tmp_path, monkeypatch):
    """Run as if nothing were shipped (the zoo folder is empty)."""
    from emrestore.nn import zoo

    empty = tmp_path / "zoo"
    empty.mkdir()
    monkeypatch.setattr(zoo, "weights_dir", lambda: empty)


@pytest.fixture(scope="module")
def gold():
    """A simulated HR-STEM image of Au [001] at 2 000 e⁻/Å², 0.12 Å pixels, 15 % of the beam
    on the detector (a HAADF detector's typical share, seed 000)."""
    from emrestore.simulate.dose import DoseParams
    from emrestore.simulate.postprocess import PostprocessParams
    from emrestore.simulate.sampler import SamplerConfig, aligned_crystal, simulate_pair

    cfg = SamplerConfig(size=(160, 160), hr_pixel_size_A=(0.12, 0.12),
                        hr_dose=DoseParams(dose_e_per_A2=(2000.0, 2000.0)),
                        detector_fraction=(0.15, 0.15), super_resolution_label=False)
    cfg = aligned_crystal(cfg, "Au", (0, 0, 1), mistilt_std_deg=0.2)
    cfg = dataclasses.replace(
        cfg, post=PostprocessParams(affine_probability=0.0, blur_probability=0.0,
                                    display_probability=0.0, crop_probability=0.0,
                                    annotation_probability=0.0),
        contrast=dataclasses.replace(cfg.contrast, invert_probability=0.0,
                                     power_probability=0.0))
    image, _, labels = simulate_pair(config=cfg, rng=5)
    cols = labels["columns"]
    vis = visible_columns(cols["position_px"], cols["species"], cols["atom_count"], 0.12)
    return image, cols["position_px"][vis], cols["position_px"][~vis]


def recall(table, truth, hidden, shape, radius):
    tp, _fp, fn = detection_counts(table.positions_px, truth, radius, ignore=hidden,
                                   shape=shape, border_px=radius)
    return tp / max(tp + fn, 1)


def test_peaks_find_the_columns_of_a_simulated_lattice(gold):
    image, truth, hidden = gold
    table = find_atoms(image, pixel_size=0.12, method="peaks")
    spacing = 2.04 / 0.12  # Au [001]: a / 2
    assert recall(table, truth, hidden, image.shape, 0.25 * spacing) >= 0.95
    assert table.info["detection"]["method"] == "peaks"
    assert np.isfinite(table.x_A).all() and np.allclose(table.x_A, 0.12 * table.x_px)
    assert np.all((table.positions_px >= -0.5) & (table.positions_px <= 159.5))


def test_auto_without_shipped_models_falls_back_with_notes(gold):
    image, _, _ = gold
    assert not atom_model_available("atoms-hr")
    table = find_atoms(Image(image, pixel_size_A=0.12), refine=False)
    notes = " ".join(table.info["notes"])
    assert "no atom-finder model" in notes and "restoration skipped" in notes
    assert table.info["detection"]["method"] == "peaks" and table.pixel_size_A == 0.12
    assert np.allclose(table.x_A, table.x_px * 0.12)


def test_threshold_and_min_separation_overrides(gold):
    image, _, _ = gold
    base = find_atoms(image, method="peaks", refine=False)
    strict = find_atoms(image, method="peaks", refine=False, threshold=0.6)
    assert 0 < len(strict) < len(base)
    sep = find_atoms(image, method="peaks", refine=False, min_separation_px=20.0)
    p = sep.positions_px
    d = np.linalg.norm(p[:, None] - p[None], axis=2) + 1e9 * np.eye(len(p))
    assert len(sep) < len(base) and d.min() >= 20.0


class BrightIsColumn(AtomNet):
    """A stand-in for a trained network: confidence from the normalised image itself, spacing
    from the input size (the test image's spacing is known)."""

    def __init__(self, spacing_px, width_px):
        super().__init__(AtomNetConfig(widths=(8, 16), spacing_hidden=4))
        self.spacing, self.width = spacing_px, width_px

    def forward(self, x):
        s = self.spacing * x.shape[-1] / self.width
        return 12.0 * (x / x.amax() - 0.5), torch.full((x.shape[0],), float(
            np.log(s / self.config.canonical_spacing_px)))


def median_nn(points):
    d = np.linalg.norm(points[:, None] - points[None], axis=2) + 1e9 * np.eye(len(points))
    return float(np.median(d.min(axis=1)))


def synthetic_lattice(spacing=14.0, size=128, seed=0):
    rng = np.random.default_rng(seed)
    g = np.arange(1, size // spacing) * spacing + 3.3
    truth = np.array([(y, x) for y in g for x in g]) + rng.normal(0, 0.5, (len(g) ** 2, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    clean = 2.0 + sum(60 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 2.0**2))
                      for y, x in truth)
    return rng.poisson(clean).astype(np.float32), truth


def test_network_path_and_its_overrides():
    image, truth = synthetic_lattice()
    net = BrightIsColumn(14.0, image.shape[1])
    table = find_atoms(image, method="network", model=net, pixel_size=0.2)
    det = table.info["detection"]
    # the spacing is the columns' median nearest-neighbour distance (13.5 px: they sit 0.5 px
    # off a 14 px grid), as found from the detections
    assert det["method"] == "network"
    assert det["spacing_px"] == pytest.approx(median_nn(truth), rel=0.02)
    _tp, fp, fn = detection_counts(table.positions_px, truth, 3.5)
    assert fn == 0 and fp == 0
    err = np.linalg.norm(table.positions_px[:, None] - truth[None], axis=2).min(axis=1)
    assert np.median(err) < 0.3  # refined on the raw image
    otsu = find_atoms(image, method="network", model=net, decode="otsu", refine=False)
    assert len(otsu) == len(truth)
    few = find_atoms(image, method="network", model=net, refine=False, threshold=0.99)
    assert len(few) < len(truth)
    sparse = find_atoms(image, method="network", model=net, refine=False, min_separation_px=20)
    p = sparse.positions_px
    d = np.linalg.norm(p[:, None] - p[None], axis=2) + 1e9 * np.eye(len(p))
    assert d.min() >= 20.0 * 0.99


def test_relative_threshold_from_the_card_or_the_caller():
    """A column far weaker than the image's others (a vacancy the network half fills) goes
    with the card's relative threshold; 0 keeps it; a value outside 0-1 is an error."""
    image, truth = synthetic_lattice()
    weak = truth[len(truth) // 2]
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    image = image - 45.0 * np.exp(-((yy - weak[0]) ** 2 + (xx - weak[1]) ** 2) / 8.0)
    net = BrightIsColumn(14.0, image.shape[1])
    card = {"decode": {"threshold": 0.05, "relative_threshold": 0.6}}
    kept = find_atoms(image, method="network", model=(net, {"decode": {"threshold": 0.05}}),
                      refine=False)
    dropped = find_atoms(image, method="network", model=(net, card), refine=False)
    off = find_atoms(image, method="network", model=(net, card), refine=False,
                     relative_threshold=0.0)
    assert len(kept) == len(off) == len(truth) and len(dropped) == len(truth) - 1
    d = np.linalg.norm(dropped.positions_px - weak, axis=1)
    assert d.min() > 7.0  # the weak column is the one that went
    assert dropped.info["detection"]["relative_threshold"] == 0.6
    for method in ("network", "peaks"):  # an error whichever method would use it
        with pytest.raises(InputError, match="relative_threshold"):
            find_atoms(image, method=method, model=net, relative_threshold=1.5)


def test_spacing_comes_from_the_detections_when_the_head_is_wrong():
    """A spacing head that says half the true spacing (as the trained one does on SrTiO3 [001])
    shrinks the NMS boxes; the detections' own nearest-neighbour distance puts it right."""
    from emrestore.nn.atomnet import detect_columns

    image, truth = synthetic_lattice()
    net = BrightIsColumn(7.0, image.shape[1])
    _, _, head = detect_columns(net, image, spacing_from="head")
    pos, _, info = detect_columns(net, image)
    assert head["spacing_px"] == pytest.approx(7.0, rel=0.05)
    assert info["spacing_px"] == pytest.approx(median_nn(truth), rel=0.02)
    _tp, fp, fn = detection_counts(pos, truth, 3.5)
    assert fn == 0 and fp == 0
    with pytest.raises(InputError, match="spacing_from"):
        detect_columns(net, image, spacing_from="guess")


def test_flat_image_gives_an_empty_table():
    table = find_atoms(np.full((64, 64), 5.0), method="peaks")
    assert len(table) == 0 and "no atomic columns found" in table.info["notes"]


def test_clear_errors():
    image, _ = synthetic_lattice(size=64)
    with pytest.raises(InputError, match="NaN"):
        find_atoms(np.full((32, 32), np.nan))
    with pytest.raises(InputError, match="2-D"):
        find_atoms(np.zeros(100))
    with pytest.raises(InputError, match="2-D"):
        find_atoms(np.zeros((3, 32, 32)))
    with pytest.raises(InputError, match="method"):
        find_atoms(image, method="hough")
    with pytest.raises(InputError, match="threshold"):
        find_atoms(image, threshold=2.0)
    with pytest.raises(InputError, match="min_separation_px"):
        find_atoms(image, min_separation_px=-1)
    with pytest.raises(InputError, match="pixel size"):
        find_atoms(image, pixel_size=-0.1)
    with pytest.raises(InputError, match="no model named"):
        find_atoms(image, method="network")
    with pytest.raises(InputError, match="decode"):
        find_atoms(image, decode="watershed")
