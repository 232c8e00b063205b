"""Choose one sampler setting (ε, nβ, γ) for every model compared: a coarse-to-fine sweep.

The procedure is the users' guide's (Timaeus, 2026; REFERENCE §2, "Practical calibration"),
written as a rule: sweep step size ε × nβ × γ with short chains, read every run with the health
checks of :mod:`lambdahat.health`, refine the step size, run an nβ → 0 control, and fix **one**
setting for all the models or checkpoints compared (re-tuning per checkpoint makes neighbouring
estimates incomparable).

The rule (:func:`calibrate` states it again in its result, with the numbers):

1. **Coarse sweep.** Every (ε, nβ, γ) of the grid on every model, with short chains. A setting
   is *sound* when, on every model, the checks that judge the *setting* pass: ``negative``,
   ``divergence``, ``convergence`` (a chain that cannot reach its plateau within the budget has
   too small an ε), ``mala_accept`` (its low side only: an acceptance near 1 means a small step,
   which is slow but not wrong) and ``localization``. ``rhat`` and ``ess`` judge the chain
   *length*; short calibration chains often fail them, so they are reported, and turned into the
   number of draws the final run needs, but do not choose the setting.
2. **nβ and γ.** Among the (nβ, γ) pairs with a sound ε: the largest nβ (closest to the nβ → ∞
   limit that λ describes), then the smallest γ (the least localisation bias).
3. **Fine sweep of ε** at that (nβ, γ): with ε_c the largest sound coarse ε, also 2ε_c and 4ε_c
   (those below the next coarse ε, which was not sound): the coarse grid is a factor 10 apart.
4. **Step size.** From the largest sound ε, halve ε until its MALA acceptance (the
   ``mala_accept`` the sampler records on its own steps) is at least ``target_accept`` = 0.95 on
   every model: acceptance falls as ε grows, so this finds, to a factor 2, the ε where the
   discretisation error falls to that level. Lau et al. (after Furman & Lau) call ≈ 0.9 healthy;
   the target is higher because calibration chains are short and SGLD's bias grows as longer
   chains explore (on the 4-3-8 deep linear network of the tests, the ε with acceptance 0.945 on
   800-step chains gave λ̂ 12.5% above λ in a 4 × 2400-step run). Then keep halving until λ̂ is
   *stable against halving*: ε/2 is sound too and, on every model, |λ̂(ε) − λ̂(ε/2)| ≤
   ``stability`` × |λ̂(ε/2)| + 2 × their combined MCSE. SGLD's bias is about linear in ε
   (1/(1 − εa/4) for a quadratic), so the change on halving is about half the bias at ε. The
   2-MCSE allowance keeps the noise of short chains from driving ε down into step sizes too small
   to converge in the budget (whose λ̂ is then biased low); the acceptance target does the fine
   control. If this does not settle within ``max_halvings``, the result says so.
5. **nβ → 0 control** at the recommended (ε, γ): the same chains with nβ shrunk by 10⁶ (the
   estimator needs nβ > 0; at 10⁻⁶ × nβ the loss gradient is negligible next to the noise and the
   prior, so the chain is the γ-only random walk). If the loss rise E[L] − L_n(w*) of the real run
   is not well below the control's (ratio > 0.5), the loss gradient is not driving the chain
   (ε too small for the budget, or a loss that does not depend on the sampled weights), and the
   result says so.

The truth, when given, is only reported (the ``rel_error`` column): it never enters the rule.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .data import as_data_source
from .estimate import LLCResult, estimate_llc

__all__ = ["CalibrationResult", "calibrate", "SETTING_CHECKS", "LENGTH_CHECKS"]

#: Checks that judge a setting (ε, nβ, γ); the others judge the chain length.
SETTING_CHECKS = ("negative", "divergence", "convergence", "mala_accept", "localization")
LENGTH_CHECKS = ("rhat", "ess")
_CONTROL_FACTOR = 1e-6
_CONTROL_MAX_RATIO = 0.5
_ROW_KEYS = (
    "stage", "model", "step_size", "nbeta", "localization", "llc", "mcse", "truth", "rel_error", "sound",
    "healthy", "failed", "verdict", "ess", "rhat", "mala_accept", "prior_share", "loss_rise", "seconds",
)


@dataclass
class CalibrationResult:
    """Every setting tried, and the one recommended.

    - ``rows``: one dict per run (setting × model), keys :data:`_ROW_KEYS`: ``stage`` ("coarse",
      "fine" or "control"), ``model`` (its name), ``step_size``/``nbeta``/``localization``, ``llc``
      and ``mcse``, ``truth`` and ``rel_error`` (None without a truth), ``sound`` (the setting
      checks passed), ``healthy`` (all checks passed), ``failed`` (names of failing checks, ";"
      joined), ``verdict`` (the first failing verdict, or "ok"), ``ess``, ``rhat``, ``mala_accept``,
      ``prior_share`` (γ E‖w − w*‖²/d), ``loss_rise`` (E[L] − L_n(w*)) and ``seconds``.
    - ``recommended``: ``{"step_size", "nbeta", "localization"}`` to pass to
      :func:`~lambdahat.estimate_llc` (``nbeta`` as the number used; ``nbeta_default`` says whether
      it was n / log n), plus ``num_draws`` advised for the final run; None when nothing was sound.
    - ``rule``: the rule that chose it, in words, with the numbers that decided.
    - ``results``: the :class:`~lambdahat.LLCResult` of each run, keyed like the rows
      ``(stage, model, step_size, nbeta, localization)``.
    """

    rows: list[dict[str, Any]]
    recommended: dict[str, Any] | None
    rule: str
    models: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    results: dict[tuple, LLCResult] = field(default_factory=dict, repr=False)

    def recommended_results(self) -> dict[str, LLCResult]:
        """The calibration run of the recommended setting, per model (empty if none)."""
        if self.recommended is None:
            return {}
        rec = self.recommended
        out = {}
        for (stage, model, step, nbeta, gamma), result in self.results.items():
            if stage != "control" and (step, nbeta, gamma) == (rec["step_size"], rec["nbeta"], rec["localization"]):
                out[model] = result
        return out

    def to_dataframe(self):
        """The table as a ``pandas.DataFrame`` (needs pandas; :meth:`write_csv` does not)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("to_dataframe needs pandas (pip install pandas); write_csv(path) needs nothing.") from err
        return pd.DataFrame(self.rows, columns=list(_ROW_KEYS))

    def write_csv(self, path: str | Path) -> Path:
        """Write the table to a CSV file, one row per run; returns the path."""
        path = Path(path)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(_ROW_KEYS))
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def table(self) -> str:
        """The table as fixed-width text, one line per run."""
        has_truth = any(row["truth"] is not None for row in self.rows)
        header = f"{'stage':7} {'model':18} {'ε':>9} {'nβ':>9} {'γ':>7} {'λ̂':>10} {'MCSE':>8}"
        header += f" {'error':>7}" if has_truth else ""
        header += f" {'ESS':>6} {'R̂':>6} {'accept':>6}  verdict"
        lines = [header]
        for row in self.rows:
            line = (
                f"{row['stage']:7} {row['model'][:18]:18} {row['step_size']:9.3g} {row['nbeta']:9.4g} "
                f"{row['localization']:7.3g} {_num(row['llc'], 10, '.4g')} {_num(row['mcse'], 8, '.2g')}"
            )
            if has_truth:
                line += " " + (f"{row['rel_error']:+7.1%}" if row["rel_error"] is not None else f"{'':7}")
            line += f" {_num(row['ess'], 6, '.0f')} {_num(row['rhat'], 6, '.3f')} {_num(row['mala_accept'], 6, '.3f')}"
            mark = "ok" if row["healthy"] else ("sound" if row["sound"] else "FAIL")
            line += f"  {mark}" + (f": {row['failed']}" if row["failed"] else "")
            lines.append(line)
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [self.table(), ""]
        if self.recommended is None:
            lines.append("No setting recommended.")
        else:
            rec = self.recommended
            lines.append(
                f"Recommended: step_size={rec['step_size']:.3g}, nbeta={rec['nbeta']:.6g}"
                + (" (n / log n)" if rec.get("nbeta_default") else "")
                + f", localization={rec['localization']:g}; final run: num_draws ≥ {rec['num_draws']}"
            )
        lines.append("Rule: " + self.rule)
        return "\n".join(lines)


def _num(value: Any, width: int, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}{spec}}"


def _as_models(model_or_models: Any) -> dict[str, nn.Module]:
    if isinstance(model_or_models, nn.Module):
        return {"model": model_or_models}
    if isinstance(model_or_models, Mapping):
        models = {str(k): v for k, v in model_or_models.items()}
    elif isinstance(model_or_models, Sequence) and not isinstance(model_or_models, str):
        models = {f"model {i}": m for i, m in enumerate(model_or_models)}
    else:
        raise TypeError(
            f"model_or_models must be an nn.Module, a sequence of them or a dict name → module, "
            f"got {type(model_or_models).__name__}."
        )
    if not models:
        raise ValueError("model_or_models is empty: pass at least one model.")
    for name, model in models.items():
        if not isinstance(model, nn.Module):
            raise TypeError(f"model {name!r} is a {type(model).__name__}, not an nn.Module.")
    return models


def _per_model(value: Any, names: list[str], what: str) -> dict[str, Any]:
    """One value for every model, or a list (not a tuple: a tuple is one dataset) with one per model."""
    if isinstance(value, list) and len(names) > 1:
        if len(value) != len(names):
            raise ValueError(f"{what}: a list needs one entry per model ({len(names)}), got {len(value)}.")
        return dict(zip(names, value))
    if isinstance(value, Mapping) and set(value) == set(names):
        return dict(value)
    return {name: value for name in names}


def _truth_at(truth: Any, nbeta: float, localization: float) -> float | None:
    """The truth for a run: a number, a ``LearningCoefficient``, or ``truth(nbeta, localization)``."""
    if truth is None:
        return None
    if callable(truth):
        return float(truth(nbeta, localization))
    return float(getattr(truth, "value", truth))


def calibrate(
    model_or_models: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
    data: Any,
    loss_fn: Callable[..., Tensor],
    *,
    step_sizes: Sequence[float] | None = None,
    nbetas: Sequence[float | None] = (None,),
    localizations: Sequence[float] = (1.0, 100.0),
    num_chains: int = 4,
    num_draws: int = 400,
    num_burnin_steps: int = 400,
    batch_size: int | None = None,
    stability: float = 0.05,
    target_accept: float = 0.95,
    max_halvings: int = 3,
    min_final_ess: float = 400.0,
    seed: int = 0,
    truth: Any = None,
    progress: bool = True,
    **estimate_kwargs: Any,
) -> CalibrationResult:
    """Sweep ε × nβ × γ with short chains and recommend one setting for every model (module docstring).

    Args:
        model_or_models: one model, a sequence of models (checkpoints) or a dict name → model. One
            setting is chosen that is sound for all of them.
        data: the data, shared by all models; or a list with one dataset per model (a tuple is
            always a single ``(inputs, targets)`` dataset).
        loss_fn: as for :func:`~lambdahat.estimate_llc`.
        step_sizes: the coarse ε grid. Default: ε·nβ ∈ {1, 10⁻¹, 10⁻², 10⁻³} for each nβ (the
            stability limit of a direction of curvature h is ε nβ h < 4, so this spans from
            unstable to slow for losses of unit-scale curvature).
        nbetas: the nβ values; None is n / log n (n of the first model's data: one nβ for all
            models). Default: only n / log n, since λ̂ at different nβ estimate different
            finite-nβ quantities; pass several to compare.
        localizations: the γ values (default 1 and 100).
        num_chains, num_draws, num_burnin_steps, batch_size: the short chains of every run
            (defaults: 4 chains × (400 burn-in + 400 draws); keep them small: the sweep runs
            (|ε| × |nβ| × |γ| + 4) × models of them).
        stability: the relative tolerance of "stable against halving ε" (5%).
        target_accept: the MALA acceptance the step size should reach on every model (0.95; module
            docstring; ignored when the sampler records none).
        max_halvings: how many times ε may be halved in search of a stable λ̂.
        min_final_ess: the effective sample size the advised ``num_draws`` of the final run aims at.
        seed: one seed for every run (common random numbers make neighbouring settings comparable).
        truth: the true λ (a number or ``LearningCoefficient``), or a function ``(nbeta, localization)
            -> value`` for a finite-nβ target such as a quadrature (``truth.tempered_expectation_2d``);
            or a list with one per model. Only reported (``rel_error``); the rule never reads it.
        progress: print one line per run.
        estimate_kwargs: passed on to every :func:`~lambdahat.estimate_llc` call (e.g. ``sampler``,
            ``sampled_params``).
    """
    start = time.perf_counter()
    models = _as_models(model_or_models)
    names = list(models)
    datas = _per_model(data, names, "data")
    truths = _per_model(truth, names, "truth")
    if not nbetas:
        raise ValueError("nbetas is empty: pass at least one value (None for n / log n).")
    if not localizations:
        raise ValueError("localizations is empty: pass at least one γ, e.g. (1.0,).")
    if step_sizes is not None and not step_sizes:
        raise ValueError("step_sizes is empty: pass at least one, or None for the default grid.")
    n_first = as_data_source(datas[names[0]]).n
    for value in nbetas:
        if value is None and n_first < 2:
            raise ValueError("nbetas: None means n / log n, which needs n ≥ 2 samples; pass a number.")
    # nβ = None is resolved the way estimate_llc does, so the table and the grid use the number
    nbeta_values = [(n_first / math.log(n_first), True) if v is None else (float(v), False) for v in nbetas]
    chain_settings = dict(num_chains=num_chains, num_draws=num_draws, num_burnin_steps=num_burnin_steps,
                          batch_size=batch_size, seed=seed)
    rows: list[dict[str, Any]] = []
    results: dict[tuple, LLCResult] = {}

    def run(stage: str, step: float, nbeta: float, gamma: float) -> list[dict[str, Any]]:
        out = []
        for name in names:
            result = estimate_llc(
                models[name], datas[name], loss_fn, step_size=step, nbeta=nbeta, localization=gamma,
                **chain_settings, progress=False, **estimate_kwargs,
            )
            row = _row(stage, name, step, result, None if stage == "control" else _truth_at(truths[name], nbeta, gamma))
            rows.append(row)
            results[(stage, name, step, nbeta, gamma)] = result
            out.append(row)
            if progress:
                print(f"  {stage:7} {name}: ε={step:.3g} nβ={nbeta:.4g} γ={gamma:g} → λ̂ = {row['llc']:.4g}"
                      f"{'' if row['sound'] else ' [' + row['failed'] + ']'}", flush=True)
        return out

    # 1. coarse sweep
    sound: dict[tuple[float, float, float], bool] = {}
    by_setting: dict[tuple[float, float, float], list[dict[str, Any]]] = {}
    for nbeta, _ in nbeta_values:
        grid = sorted(step_sizes if step_sizes is not None else [c / nbeta for c in (1.0, 0.1, 0.01, 0.001)],
                      reverse=True)
        for gamma in localizations:
            for step in grid:
                key = (float(step), nbeta, float(gamma))
                by_setting[key] = run("coarse", *key)
                sound[key] = all(r["sound"] for r in by_setting[key])

    # 2. nβ and γ
    pairs = sorted({(nb, g) for (s, nb, g), ok in sound.items() if ok}, key=lambda p: (-p[0], p[1]))
    if not pairs:
        rule = _nothing_sound(rows)
        return CalibrationResult(rows, None, rule, names, chain_settings, results)
    nbeta, gamma = pairs[0]
    nbeta_default = dict(nbeta_values)[nbeta]
    coarse = sorted(s for (s, nb, g) in sound if (nb, g) == (nbeta, gamma))
    sound_coarse = [s for s in coarse if sound[(s, nbeta, gamma)]]
    eps_c = max(sound_coarse)
    ceiling = min([s for s in coarse if s > eps_c and not sound[(s, nbeta, gamma)]], default=math.inf)

    def accepted(step: float) -> bool:
        values = [r["mala_accept"] for r in by_setting[(step, nbeta, gamma)]]
        return all(v is None for v in values) or all(v is not None and v >= target_accept for v in values)

    # 3. fine sweep upward: the coarse grid is coarse, the largest good ε may lie between ε_c and the
    # ceiling; acceptance only falls as ε grows, so stop at the first that is not sound or not accepted
    below = eps_c
    for factor in (2.0, 4.0):
        key = (eps_c * factor, nbeta, gamma)
        if not (sound[(below, nbeta, gamma)] and accepted(below)) or key[0] >= ceiling:
            break
        if key not in sound:
            by_setting[key] = run("fine", *key)
            sound[key] = all(r["sound"] for r in by_setting[key])
        below = key[0]

    # 4. from the largest sound ε, halve until the MALA acceptance reaches target_accept and λ̂ is
    # stable against halving
    step = max(s for (s, nb, g), ok in sound.items() if ok and (nb, g) == (nbeta, gamma))
    notes, stable, warning = [], False, ""
    for _ in range(max_halvings + 1):
        half = (step / 2, nbeta, gamma)
        if half not in sound:
            by_setting[half] = run("fine", *half)
            sound[half] = all(r["sound"] for r in by_setting[half])
        if not accepted(step):
            notes.append(f"ε = {step:.3g}: MALA acceptance below {target_accept}")
            if not sound[half]:
                break
            step = half[0]
            continue
        stable, detail = _stable(by_setting[(step, nbeta, gamma)], by_setting[half], stability)
        notes.append(f"ε = {step:.3g} vs {half[0]:.3g}: {detail}")
        if not sound[half]:
            notes[-1] += f" (ε = {half[0]:.3g} is not sound, so it cannot judge)"
            stable = False
            break
        if stable:
            break
        step = half[0]
    if stable:
        why_step = (
            f"Halving ε from the largest sound one until the MALA acceptance is ≥ {target_accept} on every model "
            f"(where recorded) and λ̂ is stable against halving gives ε = {step:.3g} ({'; '.join(notes)})"
        )
    else:
        why_step = (
            f"Halving ε from the largest sound one did not reach both a MALA acceptance ≥ {target_accept} and a λ̂ "
            f"stable against halving within {max_halvings} halvings ({'; '.join(notes)}), so ε = {step:.3g}"
        )
        warning += " WARNING: λ̂ may still depend on ε here; treat the estimate as rough, or extend the grid / lengthen the chains."

    # 5. the nβ → 0 control
    control = run("control", step, nbeta * _CONTROL_FACTOR, gamma)
    chosen = by_setting[(step, nbeta, gamma)]
    ratios = []
    for row, ctrl in zip(chosen, control):
        rise, base = row["loss_rise"], ctrl["loss_rise"]
        ratios.append(rise / base if base and base > 0 else math.inf)
    worst = max(ratios)
    if worst <= _CONTROL_MAX_RATIO:
        why_control = (
            f"In the nβ → 0 control (nβ × 10⁻⁶, same ε, γ and steps) the loss rises at least {1 / worst:.3g}× as "
            "far as in the real run, so the loss gradient drives the chain"
        )
    else:
        why_control = (
            f"In the nβ → 0 control the loss rises only {1 / worst:.3g}× as far as in the real run (ratio {worst:.2f} > "
            f"{_CONTROL_MAX_RATIO}): the loss gradient barely drives the chain; raise step_size or the number of steps, "
            "and check that loss_fn depends on the sampled weights"
        )
        warning += " WARNING: the nβ → 0 control failed."
    ess_min = min((r["ess"] for r in chosen if r["ess"] is not None and r["ess"] > 0), default=float("nan"))
    if math.isnan(ess_min):
        final_draws = num_draws
    else:  # the ESS grows in proportion to the draws; rounded up to hundreds
        final_draws = max(num_draws, math.ceil(num_draws * min_final_ess / ess_min / 100) * 100)
    recommended = dict(step_size=step, nbeta=nbeta, nbeta_default=nbeta_default, localization=gamma, num_draws=final_draws)
    others = [f"({nb:.4g}, {g:g})" for nb, g in pairs[1:]]
    rule = (
        f"Of the (nβ, γ) pairs with a sound step size ({', '.join(f'({nb:.4g}, {g:g})' for nb, g in pairs)}), "
        f"the largest nβ and then the smallest γ: nβ = {nbeta:.4g}{' (n / log n)' if nbeta_default else ''}, γ = {gamma:g}"
        + (f" (also sound: {', '.join(others)})" if others else "")
        + f". {why_step}. Sound means the setting checks ({', '.join(SETTING_CHECKS)}; an acceptance above the band "
        f"only marks a slow step) pass on every model"
        f" ({len(names)}). {why_control}. The calibration chains reached an ESS of {ess_min:.0f} at least; for "
        f"ESS ≈ {min_final_ess:.0f} run the final estimate with num_draws ≥ {final_draws} (and the same burn-in or more)."
        + warning
    )
    settings = chain_settings | dict(stability=stability, target_accept=target_accept, seconds=time.perf_counter() - start)
    return CalibrationResult(rows, recommended, rule, names, settings, results)


def _row(stage: str, name: str, step: float, result: LLCResult, truth: float | None) -> dict[str, Any]:
    checks = {c.name: c for c in result.checks}
    failed = [c.name for c in checks.values() if not c.ok]
    # an acceptance near 1 means a step that is small, not wrong: whether it was too small for the
    # budget is the convergence check's call, and a small ε is still a valid partner for halving
    accept = checks.get("mala_accept")
    too_small = accept is not None and not accept.ok and accept.value > accept.threshold
    judged = [c for c in checks.values() if not c.ok and c.name in SETTING_CHECKS and not (c is accept and too_small)]
    sound = not judged
    first = judged[0] if judged else None
    first = first or next((c for c in checks.values() if not c.ok), None)
    llc = float(result.llc_mean)
    healthy = result.trace.healthy_chains
    if healthy:
        loss_rise = float(result.trace.draws("loss")[healthy].mean() - result.init_loss)
    else:
        loss_rise = float("nan")

    def value(check: str) -> float | None:
        c = checks.get(check)
        return None if c is None or c.skipped else float(c.value)

    return dict(
        stage=stage,
        model=name,
        step_size=float(step),
        nbeta=float(result.nbeta),
        localization=float(result.config.get("localization", float("nan"))),
        llc=llc,
        mcse=float(result.llc_mcse),
        truth=truth,
        rel_error=(llc - truth) / truth if truth not in (None, 0) and math.isfinite(llc) else None,
        sound=sound,
        healthy=not failed,
        failed=";".join(failed),
        verdict=first.verdict if first else "ok",
        ess=value("ess"),
        rhat=value("rhat"),
        mala_accept=value("mala_accept"),
        prior_share=value("localization"),
        loss_rise=loss_rise,
        seconds=float(result.wall_time),
    )


def _stable(upper: list[dict[str, Any]], lower: list[dict[str, Any]], tolerance: float) -> tuple[bool, str]:
    """Whether λ̂ at the larger ε agrees with λ̂ at the smaller one on every model."""
    details, ok = [], True
    for a, b in zip(upper, lower):
        diff = a["llc"] - b["llc"]
        allowed = tolerance * abs(b["llc"]) + 2 * math.hypot(a["mcse"], b["mcse"])
        ok &= abs(diff) <= allowed
        details.append(f"{a['llc']:.4g} vs {b['llc']:.4g}" + (f" ({a['model']})" if len(upper) > 1 else ""))
    return ok, ", ".join(details) + (" — stable" if ok else " — not stable")


def _nothing_sound(rows: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        for name in row["failed"].split(";"):
            if name in SETTING_CHECKS:
                counts[name] = counts.get(name, 0) + 1
    common = max(counts, key=counts.get) if counts else "?"
    example = next((r["verdict"] for r in rows if common in r["failed"].split(";")), "")
    return (
        f"no setting was sound on every model; the most common failure was {common!r} ({counts.get(common, 0)} of "
        f"{len(rows)} runs), e.g.: {example} Widen the grid in that direction, or lengthen the chains."
    )
