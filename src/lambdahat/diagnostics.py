"""MCMC diagnostics for draws shaped ``(chain, draw)``.

Every function takes anything :func:`numpy.asarray` accepts (a torch tensor is detached and moved
to the CPU first); a 1-D input is one chain. Non-finite draws raise :class:`ValueError`: drop
diverged chains explicitly before asking how well the others mixed. Results are Python floats.

* :func:`rhat`, :func:`ess` ("bulk", "tail", "mean") follow Vehtari, Gelman, Simpson, Carpenter
  & Bürkner (2021), "Rank-normalization, folding, and localization: An improved R-hat for
  assessing convergence of MCMC", Bayesian Analysis 16(2), 667-718 (arXiv 1903.08008), with the
  autocorrelation sum truncated by Geyer's (1992) initial monotone sequence ("Practical Markov
  chain Monte Carlo", Statistical Science 7(4), 473-483) in the form used by Stan; with several
  chains they agree with ``arviz_stats`` to rounding error.
* :func:`integrated_autocorrelation_time` is Sokal's windowed estimator ("Monte Carlo methods in
  statistical mechanics", 1997 lecture notes) as used by emcee (Foreman-Mackey et al. 2013), and
  refuses to answer from chains shorter than ``min_chain_multiple`` times its estimate.

Constant input: there is nothing left to estimate, so :func:`ess` returns the number of draws,
:func:`mcse_mean` returns 0, :func:`integrated_autocorrelation_time` returns 1 and the
autocorrelation of a constant chain is taken as 1 at lag 0 and 0 elsewhere; :func:`rhat` returns
NaN, because the within-chain variance it divides by is zero (the arviz convention).
"""

from __future__ import annotations

import math

import numpy as np
import torch  # only for the inverse normal CDF, torch.special.ndtri (scipy is not a dependency)

__all__ = [
    "ChainTooShortError",
    "autocorrelation",
    "integrated_autocorrelation_time",
    "ess",
    "rhat",
    "mcse_mean",
    "llc_statistics",
]

_MIN_DRAWS = 4
_TAIL_PROB = 0.05


class ChainTooShortError(ValueError):
    """The chains are too short for the requested estimate to be trusted; run them longer."""


def _as_chains(x) -> np.ndarray:
    """Return ``x`` as a float64 array of shape (chain, draw), after checking it."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"expected draws shaped (chain, draw) or (draw,), got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < _MIN_DRAWS:
        raise ValueError(f"need at least one chain of {_MIN_DRAWS} draws, got shape {a.shape}")
    finite = np.isfinite(a)
    if not finite.all():
        bad = sorted({int(c) for c in np.nonzero(~finite.all(axis=1))[0]})
        raise ValueError(
            f"draws contain {int(np.isnan(a).sum())} NaN and {int(np.isinf(a).sum())} infinite "
            f"values (in chains {bad}); drop diverged chains before computing diagnostics"
        )
    return a


def _split(a: np.ndarray) -> np.ndarray:
    """Split each chain into its first and last halves (an odd chain loses its middle draw)."""
    half = a.shape[1] // 2
    return np.concatenate([a[:, :half], a[:, a.shape[1] - half :]], axis=0)


def _autocov(a: np.ndarray) -> np.ndarray:
    """Per-chain autocovariance ``γ_t = (1/N) Σ_{n<N-t} (x_n - x̄)(x_{n+t} - x̄)``, by FFT.

    Zero padding to at least 2N makes the circular correlation equal the linear one.
    """
    n = a.shape[1]
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(a - a.mean(axis=1, keepdims=True), n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def _rank_normalize(a: np.ndarray) -> np.ndarray:
    """Rank-normalize pooled draws (Vehtari et al. 2021, eq. 14).

    ``z = Φ⁻¹((r - 3/8) / (S + 1/4))`` with ``r`` the rank of each draw among all ``S`` draws of all
    chains (ties get their average rank) and the Blom (1958) offset 3/8.
    """
    flat = a.ravel()
    order = np.argsort(flat)
    srt = flat[order]
    first = np.flatnonzero(np.r_[True, srt[1:] != srt[:-1]])  # where each run of ties starts
    last = np.r_[first[1:], flat.size]  # one past where it ends
    group = np.repeat(np.arange(first.size), last - first)
    ranks = np.empty(flat.size)
    ranks[order] = ((first + 1 + last) / 2.0)[group]
    p = torch.from_numpy((ranks - 0.375) / (flat.size + 0.25))
    return torch.special.ndtri(p).numpy().reshape(a.shape)


def _ess(a: np.ndarray) -> float:
    """Multi-chain effective sample size of (already split) chains ``a`` of shape (M, N).

    Vehtari et al. (2021), eqs. 10-13: with ``W`` the mean within-chain variance, ``B/N`` the
    variance of the chain means and ``var⁺ = (N-1)/N W + B/N``, the combined autocorrelation is
    ``ρ̂_t = 1 - (W - (1/M) Σ_m γ_{t,m}) / var⁺`` (``γ_{t,m}`` the autocovariance of chain m, as
    in Stan). Geyer's initial monotone sequence: with pair sums ``P_k = ρ̂_{2k} + ρ̂_{2k+1}``, keep
    ``P_0 .. P_{K-1}`` before the first ``P_K <= 0`` (pairs with lags up to N-2 are examined; if
    none is <= 0, K is the last of them),
    replace them by their running minimum ``P̃_k`` and take
    ``τ̂ = -1 + 2 Σ_{k<K} P̃_k + max(ρ̂_{2K}, 0)``; the last term is Stan's refinement of the
    truncation. ``τ̂`` is bounded below by ``1/log10(MN)`` (ESS at most ``MN log10(MN)``, as in
    Stan), and ``ESS = MN / τ̂``.
    """
    m, n = a.shape
    if np.ptp(a) == 0.0:
        return float(a.size)
    acov = _autocov(a)
    w = acov[:, 0].mean() * n / (n - 1.0)
    var_plus = w * (n - 1.0) / n + (a.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    rho = 1.0 - (w - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    n_pairs = max((n - 3) // 2 + 1, 1)  # pairs k = 0 .. (n-3)//2, i.e. lags up to n-2
    pairs = rho[0 : 2 * n_pairs : 2] + rho[1 : 2 * n_pairs : 2]
    nonpositive = np.flatnonzero(pairs <= 0.0)
    k = int(nonpositive[0]) if nonpositive.size else n_pairs - 1
    tau = -1.0 + 2.0 * np.minimum.accumulate(pairs[:k]).sum() + max(rho[2 * k], 0.0)
    tau = max(tau, 1.0 / math.log10(a.size))
    return float(a.size / tau)


def _rhat(a: np.ndarray) -> float:
    """Potential scale reduction of chains ``a`` (M, N) (Vehtari et al. 2021, eqs. 1-4).

    ``B = N/(M-1) Σ_m (θ̄_m - θ̄)²``, ``W = (1/M) Σ_m s²_m``, ``var⁺ = (N-1)/N W + B/N``,
    ``R̂ = sqrt(var⁺ / W)``.
    """
    n = a.shape[1]
    b = n * a.mean(axis=1).var(ddof=1)
    w = a.var(axis=1, ddof=1).mean()
    if w == 0.0:
        return math.nan if b == 0.0 else math.inf
    return float(math.sqrt(((n - 1.0) / n * w + b / n) / w))


def autocorrelation(x) -> np.ndarray:
    """Normalized autocorrelation ``ρ_t = γ_t / γ_0`` of each chain, for lags 0 .. draws-1.

    ``γ_t`` is the biased (divisor N) autocovariance of the chain about its own mean, computed by
    FFT. Returns an array shaped (chain, draw); a constant chain gets 1 at lag 0 and 0 elsewhere.
    """
    acov = _autocov(_as_chains(x))
    var = acov[:, :1]
    out = np.divide(acov, var, out=np.zeros_like(acov), where=var > 0)
    out[:, 0] = 1.0
    return out


def integrated_autocorrelation_time(
    x, c: float = 5.0, min_chain_multiple: float = 50.0
) -> float:
    """Integrated autocorrelation time with Sokal's automatic window, emcee style.

    ``τ(M) = 1 + 2 Σ_{t=1}^{M} ρ_t`` with ``ρ_t`` the autocorrelation averaged over chains (each
    chain about its own mean, so differences between chains are not seen here: use :func:`rhat`).
    The window is the smallest ``M`` with ``M >= c τ(M)`` (Sokal 1997; ``c = 5`` suits chains
    whose autocorrelation decays roughly exponentially). The estimate is only trusted when each
    chain has at least ``min_chain_multiple * τ`` draws (emcee's default 50); otherwise
    :class:`ChainTooShortError` is raised, naming the number of draws needed.
    """
    if c <= 0 or min_chain_multiple < 0:
        raise ValueError(f"need c > 0 and min_chain_multiple >= 0, got {c}, {min_chain_multiple}")
    rho = autocorrelation(x).mean(axis=0)
    n = rho.size
    taus = 2.0 * np.cumsum(rho) - 1.0
    window = np.flatnonzero(np.arange(n) >= c * taus)
    tau = float(taus[window[0]] if window.size else taus[-1])
    if n < min_chain_multiple * tau:
        need = math.ceil(min_chain_multiple * tau)
        raise ChainTooShortError(
            f"chains of {n} draws are too short to estimate the integrated autocorrelation time: "
            f"the current estimate tau = {tau:.3g} needs at least {need} draws per chain "
            f"({min_chain_multiple:g} tau); run the chains longer"
        )
    return tau


def ess(x, method: str = "bulk") -> float:
    """Effective sample size over all chains (Vehtari et al. 2021).

    * ``"bulk"``: split chains, rank-normalized (:func:`_rank_normalize`), then :func:`_ess`;
      robust to heavy tails, the default convergence check for location.
    * ``"tail"``: the smaller ESS of the split-chain indicators ``I(θ <= q̂_α)`` for the pooled
      empirical 5% and 95% quantiles ``q̂_α`` (paper, section 4.3).
    * ``"mean"``: split chains, not rank-normalized; this is the ESS of the mean itself, the one
      to use for its Monte Carlo standard error (:func:`mcse_mean`).

    Split-chain: each chain is cut in half, so a single chain works and drift within a chain
    lowers the ESS.
    """
    a = _as_chains(x)
    if method == "bulk":
        return _ess(_rank_normalize(_split(a)))
    if method == "tail":
        q_low, q_high = np.quantile(a, [_TAIL_PROB, 1.0 - _TAIL_PROB])
        return min(_ess(_split(a <= q_low).astype(float)), _ess(_split(a <= q_high).astype(float)))
    if method == "mean":
        return _ess(_split(a))
    raise ValueError(f"method must be 'bulk', 'tail' or 'mean', got {method!r}")


def rhat(x) -> float:
    """Rank-normalized split R̂ (Vehtari et al. 2021, section 4.1, eq. 17).

    The larger of the bulk R̂ of the rank-normalized split chains and the tail R̂ of the
    rank-normalized folded split chains ``|θ - median(θ)|``. Values above 1.01 indicate chains
    that have not mixed. A single chain is split in two. NaN for constant input.
    """
    s = _split(_as_chains(x))
    bulk = _rhat(_rank_normalize(s))
    tail = _rhat(_rank_normalize(np.abs(s - np.median(s))))
    if math.isnan(bulk) or math.isnan(tail):
        return math.nan
    return max(bulk, tail)


def mcse_mean(x) -> float:
    """Monte Carlo standard error of the mean of all draws: ``sd(θ) / sqrt(ESS_mean)``.

    ``sd`` uses all draws pooled (divisor S - 1) and ``ESS_mean`` is :func:`ess` with
    ``method="mean"``.
    """
    a = _as_chains(x)
    return float(a.std(ddof=1) / math.sqrt(ess(a, "mean")))


def llc_statistics(losses, init_loss: float, nbeta: float) -> dict[str, float]:
    """λ̂ = nβ (mean loss − L_n(w*)) of loss draws shaped (chain, draw), with its uncertainty.

    Returns ``llc_mean`` (the mean of the per-chain λ̂_c), ``llc_std`` (the spread of one chain's
    estimate: across chains with ddof = 1, or the MCSE for one chain), ``llc_mcse`` and ``ess``.
    The MCSE is nβ · sd(L) / √ESS_mean over all draws, or, when larger, the between-chain standard
    error ``llc_std`` / √chains: the ESS route trusts every chain to have mixed, and chains that
    settle in different places show up only between chains. Fewer than 4 draws per chain: no ESS
    and no MCSE (NaN). Draws that never change: MCSE 0.
    """
    good = np.asarray(losses, dtype=float)
    per_chain = nbeta * (good.mean(axis=1) - init_loss)
    mean = float(per_chain.mean())
    if good.shape[1] < 4:  # too few draws for any effective-sample-size estimate
        effective, mcse = float("nan"), float("nan")
    elif np.ptp(good) == 0:  # a chain that never moved: no Monte Carlo error to speak of
        effective, mcse = float(good.size), 0.0
    else:
        effective = ess(good, method="mean")
        mcse = nbeta * float(good.std(ddof=1)) / math.sqrt(effective)
    if good.shape[0] >= 2:
        std = float(per_chain.std(ddof=1))
        between = std / math.sqrt(good.shape[0])
        mcse = max(mcse, between) if math.isfinite(mcse) else between
    else:
        std = mcse
    return dict(llc_mean=mean, llc_std=std, llc_mcse=mcse, ess=effective)
