"""Every sampler through one protocol, one Gaussian harness and its own exact checks.

Tier 1 (exact) and tier 2 (statistical with closed forms) of the test tiers (``pytest.ini_options``). The Gaussian harness
targets U(w) = nβ L(w) + (γ/2)‖w − w*‖² with a quadratic L, i.e. a Gaussian with precision
Λ = nβ A + γ I and mean Λ⁻¹(nβ A μ + γ w*), known exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import lambdahat as lh
from lambdahat import diagnostics
from lambdahat.losses import gaussian_nll
from lambdahat.potential import LocalizedPotential, Potential
from lambdahat.samplers import SAMPLERS, SamplerConfig, sgld

ALL = sorted(SAMPLERS)


class Quadratic:
    """L(w) = ½ (w − μ)ᵀ A (w − μ) for w shaped (..., d): works for stacked chains too."""

    def __init__(self, a: torch.Tensor, mu: torch.Tensor):
        self.a, self.mu = a, mu

    def loss_and_grad(self, w, batch=None):
        grad = (w - self.mu) @ self.a
        return 0.5 * ((w - self.mu) * grad).sum(-1), grad

    def target(self, nbeta, gamma, w_star):
        precision = nbeta * self.a + gamma * torch.eye(len(self.mu), dtype=self.a.dtype)
        cov = torch.linalg.inv(precision)
        return cov @ (nbeta * self.a @ self.mu + gamma * w_star), cov


def _quadratic(d=3, seed=0, eigenvalues=(0.5, 1.0, 2.0)):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    mu = torch.randn(d, generator=gen, dtype=torch.float64)
    return Quadratic(a, mu)


def _build(name, loss_and_grad, w_star, *, step_size, nbeta, localization, **options):
    potential = LocalizedPotential(loss_and_grad, w_star, nbeta, localization)
    return SAMPLERS[name](potential, step_size=step_size, **options)


def _regression(seed=0, n=16):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return Potential(model, gaussian_nll, [name for name, _ in model.named_parameters()]), (x, y)


def _run(sampler, w0, batch, gen, steps):
    state = sampler.init(w0, batch)
    infos = []
    for _ in range(steps):
        state, info = sampler.step(state, batch, gen)
        infos.append(info)
    return state, infos


def _tensors(state):
    return [x for x in state if isinstance(x, torch.Tensor)]


# ---------------------------------------------------------------- protocol (every sampler)


@pytest.mark.parametrize("name", ALL)
def test_protocol_shapes_finite_info_and_same_seed_same_run(name):
    pot, batch = _regression()
    w_star = pot.w_star.clone()
    sampler = _build(name, pot.loss_and_grad, pot.w_star, step_size=1e-3, nbeta=5.0, localization=2.0)
    state0 = sampler.init(pot.w_star, batch)
    before = [(t.shape, t.dtype) for t in _tensors(state0)]
    assert state0.params.data_ptr() != pot.w_star.data_ptr()  # init copies; w* never moves
    state, infos = _run(sampler, pot.w_star, batch, torch.Generator().manual_seed(3), 60)
    assert [(t.shape, t.dtype) for t in _tensors(state)] == before
    assert state.params.shape == pot.w_star.shape
    for info in infos:
        assert info._fields[:2] == ("loss", "distance")
        for field, value in zip(info._fields, info):
            assert value.shape == (), field  # one number per chain
            if field != "mala_accept" or name == "mala":  # SGLD-type: NaN on steps it is not computed
                assert torch.isfinite(value), field
    again, infos_again = _run(sampler, pot.w_star, batch, torch.Generator().manual_seed(3), 60)
    assert torch.equal(again.params, state.params)
    assert all(torch.equal(a, b) or (a.isnan() and b.isnan()) for x, y in zip(infos, infos_again) for a, b in zip(x, y))
    other, _ = _run(sampler, pot.w_star, batch, torch.Generator().manual_seed(4), 60)
    assert not torch.equal(other.params, state.params)  # different noise, different chain
    assert torch.equal(pot.w_star, w_star)


def test_localized_potential_is_the_papers_u_and_its_gradient():
    """U = nβ L_B + (γ/2)‖w − w*‖², ∇U = nβ ∇L_B + γ (w − w*), ‖w − w*‖, per chain of a (K, d) w."""
    quad = _quadratic()
    w_star = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    nbeta, gamma = 3.0, 0.7
    potential = LocalizedPotential(quad.loss_and_grad, w_star, nbeta, gamma)
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss, grad = quad.loss_and_grad(w)
    value = potential(w, None)
    torch.testing.assert_close(value.grad_loss, grad, rtol=0, atol=0)
    torch.testing.assert_close(value.loss, loss, rtol=0, atol=0)
    torch.testing.assert_close(value.energy, nbeta * loss + gamma / 2 * ((w - w_star) ** 2).sum(-1), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(value.grad_energy, nbeta * grad + gamma * (w - w_star), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(value.distance, (w - w_star).norm(dim=-1), rtol=1e-14, atol=1e-14)
    assert value.loss.shape == value.energy.shape == value.distance.shape == (4,)
    with pytest.raises(RuntimeError, match="read it first"):
        value.grad_loss  # ∇U was built in its buffer
    buffer = torch.empty_like(w)
    assert potential(w, None, buffer).offset is buffer


@pytest.mark.parametrize("name", ALL)
def test_init_copies_and_step_updates_params_in_place(name):
    """The one buffer rule of every sampler: init copies w; step writes state.params in place."""
    pot, batch = _regression()
    sampler = _build(name, pot.loss_and_grad, pot.w_star, step_size=1e-3, nbeta=5.0, localization=2.0)
    state = sampler.init(pot.w_star, batch)
    assert state.params.data_ptr() != pot.w_star.data_ptr()
    new_state, _ = sampler.step(state, batch, torch.Generator().manual_seed(0))
    assert new_state.params.data_ptr() == state.params.data_ptr()


def test_mala_init_holds_the_start_point_and_each_step_costs_one_evaluation():
    pot, batch = _regression()
    calls = []

    def counted(w, b):
        calls.append(1)
        return pot.loss_and_grad(w, b)

    potential = LocalizedPotential(counted, pot.w_star, 5.0, 2.0)
    sampler = SAMPLERS["mala"](potential, step_size=1e-3)
    w0 = pot.w_star + 0.01
    state = sampler.init(w0, batch)
    assert len(calls) == 1
    expected = LocalizedPotential(pot.loss_and_grad, pot.w_star, 5.0, 2.0)(w0, batch)
    assert torch.equal(state.loss, expected.loss) and torch.equal(state.energy, expected.energy)
    assert torch.equal(state.grad_energy, expected.grad_energy) and torch.equal(state.distance, expected.distance)
    gen = torch.Generator().manual_seed(0)
    for t in range(5):
        state, info = sampler.step(state, batch, gen)
        assert len(calls) == 2 + t
    assert torch.isfinite(info.loss)


@pytest.mark.parametrize("name", ALL)
def test_stacked_chains_equal_separate_chains(name):
    """K chains stepped together as a (K, d) tensor, one generator each, are the K single chains."""
    quad = _quadratic()
    w_star = torch.zeros(3, dtype=torch.float64)
    settings = dict(step_size=0.05, nbeta=2.0, localization=0.5)
    sampler = _build(name, quad.loss_and_grad, w_star, **settings)
    seeds = [11, 12, 13, 14]
    stacked, stacked_infos = _run(sampler, w_star.expand(4, 3), None, [torch.Generator().manual_seed(s) for s in seeds], 30)
    for k, s in enumerate(seeds):
        single, single_infos = _run(sampler, w_star, None, torch.Generator().manual_seed(s), 30)
        torch.testing.assert_close(stacked.params[k], single.params, rtol=1e-12, atol=1e-12)
        for info_k, info_single in zip(stacked_infos, single_infos):
            for a, b in zip(info_k, info_single):
                torch.testing.assert_close(a[k], b, rtol=1e-10, atol=1e-12, equal_nan=True)


def test_sampler_config_validates_names_and_options():
    assert SamplerConfig("rmsprop_sgld", alpha=0.9).options["alpha"] == 0.9
    assert SamplerConfig("sgld") == SamplerConfig("sgld", acceptance_every=50)
    with pytest.raises(ValueError, match="sampler must be one of"):
        SamplerConfig("hmc")
    with pytest.raises(ValueError, match="has no option"):
        SamplerConfig("sghmc", alpha=0.9)
    with pytest.raises(ValueError, match="friction"):
        _build("sghmc", None, torch.zeros(2), step_size=1e-3, nbeta=1.0, localization=1.0, friction=1.5)
    with pytest.raises(ValueError, match="eps"):
        _build("rmsprop_sgld", None, torch.zeros(2), step_size=1e-3, nbeta=1.0, localization=1.0, eps=0.0)
    with pytest.raises(TypeError, match="sampler must be a name"):
        lh.samplers.as_sampler_config(sgld.build)
    # an option's value is checked when the config is made, before any run starts
    for name, option in (("sghmc", dict(friction=1.5)), ("rmsprop_sgld", dict(adapt="draws")),
                         ("sgnht", dict(diffusion=-1.0)), ("sgld", dict(acceptance_every=-1))):
        with pytest.raises(ValueError, match=next(iter(option))):
            SamplerConfig(name, **option)


# ---------------------------------------------------------------- the Gaussian harness

HARNESS = {  # step sizes with ε λ_max(Λ) ≈ 0.05; options at their defaults unless noted
    "sgld": {},
    # α = 0.999: V averages over ~1000 steps, longer than the chain's relaxation (~300 steps), so P
    # is nearly constant, the regime in which dropping the Γ term is harmless. With α = 0.99 on
    # this noise-free target V tracks the position and the variance comes out ~16% high: the
    # stationary law of an uncorrected position-dependent P is ∝ exp(−U)/P.
    "rmsprop_sgld": {"alpha": 0.999},
    "sghmc": {"friction": 0.2},
    # the default, small A: the thermostat pins the discrete kinetic temperature to 1, which biases
    # the configurational one by O(A)/2 (measured −11% on the variance at A = 0.2).
    "sgnht": {},
    "mala": {},
}


@pytest.mark.parametrize("name", ALL)
def test_gaussian_harness_mean_and_covariance(name):
    """Mean and covariance of 256 stacked chains against the exact Gaussian target.

    Tolerance per statistic: 4 Monte Carlo standard errors (from the ESS of that statistic over
    (chain, draw)) plus a discretisation allowance of ε λ_max(Λ) = 5% of the scale for the
    unadjusted samplers (their O(ε) bias; SGLD's on a quadratic is exactly the stationary variance factor 1 / (1 − ελ/4) of the Euler chain) and
    none for MALA, which is exact.
    """
    quad = _quadratic()
    nbeta, gamma = 2.0, 0.5
    w_star = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    mean, cov = quad.target(nbeta, gamma, w_star)
    lam_max = float(torch.linalg.eigvalsh(torch.linalg.inv(cov)).max())
    step = 0.05 / lam_max
    sampler = _build(name, quad.loss_and_grad, w_star, step_size=step, nbeta=nbeta, localization=gamma, **HARNESS[name])
    state = sampler.init(w_star.expand(256, 3), None)
    gen = torch.Generator().manual_seed(0)
    draws = []
    for t in range(4000):
        state, _ = sampler.step(state, None, gen)
        if t >= 1000 and t % 2 == 0:
            draws.append(state.params.clone())
    w = torch.stack(draws, dim=1).numpy()  # (chain, draw, d)
    allowance = 0.0 if name == "mala" else 0.05
    sd = np.sqrt(np.diag(cov.numpy()))
    for i in range(3):
        stat = w[..., i]
        se = stat.std() / math.sqrt(diagnostics.ess(stat, method="mean"))
        assert abs(stat.mean() - float(mean[i])) <= 4 * se + allowance * sd[i], (name, i, stat.mean(), float(mean[i]), se)
        for j in range(i, 3):
            prod = (w[..., i] - float(mean[i])) * (w[..., j] - float(mean[j]))
            se = prod.std() / math.sqrt(diagnostics.ess(prod, method="mean"))
            assert abs(prod.mean() - float(cov[i, j])) <= 4 * se + allowance * sd[i] * sd[j], (name, i, j, prod.mean(), float(cov[i, j]), se)


# ---------------------------------------------------------------- exact, per sampler


def _next_normal(gen, like):
    copy = torch.Generator()
    copy.set_state(gen.get_state())
    return torch.empty_like(like).normal_(generator=copy)


def test_rmsprop_sgld_with_v_fixed_to_one_is_sgld():
    pot, batch = _regression(seed=1)
    settings = dict(step_size=2e-3, nbeta=4.0, localization=3.0)
    plain = _build("sgld", pot.loss_and_grad, pot.w_star, acceptance_every=0, **settings)
    # α = 1 freezes V; V = 1 and eps ≪ float64 resolution make P = 1/(1 + eps) == 1 exactly
    pre = _build("rmsprop_sgld", pot.loss_and_grad, pot.w_star, alpha=1.0, eps=1e-30, acceptance_every=0, **settings)
    s_plain, s_pre = plain.init(pot.w_star, batch), pre.init(pot.w_star, batch)
    s_pre = s_pre._replace(square_avg=torch.ones_like(s_pre.square_avg))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(25):
        s_plain, i_plain = plain.step(s_plain, batch, g1)
        s_pre, i_pre = pre.step(s_pre, batch, g2)
        assert torch.equal(s_plain.params, s_pre.params)
        assert torch.equal(i_plain.loss, i_pre.loss)
        assert float(i_pre.clipped) == 0.0


def test_rmsprop_sgld_update_and_preconditioner_by_hand():
    pot, batch = _regression(seed=2)
    alpha, eps, step, nbeta, gamma = 0.9, 0.1, 1e-3, 3.0, 2.0
    sampler = _build("rmsprop_sgld", pot.loss_and_grad, pot.w_star, step_size=step, nbeta=nbeta, localization=gamma, alpha=alpha, eps=eps)
    state = sampler.init(pot.w_star, batch)
    gen = torch.Generator().manual_seed(1)
    v = torch.zeros_like(pot.w_star)
    for t in range(1, 4):
        w = state.params.clone()
        _, g = pot.loss_and_grad(w, batch)
        v = alpha * v + (1 - alpha) * g**2
        p = 1 / ((v / (1 - alpha**t)).sqrt() + eps)
        xi = _next_normal(gen, w)
        state, _ = sampler.step(state, batch, gen)
        expected = w - step / 2 * p * (nbeta * g + gamma * (w - pot.w_star)) + (step * p).sqrt() * xi
        torch.testing.assert_close(state.params, expected, rtol=1e-12, atol=1e-12)


def test_rmsprop_sgld_frozen_preconditioner_stays_put():
    """``adapt="never"`` (how the draws are built under the default ``adapt="burnin"``) keeps V as
    the burn-in left it: each step is SGLD preconditioned by the same P = 1/(√(V/(1 − α^t)) + eps),
    t the burn-in's steps, so there is no Γ term to drop."""
    pot, batch = _regression(seed=3)
    alpha, eps, step, nbeta, gamma, burnin = 0.9, 0.1, 1e-3, 3.0, 2.0, 7
    settings = dict(step_size=step, nbeta=nbeta, localization=gamma, alpha=alpha, eps=eps, acceptance_every=0)
    adapting = _build("rmsprop_sgld", pot.loss_and_grad, pot.w_star, **settings)
    frozen = _build("rmsprop_sgld", pot.loss_and_grad, pot.w_star, adapt="never", **settings)
    gen = torch.Generator().manual_seed(4)
    state, _ = _run(adapting, pot.w_star, batch, gen, burnin)
    v = state.square_avg.clone()
    p = 1 / ((v / (1 - alpha**burnin)).sqrt() + eps)
    for _ in range(3):
        w = state.params.clone()
        _, g = pot.loss_and_grad(w, batch)
        xi = _next_normal(gen, w)
        state, _ = frozen.step(state, batch, gen)
        expected = w - step / 2 * p * (nbeta * g + gamma * (w - pot.w_star)) + (step * p).sqrt() * xi
        torch.testing.assert_close(state.params, expected, rtol=1e-12, atol=1e-12)
        assert torch.equal(state.square_avg, v) and state.updates == burnin and state.count > burnin
    with pytest.raises(ValueError, match="adapt must be one of"):
        _build("rmsprop_sgld", pot.loss_and_grad, pot.w_star, adapt="draws", **settings)


def test_rmsprop_sgld_guard_caps_exploding_preconditioner():
    """A flat loss (zero gradient) with a tiny eps would give P = 1/eps = 1e8: the localisation
    step ε P γ / 2 would overshoot w* by a factor ~1e3 per step. The cap ε P γ = 2 keeps it
    bounded, and ``info.clipped`` says it happened."""
    w_star = torch.zeros(5, dtype=torch.float64)
    flat = lambda w, batch: (w.sum(-1) * 0.0, torch.zeros_like(w))  # noqa: E731
    step, gamma = 1e-3, 10.0
    sampler = _build("rmsprop_sgld", flat, w_star, step_size=step, nbeta=100.0, localization=gamma, eps=1e-8)
    state, infos = _run(sampler, w_star + 1.0, None, torch.Generator().manual_seed(0), 500)
    assert all(float(i.clipped) == 1.0 for i in infos)
    assert torch.isfinite(state.params).all()
    # with P = 2/(εγ): w − w* ↦ 0·(w − w*) + √(2/γ) ξ, so |w − w*| stays of order √(2/γ)
    assert float(state.params.abs().max()) < 6 * math.sqrt(2 / gamma)


def test_sghmc_with_full_friction_is_sgld():
    pot, batch = _regression(seed=3)
    settings = dict(step_size=2e-3, nbeta=4.0, localization=3.0)
    plain = _build("sgld", pot.loss_and_grad, pot.w_star, acceptance_every=0, **settings)
    hmc = _build("sghmc", pot.loss_and_grad, pot.w_star, friction=1.0, **settings)
    a, _ = _run(plain, pot.w_star, batch, torch.Generator().manual_seed(8), 20)
    b, _ = _run(hmc, pot.w_star, batch, torch.Generator().manual_seed(8), 20)
    torch.testing.assert_close(a.params, b.params, rtol=1e-13, atol=1e-13)


def _energy_oscillation(step, steps):
    """Max |H − H₀| / H₀ and the drift between the first and last tenth, for frictionless,
    noiseless SGHMC on a quadratic, H = U(w) + ‖v‖²/ε."""
    quad = _quadratic()
    w_star = torch.zeros(3, dtype=torch.float64)
    sampler = _build("sghmc", quad.loss_and_grad, w_star, step_size=step, nbeta=1.0, localization=0.0, friction=0.0)
    state = sampler.init(quad.mu + torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64), None)
    energies = []
    for _ in range(steps):
        loss, _ = quad.loss_and_grad(state.params)
        energies.append(float(loss + state.velocity.square().sum() / step))
        state, _ = sampler.step(state, None, torch.Generator())
    e = np.array(energies)
    tenth = steps // 10
    return np.abs(e - e[0]).max() / e[0], abs(e[-tenth:].mean() - e[:tenth].mean()) / e[0]


def test_sghmc_without_friction_or_noise_conserves_energy_to_first_order():
    """Symplectic Euler in (w, p), h = √(ε/2): the energy oscillates with amplitude O(h) and does
    not drift. Halving h (ε/4) halves the oscillation (first order), over the same time span."""
    coarse, drift_coarse = _energy_oscillation(8e-3, 2000)
    fine, drift_fine = _energy_oscillation(2e-3, 4000)
    assert coarse < 0.1 and fine < 0.05
    assert 1.7 < coarse / fine < 2.3, (coarse, fine)
    assert drift_coarse < 0.02 and drift_fine < 0.01


def test_sgnht_thermostat_rises_when_too_hot_and_falls_when_too_cold():
    w_star = torch.zeros(50, dtype=torch.float64)
    quad = Quadratic(torch.eye(50, dtype=torch.float64), w_star)
    step = 1e-2
    sampler = _build("sgnht", quad.loss_and_grad, w_star, step_size=step, nbeta=1.0, localization=0.0, diffusion=0.1)
    state = sampler.init(w_star, None)
    hot = state._replace(velocity=torch.full_like(w_star, 3 * math.sqrt(step / 2)))  # temperature ≈ 9
    new, info = sampler.step(hot, None, torch.Generator().manual_seed(0))
    assert float(info.thermostat) > 0.1 and float(info.temperature) > 1
    cold = sampler.init(w_star, None)._replace(velocity=torch.zeros_like(w_star))  # temperature ≈ noise only
    new, info = sampler.step(cold, None, torch.Generator().manual_seed(0))
    assert float(info.thermostat) < 0.1 and float(info.temperature) < 1
    # and over a run the temperature settles at 1 (the thermostat's whole job)
    state, infos = _run(sampler, w_star, None, torch.Generator().manual_seed(1), 3000)
    temps = np.array([float(i.temperature) for i in infos[1000:]])
    assert abs(temps.mean() - 1) < 0.1, temps.mean()


def test_sgnht_thermostat_slows_the_velocity():
    """ξ multiplies the velocity: with zero gradient and no noise, v ↦ (1 − ξ) v."""
    w_star = torch.zeros(4, dtype=torch.float64)
    flat = lambda w, batch: (w.sum(-1) * 0.0, torch.zeros_like(w))  # noqa: E731
    sampler = _build("sgnht", flat, w_star, step_size=1e-2, nbeta=1.0, localization=0.0, diffusion=0.0)
    state = sampler.init(w_star, None)
    state = state._replace(velocity=torch.ones(4, dtype=torch.float64), thermostat=torch.tensor([0.25], dtype=torch.float64))
    new, _ = sampler.step(state, None, torch.Generator())
    torch.testing.assert_close(new.velocity, torch.full((4,), 0.75, dtype=torch.float64))


def _hand_log_alpha(a, mu, w, w_new, nbeta, gamma, w_star, step):
    """log α for a 1-d quadratic L = a(w − μ)²/2, written out term by term."""
    u = lambda x: nbeta * a * (x - mu) ** 2 / 2 + gamma * (x - w_star) ** 2 / 2  # noqa: E731
    du = lambda x: nbeta * a * (x - mu) + gamma * (x - w_star)  # noqa: E731
    log_q = lambda to, frm: -((to - frm + step / 2 * du(frm)) ** 2) / (2 * step)  # noqa: E731
    return u(w) - u(w_new) + log_q(w, w_new) - log_q(w_new, w)


def test_mala_acceptance_matches_a_hand_computation():
    a, mu, nbeta, gamma, w_star, step = 3.0, 0.4, 2.0, 1.0, 0.0, 0.3  # a large step: α well below 1
    quad = Quadratic(torch.tensor([[a]], dtype=torch.float64), torch.tensor([mu], dtype=torch.float64))
    sampler = _build("mala", quad.loss_and_grad, torch.tensor([w_star], dtype=torch.float64), step_size=step, nbeta=nbeta, localization=gamma)
    state = sampler.init(torch.tensor([w_star], dtype=torch.float64), None)
    gen = torch.Generator().manual_seed(2)
    accepted = 0
    for _ in range(50):
        w = float(state.params)
        copy = torch.Generator()
        copy.set_state(gen.get_state())
        xi = float(torch.empty(1, dtype=torch.float64).normal_(generator=copy))
        u = float(torch.empty((), dtype=torch.float64).uniform_(generator=copy))
        du = nbeta * a * (w - mu) + gamma * (w - w_star)
        w_new = w - step / 2 * du + math.sqrt(step) * xi
        log_alpha = _hand_log_alpha(a, mu, w, w_new, nbeta, gamma, w_star, step)
        state, info = sampler.step(state, None, gen)
        assert float(info.mala_accept) == pytest.approx(min(1.0, math.exp(log_alpha)), rel=1e-12)
        assert float(info.accepted) == float(math.log(u) < log_alpha)
        assert float(state.params) == pytest.approx(w_new if math.log(u) < log_alpha else w, rel=1e-12)
        accepted += int(info.accepted)
    assert 5 < accepted < 45  # this case really exercises both branches


def test_mala_rejects_a_non_finite_proposal():
    w_star = torch.zeros(2, dtype=torch.float64)
    blows_up = lambda w, batch: (torch.where(w.abs().max(-1).values > 0, torch.tensor(float("inf"), dtype=w.dtype), w.sum(-1) * 0), torch.zeros_like(w))  # noqa: E731
    sampler = _build("mala", blows_up, w_star, step_size=1e-2, nbeta=1.0, localization=1.0)
    state, infos = _run(sampler, w_star, None, torch.Generator().manual_seed(0), 10)
    assert torch.equal(state.params, w_star)
    assert all(float(i.accepted) == 0.0 and float(i.mala_accept) == 0.0 for i in infos)


def test_sgld_acceptance_diagnostic_is_mala_formula_on_its_own_step_and_changes_nothing():
    a, mu, nbeta, gamma, w_star, step = 3.0, 0.4, 2.0, 1.0, 0.0, 0.3
    quad = Quadratic(torch.tensor([[a]], dtype=torch.float64), torch.tensor([mu], dtype=torch.float64))
    ws = torch.tensor([w_star], dtype=torch.float64)
    every = _build("sgld", quad.loss_and_grad, ws, step_size=step, nbeta=nbeta, localization=gamma, acceptance_every=3)
    never = _build("sgld", quad.loss_and_grad, ws, step_size=step, nbeta=nbeta, localization=gamma, acceptance_every=0)
    s1, s0 = every.init(ws, None), never.init(ws, None)
    g1, g0 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for t in range(12):
        w = float(s1.params)
        s1, info = every.step(s1, None, g1)
        s0, info0 = never.step(s0, None, g0)
        assert torch.equal(s1.params, s0.params)  # the diagnostic draws no randomness
        assert "mala_accept" not in info0._fields
        if t % 3 == 0:
            expected = min(1.0, math.exp(_hand_log_alpha(a, mu, w, float(s1.params), nbeta, gamma, w_star, step)))
            assert float(info.mala_accept) == pytest.approx(expected, rel=1e-12)
        else:
            assert math.isnan(float(info.mala_accept))


def test_sgld_acceptance_tracks_the_step_size():
    """On a real model: a small step is accepted almost always, a large one rarely."""
    pot, batch = _regression(seed=4, n=64)
    rates = []
    for step in (1e-4, 1e-2, 3e-2):
        sampler = _build("sgld", pot.loss_and_grad, pot.w_star, step_size=step, nbeta=50.0, localization=10.0, acceptance_every=1)
        _, infos = _run(sampler, pot.w_star, batch, torch.Generator().manual_seed(0), 200)
        rates.append(np.mean([float(i.mala_accept) for i in infos[50:]]))
    assert rates[0] > 0.99 and rates[0] > rates[1] > rates[2] and rates[2] < 0.75, rates


def _noisy_linear_regression(n=4096, seed=0):
    """A float32 linear model at its teacher (zero) with unit-variance noise in nine outputs:
    L_n(w*) ≈ 5.4, so nβ L_B is about 5·10⁴ at nβ = 10⁴ while a small step changes it by far less."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(3, 9, bias=False)
    nn.init.zeros_(model.weight)
    x = torch.randn(n, 3, generator=gen)
    return Potential(model, gaussian_nll, ["weight"]), (x, torch.randn(n, 9, generator=gen))


def test_acceptance_of_a_tiny_step_is_one_even_where_the_loss_is_large():
    """U = nβ L_B is a large number whose change over a step is tiny: in float32 the rounding of L_B
    (2⁻²⁴ L) and of U alone moved log α by ~0.005, a ceiling near 0.999 on the acceptance that no
    step size lifted (the warm-up then shrank ε without end on noisy targets). At h = ε nβ ≈ 10⁻⁶
    MALA rejects about h^{3/2} of its proposals: the acceptance must be 1 to within 10⁻⁵."""
    pot, batch = _noisy_linear_regression()
    sampler = _build("sgld", pot.loss_and_grad, pot.w_star, step_size=1e-10, nbeta=1e4, localization=1.0,
                     acceptance_every=1)
    _, infos = _run(sampler, pot.w_star, batch, torch.Generator().manual_seed(0), 100)
    accept = np.array([float(i.mala_accept) for i in infos])
    assert accept.min() > 1 - 1e-5, (accept.min(), accept.mean())


def test_the_exact_loss_value_is_float64_and_its_gradient_is_the_float32_one():
    """The exact value (formed only for a Metropolis–Hastings ratio) changes no step: the gradient
    is the float32 loss's, bit for bit."""
    from lambdahat.losses import exact_values

    pot, (x, y) = _noisy_linear_regression(n=256, seed=1)
    w = torch.randn(pot.num_params, generator=torch.Generator().manual_seed(2))
    ordinary, ordinary_grad = pot.loss_and_grad(w, (x, y))
    with exact_values():
        loss, grad = pot.loss_and_grad(w, (x, y))
    assert ordinary.dtype == torch.float32 and torch.equal(grad, ordinary_grad)  # outside a ratio: as it was
    weight = w.view(9, 3).clone().requires_grad_(True)
    plain = gaussian_nll(x @ weight.T, y)
    plain.backward()
    assert loss.dtype == torch.float64 and torch.equal(grad, weight.grad.reshape(-1))
    assert float(loss) == pytest.approx(float(gaussian_nll((x @ weight.T).detach().double(), y.double())), rel=1e-14)
    assert float(loss) != float(plain.detach())  # the float32 value is rounded (or this test shows nothing)


def test_in_place_acceptance_is_the_plain_formula_bit_for_bit():
    """The buffered log q and the forward/reverse split (used to hold fewer full-size copies)
    round exactly as langevin_log_accept's textbook expression, with and without a P."""
    from lambdahat.samplers._common import (forward_log_density, langevin_log_accept, log_proposal_density,
                                            reverse_acceptance, acceptance_probability)

    gen = torch.Generator().manual_seed(0)
    q = _quadratic(d=257, eigenvalues=tuple(np.linspace(0.5, 2.0, 257)))
    pot = LocalizedPotential(q.loss_and_grad, torch.zeros(257, dtype=torch.float64), 30.0, 2.0)
    for shape in [(257,), (3, 257)]:
        w = torch.randn(shape, generator=gen, dtype=torch.float64)
        here = pot(w, None)
        g, u = here.grad_energy.clone(), here.energy.clone()
        w_new = w - 0.01 * g + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
        new = pot(w_new, None)
        for precond in [1.0, torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5]:
            plain = langevin_log_accept(w, u, g, w_new, new.energy, new.grad_energy, 0.02, precond)
            buffers = (torch.empty_like(w), torch.empty_like(w))
            buffered = langevin_log_accept(w, u, g, w_new, new.energy, new.grad_energy, 0.02, precond, buffers=buffers)
            assert torch.equal(plain, buffered)
            assert torch.equal(log_proposal_density(w_new, w, g, 0.02, precond),
                               log_proposal_density(w_new, w, g, 0.02, precond, buffers))
            log_q_forward = forward_log_density(w - w_new, g.clone(), 0.02, precond)
            split = reverse_acceptance(pot, None, w - w_new, u, log_q_forward, w_new, 0.02, precond)
            assert torch.equal(split, acceptance_probability(plain).to(u.dtype))
