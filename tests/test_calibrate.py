"""lambdahat.calibrate: the sweep, its table, the rule, and known answers recovered without the truth.

The known-answer tests give ``calibrate`` the truth only so the table can show the error; the rule
never reads it (checked below by calibrating again without it). The CI tier runs one such case,
a 4-3-8 deep linear network at n = 10⁵ (λ = 6, Aoyagi 2024), on the calibration's own short
chains; the slow tier runs every family (DLN, reduced-rank regression, normal crossing, several
checkpoints at once) and then a final run at the recommended setting, as a user would.

Tolerance 10% (the issue's), against λ: as in tests/test_known_answers.py, these compare a
finite-nβ estimate with the nβ → ∞ value, so the gap is not only Monte Carlo error.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch

import lambdahat as lh
from lambdahat import tasks
from lambdahat.calibrate import LENGTH_CHECKS, SETTING_CHECKS, CalibrationResult, calibrate

# 200 steps per chain: the sampler records the MALA acceptance every 50 steps, so fewer would leave
# the acceptance check a sample or two to go on
TINY = dict(num_chains=2, num_draws=150, num_burnin_steps=50, batch_size=100, progress=False)


def _tiny_task(seed=0):
    return tasks.deep_linear_network([4, 3, 2], rank=1, n=1000, seed=seed)


@pytest.fixture(scope="module")
def tiny():
    task = _tiny_task()
    return task, calibrate(task.model, task.data, task.loss_fn, step_sizes=(3e-2, 3e-3, 3e-4), nbetas=(100.0,),
                           localizations=(1.0, 1e3), truth=task.truth, **TINY)


def _recommended_rows(cal: CalibrationResult):
    rec = cal.recommended
    return [r for r in cal.rows if r["stage"] != "control"
            and (r["step_size"], r["nbeta"], r["localization"]) == (rec["step_size"], rec["nbeta"], rec["localization"])]


def test_table_holds_every_run_and_the_rule_is_stated(tiny, tmp_path):
    task, cal = tiny
    stages = [r["stage"] for r in cal.rows]
    assert stages.count("coarse") == 3 * 1 * 2 and stages.count("control") == 1 and "fine" in stages
    assert set(cal.rows[0]) >= {"step_size", "nbeta", "localization", "llc", "mcse", "sound", "healthy", "failed",
                                "verdict", "truth", "rel_error"}
    # every failing check of every run is named, and "sound" means no setting check failed (an
    # acceptance above the band only says the step is small, which is not held against it)
    for row in cal.rows:
        failed = set(filter(None, row["failed"].split(";")))
        assert failed <= set(SETTING_CHECKS) | set(LENGTH_CHECKS)
        if row["mala_accept"] is not None and row["mala_accept"] > 0.995:
            failed.discard("mala_accept")
        assert row["sound"] == (not failed & set(SETTING_CHECKS))
    # γ = 1000 confines the chain: not chosen, and the table says why
    assert all("localization" in r["failed"] for r in cal.rows if r["localization"] == 1e3 and r["stage"] == "coarse"
               and not "divergence" in r["failed"])
    rec = cal.recommended
    assert rec is not None and rec["localization"] == 1.0 and rec["nbeta"] == 100.0
    assert all(r["sound"] for r in _recommended_rows(cal))
    assert "largest nβ and then the smallest γ" in cal.rule and "control" in cal.rule
    text = str(cal)
    assert "Recommended: step_size=" in text and "Rule:" in text
    # the control: same ε and γ as recommended, nβ shrunk by 10⁶, loss rising far higher
    control = next(r for r in cal.rows if r["stage"] == "control")
    assert control["step_size"] == rec["step_size"] and math.isclose(control["nbeta"], 1e-4)
    assert control["loss_rise"] > 2 * _recommended_rows(cal)[0]["loss_rise"]
    # CSV without pandas; to_dataframe with it, or a clear ImportError
    path = cal.write_csv(tmp_path / "cal.csv")
    with path.open() as handle:
        assert len(list(csv.DictReader(handle))) == len(cal.rows)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pandas"):
            cal.to_dataframe()
    else:
        assert len(cal.to_dataframe()) == len(cal.rows)


def test_the_truth_is_reported_but_never_used(tiny):
    task, with_truth = tiny
    blind = calibrate(task.model, task.data, task.loss_fn, step_sizes=(3e-2, 3e-3, 3e-4), nbetas=(100.0,),
                      localizations=(1.0, 1e3), **TINY)
    assert blind.recommended == with_truth.recommended
    assert all(r["truth"] is None and r["rel_error"] is None for r in blind.rows)
    row = _recommended_rows(with_truth)[0]
    assert row["truth"] == float(task.truth.value)
    assert row["rel_error"] == pytest.approx((row["llc"] - row["truth"]) / row["truth"])


def test_one_setting_for_several_checkpoints():
    """Two models with their own data: the recommended setting is sound on both."""
    models = {"seed 0": _tiny_task(0), "seed 1": _tiny_task(1)}
    cal = calibrate({k: t.model for k, t in models.items()}, [t.data for t in models.values()],
                    models["seed 0"].loss_fn, step_sizes=(1e-2, 1e-3), nbetas=(100.0,), localizations=(1.0,),
                    truth=[t.truth for t in models.values()], **TINY)
    assert cal.models == ["seed 0", "seed 1"]
    rows = _recommended_rows(cal)
    assert {r["model"] for r in rows} == {"seed 0", "seed 1"} and all(r["sound"] for r in rows)
    assert set(cal.recommended_results()) == {"seed 0", "seed 1"}


def test_nothing_sound_says_what_failed():
    task = _tiny_task()
    cal = calibrate(task.model, task.data, task.loss_fn, step_sizes=(1.0, 0.3), nbetas=(100.0,), localizations=(1.0,),
                    **TINY)
    assert cal.recommended is None
    assert "'divergence'" in cal.rule and "lower step_size" in cal.rule
    assert "No setting recommended." in str(cal)


def test_bad_arguments_name_themselves():
    task = _tiny_task()
    with pytest.raises(ValueError, match="localizations"):
        calibrate(task.model, task.data, task.loss_fn, localizations=(), **TINY)
    with pytest.raises(ValueError, match="one entry per model"):
        calibrate([task.model, task.model], [task.data], task.loss_fn, **TINY)
    with pytest.raises(TypeError, match="nn.Module"):
        calibrate([task.model, "not a model"], task.data, task.loss_fn, **TINY)


def _check_recommendation(task, cal, rel_tol=0.10):
    rec = cal.recommended
    assert rec is not None, cal.rule
    row = next(r for r in _recommended_rows(cal) if r["model"] == "model")
    target = float(task.truth.value)
    error = (row["llc"] - target) / target
    assert abs(error) <= rel_tol, f"{task.name}: λ̂ {row['llc']:.4g} vs λ = {target} ({error:+.1%})\n{cal}"
    return row


def test_calibrate_recovers_a_deep_linear_network_without_the_truth():
    """CI tier: DLN 4-3-8 at rank 0 (λ = 6), n = 10⁵, nβ = n / log n, γ = 1, a 3-point coarse grid."""
    task = tasks.deep_linear_network((4, 3, 8), 0, n=100_000, seed=1)
    cal = calibrate(task.model, task.data, task.loss_fn, step_sizes=(1e-3, 1e-4, 1e-5), localizations=(1.0,),
                    num_chains=4, num_draws=300, num_burnin_steps=300, batch_size=500, truth=task.truth,
                    progress=False)
    _check_recommendation(task, cal)
    assert cal.recommended["nbeta_default"]


def _noise_free_crossing(point, copies, n=64):
    """w1·w2² with inputs scaled to mean(x²) = 1 per copy and targets 0: L_n − L_n(w*) = ½ Σ (w1 w2²)²."""
    task = tasks.normal_crossing((1, 2), point=point, n=n, copies=copies, seed=0)
    x = task.data[0]
    x = x / x.pow(2).mean(dim=0).sqrt()
    task.data = (x, torch.zeros_like(x))
    return task


_DRIFT = pytest.mark.xfail(
    strict=True,
    reason="measured: calibration (4 × 800 steps) picks ε = 5.76e-5 with λ̂ −1.4%, but the final run "
    "(4 × 4200 steps) gives +11.2%; at γ = 1 λ̂ keeps rising with chain time (+10% at ε = 1.15e-4 and +6.6% at "
    "2.88e-5 for the same ε × steps; γ = 10: +4.0%), the flat directions still spreading (README: known limitation). "
    "Short calibration chains cannot see it: the change is ~2 MCSE.",
)
SLOW_CASES = {
    "dln 4-3-8 r=0": (lambda: tasks.deep_linear_network((4, 3, 8), 0, n=100_000, seed=1), {}),
    "dln 3-2-4 r=1": (lambda: tasks.deep_linear_network((3, 2, 4), 1, n=100_000, seed=1), {}),
    "dln 30-20-10 r=1 (demo)": (lambda: tasks.deep_linear_network((30, 20, 10), 1, n=10_000, seed=0),
                                dict(localizations=(1.0, 100.0))),
    "rrr 3-3-3 r=1": (lambda: tasks.reduced_rank_regression(3, 3, 3, 1, n=100_000, seed=1), {}),
    "rrr 2-1-5 r=1": (lambda: tasks.reduced_rank_regression(2, 1, 5, 1, n=100_000, seed=1), {}),
    # at (0, 1) only w1 is constrained: λ = 1/2 per copy (REFERENCE §3.3); γ = 100 keeps w2 near 1
    "normal crossing (0, 1) x200": (lambda: _noise_free_crossing((0.0, 1.0), 200),
                                    dict(nbetas=(1e4,), localizations=(100.0,), batch_size=64)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, marks=_DRIFT) if c == "dln 4-3-8 r=0" else c for c in SLOW_CASES])
def test_recommended_setting_recovers_known_answers(case, record_known_answer):
    """Calibrate blind, then estimate at the recommended setting with the advised number of draws
    (capped at 4000): both within 10% of λ."""
    make, overrides = SLOW_CASES[case]
    task = make()
    settings = dict(localizations=(1.0,), batch_size=500, truth=task.truth, progress=False) | overrides
    cal = calibrate(task.model, task.data, task.loss_fn, **settings)
    _check_recommendation(task, cal)
    rec = cal.recommended
    draws = min(rec["num_draws"], 4000)
    final = lh.estimate_llc(task.model, task.data, task.loss_fn, step_size=rec["step_size"], nbeta=rec["nbeta"],
                            localization=rec["localization"], num_chains=4, num_draws=draws,
                            num_burnin_steps=max(400, draws // 2), batch_size=settings["batch_size"], progress=False)
    target = float(task.truth.value)
    record_known_answer(f"{task.name} (calibrated ε = {rec['step_size']:.3g})", target, final, "λ, calibrated blind")
    assert not final.diverged
    assert abs(final.llc_mean - target) <= 0.10 * target, (
        f"{case}: final λ̂ {final.llc_mean:.4g} ± {final.llc_mcse:.2g} vs λ = {target}\n{cal}"
    )


@pytest.mark.slow
def test_one_setting_for_checkpoints_of_different_complexity():
    """A 4-3-8 network at teachers of rank 0 and 1 (λ = 6 and 8.5): one setting, both within 10%."""
    made = [tasks.deep_linear_network((4, 3, 8), r, n=100_000, seed=1) for r in (0, 1)]
    cal = calibrate({t.name: t.model for t in made}, [t.data for t in made], made[0].loss_fn, localizations=(1.0,),
                    batch_size=500, truth=[t.truth for t in made], progress=False)
    assert cal.recommended is not None, cal.rule
    for row in _recommended_rows(cal):
        assert abs(row["rel_error"]) <= 0.10, str(cal)
