"""Health checks (lambdahat.health): each provoked to fail on a real model, and quiet on a good run.

Real runs use a 4-3-2 deep linear network at a rank-1 teacher (n = 1000, nβ = 100, batch 100) and
the demo's 30-20-10 network; a few hundred steps each, so every test takes a second or two. The
check logic itself is also tested on synthetic traces where the answer is known (stationary AR(1)
chains must not raise alarms; a drifting one must).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lambdahat as lh
from lambdahat import health, tasks
from lambdahat.estimate import LLCResult
from lambdahat.trace import Trace
from tests._harness import small_dln

# ε·nβ = 0.03: a MALA acceptance of 0.993, inside the band for λ̂ ≈ 3.3 (at ε = 3e-3 the acceptance is 0.82 and
# λ̂ is 4.28 against 3.3, a bias the mala_accept check must catch)
GOOD = dict(step_size=3e-4, localization=1.0, nbeta=100.0, batch_size=100, num_chains=4, num_draws=6000,
            num_burnin_steps=1000, seed=0, progress=False)


def _dln(perturb: float = 0.0):
    task = small_dln()
    if perturb:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in task.model.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=gen))
    return task


def _run(task, **overrides):
    return lh.estimate_llc(task.model, task.data, task.loss_fn, **(GOOD | overrides))


def _by_name(result) -> dict[str, health.Check]:
    checks = result.checks
    assert [c.name for c in checks] == [
        "negative", "divergence", "runaway", "convergence", "rhat", "ess", "precision", "mala_accept", "localization",
        "ladder", "bias", "noise", "nbeta",
    ]
    return {c.name: c for c in checks}


def _failing(result) -> set[str]:
    return {c.name for c in result.checks if not c.ok}


@pytest.fixture(scope="module")
def good():
    return _run(_dln())


def test_a_good_run_passes_every_check(good):
    checks = _by_name(good)
    assert all(c.ok and (not c.skipped or name in ("bias", "noise", "nbeta")) for name, c in checks.items()), \
        "\n".join(map(str, checks.values()))
    assert checks["bias"].skipped and checks["noise"].skipped  # measured only when the step size is adapted
    assert checks["nbeta"].skipped  # and the second run at 4nβ only when a setting is auto
    assert good.healthy and good.certified
    assert "CERTIFIED: every health check passed" in str(good)
    low, high = health.acceptance_band(good.llc_mean)
    assert low <= checks["mala_accept"].value <= high  # the sampler records it


def test_too_large_a_step_gives_the_divergence_verdict():
    result = _run(_dln(), step_size=0.1, num_draws=50, num_burnin_steps=10)
    assert result.diverged
    checks = _by_name(result)
    assert not checks["divergence"].ok and not result.healthy
    assert "diverged" in checks["divergence"].verdict and "lower step_size" in checks["divergence"].verdict
    # the other checks cannot run on no healthy chain: they say so instead of failing or crashing
    assert all(c.skipped for name, c in checks.items() if name != "divergence")
    assert "WARNING" in str(result) and "1 of 13 checks failed" in str(result)


def test_a_point_that_is_not_a_minimum_gives_the_negative_verdict():
    result = _run(_dln(perturb=0.3))
    assert result.llc_mean < 0
    checks = _by_name(result)
    # the loss falling below L_n(w*) is also a trace still moving: the drift checks may say so too,
    # and when they do, their verdict names the fall (a falling trace, toward or below L_n(w*))
    assert "negative" in _failing(result) and _failing(result) <= {"negative", "convergence", "ladder"}, \
        "\n".join(map(str, checks.values()))
    for name in _failing(result) - {"negative"}:
        assert "falling" in checks[name].verdict
    assert "not a local minimum" in checks["negative"].verdict and "settles below" in checks["negative"].verdict
    assert "- negative:" in str(result)


def test_far_too_large_a_localization_gives_the_over_tight_verdict(good):
    result = _run(_dln(), step_size=1e-4, localization=1e3)
    checks = _by_name(result)
    assert not checks["localization"].ok, str(checks["localization"])
    assert checks["localization"].value > 0.9  # the prior alone holds the chain: γ E‖w − w*‖² ≈ d
    assert "localisation too tight" in checks["localization"].verdict and "Lower localization" in checks["localization"].verdict
    assert result.llc_mean < 0.2 * good.llc_mean  # and λ̂ has collapsed, as the verdict says
    assert checks["localization"].ok is False and _by_name(good)["localization"].ok


def test_too_few_steps_give_the_not_converged_verdict():
    """The demo's 30-20-10 network with no burn-in and 100 draws: the loss is still climbing."""
    task = tasks.deep_linear_network([30, 20, 10], rank=1, n=10_000, seed=0)
    result = lh.estimate_llc(task.model, task.data, task.loss_fn, step_size=5e-5, localization=1.0, nbeta=None,
                             num_chains=4, num_draws=100, num_burnin_steps=0, batch_size=500, progress=False)
    checks = _by_name(result)
    assert not checks["convergence"].ok
    assert "still rising" in checks["convergence"].verdict and "more burn-in" in checks["convergence"].verdict
    # short, unmixed chains also fail R-hat and ESS, each with its own fix
    assert not checks["rhat"].ok and not checks["ess"].ok
    assert "draws per chain" in checks["ess"].verdict


def test_mala_acceptance_too_low_and_too_high():
    low = _by_name(_run(_dln(), step_size=1e-2))["mala_accept"]
    assert not low.ok and low.value < 0.8 and "Lower step_size" in low.verdict
    high = _by_name(_run(_dln(), step_size=3e-6, num_draws=200, num_burnin_steps=0))["mala_accept"]
    assert not high.ok and high.value > 0.995 and "Run more steps" in high.verdict


def _replace(result: LLCResult, arrays: dict[str, np.ndarray], burnin: int | None = None) -> LLCResult:
    trace = Trace(arrays, result.trace.num_burnin_steps if burnin is None else burnin,
                  [None] * next(iter(arrays.values())).shape[0], dict(result.trace.config))
    return LLCResult.from_trace(trace, result.init_loss, result.nbeta, result.settings, result.num_params)


def test_mala_check_is_skipped_quietly_when_not_recorded(good):
    arrays = {k: v for k, v in good.trace.arrays.items() if k != "mala_accept"}
    check = _by_name(_replace(good, arrays))["mala_accept"]
    assert check.ok and check.skipped
    arrays["mala_accept"] = np.full_like(arrays["loss"], np.nan)
    assert _by_name(_replace(good, arrays))["mala_accept"].skipped


def _ar1(rng, shape, a=0.9, mean=1.0, scale=0.01):
    """Stationary AR(1) chains x_t = a x_{t−1} + ξ_t along the last axis (τ = (1 + a)/(1 − a))."""
    x = np.empty(shape)
    x[..., 0] = rng.standard_normal(shape[:-1]) / np.sqrt(1 - a * a)
    noise = rng.standard_normal(shape)
    for t in range(1, shape[-1]):
        x[..., t] = a * x[..., t - 1] + noise[..., t]
    return mean + scale * x


def test_stationary_chains_raise_no_convergence_or_rhat_alarm(good):
    """Stationary AR(1) chains (τ = 19) of 4 × 1000 draws, 200 times: R̂ and the halves test may
    each raise at most 3 false alarms (each is set for ≈ 0.1–0.3%), and a drifting copy of the
    same chains must be caught (in at least 195 of the 200). The loss sits 0.04 above L_n(w*), so
    λ̂ ≈ 4 (nβ = 100) with an MCSE of ≈ 0.04 (1%): precise enough for the halves test to tell a
    10% change from noise (the standard error of the halves' difference is ≈ 3% of λ̂); the drift
    moves λ̂ between the halves by ≈ 2.5, about 20 standard errors. (With an MCSE of 4% the halves
    cannot resolve 10%, and the check rightly refuses to call them flat: see the next test.)"""
    rng = np.random.default_rng(0)
    runs = _ar1(rng, (200, 4, 1000), mean=good.init_loss + 0.04, scale=0.0025)
    alarms = {"rhat": 0, "convergence": 0}
    caught = 0
    for loss in runs:
        result = _replace(good, {"loss": loss}, burnin=0)
        alarms["rhat"] += not health.check_rhat(result).ok
        alarms["convergence"] += not health.check_convergence(result).ok
        drifting = _replace(good, {"loss": loss + np.linspace(0, 0.05, 1000)}, burnin=0)
        caught += not health.check_convergence(drifting).ok
    assert alarms["rhat"] <= 3 and alarms["convergence"] <= 3, alarms
    assert caught >= 195  # a drift inside each half also widens its MCSE, so a few escape


def test_a_visibly_rising_trace_is_not_called_flat_even_when_noisy(good):
    """The audit's case: halves 36.4 vs 40.8 at z ≈ 1.5 was called flat. A change of more than 10%
    between the halves fails, whether or not the noise makes it significant; a stationary trace as
    noisy is reported as too noisy to tell (run more draws), never as flat."""
    rng = np.random.default_rng(1)
    base = _ar1(rng, (4, 1000), mean=0.0, scale=0.1)
    result = _replace(good, {"loss": good.init_loss + 0.386 + base + np.linspace(-0.044, 0.044, 1000)}, burnin=0)
    halves = result.trace.draws("loss")
    first, second = [100 * (h.mean() - good.init_loss) for h in (halves[:, :500], halves[:, 500:])]
    assert second - first > 0.1 * result.llc_mean  # a visible rise, as in the audit
    check = health.check_convergence(result)
    assert check.value < 3  # not significant at z = 3 ...
    assert not check.ok and "more draws" in check.verdict  # ... and still not flat


def test_rhat_threshold_rises_only_for_few_effective_draws():
    assert health.rhat_threshold(1e6, 4) == pytest.approx(1.01)
    assert health.rhat_threshold(10.0, 4) == pytest.approx(1.05)  # capped: 1.08 is never "agreeing"
    middle = health.rhat_threshold(800.0, 4)
    assert 1.01 < middle < 1.05
    assert health.rhat_threshold(400.0, 4) >= middle  # fewer effective draws, more slack


def test_checks_print_as_verdicts(good):
    text = str(_by_name(good)["ess"])
    assert text.startswith("[ok] ess: effective sample size")


def test_runaway_verdict_for_a_chain_that_climbs_without_nan():
    """Full-batch SGLD on a quadratic at ε a_max = 3.96, just inside stability: the stiffest
    direction's variance is inflated 1/(1 − ε a/4) = 100× (the stationary law of the Euler chain of a quadratic), so λ̂ is far above
    d/2 while every loss stays finite. At ε a_max = 0.5 the check is quiet."""
    task = lh.tasks.linear_regression(dim=5, n=200, seed=0)
    a_max = 100.0 * max(task.info["hessian_eigenvalues"]) + 1.0
    verdicts = {}
    for ea in (3.96, 0.5):
        r = lh.estimate_llc(task.model, task.data, task.loss_fn, step_size=ea / a_max, localization=1.0, nbeta=100.0,
                            num_chains=2, num_draws=2000, num_burnin_steps=200, batch_size=task.n, seed=0, progress=False)
        verdicts[ea] = {c.name: c for c in r.checks}["runaway"]
        assert not r.diverged
    assert not verdicts[3.96].ok and "ran away" in verdicts[3.96].verdict and "lower step_size" in verdicts[3.96].verdict
    assert verdicts[0.5].ok


def test_exact_mala_acceptance_is_judged_on_efficiency_not_bias():
    # exact MALA at an acceptance near 0.75 is unbiased: SGLD's 0.8 floor must not fire on it
    result = _run(_dln(), sampler="mala", step_size=3e-3, batch_size=None, num_draws=300, num_burnin_steps=100)
    check = _by_name(result)["mala_accept"]
    assert 0.2 < check.value < 0.8 and check.ok and "exact MALA" in check.verdict
    stuck = _by_name(_run(_dln(), sampler="mala", step_size=1.0, batch_size=None, num_draws=100,
                          num_burnin_steps=0))["mala_accept"]
    assert not stuck.ok and stuck.value < 0.2 and "Lower step_size" in stuck.verdict


def test_one_ess_everywhere(good):
    """The ESS the summary prints, the MCSE uses and the ess check judges is one number."""
    check = _by_name(good)["ess"]
    assert check.value == good.ess
    assert f"effective sample size {good.ess:.0f}" in str(good)


def test_localization_reads_share_and_sensitivity_together(good):
    """A prior that holds the chain along directions the loss leaves flat (share ≈ 1, λ̂ unaffected)
    passes and says so; the same share with the loss rising as the chain spreads (so a tighter prior
    lowers λ̂: ∂ log λ̂ / ∂ log γ ≈ −1) fails."""
    rng = np.random.default_rng(2)
    d, gamma = good.num_params, good.settings.localization
    radius = np.sqrt(d / gamma) * (1 + 0.05 * rng.standard_normal((4, 1000)))  # γ E‖w − w*‖² / d ≈ 1
    flat = _replace(good, {"loss": _ar1(rng, (4, 1000), mean=good.init_loss + 0.04, scale=0.002), "distance": radius},
                    burnin=0)
    check = health.check_localization(flat)
    assert check.ok and check.value > 0.9 and "hardly depends on γ" in check.verdict
    coupled_loss = good.init_loss + 0.04 + 0.5 * (radius ** 2 - (radius ** 2).mean()) / d
    coupled = _replace(good, {"loss": coupled_loss, "distance": radius}, burnin=0)
    check = health.check_localization(coupled)
    assert not check.ok and "localisation too tight" in check.verdict and "Lower localization" in check.verdict


def test_localization_statistics_match_the_exact_gaussian_posterior():
    """The check's two statistics against exact values. Linear regression at its least-squares w*
    has L_n − L_n(w*) = ½ (w − w*)ᵀ H (w − w*), so the localised posterior is Gaussian with variance
    1 / (nβ h_i + γ) along each eigenvector: share ρ = mean of γ / (nβ h_i + γ), λ̂ = Σ ½ nβ h_i /
    (nβ h_i + γ), and η = γ ∂ log λ̂ / ∂γ = −(γ / λ̂) Σ ½ nβ h_i / (nβ h_i + γ)². nβ = γ = 10 puts
    the prior's share near ½ (ρ = 0.435, η = −0.374). MALA samples it exactly; each statistic must
    lie within 4 standard errors, estimated from its spread over 16 batches (4 chains × 4 quarters of
    the draws; measured 0.011 for η), of the exact value."""
    task = tasks.linear_regression(dim=50, n=1000, seed=0)
    h = np.array(task.info["hessian_eigenvalues"])
    nbeta = gamma = 10.0
    a = nbeta * h
    llc = float(np.sum(0.5 * a / (a + gamma)))
    exact = (float(np.mean(gamma / (a + gamma))), -(gamma / llc) * float(np.sum(0.5 * a / (a + gamma) ** 2)))
    result = lh.estimate_llc(task.model, task.data, task.loss_fn, sampler="mala", step_size=1.0 / (a.max() + gamma),
                             localization=gamma, nbeta=nbeta, num_chains=4, num_draws=4000, num_burnin_steps=500,
                             seed=0, progress=False)
    loss, distance = result.trace.draws("loss"), result.trace.draws("distance")
    measured = health.prior_statistics(loss, distance, gamma, nbeta, 50, result.llc_mean)
    batches = np.array([health.prior_statistics(loss[k:k + 1, q:q + 1000], distance[k:k + 1, q:q + 1000], gamma, nbeta,
                                                50, result.llc_mean) for k in range(4) for q in range(0, 4000, 1000)])
    se = batches.std(axis=0, ddof=1) / np.sqrt(len(batches))
    for name, value, target, error in zip(("share", "elasticity"), measured, exact, se):
        assert abs(value - target) <= 4 * error, f"{name}: {value:.4f} against exact {target:.4f} (SE {error:.4f})"
    assert health.check_localization(result).ok is not health.localization_too_tight(*exact)  # the same verdict


def test_localization_does_not_read_a_shared_drift_as_dependence_on_gamma(good):
    """A chain still spreading along flat directions (its distance growing through the draws, as on
    a cross-entropy classifier at γ = 0.1) while its loss climbs too: loss and distance share a
    trend, not a fluctuation, so ∂ log λ̂ / ∂ log γ stays near 0 and the check passes, where the raw
    covariance (the trend's) gives η ≈ −1. The same data with the loss fluctuating with the distance
    about that course still fails."""
    rng = np.random.default_rng(4)
    d, gamma, draws = good.num_params, good.settings.localization, 2000
    course = np.linspace(0.8, 1.2, draws)  # γ E‖w − w*‖² / d rises from 0.64 to 1.44
    wobble = 0.05 * _ar1(rng, (4, draws), mean=0.0, scale=1.0) / 2.3
    radius = np.sqrt(d / gamma) * (course + wobble)
    loss = good.init_loss + 0.005 + 0.1 * (course - 0.8) + _ar1(rng, (4, draws), mean=0.0, scale=0.0005)
    drifting = _replace(good, {"loss": loss, "distance": radius}, burnin=0)
    check = health.check_localization(drifting)  # its value is the prior's share
    assert check.value > 0.2 and check.ok and "hardly depends on γ" in check.verdict, check.verdict
    centred = [(a - a.mean(axis=1, keepdims=True)) for a in (good.nbeta * loss, radius ** 2)]
    assert -(gamma / 2) * np.mean(centred[0] * centred[1]) / drifting.llc_mean < -0.5  # the raw covariance's η
    coupled = _replace(good, {"loss": loss + 0.5 * (radius ** 2 - d / gamma * course ** 2) / d, "distance": radius},
                       burnin=0)
    assert not health.check_localization(coupled).ok


def test_ladder_catches_a_drift_the_halves_of_the_draws_miss(good):
    """λ̂ still climbing through the second quarter of the run and flat over the draws (the second
    half): the convergence check passes, the ladder check does not."""
    rng = np.random.default_rng(3)
    total = 4000
    rise = np.concatenate([np.linspace(0.0, 0.04, total // 2), np.full(total // 2, 0.04)])
    loss = good.init_loss + 0.01 + rise + _ar1(rng, (4, total), mean=0.0, scale=0.0005)
    result = _replace(good, {"loss": loss}, burnin=total // 2)
    assert health.check_convergence(result).ok
    ladder = health.check_ladder(result)
    assert not ladder.ok and "still rising" in ladder.verdict and "Run longer" in ladder.verdict


def test_precision_refuses_an_error_bar_wider_than_a_certificate_promises(good):
    """Two standard errors must fit in a certificate's 10%: MCSE ≤ 5% of λ̂ (the noisy regression of
    test_noise, λ̂ = 3.2 ± 0.25 from chains at 2.7–3.8, had passed every other check)."""
    from types import SimpleNamespace

    assert _by_name(good)["precision"].ok
    wide = SimpleNamespace(trace=good.trace, llc_mean=3.2, llc_mcse=0.25)
    check = health.check_precision(wide)
    assert not check.ok and check.value == pytest.approx(0.25 / 3.2)
    assert "3×" in check.verdict  # (7.8% / 5%)² × 1.2 ≈ 2.9, rounded up
    assert health.check_precision(SimpleNamespace(trace=good.trace, llc_mean=3.2, llc_mcse=0.16)).ok
