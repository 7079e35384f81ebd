"""Line-to-line beam/gain fluctuation of the S(T)EM chain."""

import dataclasses

import numpy as np
import pytest

from emrestore.simulate.stem import StemDistortionParams, distort_stem, draw_stem_distortion


def _only_line_gain(sigma: float, phi: float) -> StemDistortionParams:
    p = StemDistortionParams()
    off = {f.name: 0.0 for f in dataclasses.fields(p) if f.name.endswith("_probability")}
    off.update(counting_probability=1.0, line_gain_probability=1.0)
    return dataclasses.replace(p, **off, line_gain_sigma=(sigma, sigma), line_gain_phi=(phi, phi))


@pytest.mark.parametrize("phi", [0.0, 0.6])
def test_row_means_follow_the_ar1_gain(phi):
    sigma = 0.03
    d = draw_stem_distortion(np.random.default_rng(0), _only_line_gain(sigma, phi), (2000, 400),
                             pixel_size_A=0.1)
    flat = np.full((2000, 400), 1.0e4, np.float32)  # shot noise on a row mean: 0.05 %
    image = distort_stem(flat, d, np.random.default_rng(1))
    gain = image.mean(axis=1) / 1.0e4 - 1.0
    expected = sigma / np.sqrt(1.0 - phi**2)
    assert gain.std() == pytest.approx(expected, rel=0.1)
    lag1 = np.corrcoef(gain[:-1], gain[1:])[0, 1]
    assert lag1 == pytest.approx(phi, abs=0.06)
    # a multiplicative fluctuation keeps the mean dose
    assert image.mean() == pytest.approx(1.0e4, rel=0.01)
