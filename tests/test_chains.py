"""How chains run: sequentially, vectorised with torch.func.vmap, or on an executor.

Each chain's result depends on (seed, chain) only, so every way of running the same chains must
give the same per-chain results: to float rounding for the vectorised runner (batched kernels
may sum in another order), bit for bit for executors (the same kernels in another process).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

import lambdahat as lh
from lambdahat.losses import gaussian_nll

FAST = dict(step_size=1e-3, localization=10.0, nbeta=30.0, num_draws=40, num_burnin_steps=10, progress=False)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))


def _data(n=96):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=gen), torch.randn(n, 2, generator=gen)


def _estimate(mode, sampler="sgld", batch_size=16, model=None, **kwargs):
    settings = {**FAST, **kwargs}
    return lh.estimate_llc(model or _mlp(), _data(), gaussian_nll, sampler=sampler, num_chains=3, batch_size=batch_size,
                           seed=7, chain_mode=mode, **settings)


def _same_chains(a, b, exact=False):
    assert a.trace.arrays.keys() == b.trace.arrays.keys()
    for name in a.trace.arrays:
        if exact:
            np.testing.assert_array_equal(a.trace[name], b.trace[name])
        else:
            np.testing.assert_allclose(a.trace[name], b.trace[name], rtol=2e-5, atol=1e-6, equal_nan=True)
    assert a.diverged == b.diverged


@pytest.mark.parametrize("sampler", ["sgld", "rmsprop_sgld", "sghmc", "sgnht"])
def test_vectorized_chains_equal_sequential_chains(sampler):
    seq = _estimate("sequential", sampler)
    vec = _estimate("vectorized", sampler)
    assert seq.config["chain_mode"] == "sequential" and vec.config["chain_mode"] == "vectorized"
    _same_chains(seq, vec)
    assert vec.llc_mean == pytest.approx(seq.llc_mean, rel=1e-4)


def test_vectorized_full_batch_and_mala():
    for sampler in ("sgld", "mala"):
        seq = _estimate("sequential", sampler, batch_size=None if sampler == "mala" else 96)
        vec = _estimate("vectorized", sampler, batch_size=None if sampler == "mala" else 96)
        assert vec.config["chain_mode"] == "vectorized"
        _same_chains(seq, vec)


def test_vectorized_with_a_weight_mask():
    mask = {"0.weight": torch.rand(8, 3, generator=torch.Generator().manual_seed(0)) > 0.5}
    _same_chains(_estimate("sequential", sampled_params=mask), _estimate("vectorized", sampled_params=mask))


def test_vectorized_reports_each_chains_divergence_like_sequential():
    seq = _estimate("sequential", step_size=0.5, nbeta=2000.0, localization=0.0, num_draws=300)
    vec = _estimate("vectorized", step_size=0.5, nbeta=2000.0, localization=0.0, num_draws=300)
    assert seq.diverged and seq.diverged == vec.diverged
    assert np.isnan(vec.trace["loss"][list(vec.diverged)[0], -1])


def test_auto_vectorizes_small_models_only():
    assert _estimate("auto").config["chain_mode"] == "vectorized"
    big = nn.Sequential(nn.Linear(3, 16384), nn.Linear(16384, 2))  # 98k weights > 2¹⁶
    r = lh.estimate_llc(big, _data(), gaussian_nll, num_chains=2, batch_size=96, chain_mode="auto", seed=0, **{**FAST, "num_draws": 2, "num_burnin_steps": 0})
    assert r.config["chain_mode"] == "sequential"


class ItemInForward(nn.Module):
    """A model vmap cannot run: it converts a tensor to a Python number inside forward."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        scale = float(self.linear.weight.detach().abs().max())  # data-dependent Python control: no batching rule
        return self.linear(x) / max(scale, 1.0)


def test_vectorized_falls_back_with_a_message_not_a_crash():
    torch.manual_seed(0)
    model = ItemInForward()
    with pytest.warns(UserWarning, match="vectorised chains are not available"):
        vec = _estimate("vectorized", model=model)
    assert vec.config["chain_mode"] == "sequential"
    _same_chains(_estimate("sequential", model=model), vec, exact=True)
    assert _estimate("auto", model=model).config["chain_mode"] == "sequential"  # auto falls back quietly
    with pytest.warns(UserWarning, match="train mode"):
        r = _estimate("vectorized", train_mode=True)
    assert r.config["chain_mode"] == "sequential"


def test_chain_mode_and_executor_errors():
    with pytest.raises(ValueError, match="chain_mode must be one of"):
        _estimate("parallel")
    with pytest.raises(TypeError, match="executor must be a concurrent.futures.Executor"):
        _estimate("auto", executor=multiprocessing.Pool)


def test_process_pool_gives_the_sequential_result_bit_for_bit():
    local = _estimate("sequential")
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        remote = _estimate("auto", executor=pool)
    assert remote.config["chain_mode"] == "executor"
    _same_chains(local, remote, exact=True)
    assert remote.llc_mean == local.llc_mean


def test_process_pool_hands_workers_no_file_descriptors(monkeypatch):
    # torch's reductions would share the job's tensors through the parent's resource_sharer
    # thread, which printed a traceback when Ctrl-C ended a worker mid-handover
    from multiprocessing import resource_sharer

    handed = []
    real = resource_sharer.DupFd.__init__
    monkeypatch.setattr(resource_sharer.DupFd, "__init__", lambda self, fd: handed.append(fd) or real(self, fd))
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        remote = _estimate("auto", executor=pool)
    assert remote.config["chain_mode"] == "executor" and np.isfinite(remote.llc_mean)
    assert handed == []


def test_process_pool_names_what_cannot_be_pickled():
    with ProcessPoolExecutor(max_workers=1) as pool:
        with pytest.raises(ValueError, match="loss_fn cannot be sent to a worker"):
            lh.estimate_llc(_mlp(), _data(), lambda out, y: ((out - y) ** 2).mean(), num_chains=2, executor=pool, **FAST)


def test_process_pool_names_data_that_cannot_be_pickled():
    x, y = _data()

    class Local(torch.utils.data.Dataset):  # a class local to a function cannot be pickled
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], y[i]

    with ProcessPoolExecutor(max_workers=1) as pool:
        with pytest.raises(ValueError, match="the run cannot be sent to a worker process"):
            lh.estimate_llc(_mlp(), Local(), lh.losses.gaussian_nll, num_chains=2, executor=pool, **FAST)


def test_dask_cluster_gives_the_sequential_result_bit_for_bit():
    distributed = pytest.importorskip("distributed")
    local = _estimate("sequential")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=50) as cluster, distributed.Client(cluster) as client:
        remote = _estimate("auto", executor=client.get_executor())
    assert remote.config["chain_mode"] == "executor"
    _same_chains(local, remote, exact=True)
    assert remote.llc_mean == local.llc_mean


def test_rmsprop_sgld_draws_are_built_with_a_frozen_preconditioner(monkeypatch):
    """RMSProp-SGLD's default ``adapt="burnin"``: the fixed-settings run steps the first half of the
    burn-in with V following the gradient, and the rest with ``adapt="never"`` (a constant P, no
    dropped Γ term);
    ``adapt="always"`` runs every step in one segment, as before; the adaptive run's warm-up adapts
    and its draws do not."""
    from lambdahat.chains import ChainSet

    calls = []
    original = ChainSet.advance

    def spy(self, num_steps, step_size, *, options=None, bar=None):
        calls.append((num_steps, (options or {}).get("adapt")))
        return original(self, num_steps, step_size, options=options, bar=bar)

    monkeypatch.setattr(ChainSet, "advance", spy)
    frozen = _estimate("sequential", "rmsprop_sgld")
    assert calls == [(5, None), (45, "never")] * 3
    calls.clear()
    always = _estimate("sequential", lh.SamplerConfig("rmsprop_sgld", adapt="always"))
    assert calls == [(50, None)] * 3
    assert not np.array_equal(frozen.trace["loss"], always.trace["loss"])
    calls.clear()
    lh.estimate_llc(_mlp(), _data(), gaussian_nll, sampler="rmsprop_sgld", num_chains=2, batch_size=16, seed=7,
                    max_steps=3000, nbeta_check=False, progress=False)
    assert calls[0][1] is None and "never" in {adapt for _, adapt in calls}
