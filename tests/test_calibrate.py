"""lambdahat.calibrate: one setting for every model, found by the adaptive estimate of each.

The rule (module docstring of lambdahat.calibrate): the adaptive warm-up of estimate_llc on each
model, then the smallest step size and γ and the longest chains as the one setting, verified on
every model. The tests run on a 4-3-2 deep linear network (n = 1000, 2 chains, a budget of 2000
steps per chain: a few seconds per run) and check the contract: the recommended setting passes
straight to estimate_llc and reproduces the verification run, the rule picks what it says, given
settings are kept, the truth is only reported, and bad inputs are refused before any sampling.
The slow test checks accuracy on known answers.
"""

from __future__ import annotations

import csv
import importlib

import pytest

import lambdahat as lh
from lambdahat import tasks
from lambdahat.calibrate import ROW_KEYS, CalibrationResult, calibrate
from lambdahat.potential import default_nbeta
from lambdahat.settings import Settings
from tests._harness import small_dln

calibrate_module = importlib.import_module("lambdahat.calibrate")  # the module: lambdahat.calibrate is the function
TINY = dict(num_chains=2, max_steps=2000, progress=False)
#: every setting fixed: no warm-up, 2 × (100 + 200) steps
FIXED = dict(step_size=1e-3, localization=1.0, num_burnin_steps=100, num_draws=200, num_chains=2, batch_size=100,
             progress=False)


@pytest.fixture(scope="module")
def tiny():
    task = small_dln()
    return task, calibrate(task.model, task.data, task.loss_fn, truth=task.truth, **TINY)


@pytest.fixture(scope="module")
def stiff_pair():
    """The same network on its data and on the data scaled by 3: the loss is 9× as curved, so its
    warm-up must choose a smaller ε (the SGLD stability limit scales like 1 / curvature)."""
    task = small_dln()
    x, y = task.data
    models = {"x1": task.model, "x3": task.model}
    cal = calibrate(models, [(x, y), (3 * x, 3 * y)], task.loss_fn, truth=[task.truth, task.truth], **TINY)
    return task, cal


def _rows(cal: CalibrationResult, stage: str) -> dict[str, dict]:
    return {row["model"]: row for row in cal.rows if row["stage"] == stage}


def test_rows_verdicts_and_text(tiny, tmp_path):
    task, cal = tiny
    assert [r["stage"] for r in cal.rows] == ["adaptive", "common"] and cal.models == ["model"]
    for row in cal.rows:
        assert tuple(row) == ROW_KEYS
        result = cal.results[(row["stage"], row["model"])]
        # the row is the run's own verdict: certified exactly when no check failed, failures named in order
        assert row["failed"] == [c.name for c in result.checks if not c.ok]
        assert row["certified"] == result.certified == (not row["failed"])
        assert (row["verdict"] == "ok") == row["certified"]
        assert row["llc"] == result.llc_mean and row["mcse"] == result.llc_mcse
    assert cal.certified == _rows(cal, "common")["model"]["certified"]
    assert isinstance(cal.recommended, Settings) and cal.recommended.auto_fields == []
    text = str(cal)
    assert "Recommended for every model: step_size=" in text and "Rule: " in text and "smallest" in cal.rule
    assert ("— certified on every model" in text) == cal.certified != ("NOT certified on every model" in text)
    assert len(cal.table().splitlines()) == 1 + len(cal.rows)
    # CSV without pandas, one line per run, the failed checks joined by ";"
    path = cal.write_csv(tmp_path / "cal.csv")
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert len(read) == len(cal.rows) and tuple(read[0]) == ROW_KEYS
    assert [r["failed"] for r in read] == [";".join(r["failed"]) for r in cal.rows]
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pandas"):
            cal.to_dataframe()
    else:
        assert len(cal.to_dataframe()) == len(cal.rows)


def test_recommended_passes_straight_to_estimate_llc(tiny):
    """``estimate_llc(model, data, loss, **cal.recommended)`` runs at exactly that setting, and so
    reproduces the calibration's own run at it bit for bit (same seed, fixed settings)."""
    task, cal = tiny
    again = lh.estimate_llc(task.model, task.data, task.loss_fn, progress=False, **cal.recommended)
    assert again.settings == cal.recommended
    assert again.adaptation is None  # nothing left to adapt
    common = cal.recommended_results()["model"]
    assert again.llc_mean == common.llc_mean and again.llc_mcse == common.llc_mcse
    assert again.certified == common.certified
    # and a different model at it is run at the same setting too (the point of one setting)
    other = small_dln(seed=1)
    assert lh.estimate_llc(other.model, other.data, other.loss_fn, progress=False,
                           **cal.recommended).settings == cal.recommended


def test_smallest_step_size_and_longest_chains_for_every_model(stiff_pair):
    task, cal = stiff_pair
    adaptive, common, rec = _rows(cal, "adaptive"), _rows(cal, "common"), cal.recommended
    assert list(adaptive) == list(common) == ["x1", "x3"]
    # the stiffer loss gets the smaller step: a factor 2 is far inside the 9× of the curvature
    # (measured: 6×), so the adaptation's noise cannot reverse it
    assert adaptive["x3"]["step_size"] < adaptive["x1"]["step_size"] / 2, cal
    assert rec.step_size == min(r["step_size"] for r in adaptive.values()) == adaptive["x3"]["step_size"]
    assert rec.localization == min(r["localization"] for r in adaptive.values())
    # the burn-in: long enough at the one ε for every model's chains to travel from w* as far as its
    # own warm-up did (Σ ε_t / ε), at most the largest step budget, never shorter than any model's
    runs = [r for (stage, _), r in cal.results.items() if stage == "adaptive"]
    travel = max(max(r.settings.num_burnin_steps, r.adaptation.burnin_at(rec.step_size)) for r in runs)
    ran = max(r["num_burnin_steps"] for r in adaptive.values())
    assert travel > ran  # the stiff model's smaller ε makes the other's warm-up worth more steps
    assert rec.num_burnin_steps == max(min(travel, max(r.settings.max_steps for r in runs)), ran)
    assert ("capped at the largest step budget" in cal.rule) == (travel > rec.num_burnin_steps)
    assert rec.num_draws == max(r["num_draws"] for r in adaptive.values())
    # nβ: n / log n of the first model's data, one value for all
    assert rec.nbeta == default_nbeta(1000) and all(r["nbeta"] == rec.nbeta for r in cal.rows)
    for row in common.values():
        assert (row["step_size"], row["localization"], row["num_burnin_steps"], row["num_draws"]) == (
            rec.step_size, rec.localization, rec.num_burnin_steps, rec.num_draws)
    assert cal.certified == all(r["certified"] for r in common.values())
    assert set(cal.recommended_results()) == {"x1", "x3"}
    assert f"{rec.step_size:.3g}" in cal.rule


def test_given_settings_are_kept_as_given():
    task = small_dln()
    cal = calibrate(task.model, task.data, task.loss_fn, step_size=5e-4, localization=2.0, nbeta=50.0, seed=3,
                    batch_size=100, **TINY)
    for row in cal.rows:
        assert (row["step_size"], row["localization"], row["nbeta"]) == (5e-4, 2.0, 50.0)
    rec = cal.recommended
    assert (rec.step_size, rec.localization, rec.nbeta, rec.seed, rec.batch_size, rec.num_chains) == (
        5e-4, 2.0, 50.0, 3, 100, 2)
    assert "(given)" in cal.rule
    # the chain length was left to the warm-up: an integer within the budget
    assert 0 < rec.num_burnin_steps + rec.num_draws <= TINY["max_steps"]


def test_every_setting_given_runs_no_warm_up():
    """With nothing left "auto" the adaptive and common runs are the same fixed run, on a second
    model family (the normal crossing w1·w2² at (0, 1), λ = 1/2)."""
    task = tasks.normal_crossing((1, 2), point=(0.0, 1.0), n=1000, seed=0)
    cal = calibrate(task.model, task.data, task.loss_fn, nbeta=100.0, truth=task.truth, **FIXED)
    rec = cal.recommended
    assert (rec.step_size, rec.localization, rec.num_burnin_steps, rec.num_draws) == (1e-3, 1.0, 100, 200)
    assert all(r.adaptation is None for r in cal.results.values())
    adaptive, common = cal.rows
    assert adaptive["llc"] == common["llc"]  # the same seed and settings: the same chains
    assert common["truth"] == 0.5


def test_the_truth_is_reported_but_never_used(tiny):
    task, with_truth = tiny
    blind = calibrate(task.model, task.data, task.loss_fn, **TINY)
    assert blind.recommended == with_truth.recommended
    assert [r["llc"] for r in blind.rows] == [r["llc"] for r in with_truth.rows]
    assert all(r["truth"] is None and r["rel_error"] is None for r in blind.rows)
    assert "error" not in blind.table().splitlines()[0]
    for row in with_truth.rows:
        assert row["truth"] == float(task.truth.value)
        assert row["rel_error"] == pytest.approx((row["llc"] - row["truth"]) / row["truth"])
    assert "error" in with_truth.table().splitlines()[0]


def test_verify_false_runs_only_the_adaptive_estimates():
    task = small_dln()
    cal = calibrate(task.model, task.data, task.loss_fn, verify=False, **TINY)
    assert [r["stage"] for r in cal.rows] == ["adaptive"]
    assert not cal.certified and cal.recommended_results() == {}
    assert cal.recommended.step_size == cal.rows[0]["step_size"] and "Not verified" in cal.rule


def test_bad_inputs_are_refused_before_any_sampling(monkeypatch):
    task = small_dln()

    def no_sampling(*args, **kwargs):
        raise AssertionError("calibrate sampled before checking its inputs")

    monkeypatch.setattr(calibrate_module, "estimate_llc", no_sampling)
    args = (task.data, task.loss_fn)
    with pytest.raises(ValueError, match="empty"):
        calibrate([], *args, **TINY)
    with pytest.raises(ValueError, match="empty"):
        calibrate({}, *args, **TINY)
    with pytest.raises(ValueError, match=r"data: a list needs one entry per model \(2\), got 1"):
        calibrate([task.model, task.model], [task.data], task.loss_fn, **TINY)
    with pytest.raises(ValueError, match=r"truth: a list needs one entry per model \(2\), got 3"):
        calibrate([task.model, task.model], *args, truth=[1.0, 2.0, 3.0], **TINY)
    with pytest.raises(TypeError, match=r"model 'model 1' is a str, not an nn.Module"):
        calibrate([task.model, "not a model"], *args, **TINY)
    with pytest.raises(TypeError, match="nn.Module"):
        calibrate("not a model", *args, **TINY)
    # the old grid's arguments are unknown settings now, and the error names them
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['step_sizes'\]"):
        calibrate(task.model, *args, step_sizes=(1e-3, 1e-4), **TINY)
    with pytest.raises(TypeError, match=r"\['localizations', 'nbetas'\]"):
        calibrate(task.model, *args, nbetas=(100.0,), localizations=(1.0,), **TINY)
    with pytest.raises(ValueError, match="step_size must be a positive"):
        calibrate(task.model, *args, step_size=-1e-3, **TINY)


@pytest.mark.slow
def test_one_setting_for_checkpoints_of_different_complexity(record_known_answer):
    """A 4-3-8 network at teachers of rank 0 and 1 (λ = 6 and 8.5, Aoyagi 2024), n = 10⁵, all
    defaults: every estimate at the recommended setting that is certified is within 10% of λ
    (issue 16: no certified estimate off by more than 10%; the gap to λ is not only Monte Carlo
    error, since a finite-nβ estimate is compared with the nβ → ∞ value). An expected failure until
    2026-12-02 (+10.7% and +17.1% at the common setting, with an acceptance target of 0.9); it
    passes since the warm-up aims at the λ̂-dependent target of ``health.acceptance_target``."""
    made = [tasks.deep_linear_network((4, 3, 8), r, n=100_000, seed=1) for r in (0, 1)]
    cal = calibrate({t.name: t.model for t in made}, [t.data for t in made], made[0].loss_fn,
                    truth=[t.truth for t in made], progress=False)
    for task in made:
        record_known_answer(f"{task.name} (lh.calibrate, common setting)", float(task.truth.value),
                            cal.recommended_results()[task.name], "λ, calibrated blind")
    for row in _rows(cal, "common").values():
        if row["certified"]:
            assert abs(row["rel_error"]) <= 0.10, str(cal)
