"""Specimen generator: physics invariants, reproducibility and input checking."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ase.neighborlist import neighbor_list
from scipy.spatial import ConvexHull, cKDTree

from emrestore.errors import ConfigError, InputError
from emrestore.simulate.config import from_dict
from emrestore.simulate.materials import NAMED_MATERIALS, named_material
from emrestore.simulate.specimen import (
    SpecimenParams,
    add_support,
    amorphous,
    apply_defects,
    apply_shape,
    apply_wedge,
    build_specimen,
    individual_points,
    min_periodic_distance,
    nanoparticle,
    orient_and_fill,
    random_crystal,
    zone_axis_rotation,
)

BOX = (25.6, 25.6, 25.6)


def _columns(xy: np.ndarray, tol: float = 0.01) -> int:
    """Number of groups of projected positions closer than tol (connected components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = cKDTree(xy).query_pairs(tol, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                       shape=(len(xy), len(xy)))
    return connected_components(graph, directed=False)[0]


# --- named materials ---------------------------------------------------------------------------


def test_srtio3_lattice_and_stoichiometry():
    sto = named_material("SrTiO3")
    assert np.allclose(sto.cell.cellpar(), [3.905, 3.905, 3.905, 90, 90, 90], atol=1e-3)
    symbols = sto.get_chemical_symbols()
    assert symbols.count("Sr") == 1 and symbols.count("Ti") == 1 and symbols.count("O") == 3
    # Ti-O bond a/2 in the perovskite
    assert min_periodic_distance(sto) == pytest.approx(3.905 / 2, abs=1e-3)


def test_named_materials_build_and_lookup():
    for name in NAMED_MATERIALS:
        atoms = named_material(name)
        assert len(atoms) > 0
        d = neighbor_list("d", atoms, 4.0)
        assert d.min() > 1.3, name  # no overlapping atoms (C-C in graphene is the shortest)
    assert named_material("srtio3").get_chemical_formula() == \
        named_material("SRTIO3").get_chemical_formula()
    assert named_material("tellurene").info["material"] == "Te"
    assert named_material("rutile").get_chemical_formula() == "O4Ti2"
    # literature checks: Si diamond bond, DyScO3 ScO6 octahedra, trigonal Te chains
    assert min_periodic_distance(named_material("Si")) == pytest.approx(5.431 * math.sqrt(3) / 4,
                                                                        abs=1e-3)
    dso = named_material("DyScO3")
    i, _j, d = neighbor_list("ijd", dso, 2.3)
    sc = np.flatnonzero(dso.numbers == 21)
    for k in sc:
        assert np.sum(i == k) == 6  # six oxygen neighbours around each Sc
    assert min_periodic_distance(named_material("Te")) == pytest.approx(2.835, abs=0.02)
    assert named_material("graphene").pbc.tolist() == [True, True, False]


def test_unknown_material_lists_valid_names():
    with pytest.raises(InputError, match="SrTiO3"):
        named_material("unobtainium")
    with pytest.raises(InputError):
        build_specimen(0, BOX, material="unobtainium")


# --- random crystals ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_random_crystal_minimum_distance_with_periodic_images(seed):
    params = SpecimenParams()
    atoms = random_crystal(np.random.default_rng(seed), params)
    d = neighbor_list("d", atoms, 7.5)
    assert d.size > 0
    assert 0.95 - 1e-9 <= d.min() <= 7.0 + 1e-9
    assert d.min() == pytest.approx(atoms.info["min_distance_A"], abs=1e-6)
    assert 1 <= len(atoms.info["species"]) <= 16
    assert all(1 <= z <= 103 for z in atoms.numbers)
    assert len(atoms) <= params.max_cell_atoms
    a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
    assert 3.1 - 1e-9 <= min(a, b, c) and max(a, b, c) <= 25.0 + 1e-9
    assert 45 - 1e-6 <= min(alpha, beta, gamma) and max(alpha, beta, gamma) <= 120 + 1e-6


def test_random_crystal_respects_lattice_system_and_symmetry():
    rng = np.random.default_rng(3)
    cubic = random_crystal(rng, space_group=225)
    a, b, c, al, be, ga = cubic.cell.cellpar()
    assert a == pytest.approx(b) == pytest.approx(c)
    assert (al, be, ga) == pytest.approx((90, 90, 90))
    hexa = random_crystal(rng, space_group=194)
    a, b, c, al, be, ga = hexa.cell.cellpar()
    assert a == pytest.approx(b) and ga == pytest.approx(120)
    mono = random_crystal(rng, space_group=14)
    _, _, _, al, _, ga = mono.cell.cellpar()
    assert (al, ga) == pytest.approx((90, 90))
    # the sites really carry the space-group symmetry: ASE regenerates the same cell
    from ase.spacegroup import crystal

    sites = cubic.info["asym_sites_Z_frac"]
    again = crystal([s[0] for s in sites], [s[1:] for s in sites], spacegroup=225,
                    cellpar=cubic.info["cellpar"], onduplicates="keep", symprec=1e-3)
    assert len(again) == len(cubic)


# --- amorphous solids and points ---------------------------------------------------------------


@pytest.mark.parametrize(("z", "rho", "d"), [(6, 2.2, 1.4), (14, 2.3, 1.2), (79, 6.0, 1.0)])
def test_amorphous_density_and_minimum_distance(z, rho, d):
    atoms, info = amorphous(np.random.default_rng(1), (40.0, 40.0, 30.0), z=z,
                            density_g_cm3=rho, min_distance_A=d)
    pos = atoms.positions
    assert len(cKDTree(pos).query_pairs(d * (1 - 1e-9))) == 0
    assert info["density_g_cm3"] == pytest.approx(rho, rel=0.05)
    assert not info["room_limited"]
    assert np.all(atoms.numbers == z)
    assert pos.min() >= 0 and np.all(pos.max(axis=0) <= (40.0, 40.0, 30.0))


def test_amorphous_default_draws_stay_in_range():
    for seed in range(6):
        atoms, info = amorphous(np.random.default_rng(seed), BOX)
        assert 0.95 <= info["min_distance_A"] <= 1.6
        assert 2.0 <= info["density_requested_g_cm3"] <= 7.0
        if not info["room_limited"]:
            assert info["density_g_cm3"] == pytest.approx(info["density_requested_g_cm3"],
                                                          rel=0.1)
        else:  # too dense for random packing at this minimum distance: as dense as it gets
            assert info["density_g_cm3"] < info["density_requested_g_cm3"]
        if len(atoms) > 1:
            assert len(cKDTree(atoms.positions).query_pairs(info["min_distance_A"] * 0.999)) == 0


def test_individual_points_separation():
    atoms, info = individual_points(np.random.default_rng(2), BOX, pixel_size_A=0.1)
    assert 1.0 <= info["min_distance_px"] <= 20.0
    if len(atoms) > 1:
        assert len(cKDTree(atoms.positions).query_pairs(info["min_distance_A"] * 0.999)) == 0


# --- orientation -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "uvw", "max_columns_per_A2"),
                         [("SrTiO3", (0, 0, 1), 3 / 3.905**2), ("Si", (0, 1, 1), 0.11)])
def test_zone_axis_collapses_columns(name, uvw, max_columns_per_A2):
    cell = named_material(name)
    rot = zone_axis_rotation(cell.cell.array, uvw, tilt_deg=0.0, inplane_deg=23.0)
    atoms, _info = orient_and_fill(np.random.default_rng(0), cell, BOX, rotation=rot)
    n = len(atoms)
    n_cols = _columns(atoms.positions[:, :2])
    area = BOX[0] * BOX[1]
    # every column holds many atoms: far fewer distinct projected positions than atoms
    assert n_cols <= 1.25 * max_columns_per_A2 * area + 40
    assert n / n_cols > 4
    # with a 5° mistilt the columns no longer collapse to 0.01 Å
    rot_tilt = zone_axis_rotation(cell.cell.array, uvw, tilt_deg=5.0, inplane_deg=23.0)
    tilted, _ = orient_and_fill(np.random.default_rng(0), cell, BOX, rotation=rot_tilt)
    assert _columns(tilted.positions[:, :2]) > 0.9 * len(tilted)


def test_orient_and_fill_covers_box_at_density():
    cell = named_material("Au")
    for seed in range(4):
        atoms, _info = orient_and_fill(np.random.default_rng(seed), cell, BOX)
        density = len(cell) / cell.get_volume()
        assert len(atoms) == pytest.approx(density * np.prod(BOX), rel=0.03)
        pos = atoms.positions
        assert pos.min() >= 0 and np.all(pos.max(axis=0) <= np.array(BOX)[[1, 0, 2]])
        # a crystal stays a crystal: Au nearest-neighbour distance a/sqrt(2)
        d = cKDTree(pos).query(pos, k=2)[0][:, 1]
        assert d.min() == pytest.approx(4.078 / math.sqrt(2), abs=1e-6)


def test_graphene_is_one_flat_layer():
    cell = named_material("graphene")
    rot = zone_axis_rotation(cell.cell.array, (0, 0, 1), inplane_deg=10.0)
    atoms, _ = orient_and_fill(np.random.default_rng(0), cell, BOX, rotation=rot)
    assert np.ptp(atoms.positions[:, 2]) < 1e-9
    assert len(atoms) == pytest.approx(BOX[0] * BOX[1] * 2 / (2.46**2 * math.sqrt(3) / 2),
                                       rel=0.05)


# --- geometry ----------------------------------------------------------------------------------


def _slab(seed=0, name="SrTiO3"):
    cell = named_material(name)
    rot = zone_axis_rotation(cell.cell.array, (0, 0, 1))
    atoms, _ = orient_and_fill(np.random.default_rng(seed), cell, BOX, rotation=rot)
    return atoms


def test_wedge_thins_the_specimen_along_its_direction():
    atoms = _slab()
    params = SpecimenParams(wedge_angle_deg=(30.0, 30.0))
    cut, info = apply_wedge(np.random.default_rng(5), atoms, BOX, params, surface="top")
    assert 0 < len(cut) < len(atoms) and info["n_removed"] == len(atoms) - len(cut)
    u = np.array([math.cos(math.radians(info["direction_deg"])),
                  math.sin(math.radians(info["direction_deg"]))])
    s = cut.positions[:, :2] @ u - info["start_offset_A"]
    z0 = atoms.positions[:, 2].min()
    assert np.all(cut.positions[:, 2] >= z0 + math.tan(math.radians(30.0)) * np.maximum(s, 0)
                  - 1e-9)


def test_shapes_keep_or_remove_their_inside():
    atoms = _slab()
    for seed in range(10):
        params = SpecimenParams(shape_radius_frac=(0.3, 0.4))
        out, info = apply_shape(np.random.default_rng(seed), atoms, BOX, params,
                                shape="polyhedron")
        hull = ConvexHull(np.array(info["vertices_A"]))
        inside = np.all(out.positions @ hull.equations[:, :3].T + hull.equations[:, 3] <= 1e-6,
                        axis=1)
        assert inside.all() if info["keep_inside"] else not inside.any()
    out, info = apply_shape(np.random.default_rng(0), atoms, BOX, shape="plane")
    normal = np.array([math.cos(math.radians(info["normal_azimuth_deg"])),
                       math.sin(math.radians(info["normal_azimuth_deg"])), 0.0])
    side = (out.positions - np.array(info["centre_xyz_A"])) @ normal <= 0
    assert side.all() if info["keep_inside"] else not side.any()
    out, info = apply_shape(np.random.default_rng(1), atoms, BOX, shape="rod")
    assert 3 <= info["n_vertices"] <= 15 and len(out) <= len(atoms)


def test_nanoparticle_is_faceted_and_sits_at_z0():
    atoms, info = nanoparticle(np.random.default_rng(4), (40.0, 40.0, 40.0), material="Pt")
    assert len(atoms) > 20 and set(atoms.numbers) == {78}
    assert atoms.positions[:, 2].min() == pytest.approx(0.0)
    assert {tuple(f["hkl"]) for f in info["facets"]} == {(1, 0, 0), (1, 1, 0), (1, 1, 1)}
    # Pt fcc: nearest neighbours at a / sqrt(2)
    d = cKDTree(atoms.positions).query(atoms.positions, k=2)[0][:, 1]
    assert d.min() == pytest.approx(3.924 / math.sqrt(2), abs=1e-6)
    with pytest.raises(InputError):
        nanoparticle(np.random.default_rng(0), BOX, material="graphene")


# --- defects -----------------------------------------------------------------------------------


def test_missing_column_removes_the_whole_column():
    atoms = _slab()
    params = SpecimenParams(defect_fraction_max=0.0, p_missing_columns=1.0,
                            missing_columns=(3, 3))
    out, info = apply_defects(np.random.default_rng(7), atoms, params)
    assert len(info["missing_columns"]) == 3
    removed = 0
    for col in info["missing_columns"]:
        y, x = col["yx_A"]
        r_before = np.hypot(atoms.positions[:, 0] - x, atoms.positions[:, 1] - y)
        r_after = np.hypot(out.positions[:, 0] - x, out.positions[:, 1] - y)
        assert np.sum(r_before <= 0.3) == col["n_atoms"] >= 5  # a full column of the slab
        assert not np.any(r_after <= 0.3)
        removed += col["n_atoms"]
    assert len(out) == len(atoms) - removed


def test_missing_column_of_a_mistilted_crystal_goes_whole():
    """2° off the zone axis a column drifts sideways through the slab: it is removed along its
    own direction, every atom of it, and no column is left at its recorded site."""
    from emrestore.simulate.render import group_columns

    cell = named_material("SrTiO3")
    atoms, orient = orient_and_fill(np.random.default_rng(0), cell, (30.0, 30.0, 120.0),
                                    zone_axis=(0, 0, 1), mistilt_deg=2.0)
    direction = np.asarray(orient["column_direction"])

    def line(p):  # where each atom's column line crosses z = 0
        return p[:, :2] - np.outer(p[:, 2], direction[:2] / direction[2])

    params = SpecimenParams(defect_fraction_max=0.0, p_missing_columns=1.0,
                            missing_columns=(3, 3))
    out, info = apply_defects(np.random.default_rng(7), atoms, params,
                              column_direction=direction)
    kept = {tuple(np.round(q, 6)) for q in out.positions}
    removed = np.array([q for q in atoms.positions if tuple(np.round(q, 6)) not in kept])
    lab = group_columns(line(removed), 0.5)
    assert lab.max() + 1 == 3 and len(removed) == sum(c["n_atoms"] for c in info["missing_columns"])
    for k in range(3):
        centre = line(removed[lab == k]).mean(axis=0)
        assert np.hypot(*(line(out.positions) - centre).T).min() > 1.0  # nothing of it is left
    # a whole column of a 120 Å slab is dozens of atoms; a cylinder along z takes a few of them
    _, along_z = apply_defects(np.random.default_rng(7), atoms, params)
    n = [c["n_atoms"] for c in info["missing_columns"]]
    assert min(n) >= 20 and max(c["n_atoms"] for c in along_z["missing_columns"]) < min(n)
    # the recorded sites are where the removed columns project: no remaining column is there
    lab_out = group_columns(line(out.positions), 0.25)
    centres = np.array([out.positions[lab_out == k, :2].mean(axis=0)
                        for k in np.unique(lab_out) if (lab_out == k).sum() >= 10])
    for col in info["missing_columns"]:
        y, x = col["yx_A"]
        assert np.hypot(*(centres - [x, y]).T).min() > 1.0


def test_point_defects_are_counted():
    atoms = _slab()
    params = SpecimenParams(p_missing_columns=0.0, displacement_std_scale=0.2)
    out, info = apply_defects(np.random.default_rng(11), atoms, params)
    assert info["n_selected"] <= round(0.25 * len(atoms))
    assert info["n_displaced"] + info["n_vacancies"] + info["n_substituted"] == \
        info["n_selected"]
    assert len(out) == len(atoms) - info["n_vacancies"]


# --- support -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_support_layer_thickness_and_position(seed):
    specimen = _slab()
    box = (20.0, 20.0, 25.6)
    specimen = specimen[(specimen.positions[:, 0] <= 20) & (specimen.positions[:, 1] <= 20)]
    out, new_box, info = add_support(np.random.default_rng(seed), specimen, box)
    assert 10.0 <= info["thickness_requested_A"] <= 300.0
    assert not info["thickness_capped"]
    support = out.positions[len(specimen):]
    assert len(support) > 0
    z_top = specimen.positions[:, 2].max()
    assert support[:, 2].min() >= z_top  # downstream of the specimen along the beam
    extent = support[:, 2].max() - info["z_start_A"]
    assert extent <= info["thickness_A"] + 1e-6
    assert extent >= info["thickness_A"] - 4.0  # filled through its thickness
    assert new_box[2] >= support[:, 2].max()


# --- top level -----------------------------------------------------------------------------------


def test_build_specimen_kinds_box_and_json():
    kinds = set()
    for seed in range(30):
        spec = build_specimen(np.random.default_rng(seed), BOX, pixel_size_A=0.1)
        kinds.add(spec.kind)
        ly, lx, lz = spec.box_A
        assert (ly, lx) == BOX[:2] and lz >= BOX[2]
        pos = spec.atoms.positions
        if len(pos):
            assert pos.min() >= 0 and pos[:, 0].max() <= lx and pos[:, 1].max() <= ly
            assert pos[:, 2].max() <= lz
        assert len(spec.atoms) <= SpecimenParams().max_atoms * 1.2
        json.dumps(spec.info)
        assert spec.info["kind"] == spec.kind
    assert {"crystal", "amorphous", "points"} <= kinds


@pytest.mark.parametrize("seed", [0, 1, 2, 5, 8])
def test_same_seed_same_specimen(seed):
    a = build_specimen(np.random.default_rng(seed), BOX)
    b = build_specimen(np.random.default_rng(seed), BOX)
    assert np.array_equal(a.atoms.numbers, b.atoms.numbers)
    assert np.array_equal(a.atoms.positions, b.atoms.positions)
    assert a.info == b.info and a.box_A == b.box_A


def test_forced_material():
    params = SpecimenParams(p_nanoparticle=0.0, p_support=0.0, p_defects=0.0, p_shape=0.0,
                            p_wedge=0.0)
    spec = build_specimen(np.random.default_rng(0), BOX, params, material="srtio3")
    assert spec.kind == "crystal" and spec.info["crystal"]["material"] == "SrTiO3"
    assert set(np.unique(spec.atoms.numbers)) == {8, 22, 38}
    counts = np.bincount(spec.atoms.numbers)
    assert counts[8] / counts[38] == pytest.approx(3.0, rel=0.1)


def test_atom_cap_limits_large_boxes():
    params = SpecimenParams(max_atoms=8000)
    for seed in range(5):
        spec = build_specimen(np.random.default_rng(seed), (120.0, 120.0, 120.0), params)
        assert len(spec.atoms) <= 1.2 * 8000


def test_bad_inputs_raise():
    for box in [(-1.0, 10.0, 10.0), (10.0, 0.0, 10.0), (10.0, 10.0), (10.0, float("nan"), 1.0)]:
        with pytest.raises(InputError):
            build_specimen(0, box)
    with pytest.raises(InputError):
        build_specimen(0, BOX, pixel_size_A=-0.1)
    with pytest.raises(ConfigError):
        SpecimenParams(p_crystal=0.9)  # type probabilities no longer sum to 1
    with pytest.raises(ConfigError):
        SpecimenParams(lattice_length_A=(25.0, 3.1))
    with pytest.raises(ConfigError):
        SpecimenParams(p_wedge=1.5)
    with pytest.raises(ConfigError):
        SpecimenParams(named_materials=("SrTiO3", "kryptonite"))
    with pytest.raises(ConfigError):
        from_dict(SpecimenParams, {"p_wegde": 0.5})
    params = from_dict(SpecimenParams, {"zone_axes": [[0, 0, 1], [1, 1, 0]],
                                        "support_thickness_A": [10, 20]})
    assert params.zone_axes == ((0, 0, 1), (1, 1, 0))


def test_space_group_table_matches_ase():
    from ase.spacegroup import Spacegroup

    from emrestore.simulate.specimen import _symops

    for sg in (1, 2, 14, 62, 141, 167, 194, 225, 227, 230):
        ops = Spacegroup(sg).get_symop()
        rots, trans = _symops(sg)
        np.testing.assert_array_equal(rots, np.array([r for r, _ in ops], float))
        np.testing.assert_array_equal(trans, np.array([t for _, t in ops], float))
