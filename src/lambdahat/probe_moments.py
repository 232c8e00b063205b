"""Streaming moments of the probe losses: what ``estimate_llc(..., probe=..., probe_store="moments")``
keeps instead of every probed row, so that memory does not grow with the number of draws.

Each probed row is the vector ℓ_t ∈ R^p of the probe's losses at a chain's point (p = m samples, or
m × T positions per token). Per chain, with a fixed shift s (the chain's first probed row) and
d_t = ℓ_t − s, the accumulator keeps, in float64:

- per batch-means atom a (:data:`ATOMS` = 10 blocks and a tail): the count n_a, Σ_a d (p) and Σ_a d²
  (p); and, for weight queries W (r × p), Σ_a (W d) dᵀ (r × p);
- per chain: for index queries Q (q rows of the probe), Σ d_Q dᵀ (q × p; q = p is the full BIF).

The shift makes the one-pass sums about as accurate as the two-pass centred ones of raw storage
(the classical "shifted data" algorithm; Chan, Golub & LeVeque, "Algorithms for computing the sample
variance", Amer. Statist. 37, 1983): Cov = (Σ d_Q dᵀ − N d̄_Q d̄ᵀ)/(N − 1) per chain, and the healthy
chains are pooled exactly, M2 = Σ_c M2_c + Σ_c N_c (μ_c − μ)_Q (μ_c − μ)ᵀ, the same pooled sample
covariance (ddof = 1) that ``lh.bif`` computes from raw rows.

**Batch means with a length known only at the end.** A segment of the chains (one ``advance``) knows
its number of probed rows n in advance, and lays them out as the raw estimator does: blocks =
max(1, min(10, n // 2)) consecutive blocks of n // blocks rows, the remaining rows a tail that
enters the means but not the standard error. A run at fixed settings is one segment, so its
standard errors are those of raw storage to rounding. An adaptive run probes its draws in segments
(blocks of 1,000 steps) and may, at its end, move the first half of its draws into burn-in, at a
segment boundary: so each segment's moments are kept apart until the Trace is built, the segments
before the burn-in dropped exactly, and the remaining segments' blocks merged into 10 consecutive
groups of nearly equal counts. (Doubling blocks of one running accumulator could not drop that
first half exactly.) The price: an adaptive run holds one set of moments per probed 1,000-step
segment, still independent of ``probe_every``.

The estimators from these moments, :func:`lambdahat.bif` and the susceptibilities', are in
:mod:`lambdahat.probe_estimates`.

A chain that diverged has every moment NaN in the Trace (raw storage: its rows from the divergence
on), and is left out of every pooled estimate, as ``trace.diverged`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ProbeMoments", "StreamingMoments", "BLOCKS", "ATOMS", "block_layout"]

#: Batch-means blocks per chain (as the raw estimators use), and the atoms of a segment: the blocks and a tail.
BLOCKS = 10
ATOMS = BLOCKS + 1
#: Rows folded into the sums at once (one matrix product per flush), per chain.
FLUSH_ROWS = 64
PARTIAL = "probe_partial_"  # records of a ChainSet: one set of moments per probed segment
STORED = "probe_moments_"  # the Trace's merged moments (also their names in a saved Trace)


def block_layout(rows: int) -> tuple[int, int]:
    """(blocks, rows per block) of raw batch means for ``rows`` rows: max(1, min(10, rows // 2)) blocks of
    rows // blocks rows; the rows after blocks × size are the tail."""
    blocks = max(1, min(BLOCKS, rows // 2))
    return blocks, rows // blocks


def atom_of_rows(rows: int) -> np.ndarray:
    blocks, size = block_layout(rows)
    r = np.arange(rows)
    return np.where(r < blocks * size, r // max(size, 1), BLOCKS)


class StreamingMoments:
    """The moments of one group of ``width`` chains (one chain, or a vectorised stack), on the
    chains' device, one probed segment at a time: :meth:`begin`, :meth:`add` per row, :meth:`end`."""

    def __init__(self, width: int, size: int, queries: np.ndarray | None, weights: np.ndarray | None,
                 device: torch.device, all_rows: bool = False):
        self.width, self.size, self.device = width, size, device
        self.queries = None if queries is None else torch.as_tensor(queries, dtype=torch.long, device=device)
        self.all_rows = all_rows  # cross products of every row (q = p), no index needed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64, device=device)
        self.shift: Tensor | None = None

    def begin(self, rows: int) -> None:
        k, p = self.width, self.size
        zeros = dict(dtype=torch.float64, device=self.device)
        self.atoms = atom_of_rows(rows)
        self.sum, self.square = torch.zeros(k, ATOMS, p, **zeros), torch.zeros(k, ATOMS, p, **zeros)
        self.wcross = None if self.weights is None else torch.zeros(k, ATOMS, len(self.weights), p, **zeros)
        q = p if self.all_rows else (0 if self.queries is None else len(self.queries))
        self.cross = torch.zeros(k, q, p, **zeros) if q else None
        self.pending: list[Tensor] = []
        self.atom = -1

    def add(self, row: int, losses: Tensor) -> None:
        x = losses.reshape(self.width, self.size).double()
        if self.shift is None:
            self.shift = x.clone()
        atom = int(self.atoms[row])
        if self.pending and (atom != self.atom or len(self.pending) >= FLUSH_ROWS):
            self._flush()
        self.pending.append(x - self.shift)
        self.atom = atom

    def _flush(self) -> None:
        if not self.pending:
            return
        d = torch.stack(self.pending, dim=1)  # (K, b, p)
        a = self.atom
        self.sum[:, a] += d.sum(dim=1)
        self.square[:, a] += (d * d).sum(dim=1)
        if self.wcross is not None:
            self.wcross[:, a] += (d @ self.weights.T).transpose(1, 2) @ d
        if self.cross is not None:
            dq = d if self.all_rows else d[:, :, self.queries]
            self.cross += dq.transpose(1, 2) @ d
        self.pending = []

    def end(self) -> dict[str, np.ndarray]:
        """This segment's moments as numpy arrays with a leading chain axis."""
        self._flush()
        out = {"count": np.broadcast_to(np.bincount(self.atoms, minlength=ATOMS), (self.width, ATOMS)).astype(np.int64),
               "sum": self.sum.cpu().numpy(), "square": self.square.cpu().numpy()}
        if self.wcross is not None:
            out["wcross"] = self.wcross.cpu().numpy()
        if self.cross is not None:
            out["cross"] = self.cross.cpu().numpy()
        return out

    def skipped(self, rows: int) -> dict[str, np.ndarray]:
        """The moments of a segment this group did not run (a chain that had diverged): NaN."""
        self.begin(rows)
        out = self.end()
        return {name: (v if name == "count" else np.full_like(v, np.nan)) for name, v in out.items()}

    def shift_array(self) -> np.ndarray:
        return np.full((self.width, self.size), np.nan) if self.shift is None else self.shift.cpu().numpy()


def partial_records(segments: list[tuple[np.ndarray, dict[str, np.ndarray]]], shift: np.ndarray,
                    weights: np.ndarray | None) -> dict[str, np.ndarray]:
    """A ChainSet's segments [(probed steps, moments)] as records with a leading chain axis:
    ``probe_partial_<name>`` (chain, segment, ...) and ``probe_partial_steps`` (chain, segment, 2)."""
    k = shift.shape[0]
    segments = [(steps, moments) for steps, moments in segments if len(steps)]
    out = {PARTIAL + "shift": shift,
           PARTIAL + "steps": np.broadcast_to(np.array([[s[0], s[-1]] for s, _ in segments], dtype=np.int64)
                                              .reshape(-1, 2), (k, len(segments), 2)).copy()}
    if weights is not None:
        out[PARTIAL + "weights"] = np.broadcast_to(weights, (k, *weights.shape)).copy()
    for name in (segments[0][1] if segments else ("count", "sum", "square")):
        if segments:
            out[PARTIAL + name] = np.stack([m[name] for _, m in segments], axis=1)
        else:
            out[PARTIAL + name] = np.zeros((k, 0, ATOMS) + ((shift.shape[1],) if name != "count" else ()))
    return out


@dataclass
class ProbeMoments:
    """The merged moments of a Trace (see the module): ``count`` (atom,), the rows of each of the
    blocks and, last, the tail; ``sum``, ``square`` (chain, atom, p) of d = ℓ − shift; ``wcross``
    (chain, atom, r, p) for the weight queries ``weights`` (r, p); ``cross`` (chain, q, p) for the
    index queries, ``queries`` (the probe samples, None for all); ``shift`` (chain, p); ``steps``:
    the first and last step probed; ``shape``: the losses of one row, (m,) or (m, T)."""

    count: np.ndarray
    sum: np.ndarray
    square: np.ndarray
    shift: np.ndarray
    steps: np.ndarray
    shape: tuple[int, ...]
    cross: np.ndarray | None = None
    queries: np.ndarray | None = None
    wcross: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def rows(self) -> int:
        """Probed rows per chain."""
        return int(self.count.sum())

    @property
    def nbytes(self) -> int:
        """The bytes the moments hold."""
        return sum(getattr(self, f.name).nbytes for f in fields(self)
                   if isinstance(getattr(self, f.name), np.ndarray))

    def arrays(self) -> dict[str, np.ndarray]:
        """For ``Trace.save``: ``probe_moments_<field>`` arrays."""
        out = {STORED + f.name: np.asarray(getattr(self, f.name)) for f in fields(self)
               if getattr(self, f.name) is not None}
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ProbeMoments:
        values = {name[len(STORED):]: value for name, value in arrays.items()}
        values["shape"] = tuple(int(s) for s in values["shape"])
        return cls(**values)

    @classmethod
    def from_partials(cls, parts: dict[str, np.ndarray], burnin: int, diverged: list[Any],
                      config: dict[str, Any]) -> ProbeMoments:
        """Merge a ChainSet's per-segment moments (``probe_partial_*``): the segments before ``burnin``
        dropped, the blocks of the rest grouped into at most :data:`BLOCKS`, diverged chains NaN."""
        parts = {name[len(PARTIAL):]: np.asarray(value) for name, value in parts.items()}
        steps = parts["steps"][0] if len(parts["steps"]) else np.zeros((0, 2), np.int64)
        straddle = [(int(a), int(b)) for a, b in steps if a < burnin <= b]
        if straddle:
            raise RuntimeError(f"probe_store='moments': burn-in ends at step {burnin}, inside the probed segment "
                               f"{straddle[0]} whose rows were summed together; use probe_store='raw' for this run.")
        kept = [s for s, (a, _) in enumerate(steps) if a >= burnin]
        count = parts["count"][0]  # the same layout for every chain
        blocks, tail = [], []
        for s in kept:
            blocks += [(s, a) for a in range(BLOCKS) if count[s, a] > 0]
            tail.append((s, BLOCKS))
        groups = np.unique(_groups(np.array([count[s, a] for s, a in blocks], dtype=np.int64)),
                           return_inverse=True)[1].reshape(-1).tolist()
        names = [n for n in ("sum", "square", "wcross") if n in parts]
        groups = groups if blocks else []
        merged = {n: np.zeros((parts[n].shape[0], len(set(groups)) + 1, *parts[n].shape[3:])) for n in names}
        counts = np.zeros(len(set(groups)) + 1, dtype=np.int64)
        for (s, a), g in list(zip(blocks, groups)) + [(t, -1) for t in tail]:
            counts[g] += count[s, a]
            for n in names:
                merged[n][:, g] += parts[n][:, s, a]
        cross = parts["cross"][:, kept].sum(axis=1) if "cross" in parts else None
        probe = config.get("probe") or {}
        first = int(steps[kept[0], 0]) if kept else 0
        moments = cls(count=counts, shift=parts["shift"], steps=np.array([first, int(steps[kept[-1], 1]) if kept else -1]),
                      shape=tuple(probe.get("shape") or [parts["shift"].shape[1]]), cross=cross,
                      queries=None if probe.get("queries") is None else np.asarray(probe["queries"], dtype=np.int64),
                      weights=parts["weights"][0] if "weights" in parts else None,
                      **merged)
        bad = [c for c, step in enumerate(diverged) if step is not None]
        return moments.without(bad)

    def without(self, chains: list[int]) -> ProbeMoments:
        """These moments with the given chains' sums NaN (diverged chains)."""
        if not chains:
            return self
        out = {}
        for name in ("sum", "square", "shift", "cross", "wcross"):
            value = getattr(self, name)
            if value is not None:
                value = value.copy()
                value[chains] = np.nan
                out[name] = value
        return replace(self, **out)

    # -- statistics over a set of chains ------------------------------------------------------------

    def chain_means(self, chains: list[int]) -> np.ndarray:
        """Each chain's mean loss vector (chain, p), over all its rows."""
        return self.shift[chains] + self.sum[chains].sum(axis=1) / self.rows

    def block_means(self, chains: list[int], name: str = "sum") -> np.ndarray:
        """Each chain's block means of d (or of (W d) dᵀ for ``"wcross"``), (chain × block, ...), tail excluded."""
        values = getattr(self, name)[chains][:, :-1] / self.count[:-1].reshape(1, -1, *[1] * (getattr(self, name).ndim - 2))
        return values.reshape(-1, *values.shape[2:])

    @property
    def query_rows(self) -> np.ndarray:
        """The rows of ℓ (flattened positions) of the index queries: the rows of ``cross``."""
        per = int(np.prod(self.shape[1:]))
        samples = np.arange(self.shape[0]) if self.queries is None else self.queries
        return (samples[:, None] * per + np.arange(per)).reshape(-1)

    def covariance(self, chains: list[int], diagonal: bool = False) -> np.ndarray:
        """The pooled sample covariance (ddof = 1) of the index queries' rows of ℓ with every row,
        (q, p); ``diagonal``: the variance of every row, (p,)."""
        n, mean_c = self.rows, self.sum[chains].sum(axis=1) / self.rows  # d̄ per chain
        mu_c = self.shift[chains] + mean_c
        between = mu_c - mu_c.mean(axis=0)
        if diagonal:
            m2 = (self.square[chains].sum(axis=1) - n * mean_c**2).sum(axis=0) + n * (between**2).sum(axis=0)
            return m2 / (n * len(chains) - 1)
        rows = self.query_rows
        m2 = (self.cross[chains] - n * mean_c[:, rows, None] * mean_c[:, None, :]).sum(axis=0)
        m2 += n * between[:, rows].T @ between
        return m2 / (n * len(chains) - 1)

    def weighted_covariance(self, chains: list[int]) -> np.ndarray:
        """Cov(W ℓ, ℓ), (r, p), pooled as :meth:`covariance`, from the weight queries' moments."""
        n, w = self.rows, self.weights
        mean_c = self.sum[chains].sum(axis=1) / n
        between = self.shift[chains] + mean_c
        between = between - between.mean(axis=0)
        m2 = (self.wcross[chains].sum(axis=1) - n * (mean_c @ w.T)[:, :, None] * mean_c[:, None, :]).sum(axis=0)
        m2 += n * (between @ w.T).T @ between
        return m2 / (n * len(chains) - 1)


def _groups(sizes: np.ndarray) -> list[int]:
    """Consecutive blocks of these row counts into at most BLOCKS groups of nearly equal counts (each
    block to the group of its midpoint); fewer blocks stay as they are."""
    if len(sizes) <= BLOCKS:
        return list(range(len(sizes)))
    mid = np.cumsum(sizes) - sizes / 2
    return np.minimum(BLOCKS - 1, (BLOCKS * mid / sizes.sum()).astype(int)).tolist()


def moment_bytes(num_chains: int, size: int, queries: int, weights: int = 0, segments: int = 1) -> int:
    """Bytes of the moments a run keeps: per chain and segment, ATOMS × (2 + r) × p sums and q × p cross
    products, float64, plus the shift (p) per chain (queries = q, weights = r, size = p)."""
    return 8 * num_chains * (segments * (ATOMS * (2 + weights) * size + queries * size) + size)
