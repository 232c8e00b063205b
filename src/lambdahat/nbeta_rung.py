"""The nβ check: λ̂ measured again at 4nβ, to see the finite-temperature gap no sampling check sees.

The learning coefficient λ is a limit: λ̂(nβ) = E_p[nβ (L_n(w) − L_n(w*))] under the localised
tempered posterior (Lau et al., arXiv 2308.12108) tends to λ as nβ grows, but at the nβ of a
run (n / log n by default) the posterior's own value can differ from λ by far more than its Monte
Carlo error. The other health checks judge whether the chains sampled that posterior; they cannot
see that its value is not yet λ. A second run at 4nβ can. Two ways λ̂(nβ) departs from λ:

- **Rising with nβ: the finite-nβ gap of a singular model.** The free energy of a model of
  learning coefficient λ and multiplicity m is λ log nβ − (m − 1) log log nβ + O(1) (Watanabe,
  *Algebraic Geometry and Statistical Learning Theory*, 2009, ch. 6), so λ̂(nβ) = λ − (m − 1) /
  log nβ + …: a gap that closes only like 1 / log nβ. On deep linear networks λ̂ rises with nβ by
  more than the multiplicity alone accounts for, about like c / log nβ (measured along ladders of
  nβ from n / (4 log n) to 4n / log n; docs/accuracy.md). Under λ̂(t) = λ − c / log t the two
  rungs t and 4t give, with Δ = λ̂(4t) − λ̂(t),

      λ ≈ λ̂(t) + Δ · log(4t) / log 4.

  On five such networks this overshot λ while λ̂(4t) fell short of it: the two bracketed λ in four.
- **Falling with nβ: w* above a minimum of L_n.** When L_n has points below L_n(w*) within reach
  (a teacher under noisy targets, an unconverged training run), λ̂(t) = λ − t δ with
  δ = L_n(w*) − L_n(ŵ) > 0 to first order, so λ ≈ λ̂(t) − Δ / 3.

Each run may carry a bias of its own: the warm-up holds the step-size bias and the minibatch-noise
bias of λ̂ to 2% each, and the two rungs run at different steps. So a change counts only beyond
both ``z`` standard errors and that allowance, ``BIAS_ALLOWANCE`` (4%) of λ̂: on the blind sets'
deep linear networks, changes of 1.5–3% between two healthy rungs came with both λ̂ within 6% of
λ (one rung 4.6% above λ), and the 1/log extrapolation of such a change refused them all.

:func:`compare` states the change and the implied value; :func:`lambdahat.health.check_nbeta`
refuses the certificate when the change is significant and the implied correction exceeds 10% of
λ̂. The implied value is reported beside λ̂, never in its place: a comparison of models at one nβ
(the usual use) is not affected by either effect.

**Lowering nβ when λ̂ falls.** The falling term −tδ shrinks with t while the learning coefficient
does not, so a run at t / 4 carries a quarter of it. When a run at the default nβ = n / log n
falls (:func:`lowers`), :func:`lambdahat.estimate_llc` estimates again at nβ / 4 and returns that
estimate, with the run at nβ as its rung: the ``nbeta`` check then judges the change from nβ / 4
to nβ by the same rule, so the result is certified only when what is left of the fall at nβ / 4,
(λ̂(t/4) − λ̂(t)) / 3 under the linear model, is within 10% of λ̂. The estimate at t / 4 is
reported, not the linear model's value at t → 0: on eight reduced-rank regressions under noisy
targets (n = 10⁴; docs/accuracy.md) the estimate at t / 4 was within 4.8% of λ (mean 2.2%, against
7.5% at t), while the linear model's value from (t / 4, t) was off by 4.1% on average (worst +7.0%:
the fall is steeper than linear) and from (t, 4t) by 3.1% (worst +9.3%); the runs' own biases (2%
each) are as large as what an extrapolation would remove.

A falling run at 4nβ does not lower an estimate whose descent (below) found no point under w*: the
fall that lowering removes needs a minimum below w*, and a descent that found none (on a noise-free
teacher, every time) says the change is the runs' own error or bias (:func:`lowers`).

**Seeing the fall without the run at 4nβ.** That run is the most expensive of the three (its
minibatch-noise bias grows like nβ², so its batch is the largest). A deterministic descent of
nβ L_n + (γ/2)‖w − w*‖² from w* and from the chains' last points (:mod:`lambdahat.descent`)
measures the fall nβ (L_n(w*) − L_n(ŵ)) itself; when three times it (the fall from nβ to 4nβ
under the model above) is twice what :func:`compare` calls falling, the estimate moves to nβ / 4
at once. The runs at nβ and nβ / 4 are those it would have made anyway, so the result is the same,
bit for bit, as when the run at 4nβ shows the fall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .settings import _is_real
from .tables import number

__all__ = ["NBETA_FACTOR", "NbetaRung", "Comparison", "compare", "lowers", "rung_settings"]

#: The second rung's nβ, in multiples of the run's (4: a change large enough to measure against
#: the Monte Carlo error of two runs, at the cost of one more run).
NBETA_FACTOR = 4.0
#: The bias of λ̂ each run is allowed: step size (``health.STEP_BIAS``) plus minibatch noise
#: (``noise.NOISE_BIAS``), 2% each; a change between the rungs within it is no evidence of nβ.
BIAS_ALLOWANCE = 0.04
#: The seed offsets of the run at 4nβ and of the run at nβ / 4 (no run may repeat another's noise).
SEED_OFFSET = 1
LOWER_SEED_OFFSET = 2
#: The checks a rung need not pass: ``nbeta`` is the question the rung answers, and ``precision``
#: asks for an error bar small enough to certify λ̂, while a rung's error bar enters the standard
#: error of the change it measures (it must be reliable, which the other checks judge, not small).
NOT_ASKED_OF_A_RUNG = ("nbeta", "precision")


@dataclass(frozen=True)
class NbetaRung:
    """The estimate at ``nbeta`` = 4 × the run's nβ: its λ̂, MCSE, failed checks and cost."""

    nbeta: float
    llc: float
    mcse: float
    failed: tuple[str, ...]
    gradient_evaluations: int

    @classmethod
    def of(cls, result: Any) -> NbetaRung:
        """An estimate summarised as a rung: its failed checks but two (:data:`NOT_ASKED_OF_A_RUNG`)."""
        return cls(nbeta=result.nbeta, llc=float(result.llc_mean), mcse=float(result.llc_mcse),
                   failed=tuple(c.name for c in result.checks if not c.ok and c.name not in NOT_ASKED_OF_A_RUNG),
                   gradient_evaluations=result.gradient_evaluations)

    def to_dict(self) -> dict[str, Any]:
        return dict(nbeta=self.nbeta, llc=number(self.llc), mcse=number(self.mcse), failed=list(self.failed),
                    gradient_evaluations=self.gradient_evaluations)


@dataclass(frozen=True)
class Comparison:
    """λ̂ at nβ against λ̂ at 4nβ: ``kind`` is "flat" (within ``z`` standard errors or within the
    ``BIAS_ALLOWANCE`` of the runs' biases), "rising" or
    "falling"; ``implied`` ± ``implied_se`` is the λ that the change implies (module docstring;
    λ̂ itself when flat) and ``correction`` = ``implied`` − λ̂."""

    kind: str
    delta: float
    delta_se: float
    implied: float
    implied_se: float

    def correction(self, llc: float) -> float:
        return self.implied - llc


def compare(llc: float, mcse: float, nbeta: float, rung: NbetaRung, z: float = 2.0) -> Comparison:
    """The change of λ̂ from nβ to the rung's nβ, and the λ it implies (module docstring)."""
    delta = rung.llc - llc
    delta_se = math.hypot(rung.mcse, mcse)
    if not math.isfinite(delta) or abs(delta) <= max(z * delta_se, BIAS_ALLOWANCE * abs(llc)):
        return Comparison("flat", delta, delta_se, llc, mcse)
    factor = rung.nbeta / nbeta
    if delta > 0:  # λ̂(t) = λ − c / log t
        kind, weight = "rising", math.log(rung.nbeta) / math.log(factor)
    else:  # λ̂(t) = λ − t δ
        kind, weight = "falling", -1.0 / (factor - 1.0)
    # implied = (1 − weight) λ̂(t) + weight λ̂(4t): the two runs' errors are independent, and λ̂(t)
    # enters twice (itself and inside Δ), so its error does not scale like Δ's
    implied_se = math.hypot((1.0 - weight) * mcse, weight * rung.mcse)
    return Comparison(kind, delta, delta_se, llc + weight * delta, implied_se)


def rung_settings(given: dict[str, Any], seed: int, nbeta: float, factor: float = NBETA_FACTOR,
                  seed_offset: int = SEED_OFFSET) -> dict[str, Any]:
    """The settings of another run at ``factor`` × nβ (4nβ for the check, nβ / 4 when lowering): those
    the user gave, a given step size divided by ``factor`` (ε·nβ, which sets the step's size against
    the curvature of nβ L, kept), another seed, no check of its own."""
    settings = {**given, "nbeta": factor * nbeta, "seed": seed + seed_offset, "nbeta_check": False}
    if _is_real(given.get("step_size")):
        settings["step_size"] = given["step_size"] / factor
    return settings


def lowers(result: Any) -> bool:
    """Whether an estimate at the default nβ moves to nβ / 4 (module docstring): λ̂ fell from nβ to
    4nβ beyond both runs' errors and biases, and both runs gave a value, or a descent from w*
    (:mod:`lambdahat.descent`) showed that fall before the run at 4nβ was made. The run at 4nβ need
    not pass its own checks: after the move it is no longer the one the ``nbeta`` check reads.

    Not when a descent found no point below w* (:attr:`lambdahat.descent.Descent.found_nothing_lower`):
    the fall −nβ (L_n(w*) − L_min) that lowering removes is then absent, a falling run at 4nβ is the
    two runs' own error or bias, and the ``nbeta`` check judges it at nβ. (On v17's
    noise-free 6-2-3-4-5-6 r=2 such a rung moved the estimate to nβ / 4, where it was refused.)"""
    if result.lowered_from is not None or not math.isfinite(result.llc_mean):
        return False
    rung, descent = result.nbeta_rung, getattr(result, "descent", None)
    if rung is None:
        return descent is not None and descent.predicts_fall(result.llc_mean, result.llc_mcse)
    if descent is not None and descent.found_nothing_lower:
        return False
    return math.isfinite(rung.llc) and result.nbeta_comparison().kind == "falling"
