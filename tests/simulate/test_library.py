"""The HDF5 library: every label stored, resumable, identical to an uninterrupted run."""

import numpy as np
import pytest

from emrestore.errors import InputError
from emrestore.simulate.library import read_sample, sample_rng, write_library
from emrestore.simulate.sampler import SamplerConfig, simulate_pair


def test_library_resume_is_identical(tmp_path):
    config = SamplerConfig(size=(48, 48), super_resolution_label=True)
    whole = write_library(tmp_path / "whole.h5", 4, config, seed=3, progress=False)
    part = tmp_path / "part.h5"
    write_library(part, 2, config, seed=3, progress=False)
    write_library(part, 4, config, seed=3, progress=False)  # resumes at sample 2
    for i in range(4):
        a, b = read_sample(whole, i), read_sample(part, i)
        assert a[0].tobytes() == b[0].tobytes()
        assert a[2]["params"] == b[2]["params"]
    distorted, clean, labels = read_sample(whole, 2)
    ref = simulate_pair(config=config, rng=sample_rng(3, 2))
    np.testing.assert_array_equal(distorted, ref[0])
    np.testing.assert_array_equal(clean, ref[1])
    np.testing.assert_array_equal(labels["columns"]["position_px"],
                                  ref[2]["columns"]["position_px"])
    assert labels["clean_2x"].shape == (96, 96)
    assert labels["dose_e_per_A2"] == pytest.approx(ref[2]["dose_e_per_A2"])


def test_library_refuses_a_different_config(tmp_path):
    path = write_library(tmp_path / "lib.h5", 1, SamplerConfig(size=(32, 32)), progress=False)
    before = path.read_bytes()
    with pytest.raises(InputError, match="different configuration"):
        write_library(path, 2, SamplerConfig(size=(32, 32), modality="tem"), progress=False)
    assert path.read_bytes() == before
