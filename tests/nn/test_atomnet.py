"""Atom-finder network: shapes, decoding, scale handling, labels, training, export and the zoo."""

import csv
import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emrestore.errors import ConfigError, InputError  # noqa: E402
from emrestore.nn import zoo  # noqa: E402
from emrestore.nn.atomnet import (  # noqa: E402
    AtomNet,
    AtomNetConfig,
    build_atomnet,
    decode_nms,
    decode_otsu,
    detect_columns,
    from_resampled,
    resample,
    to_resampled,
)
from emrestore.nn.atomnet_train import (  # noqa: E402
    AtomStream,
    AtomTrainConfig,
    SyntheticAtoms,
    atom_loss,
    detection_counts,
    export_atomnet,
    make_atom_example,
    scene_targets,
    train_atomnet_from_config,
    visible_columns,
)

TINY_NET = {"widths": [8, 16, 16], "space_to_depth": 2, "spacing_hidden": 8}


def lattice(shape, spacing, rng, jitter=0.0):
    h, w = shape
    g = np.arange(-2, max(h, w) // int(spacing) + 3) * spacing
    yy, xx = np.meshgrid(g, g, indexing="ij")
    pts = np.column_stack([yy.ravel(), xx.ravel()]) + rng.uniform(0, spacing, 2)
    pts = pts + rng.uniform(-jitter, jitter, pts.shape)
    return pts[np.all((pts >= 2) & (pts <= np.array([h, w]) - 3), axis=1)]


def gaussians(shape, pts, sigma, amp=None):
    h, w = shape
    amp = np.ones(len(pts)) if amp is None else amp
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros(shape)
    for (y, x), a in zip(pts, amp):
        out = np.maximum(out, a * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)))
    return out


class PerfectNet(AtomNet):
    """A stand-in for a trained network on noiseless lattices: the confidence rises with the
    normalised image, and the spacing head reports the true spacing at whatever scale it sees
    (known from the input's size relative to the original image)."""

    def __init__(self, spacing_px, image):
        from emrestore.nn.normalise import normalise

        super().__init__(AtomNetConfig(**{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in TINY_NET.items()}))
        self.spacing, self.shape = spacing_px, image.shape
        self.peak = float(normalise(image.astype(np.float32))[0].max())
        self.says_canonical = False  # for tiles, whose size says nothing about the scale

    def forward(self, x):
        k = x.shape[-1] / self.shape[1]
        s = self.config.canonical_spacing_px if self.says_canonical else self.spacing * k
        logits = 30.0 * (x[:, :1] / self.peak - 0.5)  # pixel by pixel
        log_s = torch.full((x.shape[0],), float(np.log(s / self.config.canonical_spacing_px)))
        return logits, log_s


def test_shapes_for_any_size_and_channels():
    torch.manual_seed(0)
    net = build_atomnet(TINY_NET)
    for h, w in ((40, 52), (64, 64), (17, 33)):
        logits, log_s = net(torch.randn(2, 1, h, w))
        assert logits.shape == (2, 1, h, w) and log_s.shape == (2,)
    conf, spacing = net.predict(torch.rand(1, 1, 48, 48))
    assert float(conf.min()) >= 0 and float(conf.max()) <= 1
    # a fresh network says "no column" (0.05) at the canonical spacing
    assert float(conf.mean()) == pytest.approx(1 / (1 + np.exp(3)), abs=1e-6)
    assert float(spacing[0]) == pytest.approx(net.config.canonical_spacing_px)
    two = build_atomnet({**TINY_NET, "in_channels": 2})
    assert two(torch.randn(1, 2, 32, 32))[0].shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"channel|tensor"):
        two(torch.randn(1, 1, 32, 32))


def test_config_is_checked():
    with pytest.raises(ConfigError, match="canonical_spacing_px"):
        AtomNetConfig(canonical_spacing_px=1.0)
    with pytest.raises(ConfigError, match="in_channels"):
        AtomNetConfig(in_channels=3)
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_atomnet({"depth": 3})


def test_nms_recovers_known_positions_exactly():
    rng = np.random.default_rng(1)
    truth = lattice((96, 96), 8.0, rng, jitter=1.0)
    conf = gaussians((96, 96), truth, 1.2)
    pos, score = decode_nms(conf, 8.0, threshold=0.3)
    assert len(pos) == len(truth)
    d = np.linalg.norm(pos[:, None] - truth[None], axis=2).min(axis=1)
    assert d.max() < 1e-6  # log-parabola: exact for a Gaussian blob
    assert np.all(np.diff(score) <= 0)
    # integer positions without sub-pixel refinement come back as they are
    grid = np.round(truth)
    pos, _ = decode_nms(gaussians((96, 96), grid, 1.2), 8.0, subpixel=False)
    assert sorted(map(tuple, pos)) == sorted(map(tuple, grid))


def test_nms_box_suppression_threshold_and_min_separation():
    pts = np.array([[20.0, 20.0], [20.0, 23.0], [20.0, 40.0], [50.0, 50.0]])
    amp = np.array([1.0, 0.8, 0.9, 0.25])
    conf = gaussians((72, 72), pts, 1.0, amp)
    pos, _ = decode_nms(conf, 8.0, threshold=0.2, pool_px=3)
    # 3 px apart: the boxes of side 8 overlap with IoU 0.45 > 0.3, the weaker one goes
    assert len(pos) == 3 and not np.any(np.all(np.abs(pos - [20, 23]) < 0.5, axis=1))
    pos, _ = decode_nms(conf, 8.0, threshold=0.3, pool_px=3)
    assert len(pos) == 2  # the 0.25 peak is under the threshold
    pos, _ = decode_nms(conf, 8.0, threshold=0.2, pool_px=3, min_separation_px=2.5)
    assert len(pos) == 4
    pos, _ = decode_nms(conf, 8.0, threshold=0.2, pool_px=3, min_separation_px=25.0)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=2) + 1e9 * np.eye(len(pos))
    assert d.min() >= 25.0
    with pytest.raises(InputError, match="threshold"):
        decode_nms(conf, 8.0, threshold=1.5)
    with pytest.raises(InputError, match="spacing"):
        decode_nms(conf, -1.0)
    with pytest.raises(InputError, match="2-D"):
        decode_nms(np.zeros(5), 8.0)


def test_otsu_and_connected_components():
    rng = np.random.default_rng(2)
    truth = lattice((80, 80), 10.0, rng, jitter=1.0)
    pos, _ = decode_otsu(gaussians((80, 80), truth, 1.5))
    assert len(pos) == len(truth)
    d = np.linalg.norm(pos[:, None] - truth[None], axis=2).min(axis=1)
    assert d.max() < 0.1
    assert len(decode_otsu(np.zeros((16, 16)))[0]) == 0


def test_resampling_maps_pixel_centres_exactly():
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 60, (20, 2))
    size = (37, 91)
    back = from_resampled(to_resampled(pts, (64, 64), size), (64, 64), size)
    assert np.allclose(back, pts)
    # a Gaussian blob lands where the mapping says
    img = gaussians((120, 120), np.array([[50.3, 70.6]]), 6.0)
    small = resample(torch.from_numpy(img)[None, None].float(), (48, 48))[0, 0].numpy()
    yy, xx = np.mgrid[0:48, 0:48]
    com = np.array([(small * yy).sum(), (small * xx).sum()]) / small.sum()
    assert np.allclose(com, to_resampled(np.array([[50.3, 70.6]]), (120, 120), (48, 48))[0],
                       atol=0.05)


@pytest.mark.parametrize("spacing, start", [(20.0, None), (20.0, 40.0), (5.0, None)])
def test_detection_handles_the_scale(spacing, start, monkeypatch):
    """Columns 5 or 20 px apart are found where they are; a first estimate 2x off is corrected
    by the spacing head (a second pass)."""
    rng = np.random.default_rng(4)
    shape = (160, 160)
    truth = lattice(shape, spacing, rng, jitter=0.1 * spacing)
    image = 100.0 * gaussians(shape, truth, 0.15 * spacing) + 5.0
    net = PerfectNet(spacing, image)
    if start is not None:  # a first estimate 2x off, as the autocorrelation may give
        monkeypatch.setattr("emrestore.nn.atomnet._initial_spacing", lambda work: start)
    pos, _score, info = detect_columns(net, image, threshold=0.5, spacing_from="head",
                                       initial="head" if start is None else "autocorrelation")
    assert info["passes"] == (2 if start == 40.0 else 1)
    assert info["spacing_px"] == pytest.approx(spacing, rel=0.02)
    _tp, fp, fn = detection_counts(pos, truth, 0.25 * spacing, shape=shape,
                                  border_px=0.5 * spacing)
    assert fn == 0 and fp == 0
    d = np.linalg.norm(pos[:, None] - truth[None], axis=2).min(axis=1)
    assert np.median(d) < 0.1 * spacing
    # tiled inference gives the same columns
    net.says_canonical = True
    pos1, _, _ = detect_columns(net, image, spacing_px=spacing, threshold=0.5)
    pos2, _, _ = detect_columns(net, image, spacing_px=spacing, threshold=0.5, tile=32)
    assert len(pos2) == len(pos1) == len(pos)
    assert np.allclose(np.sort(pos2, axis=0), np.sort(pos1, axis=0), atol=1e-4)


def test_a_known_spacing_is_held():
    """A spacing the caller gives is used as it is: one pass at the canonical scale and NMS
    boxes of that side, even where the spacing head sees another one."""
    rng = np.random.default_rng(5)
    shape = (160, 160)
    truth = lattice(shape, 12.0, rng, jitter=1.0)
    image = 100.0 * gaussians(shape, truth, 1.8) + 5.0
    net = PerfectNet(24.0, image)  # a head that sees twice the spacing
    pos, _, info = detect_columns(net, image, spacing_px=12.0, threshold=0.5)
    assert info["passes"] == 1
    assert info["spacing_px"] == pytest.approx(12.0, rel=0.02)
    assert info["factor"] == pytest.approx(net.config.canonical_spacing_px / 12.0, rel=0.02)
    _tp, fp, fn = detection_counts(pos, truth, 3.0, shape=shape, border_px=6.0)
    assert fn == 0 and fp == 0
    # the same head without the spacing: boxes of 24 px keep one column in four
    pos, _, info = detect_columns(net, image, threshold=0.5, spacing_from="head")
    assert info["spacing_px"] == pytest.approx(24.0, rel=0.05)
    assert len(pos) < 0.5 * len(truth)


class CoarseBlindNet(PerfectNet):
    """PerfectNet with the failures a trained head shows on coarse frames: at the native scale
    it reads a 4x too large spacing, and on a lattice shrunk below 3 px it sees the canonical
    spacing (a false fixed point of the passes)."""

    def forward(self, x):
        logits, log_s = super().forward(x)
        k = x.shape[-1] / self.shape[1]
        if k == 1.0:
            s = 4.0 * self.spacing
        elif self.spacing * k < 3.0:
            s = self.config.canonical_spacing_px
        else:
            return logits, log_s
        return logits, torch.full_like(log_s, float(np.log(s / self.config.canonical_spacing_px)))


def test_a_calibrated_frame_restarts_a_blind_coarse_pass():
    """5 px columns at 0.3 Å per pixel (1.5 Å): the coarse pass says 20 px (6 Å), which sends
    the passes to a false fixed point; with the pixel size the passes restart from 1 Å and
    converge on the lattice."""
    rng = np.random.default_rng(6)
    shape = (160, 160)
    truth = lattice(shape, 5.0, rng, jitter=0.3)
    image = 100.0 * gaussians(shape, truth, 0.9) + 5.0
    net = CoarseBlindNet(5.0, image)
    _, _, blind = detect_columns(net, image, threshold=0.5, spacing_from="head")
    assert blind["spacing_px"] == pytest.approx(20.0, rel=0.05)
    assert "restarted_at_finest" not in blind
    pos, _, info = detect_columns(net, image, threshold=0.5, spacing_from="head",
                                  pixel_size_A=0.3)
    assert info["restarted_at_finest"]
    assert info["spacing_px"] == pytest.approx(5.0, rel=0.05)
    _tp, fp, fn = detection_counts(pos, truth, 1.25, shape=shape, border_px=2.5)
    assert fn == 0 and fp == 0
    # a plausible coarse pass (here 1.5 Å at 0.3 Å per pixel) is kept
    _, _, info = detect_columns(PerfectNet(5.0, image), image, threshold=0.5,
                                spacing_from="head", pixel_size_A=0.3)
    assert "restarted_at_finest" not in info
    with pytest.raises(InputError, match="pixel size"):
        detect_columns(net, image, pixel_size_A=-1.0)


def test_the_scale_is_searched_on_a_crop(monkeypatch):
    """With a search crop smaller than the resampled frame, the passes run on the crop and the
    full frame once at the scale found: the same columns as without the crop."""
    rng = np.random.default_rng(7)
    shape = (160, 160)
    truth = lattice(shape, 10.0, rng, jitter=0.5)
    image = 100.0 * gaussians(shape, truth, 1.5) + 5.0
    net = PerfectNet(10.0, image)
    monkeypatch.setattr("emrestore.nn.atomnet._initial_spacing", lambda work: 20.0)
    runs = []
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda x: runs.append(tuple(x.shape[-2:])) or forward(x))
    pos, _, info = detect_columns(net, image, threshold=0.5, initial="autocorrelation",
                                  search_px=48)
    assert info["searched_on_crop"] and info["passes"] == 2
    assert info["spacing_px"] == pytest.approx(10.0, rel=0.05)
    assert max(runs[:-1]) <= (64, 64) and runs[-1] == info["resampled_shape"]
    full, _, info_full = detect_columns(net, image, threshold=0.5, initial="autocorrelation")
    assert not info_full["searched_on_crop"]
    assert len(pos) == len(full)
    for found in (pos, full):  # the scales differ a little: so do the sub-pixel positions
        _tp, fp, fn = detection_counts(found, truth, 2.5, shape=shape, border_px=5.0)
        assert fn == 0 and fp == 0
        assert np.median(np.linalg.norm(found[:, None] - truth[None], axis=2).min(axis=1)) < 1.0


def test_detection_errors_are_clear():
    net = build_atomnet(TINY_NET)
    with pytest.raises(InputError, match="NaN"):
        detect_columns(net, np.full((32, 32), np.nan))
    with pytest.raises(InputError, match="channel"):
        detect_columns(net, np.zeros((2, 32, 32)))
    with pytest.raises(InputError, match="decode"):
        detect_columns(net, np.zeros((32, 32)), decode="hough")


def test_visibility_of_columns():
    px = 0.1  # Å per pixel
    pos = np.array([[50, 50], [50, 69.5],     # Sr and an O column 1.95 Å away
                    [50, 55],                  # an atom displaced 0.5 Å out of the Sr column
                    [150, 150],                # a lone atom, far from everything
                    [100, 20], [100, 38]])     # a 2-atom edge column beside a 5-atom one
    species = np.array([38, 8, 38, 6, 78, 78])
    count = np.array([14, 14, 1, 1, 2, 5])
    vis = visible_columns(pos, species, count, px)
    assert vis.tolist() == [True, False, False, True, True, True]


def test_example_and_loss():
    data_cfg = AtomTrainConfig.from_dict({"data": {"source": "synthetic", "patch_size": 48}})
    scene = SyntheticAtoms(size=(64, 64), spacing_px=(10.0, 10.0))(np.random.default_rng(5))
    vis = visible_columns(scene["positions"], scene["species"], scene["atom_count"], None)
    assert 0 < vis.sum() < len(vis)
    x = (scene["image"] / scene["image"].mean())[None].astype(np.float32)
    ex = make_atom_example(x, scene["positions"], vis, 10.0, None, data=data_cfg.data,
                           net=data_cfg.model)
    assert ex["input"].shape == (1, 48, 48) and ex["target"].shape == (1, 48, 48)
    assert float(ex["log_spacing"]) == pytest.approx(0.0, abs=0.01)  # canonical spacing
    assert float(ex["target"].max()) > 0.6
    # no loss around the faint columns
    pos = to_resampled(scene["positions"][~vis], (64, 64), (51, 51)) - 1.0  # central crop
    inside = np.all((pos >= 2) & (pos < 46), axis=1)
    iy, ix = np.rint(pos[inside]).astype(int).T
    assert inside.any() and np.all(ex["weight"][0].numpy()[iy, ix] == 0)
    batch = {k: v[None] for k, v in ex.items()}
    loss, parts = atom_loss(torch.zeros(1, 1, 48, 48), torch.zeros(1), batch,
                            data_cfg.loss)
    assert np.isfinite(float(loss)) and parts["conf_loss"] > 0


def test_detection_counts_ignore_and_border():
    truth = np.array([[10.0, 10.0], [10.0, 20.0], [1.0, 20.0]])
    pred = np.array([[10.2, 10.0], [30.0, 30.0], [15.0, 30.0], [0.5, 5.0]])
    tp, fp, fn = detection_counts(pred, truth, 2.0, ignore=[[15.0, 31.0]], shape=(40, 40),
                                  border_px=2.0)
    assert (tp, fp, fn) == (1, 1, 1)


def test_two_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = AtomTrainConfig.from_dict({"batch_size": 6, "model": TINY_NET,
                                     "data": {"source": "synthetic", "patch_size": 48,
                                              "image_size": [64, 64], "min_spacing_A": 0.0}})
    batch = AtomStream(SyntheticAtoms(size=(64, 64)), cfg).batch(0)
    net = build_atomnet(cfg.model)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)

    def loss_now():
        return atom_loss(*net(batch["input"]), batch, cfg.loss)[0]

    with torch.no_grad():
        before = float(loss_now())
    for _ in range(2):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    with torch.no_grad():
        assert float(loss_now()) < 0.9 * before


def tiny_atoms_config(tmp_path, **overrides):
    cfg = {"name": "tiny-atoms", "seed": 2, "output_dir": str(tmp_path / "run"), "steps": 4,
           "batch_size": 4, "val_every": 2, "checkpoint_every": 2, "log_every": 1,
           "threads": 2, "model": TINY_NET,
           "data": {"source": "synthetic", "image_size": [64, 64], "patch_size": 48,
                    "validation_size": 3, "crops_per_image": 2},
           "optim": {"lr": 3e-3, "warmup_steps": 1}}
    cfg.update(overrides)
    return cfg


def test_train_resume_export_and_zoo(tmp_path):
    cfg = tiny_atoms_config(tmp_path)
    last = train_atomnet_from_config(cfg, max_steps=2, progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2] and rows[-1]["val_f1"] != ""
    last = train_atomnet_from_config(cfg, progress=False)  # resumes to steps = 4
    assert json.loads((last / "meta.json").read_text())["step"] == 4
    assert (tmp_path / "run" / "checkpoints" / "best").exists()
    out = tmp_path / "weights"
    path = export_atomnet(last, "tiny-atoms", out_dir=out)
    card = json.loads((out / "tiny-atoms.json").read_text())
    assert card["task"] == "atoms" and card["input"] == "raw"
    assert 0 <= card["decode"]["threshold"] < 1 and card["receptive_field_px"] > 8
    net, card2 = zoo.load_model(path, task="atoms")
    assert isinstance(net, AtomNet) and not net.training
    with pytest.raises(InputError, match="atom-finder model"):
        zoo.load_model(path)  # restore() asks for task "restore"
    assert [c["name"] for c in zoo.list_models(out, task="atoms")] == ["tiny-atoms"]
    assert zoo.list_models(out, task="restore") == []
    assert "[atoms]" in zoo.format_card(card2)
    from emrestore.atoms.find import find_atoms

    scene = SyntheticAtoms(size=(64, 64))(np.random.default_rng(8))
    table = find_atoms(scene["image"], method="network", model=path, refine=False)
    det = table.info["detection"]
    assert det["method"] == "network" and det["threshold"] == card["decode"]["threshold"]
    with pytest.raises(ConfigError, match="different network"):
        train_atomnet_from_config(tiny_atoms_config(tmp_path, steps=6,
                                                    model={**TINY_NET, "widths": [8, 16]}),
                                  progress=False)


def test_spacing_only_training_leaves_the_confidence_map_alone(tmp_path):
    """trainable = "spacing" starts from a network's weights and moves only its spacing head."""
    from emrestore.nn.atomnet_train import atomnet_from_checkpoint

    first = train_atomnet_from_config(tiny_atoms_config(tmp_path), progress=False)
    with pytest.raises(ConfigError, match="init_from"):
        AtomTrainConfig.from_dict({"data": {"source": "synthetic"}, "trainable": "spacing"})
    with pytest.raises(ConfigError, match="trainable"):
        AtomTrainConfig.from_dict({"data": {"source": "synthetic"}, "trainable": "head"})
    cfg = tiny_atoms_config(tmp_path, output_dir=str(tmp_path / "spacing"), init_from=str(first),
                            trainable="spacing", loss={"spacing_weight": 1.0},
                            optim={"lr": 1e-2, "warmup_steps": 1, "ema_decay": 0.0})
    last = train_atomnet_from_config(cfg, progress=False)
    before, _ = atomnet_from_checkpoint(first)
    after, card = atomnet_from_checkpoint(last)
    moved = {name for (name, a), (_, b) in zip(before.state_dict().items(),
                                               after.state_dict().items())
             if not torch.equal(a, b)}
    assert moved and all(name.startswith(("spacing_conv.", "spacing_mlp.")) for name in moved)
    assert "best_neg_val_spacing_log_err" in card["metrics"]


def test_config_maps_one_to_one(tmp_path):
    from pathlib import Path

    from emrestore.nn.atomnet_train import config_task

    root = Path(__file__).resolve().parents[2]
    cfg = AtomTrainConfig.from_toml(root / "configs" / "atoms-hr.toml")
    assert cfg.task == "atoms" and cfg.data.source == "library"
    assert AtomTrainConfig.from_dict(cfg.to_dict()) == cfg
    assert config_task(root / "configs" / "atoms-hr.toml") == "atoms"
    assert config_task(root / "configs" / "stem-hr.toml") == "restore"
    with pytest.raises(ConfigError, match="unknown parameter"):
        AtomTrainConfig.from_dict({"data": {"source": "synthetic", "colour": 1}})
    with pytest.raises(ConfigError, match="in_channels"):
        AtomTrainConfig.from_dict({"data": {"source": "synthetic", "input": "both"}})
    with pytest.raises(ConfigError, match="task"):
        AtomTrainConfig.from_dict({"task": "restore"})
    with pytest.raises(ConfigError, match="restoration model"):
        train_atomnet_from_config(tiny_atoms_config(
            tmp_path, data={"source": "synthetic", "input": "restored",
                            "restore_model": "no-such-model"}), progress=False)


def test_detectable_labels_merge_what_the_clean_image_does_not_resolve():
    # two columns 3 px apart under σ = 2.5 px blobs (one peak) and one lone column; the scan has
    # moved every recorded position by (0.5, -1) px
    physical = np.array([[20.0, 20.0], [20.0, 23.0], [40.0, 40.0]])
    yy, xx = np.mgrid[0:64, 0:64]
    clean = 0.1 + sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 2.5**2)) for y, x in physical)
    scene = {"positions": physical + np.array([0.5, -1.0]), "physical_positions": physical,
             "species": np.array([30, 30, 30]), "atom_count": np.array([10, 10, 10]),
             "pixel_size_A": 0.2, "clean": clean}
    data = AtomTrainConfig.from_dict({"data": {"source": "synthetic"}}).data
    pos, vis = scene_targets(scene, data)
    assert pos.shape == (3, 2) and vis.tolist() == [True, True, True]
    detectable = dataclasses.replace(data, labels="detectable")
    pos, vis = scene_targets(scene, detectable)
    assert vis.tolist() == [True, True]
    np.testing.assert_allclose(sorted(pos.tolist()), [[20.5, 20.5], [40.5, 39.0]])
    with pytest.raises(InputError, match="noise-free image"):
        scene_targets({k: v for k, v in scene.items() if k != "clean"}, detectable)
    with pytest.raises(ConfigError, match=r"data\.labels"):
        AtomTrainConfig.from_dict({"data": {"source": "synthetic", "labels": "all"}})


def test_training_runs_with_detectable_labels(tmp_path):
    cfg = tiny_atoms_config(tmp_path, steps=2)
    cfg["data"]["labels"] = "detectable"
    last = train_atomnet_from_config(cfg, progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2] and rows[-1]["val_f1"] != ""
    card = export_atomnet(last, "tiny-detectable", out_dir=tmp_path / "weights")
    assert json.loads(card.with_suffix(".json").read_text())["labels"] == "detectable"
