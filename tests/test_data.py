"""Tier 4 (contract): what the loss receives from each form of data, and the Trace file format.

Reproduces issue 14 items 3, 5, 9 and 10 first: a DataLoader's sampler and collate_fn were dropped
(a ``SubsetRandomSampler(range(10))`` ran on all 64 samples; a custom collate_fn over a
TensorDataset gave init_loss 0.0201 instead of 0.145); a one-tensor ``TensorDataset(x)`` handed the
loss a bare tensor where torch gives ``[x_batch]``; ``Trace.save("x")`` wrote ``x.npz`` that
``Trace.load("x")`` could not find; numpy-scalar configs did not serialise.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

import lambdahat as lh
from lambdahat.data import as_data_source
from lambdahat.trace import Trace

FAST = dict(step_size=1e-3, localization=1.0, num_chains=1, num_draws=5, num_burnin_steps=0, progress=False)


def _xy(n=64):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, generator=gen), torch.randn(n, 1, generator=gen)


def _model():
    torch.manual_seed(0)
    return nn.Linear(2, 1)


# --- DataLoader settings ----------------------------------------------------------------------


def test_subset_random_sampler_means_its_subset():
    x, y = _xy()
    loader = DataLoader(TensorDataset(x, y), batch_size=5, sampler=SubsetRandomSampler(range(10)))
    source = as_data_source(loader)
    assert source.n == 10 and source.default_batch_size == 5
    torch.testing.assert_close(source.all()[0], x[:10])
    model = _model()
    result = lh.estimate_llc(model, loader, nn.MSELoss(), **FAST)
    assert result.config["n"] == 10
    with torch.no_grad():
        assert result.init_loss == pytest.approx(float(nn.MSELoss()(model(x[:10]), y[:10])), rel=1e-6)


def test_subset_of_a_plain_dataset_and_a_batch_sampler():
    x, y = _xy()
    pairs = [(x[i], y[i]) for i in range(len(x))]  # a list is a map-style dataset
    loader = DataLoader(pairs, batch_sampler=BatchSampler(SubsetRandomSampler([3, 5, 7]), batch_size=2, drop_last=False))
    source = as_data_source(loader)
    assert source.n == 3 and source.default_batch_size == 2
    inputs, targets = source.batch(torch.tensor([0, 2]))
    torch.testing.assert_close(inputs, x[[3, 7]])


@pytest.mark.parametrize("sampler", [None, "sequential", "shuffle"])
def test_samplers_over_the_whole_data_keep_it_whole(sampler):
    x, y = _xy()
    data = TensorDataset(x, y)
    kwargs = {"sequential": dict(sampler=SequentialSampler(data)), "shuffle": dict(shuffle=True)}.get(sampler, {})
    source = as_data_source(DataLoader(data, batch_size=8, **kwargs))
    assert source.n == 64 and source.tensors is not None  # the fast path


@pytest.mark.parametrize("sampler", [
    lambda d: WeightedRandomSampler([1.0] * len(d), len(d)),
    lambda d: RandomSampler(d, replacement=True),
    lambda d: RandomSampler(d, num_samples=10),
    lambda d: [0, 1, 2],  # any iterable of indices is a sampler to DataLoader
])
def test_samplers_that_reweight_are_refused(sampler):
    data = TensorDataset(*_xy())
    with pytest.raises(ValueError, match="sampler"):
        as_data_source(DataLoader(data, batch_size=4, sampler=sampler(data)))


def test_a_custom_batch_sampler_is_refused():
    class Pairs:
        def __iter__(self):
            yield [0, 1]

        def __len__(self):
            return 1

    with pytest.raises(ValueError, match="batch_sampler"):
        as_data_source(DataLoader(TensorDataset(*_xy()), batch_sampler=Pairs()))


def test_collate_fn_of_a_tensor_dataset_is_used():
    """Issue 14 item 3: the collate_fn was dropped for a TensorDataset (init_loss 0.0201 vs 0.145)."""
    x, y = _xy()

    def scaled(items):  # a user's collate: targets in other units
        xs, ys = zip(*items)
        return torch.stack(xs), 3.0 * torch.stack(ys)

    model = _model()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, collate_fn=scaled)
    result = lh.estimate_llc(model, loader, nn.MSELoss(), **FAST)
    with torch.no_grad():
        expected = float(nn.MSELoss()(model(x), 3.0 * y))
        plain = float(nn.MSELoss()(model(x), y))
    assert result.init_loss == pytest.approx(expected, rel=1e-5) and abs(expected - plain) > 0.1


def test_batch_size_none_with_its_own_collate_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        as_data_source(DataLoader(TensorDataset(*_xy()), batch_size=None, collate_fn=lambda item: item))


# --- what the loss receives ------------------------------------------------------------------


def _seen_by_loss(data):
    seen = []

    def loss_fn(model, batch):
        seen.append(batch)
        inputs = batch if isinstance(batch, torch.Tensor) else batch[0]
        return model(inputs).pow(2).mean()

    lh.estimate_llc(_model(), data, loss_fn, **FAST, batch_size=8)
    return seen[0]


def test_one_tensor_dataset_gives_a_sequence_of_one_tensor_as_torch_does():
    """Issue 14 item 10: torch's collation of TensorDataset(x) gives [x_batch]; so does lambdahat."""
    x, _ = _xy()
    torch_batch = next(iter(DataLoader(TensorDataset(x), batch_size=8)))
    assert isinstance(torch_batch, list) and len(torch_batch) == 1
    for data in (TensorDataset(x), DataLoader(TensorDataset(x), batch_size=8), (x,), [x]):
        batch = _seen_by_loss(data)
        assert isinstance(batch, (tuple, list)) and len(batch) == 1, type(data)
        assert batch[0].shape == (8, 2)


def test_a_bare_tensor_stays_bare():
    x, _ = _xy()
    batch = _seen_by_loss(x)
    assert isinstance(batch, torch.Tensor) and batch.shape == (8, 2)
    source = as_data_source(x)
    assert isinstance(source.all(), torch.Tensor)
    assert isinstance(source.batch(torch.zeros(3, 4, dtype=torch.long)), torch.Tensor)  # stacked chains too


def test_stacked_chains_keep_the_sequence():
    x, _ = _xy()
    batch = as_data_source(TensorDataset(x)).batch(torch.zeros(3, 4, dtype=torch.long))
    assert isinstance(batch, tuple) and batch[0].shape == (3, 4, 2)


def test_meta_tensors_are_refused():
    with pytest.raises(ValueError, match="meta"):
        as_data_source((torch.empty(4, 2, device="meta"), torch.empty(4, 1, device="meta")))


# --- Hugging Face datasets ----------------------------------------------------------------------


def _token_rows(n=24, t=9, vocab=20):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(3))


def test_a_hugging_face_dataset_is_read_through_its_input_ids():
    """A datasets.Dataset with input_ids gives the same run as the (n, T) tensor of its ids."""
    datasets = pytest.importorskip("datasets")
    from lambdahat.models import TinyTransformer

    rows = _token_rows()
    table = datasets.Dataset.from_dict({"input_ids": rows.tolist(), "text": [f"row {i}" for i in range(len(rows))],
                                        "attention_mask": torch.ones_like(rows).tolist()})
    source = as_data_source(table)
    assert source.n == 24 and source.bare and torch.equal(source.all(), rows)
    torch.manual_seed(0)
    model = TinyTransformer(vocab_size=20, d_model=8, n_layers=1, n_heads=2, seq_len=8)
    settings = dict(step_size=1e-4, localization=10.0, nbeta=20.0, num_chains=2, num_draws=10, num_burnin_steps=0,
                    batch_size=8, seed=0, progress=False)
    from_table = lh.estimate_llc(model, table, lh.losses.next_token, **settings)
    from_tensor = lh.estimate_llc(model, rows, lh.losses.next_token, **settings)
    assert from_table.init_loss == from_tensor.init_loss
    np.testing.assert_array_equal(from_table.trace["loss"], from_tensor.trace["loss"])
    loader = as_data_source(DataLoader(table, batch_size=4, sampler=SubsetRandomSampler(range(10))))
    assert loader.n == 10 and loader.default_batch_size == 4 and torch.equal(loader.all(), rows[:10])


def test_a_hugging_face_dataset_without_usable_input_ids_is_refused():
    datasets = pytest.importorskip("datasets")
    with pytest.raises(ValueError, match="no 'input_ids' column \\(its columns: text, label\\); tokenize it first"):
        as_data_source(datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}))
    with pytest.raises(ValueError, match="one length, got lengths 2..3"):
        as_data_source(datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]]}))
    with pytest.raises(ValueError, match="attention_mask has zeros"):
        as_data_source(datasets.Dataset.from_dict({"input_ids": [[1, 2], [4, 0]], "attention_mask": [[1, 1], [1, 0]]}))
    with pytest.raises(ValueError, match="several splits \\(train\\); pass one"):
        as_data_source(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": [[1, 2]]})}))
    with pytest.raises(ValueError, match="IterableDataset cannot be indexed"):
        as_data_source(datasets.Dataset.from_dict({"input_ids": [[1, 2]]}).to_iterable_dataset())


# --- Trace files ------------------------------------------------------------------------------


def _trace(**config):
    return Trace({"loss": np.arange(6.0).reshape(2, 3)}, 1, [None, np.int64(2)], config)


def test_save_x_writes_x_npz_and_load_x_finds_it(tmp_path):
    written = _trace().save(tmp_path / "x")
    assert written == tmp_path / "x.npz" and written.is_file()
    for name in ("x", "x.npz"):
        loaded = Trace.load(tmp_path / name)
        np.testing.assert_array_equal(loaded["loss"], np.arange(6.0).reshape(2, 3))
        assert loaded.diverged_at == [None, 2]


def test_save_writes_numpy_scalars_as_plain_numbers(tmp_path):
    config = dict(seed=np.int64(3), step_size=np.float32(0.5), ok=np.bool_(True), shape=np.array([2, 3]))
    _trace(**config).save(tmp_path / "t.npz")
    loaded = Trace.load(tmp_path / "t.npz").config
    assert loaded == {"seed": 3, "step_size": 0.5, "ok": True, "shape": [2, 3]}
    assert type(loaded["seed"]) is int


def test_save_is_atomic_on_a_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "t.npz"
    _trace().save(target)
    before = target.read_bytes()

    def full(handle, **arrays):
        handle.write(b"\0" * 50)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez_compressed", full)
    with pytest.raises(OSError, match="No space left"):
        _trace(seed=1).save(target)
    assert target.read_bytes() == before  # the old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npz"]  # no temporary file left


def test_save_names_a_value_it_cannot_write(tmp_path):
    with pytest.raises(TypeError, match="config value"):
        _trace(model=nn.Linear(1, 1)).save(tmp_path / "t")
    assert list(tmp_path.iterdir()) == []
