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
    e.g. 10⁴ probe samples in float32, 4 chains, 1000 probed draws: 160 MB.
    """

    data: DataSource
    every: int = 1
    start: int = 0
    batch_size: int = 256
    per_token: bool = False
    tokens: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The losses of one evaluation: (m,) per sample, (m, T) per token."""
        return (self.data.n, self.tokens) if self.per_token else (self.data.n,)

    @property
    def size(self) -> int:
        """The number of losses one evaluation records (m, or m × T per token)."""
        return math.prod(self.shape)

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
        elif not isinstance(values, Tensor) or values.shape != (rows,):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"probe: loss_fn's per-sample form returned {got}, not one loss per probe sample "
                             f"({rows},); its per_sample must return shape (B,).")
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
               start: int = 0, per_token: bool = False) -> Probe:
    """The :class:`Probe` of ``estimate_llc(..., probe=, probe_every=, probe_batch_size=, probe_per_token=)``."""
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
    return Probe(source.to(device), every=int(every), start=int(start),
                 batch_size=int(min(batch_size or default_batch, source.n)), per_token=per_token)


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

    devinterp. The ``bif``/``compute_bif`` of devinterp (read in timaeus-research/devinterp,
    ``src/devinterp/slt/bif.py`` and ``covariance.py``; that this is the code released as 2.0.1
    was not confirmed) return the Pearson correlation of the loss traces by default, +Corr with no
    minus sign, or +Cov (ddof = 1) with ``compute_covariance=True``, per token by default
    (``correlation_method="token"``; ``"sequence"`` averages over positions first), chains
    stacked (``reduce_chain_dimension_method="stack"``, as here). So, for per-sample losses of the
    same draws: devinterp's default = −``bif(result, correlation=True)`` and devinterp's
    ``compute_covariance=True`` = −``bif(result)``.
    """
    trace = getattr(result, "trace", result)
    probe = getattr(trace, "probe", None)
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
