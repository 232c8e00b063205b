"""Sampling-quality checks: have the chains settled (``convergence`` over the two halves of the
draws, ``ladder`` over the whole run, both through :func:`_shift`), do they agree (``rhat``), and are
there enough effective draws (``ess``)?"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import diagnostics
from ._common import Check, LLCResult, _healthy_draws, _skip


class _Shift(NamedTuple):
    """λ̂ over an earlier and a later window of draws, and how far apart they are."""

    before: float
    after: float
    delta: float  # after − before
    score: float  # |delta| in standard errors of the difference
    relative: float  # |delta| / |λ̂|
    flat: bool  # within min_relative, or within z standard errors and not visibly (> max_relative) changed


def _shift(early: np.ndarray, late: np.ndarray, init_loss: float, nbeta: float, llc: float, z: float,
           min_relative: float, max_relative: float) -> _Shift:
    """Compare λ̂ over two windows of loss draws shaped (chain, draw); each window's standard error
    from its own effective sample size. The visible-change bar is relative to a positive plateau;
    at λ̂ ≤ 0 (the negative check's case) only the z score speaks."""

    def mcse(a: np.ndarray) -> float:
        return diagnostics.mcse_mean(a) if np.ptp(a) > 0 else 0.0

    before, after = nbeta * (early.mean() - init_loss), nbeta * (late.mean() - init_loss)
    delta = after - before
    se = nbeta * math.hypot(mcse(early), mcse(late))
    score = abs(delta) / se if se > 0 else (0.0 if delta == 0 else math.inf)
    relative = abs(delta) / max(abs(llc), 1e-12)
    visible = relative > max_relative and llc > 0
    return _Shift(before, after, delta, score, relative, relative <= min_relative or (score <= z and not visible))


def drift(losses: np.ndarray, init_loss: float, nbeta: float, llc: float, z: float = 3.0,
          min_relative: float = 0.05, max_relative: float = 0.10) -> Check:
    """The convergence check on an array of loss draws shaped (chain, draw); see
    :func:`check_convergence`."""
    name = "convergence"
    n = losses.shape[1]
    if n < 16:
        return Check(
            name, False, f"only {n} draws per chain: too few to tell whether the chains settled; run at least 16 "
            "draws (a few hundred to judge).", float("nan"), z,
        )
    shift = _shift(losses[:, : n // 2], losses[:, n - n // 2 :], init_loss, nbeta, llc, z, min_relative, max_relative)
    score = shift.score
    measured = (f"λ̂ over the first half of the draws {shift.before:.4g}, over the second half {shift.after:.4g} "
                f"(a change of {shift.relative:.0%}, z = {score:.1f})")
    if shift.flat:
        return Check(name, True, f"running λ̂ is flat: {measured}.", score, z)
    if score <= z:
        what = (f"the halves differ by more than {max_relative:.0%}, and the draws are too noisy to tell whether that is "
                "noise or a trend")
        fix = "run more draws"
    elif shift.delta > 0:
        what = "running λ̂ is still rising at the end: the chains have not reached their plateau"
        fix = "run more burn-in steps and more draws (or a larger step_size, if the MALA acceptance is near 1)"
    else:
        what = "running λ̂ is still falling at the end: the chains are drifting"
        fix = "run more steps; if the loss keeps falling toward or below L_n(w*), w* is not a minimum"
    return Check(name, False, f"{what} ({measured}). Fix: {fix}.", score, z)


def check_convergence(result: LLCResult, z: float = 3.0, min_relative: float = 0.05, max_relative: float = 0.10) -> Check:
    """Running λ̂ still moving at the end: the chains have not reached their plateau.

    Compares λ̂ from the second half of the draws with λ̂ from the first half, pooled over the
    healthy chains: Δ = nβ (mean L over the second half − mean L over the first half), with the
    standard error √(MCSE₁² + MCSE₂²) of the two halves' means (each from its own effective sample
    size). The running λ̂ at the end is the average of the two halves, so Δ is twice how far it
    moved over the last half of the run. Passes when |Δ| ≤ ``min_relative`` × |λ̂| (5%: a drift
    too small to matter), or when |Δ| is within ``z`` standard errors (3) *and* at most
    ``max_relative`` × |λ̂| (10%). A visible change of more than 10% fails even when the draws are
    too noisy to call it significant: a trace that rises from 36 to 41 is not flat because its
    error bars are wide (then the fix is more draws).
    """
    if not result.trace.healthy_chains:
        return _skip("convergence", "every chain diverged")
    return drift(_healthy_draws(result), result.init_loss, result.nbeta, result.llc_mean, z, min_relative, max_relative)


def rhat_threshold(ess_bulk: float, num_chains: int, p: float = 1e-3) -> float:
    """The R̂ above which the chains disagree by more than their finite length explains.

    Vehtari et al. (2021) ask for R̂ < 1.01, a bar that stationary chains with few effective
    draws cross by chance: for M chains split into 2M halves, each with E = ESS_bulk / (2M)
    effective draws, R̂² − 1 ≈ s²_means / W − 1/N ≈ χ²_{2M−1} / ((2M − 1) E), so
    R̂ − 1 ≲ q / (2E) with q the (1 − p) quantile of χ²_{2M−1}/(2M − 1) (Wilson–Hilferty).
    The threshold is that null quantile, but never below 1.01 (Vehtari et al.'s bar for a final
    result, reached from about 350 effective draws per chain) and never above 1.05 (beyond it the
    chains disagree whatever the noise; Gelman et al.'s older bar of 1.1 let visibly disagreeing
    chains through). A fixed 1.05 would raise false
    alarms on a few percent of stationary runs near the ``ess`` check's floor of 100 (measured on
    AR(1) chains with τ = 19 in tests/test_health.py).
    """
    if not (ess_bulk > 0 and math.isfinite(ess_bulk)):
        return 1.05
    k = 2 * num_chains - 1
    z = _normal_quantile(1 - p)
    chi2 = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3
    per_half = ess_bulk / (2 * num_chains)
    return float(min(1.05, max(1.01, 1 + (chi2 / k) / (2 * per_half))))


def _normal_quantile(p: float) -> float:
    import torch

    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


def check_rhat(result: LLCResult) -> Check:
    """Chains disagreeing: rank-normalised split R̂ of the loss draws (Vehtari et al. 2021).

    Threshold: :func:`rhat_threshold` (1.01, raised up to 1.05 when the chains hold so few
    effective draws that stationary chains would exceed 1.01 by chance: the 99.9% quantile of R̂
    for stationary chains of that effective length). With one chain, R̂ compares its two halves.
    """
    name = "rhat"
    healthy = result.trace.healthy_chains
    if not healthy:
        return _skip(name, "every chain diverged")
    losses = _healthy_draws(result)
    if losses.shape[1] < 4:
        return Check(name, False, f"only {losses.shape[1]} draws per chain: too few for R̂; run more draws.")
    value = diagnostics.rhat(losses)
    if math.isnan(value):
        return _skip(name, "the loss never changed, so R̂ is undefined (is the loss independent of the sampled weights?)")
    bar = rhat_threshold(result.ess, len(healthy))
    if value <= bar:
        return Check(name, True, f"R̂ of the loss = {value:.3f} ≤ {bar:.3f}: the chains agree.", value, bar)
    per_chain = ", ".join(f"{v:.4g}" for v in result.llc_per_chain[healthy])
    return Check(
        name,
        False,
        f"chains disagree: R̂ of the loss = {value:.3f} > {bar:.3f} (per-chain λ̂ {per_chain}). They have "
        "not mixed, or sit in different basins: run longer chains (more burn-in and draws); if they "
        "still disagree, use a smaller step_size with more steps, or a larger localization.",
        value,
        bar,
    )


def check_ess(result: LLCResult, min_ess: float = 100.0) -> Check:
    """Too few effective samples: the ESS of the mean loss over all healthy chains (the one that
    sets ``result.llc_mcse`` and is printed with it).

    The default floor is 100 effective draws. Below it the Monte Carlo standard error printed
    with λ̂ is itself unreliable: it rests on an autocorrelation estimate, and the variance of
    the draws is known only to ±√(2/ESS) (±14% at 100); R̂ likewise needs about that many
    (Vehtari et al. 2021 ask for 100 per chain before trusting a final result). Chains of an
    LLC sampler are strongly autocorrelated (τ of tens to hundreds of steps is common), so the
    fix is longer chains, and the verdict says how many draws would reach the floor.
    """
    name = "ess"
    healthy = result.trace.healthy_chains
    if not healthy:
        return _skip(name, "every chain diverged")
    losses = _healthy_draws(result)
    if losses.shape[1] < 4:
        return Check(name, False, f"only {losses.shape[1]} draws per chain: too few for an effective sample size.",
                     0.0, min_ess)
    value = float(result.ess)  # the ESS of the summary: one ESS everywhere
    if value >= min_ess:
        return Check(name, True, f"effective sample size {value:.0f} ≥ {min_ess:.0f}.", value, min_ess)
    need = math.ceil(losses.shape[1] * min_ess / max(value, 1e-9) * 1.2)
    return Check(
        name,
        False,
        f"too few effective samples: ESS = {value:.0f} < {min_ess:.0f} from {losses.size} draws (one "
        f"effective draw every {losses.size / value:.0f} steps), so the error bar is unreliable. Run "
        f"longer chains: about {need} draws per chain (or more chains).",
        value,
        min_ess,
    )


def check_precision(result: LLCResult, max_relative: float = 0.05) -> Check:
    """The error bar wider than the accuracy a certificate promises: λ̂'s Monte Carlo standard
    error above ``max_relative`` of |λ̂|.

    A certified λ̂ is meant to be within 10% of the value the sampler targets; that needs two
    standard errors inside 10%, so the default is 5%. The ESS check asks only that the error bar
    be reliable, not that it be small: four chains that disagree (a noisy regression whose chains
    settled at 2.7–3.8, MCSE 0.25 at λ̂ = 3.2) pass it with thousands of effective draws. The MCSE
    falls like 1/√draws, so the verdict says how many times the draws would reach the bound.
    """
    name = "precision"
    if not result.trace.healthy_chains:
        return _skip(name, "every chain diverged")
    llc, mcse = float(result.llc_mean), float(result.llc_mcse)
    if not (math.isfinite(llc) and math.isfinite(mcse)) or llc == 0.0:
        return _skip(name, f"λ̂ = {llc:.4g} ± {mcse:.2g} has no relative error")
    value = mcse / abs(llc)
    if value <= max_relative:
        return Check(name, True, f"MCSE {mcse:.3g} is {value:.1%} of λ̂ ≤ {max_relative:.0%}.", value, max_relative)
    times = math.ceil((value / max_relative) ** 2 * 1.2)
    return Check(
        name,
        False,
        f"λ̂ is known only to ±{mcse:.3g} (MCSE, {value:.1%} of λ̂): two standard errors do not fit in the 10% a "
        f"certificate promises. Run about {times}× the draws (max_steps, or num_draws) or more chains.",
        value,
        max_relative,
    )


def check_ladder(result: LLCResult, z: float = 2.0, min_relative: float = 0.05, max_relative: float = 0.10) -> Check:
    """λ̂ still moving on the time scale of the whole run: the slow drift the halves test misses.

    The convergence check compares the two halves of the draws, a ladder of one rung: a λ̂ that
    rises like the logarithm of the run's length (chains still spreading along directions the
    loss leaves nearly flat, common in deep singular models) barely differs between them. This
    check compares λ̂ over steps [T/4, T/2) with λ̂ over [T/2, T) of the whole recorded run of T
    steps (burn-in included), a factor 2 apart in time, and fails when they differ by more than
    ``max_relative`` (10%) of λ̂, or by more than ``min_relative`` (5%) and ``z`` (2) standard
    errors. It also reports how ‖w − w*‖² grew between the two windows.
    """
    if not result.trace.healthy_chains:
        return _skip("ladder", "every chain diverged")
    healthy = result.trace.healthy_chains
    losses = np.asarray(result.trace.arrays["loss"], dtype=float)[healthy]
    distance = result.trace.arrays.get("distance")
    distance = None if distance is None else np.asarray(distance, dtype=float)[healthy]
    return ladder(losses, result.init_loss, result.nbeta, result.llc_mean, distance, z, min_relative, max_relative)


def ladder(losses: np.ndarray, init_loss: float, nbeta: float, llc: float, distance: np.ndarray | None = None,
           z: float = 2.0, min_relative: float = 0.05, max_relative: float = 0.10) -> Check:
    """The ladder check on every recorded step, shaped (chain, step); see :func:`check_ladder`."""
    name = "ladder"
    total = losses.shape[1]
    if total < 64:
        return _skip(name, "the run is too short for a ladder")
    shift = _shift(losses[:, total // 4: total // 2], losses[:, total // 2:], init_loss, nbeta, llc, z, min_relative,
                   max_relative)
    spread = ""
    if distance is not None:
        dist = distance ** 2
        spread = (f"; ‖w − w*‖² went from {dist[:, total // 4: total // 2].mean():.3g} to "
                  f"{dist[:, total // 2:].mean():.3g}")
    measured = (f"λ̂ over steps {total // 4}–{total // 2} of the run {shift.before:.4g}, over steps {total // 2}–{total} "
                f"{shift.after:.4g} (a change of {shift.relative:.0%}, z = {shift.score:.1f}){spread}")
    if shift.flat:
        return Check(name, True, f"λ̂ is steady over the run: {measured}.", shift.relative, max_relative)
    return Check(
        name, False,
        f"λ̂ is still {'rising' if shift.delta > 0 else 'falling'} on the time scale of the whole run ({measured}): the chains "
        "are still travelling, typically along directions the loss leaves nearly flat, and λ̂ has not settled. Run "
        "longer (raise max_steps, or num_burnin_steps and num_draws), or raise localization so that the neighbourhood "
        "sampled is smaller (λ̂ then describes that smaller neighbourhood).",
        shift.relative, max_relative,
    )
