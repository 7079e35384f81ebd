"""Data pipeline: deterministic streams (any number of workers), crops and symmetries,
normalisation with the whole image's statistics, the HDF5 library dataset."""

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from _pairs import TINY  # noqa: E402

from emrestore.errors import InputError  # noqa: E402
from emrestore.nn import data  # noqa: E402
from emrestore.nn.normalise import normalise  # noqa: E402


def test_synthetic_pairs_are_poisson_counts_of_the_clean_image():
    noisy, clean = TINY(np.random.default_rng(0))
    assert noisy.shape == clean.shape == (48, 48) and noisy.dtype == np.float32
    assert np.all(noisy == np.round(noisy)) and noisy.min() >= 0
    # Poisson: mean and variance of (noisy - clean) relative to clean
    big = data.SyntheticPairs(size=(256, 256), mean_counts=(20.0, 20.0))
    noisy, clean = big(np.random.default_rng(1))
    resid = noisy - clean
    assert abs(resid.mean()) < 0.05 * clean.mean()
    assert np.var(resid) == pytest.approx(clean.mean(), rel=0.1)


def test_dihedral_gives_eight_distinct_symmetries():
    a = np.arange(9.0).reshape(3, 3)
    outs = {data.dihedral(a, k).tobytes() for k in range(8)}
    assert len(outs) == 8


def test_example_uses_whole_image_statistics():
    noisy, clean = TINY(np.random.default_rng(2))
    ex = data.make_example(noisy, clean, np.random.default_rng(0), 32)
    _, off, sc = normalise(noisy)
    assert ex["input"].shape == (1, 32, 32)
    assert float(ex["offset"]) == pytest.approx(off.item()) and float(ex["scale"]) == \
        pytest.approx(sc.item())
    centre = data.make_example(noisy, clean, None, 32)
    np.testing.assert_allclose(centre["input"][0].numpy() * sc.item() + off.item(),
                               noisy[8:40, 8:40], rtol=1e-5, atol=1e-4)
    with pytest.raises(InputError, match="larger than"):
        data.make_example(noisy, clean, None, 64)


def test_stream_is_deterministic_and_independent_of_workers():
    stream = data.PairStream(TINY, batch_size=3, patch_size=32, crops_per_pair=2, seed=5)
    first = [b["input"] for b in _take(torch.utils.data.DataLoader(stream, batch_size=None), 3)]
    two = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    second = [b["input"] for b in _take(two, 3)]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # resuming at batch 2 gives batch 2
    resumed = data.PairStream(TINY, batch_size=3, patch_size=32, crops_per_pair=2, seed=5,
                              start=2)
    assert torch.equal(next(iter(resumed))["input"], first[2])
    assert not torch.equal(first[0], first[1])


def _take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


@pytest.fixture
def library(tmp_path):
    path = tmp_path / "lib.h5"
    rng = np.random.default_rng(0)
    pairs = [TINY(rng) for _ in range(5)]
    with h5py.File(path, "w") as h5:
        h5["distorted"] = np.stack([p[0] for p in pairs])
        h5["clean"] = np.stack([p[1] for p in pairs])
        h5.attrs["n_done"] = 5
    return path, pairs


def test_library_dataset_and_epoch_sampler(library):
    path, _pairs = library
    ds = data.LibraryDataset(path, patch_size=32, seed=1, indices=[0, 1, 2, 3])
    assert len(ds) == 4
    a, b = ds[1], ds[5]  # same image (1 = 5 mod 4), other crop / symmetry
    assert not torch.equal(a["input"], b["input"])
    assert torch.equal(ds[1]["input"], a["input"])  # deterministic per virtual index
    sampler = data.EpochSampler(4, seed=0)
    it = iter(sampler)
    idx = [next(it) for _ in range(8)]
    assert sorted(i % 4 for i in idx[:4]) == [0, 1, 2, 3] and min(idx[4:]) >= 4
    resumed = iter(data.EpochSampler(4, seed=0, start=3))
    assert [next(resumed) for _ in range(5)] == idx[3:8]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=data.EpochSampler(4),
                                         collate_fn=data.collate)
    batch = next(iter(loader))
    assert batch["input"].shape == (2, 1, 32, 32) and batch["scale"].shape == (2, 1, 1, 1)
    val = data.validation_set(n=2, seed=0, library=ds)
    assert val["input"].shape == (2, 1, 48, 48)
    with pytest.raises(InputError, match="not found"):
        data.LibraryDataset(path.with_name("missing.h5"))


def test_psnr_is_unit_free():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(2, 1, 16, 16, generator=g)
    p = y + 0.01 * torch.randn(2, 1, 16, 16, generator=g)
    torch.testing.assert_close(data.psnr_db(p, y), data.psnr_db(7 * p + 3, 7 * y + 3))
    assert float(data.psnr_db(p, y).mean()) == pytest.approx(40.0, abs=2.0)


def test_library_union_routes_virtual_indices_past_the_first_epoch():
    # EpochSampler hands out e·N + r; every part must get its own e·N_k + r_k (a fresh crop per
    # epoch), never an index past the union's length (torch's ConcatDataset raised IndexError)
    import torch

    from emrestore.nn.data import EpochSampler, LibraryUnion

    class Part(torch.utils.data.Dataset):
        def __init__(self, n, tag):
            self.n, self.tag = n, tag

        def __len__(self):
            return self.n

        def __getitem__(self, j):
            return (self.tag, *divmod(j, self.n))  # (part, epoch, local index)

    union = LibraryUnion([Part(3, "a"), Part(5, "b")])
    assert len(union) == 8
    sampler = iter(EpochSampler(len(union), seed=1))
    seen = [union[next(sampler)] for _ in range(3 * 8)]
    for epoch in range(3):
        got = sorted(seen[8 * epoch: 8 * (epoch + 1)])
        want = [("a", epoch, r) for r in range(3)] + [("b", epoch, r) for r in range(5)]
        assert got == sorted(want)
