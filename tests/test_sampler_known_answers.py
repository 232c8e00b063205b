"""Every sampler against exact answers, through ``estimate_llc`` (issue 3, the evidence).

The conventions of tests/test_known_answers.py: an estimate agrees with an exact finite-nβ value
when it is within ``Z`` = 4 Monte Carlo standard errors *and* within a relative tolerance. The
unadjusted samplers (all but MALA) carry an O(ε) discretisation bias that the MCSE does not
cover; each gets a stated ``bias`` allowance (relative), added to the Z-MCSE band, small next to
the relative tolerance. MALA is exact: allowance 0. Comparisons with Aoyagi's λ (DLN, RRR)
compare a finite-nβ estimate with the nβ → ∞ value, so, as in test_known_answers.py, they use a
relative tolerance only (stated per test, with the reason).

Per-sampler settings (options at their defaults unless listed):

| sampler        | ε, potential (nβ=1e4) | ε, DLN/RRR (n=1e5) | options                 | bias allowance |
|----------------|-----------------------|--------------------|-------------------------|----------------|
| sgld           | 2e-5                  | 1.5e-5             | —                       | 0.5%           |
| rmsprop_sgld   | 2e-6                  | 1.5e-6             | α = 0.99, eps = 0.1     | 2%             |
| sghmc          | 2e-5                  | 1.5e-5             | friction 0.1            | 1%             |
| sgnht          | 2e-5                  | 1.5e-5             | diffusion 0.01          | 1%             |
| mala           | 1e-4                  | 1e-4 (n = 2,000)   | —                       | 0              |

Why these: SGLD's DLN step is test_known_answers.py's (the paper's size band scaled to n = 1e5).
RMSProp-SGLD's preconditioner is P = 1/(√V + eps) ≈ 1/eps = 10 wherever the *loss* gradient is
small next to eps = 0.1, which at nβ ≥ 10³ is almost everywhere near w*, so its ε is SGLD's / 10
(the same effective step). SGHMC and SGNHT use SGLD's ε (the same learning rate η = ε/2).
MALA's ε gives acceptance ≈ 0.9 on the potential and 0.7–0.9 on the DLN. Allowances: SGLD's Euler
bias is ε a/4 = 0.5% at the potential's curvature a ≈ 10³ (the Euler chain of a quadratic); RMSProp-SGLD adds the
tilt of its uncorrected, position-dependent P (+1.3% measured); SGHMC's symplectic Euler and
SGNHT's thermostat (−0.5% at A = 0.01, samplers/sgnht.py) are O(ε) too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest

import lambdahat as lh
from lambdahat import losses, tasks, truth

Z = 4.0


class Setting(NamedTuple):
    potential_step: float
    dln_step: float
    options: dict
    bias: float  # relative allowance for the sampler's own O(ε) bias, on top of Z MCSE


SETTINGS = {
    "sgld": Setting(2e-5, 1.5e-5, {}, 0.005),
    "rmsprop_sgld": Setting(2e-6, 1.5e-6, {"alpha": 0.99, "eps": 0.1}, 0.02),
    "sghmc": Setting(2e-5, 1.5e-5, {"friction": 0.1}, 0.01),
    "sgnht": Setting(2e-5, 1.5e-5, {"diffusion": 0.01}, 0.01),
    "mala": Setting(1e-4, 1e-4, {}, 0.0),
}
ALL = list(SETTINGS)
MINIBATCH = [name for name in ALL if name != "mala"]


def _sampler(name):
    return lh.SamplerConfig(name, **SETTINGS[name].options)


def _run(task, **settings):
    defaults = dict(num_chains=4, seed=0, progress=False)
    defaults.update(settings)
    return lh.estimate_llc(task.model, task.data, task.loss_fn, **defaults)


def _agrees(result, target, rel_tol, bias=0.0):
    """|λ̂ − target| ≤ rel_tol · |target| and ≤ Z · MCSE + bias · |target|."""
    error = result.llc_mean - target
    ok = abs(error) <= rel_tol * abs(target) and abs(error) <= Z * result.llc_mcse + bias * abs(target) + 1e-12
    return ok, (
        f"estimate {result.llc_mean:.4f} ± {result.llc_mcse:.4f} vs exact {target:.4f} "
        f"(relative error {error / target:+.2%}, tolerance {rel_tol:.0%}, bias allowance {bias:.1%})"
    )


# ---------------------------------------------------------------- quasi-homogeneous, γ = 0 (exact)

QH_POWERS, QH_COEFFS, QH_COPIES = [4, 2], [1.0, 0.05], 500


@pytest.mark.parametrize("name", ALL)
def test_quasi_homogeneous_gamma_zero_every_sampler(name, record_known_answer):
    """K = Σ c_i |w_i|^{p_i} with γ = 0: E[nβ K] = Σ 1/p_i exactly for every nβ and every c_i
    (a product of Gamma integrals), here 500 copies of p = (4, 2), truth 375.

    nβ = 10⁴, the scale of real use (n / log n at n ≈ 10⁵). The coefficients (1, 0.05) give both
    coordinates a similar stiffness (curvature ≈ 10³ for p = 2, ≈ 600 at a typical point for
    p = 4), so one ε mixes both in a CI budget. At this nβ the loss gradient near w* is small
    next to RMSProp's eps, so its P is nearly constant and it is exact up to O(ε); at nβ = 1 it
    is not (see the slow test below). Tolerance 3% (the SGLD suite's), MCSE ≈ 0.3–0.7%."""
    setting = SETTINGS[name]
    task = tasks.quasi_homogeneous(QH_POWERS, QH_COEFFS, copies=QH_COPIES)
    result = _run(
        task, sampler=_sampler(name), step_size=setting.potential_step, localization=0.0, nbeta=1e4,
        num_chains=2, num_draws=3000, num_burnin_steps=1000,
    )
    target = float(task.truth.value)
    record_known_answer(f"{task.name} [{name}]", target, result, "exact E[nβK], γ = 0, nβ = 1e4")
    ok, message = _agrees(result, target, 0.03, setting.bias)
    assert ok, message


_RMSPROP_RELAXATION = pytest.mark.xfail(
    strict=True,
    reason="RMSProp-SGLD's preconditioner, adapted in the first half of the burn-in, tilts the chain outward "
    "(the dropped Γ term); frozen after that, the chain samples the exact law but relaxes from the tilted point "
    "over more than this run's 4,500 steps: −5.7% ± 1.8% (with adapt='always', +41%; with 16,000 draws, "
    "−1.2%). Its P ≈ 1/(|g| + eps) ≈ 0.9 in the steep directions makes its steps there 10× shorter than SGLD's.",
)


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=_RMSPROP_RELAXATION) if n == "rmsprop_sgld" else n for n in ALL])
def test_quasi_homogeneous_at_nbeta_one(name, record_known_answer):
    """test_known_answers.py's setting (p = (4, 2), nβ = 1, c = 1, γ = 0) for every sampler, with
    ε = 2e-3 (Euler bias ≤ 1%, see there); RMSProp-SGLD with the same effective step ε/eps.

    RMSProp-SGLD drops the Γ (divergence) term of its preconditioner. At nβ = 1 the loss gradient
    is O(1), comparable to eps = 0.1, so a P = 1/(√V + eps) that keeps following the position (V
    averages ~100 steps, the chain relaxes over ~800) tilts the law toward exp(−U)/P: +41% here
    with ``adapt="always"``, and at ε = 2e-3 +95% with α = 0.99, +36% with α = 0.999, +21% with
    α = 0.9999. Its default, ``adapt="burnin"``, freezes P halfway through the burn-in, and a
    constant P has no Γ term (its remaining miss: the xfail's reason)."""
    step = 2e-4 if name == "rmsprop_sgld" else 2e-3
    task = tasks.quasi_homogeneous([4, 2], copies=500)
    result = _run(task, sampler=_sampler(name), step_size=step, localization=0.0, nbeta=1.0, num_draws=4000, num_burnin_steps=1000)
    target = float(task.truth.value)
    record_known_answer(f"{task.name} [{name}]", target, result, "exact E[nβK], γ = 0, nβ = 1")
    ok, message = _agrees(result, target, 0.03, max(SETTINGS[name].bias, 0.01))
    assert ok, message


# ---------------------------------------------------------------- MALA: exact, no ε bias


def test_mala_quadratic_matches_the_continuous_posterior(record_known_answer):
    """Linear regression at its least-squares w*: L_n − L_n(w*) is exactly quadratic, so the
    localised tempered posterior is Gaussian and E[λ̂] = Σ ½ nβh/(nβh + γ) (a Gaussian localised posterior).
    MALA is exact at any ε: no finite-step correction, unlike SGLD (whose own value at this ε,
    truth.quadratic_expectation(..., step_size=ε), is +13% away and must be excluded). ε a_max = 1
    gives acceptance ≈ 0.7. Tolerance 2% (the SGLD quadratic test's), MCSE ≈ 0.6%."""
    task = tasks.linear_regression(dim=50, n=1000, seed=0)
    eig = task.info["hessian_eigenvalues"]
    nbeta, gamma = 100.0, 10.0
    step = 1.0 / (nbeta * max(eig) + gamma)
    target = truth.quadratic_expectation(eig, nbeta, gamma)
    result = _run(task, sampler="mala", step_size=step, localization=gamma, nbeta=nbeta, num_chains=2, num_draws=3000, num_burnin_steps=300)
    record_known_answer(f"{task.name} [mala]", target, result, "exact continuous-time expectation")
    ok, message = _agrees(result, target, 0.02)
    assert ok, message
    sgld_value = truth.quadratic_expectation(eig, nbeta, gamma, step_size=step)
    assert abs(result.llc_mean - sgld_value) > Z * result.llc_mcse  # the test can tell MALA from SGLD
    accept = float(np.nanmean(result.trace.draws("mala_accept")))
    assert 0.5 < accept < 0.9, accept


# ---------------------------------------------------------------- DLN and RRR against Aoyagi's λ
#
# The protocol of test_known_answers.py (n = 1e5, nβ = n / log n ≈ 8686, γ = 1, batch 500, 2 chains
# × 10,000 steps, half burn-in, noise-free teacher targets, multiplicity-1 points) with each
# sampler's own ε from the table above.
#
# Tolerance: 10% for SGLD and RMSProp-SGLD, as in test_known_answers.py; 15% for SGHMC and
# SGNHT. Why not MCSE: λ is the nβ → ∞ value, and at nβ = 8686 the exact finite-nβ expectation
# itself sits a few % from it (exact MALA: −4.5% on DLN 4-3-8 r=0 and −0.8% on RRR 3-3-3 r=1 in
# test_mala_on_linear_networks, −3.9% to +4.3% across docs/samplers.md), while the unadjusted samplers add their own positive O(ε) bias; the
# MCSE (3–5% here) covers neither. The momentum samplers get 15% because their minibatch-noise
# heating is not corrected (Chen et al.'s β̂ = 0) and their symplectic-Euler bias is larger at the
# same ε (measured +4% on 4-3-8 r=0 against SGLD's +1%).

DLN_CASES = [
    pytest.param("dln", (4, 3, 8), 0, id="dln-4-3-8-r0"),  # d = 36, λ = 6
    pytest.param("dln", (3, 2, 4), 1, id="dln-3-2-4-r1"),  # d = 14, λ = 4
    pytest.param("rrr", (3, 3, 3), 1, id="rrr-3-3-3-r1"),  # λ = 4 (first case of Aoyagi & Watanabe)
]


def _linear_task(kind, widths, rank, n):
    """The teachers each sampler's ε of docs/samplers.md was measured on (``benchmarks/sampler_table.py``):
    layers drawn with independent subspaces (``aligned=False``). At aligned teachers, stiffer, the
    same fixed ε overshoots 3-2-4 r=1 by +18% (SGLD) and +19% (RMSProp-SGLD), measured 2026-12-04."""
    if kind == "rrr":
        return tasks.reduced_rank_regression(*widths, rank, n=n, seed=1, aligned=False)
    return tasks.deep_linear_network(widths, rank, n=n, seed=1, aligned=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", MINIBATCH)
@pytest.mark.parametrize("kind, widths, rank", DLN_CASES)
def test_minibatch_samplers_on_linear_networks(name, kind, widths, rank, record_known_answer):
    task = _linear_task(kind, widths, rank, n=100_000)
    assert task.truth.multiplicity == 1
    result = _run(
        task, sampler=_sampler(name), step_size=SETTINGS[name].dln_step, localization=1.0, nbeta=None,
        num_chains=2, num_draws=5000, num_burnin_steps=5000, batch_size=500,
    )
    target = float(task.truth.value)
    record_known_answer(f"{task.name} [{name}]", target, result, "λ (Aoyagi)")
    assert not result.diverged, result.diverged
    rel_tol = 0.10 if name in ("sgld", "rmsprop_sgld") else 0.15
    error = (result.llc_mean - target) / target
    assert abs(error) <= rel_tol, f"{task.name} [{name}]: {result.llc_mean:.3f} ± {result.llc_mcse:.3f} vs λ = {target} ({error:+.1%})"


@pytest.mark.slow
@pytest.mark.parametrize("kind, widths, rank", [DLN_CASES[0], DLN_CASES[2]])
def test_mala_on_linear_networks(kind, widths, rank, record_known_answer):
    """Full-batch MALA at n = 2,000 with nβ fixed at 8686 (n / log n at n = 1e5, the minibatch
    tests' value): with noise-free targets L_n is an exact quadratic form in the network's map, so
    its learning coefficient does not depend on n, and n only sets the cost of a full-batch step.
    Tolerance 10%: MALA is exact, so the whole gap is the finite-nβ one (above)."""
    task = _linear_task(kind, widths, rank, n=2000)
    result = _run(
        task, sampler="mala", step_size=SETTINGS["mala"].dln_step, localization=1.0, nbeta=1e5 / math.log(1e5),
        num_chains=2, num_draws=3000, num_burnin_steps=3000,
    )
    target = float(task.truth.value)
    record_known_answer(f"{task.name} [mala, n=2000]", target, result, "λ (Aoyagi)")
    error = (result.llc_mean - target) / target
    assert abs(error) <= 0.10, f"{task.name} [mala]: {result.llc_mean:.3f} ± {result.llc_mcse:.3f} vs λ = {target} ({error:+.1%})"


# ---------------------------------------------------------------- MALA (exact) vs SGLD on a ReLU MLP


@pytest.mark.slow
def test_mala_and_sgld_agree_on_a_relu_teacher_student(record_known_answer):
    """4-16-1 ReLU MLP, n = 5,000, σ = 1, at the library's default nβ = n / log n ≈ 587 and γ = 100:
    exact full-batch MALA (ε = 5e-4, acceptance ≈ 0.7) and minibatch SGLD (ε = 5e-5, batch 500,
    its MALA acceptance ≈ 0.99) must agree within 4 combined standard errors and within 10%.
    (Lau et al. report 355.8 vs 349.1 for SGLD vs MALA on a 10-20-20-10 ReLU MLP at n = 1e5.)
    The SGLD step is 10× below MALA's because SGLD's bias on a ReLU net is larger than its
    quadratic Euler estimate: at n = 2,000, ε = 1e-4–2e-4 (acceptance 0.98) SGLD sat 10% above
    MALA in four runs, while a tanh net of the same shape agreed to 0.4% (docs/samplers.md)."""
    task = tasks.relu_teacher_student(n=5000)
    model, data = task.model, task.data
    common = dict(localization=100.0, nbeta=None, num_chains=4, seed=0, progress=False)
    exact = lh.estimate_llc(model, data, losses.gaussian_nll, sampler="mala", step_size=5e-4, num_draws=2000, num_burnin_steps=2000, **common)
    sgld = lh.estimate_llc(
        model, data, losses.gaussian_nll, sampler="sgld", step_size=5e-5, batch_size=500, num_draws=4000, num_burnin_steps=4000, **common
    )
    record_known_answer("relu 4-16-1 teacher–student n=5000 [sgld vs mala]", exact.llc_mean, sgld, "exact MALA, same nβ and γ")
    accept = float(np.nanmean(exact.trace.draws("mala_accept")))
    assert 0.5 < accept < 0.9, accept
    se = math.hypot(exact.llc_mcse, sgld.llc_mcse)
    diff = sgld.llc_mean - exact.llc_mean
    message = (
        f"SGLD {sgld.llc_mean:.3f} ± {sgld.llc_mcse:.3f} vs MALA {exact.llc_mean:.3f} ± {exact.llc_mcse:.3f} "
        f"({diff / exact.llc_mean:+.1%}; 4 combined SE = {4 * se:.3f})"
    )
    assert abs(diff) <= Z * se and abs(diff) <= 0.10 * exact.llc_mean, message
