"""The run scaffolding shared by both trainers (nn.runs): config checks, the validation / log /
checkpoint schedule, the best checkpoint, resume, and a failed step leaving no checkpoint."""

import csv

import pytest

torch = pytest.importorskip("torch")
from _pairs import tiny_config  # noqa: E402

from emrestore.errors import ConfigError  # noqa: E402
from emrestore.nn.atomnet_train import AtomTrainConfig  # noqa: E402
from emrestore.nn.runs import Run, read_checkpoint  # noqa: E402
from emrestore.nn.train import TrainConfig  # noqa: E402

FIELDS = ["step", "lr", "loss", "grad_norm", "score", "examples_per_s", "elapsed_s"]


def test_both_configs_check_the_run_fields():
    for cls, base in ((TrainConfig, {}), (AtomTrainConfig, {"data": {"source": "synthetic"}})):
        with pytest.raises(ConfigError, match="val_every must be >= 1"):
            cls.from_dict({**base, "val_every": 0})
        with pytest.raises(ConfigError, match="amp must be"):
            cls.from_dict({**base, "amp": "fp8"})
        cfg = cls.from_dict(base)
        assert cls.load(cfg) is cfg and cls.load(cfg.to_dict()) == cfg


def _squared_error(y, x):
    return (y - x).square().mean()


def _toy_run(cfg, scores, *, loss_fn=_squared_error):
    """A one-convolution run through the whole Run protocol; returns the Run."""
    run = Run(cfg, command="toy", device="cpu")
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    run.attach(model)
    run.start(resume=True, max_steps=None, best_key="best_score", what="network",
              same_network=lambda saved: True)
    scores = iter(scores)
    batch = torch.linspace(0, 1, 32).reshape(2, 1, 4, 4)
    with run.training([batch] * 20, FIELDS, progress=False) as batches:
        for x in batches:
            run.set_lr()
            loss = loss_fn(model(x), x)
            grad_norm = run.optimise(loss)
            run.advance(x.shape[0], loss, grad_norm, {})
            row = {}
            if run.validation_due():
                score = next(scores)
                row["score"] = f"{score:g}"
                run.keep_best(score)
            run.end_step(row)
    return run


def test_schedule_best_checkpoint_and_resume(tmp_path):
    cfg = TrainConfig.from_dict(tiny_config(tmp_path, steps=3, val_every=2,
                                            checkpoint_every=10, log_every=10))
    run = _toy_run(cfg, [2.0, 1.0])
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    # logged after the validation at step 2 and at the end (step 3), not at step 1
    assert [int(r["step"]) for r in rows] == [2, 3] and [r["score"] for r in rows] == ["2", "1"]
    meta, _, _ = read_checkpoint(run.ckpt_dir / "best")
    assert meta["step"] == 2 and meta["metrics"]["best_score"] == 2.0
    meta, _, state = read_checkpoint(run.ckpt_dir / "last")
    assert meta["step"] == 3 and meta["command"] == "toy" and "optimiser" in state
    assert meta["metrics"]["best_step"] == 2

    longer = TrainConfig.from_dict({**cfg.to_dict(), "steps": 4})
    again = _toy_run(longer, [1.5])  # resumes at 3: one step, a worse score
    assert again.step == 4 and again.best == 2.0
    assert read_checkpoint(again.ckpt_dir / "best")[0]["step"] == 2
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 3, 4]


def test_a_non_finite_loss_stops_the_run_without_a_checkpoint(tmp_path):
    cfg = TrainConfig.from_dict(tiny_config(tmp_path, steps=3))
    with pytest.raises(FloatingPointError, match="step 0"):
        _toy_run(cfg, [], loss_fn=lambda y, x: y.sum() * float("nan"))
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert (tmp_path / "run" / "log.csv").read_text().splitlines() == [",".join(FIELDS)]
