"""Training: a few steps lower the loss, checkpoints resume the step counter, export -> load
round-trips through safetensors + JSON without unpickling."""

import csv
import itertools
import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from _pairs import TINY, tiny_config  # noqa: E402

from emrestore.errors import ConfigError, InputError  # noqa: E402
from emrestore.nn import data, zoo  # noqa: E402
from emrestore.nn.blocks import build_model  # noqa: E402
from emrestore.nn.losses import CompositeLoss  # noqa: E402
from emrestore.nn.train import (  # noqa: E402
    TrainConfig,
    export_model,
    lr_factor,
    read_checkpoint,
    train_from_config,
)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model("unet", {"widths": [8, 16], "blocks": 1, "downsample": "conv"})
    stream = data.PairStream(TINY, batch_size=8, patch_size=32, crops_per_pair=2, seed=0)
    batch = stream.batch(0)
    loss_fn = CompositeLoss({"l1_std": 1.0, "mlwt": 0.1, "fourier": 0.01})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss_now():
        return loss_fn(model(batch["input"]), batch["target"], offset=batch["offset"],
                       scale=batch["scale"])[0]

    with torch.no_grad():
        before = float(loss_now())
    for _ in range(6):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    with torch.no_grad():
        after = float(loss_now())
    assert after < 0.95 * before


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, warmup=10, total=100, min_ratio=0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert f[-1] == pytest.approx(0.1, abs=1e-3)


def test_config_maps_one_to_one():
    cfg = TrainConfig.from_dict({"model": {"architecture": "dae", "config": {"filters": 8}},
                                 "optim": {"betas": [0.8, 0.9]}})
    assert cfg.optim.betas == (0.8, 0.9) and cfg.model.config == {"filters": 8}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown parameter"):
        TrainConfig.from_dict({"optim": {"learning_rate": 1.0}})
    with pytest.raises(ConfigError, match="unknown term"):
        TrainConfig.from_dict({"loss": {"perceptual": 1.0}})
    with pytest.raises(ConfigError, match="unknown parameter"):
        TrainConfig.from_dict({"model": {"config": {"depth": 3}}})


def test_train_resume_export_and_load_without_pickle(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    last = train_from_config(cfg, max_steps=2, progress=False)
    meta, tensors, state = read_checkpoint(last)
    assert meta["step"] == 2 and state["step"] == 2
    assert any(k.startswith("ema.") for k in tensors)
    # resume continues the step counter (and the data stream) up to config.steps = 4
    last = train_from_config(cfg, progress=False)
    meta, _, _ = read_checkpoint(last)
    assert meta["step"] == 4
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["val_psnr_db"] and float(rows[-1]["val_psnr_db"]) > 0
    assert (tmp_path / "run" / "checkpoints" / "best" / "weights.safetensors").exists()

    out = tmp_path / "weights"
    path = export_model(last, "tiny-test", out_dir=out, description="smoke test")
    card = json.loads((out / "tiny-test.json").read_text())
    for key in ("normalisation", "min_size_px", "receptive_field_px", "multiple_of", "training",
                "metrics", "date", "sha256", "config", "architecture"):
        assert key in card
    assert card["training"]["seed"] == 3 and card["training"]["steps"] == 4
    assert card["multiple_of"] == 2 and card["receptive_field_px"] > 3

    def refuse(*args, **kwargs):
        raise AssertionError("loading a model must not unpickle anything")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model, card2 = zoo.load_model(path, device="cpu")
    assert card2["name"] == "tiny-test" and not model.training
    assert [c["name"] for c in zoo.list_models(out)] == ["tiny-test"]
    assert "tiny-test" in zoo.format_card(card2)
    # the exported weights are the EMA weights of the checkpoint
    from safetensors.torch import load_file

    ema = {k[4:]: v for k, v in load_file(str(last / "weights.safetensors")).items()
           if k.startswith("ema.")}
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema[k])
    x = torch.from_numpy(TINY(np.random.default_rng(9))[0])[None, None]
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_damaged_weights_are_refused(tmp_path):
    last = train_from_config(tiny_config(tmp_path, steps=1), progress=False)
    path = export_model(last, "broken", out_dir=tmp_path)
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(InputError, match="SHA-256"):
        zoo.load_model(path)
    with pytest.raises(InputError, match="no model named"):
        zoo.load_model("no-such-model")


def test_resume_refuses_another_architecture(tmp_path):
    train_from_config(tiny_config(tmp_path, steps=1), progress=False)
    other = tiny_config(tmp_path, steps=2, model={"architecture": "dae",
                                                  "config": {"filters": 4}})
    with pytest.raises(ConfigError, match="different architecture"):
        train_from_config(other, progress=False)


def test_gan_stage_runs(tmp_path):
    cfg = tiny_config(tmp_path, steps=1, gan={"enabled": True, "features": 4, "layers": 1})
    last = train_from_config(cfg, progress=False)
    _meta, tensors, state = read_checkpoint(last)
    assert any(k.startswith("disc.") for k in tensors) and "opt_d" in state
    too_deep = tiny_config(tmp_path / "b", steps=1, gan={"enabled": True, "layers": 3})
    with pytest.raises(ConfigError, match="patch_size"):
        train_from_config(too_deep, progress=False)


def test_library_source_simulates_the_library_once(tmp_path):
    """source = "library" with library_size: the physics simulator fills the HDF5 file first,
    then training reads it (the last validation_size images held out)."""
    lib = tmp_path / "lib.h5"
    cfg = tiny_config(tmp_path, steps=1, batch_size=2,
                      data={"source": "library", "library": str(lib), "library_size": 3,
                            "image_size": [48, 48], "validation_size": 1, "sampler": {}})
    train_from_config(cfg, progress=False)
    import h5py

    with h5py.File(lib, "r") as h5:
        assert int(h5.attrs["n_done"]) == 3 and h5["distorted"].shape == (3, 48, 48)
    missing = tiny_config(tmp_path / "m", data={"source": "library",
                                                "library": str(tmp_path / "none.h5")})
    with pytest.raises(InputError, match="not found"):
        train_from_config(missing, progress=False)


def test_init_from_starts_a_new_run_from_trained_weights(tmp_path):
    """model.init_from copies a checkpoint's EMA weights (or an exported model) into a new run;
    a wrong architecture or a missing file is a clear error."""
    first = train_from_config(tiny_config(tmp_path / "a", steps=2), progress=False)
    _, tensors, _ = read_checkpoint(first)
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    second_cfg = tiny_config(tmp_path / "b", steps=1)
    second_cfg["model"] = {**second_cfg["model"], "init_from": str(first)}
    second = train_from_config(second_cfg, max_steps=0, progress=False)
    _, tensors2, _ = read_checkpoint(second)
    for k, v in ema.items():
        assert torch.equal(tensors2["model." + k], v) and torch.equal(tensors2["ema." + k], v)
    exported = export_model(first, "init-test", out_dir=tmp_path / "w")
    third_cfg = tiny_config(tmp_path / "c", steps=1)
    third_cfg["model"] = {**third_cfg["model"], "init_from": str(exported)}
    train_from_config(third_cfg, max_steps=0, progress=False)
    bad = tiny_config(tmp_path / "d", steps=1, model={"architecture": "dae",
                                                      "config": {"filters": 4},
                                                      "init_from": str(first)})
    with pytest.raises(ConfigError, match="does not fit"):
        train_from_config(bad, progress=False)
    missing = tiny_config(tmp_path / "e", steps=1)
    missing["model"] = {**missing["model"], "init_from": str(tmp_path / "nothing")}
    with pytest.raises(InputError, match="init_from"):
        train_from_config(missing, progress=False)


def test_extra_libraries_join_the_training_set(tmp_path):
    from emrestore.nn.train import _loader, load_config

    libs = []
    for name, n in (("main.h5", 3), ("extra.h5", 4)):
        cfg = tiny_config(tmp_path / ("run-" + name), steps=1, batch_size=2,
                          data={"source": "library", "library": str(tmp_path / name),
                                "library_size": n, "image_size": [48, 48],
                                "validation_size": 1, "sampler": {}})
        train_from_config(cfg, max_steps=0, progress=False)
        libs.append(cfg)
    both = libs[0]
    both["data"] = {**both["data"], "extra_libraries": [str(tmp_path / "extra.h5")]}
    loader, held = _loader(load_config(both), 0)
    # 3 - 1 held out from the main library, all 4 of the extra one
    union = loader.dataset
    assert len(union) == 2 + 4 and len(held) == 1
    # virtual indices of later epochs reach every sample again, with new crops
    first = [union[j]["input"] for j in range(6)]
    second = [union[6 + j]["input"] for j in range(6)]
    assert all(a.shape == b.shape for a, b in zip(first, second))
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
    batches = iter(loader)
    for _ in range(7):  # 7 batches of 2 cross two epochs of 6 samples
        assert next(batches)["input"].shape[0] == 2
