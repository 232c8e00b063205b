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
| ``precision`` | λ̂'s Monte Carlo standard error above 5% of λ̂ (two of them must fit in a certificate's 10%) | longer chains, more chains |
| ``mala_accept`` | MALA acceptance of the sampler's own steps outside the band for this λ̂ (target 0.994 at λ̂ = 3, 0.9 at 1,000: ``acceptance_target``) | change ε |
| ``localization`` | the prior γ, not the loss, confines the chain | lower γ |
| ``ladder`` | λ̂ over the second half of the whole run differs from λ̂ over its second quarter | run longer |
| ``bias`` | 2 (λ̂(ε) − λ̂(ε/2)), measured on the run, above 5% of λ̂ | lower ε |
| ``noise`` | the λ̂ that minibatch gradient noise adds, measured in the draws, above 5% of λ̂ | raise the batch size |
| ``nbeta`` | λ̂ at 4nβ differs significantly, and the λ the change implies is > 10% from λ̂ | a larger n; train w* to a minimum |

Thresholds are arguments of :func:`check_health`; each check's docstring says why its default is
what it is. Checks that cannot be computed (no healthy chain, an array the sampler did not record)
pass with ``skipped=True`` and say why, so ``healthy`` is decided by the checks that could run.

The checks live in four modules by what they look at: :mod:`~lambdahat.health.sanity` (``negative``,
``divergence``, ``runaway``), :mod:`~lambdahat.health.sampling` (``convergence``, ``rhat``, ``ess``,
``precision``, ``ladder``), :mod:`~lambdahat.health.step` (``mala_accept``, ``localization``, ``bias``, ``noise``)
and :mod:`~lambdahat.health.nbeta` (``nbeta``: is the value at this nβ the learning coefficient);
:mod:`~lambdahat.health._common` holds :class:`Check` and what they share. Every name is importable
from ``lambdahat.health``.

To add a check: write ``check_<name>(result, **thresholds) -> Check`` in the module of its group
(its docstring says what it measures and why its default threshold is what it is; it returns
``_skip(name, why)`` when it cannot be computed), import it here and add it to ``__all__``, add one
entry to :data:`CHECKS` at its place in the order (with the :func:`check_health` thresholds it
takes, if any), and a row to the table above. :func:`check_health` runs :data:`CHECKS` and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ._common import Check, LLCResult
from .nbeta import check_nbeta
from .sampling import (check_convergence, check_ess, check_ladder, check_precision, check_rhat, drift, ladder,
                       rhat_threshold)
from .sanity import check_divergence, check_negative, check_runaway
from .step import (
    EXACT_MALA_ACCEPT_BAND,
    acceptance_band,
    MAX_STEP_BIAS,
    acceptance_target,
    bias_beyond,
    check_bias,
    check_localization,
    check_mala_accept,
    check_noise,
    localization_too_tight,
    prior_statistics,
)

__all__ = [
    "Check",
    "CHECKS",
    "check_health",
    "check_negative",
    "check_divergence",
    "check_runaway",
    "check_convergence",
    "check_rhat",
    "check_ess",
    "check_precision",
    "check_mala_accept",
    "check_localization",
    "check_ladder",
    "MAX_STEP_BIAS",
    "bias_beyond",
    "check_bias",
    "check_noise",
    "check_nbeta",
    "acceptance_target",
    "acceptance_band",
    "EXACT_MALA_ACCEPT_BAND",
    "rhat_threshold",
    "drift",
    "ladder",
    "prior_statistics",
    "localization_too_tight",
]


class Thresholds(NamedTuple):
    """The thresholds :func:`check_health` takes, handed to each entry of :data:`CHECKS`."""

    z: float
    min_ess: float
    mala_accept_range: tuple[float, float] | None
    max_prior_share: float


def _own_defaults(t: Thresholds) -> Mapping[str, Any]:
    return {}


#: Every check in the order :func:`check_health` runs them (the table above): the check, and the
#: keyword arguments it takes from check_health's :class:`Thresholds` (``_own_defaults``: none).
CHECKS: tuple[tuple[Callable[..., Check], Callable[[Thresholds], Mapping[str, Any]]], ...] = (
    (check_negative, lambda t: {"z": t.z}),
    (check_divergence, _own_defaults),
    (check_runaway, _own_defaults),
    (check_convergence, lambda t: {"z": t.z}),
    (check_rhat, _own_defaults),
    (check_ess, lambda t: {"min_ess": t.min_ess}),
    (check_precision, _own_defaults),
    (check_mala_accept, lambda t: {} if t.mala_accept_range is None else
     {"low": t.mala_accept_range[0], "high": t.mala_accept_range[1]}),
    (check_localization, lambda t: {"max_share": t.max_prior_share, "max_elasticity": t.max_prior_share}),
    (check_ladder, _own_defaults),
    (check_bias, _own_defaults),
    (check_noise, _own_defaults),
    (check_nbeta, _own_defaults),
)


def check_health(
    result: LLCResult,
    *,
    z: float = 3.0,
    min_ess: float = 100.0,
    mala_accept_range: tuple[float, float] | None = None,
    max_prior_share: float = 0.2,
) -> list[Check]:
    """Every health check on ``result``, in the order of the table above (:data:`CHECKS`)."""
    thresholds = Thresholds(z, min_ess, mala_accept_range, max_prior_share)
    return [check(result, **options(thresholds)) for check, options in CHECKS]
