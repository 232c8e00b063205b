"""What every health check shares: the :class:`Check` it returns, the :class:`LLCResult` protocol
it reads, and the helpers to read a result's healthy draws and to skip a check that cannot run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


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

