"""Tier 3: the estimator against exact answers (lambdahat.truth: Aoyagi 2024, Aoyagi & Watanabe 2005, closed forms and quadrature).

Every test states its tolerance and why. Error bars are the estimate's Monte Carlo standard
error (from the split-chain effective sample size), and a test asks for agreement within
``Z`` standard errors *and* within a relative tolerance (tests/_harness.py says why Z = 4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lambdahat as lh
from lambdahat import tasks, truth
from tests._harness import Z, agrees, finite_step_quadratic

pytestmark = pytest.mark.known_answer


def _run(task, **settings):
    defaults = dict(num_chains=4, seed=0, progress=False)
    defaults.update(settings)
    return lh.estimate_llc(task.model, task.data, task.loss_fn, **defaults)


@pytest.mark.parametrize("powers", [[2], [4], [4, 2], [2, 2, 2]])
def test_quasi_homogeneous_gamma_zero_is_exact(powers, record_known_answer):
    """K = Σ |w_i|^{p_i}, γ = 0: E[nβ K] = Σ 1/p_i exactly, for any nβ (a product of one-dimensional Gamma integrals).

    500 independent copies of the potential make one run carry ~500× the samples; the truth is
    500 · Σ 1/p_i. Tolerance 3% (the issue's): with ε = 2e-3 and nβ = 1 the Euler bias is
    ε a/4 ≤ 0.1% for p = 2 and ≲ 1% for p = 4 (curvature 12 w² ≤ 30 over the bulk of the
    posterior), and the MCSE is ≈ 0.5%, so 3% leaves room for neither to hide a real error.
    """
    task = tasks.quasi_homogeneous(powers, copies=500)
    result = _run(task, step_size=2e-3, localization=0.0, nbeta=1.0, num_draws=4000, num_burnin_steps=1000)
    record_known_answer(task.name, float(task.truth.value), result, "exact E[nβK], γ = 0")
    ok, message = agrees(result, float(task.truth.value), 0.03)
    assert ok, message


def test_quadratic_matches_exact_finite_step_expectation(record_known_answer):
    """Linear regression at its least-squares w*: a quadratic loss, so full-batch SGLD's own
    stationary law is known exactly at finite ε and γ (the Euler chain of a quadratic potential is Gaussian). Tolerance 2% (the issue's):
    the MCSE here is ≈ 0.3%, and the target already includes the ε-bias, so nothing else is left."""
    task = tasks.linear_regression(dim=50, n=1000, seed=0)
    eig = task.info["hessian_eigenvalues"]
    nbeta, gamma = 100.0, 10.0
    step, target = finite_step_quadratic(eig, nbeta, gamma)  # ε a_max = 2: stable (< 4), far from ε → 0
    result = _run(task, step_size=step, localization=gamma, nbeta=nbeta, num_draws=5000, num_burnin_steps=500, batch_size=task.n)
    record_known_answer(task.name, target, result, "exact finite-ε SGLD expectation")
    ok, message = agrees(result, target, 0.02)
    assert ok, message
    # and the ε-bias is real: the continuous-time value is measurably different
    assert abs(truth.quadratic_expectation(eig, nbeta, gamma) - target) > Z * result.llc_mcse


def _noise_free_crossing(point, copies, n=64):
    """Normal crossing w1·w2² with every copy's inputs scaled to mean(x²) = 1 and targets y = 0, so
    L_n(w) − L_n(w*) = ½ (w1 w2²)² for every copy: the population loss K itself, one exact target."""
    task = tasks.normal_crossing((1, 2), point=point, n=n, copies=copies, seed=0)
    x = task.data[0]
    x = x / x.pow(2).mean(dim=0).sqrt()
    task.data = (x, torch.zeros_like(x))
    return task


def _crossing_quadrature(nbeta, gamma, point):
    return truth.tempered_expectation_2d(lambda w1, w2: 0.5 * w1**2 * w2**4, nbeta, gamma, center=point, num_points=801)


def test_normal_crossing_matches_exact_finite_nbeta_value(record_known_answer):
    """K = ½ w1² w2⁴ at the origin (λ = 1/4, m = 1). At finite nβ even a perfect sampler returns
    E_p[nβ K], which quadrature on a sinh-spaced grid gives exactly; this checks the sampler on a
    singular model with no asymptotic excuse. The value depends on nβ/γ³ only (K is homogeneous of
    degree 6); nβ = 10, γ = 1 keeps the stiff/flat time-scale ratio small enough to mix in a CI
    budget, at a target of ≈ 0.160 per copy. Tolerance 5%: the MCSE is ≈ 1%, and the Euler bias is
    ≲ 1% (ε nβ w2⁴/4 ≤ 0.02 for |w2| ≤ 1.5, where most of the mass sits)."""
    copies = 1000
    task = _noise_free_crossing((0.0, 0.0), copies)
    nbeta, gamma = 10.0, 1.0
    target = copies * _crossing_quadrature(nbeta, gamma, (0.0, 0.0))
    result = _run(task, step_size=2e-3, localization=gamma, nbeta=nbeta, num_draws=6000, num_burnin_steps=2000, batch_size=task.n)
    record_known_answer(task.name, target, result, "quadrature at nβ = 10, γ = 1")
    ok, message = agrees(result, target, 0.05)
    assert ok, message
    assert target / copies < float(task.truth.value) / copies  # the finite-nβ value sits below λ = 1/4


def test_normal_crossing_depends_on_the_point(record_known_answer):
    """λ is local: for K = ½ w1² w2⁴, λ(0, 0) = 1/4 but λ(0, 1) = 1/2 (the learning coefficient is local; Watanabe 2009). At (0, 1)
    only w1 is constrained; γ = 100 keeps the posterior near w2 = 1 (γ = 1 would let it slide to
    the more singular origin), and nβ = 10⁴ ≫ γ makes the exact value 0.494 ≈ 1/2. ε = 4e-6 keeps
    the Euler bias in the stiff w1 direction at ε nβ/4 = 1% (at ε = 2e-5 it was a measured +5.5%,
    as §3.1 predicts). Tolerance 5% against the exact value (MCSE ≈ 0.5%). The same setting at the
    origin must give a clearly smaller value: below 0.3 per copy and more than 10 MCSE apart."""
    copies = 500
    nbeta, gamma, step = 1e4, 100.0, 4e-6
    settings = dict(step_size=step, localization=gamma, nbeta=nbeta, num_draws=3000, num_burnin_steps=500)
    near_task = _noise_free_crossing((0.0, 1.0), copies)
    near = _run(near_task, batch_size=near_task.n, **settings)
    near_target = copies * _crossing_quadrature(nbeta, gamma, (0.0, 1.0))
    record_known_answer(near_task.name, near_target, near, "quadrature at nβ = 1e4, γ = 100")
    ok, message = agrees(near, near_target, 0.05)
    assert ok, message
    assert abs(near.llc_mean / copies - 0.5) < 0.05 * 0.5
    origin_task = _noise_free_crossing((0.0, 0.0), copies)
    origin = _run(origin_task, batch_size=origin_task.n, **settings)
    assert origin.llc_mean / copies < 0.3
    assert near.llc_mean - origin.llc_mean > 10 * np.hypot(near.llc_mcse, origin.llc_mcse)


# Deep linear networks and reduced-rank regression against Aoyagi's exact λ.
#
# Noise-free teacher targets, n = 10⁵, nβ = n / log n ≈ 8686, at teachers whose every layer has
# rank exactly r, with aligned layer subspaces (``tasks.deep_linear_network``'s default: the
# product's singular values stay near 1, above the posterior's resolution 1/√nβ). Only
# multiplicity-1 points: with m > 1 the finite-nβ value sits a further ≈ (m − 1)/log nβ below λ
# (Watanabe 2009, ch. 6), which is the method's, not the sampler's, error.
#
# The reduced-rank regressions run the paper's fixed protocol (Lau et al. 2023, deep linear
# networks) scaled to this machine: γ = 1, batch 500, half the steps burn-in, ε per size band (there
# 5e-7 for 1K–10K weights, 1e-7 for 100K; here 1.5e-5 for widths ≤ 10, 3e-6 beyond). The deep
# linear networks run with no sampling settings, as a user would: that hand rule's ε·nβ = 0.13
# overshoots them by step-size bias (with 4 chains × 60,000 steps on the earlier, unaligned teachers
# +18% at depth 4 and +21% at depth 5; on aligned teachers +33% on 10-10-10-10-10 and +18% on 3-2-4,
# 2026-12-04), which the warm-up's acceptance target avoids.
#
# Tolerance 10% (the issue's). These compare a finite-nβ estimate with the nβ → ∞ value λ, so
# the Monte Carlo error bars do not cover the gap (it is not Monte Carlo error); the tests
# against exact finite-nβ values above are the ones that also demand agreement within MCSE.

def _dln_settings(widths):
    steps = 20_000 if len(widths) >= 5 else 10_000
    return dict(
        step_size=1.5e-5 if max(widths) <= 10 else 3e-6,
        localization=1.0,
        nbeta=None,
        num_chains=2,
        num_draws=steps // 2,
        num_burnin_steps=steps // 2,
        batch_size=500,
    )


def _check_against_truth(task, record, rel_tol=0.10, **overrides):
    """The fixed protocol's estimate of ``task`` (``overrides`` on top), within ``rel_tol`` of λ."""
    return _agrees_with_truth(task, record, _run(task, **(_dln_settings(task.info["widths"]) | overrides)),
                              "λ (Aoyagi)", rel_tol)


def _agrees_with_truth(task, record, result, kind, rel_tol=0.10):
    target = float(task.truth.value)
    record(task.name, target, result, kind)
    error = (result.llc_mean - target) / target
    assert not result.diverged, f"{task.name}: diverged {result.diverged}"
    assert abs(error) <= rel_tol, (
        f"{task.name}: estimate {result.llc_mean:.3f} ± {result.llc_mcse:.3f} vs λ = {target:.3f} "
        f"({error:+.1%}, tolerance {rel_tol:.0%})"
    )
    return result


@pytest.mark.parametrize(
    "dims, rank, case",
    [
        ((3, 3, 3), 1, "N + r ≤ M + H, M + r ≤ N + H, H + r ≤ M + N: λ = 4"),
        ((2, 1, 5), 1, "M + H < N + r: λ = (HM − Hr + Nr)/2 = 3"),
        ((5, 1, 2), 1, "N + H < M + r: λ = (HN − Hr + Mr)/2 = 3"),
        ((2, 4, 2), 1, "M + N < H + r: λ = MN/2 = 2"),
    ],
)
def test_reduced_rank_regression_all_four_cases(dims, rank, case, record_known_answer):
    """Reduced-rank regression BAx in each of the four regions of Aoyagi & Watanabe (2005)."""
    task = tasks.reduced_rank_regression(*dims, rank, n=100_000, seed=1)
    _check_against_truth(task, record_known_answer)


DLN_SUITE = [
    ((3, 2, 4), 1),  # d = 14, λ = 4
    ((4, 3, 8), 0),  # d = 36, λ = 6
    ((8, 4, 6, 5), 1),  # d = 86, λ = 23/2, depth 3
    ((10, 10, 10, 10, 10), 2),  # d = 400, λ = 38, depth 4
    ((30, 20, 10), 1),  # d = 800, λ = 105
    ((100, 50, 50), 2),  # d = 7,500, λ = 1300
]


@pytest.mark.parametrize("widths, rank", DLN_SUITE, ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else f"r{v}")
def test_deep_linear_network_against_aoyagi(widths, rank, record_known_answer):
    """No sampling settings (the nβ check's second run is the slow tier's): within 10% of λ."""
    task = tasks.deep_linear_network(widths, rank, n=100_000, seed=1)
    assert task.truth.multiplicity == 1
    _agrees_with_truth(task, record_known_answer, _run(task, nbeta_check=False), "λ (Aoyagi), no settings")


@pytest.mark.slow
@pytest.mark.parametrize("widths, rank", DLN_SUITE + [((8, 6, 6, 6, 6, 4), 0)],
                         ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else f"r{v}")
def test_deep_linear_network_with_no_settings(widths, rank, record_known_answer):
    """The DLN suite and a depth-5 network (d = 180, λ = 9) at other teachers, estimated exactly
    as ``estimate_llc(model, data, loss_fn)`` with no settings, the nβ check included: within 10%
    of λ."""
    task = tasks.deep_linear_network(widths, rank, n=100_000, seed=2)
    result = lh.estimate_llc(task.model, task.data, task.loss_fn, seed=0, progress=False)
    _agrees_with_truth(task, record_known_answer, result, "λ (Aoyagi), no settings, nβ check")


def test_ordering_follows_the_true_learning_coefficient():
    """The same 4-3-8 network at teachers of rank 0..3 (λ = 6, 8.5, 11, 13.5, Aoyagi 2024): the
    estimates must come out in the same order, each step up by more than 3 combined MCSE."""
    results = []
    for rank in range(4):
        task = tasks.deep_linear_network((4, 3, 8), rank, n=100_000, seed=1)
        settings = _dln_settings((4, 3, 8)) | dict(num_draws=3000, num_burnin_steps=3000)
        results.append(_run(task, **settings))
    for lower, higher in zip(results, results[1:]):
        assert higher.llc_mean - lower.llc_mean > 3 * np.hypot(lower.llc_mcse, higher.llc_mcse), [
            round(r.llc_mean, 2) for r in results
        ]


def test_deep_linear_network_teacher_keeps_its_rank_visible():
    # aligned layer subspaces keep the product's r singular values within [0.75^L, 1.25^L]; drawn
    # independently they shrink by about √(r / width) per junction, at depth 5 to below the
    # posterior's resolution 1/√(nβ) (0.03 at n = 10⁴), so the data could not tell the rank
    widths, rank = [13, 12, 20, 15, 18, 20], 3
    depth = len(widths) - 1
    for aligned in (True, False):
        task = tasks.deep_linear_network(widths, rank, n=10, seed=7, aligned=aligned)
        product = torch.linalg.multi_dot([m.weight.double() for m in reversed(task.model)]).detach()
        singular = torch.linalg.svdvals(product)
        assert [int(torch.linalg.matrix_rank(m.weight, rtol=1e-5)) for m in task.model] == [rank] * depth
        assert task.info["aligned"] is aligned and task.truth.value == 84
        if aligned:
            assert 0.75**depth <= singular[rank - 1] and singular[0] <= 1.25**depth, singular[:rank]
            assert singular[rank] < 1e-5 * singular[0]
        else:
            assert singular[rank - 1] < 0.03, singular[:rank]
    assert tasks.deep_linear_network(widths, rank, n=10, seed=7).info["aligned"] is True  # the default


def test_deep_linear_network_teacher_layer_ranks():
    # the default teacher has every layer of rank r; layer_ranks sets them one by one (the
    # rank-reduced protocol), the product keeping the smallest rank, and bad ranks are refused
    task = tasks.deep_linear_network([6, 5, 7, 4], 2, n=50, seed=3)
    assert [int(torch.linalg.matrix_rank(m.weight)) for m in task.model] == [2, 2, 2]
    same = tasks.deep_linear_network([6, 5, 7, 4], 2, n=50, seed=3, layer_ranks=[2, 2, 2])
    assert all(torch.equal(a, b) for a, b in zip(task.model.parameters(), same.model.parameters()))
    mixed = tasks.deep_linear_network([6, 5, 7, 4], 2, n=50, seed=3, layer_ranks=[5, 2, 4])
    assert [int(torch.linalg.matrix_rank(m.weight)) for m in mixed.model] == [5, 2, 4]
    product = mixed.model[2].weight @ mixed.model[1].weight @ mixed.model[0].weight
    assert int(torch.linalg.matrix_rank(product)) == 2 and mixed.truth == task.truth
    with pytest.raises(ValueError, match="minimum rank=2"):
        tasks.deep_linear_network([6, 5, 7, 4], 2, layer_ranks=[3, 3, 3])
    with pytest.raises(ValueError, match=r"layer_ranks\[0\] = 6"):
        tasks.deep_linear_network([6, 5, 7, 4], 2, layer_ranks=[6, 2, 2])
