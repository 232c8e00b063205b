"""Refined LLCs (Wang et al., arXiv 2410.02984): weight masks and other data.

Weight-refined: only the masked weights move; the rest stay at w*. On a quadratic loss the
refined estimate has an exact target, the quadratic expectation with the Hessian restricted to
the masked coordinates. Data-refined: the sampler and the estimate use another dataset; with
inputs confined to a k-dimensional subspace the Hessian has rank k and the target is again exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lambdahat as lh
from lambdahat import tasks
from lambdahat.losses import gaussian_nll
from lambdahat.potential import LocalizedPotential, Potential
from lambdahat.samplers import SAMPLERS, sghmc
from tests._harness import agrees, finite_step_quadratic


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _data(n=64):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randn(n, 2, generator=gen, dtype=torch.float64)


def test_masked_entries_stay_at_w_star_and_gradient_is_the_masked_one():
    model, (x, y) = _mlp(), _data()
    mask = torch.zeros(5, 3, dtype=torch.bool)
    mask[1:3] = True  # two "units" of the first layer
    full = Potential(model, gaussian_nll, [n for n, _ in model.named_parameters()])
    masked = Potential(model, gaussian_nll, ["0.weight"], {"0.weight": mask})
    assert masked.num_params == 6
    torch.testing.assert_close(masked.w_star, model[0].weight.detach()[mask])
    w = masked.w_star + torch.randn(6, dtype=torch.float64)
    tensors = masked.tensors(w)
    assert torch.equal(tensors["0.weight"][~mask], model[0].weight.detach()[~mask])
    assert torch.equal(tensors["0.weight"][mask], w)
    assert torch.equal(tensors["2.weight"], model[2].weight.detach())
    # ∇ of the masked potential = the masked entries of the full gradient at the same point
    w_full = full.w_star.clone()
    w_full[: 15][mask.reshape(-1)] = w
    _, g_full = full.loss_and_grad(w_full, (x, y))
    _, g_masked = masked.loss_and_grad(w, (x, y))
    torch.testing.assert_close(g_masked, g_full[:15][mask.reshape(-1)], rtol=1e-12, atol=1e-12)


def test_masked_chain_is_the_full_chain_with_masked_drift_when_noise_is_off():
    """Exact: frictionless, noiseless SGHMC on the masked potential = the same dynamics on all
    weights with the drift multiplied by the mask."""
    model, batch = _mlp(), _data()
    names = [n for n, _ in model.named_parameters()]
    mask = {"2.weight": torch.tensor([[True, False, True, False, True], [False, True, False, True, False]])}
    masked = Potential(model, gaussian_nll, ["2.weight"], mask)
    full = Potential(model, gaussian_nll, names)
    flat_mask = torch.cat([mask["2.weight"].reshape(-1) if n == "2.weight" else torch.zeros(p.numel(), dtype=torch.bool) for n, p in model.named_parameters()])
    settings = dict(step_size=1e-2, nbeta=10.0, localization=3.0, friction=0.0)
    localized = LocalizedPotential(masked.loss_and_grad, masked.w_star, settings["nbeta"], settings["localization"])
    sampler = sghmc.build(localized, step_size=settings["step_size"], friction=settings["friction"])
    state = sampler.init(masked.w_star + 0.1, batch)
    w_full, v_full = full.w_star.clone(), torch.zeros_like(full.w_star)
    w_full[flat_mask] += 0.1
    for _ in range(30):
        state, _ = sampler.step(state, batch, torch.Generator())
        _, g = full.loss_and_grad(w_full, batch)
        drift = (settings["nbeta"] * g + settings["localization"] * (w_full - full.w_star)) * flat_mask
        v_full = v_full - settings["step_size"] / 2 * drift
        w_full = w_full + v_full
        torch.testing.assert_close(state.params, w_full[flat_mask], rtol=1e-10, atol=1e-12)
    assert torch.equal(w_full[~flat_mask], full.w_star[~flat_mask])


def test_all_true_mask_is_the_unmasked_run():
    model, data = _mlp(), _data()
    settings = dict(step_size=1e-3, localization=10.0, nbeta=20.0, num_chains=2, num_draws=20, num_burnin_steps=5, batch_size=16, progress=False)
    plain = lh.estimate_llc(model, data, gaussian_nll, sampled_params=["0.weight"], **settings)
    masked = lh.estimate_llc(model, data, gaussian_nll, sampled_params={"0.weight": torch.ones(5, 3, dtype=torch.bool)}, **settings)
    np.testing.assert_array_equal(plain.trace["loss"], masked.trace["loss"])
    assert masked.config["masked_params"] == {"0.weight": 15}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_with_a_mask_and_leaves_the_model_alone(name):
    model, data = _mlp(), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = {"0.bias": torch.tensor([True, False, True, False, False]), "2.weight": torch.rand(2, 5, generator=torch.Generator().manual_seed(0)) > 0.5}
    r = lh.estimate_llc(model, data, gaussian_nll, sampler=name, sampled_params=mask, step_size=1e-4, localization=10.0, nbeta=20.0,
                        num_chains=2, num_draws=30, num_burnin_steps=5, batch_size=None if name == "mala" else 16, progress=False)
    assert r.config["num_params"] == 2 + int(mask["2.weight"].sum())
    assert np.isfinite(r.llc_mean)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_mask_errors_name_the_problem():
    model, data = _mlp(), _data()
    kwargs = dict(num_chains=1, num_draws=2, num_burnin_steps=0, progress=False)
    with pytest.raises(ValueError, match="not a parameter name"):
        lh.estimate_llc(model, data, gaussian_nll, sampled_params={"0": torch.ones(5, 3, dtype=torch.bool)}, **kwargs)
    with pytest.raises(ValueError, match="torch.bool tensor of the parameter's shape"):
        lh.estimate_llc(model, data, gaussian_nll, sampled_params={"0.weight": torch.ones(3, 5, dtype=torch.bool)}, **kwargs)
    with pytest.raises(ValueError, match="torch.bool"):
        lh.estimate_llc(model, data, gaussian_nll, sampled_params={"0.weight": torch.ones(5, 3)}, **kwargs)
    with pytest.raises(ValueError, match="select no weights"):
        lh.estimate_llc(model, data, gaussian_nll, sampled_params={"0.weight": torch.zeros(5, 3, dtype=torch.bool)}, **kwargs)


def _sgld_quadratic(model, data, eig, nbeta, gamma, **kwargs):
    step, target = finite_step_quadratic(eig, nbeta, gamma)  # ε a_max = 2: stable and far from the ε → 0 limit
    n = data[0].shape[0]
    result = lh.estimate_llc(model, data, gaussian_nll, step_size=step, localization=gamma, nbeta=nbeta, num_chains=4,
                             num_draws=2000, num_burnin_steps=300, batch_size=n, seed=0, progress=False, **kwargs)
    return result, target


@pytest.mark.known_answer
def test_weight_refined_llc_of_a_quadratic_is_exact():
    """Linear regression d = 20, sampling 7 of the weights: the target is the finite-ε
    expectation for the 7×7 block of the Hessian. Tolerance 2% and 4 MCSE (MCSE ≈ 0.6%)."""
    task = tasks.linear_regression(dim=20, n=500, seed=3)
    x = task.data[0]
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, [0, 3, 4, 9, 10, 15, 19]] = True
    block = (x.T @ x / task.n)[mask[0]][:, mask[0]]
    eig = torch.linalg.eigvalsh(block).tolist()
    result, target = _sgld_quadratic(task.model, task.data, eig, nbeta=100.0, gamma=10.0, sampled_params={"weight": mask})
    ok, message = agrees(result, target, 0.02)
    assert ok, message


@pytest.mark.known_answer
def test_data_refined_llc_sees_only_the_directions_the_data_uses():
    """The same regression model, measured on other data whose inputs span only 4 of the 12
    input directions (targets from w* itself, so w* is a minimum there): the Hessian has rank 4,
    and the target is the quadratic expectation with 8 zero eigenvalues, which contribute nothing.
    Tolerance 2% and 4 MCSE."""
    task = tasks.linear_regression(dim=12, n=400, seed=4)
    gen = torch.Generator().manual_seed(5)
    basis, _ = torch.linalg.qr(torch.randn(12, 4, generator=gen, dtype=torch.float64))
    x = torch.randn(300, 4, generator=gen, dtype=torch.float64) @ basis.T * 1.5
    with torch.no_grad():
        y = task.model(x)
    eig = torch.linalg.eigvalsh(x.T @ x / 300).clamp(min=0).tolist()
    assert sum(e > 1e-8 for e in eig) == 4
    result, target = _sgld_quadratic(task.model, (x, y), eig, nbeta=100.0, gamma=10.0)
    ok, message = agrees(result, target, 0.02)
    assert ok, message
