"""Posterior observables: per-sample losses of a probe set while sampling, and the Bayesian
influence function computed from them.

``estimate_llc(model, data, loss_fn, probe=probe_data, probe_every=k)`` evaluates, every k-th
draw of every chain, the per-sample loss ℓ_i(w_t) of each of the m samples of ``probe_data`` at
the chain's current point w_t, and stores them in ``result.trace.probe``, shaped
(chain, draw, sample), with ``result.trace.probe_steps`` the step each row comes from. From those
:func:`bif` gives the Bayesian influence function of the probe samples on each other.

The per-sample form of ``loss_fn`` is described in :mod:`lambdahat.losses`. The probe is evaluated
in the model's sampling mode (eval mode unless ``train_mode=True``) with the torch random state
forked, so a run with a probe has exactly the chains (batches, noise, losses) of the same run
without one; the probe's forward passes are not counted in ``gradient_evaluations``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import DataSource, as_data_source
from .losses import make_per_sample_loss, make_per_token_loss

__all__ = ["Probe", "bif"]


@dataclass
class Probe:
    """A fixed probe set whose per-sample losses the chains record while they sample.

    ``every``: evaluate after every ``every``-th step, counting from step ``start`` (the first
    draw when the burn-in length is known in advance; 0 in the adaptive run, whose burn-in is only
    known at its end: the rows of the warm-up are then computed and dropped). ``batch_size``: the
    probe is evaluated in chunks of this many samples, so one evaluation costs
    ceil(m / batch_size) forward passes per chain and holds one chunk's activations at a time.

    ``per_token``: record the loss of every position of every sample (``loss_fn.per_token``, see
    :mod:`lambdahat.losses`) instead of each sample's mean; ``tokens`` (T) is read off the first
    chunk by :meth:`check`.

    Storage: :attr:`size` = m (or m × T per token) × (bytes of the loss's dtype: 4 for float32, 8
    for float64) per chain per probed draw, plus 8 bytes for the step number of each probed draw;
    e.g. 10⁴ probe samples in float32, 4 chains, 1000 probed draws: 160 MB. ``store="moments"``
    keeps streaming moments instead (:mod:`lambdahat.probe_moments`), of the index ``queries`` (None:
    all samples) or of the weight queries ``weights``, whose size does not grow with the draws.
    """

    data: DataSource
    every: int = 1
    start: int = 0
    batch_size: int = 256
    per_token: bool = False
    tokens: int | None = None
    #: "raw": every probed row; "moments": streaming moments (:mod:`lambdahat.probe_moments`)
    store: str = "raw"
    #: moments: the index queries (probe samples; None: all of them, unless ``weights`` is given)
    queries: np.ndarray | None = None
    #: moments: weight queries, (r, m) (per token also (r, m, T)), instead of index queries
    weights: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The losses of one evaluation: (m,) per sample, (m, T) per token."""
        return (self.data.n, self.tokens) if self.per_token else (self.data.n,)

    @property
    def size(self) -> int:
        """The number of losses one evaluation records (m, or m × T per token)."""
        return math.prod(self.shape)

    @property
    def query_rows(self) -> np.ndarray | None:
        """The flattened positions of the index queries (None: every row, or weight queries only)."""
        if self.queries is None:
            return None
        per = self.size // self.data.n
        return (self.queries[:, None] * per + np.arange(per)).reshape(-1)

    @property
    def moment_weights(self) -> np.ndarray | None:
        """The weight queries over the flattened row, (r, size): per token, a weight per sample is spread
        evenly over its positions (the weight of the sample's mean loss)."""
        if self.weights is None:
            return None
        w = np.asarray(self.weights, dtype=np.float64)
        if self.per_token and w.ndim == 2:
            w = np.repeat(w[:, :, None] / self.tokens, self.tokens, axis=2)
        return w.reshape(len(w), -1)

    def schedule(self, first: int, count: int) -> np.ndarray:
        """The offsets t in [0, count) of the steps first + t after which the probe is evaluated."""
        steps = np.arange(first, first + count)
        keep = (steps >= self.start) & ((steps - self.start + 1) % self.every == 0)
        return (steps[keep] - first).astype(np.int64)

    def evaluator(self, potential: Any, model: Any, loss_fn: Callable[..., Tensor]) -> Callable[[Tensor], Tensor]:
        """``losses(w)``: the m per-sample losses at w, shape (m,) for w of shape (d,) and (K, m)
        for (K, d). Its chunks are collated once, here."""
        per_sample = self._loss(model, loss_fn)
        m = self.data.n
        chunks = [self.data.batch(torch.arange(i, min(i + self.batch_size, m))) for i in range(0, m, self.batch_size)]

        def losses(w: Tensor) -> Tensor:
            with torch.no_grad():
                rows = [torch.cat([per_sample(potential.tensors(v), chunk).reshape(-1) for chunk in chunks])
                        for v in w.reshape(-1, w.shape[-1])]
            return rows[0] if w.dim() == 1 else torch.stack(rows)

        return losses

    def _loss(self, model: Any, loss_fn: Callable[..., Tensor]) -> Callable[[dict[str, Tensor], Any], Tensor]:
        return make_per_token_loss(model, loss_fn) if self.per_token else make_per_sample_loss(model, loss_fn)

    def check(self, potential: Any, model: Any, loss_fn: Callable[..., Tensor], data: DataSource) -> None:
        """Raise a clear error, before any sampling, when the probe does not fit the model or the
        data, or ``loss_fn`` has no per-sample (per-token) form; a per-token probe learns T here."""
        check_compatible(self.data, data)
        chunk = self.data.batch(torch.arange(min(self.batch_size, self.data.n)))
        per_sample = self._loss(model, loss_fn)
        tensors = potential.tensors(potential.w_star)
        with torch.no_grad():
            try:
                batch_loss = potential.loss(potential.w_star, chunk)
            except Exception as err:
                raise ValueError(
                    f"probe: the model cannot be evaluated on the probe data ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:300]}); give probe in the form of data, with samples of the same shape."
                ) from None
            try:
                values = per_sample(tensors, chunk)
            except Exception as err:
                raise ValueError(
                    f"probe: loss_fn has no per-sample form: evaluating it on one-sample batches with torch.func.vmap "
                    f"failed ({type(err).__name__}: {str(err).splitlines()[0][:300]}). Give loss_fn a per_sample "
                    "attribute, a function of the same arguments returning the (B,) per-sample losses whose mean is "
                    "the loss (as lambdahat.losses.gaussian_nll.per_sample), or use a loss of lambdahat.losses."
                ) from None
        rows = chunk_size(chunk)
        if self.per_token:
            if not isinstance(values, Tensor) or values.dim() != 2 or values.shape[0] != rows:
                got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
                raise ValueError(f"probe_per_token=True: loss_fn.per_token returned {got}, not (B, T) = ({rows}, T) "
                                 "losses, one per position of each probe sample.")
            self.tokens = int(values.shape[1])
            if self.weights is not None and self.weights.shape[1:] not in ((self.data.n,), self.shape):
                raise ValueError(f"probe_queries: weights of shape {self.weights.shape}, but the probe has "
                                 f"{self.data.n} samples of {self.tokens} positions; give (r, {self.data.n}) or "
                                 f"(r, {self.data.n}, {self.tokens}).")
        elif not isinstance(values, Tensor) or values.shape != (rows,):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"probe: loss_fn's per-sample form returned {got}, not one loss per probe sample "
                             f"({rows},); its per_sample must return shape (B,).")
        if not self.per_token and self.weights is not None and self.weights.ndim != 2:
            raise ValueError(f"probe_queries: weights of shape {self.weights.shape} for a per-sample probe; give "
                             f"(r, {self.data.n}).")
        mean, loss = float(values.double().mean()), float(batch_loss)
        if not math.isfinite(mean) or not math.isclose(mean, loss, rel_tol=1e-4, abs_tol=1e-6 * max(1.0, abs(loss))):
            raise ValueError(
                f"probe: loss_fn has no per-sample form: the mean of its per-sample losses on the probe's first "
                f"{chunk_size(chunk)} samples is {mean:.6g}, but loss_fn on them is {loss:.6g}, so loss_fn is not the "
                "batch mean of a loss of each sample. Give loss_fn a per_sample attribute returning the (B,) "
                "per-sample losses whose mean is the loss, or use a loss of lambdahat.losses."
            )


def chunk_size(batch: Any) -> int:
    """The number of samples in a collated batch (the first leaf's leading dimension)."""
    leaves = torch.utils._pytree.tree_leaves(batch)
    return int(leaves[0].shape[0]) if leaves and isinstance(leaves[0], Tensor) else 0


def check_compatible(probe: DataSource, data: DataSource) -> None:
    """In-memory probe and data: the same number of tensors, each sample of the same shape and kind."""
    if probe.tensors is None or data.tensors is None:
        return
    if len(probe.tensors) != len(data.tensors) or probe.bare != data.bare:
        raise ValueError(f"probe: {len(probe.tensors)} tensor(s) but data has {len(data.tensors)}; give probe in the "
                         "form of data (e.g. (inputs, targets)).")
    for k, (p, d) in enumerate(zip(probe.tensors, data.tensors)):
        if p.shape[1:] != d.shape[1:] or p.dtype.is_floating_point != d.dtype.is_floating_point:
            raise ValueError(
                f"probe: tensor {k} has samples of shape {tuple(p.shape[1:])} ({p.dtype}), but the data's are "
                f"{tuple(d.shape[1:])} ({d.dtype}); the probe's samples must have the data's shape."
            )


def make_probe(probe: Any, every: int, batch_size: int | None, default_batch: int, device: torch.device,
               start: int = 0, per_token: bool = False, store: str = "raw", queries: Any = None) -> Probe:
    """The :class:`Probe` of ``estimate_llc(..., probe=, probe_every=, probe_batch_size=, probe_per_token=,
    probe_store=, probe_queries=)``."""
    check_store(store, queries)
    if not isinstance(per_token, bool):
        raise ValueError(f"probe_per_token must be True or False, got {per_token!r}.")
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"probe_every must be a positive integer (evaluate the probe every k-th draw), got {every!r}.")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"probe_batch_size must be a positive integer or None, got {batch_size!r}.")
    try:
        source = as_data_source(probe)
    except (TypeError, ValueError) as err:
        raise ValueError(f"probe: {err}") from None
    index, weights = _queries(queries, source.n) if store == "moments" else (None, None)
    return Probe(source.to(device), every=int(every), start=int(start),
                 batch_size=int(min(batch_size or default_batch, source.n)), per_token=per_token, store=store,
                 queries=index, weights=weights)


PROBE_STORES = ("raw", "moments")


def check_store(store: Any, queries: Any) -> None:
    """``probe_store`` and ``probe_queries`` that cannot work, as an error naming them."""
    if not isinstance(store, str) or store not in PROBE_STORES:
        raise ValueError(f"probe_store must be one of {PROBE_STORES} (every probed row, or streaming moments whose "
                         f"memory does not grow with the draws), got {store!r}.")
    if store == "raw" and queries is not None:
        raise ValueError("probe_queries chooses the rows whose cross-products probe_store='moments' keeps; raw storage "
                         "keeps every row: pass probe_store='moments', or drop probe_queries (and select with "
                         "lh.bif(result, samples=...)).")


def _queries(queries: Any, m: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``probe_queries`` as (index queries, weight queries): None; indices of probe samples; or a float
    array (r, m) (per token also (r, m, T)) of weights, r linear combinations of the probe losses."""
    if queries is None:
        return None, None
    try:
        values = np.asarray(queries)
    except Exception:
        values = np.asarray([], dtype=object)
    if values.dtype.kind in "iu" and values.ndim == 1 and len(values):
        if values.min() < 0 or values.max() >= m:
            raise ValueError(f"probe_queries: indices must be probe samples 0..{m - 1}, got {values.min()}..{values.max()}.")
        return values.astype(np.int64), None
    if values.dtype.kind == "f" and values.ndim in (2, 3) and len(values) and values.shape[1] == m \
            and np.isfinite(values).all():
        return None, values.astype(np.float64)
    raise ValueError(f"probe_queries must be None (all {m} probe samples), a non-empty 1-D array of probe sample "
                     f"indices (0..{m - 1}), or a finite float array of weights shaped (r, {m}) (per token also "
                     f"(r, {m}, T)); got {queries!r}"[:400] + ".")


def bif(result: Any, *, correlation: bool = False, per_token: bool | None = None, samples: Any = None) -> np.ndarray:
    """The Bayesian influence function of the probe samples on each other, an (m, m) array.

    BIF(z_i, z_j) = −Cov_w(ℓ_i(w), ℓ_j(w)), the covariance over the localised tempered posterior
    p(w) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²) of the per-sample losses of probe samples i and j,
    estimated from ``result.trace.probe`` (``estimate_llc(..., probe=...)``): the draws of the
    chains that did not diverge, pooled (one sample covariance around the pooled mean, ddof = 1).
    ``correlation=True`` gives −Corr(ℓ_i, ℓ_j) instead (−1 on the diagonal; NaN where a loss does
    not vary). ``result`` is an :class:`~lambdahat.estimate.LLCResult` or a
    :class:`~lambdahat.trace.Trace`.

    Per token (a probe recorded with ``probe_per_token=True``, losses (chain, draw, m, T)): the
    BIF between every pair of positions, an (m, T, m, T) array, so ``bif(r)[a, :, b, :]`` is the
    T × T token-pair block of sequences a and b; ``per_token=False`` averages each sequence's
    losses over its positions first and gives the (m, m) per-sample BIF. ``samples`` (indices
    into the probe) restricts both sides to those samples, which bounds the memory of the
    per-token array, (m T)² × 8 bytes.

    Sign and scale. This is the local BIF of Kreer et al., "Bayesian Influence Functions for
    Hessian-Free Data Attribution", arXiv 2509.26544: BIF(z_i, φ) = −Cov_γ(ℓ_i(w), φ(w)) with the
    observable φ = ℓ_j, at the posterior's own nβ and γ, with no further factor: it is
    d/dh E_h[φ] at h = 0 for the posterior up-weighted by z_i, p_h ∝ p · exp(−h ℓ_i). Negative
    values: the two losses rise together under the posterior, and up-weighting z_i lowers the
    expected loss on z_j.
    For a regular model near its minimum, w ≈ N(μ, (nβ H + γ I)⁻¹) with H the Hessian of L_n, so
    −Cov(ℓ_i, ℓ_j) ≈ −∇ℓ_iᵀ (nβ H + γ I)⁻¹ ∇ℓ_j: the classical influence function scaled by
    1/(nβ) (when γ ≪ nβ H); the covariance shrinks as 1/(nβ), the correlation does not.

    Streaming moments (``estimate_llc(..., probe_store="moments", probe_queries=Q)``): the same pooled
    covariance from the moments (:mod:`lambdahat.probe_moments`), with the rows restricted to the
    queries: (q, m) (per token (q, T, m, T)) for index queries Q, which is (m, m) as from raw rows when
    Q is None; (r, m) (per token (r, m, T)), −Cov(w_k·ℓ, ℓ_j), for weight queries. ``samples`` must
    then be among Q; ``correlation=True`` with ``per_token=False`` needs the pool's samples among Q.

    devinterp 2.0.1. Its ``bif``/``compute_bif`` (read in the released source) return the Pearson
    correlation of the loss traces by default, +Corr with no minus sign, or +Cov (ddof = 1) with
    ``compute_covariance=True``, per token by default (``correlation_method="token"``, axes
    (batch₁, batch₂, position₁, position₂); ``"sequence"`` averages over positions first), chains
    stacked (``reduce_chain_dimension_method="stack"``, as here), and index an observable's
    sequences in its own shuffled order. So, on the same draws: devinterp's ``"sequence"``
    correlation = −``bif(result, correlation=True, per_token=False)``, its covariance =
    −``bif(result, per_token=False)`` (both ddof = 1), and per token
    ``bif(result)[a, s, b, t]`` = −devinterp[a, b, s, t]; measured to agree to 6e-16 on the same
    draws (``benchmarks/compare_observables.py``).
    """
    trace = getattr(result, "trace", result)
    probe = getattr(trace, "probe", None)
    moments = getattr(trace, "probe_moments", None)
    if probe is None and moments is not None:
        from .probe_estimates import healthy_moments, moments_bif

        moments, chains = healthy_moments(trace, "bif", "the covariance")
        return moments_bif(moments, chains, correlation=correlation, per_token=per_token, samples=samples)
    if probe is None:
        raise ValueError("bif: the result has no probe losses; run estimate_llc(model, data, loss_fn, probe=probe_data) "
                         "(the probe is evaluated while sampling and stored in result.trace.probe).")
    healthy = trace.healthy_chains
    if not healthy:
        raise ValueError("bif: every chain diverged, so there are no posterior draws; lower step_size or raise "
                         "localization.")
    losses = np.asarray(probe, dtype=np.float64)[healthy]
    if samples is not None:
        try:
            losses = losses[:, :, np.asarray(samples, dtype=np.int64).reshape(-1)]
        except (IndexError, TypeError, ValueError):
            raise ValueError(f"bif: samples must be indices of probe samples (0..{probe.shape[2] - 1}), "
                             f"got {samples!r}.") from None
    if per_token is True and losses.ndim == 3:
        raise ValueError("bif: per_token=True needs a probe recorded per token; run estimate_llc(..., probe=..., "
                         "probe_per_token=True) with a loss that has a per_token form (lambdahat.losses.next_token).")
    if per_token is False and losses.ndim == 4:
        losses = losses.mean(axis=3)
    shape = losses.shape[2:]
    losses = losses.reshape(-1, math.prod(shape))
    if losses.shape[0] < 2:
        raise ValueError(f"bif: {losses.shape[0]} probed draw(s); the covariance needs at least 2 (more draws, or a "
                         "smaller probe_every).")
    centred = losses - losses.mean(axis=0)
    cov = centred.T @ centred / (losses.shape[0] - 1)
    if correlation:
        sd = np.sqrt(np.diag(cov))
        with np.errstate(divide="ignore", invalid="ignore"):
            cov = cov / np.outer(sd, sd)
    return -cov.reshape(*shape, *shape)
