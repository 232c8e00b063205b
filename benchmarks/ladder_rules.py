"""Candidate rules for the value of λ that the two rungs of the nβ check point to, fixed before set v7.

Committed with blind set v7 (``benchmarks/blind_cases.py``) before any engine ran on that set, so
that v7 tests them blind. Each rule is a pure function of what an auto run already records (λ̂ and
its MCSE at nβ and at 4nβ, each run's own failed checks, the change's kind and the implied value):
adopting one changes no chain, only which number the result offers as the learning coefficient.

Why these: on set v6 (seen) λ̂ at 4nβ was within 4% of λ on 7 of 8 deep linear networks, against
15.5% mean error at nβ; on the noisy-target regressions, whose w* (the teacher) sits above the
empirical minimum, λ̂ fell with nβ as λ(1 − β) does for a regular model, and the linear
extrapolation to β → 0 was within 8%. In most v6 runs where one rung failed its own sampling checks
(R̂, ESS) the other passed; the rule ``healthier`` prefers the rung that passed.

The criterion, fixed with the rules: the rule with the smallest mean |relative error| on v7's auto
runs is adopted as the result's learning-coefficient value only if that mean is at most 0.7× the
mean at nβ and its worst |error| is no larger than the worst at nβ. Otherwise none is adopted.
"""

from __future__ import annotations

import math

__all__ = ["RULES"]


def _own_failed(row: dict) -> list[str]:
    return [name for name in row["failed"] if name != "nbeta"]


def _rung(row: dict) -> float:
    rung = row.get("nbeta_rung") or {}
    value = rung.get("llc")
    return math.nan if value is None else float(value)


def at_nbeta(row: dict) -> float:
    """λ̂ at the run's nβ (what the engine reports today)."""
    return row["llc"]


def at_4nbeta(row: dict) -> float:
    """λ̂ at 4nβ whenever that run gave a finite value, else λ̂ at nβ."""
    value = _rung(row)
    return value if math.isfinite(value) else row["llc"]


def implied(row: dict) -> float:
    """The nβ check's implied λ (c / log t extrapolation when rising, linear in t when falling)."""
    return row.get("nbeta_implied", row["llc"])


def healthier(row: dict) -> float:
    """The rung that passed its own checks when only one did; when both did, by the change: flat →
    λ̂ at nβ, rising → λ̂ at 4nβ (the gap closes with nβ), falling → the linear extrapolation
    λ̂(nβ) − Δ/3 (λ̂(t) = λ − tδ); when neither did, λ̂ at nβ."""
    rung = row.get("nbeta_rung")
    value = _rung(row)
    if rung is None or not math.isfinite(value):
        return row["llc"]
    ok_here, ok_rung = not _own_failed(row), not rung["failed"]
    if ok_rung and not ok_here:
        return value
    if ok_here and ok_rung:
        kind = row["nbeta_kind"]
        if kind == "rising":
            return value
        if kind == "falling":
            return row["llc"] - (value - row["llc"]) / 3.0
    return row["llc"]


RULES = {"nβ": at_nbeta, "4nβ": at_4nbeta, "implied": implied, "healthier": healthier}
