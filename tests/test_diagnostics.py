"""Known-answer tests of lambdahat.diagnostics (AR(1) and iid chains), and an arviz cross-check."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from lambdahat.diagnostics import (
    ChainTooShortError,
    autocorrelation,
    ess,
    integrated_autocorrelation_time,
    mcse_mean,
    rhat,
)


def ar1(a: float, chains: int, draws: int, seed: int) -> np.ndarray:
    """Stationary AR(1) x_t = a x_{t-1} + sqrt(1-a²) e_t: unit variance, τ = (1+a)/(1-a)."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((chains, draws))
    x_prev = rng.standard_normal((chains, 1))  # stationary start, so no burn-in is needed
    x, _ = lfilter([math.sqrt(1 - a * a)], [1.0, -a], e, axis=1, zi=a * x_prev)
    return x


def test_ar1_autocorrelation_time_and_ess():
    a, chains, draws = 0.9, 4, 100_000
    x = ar1(a, chains, draws, seed=0)
    tau_true = (1 + a) / (1 - a)  # 19
    # Sokal's variance of the windowed estimate: var(τ̂)/τ² ≈ 2(2M+1)/N with window M ≈ cτ ≈ 95 and
    # N = 4e5 draws, i.e. a relative sd of ~3%; 10% is more than 3 sd. The window's bias
    # (Σ_{t>M} ρ_t ∝ a^M ~ 1e-5) is negligible.
    tau = integrated_autocorrelation_time(x)
    assert isinstance(tau, float)
    assert tau == pytest.approx(tau_true, rel=0.10)
    # Geyer's estimator has a sampling error of the same order (~3% here): 10% is ~3 sd.
    assert ess(x, "mean") == pytest.approx(chains * draws / tau_true, rel=0.10)
    # lag-1 autocorrelation of each chain is a, with sd ≈ sqrt((1-a²)/N) ≈ 1.4e-3 per chain.
    assert np.allclose(autocorrelation(x)[:, 1], a, atol=0.01)


def test_iid_normal():
    chains, draws = 4, 25_000
    n = chains * draws
    x = np.random.default_rng(1).standard_normal((chains, draws))
    # For white noise the Geyer sum stops after a few lags, each ρ̂_t having sd ≈ 1/sqrt(N) ≈ 0.003,
    # so τ̂ (and ESS/N) is within a few percent of 1; 10% leaves a wide margin.
    for method in ("bulk", "tail", "mean"):
        assert ess(x, method) == pytest.approx(n, rel=0.10), method
    # R̂ - 1 is O(1/draws) for well-mixed chains (~1e-4 here); 0.01 is the usual convergence bar.
    assert abs(rhat(x) - 1.0) < 0.01
    # sd is 1 up to ~0.2%, ESS ≈ N up to a few %, so sd/sqrt(ESS) is within ~3% of 1/sqrt(N).
    assert mcse_mean(x) == pytest.approx(1 / math.sqrt(n), rel=0.10)


def test_different_means_detected():
    x = np.random.default_rng(2).standard_normal((4, 1000))
    # One chain shifted by δ = 2: of the 8 split halves 2 sit at δ, so the variance of the
    # half-chain means is ≈ 3δ²/14 ≈ 0.86 against W ≈ 1, giving R̂ ≈ sqrt(1.86) ≈ 1.36 on the raw
    # scale (somewhat less after rank normalization); noise in the means is ~1/sqrt(500) ≈ 0.05.
    x[0] += 2.0
    assert rhat(x) > 1.1


def test_single_chain_drift_detected_by_splitting():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(2000) + np.linspace(0.0, 3.0, 2000)  # trend: halves disagree
    assert rhat(x) > 1.1
    assert ess(x, "bulk") < 0.1 * x.size


def test_single_chain_and_torch_input():
    x = np.random.default_rng(4).standard_normal((1, 4000))
    t = torch.from_numpy(x[0]).requires_grad_(False)
    for method in ("bulk", "tail", "mean"):
        assert ess(t, method) == ess(x, method)
        assert isinstance(ess(t, method), float)
    assert rhat(t) == rhat(x)
    assert abs(rhat(t) - 1.0) < 0.01
    assert autocorrelation(t).shape == (1, 4000)


def test_too_short_chain_refused():
    x = ar1(0.9, chains=2, draws=300, seed=5)  # τ ≈ 19 needs ~950 draws per chain at 50 τ
    with pytest.raises(ChainTooShortError, match=r"needs at least \d+ draws"):
        integrated_autocorrelation_time(x)
    assert issubclass(ChainTooShortError, ValueError)
    # the same chains pass once the caller accepts a smaller multiple
    assert integrated_autocorrelation_time(x, min_chain_multiple=5.0) > 5.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize(
    "fn", [ess, rhat, mcse_mean, integrated_autocorrelation_time, autocorrelation]
)
def test_non_finite_input_rejected(fn, bad):
    x = np.random.default_rng(6).standard_normal((3, 500))
    x[1, 17] = bad
    with pytest.raises(ValueError, match=r"NaN .* infinite .* chains \[1\]"):
        fn(x)


def test_bad_arguments():
    x = np.random.default_rng(7).standard_normal((2, 100))
    with pytest.raises(ValueError, match="method"):
        ess(x, "median")
    with pytest.raises(ValueError, match="shape"):
        ess(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="draws"):
        rhat(np.zeros((2, 3)))


def test_constant_input():
    x = np.full((2, 100), 3.0)
    assert ess(x, "bulk") == ess(x, "mean") == ess(x, "tail") == 200.0
    assert mcse_mean(x) == 0.0
    assert math.isnan(rhat(x))
    assert integrated_autocorrelation_time(x) == 1.0
    assert np.array_equal(autocorrelation(x)[0], np.r_[1.0, np.zeros(99)])


def test_matches_arviz_stats():
    array_stats = pytest.importorskip("arviz_stats.base").array_stats
    rng = np.random.default_rng(8)
    cases = {
        "ar1": ar1(0.9, 4, 1000, seed=9),
        "odd_draws_heavy_tails": rng.standard_t(2, size=(4, 1001)),
        "ties": np.round(rng.standard_normal((3, 800)), 1),
        "shifted": rng.standard_normal((4, 500)) + np.array([[0.0], [0.0], [0.0], [0.5]]),
        "drift": rng.standard_normal((2, 300)).cumsum(axis=1),
        "tiny": rng.standard_normal((3, 5)),
    }
    # Same algorithm in float64: only rounding differs (observed ~1e-15 relative).
    for name, x in cases.items():
        expected = {
            "bulk": array_stats.ess(x, method="bulk"),
            "tail": array_stats.ess(x, method="tail", prob=0.05),
            "mean": array_stats.ess(x, method="mean"),
        }
        for method, value in expected.items():
            assert ess(x, method) == pytest.approx(float(value), rel=1e-6), (name, method)
        assert rhat(x) == pytest.approx(float(array_stats.rhat(x, method="rank")), rel=1e-6), name
        assert mcse_mean(x) == pytest.approx(
            float(array_stats.mcse(x, method="mean")), rel=1e-6
        ), name
