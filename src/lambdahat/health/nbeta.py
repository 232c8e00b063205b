"""The estimand check: is λ̂ at this nβ already the learning coefficient (``nbeta``)?"""

from __future__ import annotations

import math

from ..nbeta_rung import BIAS_ALLOWANCE, compare
from ._common import Check, LLCResult, _skip


def check_nbeta(result: LLCResult, z: float = 2.0, max_relative: float = 0.10) -> Check:
    """λ̂ at this nβ against the same estimate at 4nβ (:mod:`lambdahat.nbeta_rung`).

    Every other check asks whether the chains sampled the localised posterior at this nβ; this one
    asks whether that posterior's value is the learning coefficient, the n → ∞ limit. When λ̂
    changes between nβ and 4nβ by more than ``z`` standard errors of the difference and by more
    than the bias the runs are allowed (``nbeta_rung.BIAS_ALLOWANCE``, 4% of λ̂), the change
    implies a value of λ (rising: the finite-nβ gap, λ̂(t) ≈ λ − c / log t; falling: w* above a
    minimum of L_n, λ̂(t) ≈ λ − tδ); the check fails when that implied correction exceeds
    ``max_relative`` × |λ̂| (10%: the accuracy a certificate promises). A run at 4nβ with no
    estimate fails it too, and so does a run at 4nβ that failed any of its own checks: its change
    may be its own error or bias, and its "no change" may hide one. Without a run at 4nβ, a descent
    from w* that showed the fall (:mod:`lambdahat.descent`) fails it: then the estimate at nβ / 4
    gave no value. Skipped when the run was not repeated at 4nβ (``nbeta_check``: by default a run
    with nβ given, or with every sampling setting given, is not).
    """
    name = "nbeta"
    rung = getattr(result, "nbeta_rung", None)
    descent = getattr(result, "descent", None)
    if rung is None and descent is not None and descent.predicts_fall(result.llc_mean, result.llc_mcse):
        return Check(name, False, f"λ̂ falls as nβ grows: a descent from w* found loss below L_n(w*), nβ (L_n(w*) − "
                                  f"L_n) = {descent.fall:.3g}, so λ̂ carries at least −{descent.fall:.3g} "
                                  f"({-descent.fall / max(abs(result.llc_mean), 1e-12):+.0%} of λ̂) here, and the "
                                  "estimate at nβ / 4 gave no value. Train w* to the minimum (or start from the "
                                  "minimiser), or lower step_size.", -descent.fall / max(abs(result.llc_mean), 1e-12),
                     max_relative)
    if rung is None:
        return _skip(name, "λ̂ was not measured again at 4nβ (it is when nbeta is n / log n and a sampling setting "
                           "is 'auto'; nbeta_check=True measures it for any run)")
    llc = result.llc_mean
    if not math.isfinite(rung.llc):
        return Check(name, False, f"the same estimate at 4nβ = {rung.nbeta:.4g} gave no value (every chain diverged), "
                                  "so whether λ̂ at this nβ is the learning coefficient is unknown. Lower step_size, "
                                  "or pass nbeta_check=False and report λ̂ as the value at this nβ.", math.nan,
                     max_relative)
    comparison = compare(llc, result.llc_mcse, result.nbeta, rung, z)
    relative = comparison.correction(llc) / max(abs(llc), 1e-12)
    at = (f"λ̂ at 4nβ = {rung.nbeta:.4g} is {rung.llc:.4g} ± {rung.mcse:.2g} against {llc:.4g} ± "
          f"{result.llc_mcse:.2g} here (Δ = {comparison.delta:+.3g} ± {comparison.delta_se:.2g})"
          + (f"; that run failed {', '.join(rung.failed)}" if rung.failed else ""))
    if rung.failed:  # a measurement that fails its own checks vouches neither for a change nor against one
        return Check(name, False, f"whether λ̂ depends on nβ is unknown: {at}, and a run that fails its own checks "
                                  "can show neither a change (it may be that run's own error or bias) nor its absence. "
                                  "Raise max_steps (both runs get longer), or pass nbeta_check=False and report λ̂ as "
                                  "the value at this nβ.", relative, max_relative)
    if comparison.kind == "flat":
        return Check(name, True, f"λ̂ does not change with nβ beyond the two runs' Monte Carlo error or the "
                                 f"{BIAS_ALLOWANCE:.0%} of λ̂ their biases may differ by: {at}.", relative, max_relative)
    implied = (f"the λ it implies is {comparison.implied:.4g} ± {comparison.implied_se:.2g} ({relative:+.0%} of λ̂)")
    if abs(relative) <= max_relative:
        return Check(name, True, f"λ̂ changes with nβ only a little: {at}; {implied}.", relative, max_relative)
    if comparison.kind == "rising":
        why = ("λ̂ still rises with nβ: at this nβ the localised posterior's value is below the learning coefficient "
               "(the finite-nβ gap of a singular model, which closes only like 1 / log nβ)")
        fix = (f"λ is likely between {rung.llc:.4g} (at 4nβ) and {comparison.implied:.4g}; more data (a larger n) "
               "narrows the gap. Comparisons of models at one fixed nβ are not affected")
    elif descent is not None and descent.found_nothing_lower:  # not the fall that lowering removes
        why = ("λ̂ falls as nβ grows, although a descent from w* and from the chains' last points found no loss below "
               "L_n(w*): the two runs' own errors or biases (step size, minibatch noise) differ by more than allowed")
        fix = "raise max_steps (both runs get longer), or give a smaller step_size"
    else:
        why = ("λ̂ falls as nβ grows: the chains find loss below L_n(w*), so w* sits above a nearby minimum and λ̂ "
               "carries −nβ (L_n(w*) − L_min)")
        fix = ("train w* to the minimum (or start from the minimiser); comparisons at one fixed nβ are less affected"
               + ("; this estimate already moved from n / log n to nβ / 4, and the fall is still too large there"
                  if getattr(result, "lowered_from", None) is not None else ""))
    return Check(name, False, f"{why}: {at}; {implied}. {fix}.", relative, max_relative)
