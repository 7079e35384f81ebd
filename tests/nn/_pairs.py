"""Tiny synthetic pairs for the nn tests (Gaussian lattice + Poisson), independent of the
physics simulator."""

from emrestore.nn.data import SyntheticPairs

TINY = SyntheticPairs(size=(48, 48), mean_counts=(2.0, 50.0), spacing_px=(6.0, 9.0))


def tiny_config(tmp_path, **overrides):
    """A TrainConfig dict that trains a very small U-Net on synthetic pairs in seconds."""
    cfg = {
        "name": "tiny",
        "seed": 3,
        "output_dir": str(tmp_path / "run"),
        "steps": 4,
        "batch_size": 4,
        "val_every": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "threads": 2,
        "model": {"architecture": "unet",
                  "config": {"widths": [8, 16], "blocks": 1, "downsample": "conv"}},
        "loss": {"l1_std": 1.0, "mlwt": 0.1, "fourier": 0.01, "mean": 0.1, "std": 0.1},
        "data": {"source": "synthetic", "image_size": [48, 48], "patch_size": 32,
                 "crops_per_pair": 2, "validation_size": 4,
                 "sampler": {"mean_counts": [2.0, 50.0], "spacing_px": [6.0, 9.0]}},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg
