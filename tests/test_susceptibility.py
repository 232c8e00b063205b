"""Susceptibilities χ_C of weight restrictions (Baker et al., arXiv 2504.18274, App. C.4).

The exact test: for a linear-Gaussian model every loss is a quadratic in w, the full and every
restricted posterior of full-batch SGLD are Gaussian (with their finite-step covariance), so each
term of the estimator χ_C(z) = −(E_C[φ ΔL_z] − E_C[φ] E_full[ΔL_z]) has a closed form from the first
two moments of per-sample losses under a Gaussian; the estimate must match it entry by entry
within Monte Carlo error, and must reject two nearby wrong answers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lambdahat as lh
from lambdahat.losses import gaussian_nll
from lambdahat.models import tiny_transformer
from lambdahat.susceptibility import susceptibility_from_runs
from tests._harness import Pairs, Z, figure_text, linear_gaussian_probe_problem

N, D, NBETA, GAMMA = 40, 3, 40.0, 10.0
COMPONENTS = {"w0": [0], "w1 w2": [1, 2]}  # coordinates of the weight each component lets move


def _linear_problem():
    """The probe tests' problem without w_ls: (model, data, probe, w_star)."""
    model, data, probe, _, w_star = linear_gaussian_probe_problem(N, D)
    return model, data, probe, w_star


def _masks(coordinates):
    mask = torch.zeros(1, D, dtype=torch.bool)
    mask[0, coordinates] = True
    return {"weight": mask}


def _restricted_gaussian(x, y, w_star, free, step):
    """Mean and covariance (in all D coordinates) of full-batch SGLD's stationary law when only the
    coordinates ``free`` (S) move and the others stay at w*.

    U(u) = nβ L_n(u, v*) + (γ/2)‖u − u*‖² with L_n = ½‖y − Xw‖²/n is quadratic in u = w_S with
    Hessian A_SS (the S block of A = nβ XᵀX/n + γ I) and minimum
    u = A_SS⁻¹ (nβ (Xᵀy/n − (XᵀX/n)_{S,S'} v*)_S + γ u*); the Euler chain u' = u − (ε/2)∇U + √ε ξ has
    that mean and covariance A_SS⁻¹ (I − ε A_SS/4)⁻¹ (ε → 0: A_SS⁻¹). S = all coordinates is the full run.
    """
    h, b = x.T @ x / N, x.T @ y / N
    a = NBETA * h + GAMMA * np.eye(D)
    s = np.asarray(free)
    rest = np.setdiff1d(np.arange(D), s)
    a_ss = a[np.ix_(s, s)]
    mu = w_star.copy()
    mu[s] = np.linalg.solve(a_ss, NBETA * (b[s] - h[np.ix_(s, rest)] @ w_star[rest]) + GAMMA * w_star[s])
    inner = np.linalg.inv(a_ss)
    if step:
        inner = inner @ np.linalg.inv(np.eye(len(s)) - step * a_ss / 4)
    cov = np.zeros((D, D))
    cov[np.ix_(s, s)] = inner
    return mu, cov


def _loss_moments(xs, ys, mu, cov):
    """E[ℓ_a] and Cov(ℓ_a, ℓ_b) for ℓ_a(w) = ½ (y_a − x_aᵀ w)², w ~ N(μ, Σ): with r = y − Xμ and
    s_ab = x_aᵀ Σ x_b, E[ℓ_a] = ½ r_a² + ½ s_aa and Cov(ℓ_a, ℓ_b) = r_a r_b s_ab + ½ s_ab² (Isserlis)."""
    r = ys - xs @ mu
    s = xs @ cov @ xs.T
    return 0.5 * r**2 + 0.5 * np.diag(s), np.outer(r, r) * s + 0.5 * s**2


def exact_chi(x, y, w_star, xp, yp, reference, free, step, full_term=True):
    """χ_C(z) = −(E_C[φ ΔL_z] − E_C[φ] E_full[ΔL_z]) in closed form, φ = L̄ − L̄(w*), ΔL_z = ℓ_z − L̄,
    L̄ the mean loss of the ``reference`` rows. With c_z = Cov_C(ℓ_z, L̄) − Var_C(L̄) (bilinearity: means
    of the per-sample covariances), E_C[φ ΔL_z] = c_z + E_C[φ] E_C[ΔL_z], so
    χ_C(z) = −c_z − E_C[φ] (E_C[ΔL_z] − E_full[ΔL_z]). ``full_term=False`` drops the full run
    (E_full → E_C): the restricted-only −Cov_C(φ, ΔL_z), a wrong answer the test must reject."""
    m = len(yp)
    xs, ys = np.vstack([xp, x[reference]]), np.concatenate([yp, y[reference]])

    def parts(free_coordinates):
        mean, cov = _loss_moments(xs, ys, *_restricted_gaussian(x, y, w_star, free_coordinates, step))
        mean_ref = mean[m:].mean()
        return mean_ref, cov[:m, m:].mean(axis=1) - cov[m:, m:].mean(), mean[:m] - mean_ref

    mean_ref, c, delta_c = parts(free)
    delta_full = parts(range(D))[2] if full_term else delta_c
    e_phi = mean_ref - np.mean(0.5 * (y[reference] - x[reference] @ w_star) ** 2)
    return -c - e_phi * (delta_c - delta_full)


def _exact_settings(seed):
    model, data, probe, w_star = _linear_problem()
    x = data[0].numpy()
    a = NBETA * x.T @ x / N + GAMMA * np.eye(D)
    step = 1.0 / np.linalg.eigvalsh(a).max()  # ε a_max = 1: the finite-step covariance is up to 33% above A⁻¹
    settings = dict(step_size=step, localization=GAMMA, nbeta=NBETA, num_chains=4, num_burnin_steps=300,
                    num_draws=4000, batch_size=N, seed=seed, progress=False)
    return model, data, probe, w_star, step, settings


def run_exact(seed=3):
    """The exact comparison: (result, z against the exact χ, z against the ε → 0 χ, z against the
    restricted-only covariance), each z (K, m)."""
    model, data, probe, w_star, step, settings = _exact_settings(seed)
    components = {name: _masks(c) for name, c in COMPONENTS.items()}
    result = lh.susceptibilities(model, data, gaussian_nll, components, probe, reference=10, probe_every=4,
                                 **settings)
    x, y = data[0].numpy(), data[1].numpy()[:, 0]
    xp, yp = probe[0].numpy(), probe[1].numpy()[:, 0]
    reference = np.round(np.linspace(0, N - 1, 10)).astype(int)

    def z(**kwargs):
        exact = np.stack([exact_chi(x, y, w_star, xp, yp, reference, free, **kwargs) for free in COMPONENTS.values()])
        return (result.values - exact) / result.stderr

    return result, z(step=step), z(step=0.0), z(step=step, full_term=False)


def test_susceptibility_matches_the_exact_linear_gaussian_answer():
    """χ_C entry by entry against the closed form at full-batch SGLD's own finite-step law.

    Tolerance: |z| ≤ Z = 4 with the estimator's own delta-method batch-means standard error (10
    blocks of 100 probed draws per chain, 400 steps each, ≫ the slowest mode's relaxation time
    2/(ε a_min) ≈ 5 steps). The same estimate must be rejected (max |z| > 4) when compared with the
    ε → 0 answer (covariances A_SS⁻¹) and with the restricted-only covariance −Cov_C(φ, ΔL) (no full
    run): so the test can fail, and the full run's term and the finite-step law are both resolved.
    Measured max |z| over the 2 × 5 entries: 1.57, 0.67 and 2.54 (seeds 3, 11, 5), against 6.2, 6.2
    and 5.6 under ε → 0 and 23, 18 and 24 for the restricted-only covariance.
    """
    result, z, z_limit, z_restricted_only = run_exact(seed=3)
    assert result.values.shape == result.stderr.shape == (2, 5)
    assert result.reference_size == 10 and result.components == list(COMPONENTS)
    assert np.all(result.stderr > 0)
    assert np.abs(z).max() < Z, np.round(z, 2)
    assert np.abs(z_limit).max() > Z, np.round(z_limit, 2)
    assert np.abs(z_restricted_only).max() > Z, np.round(z_restricted_only, 2)
    # the restricted runs ran at the full run's settings, each with its own seed
    for k, run in enumerate(result.runs.values()):
        assert run.settings.step_size == result.full.settings.step_size and run.settings.seed == 3 + k + 1
    assert result.runs["w0"].config["masked_params"] == {"weight": 1}


def test_estimator_on_given_rows_is_the_formula():
    """susceptibility_from_runs on made-up rows: χ = −(mean_C[φ ΔL] − mean_C[φ] mean_full[ΔL])."""
    rng = np.random.default_rng(0)
    restricted, full = rng.normal(size=(2, 40, 3 + 4)), rng.normal(size=(3, 30, 3 + 4))
    chi, se = susceptibility_from_runs(restricted, full, 3, 0.25)
    phi = restricted[:, :, 3:].mean(axis=2) - 0.25
    delta_c = restricted[:, :, :3] - restricted[:, :, 3:].mean(axis=2, keepdims=True)
    delta_f = full[:, :, :3] - full[:, :, 3:].mean(axis=2, keepdims=True)
    expected = -((phi[..., None] * delta_c).mean(axis=(0, 1)) - phi.mean() * delta_f.mean(axis=(0, 1)))
    np.testing.assert_allclose(chi, expected, rtol=1e-12)
    # devinterp's form of the same estimator: E_C[φ L̄] − E_C[φ ℓ] − E_C[φ] (E_full[L̄] − E_full[ℓ])
    lbar_c, lbar_f = restricted[:, :, 3:].mean(axis=2), full[:, :, 3:].mean(axis=2)
    devinterp = ((phi * lbar_c).mean() - (phi[..., None] * restricted[:, :, :3]).mean(axis=(0, 1))
                 - phi.mean() * (lbar_f.mean() - full[:, :, :3].mean(axis=(0, 1))))
    np.testing.assert_allclose(chi, devinterp, rtol=1e-10)
    assert se.shape == (3,) and np.all(se > 0)
    # with the full run's means equal to the restricted run's, it is −Cov_C(L̄, ΔL)
    chi_self, _ = susceptibility_from_runs(restricted, restricted, 3, 0.25)
    lbar = restricted[:, :, 3:].mean(axis=2).reshape(-1)
    cov = [np.cov(lbar, delta_c[:, :, i].reshape(-1), ddof=0)[0, 1] for i in range(3)]
    np.testing.assert_allclose(chi_self, -np.array(cov), rtol=1e-10)


SMALL = dict(step_size=1e-3, localization=GAMMA, nbeta=NBETA, num_chains=2, num_burnin_steps=10, num_draws=40,
             batch_size=N, progress=False)


def test_table_csv_and_heatmap(tmp_path):
    model, data, probe, _ = _linear_problem()
    result = lh.susceptibilities(model, data, gaussian_nll, {"w0": _masks([0]), "all": ["weight"]}, probe, **SMALL)
    assert result.values.shape == (2, 5) and np.isfinite(result.values).all()
    np.testing.assert_array_equal(result["all"], result.values[1])
    rows = result.rows()
    assert len(rows) == 10 and rows[6] == {"component": "all", "sample": 1, "susceptibility": result.values[1, 1],
                                            "stderr": result.stderr[1, 1]}
    text = result.write_csv(tmp_path / "chi.csv").read_text().splitlines()
    assert text[0] == "component,sample,susceptibility,stderr" and len(text) == 11
    pytest.importorskip("pandas")
    frame = result.to_frame()
    assert list(frame.columns) == ["component", "sample", "susceptibility", "stderr"] and len(frame) == 10
    fig = result.plot()
    assert "susceptibilities: 2 components × 5 probe samples" in figure_text(fig)
    assert "w0" in figure_text(fig) and "χ_C" in figure_text(fig)
    assert "w0" in str(result)


def test_dataset_data_gives_the_tensors_answer():
    """Data and probe as map-style Datasets (read item by item, probe and reference concatenated as
    datasets) give the same χ as the same samples as tensors."""
    model, (x, y), (xp, yp), _ = _linear_problem()
    components = {"w0": _masks([0])}
    tensors = lh.susceptibilities(model, (x, y), gaussian_nll, components, (xp, yp), reference=8, **SMALL)
    items = lh.susceptibilities(model, Pairs(x, y), gaussian_nll, components, Pairs(xp, yp), reference=8, **SMALL)
    np.testing.assert_allclose(items.values, tensors.values, rtol=1e-9, atol=1e-15)
    assert items.reference_size == 8


def test_auto_settings_of_the_full_run_are_the_restricted_runs_settings():
    model, data, probe, _ = _linear_problem()
    result = lh.susceptibilities(model, data, gaussian_nll, {"w0": _masks([0])}, probe, probe_every=10,
                                 num_chains=2, nbeta=NBETA, max_steps=1500, progress=False)
    full, run = result.full.settings, result.runs["w0"].settings
    assert not full.auto_fields and result.full.adaptation is not None and result.runs["w0"].adaptation is None
    assert (run.step_size, run.localization, run.num_draws, run.num_burnin_steps, run.seed) == (
        full.step_size, full.localization, full.num_draws, full.num_burnin_steps, full.seed + 1)
    assert np.isfinite(result.values).all() and np.isfinite(result.stderr).all()


def test_per_token_susceptibilities_average_to_the_per_sample_ones():
    """Per token, (K, m, T); with the same draws, the mean over positions of the per-token χ is the
    per-sample χ (ΔL and φ are linear in the losses, and the per-sample loss is the positions' mean)."""
    torch.manual_seed(0)
    model = tiny_transformer(vocab_size=11, d_model=8, n_layers=1, n_heads=2, seq_len=8)
    tokens = torch.randint(0, 11, (64, 9), generator=torch.Generator().manual_seed(1))
    components = {name: spec for name, spec in lh.components(model, "head").items()}
    settings = dict(step_size=1e-4, num_burnin_steps=5, num_draws=12, num_chains=2, batch_size=16, seed=0,
                    progress=False)
    per_token = lh.susceptibilities(model, tokens, lh.losses.next_token, components, tokens[:3], per_token=True,
                                    reference=16, **settings)
    per_sample = lh.susceptibilities(model, tokens, lh.losses.next_token, components, tokens[:3], reference=16,
                                     **settings)
    assert per_token.values.shape == (2, 3, 8) and per_sample.values.shape == (2, 3)
    assert per_token.components == ["layer 0 head 0", "layer 0 head 1"]
    # float32 losses averaged in two orders: agreement to float rounding of the products
    np.testing.assert_allclose(per_token.values.mean(axis=2), per_sample.values, rtol=1e-3, atol=1e-7)
    assert len(per_token.rows()) == 48 and per_token.columns[:3] == ["component", "sample", "token"]
    assert "probe sample (each: its positions)" in figure_text(per_token.plot())


def _no_sampling(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("sampling started before the arguments were checked")

    monkeypatch.setattr(lh.chains, "step_chains", fail)


def test_bad_components_fail_before_sampling(monkeypatch):
    model, data, probe, _ = _linear_problem()
    _no_sampling(monkeypatch)
    with pytest.raises(ValueError, match=r"components is empty"):
        lh.susceptibilities(model, data, gaussian_nll, {}, probe, **SMALL)
    with pytest.raises(ValueError, match=r"components\['head'\] matches no weight.*'blocks.0' names no parameter"):
        lh.susceptibilities(model, data, gaussian_nll, {"head": ["blocks.0"]}, probe, **SMALL)
    none = {"weight": torch.zeros(1, D, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"components\['nothing'\] matches no weight.*select no weights"):
        lh.susceptibilities(model, data, gaussian_nll, {"w0": _masks([0]), "nothing": none}, probe, **SMALL)
    with pytest.raises(ValueError, match=r"components\['typo'\] matches no weight.*'wieght' is not a parameter"):
        lh.susceptibilities(model, data, gaussian_nll, {"typo": {"wieght": none["weight"]}}, probe, **SMALL)
    with pytest.raises(ValueError, match=r"components\['empty'\] matches no weight.*selected no parameters"):
        lh.susceptibilities(model, data, gaussian_nll, {"empty": []}, probe, **SMALL)
    with pytest.raises(TypeError, match=r"components must be a mapping"):
        lh.susceptibilities(model, data, gaussian_nll, ["weight"], probe, **SMALL)
    with pytest.raises(ValueError, match=r"sampled_params: susceptibilities sets the restriction"):
        lh.susceptibilities(model, data, gaussian_nll, {"w0": _masks([0])}, probe, sampled_params=["weight"], **SMALL)
    with pytest.raises(TypeError, match=r"susceptibilities: unknown setting\(s\) \['step'\]"):
        lh.susceptibilities(model, data, gaussian_nll, {"w0": _masks([0])}, probe, step=1e-3)
    with pytest.raises(ValueError, match=r"reference must be a positive number"):
        lh.susceptibilities(model, data, gaussian_nll, {"w0": _masks([0])}, probe, reference=0, **SMALL)


def test_probe_that_does_not_fit_the_model_fails_before_sampling(monkeypatch):
    model, data, (xp, yp), _ = _linear_problem()
    _no_sampling(monkeypatch)
    components = {"w0": _masks([0])}
    with pytest.raises(ValueError, match=r"probe: tensor 0 has samples of shape \(4,\).*\(3,\)"):
        lh.susceptibilities(model, data, gaussian_nll, components, (torch.randn(5, 4, dtype=torch.float64), yp),
                            **SMALL)
    with pytest.raises(ValueError, match=r"probe: 1 tensor"):
        lh.susceptibilities(model, data, gaussian_nll, components, xp, **SMALL)
    with pytest.raises(ValueError, match=r"probe: its samples cannot be batched with the data's"):
        lh.susceptibilities(model, Pairs(*data), gaussian_nll, components,
                            Pairs(torch.randn(5, 4, dtype=torch.float64), yp), **SMALL)
    with pytest.raises(ValueError, match=r"probe: susceptibilities needs probe samples"):
        lh.susceptibilities(model, data, gaussian_nll, components, None, **SMALL)


def test_loss_without_per_sample_form_fails_before_sampling(monkeypatch):
    def not_a_mean(output, target):  # the squared mean error is not the mean of per-sample losses
        return (output - target).pow(2).mean() + (output - target).mean().pow(2)

    model, data, probe, _ = _linear_problem()
    _no_sampling(monkeypatch)
    with pytest.raises(ValueError, match=r"probe: loss_fn has no per-sample form"):
        lh.susceptibilities(model, data, not_a_mean, {"w0": _masks([0])}, probe, **SMALL)

    def mean_next_token(model, batch):  # no per_token attribute
        return lh.losses.next_token(model, batch)

    torch.manual_seed(0)
    lm = tiny_transformer(vocab_size=11, d_model=8, n_layers=1, n_heads=2, seq_len=8)
    tokens = torch.randint(0, 11, (16, 9))
    with pytest.raises(ValueError, match=r"loss_fn has no per_token attribute"):
        lh.susceptibilities(lm, tokens, mean_next_token, lh.components(lm, "head"), tokens[:2], per_token=True,
                            step_size=1e-4, num_burnin_steps=1, num_draws=4, num_chains=1, progress=False)
