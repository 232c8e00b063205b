"""Streaming probe moments (``probe_store="moments"``) against raw probe rows.

The chains of a run are the same with either storage (the probe runs with the torch random state
forked, and the same evaluator gives the same losses), so every estimate from the moments must equal
the raw one up to float64 rounding: both accumulate the same float losses in float64, raw by a
two-pass centred sum, moments by a one-pass sum shifted by each chain's first row. Tolerance: 1e-11
of the largest entry (measured: at most 4e-15 here; the rounding bound of N one-pass sums is about
N ε_64 ≈ 1e-13 for these N ≤ 1,200 rows, so 1e-11 leaves margin without hiding a wrong formula,
whose errors are O(1)).
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
from lambdahat.probe_moments import ATOMS, moment_bytes
from lambdahat.trace import Trace
from tests._harness import linear_gaussian_probe_problem

N, D, NBETA, GAMMA = 40, 3, 40.0, 10.0
RUN = dict(step_size=1e-3, localization=GAMMA, nbeta=NBETA, num_chains=3, num_burnin_steps=10, num_draws=403,
           batch_size=8, seed=0, progress=False)
TOL = 1e-11


def _close(a, b, tol=TOL):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.nanmax(np.abs(a - b)) <= tol * np.nanmax(np.abs(a)), np.nanmax(np.abs(a - b)) / np.nanmax(np.abs(a))
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))


def _same_chains(a, b):
    for name in a.trace.arrays:
        np.testing.assert_array_equal(a.trace[name], b.trace[name])


@pytest.mark.parametrize("chain_mode", ["vectorized", "sequential"])
def test_moments_give_the_raw_bif_and_susceptibilities(chain_mode):
    model, data, probe, _, _ = linear_gaussian_probe_problem(N, D)
    raw = lh.estimate_llc(model, data, gaussian_nll, probe=probe, chain_mode=chain_mode, **RUN)
    moments = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_store="moments", chain_mode=chain_mode,
                              **RUN)
    _same_chains(raw, moments)
    assert moments.trace.probe is None and moments.trace.probe_moments.rows == 403
    assert moments.config["probe"]["store"] == "moments" and "store" not in raw.config["probe"]
    for options in ({}, {"correlation": True}, {"samples": [4, 1]}):
        _close(lh.bif(raw, **options), lh.bif(moments, **options))
    # a few queries against the pool: their rows of the full BIF
    queries = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_store="moments", probe_queries=[3, 1],
                              chain_mode=chain_mode, **RUN)
    _close(lh.bif(raw)[[3, 1]], lh.bif(queries))
    _close(lh.bif(raw, correlation=True)[[3, 1]], lh.bif(queries, correlation=True))
    # a weight query: the BIF of the mean loss of samples 0 and 1, −Cov(½(ℓ_0 + ℓ_1), ℓ_j)
    weights = np.array([[0.5, 0.5, 0.0, 0.0, 0.0]])
    group = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_store="moments", probe_queries=weights,
                            chain_mode=chain_mode, **RUN)
    rows = raw.trace.probe.reshape(-1, 5).astype(np.float64)
    expected = -np.cov(np.column_stack([rows @ weights[0], rows]), rowvar=False)[0, 1:]
    _close(expected[None], lh.bif(group))

    components = {"w0": ["weight"]}
    chi_raw = lh.susceptibilities(model, data, gaussian_nll, components, probe, reference=10, probe_every=2,
                                  chain_mode=chain_mode, **RUN)
    chi = lh.susceptibilities(model, data, gaussian_nll, components, probe, reference=10, probe_every=2,
                              probe_store="moments", chain_mode=chain_mode, **RUN)
    _close(chi_raw.values, chi.values)
    _close(chi_raw.stderr, chi.stderr)  # the same 10 blocks of 20 rows per chain (201 rows: a tail of 1)
    assert chi.full.trace.probe_moments.count.tolist() == [20] * 10 + [1]


class Trap(nn.Linear):
    """A linear model whose output is NaN once weight 0 passes a threshold: the chain that walks
    there diverges, the others do not."""

    threshold = 0.0

    def forward(self, x):
        out = super().forward(x)
        return torch.where(self.weight[0, 0] > self.threshold, torch.full_like(out, float("nan")), out)


@pytest.mark.parametrize("chain_mode", ["vectorized", "sequential"])
def test_a_diverged_chain_is_reported_and_left_out_of_the_moments(chain_mode, tmp_path):
    model, data, probe, _, w_star = linear_gaussian_probe_problem(N, D)
    trap = Trap(D, 1, bias=False).double()
    with torch.no_grad():
        trap.weight.copy_(model.weight)
    trap.threshold = float(w_star[0] + 0.256)  # two posterior sd: chain 1 of seed 0 passes it at step 350
    settings = {**RUN, "num_chains": 4, "num_draws": 400}
    raw = lh.estimate_llc(trap, data, gaussian_nll, probe=probe, chain_mode=chain_mode, **settings)
    moments = lh.estimate_llc(trap, data, gaussian_nll, probe=probe, probe_store="moments", chain_mode=chain_mode,
                              **settings)
    assert raw.trace.diverged == moments.trace.diverged == {1: 350}
    assert np.isnan(raw.trace.probe[1, -1]).all() and np.isfinite(raw.trace.probe[[0, 2, 3]]).all()
    stored = moments.trace.probe_moments
    assert np.isnan(stored.sum[1]).all() and np.isnan(stored.cross[1]).all()  # never averaged in
    assert np.isfinite(stored.sum[[0, 2, 3]]).all()
    _close(lh.bif(raw), lh.bif(moments))  # both pool chains 0, 2 and 3
    loaded = Trace.load(moments.trace.save(tmp_path / "run"))
    assert loaded.diverged == {1: 350} and set(loaded.arrays) == set(moments.trace.arrays)
    np.testing.assert_array_equal(lh.bif(loaded), lh.bif(moments))


def test_segments_before_the_burn_in_are_dropped_exactly():
    """The adaptive run may move its first draws into burn-in at a segment boundary: the moments of
    the segments before it are dropped, the rest merged into 10 blocks; the BIF is the raw one of the
    same rows. A burn-in inside a summed segment cannot be honoured and says so."""
    from lambdahat.chains import ChainJob, ChainSet
    from lambdahat.data import as_data_source
    from lambdahat.observables import Probe
    from lambdahat.potential import Potential
    from lambdahat.samplers import as_sampler_config

    model, data, probe, _, _ = linear_gaussian_probe_problem(N, D)
    traces = {}
    for store in ("raw", "moments"):
        job = ChainJob(model=model, loss_fn=gaussian_nll, sampled_names=["weight"], masks=None,
                       data=as_data_source(data), sampler=as_sampler_config("sgld"), step_size=1e-3, nbeta=NBETA,
                       localization=GAMMA, num_steps=0, batch_size=8, seed=0,
                       probe=Probe(as_data_source(probe), every=2, store=store),
                       _potential=Potential(model, gaussian_nll, ["weight"]))
        chains = ChainSet(job, [0, 1], "vectorized")
        for length in (100, 300, 250):
            chains.advance(length, 1e-3)
        records, bad = chains.records()
        traces[store] = Trace(records, 100, bad)
    with pytest.raises(RuntimeError, match=r"burn-in ends at step 150, inside the probed segment \(101, 399\)"):
        Trace(records, 150, bad)
    assert traces["raw"].probe.shape == (2, 275, 5) and traces["moments"].probe_moments.rows == 275
    assert len(traces["moments"].probe_moments.count) == 11  # 20 blocks of 15 and 12 rows merged into 10
    _close(lh.bif(traces["raw"]), lh.bif(traces["moments"]))


def test_adaptive_run_keeps_the_moments_of_its_draws():
    model, data, probe, _, _ = linear_gaussian_probe_problem(N, D)
    kwargs = dict(probe=probe, probe_every=50, num_chains=2, nbeta=NBETA, max_steps=2000, progress=False)
    raw = lh.estimate_llc(model, data, gaussian_nll, **kwargs)
    moments = lh.estimate_llc(model, data, gaussian_nll, probe_store="moments", **kwargs)
    _same_chains(raw, moments)
    assert moments.trace.probe_moments.rows == raw.trace.probe.shape[1]
    assert moments.trace.probe_moments.steps[0] == raw.trace.probe_steps[0] >= raw.trace.num_burnin_steps
    _close(lh.bif(raw), lh.bif(moments))


def test_per_token_moments_give_the_raw_bif():
    from tests.test_observables import LM_SMALL, _language_model

    model, tokens, probe = _language_model()
    kwargs = dict(probe=probe, probe_every=2, probe_per_token=True, **LM_SMALL)
    raw = lh.estimate_llc(model, tokens, lh.losses.next_token, **kwargs)
    moments = lh.estimate_llc(model, tokens, lh.losses.next_token, probe_store="moments", **kwargs)
    for options in ({}, {"per_token": False}, {"correlation": True}, {"samples": [2, 0]},
                    {"per_token": False, "correlation": True}):
        _close(lh.bif(raw, **options), lh.bif(moments, **options))
    one = lh.estimate_llc(model, tokens, lh.losses.next_token, probe_store="moments", probe_queries=[2], **kwargs)
    _close(lh.bif(raw)[[2]], lh.bif(one))
    with pytest.raises(ValueError, match=r"bif: samples \[0\] are not among the probe_queries"):
        lh.bif(one, samples=[0])
    with pytest.raises(ValueError, match="correlation=True with per_token=False needs"):
        lh.bif(one, per_token=False, correlation=True)


def test_per_token_susceptibilities_from_moments_are_the_raw_ones():
    from tests.test_observables import LM_SMALL, _language_model

    model, tokens, probe = _language_model()
    kwargs = dict(per_token=True, reference=8, probe_every=2, **LM_SMALL)
    raw = lh.susceptibilities(model, tokens, lh.losses.next_token, {"embedding": ["embed"]}, probe, **kwargs)
    moments = lh.susceptibilities(model, tokens, lh.losses.next_token, {"embedding": ["embed"]}, probe,
                                  probe_store="moments", **kwargs)
    assert moments.values.shape == (1, 3, 8)
    _close(raw.values, moments.values)
    _close(raw.stderr, moments.stderr)


def test_moments_travel_with_chains_on_an_executor():
    model, data, probe, _, _ = linear_gaussian_probe_problem(N, D)
    settings = {**RUN, "num_chains": 2, "num_draws": 60}
    here = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_store="moments", probe_queries=[0, 2],
                           chain_mode="sequential", **settings)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_store="moments", probe_queries=[0, 2],
                                executor=pool, **settings)
    np.testing.assert_array_equal(lh.bif(there), lh.bif(here))


def test_memory_of_the_moments_does_not_grow_with_the_draws():
    """Bytes per run: raw K × rows × p × itemsize (+ 8 per row for the steps); moments
    8 K (11 (2 + r) p + q p + p) + small, the same for 40 and 400 draws."""
    model, data, probe, _, _ = linear_gaussian_probe_problem(N, D)
    sizes = {}
    for draws, queries, q in ((40, None, 5), (400, None, 5), (400, [1, 3], 2)):
        settings = {**RUN, "num_chains": 2, "num_draws": draws}
        stored = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_store="moments", probe_queries=queries,
                                 **settings).trace.probe_moments
        assert stored.sum.shape == stored.square.shape == (2, ATOMS, 5) and stored.cross.shape == (2, q, 5)
        big = stored.sum.nbytes + stored.square.nbytes + stored.cross.nbytes + stored.shift.nbytes
        assert big == moment_bytes(2, 5, q) == 8 * 2 * (ATOMS * 2 * 5 + q * 5 + 5)
        assert stored.nbytes - big < 200  # the counts, the two steps, the queries
        sizes[draws, q] = stored.nbytes
    assert sizes[40, 5] == sizes[400, 5] > sizes[400, 2]
    raw = lh.estimate_llc(model, data, gaussian_nll, probe=probe, **{**RUN, "num_chains": 2, "num_draws": 400})
    assert raw.trace.probe.nbytes == 2 * 400 * 5 * 8  # a float64 model: grows with the draws
    assert sizes[400, 5] < raw.trace.probe.nbytes / 3


def _no_sampling(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("sampling started before the arguments were checked")

    monkeypatch.setattr(lh.chains, "step_chains", fail)


def test_bad_storage_arguments_fail_before_sampling(monkeypatch):
    model, data, probe, _, _ = linear_gaussian_probe_problem(N, D)
    _no_sampling(monkeypatch)
    cases = [
        (dict(probe_store="stream"), "probe_store must be one of"),
        (dict(probe_store="moments", probe_queries=[0, 5]), r"probe_queries: indices must be probe samples 0\.\.4"),
        (dict(probe_store="moments", probe_queries=[[0, 1]]), "probe_queries must be None"),
        (dict(probe_store="moments", probe_queries=np.ones((1, 4))), "probe_queries must be None"),
        (dict(probe_store="moments", probe_queries=np.ones((1, 5, 2))), r"weights of shape \(1, 5, 2\)"),
        (dict(probe_queries=[0]), "probe_queries chooses the rows.*pass probe_store='moments'"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            lh.estimate_llc(model, data, gaussian_nll, probe=probe, **options, **RUN)
    with pytest.raises(ValueError, match="pass probe=probe_data too"):
        lh.estimate_llc(model, data, gaussian_nll, probe_store="moments", **RUN)
    with pytest.raises(ValueError, match="probe_store must be one of"):
        lh.susceptibilities(model, data, gaussian_nll, {"w": ["weight"]}, probe, probe_store="rows", **RUN)
