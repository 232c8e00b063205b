"""The LLC estimate in one call: λ̂ = nβ (E_w[L_n(w)] − L_n(w*)).

Lau, Furman, Wang, Murfet, Wei, "The Local Learning Coefficient: A Singularity-Aware Complexity
Measure", arXiv 2308.12108. The expectation is over the localised tempered posterior
p(w | w*, β, γ) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²), estimated by the post-burn-in minibatch
losses of the sampler (each unbiased for L_n(w_t)); L_n(w*) is computed once on the full data in
eval mode; the default nβ is n / log n (β* = 1 / log n).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .adapt import Adaptation, adapt_and_sample
from .chains import ChainJob, ChainSet, progress_enabled
from .runs import choose_mode, run_chains
from .data import as_data_source
from .descent import DESCENT_EVALUATIONS, DESCENT_SHARE, Descent, descend
from .loop import forked_rng
from .nbeta_rung import LOWER_SEED_OFFSET, NBETA_FACTOR, NbetaRung, lowers, rung_settings
from .noise import PAIR_SPREAD, full_loss_and_grad, loss_spread
from .potential import Potential, default_nbeta, select_params, with_precision
from .result import LLCResult, llc_from_trace
from .settings import AUTO, Settings, default_max_steps
from .trace import Trace

__all__ = ["LLCResult", "estimate_llc", "llc_from_trace"]  # the result's two names stay importable from here


def estimate_llc(
    model: nn.Module,
    data: Any,
    loss_fn: Callable[..., Tensor],
    *,
    executor: Executor | None = None,
    progress: bool = True,
    probe: Any = None,
    probe_every: int = 1,
    probe_batch_size: int | None = None,
    probe_per_token: bool = False,
    probe_store: str = "raw",
    probe_queries: Any = None,
    **settings: Any,
) -> LLCResult:
    """Estimate the local learning coefficient of ``model`` at its current weights w*.

    λ̂(w*) = nβ (E_{w∼p}[L_n(w)] − L_n(w*)), p(w) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²)
    (Lau et al., arXiv 2308.12108), sampled by default with SGLD (see
    :func:`lambdahat.samplers.sgld.build` for the exact update and its step-size convention).

    With no settings, the step size, the localisation and the chain length are chosen on the run
    by the warm-up of :mod:`lambdahat.adapt` and the result is certified or not by the health
    checks; ``print(result)`` says which, what was chosen and why. Such a run (nβ left at n / log n)
    is then repeated at 4nβ (:mod:`lambdahat.nbeta_rung`; ``nbeta_check``): λ̂ still rising or
    falling with nβ means the value at this nβ is not yet the learning coefficient, which no
    sampling check can see; ``result.nbeta_rung`` holds that second estimate. When λ̂ falls with
    nβ (w* above a nearby minimum of L_n, as at a teacher under noisy targets or an unconverged
    training run), the estimate moves to nβ / 4, where the fall is a quarter, with the run at nβ as
    its rung (``result.lowered_from``; not when a probe is recorded, whose observables stay at the
    nβ they were asked at).

    Args:
        model: the trained model; it is left exactly as it was (weights, buffers, requires_grad,
            train/eval mode).
        data: ``(inputs, targets)`` tensors (fast path), a single tensor, a ``Dataset`` or a
            ``DataLoader``.
        loss_fn: ``loss_fn(output, target)`` (a criterion such as ``nn.MSELoss()``) or
            ``loss_fn(model, batch)`` (first parameter named ``model``); must return the batch
            mean of a per-sample loss. See :mod:`lambdahat.losses` for ready-made ones.
        executor: run one chain per task on this ``concurrent.futures.Executor`` (a
            ``ProcessPoolExecutor``, or ``dask.distributed.Client(...).get_executor()``), with
            fixed settings (the warm-up adapts across chains in this process). The result is
            identical to the sequential run's.
        progress: show a progress bar, with the phase (warm-up, draws, bias check); it stays quiet
            when stderr is neither a terminal nor a notebook.
        probe: a fixed probe set, in the form of ``data`` (the same kinds and sample shapes): after
            every ``probe_every``-th draw of every chain (post burn-in) the per-sample loss ℓ_i(w_t)
            of each of its m samples is evaluated at the chain's point and stored in
            ``result.trace.probe``, shaped (chain, draw, sample), with ``result.trace.probe_steps``
            (saved and loaded with the Trace); :func:`lambdahat.bif` uses them. The per-sample
            form of ``loss_fn`` is ``loss_fn.per_sample`` or ``loss_fn`` on one-sample batches
            (:mod:`lambdahat.losses`); the probe and that form are checked before any sampling.
            Cost: ceil(m / ``probe_batch_size``) forward passes per chain per probed draw (not
            counted in ``gradient_evaluations``; with adapted settings the warm-up is probed too,
            its rows dropped, as its length is known only at its end); memory: m × 4 bytes (float32
            models; 8 for float64) per chain per probed draw. The chains themselves are exactly
            those of the same run without a probe.
        probe_every: evaluate the probe after every k-th draw (k ≥ 1).
        probe_per_token: record the loss of every position of every probe sequence instead
            (``loss_fn.per_token``, e.g. :func:`lambdahat.losses.next_token`): ``trace.probe`` is
            then shaped (chain, draw, sample, token) and stores T times as many numbers.
        probe_batch_size: samples per probe forward pass (default: the sampling batch size).
        probe_store: ``"raw"`` (default): every probed row, in ``trace.probe``; ``"moments"``: streaming
            float64 moments instead (``trace.probe_moments``, :mod:`lambdahat.probe_moments`), whose
            memory does not grow with the draws: per chain 11 × 2 × p sums (p = m, or m × T per token)
            and q × p cross-products, 8 bytes each; ``lh.bif`` and ``lh.susceptibilities`` read either.
        probe_queries: with ``probe_store="moments"``, the rows whose cross-products with all m probe
            samples are kept: None (all: the full (m, m) BIF), indices of probe samples (``lh.bif``
            gives (q, m)), or a float array of weights (r, m) (per token also (r, m, T)): r linear
            combinations of the probe losses (a group's mean loss), kept per batch-means block.
        **settings: any field of :class:`lambdahat.settings.Settings` (the one place their
            defaults and meanings are written): ``step_size``, ``localization``, ``nbeta``,
            ``num_chains``, ``num_burnin_steps``, ``num_draws``, ``batch_size``, ``sampler``,
            ``max_steps``, ``target_rel_mcse``, ``seed``, ``chain_mode``, ``train_mode``,
            ``init_loss_batch_size``; or ``**result.settings`` of an earlier run. A given setting is
            kept as given. ``sampled_params`` (names, submodule prefixes, a predicate
            ``(name, param) -> bool`` or ``{name: boolean mask}``) samples only part of the model
            (the weight-refined LLC, Wang et al., arXiv 2410.02984); for the data-refined LLC pass
            the data of interest as ``data``.
    """
    start = time.perf_counter()
    sampled_params = settings.pop("sampled_params", None)
    given = dict(settings)
    settings, sampler_config = _checked_settings(model, executor, probe, probe_every, probe_batch_size, settings,
                                                 probe_per_token, probe_store, probe_queries)
    user_loss_fn, loss_fn = loss_fn, with_precision(loss_fn, settings.precision)  # unless float32: the forward under torch.autocast
    source = as_data_source(data)
    nbeta = default_nbeta(source.n) if settings.nbeta is None else float(settings.nbeta)
    measure_nbeta = settings.measures_nbeta
    settings, auto_batch = _with_batch_size(settings, sampler_config, source)
    names = select_params(model, sampled_params)
    masks = sampled_params if isinstance(sampled_params, Mapping) else None
    device = _device_of(model)
    source = source.to(device)
    with _sampling_state(model, names):
        potential, init_loss = _measured_w_star(model, loss_fn, names, masks, source, settings, device)
        probe_set = _checked_probe(probe, probe_every, probe_batch_size, probe_per_token, settings, potential, model,
                                   loss_fn, source, device, probe_store, probe_queries)
        model.train(settings.train_mode)
        job = ChainJob(
            model=model, loss_fn=loss_fn, sampled_names=names, masks=masks, data=source, sampler=sampler_config,
            step_size=settings.step_size, nbeta=nbeta, localization=settings.localization, num_steps=0,
            batch_size=settings.batch_size, seed=settings.seed, probe=probe_set, _potential=potential,
        )
        if settings.control_variate is True:
            anchor = full_loss_and_grad(potential.loss_and_grad, source, potential.w_star, settings.init_loss_batch_size)[1]
            job.control_variate = (init_loss, anchor)
        pairs, pair_note = _pairs_loss(settings, potential, source, nbeta)
        job.paired_loss = init_loss if pairs else None
        extras = _recorded_extras(settings, sampler_config, nbeta, source.n, potential, names, masks, probe_set)
        adaptation, ends = None, ()
        if not settings.auto_fields:
            settings = settings.replace(paired_loss=job.paired_loss is not None)
            job.num_steps, job.num_burnin_steps = settings.num_burnin_steps + settings.num_draws, settings.num_burnin_steps
            trace = run_chains(
                job, num_chains=settings.num_chains, config={**settings.to_dict(), **extras},
                chain_mode=settings.chain_mode, train_mode=settings.train_mode, executor=executor, progress=progress,
            )
            evaluations = settings.num_chains * job.num_steps * sampler_config.evaluations_per_step
        else:  # the warm-up sets the localisation (given, or its own starting value) before any step
            trace, settings, adaptation, ends = _adaptive_run(job, settings, init_loss, nbeta, extras, progress,
                                                              auto_batch)
            if pair_note:
                dropped = job.paired_loss is not None and not settings.paired_loss
                adaptation.notes.append(pair_note + (" (then dropped: the warm-up raised the batch to the whole data)"
                                                     if dropped else ""))
            evaluations = settings.num_chains * adaptation.gradient_evaluations
        may_lower = measure_nbeta and settings.nbeta is None and probe_set is None and bool(trace.healthy_chains)
        descent = _descent(potential, source, nbeta, settings, init_loss, evaluations, ends) if may_lower else None
    settings = settings.replace(nbeta_check=measure_nbeta)
    rung = None
    if descent is not None:
        evaluations += descent.gradient_evaluations
    if measure_nbeta and trace.healthy_chains and not _fall_predicted(descent, trace, init_loss, nbeta):
        rung = _nbeta_rung(model, data, user_loss_fn, given, nbeta, settings.seed, executor, progress, sampled_params)
        evaluations += rung.gradient_evaluations
    result = LLCResult.from_trace(trace, init_loss, nbeta, settings, potential.num_params, adaptation=adaptation,
                                  gradient_evaluations=int(evaluations), nbeta_rung=rung, descent=descent)
    if settings.nbeta is None and probe_set is None and lowers(result):
        result = _lowered(result, model, data, user_loss_fn, given, executor, progress, sampled_params)
    result.wall_time = time.perf_counter() - start
    return result


def _descent(potential: Potential, source, nbeta: float, settings: Settings, init_loss: float, evaluations: float,
             ends) -> Descent | None:
    """The descent of :mod:`lambdahat.descent` from w* and from the chains' last points, in eval mode
    (as L_n(w*) was measured), within ``DESCENT_SHARE`` of the samples the run evaluated."""
    starts = 1 + len(ends)
    allowed = int(DESCENT_SHARE * evaluations * settings.batch_size / (source.n * starts))
    potential.model.eval()
    return descend(potential, source, nbeta, float(settings.localization), init_loss, settings.init_loss_batch_size,
                   settings.batch_size, starts=ends, max_evaluations=min(DESCENT_EVALUATIONS, allowed))


def _fall_predicted(descent: Descent | None, trace: Trace, init_loss: float, nbeta: float) -> bool:
    """Whether the descent alone shows λ̂ falling with nβ (then no run at 4nβ is needed)."""
    if descent is None:
        return False
    first = llc_from_trace(trace, init_loss, nbeta)
    return descent.predicts_fall(first["llc_mean"], first["llc_mcse"])


def _nbeta_rung(model, data, loss_fn, given: dict[str, Any], nbeta: float, seed: int, executor, progress: bool,
                sampled_params) -> NbetaRung:
    """The same estimate at 4nβ (:mod:`lambdahat.nbeta_rung`), summarised for the ``nbeta`` check."""
    extra = {} if sampled_params is None else {"sampled_params": sampled_params}
    again = estimate_llc(model, data, loss_fn, executor=executor, progress=progress,
                         **rung_settings(given, seed, nbeta), **extra)
    return NbetaRung.of(again)


def _lowered(first: LLCResult, model, data, loss_fn, given: dict[str, Any], executor, progress: bool,
             sampled_params) -> LLCResult:
    """λ̂ fell from nβ to 4nβ (measured, or predicted by the descent): the estimate at nβ / 4, with
    ``first`` (at nβ) as its rung (:mod:`lambdahat.nbeta_rung`, "Lowering nβ"); ``first`` itself
    when no chain at nβ / 4 survives."""
    extra = {} if sampled_params is None else {"sampled_params": sampled_params}
    lower = estimate_llc(model, data, loss_fn, executor=executor, progress=progress, **extra,
                         **rung_settings(given, first.settings.seed, first.nbeta, 1.0 / NBETA_FACTOR, LOWER_SEED_OFFSET))
    if not lower.trace.healthy_chains:
        return first
    return LLCResult.from_trace(
        lower.trace, lower.init_loss, lower.nbeta, lower.settings.replace(nbeta_check=True), lower.num_params,
        adaptation=lower.adaptation,
        gradient_evaluations=lower.gradient_evaluations + first.gradient_evaluations,
        nbeta_rung=NbetaRung.of(first), lowered_from=first.nbeta, fall_rung=first.nbeta_rung, descent=first.descent)


def _checked_settings(model: Any, executor: Any, probe: Any, probe_every: int, probe_batch_size: int | None,
                      settings: dict[str, Any], probe_per_token: bool = False, probe_store: str = "raw",
                      probe_queries: Any = None) -> tuple[Settings, Any]:
    """The settings and sampler of a call, with every mistake in the arguments turned into a clear
    error before any work is done."""
    if probe is None and (probe_every != 1 or probe_batch_size is not None or probe_per_token
                          or probe_store != "raw" or probe_queries is not None):
        raise ValueError("probe_every, probe_batch_size, probe_per_token, probe_store and probe_queries set how the "
                         "probe is evaluated and stored; pass probe=probe_data too.")
    if probe is not None:
        from .observables import check_store

        check_store(probe_store, probe_queries)
    settings = Settings.from_mapping(settings, where="estimate_llc")
    if settings.sampler == AUTO and settings.step_size != AUTO:
        settings = settings.replace(sampler="sgld")
    sampler_config = settings.sampler_config
    if settings.step_size == AUTO and sampler_config.name == "sgnht":
        raise ValueError(
            "step_size='auto' needs a sampler that records a MALA acceptance (sgld, rmsprop_sgld, sghmc or mala); "
            "sampler 'sgnht' does not: pass step_size (e.g. from a run with sampler='sgld')."
        )
    if executor is not None:
        if not isinstance(executor, Executor):
            raise TypeError(
                f"executor must be a concurrent.futures.Executor (e.g. ProcessPoolExecutor, or a Dask "
                f"Client's get_executor()), got {type(executor).__name__}."
            )
        if settings.auto_fields:
            raise ValueError(
                f"executor: the settings {settings.auto_fields} are 'auto', and the warm-up that chooses them adapts "
                "across chains in this process; run estimate_llc once without an executor and pass its "
                "**result.settings, or give those settings explicitly."
            )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    return settings, sampler_config


def _with_batch_size(settings: Settings, sampler_config: Any, source: Any) -> tuple[Settings, bool]:
    """The settings with the batch size resolved (given, the DataLoader's, else 256, clipped to n;
    the full data for an exact sampler), and whether the warm-up may raise it (none was given)."""
    n, batch_size = source.n, settings.batch_size
    auto_batch = batch_size is None and not source.default_batch_size and not sampler_config.full_batch
    if sampler_config.full_batch:
        if batch_size is not None and batch_size < n:
            raise ValueError(
                f"batch_size={batch_size} with sampler {sampler_config.name!r}: that sampler is exact only on the "
                f"full data (n = {n}); leave batch_size=None, or use 'sgld' for minibatches."
            )
        batch_size = n
    return settings.replace(batch_size=min(batch_size or source.default_batch_size or 256, n)), auto_batch


def _pairs_loss(settings: Settings, potential: Potential, source: Any, nbeta: float) -> tuple[bool, str | None]:
    """Whether the run records the paired loss of :mod:`lambdahat.noise` (``paired_loss``; auto: in a
    run with an auto setting, on minibatches, when :func:`~lambdahat.noise.loss_spread` is at least
    ``PAIR_SPREAD``; not with the control variate, whose loss is paired already), and for auto the
    sentence that says why. A given value is kept."""
    if settings.paired_loss != AUTO:
        return settings.paired_loss, None
    if settings.control_variate is True or not settings.auto_fields or settings.batch_size >= source.n:
        return False, None
    spread = loss_spread(potential.loss, source, potential.w_star, settings.batch_size, nbeta, settings.seed)
    pairs = spread >= PAIR_SPREAD
    return pairs, (f"paired_loss = {pairs}: the minibatch spread of the loss at w*, nβ·sd(L_B(w*)) = {spread:.3g}, is "
                   + ("at least" if pairs else "below") + f" {PAIR_SPREAD:g} (a unit of λ)"
                   + (", so each draw records L_B(w) − L_B(w*) + L_n(w*), free of it" if pairs else ""))


def _device_of(model: nn.Module) -> torch.device:
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
    if device.type == "meta":
        raise ValueError("model: its parameters are on the meta device (shapes without values); load its weights "
                         "(e.g. model.to_empty(device='cpu') then load_state_dict) before estimating.")
    return device


@contextmanager
def _sampling_state(model: nn.Module, names: list[str]) -> Iterator[None]:
    """The thread policy (:func:`select_threads`) and eval mode while sampling; the caller's thread
    count and every module's train/eval mode restored afterwards, whatever happens."""
    modes = {module: module.training for module in model.modules()}
    threads = torch.get_num_threads()
    try:
        if select_threads(sum(p.numel() for name, p in model.named_parameters() if name in names)) == 1:
            torch.set_num_threads(1)
        model.eval()
        yield
    finally:
        torch.set_num_threads(threads)
        for module, mode in modes.items():
            module.training = mode


def _measured_w_star(model, loss_fn, names, masks, source, settings: Settings, device) -> tuple[Potential, float]:
    """The flat potential of the sampled weights, checked on one batch, and L_n(w*) on the full data
    (under the run's seed: a stochastic eval-mode forward gives the same value every time)."""
    potential = Potential(model, loss_fn, names, masks)
    potential.check_loss(source.batch(torch.arange(min(settings.batch_size, source.n))))
    with forked_rng(device):
        torch.manual_seed(settings.seed)
        init_loss = potential.full_loss(potential.w_star, source, settings.init_loss_batch_size)
    if not math.isfinite(init_loss):
        raise ValueError(f"loss_fn is not finite at w* on the full data (L_n(w*) = {init_loss}).")
    return potential, init_loss


def _checked_probe(probe, probe_every, probe_batch_size, per_token, settings: Settings, potential, model, loss_fn,
                   source, device, store="raw", queries=None):
    """The probe set (:mod:`lambdahat.observables`), validated before any sampling work; None without one."""
    if probe is None:
        return None
    from .observables import make_probe

    start_step = 0 if settings.auto_fields else settings.num_burnin_steps
    probe_set = make_probe(probe, probe_every, probe_batch_size, settings.batch_size, device, start=start_step,
                           per_token=per_token, store=store, queries=queries)
    probe_set.check(potential, model, loss_fn, source)
    return probe_set


def _recorded_extras(settings: Settings, sampler_config, nbeta: float, n: int, potential, names, masks,
                     probe_set) -> dict[str, Any]:
    """What the Trace records about the run besides its settings."""
    extras = dict(
        sampler=sampler_config.name, sampler_options=dict(sampler_config.options), nbeta=nbeta,
        nbeta_default=settings.nbeta is None, n=n, init_loss_samples=n, num_params=potential.num_params,
        sampled_params=names,
        masked_params={name: int(mask.sum()) for name, mask in masks.items() if name in names} if masks else None,
    )
    if probe_set is not None:
        extras["probe"] = dict(size=probe_set.size, every=probe_set.every, batch_size=probe_set.batch_size)
        if probe_set.per_token:
            extras["probe"]["shape"] = list(probe_set.shape)
        if probe_set.store == "moments":  # (raw runs record no such keys: their configs stay as they were)
            extras["probe"]["store"] = "moments"
            extras["probe"]["queries"] = None if probe_set.queries is None else probe_set.queries.tolist()
            extras["probe"]["weights"] = 0 if probe_set.weights is None else len(probe_set.weights)
    return extras


#: Models with at most this many sampled weights sample on one intra-op thread: their matrix products
#: are too small for threads to pay, and on shared cores extra threads contend (measured on 2 shared
#: cores, benchmarks/threads.py: 2 threads ran at 0.06, 0.16 and 0.25 × the speed of 1 at 10k, 100k and
#: 1M weights). Larger ones keep torch's setting. The caller's thread count is restored afterwards.
SINGLE_THREAD_MAX_PARAMS = 2**20


def select_threads(num_params: int) -> int | None:
    """The intra-op thread policy: 1 for small models, None (torch's own setting) otherwise."""
    return 1 if num_params <= SINGLE_THREAD_MAX_PARAMS else None


def _adaptive_run(job: ChainJob, settings: Settings, init_loss: float, nbeta: float, extras: dict[str, Any],
                  progress: bool, auto_batch: bool) -> tuple[Trace, Settings, Adaptation, tuple[Tensor, ...]]:
    """The warm-up, the draws and the bias check of :mod:`lambdahat.adapt`, as one Trace, with the
    chains' last points."""
    from tqdm.auto import tqdm

    mode, message = choose_mode(job, settings.num_chains, settings.chain_mode, settings.train_mode)
    if message:
        import warnings

        warnings.warn(message, stacklevel=3)
    chains = ChainSet(job, range(settings.num_chains), mode)
    budget = default_max_steps(job.potential.num_params) if settings.max_steps == AUTO else settings.max_steps
    bar = tqdm(total=settings.num_chains * budget, desc="adaptive sampling (warm-up, draws, bias check)", unit="step",
               disable=not progress_enabled(progress), leave=False)
    try:
        records, burnin, first_bad, resolved, adaptation = adapt_and_sample(
            chains, settings, init_loss=init_loss, nbeta=nbeta, num_params=job.potential.num_params,
            auto_batch=auto_batch, bar=bar)
    finally:
        bar.close()
    extras = {**extras, "sampler_options": dict(resolved.sampler_config.options)}  # the draws' (auto: their friction)
    config = {**resolved.to_dict(), **extras, "chain_mode": adaptation.chain_mode, "adaptation": adaptation.to_dict()}
    ends = tuple(chains.positions().detach().clone().reshape(settings.num_chains, -1))  # the chains' last points
    return Trace(records, burnin, first_bad, config), resolved, adaptation, ends
