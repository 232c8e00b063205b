"""The Bayesian influence function and the susceptibilities from streaming probe moments
(:mod:`lambdahat.probe_moments`), equal to the estimates from raw probe rows up to float64 rounding.

BIF (Kreer et al., arXiv 2509.26544): −Cov(ℓ_Q, ℓ) over the pooled draws of the healthy chains, from
:meth:`~lambdahat.probe_moments.ProbeMoments.covariance`. Susceptibilities (Baker et al., arXiv
2504.18274, App. C.4): χ_C(z) = −(E_C[φ ΔL_z] − E_C[φ] E_full[ΔL_z]) with φ = L̄ − L̄(w*), ΔL_z = ℓ_z − L̄,
every term a linear function of the moments kept with one weight query, L̄ = a·ℓ, per batch-means
block; the standard error by the delta method and batch means, as for raw rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .probe_moments import ProbeMoments

__all__ = ["moments_bif", "moments_susceptibility", "healthy_moments", "reference_weights"]


def healthy_moments(trace: Any, which: str, need: str) -> tuple[ProbeMoments, list[int]]:
    """A trace's moments and its healthy chains, or the error of a run with no draws to use."""
    if not trace.healthy_chains:
        raise ValueError(f"{which}: every chain diverged, so there are no posterior draws; lower step_size or raise "
                         "localization.")
    moments = trace.probe_moments
    if moments.rows < 2:
        raise ValueError(f"{which}: {moments.rows} probed draw(s); {need} needs at least 2 (more draws, or a smaller "
                         "probe_every).")
    return moments, trace.healthy_chains


def reference_weights(m: int, references: int) -> np.ndarray:
    """The weight query of L̄ over a probe of m probe samples and then ``references`` reference samples."""
    weights = np.zeros((1, m + references))
    weights[0, m:] = 1.0 / references
    return weights


def moments_bif(moments: ProbeMoments, chains: list[int], *, correlation: bool, per_token: bool | None,
                samples: Any) -> np.ndarray:
    """:func:`lambdahat.bif` from moments: −Cov (or −Corr) of the queries (index queries: (q, m) or
    (q, T, m, T); weight queries: (r, m) or (r, m, T)) with every probe sample, from the pooled moments of
    ``chains``. ``samples`` restricts both sides to index queries; see :func:`lambdahat.bif`."""
    shape = moments.shape
    tokens = len(shape) == 2
    if per_token is True and not tokens:
        raise ValueError("bif: per_token=True needs a probe recorded per token; run estimate_llc(..., probe=..., "
                         "probe_per_token=True) with a loss that has a per_token form (lambdahat.losses.next_token).")
    flat = per_token is False and tokens
    if moments.weights is not None:
        if samples is not None:
            raise ValueError("bif: samples selects index queries, but this probe kept weight queries "
                             "(probe_queries as weights); run with probe_queries=indices, or probe_store='raw'.")
        cov = moments.weighted_covariance(chains).reshape(-1, *shape)
        left = np.einsum("rp,rp->r", cov.reshape(len(cov), -1), moments.weights)  # Var(w ℓ)
        if flat:
            cov = cov.mean(axis=2)
        if correlation:
            pool = _pool_variance(moments, chains, flat, None)
            with np.errstate(divide="ignore", invalid="ignore"):
                cov = cov / np.sqrt(left.reshape(-1, *[1] * (cov.ndim - 1)) * pool)
        return -cov
    queries = np.arange(shape[0]) if moments.queries is None else moments.queries
    cov = moments.covariance(chains).reshape(len(queries), *shape[1:], *shape)
    left, pool = np.arange(len(queries)), np.arange(shape[0])
    if samples is not None:
        try:
            pool = np.arange(shape[0])[np.asarray(samples, dtype=np.int64).reshape(-1)]
        except (IndexError, TypeError, ValueError):
            raise ValueError(f"bif: samples must be indices of probe samples (0..{shape[0] - 1}), got {samples!r}.") from None
        where = {int(q): k for k, q in enumerate(queries)}
        missing = [int(s) for s in pool if int(s) not in where]
        if missing:
            raise ValueError(f"bif: samples {missing} are not among the probe_queries this run kept "
                             f"({queries.tolist()}); run with those samples in probe_queries, or probe_store='raw'.")
        left = np.array([where[int(s)] for s in pool], dtype=np.int64)
    cov = cov[left][(slice(None),) * (1 + tokens) + (pool,)]
    if flat:
        cov = cov.mean(axis=(1, 3))
    if correlation:
        sd_left = np.sqrt(_pool_variance(moments, chains, flat, queries[left]))
        sd_pool = np.sqrt(_pool_variance(moments, chains, flat, pool))
        with np.errstate(divide="ignore", invalid="ignore"):
            cov = cov / np.multiply.outer(sd_left, sd_pool)
    return -cov


def _pool_variance(moments: ProbeMoments, chains: list[int], flat: bool, samples: np.ndarray | None) -> np.ndarray:
    """Var(ℓ) of the given samples (None: all), (k[, T]); ``flat``: of each sample's mean over positions,
    which needs its positions' covariances among the index queries."""
    shape = moments.shape
    samples = np.arange(shape[0]) if samples is None else samples
    if not flat:
        return moments.covariance(chains, diagonal=True).reshape(shape)[samples]
    queries = np.arange(shape[0]) if moments.queries is None else moments.queries
    where = {int(q): k for k, q in enumerate(queries)}
    if moments.weights is not None or any(int(s) not in where for s in samples):
        raise ValueError("bif: correlation=True with per_token=False needs the variance of each sample's mean loss, "
                         "hence the covariances of all its positions: keep those samples in probe_queries "
                         "(probe_queries=None keeps all), or use probe_store='raw'.")
    cov = moments.covariance(chains).reshape(len(queries), *shape[1:], *shape)
    return np.array([cov[where[int(s)], :, int(s), :].mean() for s in samples])


def moments_susceptibility(restricted: ProbeMoments, rc: list[int], full: ProbeMoments, fc: list[int], m: int,
                           reference_loss: float) -> tuple[np.ndarray, np.ndarray]:
    """χ̂ and its standard error (as :func:`lambdahat.susceptibility.susceptibility_from_runs`) from the
    moments of a restricted and a full run whose probe is the m probe samples and then the reference set,
    kept with one weight query a: the reference's mean loss L̄ = a·ℓ. With the shift s and c0 = a·s − L̄(w*),
    φ = c0 + a·d and the mean of φ ℓ over any rows is c0 s + c0 d̄ + (a·d̄) s + mean((a·d) d);
    ΔL = P ℓ with P v = v[:m] − a·v, so mean(φ ΔL) = P mean(φ ℓ)."""
    a = restricted.weights[0]
    shape = restricted.shape
    head = m * int(np.prod(shape[1:]))

    def proj(v: np.ndarray) -> np.ndarray:
        return v[..., :head] - (v @ a)[..., None]

    def phi_terms(mom: ProbeMoments, chains: list[int], blocks: bool) -> tuple[np.ndarray, np.ndarray]:
        s = mom.shift[chains]
        if blocks:
            n = mom.count[:-1][None, :, None]
            d, x = mom.sum[chains][:, :-1] / n, mom.wcross[chains][:, :-1, 0] / n
            s = s[:, None]
        else:
            d, x = mom.sum[chains].sum(axis=1) / mom.rows, mom.wcross[chains][:, :, 0].sum(axis=1) / mom.rows
        c0, ad = (s @ a - reference_loss), d @ a
        return c0 + ad, c0[..., None] * (s + d) + ad[..., None] * s + x  # mean φ, mean φ ℓ

    mean_delta = proj(full.chain_means(fc).mean(axis=0))
    phi, phi_l = phi_terms(restricted, rc, blocks=False)
    chi = -(proj(phi_l) - phi[:, None] * mean_delta).mean(axis=0)
    phi_b, phi_l_b = phi_terms(restricted, rc, blocks=True)
    u_b = (proj(phi_l_b) - phi_b[..., None] * mean_delta).reshape(-1, head)
    delta_b = proj(full.shift[fc][:, None] + full.sum[fc][:, :-1] / full.count[:-1][None, :, None]).reshape(-1, head)
    se = np.sqrt(_var_of_mean(u_b, np.tile(restricted.count[:-1], len(rc)))
                 + float(phi.mean()) ** 2 * _var_of_mean(delta_b, np.tile(full.count[:-1], len(fc))))
    out = (m, *shape[1:])
    return chi.reshape(out), se.reshape(out)


def _var_of_mean(block_means: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Var of the mean by batch means over B blocks of n_b rows: B/(B − 1) Σ_b (n_b/N)² (x̄_b − x̄)², x̄ the
    n-weighted mean; for equal blocks the raw estimators' var(block means, ddof = 1) / B."""
    if len(block_means) < 2:
        return np.full(block_means.shape[1:], np.nan)
    if np.all(sizes == sizes[0]):
        return block_means.var(axis=0, ddof=1) / len(block_means)
    share = (sizes / sizes.sum()).reshape(-1, *[1] * (block_means.ndim - 1))
    centred = block_means - (share * block_means).sum(axis=0)
    return len(block_means) / (len(block_means) - 1) * (share**2 * centred**2).sum(axis=0)
