"""The adaptive estimate (lambdahat.adapt): exact answers with settings chosen on the run, and the
contract: given settings kept, the result's settings reproduce it, same seed → same bits.

The exact tests mirror tests/test_known_answers.py with the step size (and chain length) left to
the warm-up; each states its target and why its tolerance holds for an adapted ε too.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

import lambdahat as lh
from lambdahat import adapt, cost, noise, stopping, tasks, truth
from lambdahat.settings import Settings

Z = 4.0


def _agrees(result, target, rel_tol):
    error = result.llc_mean - target
    return abs(error) <= rel_tol * abs(target) and abs(error) <= Z * result.llc_mcse + 1e-12, (
        f"estimate {result.llc_mean:.4f} ± {result.llc_mcse:.4f} vs exact {target:.4f} "
        f"(relative error {error / target:+.2%}, tolerance {rel_tol:.0%})"
    )


@pytest.fixture(scope="module")
def small_dln():
    return tasks.deep_linear_network([4, 3, 2], 1, n=2000, seed=0)


@pytest.fixture(scope="module")
def auto_run(small_dln):
    t = small_dln
    return lh.estimate_llc(t.model, t.data, t.loss_fn, max_steps=4000, progress=False)


def test_quasi_homogeneous_gamma_zero_with_an_adapted_step(record_known_answer):
    """K = Σ |w_i|^{p_i}, γ = 0 given: E[nβ K] = Σ 1/p_i exactly at any nβ. The warm-up picks ε for
    a MALA acceptance of 0.9 on 500 copies (a proposal in 500–1000 dimensions at that acceptance
    has h = ε·curvature ≈ 0.2, an Euler bias ≲ 2% on the p = 4 copies); tolerance 5%."""
    task = tasks.quasi_homogeneous([4, 2], copies=500)
    result = lh.estimate_llc(task.model, task.data, task.loss_fn, localization=0.0, nbeta=1.0, max_steps=6000,
                             progress=False)
    assert result.settings.localization == 0.0  # given: kept as given
    assert result.settings.step_size != "auto" and result.settings.step_size > 0
    record_known_answer(task.name + " (adaptive ε)", float(task.truth.value), result, "exact E[nβK], γ = 0")
    ok, message = _agrees(result, float(task.truth.value), 0.05)
    assert ok, message


def test_quadratic_at_the_adapted_step_matches_the_exact_finite_step_value(record_known_answer):
    """Linear regression, full batch: whatever ε the warm-up chose, SGLD's stationary law at that ε
    is known exactly (1 / (a (1 − εa/4)) per direction); the estimate must match it within 3% and
    4 MCSE, and the measured bias must have the sign and rough size of the exact ε-bias."""
    task = tasks.linear_regression(dim=20, n=1000, seed=0)
    eig = task.info["hessian_eigenvalues"]
    nbeta, gamma = 100.0, 10.0
    result = lh.estimate_llc(task.model, task.data, task.loss_fn, nbeta=nbeta, localization=gamma,
                             batch_size=task.n, max_steps=8000, progress=False)
    step = result.settings.step_size
    target = truth.quadratic_expectation(eig, nbeta, gamma, step_size=step)
    record_known_answer(task.name + " (adaptive ε)", target, result, "exact finite-ε SGLD expectation")
    ok, message = _agrees(result, target, 0.03)
    assert ok, message
    exact_bias = target - truth.quadratic_expectation(eig, nbeta, gamma)
    assert exact_bias > 0
    assert result.adaptation.bias is not None
    assert abs(result.adaptation.bias - exact_bias) <= 4 * result.adaptation.bias_mcse + 0.5 * exact_bias


def test_rrr_with_no_settings(record_known_answer):
    """Reduced-rank regression 3-3-3 r=1 (λ = 4, Aoyagi & Watanabe 2005), n = 10⁵, noise-free, no
    settings at all: within the 10% of the known-answer suite."""
    task = tasks.reduced_rank_regression(3, 3, 3, 1, n=100_000, seed=1)
    result = lh.estimate_llc(task.model, task.data, task.loss_fn, max_steps=8000, progress=False)
    record_known_answer(task.name + " (no settings)", float(task.truth.value), result, "λ (Aoyagi)")
    error = (result.llc_mean - float(task.truth.value)) / float(task.truth.value)
    assert abs(error) <= 0.10, f"{result.llc_mean:.3f} vs 4 ({error:+.1%})"


def test_auto_settings_are_resolved_and_explained(auto_run):
    st = auto_run.settings
    for name in ("step_size", "localization", "num_burnin_steps", "num_draws"):
        assert st[name] != "auto", name
    assert st.max_steps == 4000
    assert st.num_burnin_steps + st.num_draws <= 4000
    text = str(auto_run)
    assert "chosen by the warm-up" in text and "step_size ε =" in text
    assert ("CERTIFIED" in text) or ("NOT CERTIFIED" in text)
    assert {p["name"] for p in auto_run.adaptation.phases} >= {"warm-up", "draws"}
    assert auto_run.trace.num_burnin_steps == st.num_burnin_steps
    assert auto_run.trace.draws("loss").shape == (4, st.num_draws)
    assert auto_run.gradient_evaluations > 4 * (st.num_burnin_steps + st.num_draws)  # acceptance checks cost


def test_result_settings_pass_straight_back_and_are_kept(auto_run, small_dln):
    t = small_dln
    again = lh.estimate_llc(t.model, t.data, t.loss_fn, progress=False, **auto_run.settings)
    assert again.adaptation is None  # nothing left to adapt
    for name in Settings().keys():
        assert again.settings[name] == auto_run.settings[name], name
    # a fixed-setting rerun is a valid run of the same posterior: the estimates agree statistically
    assert abs(again.llc_mean - auto_run.llc_mean) <= 5 * math.hypot(again.llc_mcse, auto_run.llc_mcse)


def test_fixed_settings_carry_a_burn_in_that_travels_as_far_as_the_warm_up(auto_run, small_dln):
    """The warm-up's early steps are larger than the final ε, so a fixed run from w* needs more
    burn-in steps at ε to move its chains as far: ⌈Σ_t ε_t / ε⌉ over the burn-in that ran."""
    st = auto_run.settings
    ran = auto_run.trace.arrays["step_size"][0, : st.num_burnin_steps]
    assert ran.max() > st.step_size  # the warm-up did take larger steps here
    travel = math.ceil(ran.sum() / st.step_size - 1e-6)
    assert auto_run.adaptation.burnin_at(st.step_size) == travel > st.num_burnin_steps
    fixed = auto_run.fixed_settings()
    assert fixed.num_burnin_steps == travel
    noted = any("result.fixed_settings()" in note for note in auto_run.adaptation.notes)
    assert noted == (travel > adapt.FIXED_BURNIN_NOTE * st.num_burnin_steps)
    assert all(fixed[name] == st[name] for name in Settings().keys() if name != "num_burnin_steps")
    t = small_dln
    again = lh.estimate_llc(t.model, t.data, t.loss_fn, progress=False, **fixed)
    assert again.adaptation is None and again.settings.num_burnin_steps == travel


def test_fixed_settings_are_the_settings_when_the_step_never_changed(small_dln):
    t = small_dln
    result = lh.estimate_llc(t.model, t.data, t.loss_fn, step_size=2e-4, max_steps=3000, progress=False)
    assert result.adaptation is not None and result.adaptation.burnin_at(2e-4) == result.settings.num_burnin_steps
    assert result.fixed_settings() is result.settings


def test_same_seed_same_bits_and_other_seed_differs(auto_run, small_dln):
    t = small_dln
    again = lh.estimate_llc(t.model, t.data, t.loss_fn, max_steps=4000, progress=False)
    assert again.llc_mean == auto_run.llc_mean
    np.testing.assert_array_equal(again.trace["loss"], auto_run.trace["loss"])
    other = lh.estimate_llc(t.model, t.data, t.loss_fn, max_steps=4000, seed=1, progress=False)
    assert other.llc_mean != auto_run.llc_mean


def test_the_model_is_left_as_it_was(small_dln):
    t = small_dln
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.model.train()
    lh.estimate_llc(t.model, t.data, t.loss_fn, max_steps=1000, progress=False)
    assert t.model.training
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, before[k])
    t.model.eval()


def test_a_given_step_size_is_kept_and_only_the_length_adapts(small_dln):
    t = small_dln
    r = lh.estimate_llc(t.model, t.data, t.loss_fn, step_size=3e-4, max_steps=3000, progress=False)
    assert r.settings.step_size == 3e-4
    assert set(r.trace["step_size"].ravel()) == {3e-4}
    assert r.adaptation.bias is None  # the bias check belongs to an adapted step


def test_a_diverging_first_guess_restarts_from_w_star_with_a_smaller_step():
    """A loss so stiff that ε₀ = 0.01/nβ diverges: the warm-up restarts from w* at ε/10 and says so."""
    task = tasks.quasi_homogeneous([2], copies=50)
    model = task.model
    def stiff(model, batch):
        return 1e6 * task.loss_fn(model, batch)

    result = lh.estimate_llc(model, task.data, stiff, nbeta=1.0,
                             localization=0.0, max_steps=3000, progress=False)
    assert not result.diverged
    assert any("restarted from w*" in note for note in result.adaptation.notes)
    assert result.adaptation.discarded_steps > 0


def test_auto_step_refuses_samplers_without_an_acceptance(small_dln):
    t = small_dln
    with pytest.raises(ValueError, match="step_size='auto'.*sgnht"):
        lh.estimate_llc(t.model, t.data, t.loss_fn, sampler="sgnht", progress=False)


def test_an_executor_needs_fixed_settings(small_dln):
    t = small_dln
    with ProcessPoolExecutor(1) as pool, pytest.raises(ValueError, match="executor.*auto"):
        lh.estimate_llc(t.model, t.data, t.loss_fn, executor=pool, progress=False)


def test_unknown_and_bad_settings_fail_before_any_work(small_dln):
    t = small_dln
    with pytest.raises(TypeError, match="unknown setting.*stepsize"):
        lh.estimate_llc(t.model, t.data, t.loss_fn, stepsize=1e-3)
    with pytest.raises(ValueError, match="max_steps"):
        lh.estimate_llc(t.model, t.data, t.loss_fn, max_steps=10)
    with pytest.raises(ValueError, match="step_size"):
        lh.estimate_llc(t.model, t.data, t.loss_fn, step_size="fast")


def test_step_factor_moves_toward_the_target():
    assert stopping.step_factor(0.99, 0.9) > 1  # too small a step: grow it
    assert stopping.step_factor(0.5, 0.9) < 1  # too large: shrink it
    assert stopping.step_factor(0.9, 0.9) == pytest.approx(1.0)
    assert 0.5 <= stopping.step_factor(0.0, 0.9) and stopping.step_factor(1.0, 0.9) <= 2.0


def test_a_long_run_says_how_long_it_may_take_before_it_goes_on():
    class Bar:
        disable = False

        def __init__(self):
            self.lines = []

        def write(self, line):
            self.lines.append(line)

    job = type("Job", (), {"batch_size": 500, "data": type("D", (), {"n": 500})(),
                           "potential": type("P", (), {"num_params": 14})()})()
    slow, quick, hidden = Bar(), Bar(), Bar()
    hidden.disable = True
    cost.announce_cost(slow, 0.01, 40_000, 4, job)  # 400 s
    cost.announce_cost(quick, 0.001, 40_000, 4, job)  # 40 s: nothing to say
    cost.announce_cost(hidden, 0.01, 40_000, 4, job)  # no progress shown: quiet
    assert len(slow.lines) == 1 and "7 min" in slow.lines[0] and "max_steps = 40000" in slow.lines[0]
    assert "full batch" in slow.lines[0] and not quick.lines and not hidden.lines


def test_the_draws_resume_the_warm_up_where_their_noise_is_too_large():
    """The rule (``adapt._why_resume``): noise measured in the draws that predicts more than
    ``noise.NOISE_LIMIT`` × λ̂ at the frozen ε and friction sends the run back to its warm-up, and so
    does an acceptance below its band; neither, nothing."""
    from types import SimpleNamespace

    warm = SimpleNamespace(exact=False, step=1e-5, nbeta=1000.0, friction=0.05)  # bias = 12.5 × noise
    assert "predicts 6.25 of λ̂ = 100" in adapt._why_resume(warm, 0.999, 100.0, [0.5])
    assert adapt._why_resume(warm, 0.999, 100.0, [0.3]) is None  # 3.75: within 5% of 100
    assert adapt._why_resume(warm, float("nan"), 100.0, []) is None
    assert "acceptance fell to 0.50" in adapt._why_resume(warm, 0.5, 100.0, [0.3])


def test_a_resumed_warm_up_leaves_one_chain_of_frozen_draws(monkeypatch):
    """Provoked on a real run (every noise measurement counts as too large): the warm-up resumes at
    most MAX_REWARMS times, and the draws after the last resume ran at one frozen ε."""
    monkeypatch.setattr(noise, "NOISE_LIMIT", 1e-9)
    task = tasks.deep_linear_network([4, 5, 3], 2, n=5000, seed=3)
    result = lh.estimate_llc(task.model, task.data, task.loss_fn, max_steps=6000, nbeta_check=False, progress=False)
    resumed = [note for note in result.adaptation.notes if "warm-up resumed" in note]
    assert 1 <= len(resumed) <= adapt.MAX_REWARMS and "minibatch noise measured in the draws" in resumed[0]
    steps = result.trace.draws("step_size")
    assert steps.shape[1] == result.settings.num_draws and np.all(steps == result.settings.step_size)
    assert [p["name"] for p in result.adaptation.phases].count("warm-up") == 1 + len(resumed)


def test_the_default_step_budget_halves_per_decade_without_cliffs():
    from lambdahat.settings import default_max_steps

    anchors = {100: 40_000, 1_000: 40_000, 10_000: 20_000, 100_000: 10_000, 1_000_000: 5_000, 10**8: 5_000}
    assert {d: default_max_steps(d) for d in anchors} == anchors
    sizes = np.unique(np.geomspace(1_000, 2_000_000, 400).astype(int))
    budgets = [default_max_steps(int(d)) for d in sizes]
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))  # never more steps for a larger model
    assert max(a / b for a, b in zip(budgets, budgets[1:])) < 1.05  # and no cliff (the old bands halved at 10³ + 1)


def test_bias_beyond_is_the_bias_checks_own_threshold():
    """5% of |λ̂| beyond 2 standard errors: the rule the ``bias`` check and the halving share."""
    from lambdahat import health

    assert health.bias_beyond(1.3, 0.1, 20.0)  # 1.3 − 0.2 > 1.0
    assert not health.bias_beyond(1.1, 0.1, 20.0)  # 1.1 − 0.2 ≤ 1.0
    assert health.bias_beyond(-1.3, 0.1, -20.0)  # signs do not matter
    assert not health.bias_beyond(float("nan"), 0.1, 20.0)


def test_a_large_step_bias_halves_the_step_once_and_draws_again(monkeypatch):
    """Provoked on a real run (every bias measurement counts as too large, the check itself is
    untouched): ε is halved once, the draws at ε become burn-in and the draws are run again at ε / 2
    after the halving segment, one frozen step; the bias is measured again at the new ε."""
    from lambdahat import health

    monkeypatch.setattr(health, "bias_beyond", lambda *args, **kwargs: True)
    task = tasks.deep_linear_network([4, 5, 3], 2, n=5000, seed=3)
    result = lh.estimate_llc(task.model, task.data, task.loss_fn, max_steps=30000, nbeta_check=False, progress=False)
    phases = result.adaptation.phases
    names = [p["name"] for p in phases]
    assert names[-4:] == ["draws", "bias check", "draws", "bias check"] and names.count("draws") == 2
    first, second = phases[-4], phases[-2]
    assert second["step_size"] == first["step_size"] / 2 == result.settings.step_size
    assert phases[-1]["step_size"] == second["step_size"] / 2
    halved = [note for note in result.adaptation.notes if "ε was halved" in note]
    assert len(halved) == 1
    steps = result.trace.draws("step_size")
    assert steps.shape[1] == result.settings.num_draws == second["steps"] and np.all(steps == result.settings.step_size)
    assert result.settings.num_burnin_steps >= result.adaptation.warmup_steps + first["steps"]
    again = lh.estimate_llc(task.model, task.data, task.loss_fn, max_steps=30000, nbeta_check=False, progress=False)
    assert again.llc_mean == result.llc_mean  # same seed, same bits


def test_a_large_step_bias_is_left_alone_where_the_user_fixed_the_burn_in_or_no_budget_is_left(monkeypatch):
    from lambdahat import health

    monkeypatch.setattr(health, "bias_beyond", lambda *args, **kwargs: True)
    task = tasks.deep_linear_network([4, 5, 3], 2, n=5000, seed=3)
    given = lh.estimate_llc(task.model, task.data, task.loss_fn, max_steps=12000, num_burnin_steps=1500,
                            nbeta_check=False, progress=False)
    assert [p["name"] for p in given.adaptation.phases].count("draws") == 1
    assert given.settings.num_burnin_steps == 1500
    tight = lh.estimate_llc(task.model, task.data, task.loss_fn, max_steps=3000, nbeta_check=False, progress=False)
    assert [p["name"] for p in tight.adaptation.phases].count("draws") == 1
    assert any("left no room" in note for note in tight.adaptation.notes)
