"""Sanity checks: λ̂ or a chain's loss below what a minimum allows (``negative``), chains that became
NaN (``divergence``) or ran away without doing so (``runaway``)."""

from __future__ import annotations

import numpy as np

from .. import diagnostics
from ._common import Check, LLCResult, _healthy_draws, _skip


def check_negative(result: LLCResult, z: float = 3.0) -> Check:
    """λ̂ < 0, or a chain's loss settling below L_n(w*).

    At a local minimum w* the loss of every w near it is at least L_n(w*), so E[L_n(w)] − L_n(w*)
    cannot be negative. Fails when the estimate is negative, or when a healthy chain's mean loss
    over the second half of its draws lies below L_n(w*) by more than ``z`` of its own Monte Carlo
    standard errors (the trace drifting below the baseline: the sampler found lower ground).
    """
    name = "negative"
    healthy = result.trace.healthy_chains
    if not healthy:
        return _skip(name, "every chain diverged")
    losses = _healthy_draws(result)
    half = losses[:, losses.shape[1] // 2 :]
    below = []
    for chain, row in zip(healthy, half):
        gap = result.init_loss - float(row.mean())
        if gap <= 0:
            continue
        mcse = diagnostics.mcse_mean(row) if row.size >= 4 and np.ptp(row) > 0 else 0.0
        if gap > z * mcse:
            below.append(chain)
    llc = result.llc_mean
    if llc >= 0 and not below:
        return Check(name, True, f"λ̂ = {llc:.4g} ≥ 0 and every chain's loss stays above L_n(w*).", llc, 0.0)
    parts = []
    if llc < 0:
        parts.append(f"λ̂ = {llc:.4g} is negative")
    if below:
        parts.append(
            f"the loss of chain{'s' if len(below) > 1 else ''} {', '.join(map(str, below))} settles below "
            f"L_n(w*) = {result.init_loss:.6g}"
        )
    return Check(
        name,
        False,
        "; ".join(parts) + ". The sampler found weights with lower loss than w*, so w* is not a local "
        "minimum (train longer, or to convergence) or the step size is so large that SGLD's own bias "
        "dominates (lower step_size).",
        llc,
        0.0,
    )


def check_divergence(result: LLCResult) -> Check:
    """A chain whose loss became NaN or infinite (``result.diverged``)."""
    name = "divergence"
    diverged = result.diverged
    total = len(result.llc_per_chain)
    if not diverged:
        return Check(name, True, f"no chain diverged ({total} of {total} finite).", 0.0, 0.0)
    where = ", ".join(f"chain {c} at step {s}" for c, s in diverged.items())
    step = result.settings.step_size
    rest = f"λ̂ is the mean of the other {total - len(diverged)}" if len(diverged) < total else "there is no estimate"
    return Check(
        name,
        False,
        f"{len(diverged)} of {total} chains diverged ({where}); {rest}. The step size"
        + (f" ε = {step:g}" if isinstance(step, (int, float)) else "")
        + " is too large for nβ × the loss curvature: lower step_size 3–10× (or lower nbeta).",
        float(len(diverged)),
        0.0,
    )


def check_runaway(result: LLCResult, factor: float = 2.0) -> Check:
    """A chain that ran away without becoming NaN: its λ̂ above ``factor`` × d/2.

    λ(w*) ≤ d/2 for any minimum of a model with d (sampled) weights, with equality only when it is
    regular (Watanabe 2013), and the finite-nβ posterior expectation obeys the same bound
    for a quadratic loss. A discretised chain exceeds it only through step-size bias, by
    1/(1 − ε a/4) in a direction of curvature a (the stationary variance of the Euler chain on a quadratic): already ×2 at ε a = 2, halfway to
    instability. So a chain above 2 × d/2 is either unstable or about to be; its loss has climbed
    far from L_n(w*) and its λ̂ says nothing about w*."""
    name = "runaway"
    d = result.num_params
    per_chain = np.asarray(result.llc_per_chain, dtype=float)
    if not d or not np.isfinite(per_chain).any():
        return _skip(name, "no healthy chain or no parameter count to compare with.")
    bound = factor * d / 2
    high = [c for c, v in enumerate(per_chain) if np.isfinite(v) and v > bound]
    if not high:
        return Check(name, True, f"every chain's λ̂ is below {factor:g} × d/2 = {bound:.4g}.", float(np.nanmax(per_chain)), bound)
    values = ", ".join(f"chain {c}: {per_chain[c]:.4g}" for c in high)
    return Check(
        name,
        False,
        f"{len(high)} chain(s) ran away: λ̂ above {factor:g} × d/2 = {bound:.4g} ({values}), although no minimum of "
        f"{d} weights can have λ above d/2 = {d / 2:.4g}. The step size is too large (the chain is unstable or "
        "nearly so without reaching NaN): lower step_size 3–10×.",
        float(np.nanmax(per_chain)),
        bound,
    )
