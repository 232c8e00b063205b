"""One sampler setting for every model compared, found by the same adaptation as estimate_llc.

λ̂ at different settings are not comparable (Lau et al., arXiv 2308.12108; the Timaeus users'
guide): to compare models or checkpoints, fix **one** setting of nβ, γ, ε and the chain length
for all of them. The rule:

1. **nβ** is one number for all models: the one given, else n / log n of the first model's data.
2. **Adapt on each model.** :func:`~lambdahat.estimate_llc` with the settings given (the rest
   ``"auto"``) runs the warm-up of :mod:`lambdahat.adapt` on each model: a step size whose MALA
   acceptance meets the target, a localisation the localization check accepts, and a chain
   length that passes the length checks.
3. **One setting.** The smallest step size and the smallest γ any model chose (a step that is
   accurate on the stiffest model is accurate on all; the least localisation is the least biased),
   and the largest burn-in and draws any model needed.
4. **Verify.** Every model is estimated again at that one setting (with the ``nbeta`` check of a
   second run at 4nβ when nβ was left at n / log n); the result says which models it certifies,
   and ``certified`` is true only when it certifies all of them.

The truth, when given, is only reported (the ``rel_error`` column): it never enters the rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from . import tables
from .data import as_data_source
from .estimate import LLCResult, estimate_llc
from .potential import default_nbeta
from .settings import AUTO, Settings

__all__ = ["CalibrationResult", "calibrate", "ROW_KEYS"]

ROW_KEYS = (
    "stage", "model", "step_size", "nbeta", "localization", "num_burnin_steps", "num_draws", "llc", "mcse", "truth",
    "rel_error", "certified", "failed", "verdict", "ess", "mala_accept", "seconds",
)


@dataclass
class CalibrationResult:
    """The adaptive run of each model, the one setting chosen, and each model's run at it.

    - ``rows``: one dict per run, keys :data:`ROW_KEYS`: ``stage`` ("adaptive" or "common"),
      ``model``, the settings, ``llc`` and ``mcse``, ``truth`` and ``rel_error`` (None without a
      truth), ``certified``, ``failed`` (the names of the failing checks, a list), ``verdict`` (the
      first failing check's verdict, or "ok"), ``ess``, ``mala_accept`` and ``seconds``.
    - ``recommended``: the one :class:`~lambdahat.settings.Settings` for every model; pass it as
      ``estimate_llc(model, data, loss, **cal.recommended)``.
    - ``certified``: the recommended setting certified every model.
    - ``rule``: the rule, with the numbers that decided.
    - ``results``: the :class:`~lambdahat.LLCResult` of each run, keyed ``(stage, model)``.
    """

    rows: list[dict[str, Any]]
    recommended: Settings
    certified: bool
    rule: str
    models: list[str]
    results: dict[tuple[str, str], LLCResult] = field(default_factory=dict, repr=False)

    def recommended_results(self) -> dict[str, LLCResult]:
        """Each model's run at the recommended setting (empty when ``verify=False``)."""
        return {model: r for (stage, model), r in self.results.items() if stage == "common"}

    def to_dataframe(self):
        """The table as a ``pandas.DataFrame`` (needs pandas; :meth:`write_csv` does not)."""
        return tables.to_dataframe(self.rows, ROW_KEYS)

    def write_csv(self, path: str | Path) -> Path:
        """Write the table to a CSV file, one row per run; returns the path."""
        return tables.write_csv(path, self.rows, ROW_KEYS)

    def table(self) -> str:
        """The table as fixed-width text, one line per run."""
        has_truth = any(row["truth"] is not None for row in self.rows)
        header = f"{'stage':8} {'model':18} {'ε':>9} {'nβ':>9} {'γ':>7} {'draws':>6} {'λ̂':>10} {'MCSE':>8}"
        header += f" {'error':>7}" if has_truth else ""
        header += f" {'ESS':>6} {'accept':>6}  verdict"
        lines = [header]
        for row in self.rows:
            line = (
                f"{row['stage']:8} {row['model'][:18]:18} {tables.fmt(row['step_size'], '.3g', width=9)} "
                f"{tables.fmt(row['nbeta'], '.4g', width=9)} {tables.fmt(row['localization'], '.3g', width=7)} "
                f"{tables.fmt(row['num_draws'], 'd', width=6)} {tables.fmt(row['llc'], '.4g', width=10)} "
                f"{tables.fmt(row['mcse'], '.2g', width=8)}"
            )
            if has_truth:
                line += " " + tables.fmt(row["rel_error"], "+.1%", width=7)
            line += f" {tables.fmt(row['ess'], '.0f', width=6)} {tables.fmt(row['mala_accept'], '.3f', width=6)}"
            line += "  certified" if row["certified"] else f"  NOT certified: {', '.join(row['failed'])}"
            lines.append(line)
        return "\n".join(lines)

    def __str__(self) -> str:
        rec = self.recommended
        return "\n".join([
            self.table(),
            "",
            f"Recommended for every model: step_size={rec.step_size:.3g}, nbeta={rec.nbeta:.6g}, "
            f"localization={rec.localization:g}, num_burnin_steps={rec.num_burnin_steps}, num_draws={rec.num_draws}"
            + (" — certified on every model" if self.certified else " — NOT certified on every model (see the table)"),
            "Rule: " + self.rule,
        ])


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


def _truth_value(truth: Any) -> float | None:
    return None if truth is None else float(getattr(truth, "value", truth))


def _row(stage: str, name: str, result: LLCResult, truth: float | None) -> dict[str, Any]:
    checks = {c.name: c for c in result.checks}
    failed = [c.name for c in result.checks if not c.ok]
    llc = float(result.llc_mean)
    accept = checks.get("mala_accept")
    st = result.settings
    return dict(
        stage=stage, model=name, step_size=float(st.step_size), nbeta=float(result.nbeta),
        localization=float(st.localization), num_burnin_steps=int(st.num_burnin_steps), num_draws=int(st.num_draws),
        llc=llc, mcse=float(result.llc_mcse), truth=truth,
        rel_error=(llc - truth) / truth if truth not in (None, 0) else None,
        certified=result.certified, failed=failed,
        verdict=checks[failed[0]].verdict if failed else "ok",
        ess=float(result.ess),
        mala_accept=None if accept is None or accept.skipped else float(accept.value),
        seconds=float(result.wall_time),
    )


def calibrate(
    model_or_models: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
    data: Any,
    loss_fn: Callable[..., Tensor],
    *,
    truth: Any = None,
    verify: bool = True,
    progress: bool = True,
    **settings: Any,
) -> CalibrationResult:
    """One setting for every model, by the rule of the module docstring.

    Args:
        model_or_models: one model, a sequence of models (checkpoints) or a dict name → model.
        data: the data, shared by all models; or a list with one dataset per model (a tuple is
            always a single ``(inputs, targets)`` dataset).
        loss_fn: as for :func:`~lambdahat.estimate_llc`.
        truth: the true λ (a number or ``LearningCoefficient``), or a list with one per model; only
            reported (``rel_error``), never used by the rule.
        verify: estimate every model again at the chosen setting (the ``common`` rows).
        progress: print one line per run.
        settings: any :class:`~lambdahat.settings.Settings` field (and ``sampled_params``), kept as
            given in every run; the fields left ``"auto"`` are chosen by the rule.
    """
    start = time.perf_counter()
    models = _as_models(model_or_models)
    names = list(models)
    datas = _per_model(data, names, "data")
    truths = {name: _truth_value(t) for name, t in _per_model(truth, names, "truth").items()}
    sampled_params = settings.pop("sampled_params", None)
    given = Settings.from_mapping(settings, where="calibrate")  # every setting checked before any work
    nbeta = given.nbeta if given.nbeta is not None else default_nbeta(as_data_source(datas[names[0]]).n)
    extra = {} if sampled_params is None else {"sampled_params": sampled_params}
    rows: list[dict[str, Any]] = []
    results: dict[tuple[str, str], LLCResult] = {}

    def run(stage: str, name: str, run_settings: Settings) -> LLCResult:
        result = estimate_llc(models[name], datas[name], loss_fn, progress=False, **run_settings, **extra)
        rows.append(_row(stage, name, result, truths[name]))
        results[(stage, name)] = result
        if progress:
            verdict = "certified" if result.certified else "not certified: " + ", ".join(rows[-1]["failed"])
            print(f"  {stage:8} {name}: λ̂ = {result.llc_mean:.4g} ± {result.llc_mcse:.2g} at ε = "
                  f"{result.settings.step_size:.3g}, γ = {result.settings.localization:g} ({verdict})", flush=True)
        return result

    # the nβ check judges the one setting, in the verify runs, not the adaptive runs that choose it
    adaptive = {name: run("adaptive", name, given.replace(nbeta=nbeta, nbeta_check=False)) for name in names}
    chosen = [r.settings for r in adaptive.values()]
    step = min(s.step_size for s in chosen)
    travel = max(r.burnin_at(step) for r in adaptive.values())
    # capped at the largest step budget: where the models' steps differ a hundredfold the travel
    # would be a hundredfold too, and the common runs' own checks judge whether the cap sufficed
    budgets = [s.max_steps for s in chosen if isinstance(s.max_steps, int)]  # "auto" where nothing adapted
    budget = max(budgets) if budgets else travel
    burnin = max(min(travel, budget), max(s.num_burnin_steps for s in chosen))
    common = given.replace(
        nbeta=nbeta,
        sampler=_one_sampler(chosen) if given.sampler == AUTO else given.sampler,
        step_size=step,
        localization=min(s.localization for s in chosen),
        # as long as any model's warm-up needed to travel from w*, at the one (smallest) ε
        num_burnin_steps=burnin,
        num_draws=max(s.num_draws for s in chosen),
        batch_size=chosen[0].batch_size if given.batch_size is None and len({s.batch_size for s in chosen}) == 1
        else given.batch_size,
        nbeta_check=given.nbeta is None if given.nbeta_check == AUTO else given.nbeta_check,
        # the paired loss costs a forward and changes no chain: on for all where any model's run needed it
        paired_loss=any(s.paired_loss for s in chosen) if given.paired_loss == AUTO else given.paired_loss,
    )
    verified = {name: run("common", name, common) for name in names} if verify else {}
    certified = bool(verified) and all(r.certified for r in verified.values())
    failing = [name for name, r in verified.items() if not r.certified]
    rule = (
        f"nβ = {nbeta:.6g}" + (" (n / log n of the first model's data)" if given.nbeta is None else " (given)")
        + f" for every model; the adaptive warm-up on each of the {len(names)} model(s) chose step sizes "
        + ", ".join(f"{s.step_size:.3g}" for s in chosen) + "; the smallest, "
        f"{common.step_size:.3g}, the smallest γ ({common.localization:g}), the longest draws and a burn-in "
        f"long enough at that ε for every model's chains to travel from w* as far as its warm-up did "
        + (f"({travel} steps, capped at the largest step budget) " if travel > burnin else "")
        + f"({common.num_burnin_steps} burn-in + {common.num_draws} draws) are the one setting. "
        + (f"At it, {len(verified) - len(failing)} of {len(verified)} models are certified"
           + (f"; not: {', '.join(failing)} (see their verdicts)." if failing else ".") if verify
           else "Not verified (verify=False).")
    )
    if progress:
        print(f"  calibration took {time.perf_counter() - start:.0f} s", flush=True)
    return CalibrationResult(rows, common, certified, rule, names, results)


def _one_sampler(chosen: Sequence[Settings]) -> Any:
    """The auto sampler's one setting for every model: SGHMC at the largest friction the warm-ups
    chose (the friction that keeps every model's minibatch-noise bias within bounds)."""
    samplers = [s.sampler for s in chosen]
    frictions = [getattr(s, "options", {}).get("friction") for s in samplers]
    if any(f is None for f in frictions):
        return samplers[0]
    return samplers[int(np.argmax(frictions))]
