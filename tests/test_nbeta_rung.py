"""The nβ check (lambdahat.nbeta_rung, lambdahat.health.check_nbeta): λ̂ measured again at 4nβ.

The implied λ is checked against exact finite-nβ values by quadrature (no sampling): a normal
crossing of multiplicity 2, whose λ̂(nβ) rises towards λ like 1/log nβ, and a quadratic whose w*
is displaced from the minimum, whose λ̂(nβ) falls like −nβδ.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

import lambdahat as lh
from lambdahat import health, tasks, truth
from lambdahat.nbeta_rung import NBETA_FACTOR, NbetaRung, compare, lowers, rung_settings
from lambdahat.potential import default_nbeta


def _rung(nbeta: float, llc: float, mcse: float = 1e-6, failed=()) -> NbetaRung:
    return NbetaRung(nbeta=nbeta, llc=llc, mcse=mcse, failed=tuple(failed), gradient_evaluations=0)


def _result(llc: float, nbeta: float, rung: NbetaRung | None, mcse: float = 1e-6):
    return SimpleNamespace(llc_mean=llc, llc_mcse=mcse, nbeta=nbeta, nbeta_rung=rung)


def test_rising_lambda_hat_of_a_normal_crossing_implies_its_learning_coefficient():
    """K = ½ w1² w2²: λ = 1/2 with multiplicity 2. The exact posterior's λ̂ at nβ = 1,000 is 24%
    low; from it and λ̂ at 4nβ the 1/log nβ model recovers λ to within 5%. Its rise to 4nβ, 4.7% of
    λ̂, is just beyond the 4% the two runs' biases are allowed to differ by."""
    def delta_loss(a, b):
        return 0.5 * (a * b) ** 2

    t = 1000.0
    at_t = truth.tempered_expectation_2d(delta_loss, t, 1.0, half_width=6, num_points=1501)
    at_4t = truth.tempered_expectation_2d(delta_loss, NBETA_FACTOR * t, 1.0, half_width=6, num_points=1501)
    assert at_t < 0.8 * 0.5  # the gap this check exists for
    comparison = compare(at_t, 1e-6, t, _rung(NBETA_FACTOR * t, at_4t))
    assert comparison.kind == "rising"
    assert abs(comparison.implied - 0.5) < 0.05 * 0.5, comparison
    check = health.check_nbeta(_result(at_t, t, _rung(NBETA_FACTOR * t, at_4t)))
    assert not check.ok and "rises with nβ" in check.verdict and "finite-nβ gap" in check.verdict


def test_falling_lambda_hat_of_a_displaced_minimum_implies_its_learning_coefficient():
    """ΔL(w) = ½ (w² − w*²) with w* = 0.01 off the minimum at 0: λ̂(nβ) = λ − nβ w*²/2 + O(γ/nβ),
    10% low at nβ = 1,000; the linear model recovers λ = 1/2 to within 0.5%."""
    w_star = 0.01

    def delta_loss(w):
        return 0.5 * (w**2 - w_star**2)

    t, gamma = 1000.0, 1.0
    at_t = truth.tempered_expectation_1d(delta_loss, t, gamma, center=w_star)
    at_4t = truth.tempered_expectation_1d(delta_loss, NBETA_FACTOR * t, gamma, center=w_star)
    exact = 0.5 * t / (t + gamma)  # λ̂ of the same quadratic with w* at its minimum (γ's share removed)
    assert at_t < 0.92 * exact
    comparison = compare(at_t, 1e-6, t, _rung(NBETA_FACTOR * t, at_4t))
    assert comparison.kind == "falling"
    assert abs(comparison.implied - exact) < 0.005 * exact, comparison
    check = health.check_nbeta(_result(at_t, t, _rung(NBETA_FACTOR * t, at_4t)))
    assert not check.ok and "falls as nβ grows" in check.verdict and "nearby minimum" in check.verdict
    # the same change where a descent found nothing below w* is the runs' own error, and says so
    from lambdahat.descent import Descent

    at_minimum = SimpleNamespace(**vars(_result(at_t, t, _rung(NBETA_FACTOR * t, at_4t))),
                                 descent=Descent(nbeta=t, fall=0.0, iterations=2, evaluations=3, gradient_evaluations=3))
    check = health.check_nbeta(at_minimum)
    assert not check.ok and "found no loss below" in check.verdict and "max_steps" in check.verdict


@pytest.mark.parametrize("llc_4t, mcse, ok, words", [
    (104.8, 2.0, True, "does not change"),       # within 2 standard errors (5.7)
    (103.0, 0.01, True, "does not change"),      # significant, but within the 4% the runs' biases may differ by
    (80.0, 0.01, True, "only a little"),         # a real change, but implies +6.7%
    (105.0, 0.01, False, "rises with nβ"),       # implies +29.9%
    (60.0, 0.01, False, "falls as nβ grows"),    # implies +13.3%
])
def test_the_check_passes_a_small_change_and_fails_a_large_one(llc_4t, mcse, ok, words):
    check = health.check_nbeta(_result(100.0, 1000.0, _rung(4000.0, llc_4t, mcse), mcse=mcse))
    assert check.ok is ok and words in check.verdict, check.verdict


def test_the_bias_allowance_is_the_bias_each_run_is_held_to():
    """A change between two rungs within what their step-size and noise biases may differ by is
    no evidence about nβ (the allowance is derived, not tuned: 2% + 2%)."""
    from lambdahat.health.step import STEP_BIAS
    from lambdahat.noise import NOISE_BIAS
    from lambdahat.nbeta_rung import BIAS_ALLOWANCE

    assert BIAS_ALLOWANCE == pytest.approx(STEP_BIAS + NOISE_BIAS)
    edge = compare(100.0, 0.0, 1000.0, _rung(4000.0, 100.0 + 100.0 * BIAS_ALLOWANCE, 0.0))
    beyond = compare(100.0, 0.0, 1000.0, _rung(4000.0, 100.0 + 100.0 * BIAS_ALLOWANCE + 0.1, 0.0))
    assert edge.kind == "flat" and beyond.kind == "rising"


def test_a_rung_that_fails_its_own_checks_vouches_for_nothing():
    """Blind set v4's one certified miss (−20.5%) passed on a run at 4nβ that failed R̂ and ESS (its
    wide error bar hid the change); the demo's right estimate was refused on a run at 4nβ that
    failed `noise` (its change was its own bias)."""
    for failed, llc_4t in ((["rhat", "ess"], 103.0), (["noise"], 120.0), (["negative"], 100.0)):
        rung = _rung(4000.0, llc_4t, mcse=2.0, failed=failed)
        check = health.check_nbeta(_result(100.0, 1000.0, rung, mcse=0.5))
        assert not check.ok and "unknown" in check.verdict and ", ".join(failed) in check.verdict


def test_a_rung_with_no_estimate_fails_and_no_rung_is_skipped():
    failed = health.check_nbeta(_result(10.0, 100.0, _rung(400.0, math.nan, math.nan, failed=["divergence"])))
    assert not failed.ok and "gave no value" in failed.verdict
    skipped = health.check_nbeta(_result(10.0, 100.0, None))
    assert skipped.ok and skipped.skipped and "nbeta_check=True" in skipped.verdict


def test_rung_settings_keep_what_was_given_at_four_times_nbeta():
    given = {"step_size": 1e-4, "num_draws": 200, "seed": 3}
    rung = rung_settings(given, 3, 50.0)
    assert rung == {"step_size": 2.5e-5, "num_draws": 200, "seed": 4, "nbeta": 200.0, "nbeta_check": False}
    assert rung_settings({"step_size": "auto"}, 0, 50.0)["step_size"] == "auto"
    assert given == {"step_size": 1e-4, "num_draws": 200, "seed": 3}  # the caller's dict is not changed


def test_estimate_with_no_settings_runs_the_rung_and_reports_it():
    task = tasks.deep_linear_network([3, 1], 1, n=1000, seed=0)  # noise-free linear regression: λ = 3/2
    result = lh.estimate_llc(task.model, task.data, task.loss_fn, progress=False)
    rung = result.nbeta_rung
    assert rung is not None and rung.nbeta == pytest.approx(NBETA_FACTOR * default_nbeta(1000))
    assert result.settings.nbeta_check is True
    check = next(c for c in result.checks if c.name == "nbeta")
    assert not check.skipped
    assert "at 4nβ" in str(result) and result.to_dict()["nbeta_rung"]["llc"] == pytest.approx(rung.llc)
    # a regular model at its minimum: λ̂ does not depend on nβ (λ = d/2 at every nβ, up to γ/nβ)
    assert check.ok, check.verdict
    assert abs(rung.llc - 1.5) <= 4 * rung.mcse, rung


def test_a_given_nbeta_or_nbeta_check_false_skips_the_rung_and_true_forces_it():
    task = tasks.linear_regression(dim=2, n=500, seed=0)
    fixed = dict(step_size=1e-4, localization=1.0, num_burnin_steps=100, num_draws=200, progress=False)
    assert lh.estimate_llc(task.model, task.data, task.loss_fn, **fixed).nbeta_rung is None
    given = lh.estimate_llc(task.model, task.data, task.loss_fn, nbeta=50.0, max_steps=1000, progress=False)
    assert given.nbeta_rung is None and given.settings.nbeta_check is False
    forced = lh.estimate_llc(task.model, task.data, task.loss_fn, nbeta_check=True, **fixed)
    assert forced.nbeta_rung is not None and forced.nbeta_rung.nbeta == pytest.approx(4 * forced.nbeta)
    again = lh.estimate_llc(task.model, task.data, task.loss_fn, nbeta_check=True, **fixed)
    assert again.nbeta_rung == forced.nbeta_rung  # same seed, same second run


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_nbeta_check_is_validated(value):
    task = tasks.linear_regression(dim=2, n=100)
    with pytest.raises(ValueError, match="nbeta_check"):
        lh.estimate_llc(task.model, task.data, task.loss_fn, nbeta_check=value, progress=False)


def test_a_sampled_regression_off_its_minimum_falls_as_predicted_and_moves_to_a_quarter_of_nbeta():
    """End to end, sampled: a 4-weight linear regression whose w* is moved off the least-squares
    point so that nβ (L_n(w*) − L_n(ŵ)) = 0.4 (20% of λ = 2) at n / log n. The descent from w*
    must find the fall of its closed form, (nβ/2) Σ h_i o_i² (1 − γ² / (nβ h_i + γ)²) (the
    minimiser of nβ L_n + (γ/2)‖w − w*‖²), large enough that the run at 4nβ is not made. The run
    at nβ and that run at 4nβ (made here as the rung would be) must match the closed-form
    expectation of their own Euler chains (``truth.quadratic_expectation`` with ``offset``), and
    their implied value must be λ = d/2; λ̂ at nβ is about 20% low, so the estimate moves to nβ / 4,
    which must match its own closed form too, carry a quarter of the fall, and be reproduced bit
    for bit by its own settings."""
    task = tasks.linear_regression(dim=4, n=2000, seed=3)
    x, _ = task.data
    hessian = x.T @ x / x.shape[0]
    eig, vectors = torch.linalg.eigh(hessian)
    nbeta = default_nbeta(x.shape[0])
    direction = vectors[:, 0] + vectors[:, -1]  # along the flattest and the steepest direction
    scale = math.sqrt(0.4 / (nbeta * 0.5 * float(direction @ hessian @ direction)))
    model = copy.deepcopy(task.model)
    with torch.no_grad():
        model.weight.add_(scale * direction)
    offset = (vectors.T @ (scale * direction)).tolist()
    gamma, step = 1.0, 3e-4  # ε (nβ h_max + γ) ≈ 0.33: a finite-ε value, which the closed form has
    given = dict(step_size=step, localization=gamma, num_chains=4, num_draws=6000, num_burnin_steps=1500,
                 batch_size=x.shape[0], nbeta_check=True, seed=0)
    result = lh.estimate_llc(model, task.data, task.loss_fn, progress=False, **given)
    first = result.nbeta_rung  # the run at nβ

    def exact(at_nbeta, step_size):
        return truth.quadratic_expectation(eig.tolist(), at_nbeta, gamma, step_size, offset=offset)

    assert result.lowered_from == nbeta and result.nbeta == pytest.approx(nbeta / NBETA_FACTOR)
    fall = 0.5 * nbeta * sum(h * o**2 * (1 - gamma**2 / (nbeta * h + gamma) ** 2) for h, o in zip(eig.tolist(), offset))
    assert result.descent.nbeta == nbeta and result.descent.fall == pytest.approx(fall, rel=1e-3)
    assert result.fall_rung is None and "a descent from w* found" in str(result)  # no run at 4nβ was needed
    assert first.nbeta == nbeta
    rung = lh.estimate_llc(model, task.data, task.loss_fn, progress=False, **rung_settings(given, 0, nbeta))
    assert rung.nbeta == pytest.approx(NBETA_FACTOR * nbeta)
    expected_t, expected_4t = exact(nbeta, step), exact(rung.nbeta, step / NBETA_FACTOR)
    expected_quarter = exact(result.nbeta, step * NBETA_FACTOR)
    assert abs(first.llc - expected_t) < 3 * first.mcse, (first, expected_t)
    assert abs(rung.llc_mean - expected_4t) < 3 * rung.llc_mcse, (rung.llc_mean, rung.llc_mcse, expected_4t)
    assert abs(result.llc_mean - expected_quarter) < 3 * result.llc_mcse, (result.llc_mean, result.llc_mcse,
                                                                            expected_quarter)
    assert first.llc < 0.9 * 2.0  # the fall the rung exists to see
    # the linear model on the exact posterior (ε → 0) gives d/2 to within γ/(nβ h) (−0.7% here);
    # on these Euler chains it carries their step bias too, and the sampled value must match that
    def implied(at_t, at_4t):
        return compare(at_t, 1e-6, nbeta, _rung(rung.nbeta, at_4t)).implied

    on_the_posterior = implied(exact(nbeta, None), exact(rung.nbeta, None))
    assert abs(on_the_posterior - 2.0) < 0.01 * 2.0, on_the_posterior
    seen = compare(first.llc, first.mcse, nbeta, NbetaRung.of(rung))
    assert seen.kind == "falling"  # what the run at 4nβ would have shown, had it been made
    assert abs(seen.implied - implied(expected_t, expected_4t)) < 3 * seen.implied_se, seen
    # at nβ / 4 the fall is a quarter: 0.1 of the offset and 0.04 of γ on the exact posterior
    # (1.858, −7%), against 0.4 and 0.01 at nβ, and what the nβ check reads of it is within 10%
    assert abs(exact(result.nbeta, None) - 2.0) < 0.4 * abs(exact(nbeta, None) - 2.0)
    comparison = result.nbeta_comparison()
    assert comparison.kind == "falling" and abs(comparison.correction(result.llc_mean)) < 0.10 * result.llc_mean
    assert "nβ lowered" in str(result)
    again = lh.estimate_llc(model, task.data, task.loss_fn, progress=False, **{**result.settings, "nbeta_check": False})
    assert again.llc_mean == result.llc_mean and again.lowered_from is None


def test_an_estimate_stays_where_it_was_asked_or_where_lambda_does_not_fall():
    """Lowering needs a fall at the default nβ: not a flat or rising λ̂, not a run at a given nβ."""
    runs = dict(step_size=1e-3, localization=1.0, num_chains=2, num_draws=400, num_burnin_steps=100, seed=0,
                progress=False)
    task = tasks.linear_regression(dim=2, n=500, seed=0)  # w* at least squares: λ̂ flat in nβ
    flat = lh.estimate_llc(task.model, task.data, task.loss_fn, nbeta_check=True, **runs)
    assert flat.nbeta_rung is not None and flat.lowered_from is None and flat.fall_rung is None
    assert not lowers(SimpleNamespace(nbeta_rung=None, lowered_from=None, llc_mean=1.0))
    falling = SimpleNamespace(nbeta_rung=_rung(400.0, 0.5, 0.05), lowered_from=None, llc_mean=1.0,
                              nbeta_comparison=lambda: compare(1.0, 0.05, 100.0, _rung(400.0, 0.5, 0.05)))
    assert lowers(falling)
    assert not lowers(SimpleNamespace(**{**vars(falling), "lowered_from": 400.0}))  # once only
    rising = SimpleNamespace(**{**vars(falling), "nbeta_comparison": lambda: compare(1.0, 0.05, 100.0,
                                                                                      _rung(400.0, 1.5, 0.05))})
    assert not lowers(rising)
    # a descent that found no point below w* (fall 0: a noise-free teacher) vetoes the falling rung;
    # one that found a fall, however small, leaves the rung to decide
    from lambdahat.descent import Descent

    at_minimum = Descent(nbeta=100.0, fall=0.0, iterations=3, evaluations=5, gradient_evaluations=5)
    assert not lowers(SimpleNamespace(**{**vars(falling), "descent": at_minimum}))
    above = Descent(nbeta=100.0, fall=0.01, iterations=3, evaluations=5, gradient_evaluations=5)
    assert lowers(SimpleNamespace(**{**vars(falling), "descent": above}))


def test_the_implied_values_error_counts_the_first_rung_twice():
    """Falling: implied = (4 λ̂(t) − λ̂(4t)) / 3, so its standard error is √((4σ₁)² + σ₄²) / 3, not Δ's
    error over 3 (about 3× too small when the two rungs are equally precise)."""
    falling = compare(2.0, 0.1, 1000.0, _rung(4000.0, 1.0, 0.1))
    assert falling.kind == "falling" and falling.implied == pytest.approx(2.0 + 1.0 / 3)
    assert falling.implied_se == pytest.approx(math.hypot(4 * 0.1, 0.1) / 3)
    rising = compare(2.0, 0.01, 1000.0, _rung(4000.0, 2.5, 0.01))
    weight = math.log(4000.0) / math.log(4.0)
    assert rising.implied == pytest.approx(2.0 + 0.5 * weight)
    assert rising.implied_se == pytest.approx(math.hypot((1 - weight) * 0.01, weight * 0.01))
