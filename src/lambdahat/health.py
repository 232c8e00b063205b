"""Health checks on an LLC estimate: is the number trustworthy, and if not, what to change.

Each check looks at one known failure of LLC estimation (Lau et al., arXiv 2308.12108, and the
Timaeus users' guide) and returns a :class:`Check`: its name, whether it passed, the statistic it
measured, and a verdict in plain English that says what is wrong and what to do about it.
:func:`check_health` runs them all; :func:`lambdahat.estimate_llc` runs it once and stores the
checks on the result (``result.checks``; ``result.certified`` is true only when all pass), and
``print(result)`` lists the verdicts of the checks that failed. The checks take any object with
the attributes of :class:`LLCResult` (below), so this module does not depend on the estimator.

| check | fails when | usual fix |
|---|---|---|
| ``negative`` | λ̂ < 0, or a chain's loss settles below L_n(w*) | train w* to a minimum; lower ε |
| ``divergence`` | a chain's loss became NaN/inf | lower ε 3–10× (or nβ) |
| ``runaway`` | a chain's λ̂ exceeds d/2, the most any minimum can have | lower ε |
| ``convergence`` | λ̂ of the second half of the draws differs from the first half's by > 10%, or significantly by > 5% | more burn-in and draws |
| ``rhat`` | chains disagree: R̂ of the loss draws above 1.01 (up to 1.05 when ESS is small) | longer chains |
| ``ess`` | fewer than 100 effective draws in all | longer chains |
| ``mala_accept`` | MALA acceptance of the sampler's own steps outside [0.8, 0.995] | change ε |
| ``localization`` | the prior γ, not the loss, confines the chain | lower γ |
| ``ladder`` | λ̂ over the second half of the whole run differs from λ̂ over its second quarter | run longer |
| ``bias`` | 2 (λ̂(ε) − λ̂(ε/2)), measured on the run, above 5% of λ̂ | lower ε |

Thresholds are arguments of :func:`check_health`; each check's docstring says why its default is
what it is. Checks that cannot be computed (no healthy chain, an array the sampler did not record)
pass with ``skipped=True`` and say why, so ``healthy`` is decided by the checks that could run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from . import diagnostics


class LLCResult(Protocol):
    """What the checks read: the numbers of an estimate and its trace (``lambdahat.LLCResult``
    has them all; the checks take any object that does)."""

    trace: Any
    llc_mean: float
    llc_per_chain: np.ndarray
    init_loss: float
    nbeta: float
    diverged: dict[int, int]
    ess: float
    settings: Any
    num_params: int

__all__ = [
    "Check",
    "check_health",
    "check_negative",
    "check_divergence",
    "check_runaway",
    "check_convergence",
    "check_rhat",
    "check_ess",
    "check_mala_accept",
    "check_localization",
    "check_ladder",
    "check_bias",
    "rhat_threshold",
    "drift",
    "ladder",
    "prior_statistics",
    "localization_too_tight",
]


@dataclass(frozen=True)
class Check:
    """The outcome of one health check.

    ``verdict`` is one or two sentences: what was measured and, when ``ok`` is False, what is
    wrong and the fix. ``value`` is the statistic the check is about (NaN when it could not be
    computed) and ``threshold`` the value it was compared with. ``skipped`` checks pass.
    """

    name: str
    ok: bool
    verdict: str
    value: float = float("nan")
    threshold: float = float("nan")
    skipped: bool = False

    def __str__(self) -> str:
        mark = "skipped" if self.skipped else ("ok" if self.ok else "FAIL")
        return f"[{mark}] {self.name}: {self.verdict}"


def _healthy_draws(result: LLCResult, name: str = "loss") -> np.ndarray:
    return np.asarray(result.trace.draws(name), dtype=float)[result.trace.healthy_chains]


def _sampler_name(result: LLCResult) -> str:
    sampler = result.settings.sampler
    return sampler if isinstance(sampler, str) else sampler.name


def _skip(name: str, why: str) -> Check:
    return Check(name, True, f"not checked: {why}.", skipped=True)


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


MALA_ACCEPT_LOW = 0.8


def check_mala_accept(result: LLCResult, low: float = MALA_ACCEPT_LOW, high: float = 0.995) -> Check:
    """MALA acceptance of the sampler's own steps (``trace["mala_accept"]``, NaN where not computed).

    The Metropolis–Hastings acceptance probability that MALA would give each SGLD proposal
    measures the discretisation error of the step (Lau et al., after Furman & Lau, suggest
    ≈ 0.9). Fails below ``low`` (0.8: measured here, SGLD's bias grows fast below it: on the
    30-20-10 deep linear network of the demo an acceptance of 0.72 came with λ̂ 15% above the
    value at small ε, on a 4-3-2 one 0.75 with +50%) or above ``high`` (0.995: steps so small that
    the chain barely moves in the steps it is given). Skipped when the sampler did not record it.
    For ``sampler="mala"`` the acceptance is the exact chain's own, which biases nothing: there
    the check asks only that the chain moves (0.2 to 0.995).
    """
    name = "mala_accept"
    if "mala_accept" not in result.trace.arrays:
        return _skip(name, "the sampler did not record a MALA acceptance")
    healthy = result.trace.healthy_chains
    if not healthy:
        return _skip(name, "every chain diverged")
    values = _healthy_draws(result, "mala_accept")
    if not np.isfinite(values).any():
        return _skip(name, "no MALA acceptance was computed during the draws")
    value = float(np.nanmean(values))
    measured = f"mean MALA acceptance of the steps {value:.3f}"
    if _sampler_name(result) == "mala":
        return _exact_mala_accept(value, measured)
    if low <= value <= high:
        return Check(name, True, f"{measured}, within [{low}, {high}] (≳ 0.95 is a safe target).", value, low)
    if value < low:
        return Check(
            name, False,
            f"{measured} < {low}: the step size is too large, and SGLD's discretisation bias is large. "
            "Lower step_size (2–4×) until it is ≳ 0.95.",
            value, low,
        )
    return Check(
        name, False,
        f"{measured} > {high}: the chains take tiny steps and move slowly. Run more steps (the running λ̂ "
        "must flatten), or raise step_size 2× while the acceptance stays ≳ 0.95 and λ̂ does not change.",
        value, high,
    )


def _exact_mala_accept(value: float, measured: str, low: float = 0.2, high: float = 0.995) -> Check:
    """Exact MALA's own acceptance: its accept/reject removes the step's bias, so the rate speaks
    to efficiency only (Roberts & Rosenthal 1998: ≈ 0.57 is optimal in high dimension). Fails when
    so few proposals are accepted (< 0.2) or the steps are so small (> 0.995) that the chain
    barely moves."""
    name = "mala_accept"
    if low <= value <= high:
        return Check(name, True, f"{measured} (exact MALA: unbiased at any rate; 0.5–0.9 mixes well).", value, low)
    if value < low:
        return Check(name, False, f"{measured} < {low}: exact MALA rejects most proposals and barely moves. "
                     "Lower step_size 2–4×.", value, low)
    return Check(name, False, f"{measured} > {high}: exact MALA takes tiny steps and mixes slowly. Raise step_size "
                 "2–4× (an acceptance near 0.6–0.9 is efficient).", value, high)


def check_localization(result: LLCResult, max_share: float = 0.2, max_elasticity: float = 0.2) -> Check:
    """Localisation too tight: the prior γ, not the loss, confines the chain.

    Two measurements from the trace's ``distance`` ‖w − w*‖ and loss, both exact statements about
    the localised posterior p ∝ exp(−U), U = nβ L_n(w) + (γ/2)‖w − w*‖², over d sampled weights:

    * the prior's share of the confinement, ρ = γ E‖w − w*‖² / d. Integrating by parts (the
      virial identity E[(w − w*)·∇U] = d) gives E[nβ (w − w*)·∇L_n] + γ E‖w − w*‖² = d, so ρ is the
      fraction of the d "units of confinement" supplied by the prior: 0 when the loss holds the
      chain, 1 when the prior alone does (as for pure noise, where w − w* ~ N(0, I/γ));
    * the elasticity of λ̂ with respect to γ, η = ∂ log λ̂ / ∂ log γ = −(γ/2) Cov(nβ L, ‖w − w*‖²) / λ̂
      (differentiating E[nβ L] under p with respect to γ). It is the first-order fraction of λ̂
      lost to the prior: "λ̂ collapsing toward 0 as γ grows" is η well below 0.

    For a quadratic loss both equal the weighted mean of γ / (nβ h_i + γ) over directions, which is
    exactly the relative bias of λ̂ from the localisation: λ̂ = (d/2)(1 − ρ). Exactly flat
    directions (common in singular models) raise ρ but not η, and a chain still drifting can give
    a spurious η but hardly raises ρ, so the check fails only when both exceed their thresholds
    (0.2 each: the prior costs λ̂ more than about a fifth). Both are statements about the exact
    posterior: SGLD's own prior-only variance is 1/(γ(1 − εγ/4)), so ρ can exceed 1 when εγ nears
    its stability limit 4. Skipped when γ = 0 or the sampler recorded no distance.
    """
    name = "localization"
    gamma = result.settings.localization
    dim = result.num_params
    if not gamma:
        return _skip(name, "no localisation (γ = 0)")
    if "distance" not in result.trace.arrays or not dim:
        return _skip(name, "the sampler did not record ‖w − w*‖")
    if not result.trace.healthy_chains:
        return _skip(name, "every chain diverged")
    if not result.llc_mean > 0:
        return _skip(name, "λ̂ ≤ 0, so there is nothing for the prior to shrink (see the negative check)")
    share, elasticity = prior_statistics(_healthy_draws(result), _healthy_draws(result, "distance"), gamma,
                                         result.nbeta, dim, result.llc_mean)
    measured = (
        f"the prior γ = {gamma:g} supplies {share:.0%} of the chain's confinement (γ E‖w − w*‖² / d = {share:.3g}; "
        f"1 means the prior alone holds it) and ∂ log λ̂ / ∂ log γ = {elasticity:.2f}"
    )
    if not localization_too_tight(share, elasticity, max_share, max_elasticity):
        if share <= max_share:
            why = "the loss, not the prior, confines the chain"
        else:
            why = ("the prior holds the chain along directions the loss leaves flat, but λ̂ hardly depends on γ, so it "
                   "does not set λ̂")
        return Check(name, True, f"{measured}: {why}.", share, max_share)
    lower = gamma / 10 if share > 0.5 else gamma / 3
    return Check(
        name,
        False,
        f"localisation too tight: {measured}. The prior, not the loss, sets λ̂ (it shrinks toward 0 as γ "
        f"grows). Lower localization (e.g. to {lower:.3g}) and check that λ̂ stops changing.",
        share,
        max_share,
    )


def prior_statistics(losses: np.ndarray, distance: np.ndarray, gamma: float, nbeta: float, dim: int,
                     llc: float) -> tuple[float, float]:
    """(ρ, η) of :func:`check_localization` from loss and ‖w − w*‖ draws shaped (chain, draw)."""
    sq = np.asarray(distance, dtype=float) ** 2
    share = float(gamma * sq.mean() / dim)
    energy = nbeta * np.asarray(losses, dtype=float)
    # within-chain covariance: differences between chain means say nothing about ∂/∂γ
    cov = float(np.mean((energy - energy.mean(axis=1, keepdims=True)) * (sq - sq.mean(axis=1, keepdims=True))))
    elasticity = -(gamma / 2) * cov / llc if llc > 0 else float("nan")
    return share, elasticity


def localization_too_tight(share: float, elasticity: float, max_share: float = 0.2, max_elasticity: float = 0.2) -> bool:
    """The prior confines the chain (share above ``max_share``) and λ̂ depends on it (elasticity
    below −``max_elasticity``, or not measurable)."""
    if not share > max_share:
        return False
    return not (elasticity >= -max_elasticity)  # a NaN elasticity cannot clear a high share


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


def check_bias(result: LLCResult, max_relative: float = 0.05, z: float = 2.0) -> Check:
    """SGLD's discretisation bias at the step size used, measured by step doubling on the run.

    After the draws the adaptive run continues every chain at ε/2 (see :mod:`lambdahat.adapt`);
    the bias of SGLD is about linear in ε (for a quadratic loss 1 / (1 − εa/4) − 1 ≈ εa/4), so
    b = 2 (λ̂(ε) − λ̂(ε/2)) estimates the bias at ε. Fails when b exceeds ``max_relative`` × |λ̂| (5%)
    by more than ``z`` standard errors: the step is too large for the accuracy claimed. Skipped
    when the run did not measure it (a fixed step size, or exact MALA).
    """
    name = "bias"
    adaptation = getattr(result, "adaptation", None)
    bias = getattr(adaptation, "bias", None)
    if bias is None:
        return _skip(name, "the step-size bias was not measured (it is, when step_size is 'auto')")
    se = float(adaptation.bias_mcse or 0.0)
    llc = abs(result.llc_mean)
    measured = f"2 (λ̂(ε) − λ̂(ε/2)) = {bias:+.3g} ± {se:.2g}, {bias / max(llc, 1e-12):+.1%} of λ̂"
    if abs(bias) - z * se <= max_relative * llc:
        return Check(name, True, f"SGLD's step-size bias is small: {measured} (the bias at ε is about that).",
                     bias / max(llc, 1e-12), max_relative)
    return Check(
        name, False,
        f"SGLD's step-size bias is large: {measured}, beyond {max_relative:.0%} of λ̂. Lower step_size 2× (or let the "
        "warm-up aim at a higher MALA acceptance).",
        bias / max(llc, 1e-12), max_relative,
    )


def check_health(
    result: LLCResult,
    *,
    z: float = 3.0,
    min_ess: float = 100.0,
    mala_accept_range: tuple[float, float] = (0.8, 0.995),
    max_prior_share: float = 0.2,
) -> list[Check]:
    """Every health check on ``result``, in the order of the table above."""
    return [
        check_negative(result, z=z),
        check_divergence(result),
        check_runaway(result),
        check_convergence(result, z=z),
        check_rhat(result),
        check_ess(result, min_ess=min_ess),
        check_mala_accept(result, *mala_accept_range),
        check_localization(result, max_share=max_prior_share, max_elasticity=max_prior_share),
        check_ladder(result),
        check_bias(result),
    ]
