import math

import numpy as np
import pytest
from scipy.special import j0

from emrestore.errors import InputError
from emrestore.simulate.optics import GaussianPSF, Probe, draw_probe
from emrestore.simulate.profiles import AtomProfiles, draw_atom_profiles
from emrestore.simulate.render import (
    _bspline3,
    _majority_species,
    _spread_weights,
    render_atoms,
    render_atoms_with_supersampled,
    render_columns,
    supersampled_coordinates,
)

PROFILES = AtomProfiles(species=(8, 38), h=((0.3, 0.2, 0.25), (0.9, 0.8, 0.7)), n=(6.0, 10.0),
                        r_m_A=(0.35, 0.45))


def _peak_subpixel(img):
    """Sub-pixel maximum by a 3-point Gaussian (log-parabola) fit along each axis."""
    r, c = np.unravel_index(np.argmax(img), img.shape)
    out = []
    for a, b, cc in ((img[r - 1, c], img[r, c], img[r + 1, c]),
                     (img[r, c - 1], img[r, c], img[r, c + 1])):
        la, lb, lc = np.log([a, b, cc])
        out.append(0.5 * (la - lc) / (la - 2 * lb + lc))
    return np.array([r + out[0], c + out[1]])


def _reference(numbers, pos_xy, profiles, shape, dr, psf):
    """Direct real-space evaluation: radial kernel by a numerical Hankel transform."""
    k = np.linspace(0.0, 8.0, 6001)  # both PSFs used below are negligible beyond 8 / A
    r = np.linspace(0.0, max(shape) * dr * 1.5, 1500)
    hh, ww = shape
    yy, xx = np.mgrid[0:hh, 0:ww] * dr
    out = np.zeros(shape)
    for z in np.unique(numbers):
        f = profiles.transform(z, k)
        if psf is not None:
            f = f * psf.otf_radial(k)
        g = 2 * np.pi * (j0(2 * np.pi * np.outer(r, k)) @ (f * k * np.gradient(k)))
        for x, y in pos_xy[numbers == z][:, :2]:
            out += np.interp(np.hypot(yy - y, xx - x), r, g)
    return out


def test_spread_weights_are_cubic_bsplines():
    u = np.random.default_rng(0).uniform(0, 50, 200)
    idx, w = _spread_weights(u, 64)
    base = np.floor(u)[:, None] + np.arange(-1, 3)[None, :]
    np.testing.assert_allclose(w, _bspline3(u[:, None] - base), atol=1e-14)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert idx.min() >= 0 and idx.max() < 64


@pytest.mark.parametrize("psf", [None, Probe(300, 30, source_fwhm_A=0.4), GaussianPSF(0.7)])
def test_isolated_atom_peak_at_label_position(psf):
    rng = np.random.default_rng(5)
    dr = 0.1
    for _ in range(6):
        y, x = rng.uniform(20, 44, 2)  # pixel units, random sub-pixel offsets
        img = render_atoms([38], [[x * dr, y * dr, 3.0]], PROFILES, (64, 64), dr, probe=psf)
        peak = _peak_subpixel(img.astype(float))
        assert np.hypot(*(peak - [y, x])) < 0.1


@pytest.mark.parametrize("psf", [Probe(200, 25, source_fwhm_A=0.5), GaussianPSF(0.8)])
@pytest.mark.parametrize("dr", [0.07, 0.2])
def test_matches_direct_real_space_evaluation(psf, dr):
    rng = np.random.default_rng(int(dr * 100))
    shape = (48, 48)
    n = 8
    pos = np.column_stack([rng.uniform(8, 40, n) * dr, rng.uniform(8, 40, n) * dr,
                           np.zeros(n)])
    numbers = rng.choice([8, 38], n)
    img = render_atoms(numbers, pos, PROFILES, shape, dr, probe=psf)
    ref = _reference(numbers, pos, PROFILES, shape, dr, psf)
    assert np.abs(img - ref).max() < 2e-3 * ref.max()


def test_integrated_intensity_is_conserved():
    dr = 0.1
    shape = (256, 256)
    rng = np.random.default_rng(2)
    n = 40
    pos = np.column_stack([rng.uniform(100, 156, n) * dr, rng.uniform(100, 156, n) * dr,
                           np.zeros(n)])
    numbers = rng.choice([8, 38], n)
    expected = sum(PROFILES.integrated_intensity(z) for z in numbers)
    for psf in (None, GaussianPSF(1.0), Probe(300, 30, source_fwhm_A=0.5)):
        img = render_atoms(numbers, pos, PROFILES, shape, dr, probe=psf)
        assert img.sum(dtype=np.float64) * dr * dr == pytest.approx(expected, rel=0.01)


def test_supersampled_image_is_consistent():
    prof = draw_atom_profiles(np.random.default_rng(4), [14, 79])
    psf = Probe(200, 22, source_fwhm_A=0.6)
    rng = np.random.default_rng(9)
    dr = 0.15
    pos = np.column_stack([rng.uniform(0, 48 * dr, 60), rng.uniform(0, 40 * dr, 60),
                           np.zeros(60)])
    numbers = rng.choice([14, 79], 60)
    coarse = render_atoms(numbers, pos, prof, (48, 40), dr, probe=psf)
    fine2 = render_atoms(numbers, pos, prof, (48, 40), dr, probe=psf, supersample=2)
    fine3 = render_atoms(numbers, pos, prof, (48, 40), dr, probe=psf, supersample=3)
    assert fine2.shape == (96, 80) and fine3.shape == (144, 120)
    # same field of view: equal integrated intensity
    s = coarse.sum(dtype=np.float64) * dr**2
    assert fine2.sum(dtype=np.float64) * (dr / 2) ** 2 == pytest.approx(s, rel=2e-3)
    # odd factor: fine pixel 3p + 1 is the coarse pixel centre p (point samples agree)
    np.testing.assert_allclose(fine3[1::3, 1::3], coarse, atol=2e-3 * coarse.max())
    np.testing.assert_allclose(supersampled_coordinates([[0, 0], [2, 5]], 2),
                               [[0.5, 0.5], [4.5, 10.5]])


def test_isolated_atom_peak_in_supersampled_image():
    dr = 0.12
    y, x = 20.37, 17.81
    img = render_atoms([8], [[x * dr, y * dr]], PROFILES, (40, 40), dr,
                       probe=GaussianPSF(0.6), supersample=2)
    peak = _peak_subpixel(img.astype(float))
    assert np.hypot(*(peak - supersampled_coordinates([[y, x]], 2)[0])) < 0.1


def test_same_seed_gives_identical_bytes():
    def make(seed):
        rng = np.random.default_rng(seed)
        prof = draw_atom_profiles(rng, [6, 29, 79])
        probe = draw_probe(rng)
        pos = rng.uniform(0, 12.8, (300, 3))
        numbers = rng.choice([6, 29, 79], 300)
        return render_atoms(numbers, pos, prof, (64, 64), 0.2, probe=probe)

    assert make(7).tobytes() == make(7).tobytes()
    assert make(7).tobytes() != make(8).tobytes()


def test_atoms_outside_the_field_and_empty_input():
    # an atom just outside contributes its tail, one far outside nothing
    dr = 0.1
    near = render_atoms([38], [[-0.3, 3.2]], PROFILES, (64, 64), dr, probe=GaussianPSF(0.8))
    far = render_atoms([38], [[-30.0, 3.2]], PROFILES, (64, 64), dr, probe=GaussianPSF(0.8))
    assert near[32, 0] > 0.1 * near.max() and np.abs(far).max() < 1e-6
    empty = render_atoms(np.zeros(0, int), np.zeros((0, 3)), PROFILES, (8, 9), dr)
    assert empty.shape == (8, 9) and not empty.any()
    with pytest.raises(InputError, match="Z="):
        render_atoms([5], [[0, 0, 0]], PROFILES, (8, 8), dr)
    with pytest.raises(InputError):
        render_atoms([8], [[0, 0, 0]], PROFILES, (8, 8), -1.0)


def test_render_columns_groups_zone_axis_stacks():
    dr = 0.2
    a = 3.9
    xs, ys = np.meshgrid(np.arange(5) * a + 1.0, np.arange(4) * a + 1.0)
    pos, numbers = [], []
    for layer in range(6):
        z = layer * a
        pos.append(np.column_stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)]))
        numbers += [38] * xs.size if layer % 3 else [8] * xs.size  # 4 Sr + 2 O per column
    pos = np.vstack(pos)
    numbers = np.array(numbers)
    cols = render_columns(numbers, pos, PROFILES, (100, 100), dr)
    assert len(cols["species"]) == 20
    assert np.all(cols["atom_count"] == 6)
    assert np.all(cols["species"] == 38)
    expected = 4 * PROFILES.integrated_intensity(38) + 2 * PROFILES.integrated_intensity(8)
    np.testing.assert_allclose(cols["integrated_intensity"], expected)
    np.testing.assert_allclose(cols["position_A"], cols["position_px"] * dr)
    got = {tuple(np.round(p, 6)) for p in cols["position_A"]}
    want = {(round(y, 6), round(x, 6)) for y, x in zip(ys.ravel(), xs.ravel())}
    assert got == want


def test_render_columns_merge_radius_and_edges():
    dr = 0.1
    pos = np.array([[2.0, 2.0, 0], [2.2, 2.0, 1], [4.0, 2.0, 0], [4.3, 2.0, 0], [50.0, 2.0, 0]])
    cols = render_columns([8, 38, 8, 8, 8], pos, PROFILES, (64, 64), dr, merge_radius_A=0.25)
    # (2.0, 2.2) merge; 4.0 and 4.3 stay apart; 50 A is outside the 6.4 A field
    assert sorted(cols["atom_count"].tolist()) == [1, 1, 2]
    merged = cols["atom_count"] == 2
    assert cols["species"][merged][0] == 38  # tie broken towards the heavier element
    w8, w38 = PROFILES.integrated_intensity(8), PROFILES.integrated_intensity(38)
    x_centroid = (2.0 * w8 + 2.2 * w38) / (w8 + w38)
    assert cols["position_A"][merged][0] == pytest.approx([2.0, x_centroid])
    none = render_columns([8], [[100.0, 100.0, 0]], PROFILES, (8, 8), dr)
    assert none["position_px"].shape == (0, 2)


def test_render_columns_random_orientation_gives_single_atoms():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 20, (400, 3))
    cols = render_columns(np.full(400, 8), pos, PROFILES, (100, 100), 0.2, merge_radius_A=0.05)
    assert cols["atom_count"].sum() <= 400
    assert np.mean(cols["atom_count"] == 1) > 0.95
    assert math.isclose(cols["integrated_intensity"].sum(),
                        cols["atom_count"].sum() * PROFILES.integrated_intensity(8))


def test_many_species_low_rank_path_matches_direct(monkeypatch):
    import emrestore.simulate.render as render_module

    rng = np.random.default_rng(12)
    zs = rng.choice(np.arange(1, 104), 30, replace=False)
    prof = draw_atom_profiles(rng, zs)
    dr = 0.2
    pos = rng.uniform(-1, 64 * dr + 1, (3000, 2))
    numbers = rng.choice(zs, 3000)
    psf = Probe(200, 25, source_fwhm_A=0.5)
    ranks = []
    original = render_module._lowrank

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        ranks.append(None if out is None else out[0].shape[1])
        return out

    monkeypatch.setattr(render_module, "_lowrank", spy)
    fast = render_atoms(numbers, pos, prof, (64, 64), dr, probe=psf)
    assert ranks and ranks[0] is not None and ranks[0] < 30
    monkeypatch.setattr(render_module, "_lowrank", lambda *a, **k: None)
    direct = render_atoms(numbers, pos, prof, (64, 64), dr, probe=psf)
    assert np.abs(fast - direct).max() < 1e-3 * direct.max()
    assert fast.sum(dtype=np.float64) == pytest.approx(direct.sum(dtype=np.float64), rel=2e-4)


def _scene(seed, n, field_A, species=(14, 79)):
    rng = np.random.default_rng(seed)
    pos = np.column_stack([rng.uniform(0, field_A, n), rng.uniform(0, field_A, n), np.zeros(n)])
    return rng.choice(list(species), n), pos


@pytest.mark.parametrize("dr", [0.06, 0.15, 0.3])
def test_shared_supersampled_render_matches_separate_render(dr):
    """One spreading for the image and the 2x window: the window equals a separate
    ``render_atoms(..., supersample=2)`` of the shifted atoms (o = 1 and o = 2 internal grids)."""
    prof = draw_atom_profiles(np.random.default_rng(4), [14, 79])
    psf = Probe(200, 22, source_fwhm_A=0.6)
    numbers, pos = _scene(1, 150, 64 * dr)
    top, left, hw = 10, 7, 44
    image, fine = render_atoms_with_supersampled(numbers, pos, prof, (64, 64), dr, psf,
                                                 window_px=(top, left, hw, hw))
    np.testing.assert_array_equal(image, render_atoms(numbers, pos, prof, (64, 64), dr, psf))
    shifted = pos - np.array([left * dr, top * dr, 0.0])
    # wide padding: the reference sees the same atoms' tails as the full field does
    ref = render_atoms(numbers, shifted, prof, (hw, hw), dr, psf, supersample=2, max_pad_px=80)
    assert fine.shape == (2 * hw, 2 * hw) and fine.dtype == np.float32
    np.testing.assert_allclose(fine, ref, atol=2e-3 * ref.max())


def test_shared_supersampled_render_falls_back_when_oversampling_is_capped():
    """A probe much sharper than the pixel: the window is rendered on its own finer grid."""
    prof = draw_atom_profiles(np.random.default_rng(2), [8, 38])
    psf = Probe(300, 30, source_fwhm_A=0.3)
    dr = 0.8
    numbers, pos = _scene(3, 80, 40 * dr, (8, 38))
    _, fine = render_atoms_with_supersampled(numbers, pos, prof, (40, 40), dr, psf,
                                             window_px=(4, 4, 32, 32))
    shifted = pos - np.array([4 * dr, 4 * dr, 0.0])
    ref = render_atoms(numbers, shifted, prof, (32, 32), dr, psf, supersample=2)
    np.testing.assert_array_equal(fine, ref)


def test_majority_species_prefers_the_heavier_on_ties():
    species = np.array([6, 8, 79])
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    group = np.array([0, 2, 1, 1, 2, 1, 2, 0])
    count = np.bincount(labels)
    np.testing.assert_array_equal(_majority_species(labels, group, species, count),
                                  [79, 8, 8, 79])


def test_displaced_atoms_do_not_chain_columns():
    """Stacked columns 2 Å apart with scattered atoms between them stay separate columns."""
    rng = np.random.default_rng(3)
    columns = [(2.0, 2.0), (2.0, 4.0), (2.0, 6.0)]
    stack = np.array([[x, y, z] for x, y in columns for z in range(10)], dtype=float)
    # a dense line of loose atoms bridging the columns every 0.2 Å
    bridge = np.column_stack([np.full(21, 2.0), np.linspace(2.1, 5.9, 21), rng.uniform(0, 9, 21)])
    pos = np.vstack([stack, bridge])
    cols = render_columns(np.full(len(pos), 8), pos, PROFILES, (80, 80), 0.1,
                          merge_radius_A=0.25)
    big = cols["atom_count"] >= 10
    assert big.sum() == 3
    np.testing.assert_allclose(np.sort(cols["position_A"][big][:, 0]), [2.0, 4.0, 6.0],
                               atol=0.05)


def test_mistilted_columns_stay_whole_along_their_direction():
    tilt = np.radians(2.0)
    direction = np.array([np.sin(tilt), 0.0, np.cos(tilt)])
    z = np.arange(0, 200.0, 4.0)  # a 200 Å thick column smears 7 Å in projection
    pos = np.vstack([np.column_stack([x0 + z * np.tan(tilt), np.full_like(z, 5.0), z])
                     for x0 in (3.0, 7.0)])
    cols = render_columns(np.full(len(pos), 8), pos, PROFILES, (200, 200), 0.1,
                          merge_radius_A=0.25, column_direction=direction)
    assert sorted(cols["atom_count"].tolist()) == [len(z), len(z)]
