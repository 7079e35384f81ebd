"""Multislice reference cells: storage, rendering on a field, and the sampler's mix.

A synthetic "scan" (periodic Gaussians on the columns of a real cell) stands in for abTEM, so
these tests run without it; the rendering is exact for any band-limited scan.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emrestore.errors import ConfigError, InputError
from emrestore.simulate.multislice import MultisliceParams, zone_axis_cell
from emrestore.simulate.multislice_set import (
    load_reference_cells,
    reference_cells_from_scan,
    render_reference_scene,
    save_reference_cells,
)
from emrestore.simulate.sampler import SamplerConfig, simulate_pair

PARAMS = MultisliceParams(voltage_kV=200, convergence_mrad=25, source_fwhm_A=0.5,
                          frozen_phonons=1)


@pytest.fixture(scope="module")
def cells_file(tmp_path_factory, gaussian_cell_scan):
    path = tmp_path_factory.mktemp("cells") / "cells.npz"
    cells = []
    for name, material, axis, split in (("SrTiO3[001]", "SrTiO3", (0, 0, 1), "test"),
                                         ("Si[110]", "Si", (1, 1, 0), "train")):
        cell = zone_axis_cell(material, axis, thickness_A=12.0)
        scans = np.stack([gaussian_cell_scan(cell) * 0.5, gaussian_cell_scan(cell)])
        thick = [cell.cell[2, 2] / 2, cell.cell[2, 2]]
        cells += reference_cells_from_scan(name, material, axis, cell, scans, thick, PARAMS,
                                           split)
    save_reference_cells(cells, path)
    return path


def test_cells_round_trip_without_pickle_and_filter_by_split(cells_file):
    cells = load_reference_cells(path=cells_file)
    assert len(cells) == 4
    test = load_reference_cells("test", cells_file)
    assert {c.name for c in test} == {"SrTiO3[001]"}
    thin, thick = sorted(test, key=lambda c: c.thickness_A)
    assert len(thin.numbers) < len(thick.numbers)  # atoms beyond the exit plane are dropped
    assert thick.multislice_params == PARAMS
    with np.load(cells_file, allow_pickle=False) as data:  # readable without pickle
        assert "index" in data
    with pytest.raises(ConfigError):
        load_reference_cells("validation", cells_file)


def test_merge_replaces_only_the_same_cell(cells_file, tmp_path):
    path = tmp_path / "c.npz"
    cells = load_reference_cells(path=cells_file)
    save_reference_cells(cells, path)
    changed = dataclasses.replace(cells[0], haadf=cells[0].haadf * 2)
    save_reference_cells([changed], path)
    again = load_reference_cells(path=path)
    assert len(again) == 4
    hit = [c for c in again if (c.name, c.thickness_A, c.split)
           == (changed.name, changed.thickness_A, changed.split)]
    np.testing.assert_allclose(hit[0].haadf, changed.haadf)


def test_missing_or_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no multislice reference cells"):
        load_reference_cells(path=tmp_path / "absent.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(InputError, match="not a readable"):
        load_reference_cells(path=bad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rendered_columns_sit_on_the_image_peaks_at_any_rotation(cells_file, seed):
    cell = max(load_reference_cells("test", cells_file), key=lambda c: c.thickness_A)
    pixel = 0.12
    scene = render_reference_scene(cell, np.random.default_rng(seed), (128, 128), pixel)
    img = scene.signal
    pos = scene.columns["position_px"]
    heavy = scene.columns["species"] == 38  # the Sr columns, isolated maxima
    inner = np.all((pos > 6) & (pos < 122), axis=1) & heavy
    assert inner.sum() >= 6
    for py, px in pos[inner]:
        r, c = round(py), round(px)
        patch = img[r - 2:r + 3, c - 2:c + 3]
        assert img[r, c] >= patch.max() * 0.97  # the peak is within a pixel of the label
    assert np.isnan(scene.columns["integrated_intensity"]).all()


def test_super_resolved_window_matches_the_coarse_image(cells_file):
    cell = load_reference_cells("test", cells_file)[0]
    margin, h = 5, 40
    scene = render_reference_scene(cell, np.random.default_rng(3), (h + 2 * margin,) * 2, 0.1,
                                   window_px=(margin, margin, h, h))
    fine = scene.signal_2x
    assert fine.shape == (2 * h, 2 * h)
    # fine pixels 2i and 2i+1 straddle coarse pixel margin + i: their mean is that pixel
    pair_mean = 0.25 * (fine[0::2, 0::2] + fine[1::2, 0::2] + fine[0::2, 1::2] + fine[1::2, 1::2])
    coarse = scene.signal[margin:margin + h, margin:margin + h]
    assert np.abs(pair_mean - coarse).max() < 0.02 * coarse.max()


def test_linear_twin_shares_the_geometry(cells_file):
    cell = load_reference_cells("test", cells_file)[-1]
    ms = render_reference_scene(cell, np.random.default_rng(7), (80, 80), 0.1)
    lin = render_reference_scene(cell, np.random.default_rng(7), (80, 80), 0.1, model="linear")
    assert ms.info["rotation_deg"] == lin.info["rotation_deg"]
    np.testing.assert_allclose(ms.columns["position_px"], lin.columns["position_px"])
    # two renderings of the same columns through the same probe: strongly correlated images
    corr = np.corrcoef(ms.signal.ravel(), lin.signal.ravel())[0, 1]
    assert corr > 0.8
    assert np.isfinite(lin.columns["integrated_intensity"]).all()


def test_sampler_mix_draws_reference_frames_with_the_same_distortion_chain(cells_file):
    config = SamplerConfig(size=(64, 64), hr_pixel_size_A=(0.1, 0.15), multislice_fraction=1.0,
                           multislice_split="test", multislice_cells=str(cells_file))
    distorted, clean, labels = simulate_pair(config=config, rng=11)
    info = labels["params"]["reference_cell"]
    assert info["split"] == "test" and info["model"] == "multislice"
    assert distorted.shape == clean.shape == (64, 64)
    assert labels["clean_2x"].shape == (128, 128)
    assert (clean >= 0).all() and len(labels["columns"]["position_px"]) > 10
    assert "detector" in labels["params"]  # the STEM distortion chain ran
    # fraction 0 never touches the cells (and keeps every existing seed's frame)
    plain = dataclasses.replace(config, multislice_fraction=0.0, multislice_cells="/nonexistent")
    a = simulate_pair(config=plain, rng=11)[0]
    b = simulate_pair(config=dataclasses.replace(plain, multislice_cells=None), rng=11)[0]
    np.testing.assert_array_equal(a, b)


def test_sampler_mix_rejects_bad_settings():
    with pytest.raises(ConfigError):
        SamplerConfig(multislice_fraction=1.5)
    with pytest.raises(ConfigError):
        SamplerConfig(multislice_split="val")
    with pytest.raises(ConfigError):
        SamplerConfig(multislice_model="wave")


def test_shipped_cells_hold_both_splits_and_the_srtio3_physics():
    """The packaged abTEM cells: disjoint train/test crystals, and SrTiO3 [001] at 200 kV,
    HAADF 70-200 mrad shows Sr > Ti-O > O and column intensity rising with thickness."""
    test = load_reference_cells("test")
    train = load_reference_cells("train")
    assert {c.name for c in test}.isdisjoint({c.name for c in train})
    sto = sorted((c for c in test if c.name == "SrTiO3[001]"), key=lambda c: c.thickness_A)
    assert len(sto) >= 3
    params = sto[0].multislice_params
    assert params.voltage_kV == 200 and tuple(params.haadf_mrad) == (70.0, 200.0)
    peaks = []
    for cell in sto:
        img = render_reference_scene(cell, np.random.default_rng(0), (160, 160), 0.08)
        cols = img.columns
        pos = np.round(cols["position_px"]).astype(int)
        ok = np.all((pos >= 2) & (pos < 158), axis=1)
        sr = cols["species"] == 38
        count = cols["atom_count"]
        # the other columns: Ti-O (Ti and O alternate, twice the atoms) and pure O
        tio = ~sr & (count == count[~sr].max())
        oxygen = ~sr & (count == count[~sr].min())
        value = [float(img.signal[pos[ok & sel, 0], pos[ok & sel, 1]].mean())
                 for sel in (sr, tio, oxygen)]
        assert value[0] > value[1] > value[2]
        peaks.append(value[0])
    assert np.all(np.diff(peaks) > 0)  # thicker: brighter Sr columns (sub-linearly)
