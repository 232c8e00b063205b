"""When the adaptive warm-up may stop, and when the draws are enough: the rules of
:mod:`lambdahat.adapt` that read a segment's records (chain, step) and decide.

The step-size controller uses the h^{3/2} law of a Langevin proposal's rejection rate
(Roberts & Rosenthal 1998): ε ← ε · ((1 − target) / (1 − acceptance))^{2/3}.
"""

from __future__ import annotations

import math

import numpy as np

from . import diagnostics, health

__all__ = ["acceptance", "finite", "step_factor", "rejection_ratio", "settled", "draws_verdict", "prior_statistics_of",
           "SETTLED_REJECTION", "MIN_ESS"]

#: The warm-up has settled when its last windows' rejection rate is within these factors of the target's
#: (0.85 to 0.95 at the target 0.9).
SETTLED_REJECTION = (0.5, 1.5)
#: The draws are long enough once their effective sample size reaches this (and the other targets hold).
MIN_ESS = 400.0


def acceptance(records: dict[str, np.ndarray]) -> float:
    """The mean MALA acceptance recorded in ``records`` (NaN when none was)."""
    values = records.get("mala_accept")
    if values is None or not np.isfinite(values).any():
        return float("nan")
    return float(np.nanmean(values))


def finite(records: dict[str, np.ndarray]) -> bool:
    """Every recorded loss is finite (no chain diverged)."""
    return bool(np.isfinite(records["loss"]).all())


def step_factor(acceptance: float, target: float) -> float:
    """The multiplicative change of ε that moves the acceptance toward ``target``."""
    if not math.isfinite(acceptance):
        return 0.5
    return float(np.clip(rejection_ratio(acceptance, target) ** (-2.0 / 3.0), 0.5, 2.0))


def rejection_ratio(acceptance: float, target: float) -> float:
    """(1 − acceptance) / (1 − target), at least 1/100 (an acceptance of exactly 1 still says "grow")."""
    return max(1.0 - acceptance, (1.0 - target) / 100) / (1.0 - target)


def settled(windows: list[dict[str, np.ndarray]], target: float | None, init_loss: float, nbeta: float,
             capped: bool = False) -> bool:
    """The warm-up may end: the last windows' rejection rate 1 − acceptance is within a factor
    ``SETTLED_REJECTION`` of the target's (when adapting ε; at most that when ε is held below by the
    noise cap, ``capped``) and the loss level of the last fifth of the warm-up is within 5% (in λ̂)
    of the fifth before."""
    if len(windows) < 10:
        return False
    if target is not None:
        low, high = SETTLED_REJECTION
        ratios = [(1 - acceptance(r)) / (1 - target) for r in windows[-3:]]
        if not all(math.isfinite(q) and (q <= high if capped else low <= q <= high) for q in ratios):
            return False
    k = max(2, len(windows) // 5)
    last = np.concatenate([r["loss"] for r in windows[-k:]], axis=1)
    before = np.concatenate([r["loss"] for r in windows[-2 * k:-k]], axis=1)
    if not (np.isfinite(last).all() and np.isfinite(before).all()):
        return False
    llc_last = nbeta * (float(last.mean()) - init_loss)
    llc_before = nbeta * (float(before.mean()) - init_loss)
    return abs(llc_last - llc_before) <= 0.05 * max(abs(llc_last), 1e-12)


def draws_verdict(losses: np.ndarray, init_loss: float, nbeta: float, target_rel_mcse: float,
                   run: np.ndarray | None = None) -> str:
    """"ok" when the draws pass the length checks, "moving" when λ̂ is still moving between the
    halves of the draws, "travelling" when it moves on the scale of the whole ``run`` (the
    ladder check), else "short"."""
    stats = diagnostics.llc_statistics(losses, init_loss, nbeta)
    llc = stats["llc_mean"]
    if not health.drift(losses, init_loss, nbeta, llc).ok:
        return "moving"
    if run is not None and not health.ladder(run, init_loss, nbeta, llc).ok:
        return "travelling"
    rhat = diagnostics.rhat(losses)
    rhat_ok = math.isnan(rhat) or rhat <= health.rhat_threshold(stats["ess"], losses.shape[0])
    if rhat_ok and stats["ess"] >= MIN_ESS and stats["llc_mcse"] <= target_rel_mcse * abs(llc):
        return "ok"
    return "short"


def prior_statistics_of(segments: list[dict[str, np.ndarray]], gamma: float, nbeta: float, d: int,
                      init_loss: float) -> tuple[float, float]:
    """The localisation check's prior share and elasticity (see ``health.check_localization``)."""
    losses = np.concatenate([r["loss"] for r in segments], axis=1)
    distance = np.concatenate([r["distance"] for r in segments], axis=1)
    llc = nbeta * (float(losses.mean()) - init_loss)
    return health.prior_statistics(losses, distance, gamma, nbeta, d, llc)
