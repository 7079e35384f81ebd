import math

import numpy as np
import pytest
from scipy import integrate, special

from emrestore.errors import ConfigError, InputError
from emrestore.simulate.profiles import (
    BOHR_RADIUS_A,
    AtomProfileParams,
    AtomProfiles,
    draw_atom_profiles,
    projected_potential_rms_radius_A,
    radius_law_A,
    slater_configuration,
)


def test_hydrogen_rms_radius_is_exact():
    # 1s hydrogen: <r^2> = 3 a0^2, <r^4> = 22.5 a0^4 -> r_hat^2 = <r^4> / (5 <r^2>) = 1.5 a0^2
    assert projected_potential_rms_radius_A(1) == pytest.approx(math.sqrt(1.5) * BOHR_RADIUS_A)


def test_rms_radius_has_shell_structure():
    r = projected_potential_rms_radius_A(np.arange(1, 104))
    assert r.shape == (103,) and np.all(r > 0.25) and np.all(r < 2.5)
    # alkali metals are wider than the preceding noble gases, for every period
    for noble, alkali in [(2, 3), (10, 11), (18, 19), (36, 37), (54, 55), (86, 87)]:
        assert r[alkali - 1] > 2.5 * r[noble - 1]


def test_slater_configuration_counts_electrons():
    for z in (1, 8, 26, 79, 103):
        conf = slater_configuration(z)
        assert sum(e for _, _, e, _ in conf) == z
        assert all(0 < zeff <= z for *_, zeff in conf)
    with pytest.raises(InputError):
        slater_configuration(0)


def test_radius_law_keeps_mean_and_is_proportional_for_alpha_one():
    r = projected_potential_rms_radius_A(np.arange(1, 104))
    rm = radius_law_A(1.0, 0.2)
    assert rm.mean() == pytest.approx(0.2)
    np.testing.assert_allclose(rm / r, rm[0] / r[0])
    for alpha in (0.75, 1.25):
        rm = radius_law_A(alpha, 0.3)
        assert rm.mean() == pytest.approx(0.3)
        assert rm.std() / rm.mean() == pytest.approx(r.std() / r.mean())


def test_integrated_intensity_increases_with_z_across_seeds():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        k = int(rng.integers(1, 17))
        species = rng.choice(np.arange(1, 104), k, replace=False)
        prof = draw_atom_profiles(rng, species)
        ints = [prof.integrated_intensity(z) for z in prof.species]
        assert list(prof.species) == sorted(species.tolist())
        assert np.all(np.diff(ints) > 0)


def test_drawn_parameters_respect_ranges():
    p = AtomProfileParams()
    for seed in range(50):
        rng = np.random.default_rng(seed)
        prof = draw_atom_profiles(rng, [6, 14, 29, 79], p)
        assert all(4.0 <= n <= 16.0 for n in prof.n)
        assert p.alpha_range[0] <= prof.alpha <= p.alpha_range[1]
        assert p.gamma_range[0] <= prof.gamma <= p.gamma_range[1]
        # shape weights keep their drawn ratios: every ratio within [0.5, 2]
        for h in prof.h:
            assert max(h) / min(h) <= 2.0 + 1e-9
        # the heaviest species keeps its drawn weights (scale 1)
        assert all(0.5 <= v <= 1.0 for v in prof.h[-1])
        expected = radius_law_A(prof.alpha, prof.radius_scale_A)[np.array(prof.species) - 1]
        np.testing.assert_allclose(prof.r_m_A, expected)


def test_intensity_ratio_follows_z_gamma_within_jitter():
    rng = np.random.default_rng(3)
    prof = draw_atom_profiles(rng, [8, 79], AtomProfileParams(intensity_jitter=0.0))
    ratio = prof.integrated_intensity(79) / prof.integrated_intensity(8)
    assert ratio == pytest.approx((79 / 8) ** prof.gamma, rel=1e-9)


def test_transform_matches_real_space_integrals():
    prof = AtomProfiles(species=(6,), h=((0.7, 0.6, 0.9),), n=(7.3,), r_m_A=(0.23,))
    area = integrate.quad(lambda r: 2 * math.pi * r * prof.radial(6, r), 0, 50, limit=400)[0]
    assert prof.integrated_intensity(6) == pytest.approx(area, rel=1e-7)
    assert float(prof.transform(6, 0.0)) == pytest.approx(area, rel=1e-7)
    for k in (0.3, 1.0, 2.5, 6.0):
        ref = integrate.quad(lambda r, k=k: 2 * math.pi * r * prof.radial(6, r)
                             * special.j0(2 * math.pi * k * r), 0, 20, limit=2000)[0]
        assert float(prof.transform(6, k)) == pytest.approx(ref, abs=3e-4 * area)


def test_profile_extent_and_band_limit():
    prof = AtomProfiles(species=(6,), h=((1.0, 0.0, 0.0),), n=(8.0,), r_m_A=(0.2,))
    r = prof.extent_A(6, 1e-3)
    assert prof.radial(6, r) <= 1e-3 * prof.radial(6, 0.0) * 1.05
    k = prof.band_limit_inv_A(6, 1e-3)
    # Gaussian term only: |F| beyond K holds exp(-2 pi^2 r_m^2 K^2) of the mass (K on a table)
    assert 5e-4 <= math.exp(-2 * math.pi**2 * 0.04 * k * k) <= 1e-3


def test_same_seed_same_profiles_and_roundtrip():
    a = draw_atom_profiles(np.random.default_rng(11), [1, 8, 92])
    b = draw_atom_profiles(np.random.default_rng(11), [92, 8, 1, 8])
    assert a == b
    assert AtomProfiles.from_dict(a.to_dict()) == a
    d = a.to_dict()
    assert len(d["integrated_intensity"]) == 3


def test_errors():
    with pytest.raises(InputError):
        draw_atom_profiles(np.random.default_rng(0), [0, 5])
    with pytest.raises(InputError):
        draw_atom_profiles(np.random.default_rng(0), [])
    with pytest.raises(ConfigError):
        AtomProfileParams(n_range=(8.0, 4.0))
    prof = draw_atom_profiles(np.random.default_rng(0), [6])
    with pytest.raises(InputError, match="Z=7"):
        prof.radial(7, 0.0)
