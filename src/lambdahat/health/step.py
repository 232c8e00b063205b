"""Step-size and prior checks: the MALA acceptance of the sampler's steps (``mala_accept``), a prior
γ that confines the chain more than the loss does (``localization``), and SGLD's step-size bias
measured by step doubling (``bias``)."""

from __future__ import annotations

import math

import numpy as np

from ..noise import NOISE_LIMIT
from ._common import Check, LLCResult, _healthy_draws, _sampler_name, _skip

#: The relative step-size bias of λ̂ that :func:`acceptance_target` guarantees.
STEP_BIAS = 0.02


def acceptance_target(llc: float, bias: float = STEP_BIAS) -> float:
    """The MALA acceptance of SGLD's own steps at which its step-size bias of λ̂ is at most ``bias``.

    For a quadratic potential with curvatures a_i, SGLD at step ε has the stationary variance
    1 / (a_i (1 − ε a_i / 4)) per direction, so λ̂ is biased by the mean of ε a_i / 4 over the
    m = 2λ directions that carry it. The log Metropolis ratio of its proposal has variance
    σ² = Σ (ε a_i)³ / 16 (measured: h³/16 per direction at h = ε a) and the mean acceptance is about
    2Φ(−σ/2) (Roberts & Rosenthal 1998). By the power-mean inequality
    mean(ε a_i) ≤ (16 σ² / m)^{1/3}, so σ² ≤ 4 m bias³ guarantees the bias, whatever the spread of
    the a_i: an acceptance of at least 2Φ(−√(2 λ bias³)). It is 0.994 at λ = 3, 0.968 at
    λ = 100, 0.90 at λ = 1,000 (Lau et al.'s ≈ 0.9) and lower beyond, where many directions share
    the rejections; clipped to [0.6, 0.999].
    """
    return min(0.999, max(0.6, 2 * _normal_cdf(-_log_ratio_sd(llc, bias) / 2)))


def acceptance_band(llc: float) -> tuple[float, float]:
    """The MALA acceptances the ``mala_accept`` check passes at λ̂ = ``llc``: those of a step at
    most 3^{2/3} ≈ 2.1× (bias ≤ about 4%) and at least 1/7 of the :func:`acceptance_target` one,
    whose log-ratio spread σ ∝ ε^{3/2} is 3 and 1/18.5 times the target's; never below 0.5.
    (0.70, 0.995) at λ̂ = 1,000, (0.983, 0.9997) at λ̂ = 3."""
    sigma = _log_ratio_sd(llc, STEP_BIAS)
    return max(0.5, 2 * _normal_cdf(-1.5 * sigma)), min(0.9999, 2 * _normal_cdf(-sigma / 37))


def _log_ratio_sd(llc: float, bias: float) -> float:
    """σ of the log Metropolis ratio at which the step-size bias is at most ``bias`` (above)."""
    return math.sqrt(8 * max(llc, 0.1) * bias**3)


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def check_mala_accept(result: LLCResult, low: float | None = None, high: float | None = None) -> Check:
    """MALA acceptance of the sampler's own steps (``trace["mala_accept"]``, NaN where not computed).

    The Metropolis–Hastings acceptance probability that MALA would give each SGLD proposal
    measures the discretisation error of the step (Lau et al., after Furman & Lau). The band it
    must lie in depends on λ̂ (:func:`acceptance_band`; ``low`` and ``high`` fix it instead): below
    it the step-size bias exceeds about 4% (measured here: on the 30-20-10 deep linear network of
    the demo an acceptance of 0.72 came with λ̂ 15% above the value at small ε, on a 4-3-2 one
    0.75 with +50%), above it the steps are so small that the chain barely moves. Skipped when the
    sampler did not record it. For ``sampler="mala"`` the acceptance is the exact chain's own,
    which biases nothing: there the check asks only that the chain moves (0.2 to 0.995).
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
    band_low, band_high = acceptance_band(abs(result.llc_mean))
    low = band_low if low is None else low
    high = band_high if high is None else high
    target = acceptance_target(abs(result.llc_mean))
    if low <= value <= high:
        return Check(name, True, f"{measured}, within [{low:.4g}, {high:.4g}] (the target at this λ̂ is "
                     f"{target:.4g}).", value, low)
    if value < low:
        return Check(
            name, False,
            f"{measured} < {low:.4g}: the step size is too large for this λ̂, and SGLD's discretisation bias is "
            f"large. Lower step_size (2–4×) until it is ≳ {target:.4g}.",
            value, low,
        )
    return Check(
        name, False,
        f"{measured} > {high:.4g}: the chains take tiny steps and move slowly. Run more steps (the running λ̂ "
        f"must flatten), or raise step_size 2× while the acceptance stays ≳ {target:.4g} and λ̂ does not change.",
        value, high,
    )


#: The acceptances exact MALA's own chain passes with: it moves, and not in tiny steps.
EXACT_MALA_ACCEPT_BAND = (0.2, 0.995)


def _exact_mala_accept(value: float, measured: str, low: float = EXACT_MALA_ACCEPT_BAND[0],
                       high: float = EXACT_MALA_ACCEPT_BAND[1]) -> Check:
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
    directions (common in singular models) raise ρ but not η, so the check fails only when both
    exceed their thresholds (0.2 each: the prior costs λ̂ more than about a fifth). η is read on
    each chain's fluctuations about its own least-squares line: a chain still spreading along the
    flat directions (whose slow drift raises ρ as well) moves loss and distance together without
    any dependence on γ, and the ``ladder`` and ``convergence`` checks judge that drift. Both are
    statements about the exact posterior: SGLD's own prior-only variance is 1/(γ(1 − εγ/4)), so ρ
    can exceed 1 when εγ nears its stability limit 4. Skipped when γ = 0 or the sampler recorded
    no distance.
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
    # within-chain, detrended covariance: differences between chain means say nothing about ∂/∂γ, and
    # neither does a drift the two series share (a chain still spreading along directions only γ holds)
    cov = float(np.mean(_detrended(energy) * _detrended(sq)))
    elasticity = -(gamma / 2) * cov / llc if llc > 0 else float("nan")
    return share, elasticity


def _detrended(series: np.ndarray) -> np.ndarray:
    """Each chain's (row's) draws less their least-squares line in the draw index.

    The elasticity is a statement about the stationary posterior, so only fluctuations about a
    chain's course may enter its covariance. A trend the two series share is no such fluctuation:
    on a cross-entropy classifier (sklearn digits, 64-32-10, γ = 0.1) the chains' distance grew
    from 117 to 139 over the draws, the raw covariance gave η = +5.7 (−0.8 on another seed), and λ̂
    moved by +6% when γ was lowered tenfold (η ≈ −0.03); detrended, η = +0.6. On a stationary
    chain the line removes only the fluctuations slower than the whole run (at γ = 1 on the same
    model η is −0.39 raw and −0.42 detrended; on a Gaussian posterior, exact −0.374, it gives
    −0.381 ± 0.011). On a normal crossing (1, 3) × 8 at n = 10⁵, the warm-up's raw η at γ = 1 was
    −1.24; the exact localised posterior (by quadrature) gives about −0.05 there."""
    t = np.arange(series.shape[1], dtype=float)
    t -= t.mean()
    centred = series - series.mean(axis=1, keepdims=True)
    norm = float(t @ t)
    if norm == 0.0:
        return centred
    return centred - np.outer(centred @ t / norm, t)


def localization_too_tight(share: float, elasticity: float, max_share: float = 0.2, max_elasticity: float = 0.2) -> bool:
    """The prior confines the chain (share above ``max_share``) and λ̂ depends on it (elasticity
    below −``max_elasticity``, or not measurable)."""
    if not share > max_share:
        return False
    return not (elasticity >= -max_elasticity)  # a NaN elasticity cannot clear a high share


#: The step-size bias, relative to λ̂, beyond which the ``bias`` check fails (and the adaptive run halves ε).
MAX_STEP_BIAS = 0.05


def bias_beyond(bias: float, se: float, llc: float, max_relative: float = MAX_STEP_BIAS, z: float = 2.0) -> bool:
    """Whether a step-doubling bias ``bias`` ± ``se`` exceeds ``max_relative`` × |λ̂| by more than ``z`` standard errors."""
    return abs(bias) - z * se > max_relative * abs(llc)


def check_bias(result: LLCResult, max_relative: float = MAX_STEP_BIAS, z: float = 2.0) -> Check:
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
    if not bias_beyond(bias, se, llc, max_relative, z):
        return Check(name, True, f"SGLD's step-size bias is small: {measured} (the bias at ε is about that).",
                     bias / max(llc, 1e-12), max_relative)
    return Check(
        name, False,
        f"SGLD's step-size bias is large: {measured}, beyond {max_relative:.0%} of λ̂. Lower step_size 2× (or let the "
        "warm-up aim at a higher MALA acceptance).",
        bias / max(llc, 1e-12), max_relative,
    )


def check_noise(result: LLCResult, max_relative: float = NOISE_LIMIT) -> Check:
    """The λ̂ that minibatch gradient noise adds, predicted from the noise measured in the draws.

    The adaptive run measures E‖∇L_B₁(w) − ∇L_B₂(w)‖² at the chains' points during the draws, for
    two independent minibatches; the extra λ̂ from that noise is (ε/16) nβ² E‖∇L_B₁ − ∇L_B₂‖²
    (:mod:`lambdahat.noise`, from the stationary covariance of the Langevin step). Fails when it
    exceeds ``max_relative`` × |λ̂| (5%). Skipped when it was not measured (a fixed step size, exact
    MALA, or full-batch steps, which have no minibatch noise).
    """
    name = "noise"
    bias = getattr(getattr(result, "adaptation", None), "noise_bias", None)
    if bias is None:
        return _skip(name, "minibatch noise was not measured (it is when step_size is 'auto' and batches are "
                           "smaller than the data)")
    llc = abs(result.llc_mean)
    measured = f"(ε/16) nβ² E‖∇L_B₁ − ∇L_B₂‖² = {bias:.3g}, {bias / max(llc, 1e-12):.1%} of λ̂"
    if bias <= max_relative * llc:
        return Check(name, True, f"minibatch gradient noise adds little: {measured}.", bias / max(llc, 1e-12),
                     max_relative)
    return Check(
        name, False,
        f"minibatch gradient noise inflates λ̂: {measured}, beyond {max_relative:.0%}. Raise batch_size (the bias "
        "falls like 1/batch_size), lower step_size, or set control_variate=True.",
        bias / max(llc, 1e-12), max_relative,
    )
