"""Batches for the sampler: per-chain independent random minibatches and the full data in order.

In-memory tensors take a fast path: a batch is ``tensor.index_select(0, idx)`` for every tensor,
with no per-item collation. A ``Dataset`` (or a ``DataLoader``'s dataset and ``collate_fn``) is
read item by item and collated, as a ``DataLoader`` would.

What the loss receives follows torch's convention: a bare tensor given as the data stays a bare
tensor; a ``TensorDataset`` (or a sequence of tensors) of k tensors gives a sequence of k batch
tensors, so a one-tensor ``TensorDataset(x)`` gives ``(x_batch,)`` as torch's collation gives
``[x_batch]``. From a ``DataLoader`` lambdahat takes the dataset, the batch size, the
``collate_fn`` (a custom one is used for every batch, also over a ``TensorDataset``) and the
samples its sampler selects: a ``SubsetRandomSampler`` restricts the data to its indices (n is
the subset's size), a ``SequentialSampler`` or a ``RandomSampler`` without replacement covers
the whole dataset. A Hugging Face ``datasets.Dataset`` (or a DataLoader over one) is read through
its ``input_ids`` column, rows of one length, as a (n, T) tensor: the loss receives a bare tensor
of token ids, as for a bare tensor given as the data (``lambdahat.losses.next_token``). Samplers that re-weight or repeat samples (``WeightedRandomSampler``, a
``RandomSampler`` with replacement, custom samplers and batch samplers) are refused with an
error: the estimator draws its own uniform minibatches, because the LLC is defined on the
empirical loss L_n over n samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    TensorDataset,
    default_collate,
    default_convert,
)

__all__ = ["DataSource", "as_data_source", "followed_by"]


class DataSource:
    """Data of size n, either as tensors sharing a first dimension or as a ``Dataset``."""

    def __init__(
        self,
        tensors: Sequence[Tensor] | None = None,
        dataset: Dataset | None = None,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
        default_batch_size: int | None = None,
        bare: bool = False,
    ):
        self.tensors = tuple(tensors) if tensors is not None else None
        # True only for a bare tensor given as the data: batches are then bare tensors too
        self.bare = bool(bare and self.tensors is not None and len(self.tensors) == 1)
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.default_batch_size = default_batch_size
        if self.tensors is not None:
            self.n = int(self.tensors[0].shape[0])
        else:
            try:
                self.n = len(dataset)  # type: ignore[arg-type]
            except TypeError as err:
                raise ValueError(
                    "data: an iterable Dataset without a length is not supported; pass a map-style "
                    "Dataset, a DataLoader over one, or (inputs, targets) tensors."
                ) from err
        if self.n == 0:
            raise ValueError("data is empty: pass at least one sample.")

    def to(self, device: torch.device) -> DataSource:
        if self.tensors is None:
            return self
        return DataSource(tuple(t.to(device) for t in self.tensors), default_batch_size=self.default_batch_size,
                          bare=self.bare)

    def batch(self, idx: Tensor) -> Any:
        """The samples ``idx``; a 2-D ``idx`` (chain, sample) gives every leaf a leading chain
        dimension, for vectorised chains."""
        if idx.dim() == 2:
            if self.tensors is not None:
                flat = idx.reshape(-1)
                parts = tuple(t.index_select(0, flat.to(t.device)).view(*idx.shape, *t.shape[1:]) for t in self.tensors)
                return parts[0] if self.bare else parts
            rows = [self.batch(row) for row in idx]
            return tree_map(lambda *leaves: torch.stack(leaves), rows[0], *rows[1:])
        if self.tensors is not None:
            parts = tuple(t.index_select(0, idx.to(t.device)) for t in self.tensors)
            return parts[0] if self.bare else parts
        return self.collate_fn([self.dataset[int(i)] for i in idx])  # type: ignore[index]

    def all(self) -> Any | None:
        """The whole data as one batch, when it is in memory (used for full-batch sampling)."""
        if self.tensors is None:
            return None
        return self.tensors[0] if self.bare else self.tensors

    def minibatches(self, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        """Endless minibatches, each of ``batch_size`` independent uniform draws from the n samples
        (:meth:`random_indices`). With ``batch_size >= n`` every batch is the full data."""
        if batch_size >= self.n:
            full = self.all()
            full_idx = torch.arange(self.n)
            while True:
                yield full if full is not None else self.batch(full_idx)
        for idx in self.minibatch_indices(batch_size, generator):
            yield self.batch(idx)

    def minibatch_indices(self, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
        """The sample indices of :meth:`minibatches`, batch after batch."""
        while True:
            yield self.random_indices(batch_size, generator)

    def random_indices(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``batch_size`` independent uniform draws from 0..n−1 (with replacement): a minibatch whose
        mean loss is unbiased for L_n at any point, with covariance Σ₁ / B for per-sample covariance Σ₁.

        Each step's batch is independent of every earlier one, hence of where the chain is. Batches
        cut from shuffled epochs are not: the chain has just stepped on the epoch's earlier
        batches, fitting their noise, so the rest of the epoch sits higher than average under it,
        and the batch loss SGLD records overstates L_n(w_t). On a noisy 4-weight regression
        (``benchmarks/investigations/epoch_batches.py``) that added +0.20 ± 0.01 to λ̂ ≈ 2.1 (+9%),
        where independent batches added −0.03 ± 0.02; the effect is of the size of the minibatch
        noise bias itself (:mod:`lambdahat.noise`)."""
        return torch.randint(0, self.n, (batch_size,), generator=generator)

    def in_order(self, batch_size: int) -> Iterator[tuple[int, Any]]:
        """The full data once, in order, as (size, batch) pairs."""
        for start in range(0, self.n, batch_size):
            idx = torch.arange(start, min(start + batch_size, self.n))
            yield len(idx), self.batch(idx)


def as_data_source(data: Any) -> DataSource:
    """Accept ``(inputs, targets)`` tensors, a bare tensor, a ``Dataset``, a ``DataLoader`` or a
    Hugging Face ``datasets.Dataset`` with an ``input_ids`` column."""
    if isinstance(data, DataSource):
        return data
    if _is_hf(data):
        return _from_hf(data)
    if isinstance(data, DataLoader):
        return _from_loader(data)
    if isinstance(data, TensorDataset):
        return _from_tensors(data.tensors)
    if isinstance(data, Tensor):
        return _from_tensors((data,), bare=True)
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        return _from_tensors(tuple(data))
    if isinstance(data, IterableDataset):
        raise ValueError(_ITERABLE)
    if isinstance(data, Dataset):
        return DataSource(dataset=data)
    raise TypeError(
        f"data must be an (inputs, targets) pair of tensors, a torch Dataset or a DataLoader; "
        f"got {type(data).__name__}."
    )


_ITERABLE = ("data: an IterableDataset cannot be indexed, and the sampler needs random minibatches of a "
             "fixed set of n samples; pass a map-style Dataset, or the samples as (inputs, targets) tensors.")


class _Items(Dataset):
    """The samples of a DataSource (those of ``index``, or all), item by item."""

    def __init__(self, source: DataSource, index: Tensor | None = None):
        self.source, self.index = source, index

    def __len__(self) -> int:
        return self.source.n if self.index is None else len(self.index)

    def __getitem__(self, i: int) -> Any:
        j = int(i if self.index is None else self.index[i])
        if self.source.tensors is None:
            return self.source.dataset[j]  # type: ignore[index]
        items = tuple(t[j] for t in self.source.tensors)
        return items[0] if self.source.bare else items


def followed_by(first: DataSource, data: DataSource, index: Tensor) -> DataSource:
    """The samples of ``first`` followed by those of ``data`` at ``index``, as one source (a probe set
    and its reference samples, for :mod:`lambdahat.susceptibility`)."""
    if first.tensors is not None and data.tensors is not None:
        tensors = tuple(torch.cat([p.to(device=d.device, dtype=d.dtype), d.index_select(0, index.to(d.device))])
                        for p, d in zip(first.tensors, data.tensors))
        return DataSource(tensors, bare=data.bare)
    return DataSource(dataset=ConcatDataset([_Items(first), _Items(data, index)]), collate_fn=data.collate_fn)


def _from_loader(loader: DataLoader) -> DataSource:
    """The samples a DataLoader would draw from, with its batch size and collate_fn."""
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        raise ValueError(_ITERABLE)
    sampler, batch_size = loader.sampler, loader.batch_size
    if loader.batch_sampler is None:  # automatic batching off (batch_size=None): collate_fn sees single samples
        if loader.collate_fn is not default_convert:
            raise ValueError(
                "data: a DataLoader with batch_size=None applies its collate_fn to single samples, but the "
                "sampler needs minibatches; give the DataLoader a batch_size (its collate_fn then collates them)."
            )
        collate_fn = default_collate
    else:
        if type(loader.batch_sampler) is not BatchSampler:
            raise ValueError(
                f"data: the DataLoader's batch_sampler ({type(loader.batch_sampler).__name__}) decides which samples "
                "form a batch, but lambdahat draws its own uniform minibatches of a fixed size; pass the dataset "
                "(or a torch.utils.data.Subset of it) with batch_size instead."
            )
        sampler, batch_size = loader.batch_sampler.sampler, loader.batch_sampler.batch_size
        collate_fn = loader.collate_fn or default_collate
    indices = _sampler_indices(sampler, len(dataset))
    if _is_hf(dataset) and collate_fn is default_collate:
        source = _from_hf(dataset if indices is None else dataset.select(indices))
        source.default_batch_size = batch_size
        return source
    if isinstance(dataset, TensorDataset) and collate_fn is default_collate:
        tensors = dataset.tensors
        if indices is not None:
            index = torch.as_tensor(indices, dtype=torch.long)
            tensors = tuple(t.index_select(0, index.to(t.device)) for t in tensors)
        source = _from_tensors(tensors)
    else:
        source = DataSource(dataset=dataset if indices is None else Subset(dataset, indices), collate_fn=collate_fn)
    source.default_batch_size = batch_size
    return source


def _sampler_indices(sampler: Any, n: int) -> list[int] | None:
    """The sample indices a sampler selects (None: all n, each once), or a ValueError."""
    if isinstance(sampler, SequentialSampler):
        return None
    if isinstance(sampler, RandomSampler) and not sampler.replacement and sampler.num_samples == n:
        return None
    if isinstance(sampler, SubsetRandomSampler):
        indices = [int(i) for i in sampler.indices]
        if not indices:
            raise ValueError("data: the DataLoader's SubsetRandomSampler selects no samples; give it at least one index.")
        if min(indices) < 0 or max(indices) >= n:
            raise ValueError(f"data: the DataLoader's SubsetRandomSampler has indices outside 0..{n - 1}.")
        return indices
    raise ValueError(
        f"data: the DataLoader's sampler ({type(sampler).__name__}) changes which samples are drawn or how often, "
        "but lambdahat draws its own uniform minibatches (the LLC is defined on the empirical loss over n samples) "
        "and cannot honour it; pass the samples you mean as a torch.utils.data.Subset of the dataset, or use "
        "a SubsetRandomSampler."
    )


def _is_hf(data: Any) -> bool:
    """A Hugging Face ``datasets`` object, recognised without importing ``datasets``."""
    return type(data).__module__.split(".")[0] == "datasets"


def _from_hf(data: Any) -> DataSource:
    """The ``input_ids`` column of a Hugging Face ``datasets.Dataset`` as one (n, T) tensor."""
    kind = type(data).__name__
    if kind in ("DatasetDict", "IterableDatasetDict"):
        raise ValueError(f"data: a {kind} holds several splits ({', '.join(map(str, data))}); pass one, e.g. data['train'].")
    if not hasattr(data, "column_names") or not hasattr(data, "with_format") or kind == "IterableDataset":
        raise ValueError(_ITERABLE if kind == "IterableDataset" else
                         f"data: a Hugging Face {kind} is not supported; pass a datasets.Dataset with an input_ids column.")
    columns = list(data.column_names)
    if "input_ids" not in columns:
        raise ValueError(
            f"data: the Hugging Face Dataset has no 'input_ids' column (its columns: {', '.join(columns) or 'none'}); "
            "tokenize it first, e.g. dataset.map(lambda rows: tokenizer(rows['text']), batched=True), and cut the "
            "token ids into rows of one length (lambdahat.datafiles.token_windows does this for one long sequence)."
        )
    if len(data) == 0:
        raise ValueError("data is empty: pass at least one sample.")
    ids = data.with_format("torch", columns=["input_ids"])[:]["input_ids"]
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        lengths = sorted({len(row) if hasattr(row, "__len__") else 0 for row in data["input_ids"]})
        raise ValueError(
            f"data: the rows of the Dataset's input_ids must be sequences of one length, got lengths "
            f"{lengths[0]}..{lengths[-1]}; cut the token ids into windows of one length (e.g. concatenate and chunk "
            "them, or lambdahat.datafiles.token_windows), rather than padding: padded positions would count as tokens."
        )
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"data: the Dataset's input_ids must be integer token ids, got {ids.dtype}.")
    if "attention_mask" in columns:
        attention = data.with_format("torch", columns=["attention_mask"])[:]["attention_mask"]
        if isinstance(attention, Tensor) and not bool((attention != 0).all()):
            raise ValueError(
                "data: the Dataset's attention_mask has zeros (padding), but the loss sees input_ids only and would "
                "count padded positions as tokens; drop the padded rows, or cut the ids into full windows of one length."
            )
    return _from_tensors((ids.long(),), bare=True)


def _from_tensors(tensors: Sequence[Tensor], bare: bool = False) -> DataSource:
    sizes = [int(t.shape[0]) if t.dim() > 0 else -1 for t in tensors]
    if any(s != sizes[0] for s in sizes) or sizes[0] < 0:
        raise ValueError(
            f"data: the tensors must share their first (sample) dimension, got sizes {sizes}; "
            "pass inputs and targets with one row per sample."
        )
    if any(t.is_meta for t in tensors):
        raise ValueError(
            "data: a tensor is on the meta device, which holds shapes but no values; load the real data "
            "(e.g. on 'cpu') before estimating."
        )
    return DataSource(tensors=tensors, bare=bare)
