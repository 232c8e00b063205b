"""The LLC estimate: λ̂ = nβ (E_w[L_n(w)] − L_n(w*)), from a Trace or in one call.

Lau, Furman, Wang, Murfet, Wei, "The Local Learning Coefficient: A Singularity-Aware Complexity
Measure", arXiv 2308.12108. The expectation is over the localised tempered posterior
p(w | w*, β, γ) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²), estimated by the post-burn-in minibatch
losses of the sampler (each unbiased for L_n(w_t)); L_n(w*) is computed once on the full data in
eval mode; the default nβ is n / log n (β* = 1 / log n).
"""

from __future__ import annotations

import math
import numbers
import time
from concurrent.futures import Executor
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import diagnostics, health
from .chains import CHAIN_MODES, ChainJob, run_chains
from .data import as_data_source
from .potential import Potential, select_params
from .samplers import SamplerConfig, as_sampler_config
from .trace import Trace

__all__ = ["LLCResult", "estimate_llc", "llc_from_trace"]


@dataclass
class LLCResult:
    """An LLC estimate with its uncertainty and everything that produced it.

    - ``llc_mean``: mean of the per-chain estimates over the chains that did not diverge.
    - ``llc_std``: the standard deviation of one chain's estimate: across chains (ddof = 1) when
      two or more chains are healthy, else the single chain's own Monte Carlo standard error.
    - ``llc_mcse``: Monte Carlo standard error of ``llc_mean``: nβ · sd(L) / √ESS over all healthy
      draws (split-chain ESS; Vehtari et al. 2021), or, when larger, the between-chain standard
      error ``llc_std`` / √(healthy chains). The ESS route trusts every chain to have mixed; with
      minibatch losses it can even exceed the number of draws (batches drawn without replacement
      within an epoch are anti-correlated), and chains that settle in different places show up
      only between chains.
    - ``llc_per_chain``: λ̂_c per chain, NaN for a diverged chain.
    - ``init_loss``: L_n(w*), on ``init_loss_samples`` samples, in eval mode.
    - ``diverged``: {chain: first step with a non-finite loss}.
    """

    llc_mean: float
    llc_std: float
    llc_mcse: float
    llc_per_chain: np.ndarray
    init_loss: float
    nbeta: float
    trace: Trace
    diverged: dict[int, int] = field(default_factory=dict)
    ess: float = float("nan")
    wall_time: float = float("nan")

    @property
    def config(self) -> dict[str, Any]:
        return self.trace.config

    @property
    def checks(self) -> list[health.Check]:
        """The health checks of :mod:`lambdahat.health` with their default thresholds, each with a
        plain-English verdict (use :func:`lambdahat.health.check_health` for other thresholds)."""
        return health.check_health(self)

    @property
    def healthy(self) -> bool:
        """True when every health check passed (see :attr:`checks`)."""
        return all(check.ok for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """The numbers, verdicts and configuration as plain JSON-ready values (no arrays of draws;
        save ``trace`` for those). Non-finite numbers become None."""

        def number(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return dict(
            llc_mean=number(self.llc_mean),
            llc_std=number(self.llc_std),
            llc_mcse=number(self.llc_mcse),
            llc_per_chain=[number(v) for v in self.llc_per_chain],
            init_loss=number(self.init_loss),
            nbeta=self.nbeta,
            ess=number(self.ess),
            diverged={str(c): s for c, s in self.diverged.items()},
            healthy=self.healthy,
            checks=[dict(name=c.name, ok=c.ok, skipped=c.skipped, verdict=c.verdict) for c in self.checks],
            wall_time=number(self.wall_time),
            config=self.config,
        )

    def running_llc(self) -> np.ndarray:
        """λ̂ after each post-burn-in draw, per chain: nβ (cumulative mean of L − L_n(w*))."""
        losses = self.trace.draws("loss")
        counts = np.arange(1, losses.shape[1] + 1)
        return self.nbeta * (np.cumsum(losses, axis=1) / counts - self.init_loss)

    def __str__(self) -> str:
        cfg = self.config
        healthy = len(self.llc_per_chain) - len(self.diverged)
        if healthy == 0:
            head = "LLC estimate: none — every chain diverged"
        else:
            head = (
                f"LLC estimate λ̂ = {self.llc_mean:.4g} ± {self.llc_mcse:.2g} (MCSE); "
                f"std of a chain's estimate {self.llc_std:.3g}"
            )
        lines = [
            head,
            "  per chain: " + ", ".join("diverged" if math.isnan(v) else f"{v:.4g}" for v in self.llc_per_chain),
            f"  L_n(w*) = {self.init_loss:.6g} on {cfg.get('init_loss_samples', '?')} samples; nβ = {self.nbeta:.6g}"
            + (" (n / log n)" if cfg.get("nbeta_default") else ""),
        ]
        if cfg:
            lines.append(
                f"  sampler {cfg.get('sampler')}{_options_text(cfg.get('sampler_options'))}: step_size {cfg.get('step_size')}, localization {cfg.get('localization')}, "
                f"{cfg.get('num_chains')} chains × {cfg.get('num_draws')} draws after {cfg.get('num_burnin_steps')} "
                f"burn-in steps, batch {cfg.get('batch_size')}, {cfg.get('num_params')} sampled weights, seed {cfg.get('seed')}"
            )
        lines.append(
            f"  effective sample size {self.ess:.0f}" + (f"; {self.wall_time:.1f} s" if math.isfinite(self.wall_time) else "")
        )
        if self.diverged:
            where = ", ".join(f"chain {c} at step {s}" for c, s in self.diverged.items())
            rest = f"the mean is over the other {healthy}" if healthy else "there is no estimate"
            lines.append(
                f"  WARNING: {len(self.diverged)} chain(s) diverged ({where}); {rest}. "
                "Lower step_size, or raise localization."
            )
        checks = self.checks
        failing = [check for check in checks if not check.ok]
        if not failing:
            lines.append(f"  health: all health checks passed ({', '.join(c.name for c in checks if not c.skipped)})")
        else:
            lines.append(f"  health: {len(failing)} of {len(checks)} checks failed")
            # divergence already has its WARNING line above
            lines += [f"  - {c.name}: {c.verdict}" for c in failing if c.name != "divergence"]
        return "\n".join(lines)


def _options_text(options: dict[str, Any] | None) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""


def llc_from_trace(trace: Trace, init_loss: float, nbeta: float) -> dict[str, Any]:
    """λ̂ per chain, their mean, spread and Monte Carlo standard error from a Trace."""
    losses = trace.draws("loss")
    per_chain = nbeta * (losses.mean(axis=1) - init_loss)
    healthy, diverged = trace.healthy_chains, trace.diverged
    if not healthy:
        nan = float("nan")
        return dict(llc_mean=nan, llc_std=nan, llc_mcse=nan, llc_per_chain=per_chain, diverged=diverged, ess=0.0)
    good = losses[healthy]
    mean = float(per_chain[healthy].mean())
    if good.shape[1] < 4:  # too few draws for any effective-sample-size estimate
        ess, mcse = float("nan"), float("nan")
    elif np.ptp(good) == 0:  # a chain that never moved: no Monte Carlo error to speak of
        ess, mcse = float(good.size), 0.0
    else:
        ess = diagnostics.ess(good, method="mean")
        mcse = nbeta * float(good.std(ddof=1)) / math.sqrt(ess)
    if len(healthy) >= 2:
        std = float(per_chain[healthy].std(ddof=1))
        between = std / math.sqrt(len(healthy))
        mcse = max(mcse, between) if math.isfinite(mcse) else between
    else:
        std = mcse
    return dict(llc_mean=mean, llc_std=std, llc_mcse=mcse, llc_per_chain=per_chain, diverged=diverged, ess=ess)


def _positive(name: str, value: float, hint: str) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}; {hint}")


def _whole(name: str, value: int, minimum: int, hint: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}; {hint}")


def estimate_llc(
    model: nn.Module,
    data: Any,
    loss_fn: Callable[..., Tensor],
    *,
    step_size: float = 2e-5,
    localization: float = 100.0,
    nbeta: float | None = None,
    num_chains: int = 4,
    num_draws: int = 1000,
    num_burnin_steps: int = 500,
    batch_size: int | None = None,
    sampled_params: Sequence[str] | Callable[[str, Tensor], bool] | Mapping[str, Tensor] | None = None,
    sampler: str | SamplerConfig = "sgld",
    seed: int = 0,
    chain_mode: str = "auto",
    executor: Executor | None = None,
    train_mode: bool = False,
    init_loss_batch_size: int = 4096,
    progress: bool = True,
) -> LLCResult:
    """Estimate the local learning coefficient of ``model`` at its current weights w*.

    λ̂(w*) = nβ (E_{w∼p}[L_n(w)] − L_n(w*)), p(w) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²)
    (Lau et al., arXiv 2308.12108), sampled by default with SGLD (see
    :func:`lambdahat.samplers.sgld.build` for the exact update and its step-size convention).

    Args:
        model: the trained model; it is left exactly as it was (weights, buffers, requires_grad,
            train/eval mode).
        data: ``(inputs, targets)`` tensors (fast path), a ``Dataset`` or a ``DataLoader``.
        loss_fn: ``loss_fn(output, target)`` (a criterion such as ``nn.MSELoss()``) or
            ``loss_fn(model, batch)`` (first parameter named ``model``); must return the batch
            mean of a per-sample loss. See :mod:`lambdahat.losses` for ready-made ones.
        step_size: ε, the SGLD step size and noise variance.
        localization: γ, the strength of the pull toward w*.
        nbeta: nβ, the inverse temperature times n. None means n / log n. Use one fixed value
            for every model you compare.
        num_chains, num_draws, num_burnin_steps: each chain runs burn-in + draws steps; the
            estimate averages the loss over the draws only.
        batch_size: minibatch size for the sampler's gradient (default: the DataLoader's, else
            256; clipped to n, where the sampler becomes full-batch).
        sampled_params: sample only these parameters (names or submodule prefixes, or a
            predicate ``(name, param) -> bool``, or ``{name: boolean mask}`` for single entries
            such as one attention head's rows); the rest stay frozen at w*. This is the
            weight-refined LLC (Wang et al., arXiv 2410.02984). For the data-refined LLC, pass
            the data of interest as ``data``: it is used by the sampler and the estimate alike.
        sampler: the sampler's name (``"sgld"``, ``"rmsprop_sgld"``, ``"sghmc"``, ``"sgnht"``,
            ``"mala"``) or a :class:`lambdahat.samplers.SamplerConfig` with its own settings.
            ``"mala"`` is exact and full-batch: it uses the whole data every step.
        seed: the run's seed. Chain c's noise and batch order depend on (seed, c) only.
        chain_mode: ``"sequential"`` (one chain after another), ``"vectorized"`` (all chains in
            one ``torch.func.vmap`` call per step; falls back to sequential with a warning where
            vmap cannot run the model) or ``"auto"`` (vectorised for small models: at most 2¹⁶
            sampled weights and weights × batch size ≤ 2²³, not in train mode). Each chain's result is the same
            either way, to float rounding.
        executor: run one chain per task on this ``concurrent.futures.Executor`` (a
            ``ProcessPoolExecutor``, or ``dask.distributed.Client(...).get_executor()``). The
            model, data and loss are pickled to the workers; the result is identical to the
            sequential run's.
        train_mode: sample with the model in train mode (dropout on, BatchNorm on batch
            statistics). Off by default: dropout noise would read as spurious complexity.
        init_loss_batch_size: batch size for the full-data evaluation of L_n(w*).
        progress: show a progress bar.
    """
    start = time.perf_counter()
    _positive("step_size", step_size, "try 2e-5 and calibrate from there.")
    if not isinstance(localization, numbers.Real) or not math.isfinite(localization) or localization < 0:
        raise ValueError(f"localization must be a finite number ≥ 0, got {localization!r}.")
    if nbeta is not None:
        _positive("nbeta", nbeta, "pass None for n / log n, or a fixed value such as 30.")
    _whole("num_chains", num_chains, 1, "run at least one chain (4 or more to judge convergence).")
    _whole("num_draws", num_draws, 1, "the estimate needs draws after burn-in.")
    _whole("num_burnin_steps", num_burnin_steps, 0, "use 0 for no burn-in.")
    _whole("init_loss_batch_size", init_loss_batch_size, 1, "use a positive batch size.")
    if batch_size is not None:
        _whole("batch_size", batch_size, 1, "use a positive minibatch size, e.g. 256.")
    sampler_config = as_sampler_config(sampler)
    if chain_mode not in CHAIN_MODES:
        raise ValueError(f"chain_mode must be one of {CHAIN_MODES}, got {chain_mode!r}.")
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(
            f"executor must be a concurrent.futures.Executor (e.g. ProcessPoolExecutor, or a Dask "
            f"Client's get_executor()), got {type(executor).__name__}."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")

    source = as_data_source(data)
    n = source.n
    if nbeta is None:
        if n < 2:
            raise ValueError("nbeta=None means n / log n, which needs n ≥ 2 samples; pass nbeta explicitly.")
        nbeta_value, nbeta_default = n / math.log(n), True
    else:
        nbeta_value, nbeta_default = float(nbeta), False
    if sampler_config.full_batch:
        if batch_size is not None and batch_size < n:
            raise ValueError(
                f"batch_size={batch_size} with sampler {sampler_config.name!r}: that sampler is exact only on the "
                f"full data (n = {n}); leave batch_size=None, or use 'sgld' for minibatches."
            )
        batch_size = n
    batch_size = min(batch_size or source.default_batch_size or 256, n)

    names = select_params(model, sampled_params)
    masks = sampled_params if isinstance(sampled_params, Mapping) else None
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    source = source.to(device)
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        potential = Potential(model, loss_fn, names, masks)
        potential.check_loss(source.batch(torch.arange(min(batch_size, n))))
        init_loss = potential.full_loss(potential.w_star, source, init_loss_batch_size)
        if not math.isfinite(init_loss):
            raise ValueError(f"loss_fn is not finite at w* on the full data (L_n(w*) = {init_loss}).")
        model.train(train_mode)
        job = ChainJob(
            model=model,
            loss_fn=loss_fn,
            sampled_names=names,
            masks=masks,
            data=source,
            sampler=sampler_config,
            step_size=step_size,
            nbeta=nbeta_value,
            localization=localization,
            num_steps=num_burnin_steps + num_draws,
            batch_size=batch_size,
            seed=seed,
            _potential=potential,
        )
        config = dict(
            sampler=sampler_config.name,
            sampler_options=dict(sampler_config.options),
            step_size=step_size,
            localization=localization,
            nbeta=nbeta_value,
            nbeta_default=nbeta_default,
            num_chains=num_chains,
            num_draws=num_draws,
            num_burnin_steps=num_burnin_steps,
            batch_size=batch_size,
            n=n,
            init_loss_samples=n,
            num_params=potential.num_params,
            sampled_params=names,
            masked_params={name: int(mask.sum()) for name, mask in masks.items() if name in names} if masks else None,
            seed=seed,
            train_mode=train_mode,
        )
        trace = run_chains(
            job,
            num_chains=num_chains,
            num_burnin_steps=num_burnin_steps,
            config=config,
            chain_mode=chain_mode,
            train_mode=train_mode,
            executor=executor,
            progress=progress,
        )
    finally:
        for module, mode in modes.items():
            module.training = mode
    stats = llc_from_trace(trace, init_loss, nbeta_value)
    return LLCResult(
        init_loss=init_loss, nbeta=nbeta_value, trace=trace, wall_time=time.perf_counter() - start, **stats
    )
