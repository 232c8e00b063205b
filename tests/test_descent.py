"""The descent from w* (lambdahat.descent): the fall nβ (L_n(w*) − L_n(m)) it measures, against closed
forms, its budget, and the nβ check's verdict when it decided the lowering."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from lambdahat import health, tasks
from lambdahat.data import as_data_source
from lambdahat.descent import PREDICTION_MARGIN, Descent, descend
from lambdahat.nbeta_rung import BIAS_ALLOWANCE, NBETA_FACTOR, lowers
from lambdahat.potential import Potential, default_nbeta


def _potential(task, model=None):
    model = model or task.model
    model.eval()
    source = as_data_source(task.data)
    potential = Potential(model, task.loss_fn, [name for name, _ in model.named_parameters()])
    return potential, source, potential.full_loss(potential.w_star, source, 4096)


def _moved_regression(fall_at_nbeta: float):
    """A linear regression whose w* is moved off the least-squares point ŵ along the flattest and the
    steepest direction, so that nβ (L_n(w*) − L_n(ŵ)) = ``fall_at_nbeta`` at n / log n."""
    task = tasks.linear_regression(dim=4, n=2000, seed=3)
    x, _ = task.data
    hessian = x.T @ x / x.shape[0]
    eig, vectors = torch.linalg.eigh(hessian)
    nbeta = default_nbeta(x.shape[0])
    direction = vectors[:, 0] + vectors[:, -1]
    scale = math.sqrt(fall_at_nbeta / (nbeta * 0.5 * float(direction @ hessian @ direction)))
    model = copy.deepcopy(task.model)
    with torch.no_grad():
        model.weight.add_(scale * direction)
    return task, model, nbeta, eig.tolist(), (vectors.T @ (scale * direction)).tolist()


@pytest.mark.parametrize("gamma", [0.0, 1.0, 300.0])
def test_the_fall_of_a_quadratic_is_its_closed_form(gamma):
    """F = nβ L_n + (γ/2)‖w − w*‖² has its minimiser at m − ŵ = γ (nβH + γ)⁻¹ (w* − ŵ), so the fall is
    (nβ/2) Σ h_i o_i² (1 − γ² / (nβ h_i + γ)²) in H's eigenbasis; L-BFGS reaches it on 4 weights. A
    strong localisation (γ = 300, against nβ h of 130–2,100) holds m near w* and the fall smaller."""
    task, model, nbeta, eig, offset = _moved_regression(0.4)
    potential, source, init_loss = _potential(task, model)
    found = descend(potential, source, nbeta, gamma, init_loss, 4096, 2000)
    exact = 0.5 * nbeta * sum(h * o**2 * (1 - gamma**2 / (nbeta * h + gamma) ** 2) for h, o in zip(eig, offset))
    assert found.fall == pytest.approx(exact, rel=1e-6, abs=1e-9)
    assert found.nbeta == nbeta and 1 <= found.evaluations <= 40 and found.gradient_evaluations == found.evaluations
    if gamma == 0.0:
        assert found.fall == pytest.approx(0.4, rel=1e-6)


def test_no_fall_at_a_minimum_and_one_evaluation_where_the_gradient_vanishes():
    """At the least-squares point the fall is 0 (to rounding); at a noise-free deep linear teacher
    (L_n(w*) = 0, ∇L_n(w*) = 0) the descent stops at its first evaluation, and a start at a
    chain's last point cannot go below the loss's floor either."""
    task = tasks.linear_regression(dim=4, n=2000, seed=3)
    potential, source, init_loss = _potential(task)
    nbeta = default_nbeta(source.n)
    assert descend(potential, source, nbeta, 1.0, init_loss, 4096, 2000).fall < 1e-9
    dln = tasks.deep_linear_network([4, 3, 5], 2, n=1000, seed=0)
    potential, source, init_loss = _potential(dln)
    assert init_loss == 0.0
    moved = potential.w_star + 0.1 * torch.randn(potential.num_params, generator=torch.Generator().manual_seed(0))
    found = descend(potential, source, default_nbeta(source.n), 1.0, init_loss, 4096, 100, starts=[moved])
    assert found.fall == 0.0 and found.evaluations >= 2


def test_a_start_off_the_gradient_finds_the_fall_that_w_star_cannot():
    """Where the fall is in a direction along which the gradient at w* is zero (a product w1·w2 at
    the origin fitting targets y = c·x + noise: the saddle at w* = 0), the descent from w* stays put
    and one from a point a chain could have reached finds the minimum: nβ (L_n(0) − L_n(ŵ)) =
    nβ c²E[x²]/2 − (γ terms), here close to nβ c² / 2."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 1, generator=gen, dtype=torch.float64)
    y = 0.1 * x + 0.01 * torch.randn(4000, 1, generator=gen, dtype=torch.float64)
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        for layer in model:
            layer.weight.zero_()
    task = SimpleNamespace(model=model, data=(x, y), loss_fn=lambda out, target: 0.5 * ((out - target) ** 2).mean())
    potential, source, init_loss = _potential(task)
    nbeta = default_nbeta(source.n)
    at_w_star = descend(potential, source, nbeta, 1.0, init_loss, 4096, 4000)
    assert at_w_star.fall == 0.0 and at_w_star.evaluations == 1
    start = torch.tensor([0.3, 0.3], dtype=torch.float64)
    found = descend(potential, source, nbeta, 1.0, init_loss, 4096, 4000, starts=[start, torch.full((2,), math.nan)])
    full = nbeta * 0.5 * 0.01 * float((x**2).mean())  # nβ (L_n(0) − L_n(ŵ)) without γ, to O(noise)
    assert 0.9 * full < found.fall < 1.01 * full
    again = descend(potential, source, nbeta, 1.0, init_loss, 4096, 4000, starts=[start])
    assert again == found  # the NaN start (a diverged chain) is skipped; nothing random


def test_the_budget_bounds_the_evaluations():
    task, model, nbeta, _, _ = _moved_regression(0.4)
    potential, source, init_loss = _potential(task, model)
    assert descend(potential, source, nbeta, 1.0, init_loss, 4096, 2000, max_evaluations=1) is None
    few = descend(potential, source, nbeta, 1.0, init_loss, 4096, 500, starts=[potential.w_star + 0.01],
                  max_evaluations=3)
    assert few.evaluations <= 2 * 3 and few.gradient_evaluations == math.ceil(few.evaluations * 2000 / 500)


def test_a_fall_is_predicted_only_beyond_the_margin():
    """The fall from nβ to 4nβ is at least 3 × the descent's; the check calls a change falling beyond
    2 √2 mcse and 4% of λ̂, and the run at 4nβ is skipped only at PREDICTION_MARGIN times that."""
    llc, mcse = 10.0, 0.05  # the 4% allowance (0.4) binds
    needed = PREDICTION_MARGIN * BIAS_ALLOWANCE * llc / (NBETA_FACTOR - 1)

    def fall(value):
        return Descent(nbeta=100.0, fall=value, iterations=1, evaluations=1, gradient_evaluations=1)

    assert fall(needed * 1.001).predicts_fall(llc, mcse) and not fall(needed * 0.999).predicts_fall(llc, mcse)
    noisy = 2 * math.sqrt(2) * 1.0 * PREDICTION_MARGIN / (NBETA_FACTOR - 1)  # mcse 1.0 binds
    assert not fall(noisy * 0.999).predicts_fall(llc, 1.0) and fall(noisy * 1.001).predicts_fall(llc, 1.0)
    assert not fall(100.0).predicts_fall(math.nan, mcse) and not fall(100.0).predicts_fall(-1.0, mcse)


def test_without_a_rung_a_predicted_fall_lowers_and_an_unlowered_one_fails_the_nbeta_check():
    """When the descent decided (no run at 4nβ), ``lowers`` moves the estimate to nβ / 4; if that run
    gave nothing, the result left at nβ fails the nβ check (it carries the fall) rather than skip it."""
    predicted = Descent(nbeta=100.0, fall=2.0, iterations=3, evaluations=5, gradient_evaluations=5)
    result = SimpleNamespace(nbeta_rung=None, lowered_from=None, llc_mean=10.0, llc_mcse=0.1, nbeta=100.0,
                             descent=predicted)
    assert lowers(result)
    check = health.check_nbeta(result)
    assert not check.ok and not check.skipped and "descent from w*" in check.verdict
    small = SimpleNamespace(**{**vars(result), "descent": Descent(100.0, 0.01, 1, 1, 1)})
    assert not lowers(small) and health.check_nbeta(small).skipped
