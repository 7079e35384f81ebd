import math

import numpy as np
import pytest

from emrestore.errors import ConfigError
from emrestore.simulate.optics import (
    GaussianPSF,
    Probe,
    ProbeParams,
    draw_gaussian_psf,
    draw_probe,
    electron_wavelength_A,
    probe_intensity,
    probe_otf,
)


@pytest.mark.parametrize("kv, lam", [(100, 0.037014), (200, 0.025079), (300, 0.019687)])
def test_relativistic_wavelength(kv, lam):
    assert electron_wavelength_A(kv) == pytest.approx(lam, rel=1e-4)


def test_probe_intensity_sums_to_one_and_is_centred():
    p = Probe(200, 25, source_fwhm_A=0.5)
    img = probe_intensity((64, 80), 0.08, p)
    assert img.dtype == np.float32
    assert img.sum(dtype=np.float64) == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(np.argmax(img), img.shape) == (32, 40)


def test_round_probe_is_centrosymmetric_and_coma_is_not():
    shape = (65, 65)  # odd: the centre pixel (32, 32) is the symmetry centre
    even = Probe(200, 25, defocus_A=40.0, c3_A=2e4, c5_A=1e7, astigmatism_A=10.0)
    img = probe_intensity(shape, 0.05, even)
    assert np.abs(img - img[::-1, ::-1]).max() < 1e-4 * img.max()
    odd = Probe(200, 25, coma_A=2000.0, coma_angle_rad=0.3)
    img = probe_intensity(shape, 0.05, odd)
    assert np.abs(img - img[::-1, ::-1]).max() > 0.05 * img.max()
    assert np.iscomplexobj(probe_otf(shape, 0.05, odd))
    assert not np.iscomplexobj(probe_otf(shape, 0.05, even))


def test_diffraction_limited_fwhm_scales_as_lambda_over_alpha():
    lam = electron_wavelength_A(200)
    widths = []
    for alpha in (10.0, 20.0, 30.0):
        f = Probe(200, alpha).fwhm_A
        widths.append(f)
        # Airy disc: FWHM = 1.029 lambda / (2 alpha) = 0.514 lambda / alpha
        assert f == pytest.approx(0.5145 * lam / (alpha * 1e-3), rel=0.02)
    assert widths[0] > widths[1] > widths[2]
    # the sampled image gives the same width (40 px across the FWHM)
    p = Probe(200, 20.0)
    dr = p.fwhm_A / 20
    img = probe_intensity((101, 101), dr, p)
    row = img[50].astype(float)
    above = np.nonzero(row >= 0.5 * row.max())[0]
    assert (above[-1] - above[0] + 1) * dr == pytest.approx(p.fwhm_A, abs=1.5 * dr)


def test_otf_of_ideal_aperture_matches_analytic_autocorrelation():
    p = Probe(200, 25)
    kmax = p.aperture_inv_A
    k = np.linspace(0, 2.2 * kmax, 50)
    s = np.clip(k / (2 * kmax), 0, 1)
    ref = (2 / np.pi) * (np.arccos(s) - s * np.sqrt(1 - s * s))
    np.testing.assert_allclose(p.otf_radial(k), ref, atol=0.02)
    assert p.otf_radial(0.0) == pytest.approx(1.0)


def test_source_size_broadens_probe():
    a, b = Probe(300, 30), Probe(300, 30, source_fwhm_A=0.8)
    assert b.fwhm_A > a.fwhm_A
    assert b.fwhm_A == pytest.approx(math.hypot(a.fwhm_A, 0.8), rel=0.15)


def test_otf_on_coarse_grid_is_not_aliased():
    # an image grid far coarser than the probe: the OTF is simply cut at Nyquist
    p = Probe(300, 30)
    otf = probe_otf((32, 32), 0.8, p)
    ky = np.fft.fftfreq(32, 0.8)
    np.testing.assert_allclose(otf[:, 0], p.otf_radial(np.abs(ky)), atol=1e-12)
    assert otf[0, 0] == pytest.approx(1.0)


def test_gaussian_psf():
    g = GaussianPSF(1.0)
    img = probe_intensity((61, 61), 0.05, g)
    row = img[30].astype(float)
    above = np.nonzero(row >= 0.5 * row.max())[0]
    assert (above[-1] - above[0] + 1) * 0.05 == pytest.approx(1.0, abs=0.06)
    assert g.otf_radial(0.0) == 1.0
    assert g.band_limit_inv_A(1e-3) > 0
    d = draw_gaussian_psf(np.random.default_rng(0))
    assert 0.6 <= d.fwhm_A <= 2.0


def test_draw_probe_ranges_and_determinism():
    params = ProbeParams()
    kinds = set()
    for seed in range(100):
        p = draw_probe(np.random.default_rng(seed), params)
        assert p == draw_probe(np.random.default_rng(seed), params)
        assert p.voltage_kV in params.voltage_kV_choices
        assert 8.0 <= p.convergence_mrad <= 35.0
        assert 0.3 <= p.source_fwhm_A <= 1.0
        if p.corrected:
            assert abs(p.c3_A) <= 5e4 and abs(p.defocus_A) <= 30
        else:
            assert p.defocus_A < 0 and 0.5e7 <= p.c3_A <= 2e7
        kinds.add(p.corrected)
        assert 0.2 < p.fwhm_A < 3.0
    assert kinds == {True, False}
    assert draw_probe(np.random.default_rng(1)).to_dict()["wavelength_A"] > 0


def test_probe_params_validation():
    with pytest.raises(ConfigError):
        ProbeParams(corrected_probability=1.5)
    with pytest.raises(ConfigError):
        ProbeParams(convergence_mrad=(30.0, 10.0))


def test_non_round_otf_on_a_lattice_equals_pointwise_interpolation():
    probe = Probe(300, 28, defocus_A=-10, c3_A=3e4, astigmatism_A=5, coma_A=200,
                  threefold_A=100, coma_angle_rad=0.7, source_fwhm_A=0.5)
    ky = np.fft.fftfreq(90, d=0.2)[:, None]
    kx = np.fft.rfftfreq(90, d=0.2)[None, :40]
    lattice = probe.otf_2d(ky, kx)
    yy, xx = np.broadcast_arrays(ky, kx)
    pointwise = probe.otf_2d(yy, xx)  # full arrays: the point-by-point path
    assert np.iscomplexobj(lattice) and lattice.shape == (90, 40)
    np.testing.assert_allclose(lattice, pointwise, atol=1e-12)
