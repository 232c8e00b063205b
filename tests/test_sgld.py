"""Tier 1 (exact) tests of the SGLD update and its step-size convention (Lau et al. 2023's, also devinterp's ``lr``).

    w_{t+1} = w_t − (ε/2) [ nβ ∇L_B(w_t) + γ (w_t − w*) ] + √ε ξ_t,   ξ_t ~ N(0, I)

The noise ξ_t is reproduced by copying the generator's state before the step, so every check
here is exact (float64, tolerance at rounding level or bit-for-bit), not statistical. The
losses are real PyTorch models run through ``lambdahat.potential.Potential``.
"""

import math

import pytest
import torch
from torch import nn

from lambdahat.losses import gaussian_nll
from lambdahat.potential import LocalizedPotential, Potential
from lambdahat.samplers import SAMPLERS, sgld

TOL = dict(rtol=0.0, atol=1e-12)



def _regression(seed=0, n=16, d_in=3, d_out=2):
    """A float64 linear model (with bias) away from its minimum, and one batch of data."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(d_in, d_out).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(d_out, d_in, generator=gen, dtype=torch.float64))
        model.bias.copy_(torch.randn(d_out, generator=gen, dtype=torch.float64))
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    y = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
    return model, (x, y)


def _potential(model, loss_fn=gaussian_nll):
    names = [name for name, _ in model.named_parameters()]
    return Potential(model, loss_fn, names)


def _flat_loss(model, batch):
    """L_B and ∇L_B at the model's current weights, by plain autograd on the module."""
    model.zero_grad()
    loss = gaussian_nll(model(batch[0]), batch[1])
    loss.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad()
    return loss.detach(), grad


def zero_gradient_loss(model, batch):
    """A loss that runs the model but whose gradient is exactly zero everywhere."""
    return (0.0 * model(batch[0])).sum() + 1.5


def _next_noise(gen, like):
    """The ξ the sampler will draw next from ``gen``, without advancing ``gen``."""
    copy = torch.Generator()
    copy.set_state(gen.get_state())
    return torch.empty_like(like).normal_(generator=copy)


def _shifted(w_star, seed=1, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    return w_star + scale * torch.randn(w_star.shape, generator=gen, dtype=w_star.dtype)


def _sgld(loss_and_grad, w_star, *, step_size, nbeta, localization, **options):
    return sgld.build(LocalizedPotential(loss_and_grad, w_star, nbeta, localization), step_size=step_size, **options)


def test_registered_under_its_name():
    assert SAMPLERS["sgld"] is sgld.build


def test_nbeta_one_no_localization_is_gradient_step_plus_sqrt_eps_noise():
    model, batch = _regression()
    pot = _potential(model)
    eps = 0.01
    sampler = _sgld(pot.loss_and_grad, pot.w_star, step_size=eps, nbeta=1, localization=0)
    state = sampler.init(pot.w_star, batch)
    w0 = state.params.clone()
    _, grad = _flat_loss(model, batch)
    gen = torch.Generator().manual_seed(123)
    xi = _next_noise(gen, w0)
    state, _ = sampler.step(state, batch, gen)
    expected = w0 - (eps / 2) * grad + math.sqrt(eps) * xi
    torch.testing.assert_close(state.params, expected, **TOL)
    # ... and the generator really was consumed by exactly one draw of ξ
    assert torch.equal(gen.get_state(), _advance(torch.Generator().manual_seed(123), w0))


def _advance(gen, like):
    torch.empty_like(like).normal_(generator=gen)
    return gen.get_state()


@pytest.mark.parametrize("nbeta, gamma", [(7.5, 0.0), (1.0, 3.0), (42.0, 250.0)])
def test_full_update_with_nbeta_and_localization(nbeta, gamma):
    model, batch = _regression(seed=2)
    pot = _potential(model)
    w_star = pot.w_star
    eps = 1e-3
    sampler = _sgld(pot.loss_and_grad, w_star, step_size=eps, nbeta=nbeta, localization=gamma)
    w0 = _shifted(w_star)  # start away from w* so that the localisation term is not zero
    state = sampler.init(w0, batch)
    assert not torch.equal(state.params, w_star)
    loss0, grad0 = pot.loss_and_grad(w0, batch)
    gen = torch.Generator().manual_seed(7)
    xi = _next_noise(gen, w0)
    state, info = sampler.step(state, batch, gen)
    expected = w0 - (eps / 2) * (nbeta * grad0 + gamma * (w0 - w_star)) + math.sqrt(eps) * xi
    torch.testing.assert_close(state.params, expected, **TOL)
    # info describes the state before the step
    assert torch.equal(info.loss, loss0)
    torch.testing.assert_close(info.distance, torch.linalg.vector_norm(w0 - w_star), **TOL)


def test_deterministic_part_equals_torch_sgd_with_lr_half_eps():
    model, batch = _regression(seed=3)
    pot = _potential(model)
    eps = 0.02
    sampler = _sgld(pot.loss_and_grad, pot.w_star, step_size=eps, nbeta=1, localization=0)
    state = sampler.init(pot.w_star, batch)
    gen = torch.Generator().manual_seed(11)
    for _ in range(3):  # several steps: the chain and SGD stay in lock-step once noise is removed
        w = state.params.clone()
        xi = _next_noise(gen, w)
        state, _ = sampler.step(state, batch, gen)
        deterministic = state.params - math.sqrt(eps) * xi

        sgd_model = _regression(seed=3)[0]
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(w, sgd_model.parameters())
        opt = torch.optim.SGD(sgd_model.parameters(), lr=eps / 2)
        opt.zero_grad()
        gaussian_nll(sgd_model(batch[0]), batch[1]).backward()
        opt.step()
        torch.testing.assert_close(deterministic, torch.nn.utils.parameters_to_vector(sgd_model.parameters()), **TOL)
    # the user's model is never written to by the sampler
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()), pot.w_star)


def test_noise_scales_exactly_as_sqrt_eps():
    model, batch = _regression(seed=4)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # w* = 0, so w_t is exactly the accumulated noise (no cancellation)
    pot = _potential(model, zero_gradient_loss)
    eps = 3e-3
    chains = []
    for step_size in (eps, 4 * eps):
        sampler = _sgld(pot.loss_and_grad, pot.w_star, step_size=step_size, nbeta=5.0, localization=0)
        state = sampler.init(pot.w_star, batch)
        gen = torch.Generator().manual_seed(99)
        path = []
        for _ in range(5):
            state, _ = sampler.step(state, batch, gen)
            path.append(state.params.clone())
        chains.append(torch.stack(path))
    small, large = chains
    assert small.abs().min() > 0
    assert torch.equal(large, 2 * small)  # √(4ε) = 2 √ε, bit for bit
    # and the displacement itself is √ε times the reproduced standard normal draws
    gen = torch.Generator().manual_seed(99)
    xis = torch.stack([torch.empty_like(pot.w_star).normal_(generator=gen) for _ in range(5)])
    torch.testing.assert_close(small, math.sqrt(eps) * xis.cumsum(0), **TOL)


def test_localization_alone_contracts_by_one_minus_eps_gamma_over_two():
    model, batch = _regression(seed=5)
    pot = _potential(model, zero_gradient_loss)
    w_star = pot.w_star
    eps, gamma = 0.01, 40.0
    factor = 1 - eps * gamma / 2
    sampler = _sgld(pot.loss_and_grad, w_star, step_size=eps, nbeta=1e6, localization=gamma)
    state = sampler.init(_shifted(w_star, scale=1.0), batch)
    offset = state.params - w_star
    gen = torch.Generator().manual_seed(5)
    for _ in range(20):
        xi = _next_noise(gen, w_star)
        w_prev = state.params.clone()
        state, info = sampler.step(state, batch, gen)
        torch.testing.assert_close(info.distance, torch.linalg.vector_norm(w_prev - w_star), **TOL)
        assert float(info.loss) == 1.5
        # one step, exactly: the noise-free offset shrinks by (1 − εγ/2)
        torch.testing.assert_close(state.params - math.sqrt(eps) * xi - w_star, factor * (w_prev - w_star), **TOL)
        offset = factor * offset + math.sqrt(eps) * xi
    # twenty steps: e_T = (1 − εγ/2)^T e_0 + Σ noise, i.e. the mean of w − w* decays geometrically
    torch.testing.assert_close(state.params - w_star, offset, rtol=0.0, atol=1e-10)


def test_info_loss_and_distance_are_taken_before_the_step():
    model, (x, y) = _regression(seed=6, n=32)
    pot = _potential(model)
    w_star = pot.w_star
    sampler = _sgld(pot.loss_and_grad, w_star, step_size=1e-3, nbeta=3.0, localization=10.0)
    state = sampler.init(w_star, None)
    gen = torch.Generator().manual_seed(0)
    for t in range(4):
        batch = (x[8 * t : 8 * t + 8], y[8 * t : 8 * t + 8])
        w_before = state.params.clone()
        expected_loss = gaussian_nll(torch.func.functional_call(model, pot.tensors(w_before), (batch[0],)), batch[1])
        state, info = sampler.step(state, batch, gen)
        assert info.loss.dim() == 0 and info.distance.dim() == 0
        torch.testing.assert_close(info.loss, expected_loss, **TOL)
        torch.testing.assert_close(info.distance, torch.linalg.vector_norm(w_before - w_star), **TOL)
        if t == 0:
            assert float(info.distance) == 0.0  # the chain starts at w*
        assert not torch.equal(state.params, w_before)


def test_init_copies_and_step_updates_in_place():
    model, batch = _regression(seed=7)
    pot = _potential(model)
    w_star = pot.w_star.clone()
    sampler = _sgld(pot.loss_and_grad, pot.w_star, step_size=1e-2, nbeta=1.0, localization=1.0)
    state = sampler.init(pot.w_star, batch)
    assert state.params.data_ptr() != pot.w_star.data_ptr()
    new_state, _ = sampler.step(state, batch, torch.Generator().manual_seed(0))
    assert new_state.params.data_ptr() == state.params.data_ptr()
    assert torch.equal(pot.w_star, w_star)  # the point w* itself never moves
