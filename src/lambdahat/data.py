"""Batches for the sampler: per-chain shuffled minibatches and the full data in order.

In-memory tensors take a fast path: a batch is ``tensor.index_select(0, idx)`` for every tensor,
with no per-item collation. A ``Dataset`` (or a ``DataLoader``'s dataset and ``collate_fn``) is
read item by item and collated, as a ``DataLoader`` would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

__all__ = ["DataSource", "as_data_source"]


class DataSource:
    """Data of size n, either as tensors sharing a first dimension or as a ``Dataset``."""

    def __init__(
        self,
        tensors: Sequence[Tensor] | None = None,
        dataset: Dataset | None = None,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
        default_batch_size: int | None = None,
    ):
        self.tensors = tuple(tensors) if tensors is not None else None
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
        return DataSource(tuple(t.to(device) for t in self.tensors), default_batch_size=self.default_batch_size)

    def batch(self, idx: Tensor) -> Any:
        """The samples ``idx``; a 2-D ``idx`` (chain, sample) gives every leaf a leading chain
        dimension, for vectorised chains."""
        if idx.dim() == 2:
            if self.tensors is not None:
                flat = idx.reshape(-1)
                parts = tuple(t.index_select(0, flat.to(t.device)).view(*idx.shape, *t.shape[1:]) for t in self.tensors)
                return parts[0] if len(parts) == 1 else parts
            rows = [self.batch(row) for row in idx]
            return tree_map(lambda *leaves: torch.stack(leaves), rows[0], *rows[1:])
        if self.tensors is not None:
            parts = tuple(t.index_select(0, idx.to(t.device)) for t in self.tensors)
            return parts[0] if len(parts) == 1 else parts
        return self.collate_fn([self.dataset[int(i)] for i in idx])  # type: ignore[index]

    def all(self) -> Any | None:
        """The whole data as one batch, when it is in memory (used for full-batch sampling)."""
        if self.tensors is None:
            return None
        return self.tensors[0] if len(self.tensors) == 1 else self.tensors

    def minibatches(self, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        """Endless minibatches of ``batch_size`` from a fresh random permutation each epoch.

        An epoch's last incomplete batch is dropped, so every batch mean is an unbiased estimate
        of L_n. With ``batch_size >= n`` every batch is the full data.
        """
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
            perm = torch.randperm(self.n, generator=generator)
            for start in range(0, self.n - batch_size + 1, batch_size):
                yield perm[start : start + batch_size]

    def in_order(self, batch_size: int) -> Iterator[tuple[int, Any]]:
        """The full data once, in order, as (size, batch) pairs."""
        for start in range(0, self.n, batch_size):
            idx = torch.arange(start, min(start + batch_size, self.n))
            yield len(idx), self.batch(idx)


def as_data_source(data: Any) -> DataSource:
    """Accept ``(inputs, targets)`` tensors, a ``Dataset`` or a ``DataLoader``."""
    if isinstance(data, DataSource):
        return data
    if isinstance(data, DataLoader):
        source = as_data_source(data.dataset)
        source.default_batch_size = data.batch_size
        if source.tensors is None:
            source.collate_fn = data.collate_fn or default_collate
        return source
    if isinstance(data, TensorDataset):
        return _from_tensors(data.tensors)
    if isinstance(data, Tensor):
        return _from_tensors((data,))
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        return _from_tensors(tuple(data))
    if isinstance(data, Dataset):
        return DataSource(dataset=data)
    raise TypeError(
        f"data must be an (inputs, targets) pair of tensors, a torch Dataset or a DataLoader; "
        f"got {type(data).__name__}."
    )


def _from_tensors(tensors: Sequence[Tensor]) -> DataSource:
    sizes = [int(t.shape[0]) if t.dim() > 0 else -1 for t in tensors]
    if any(s != sizes[0] for s in sizes) or sizes[0] < 0:
        raise ValueError(
            f"data: the tensors must share their first (sample) dimension, got sizes {sizes}; "
            "pass inputs and targets with one row per sample."
        )
    return DataSource(tensors=tensors)
