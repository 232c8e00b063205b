"""The adaptive warm-up: choose the step size, the localisation and the chain length on the run.

Every setting left ``"auto"`` is chosen here; every setting the user gave is kept as given.
Adaptation happens during burn-in only and the draws run at frozen settings, as in Stan's
warm-up, so the draws are one valid chain of fixed-step SGLD:

1. **Step size (warm-up).** From ε₀ = 0.01 / nβ, windows of ``WINDOW`` steps record the
   Metropolis–Hastings acceptance probability that MALA would give SGLD's own proposal
   (Lau et al., arXiv 2308.12108, after Furman & Lau). For small steps the rejection rate of a
   Langevin proposal grows like h^{3/2} with h = ε × curvature (Roberts & Rosenthal 1998), so
   after each window ε ← ε · ((1 − target) / (1 − acceptance))^{2/3}, the factor clipped to
   [1/2, 2]. The target depends on the running λ̂: :func:`lambdahat.health.acceptance_target`
   is the acceptance at which the step-size bias is at most 2% of λ̂ (0.994 at λ̂ = 3, 0.9 at
   λ̂ = 1,000). A window with a non-finite loss sends every chain back to w* with ε / 10.
   The chains move outward from w* into regions of higher curvature while they warm up, so the
   adaptation follows them until the end of the warm-up.
   **Minibatch noise.** Every few windows the gradient noise between two minibatches is measured
   at the chains' points (:class:`lambdahat.noise.NoiseMonitor`) and ε is capped so that the λ̂
   it adds, (ε/16) nβ² E‖∇L_B₁ − ∇L_B₂‖², stays within 2% of λ̂. Where that cap holds ε far below
   what the acceptance allows, an automatic batch size is raised (else the control-variate
   gradient is switched on) and the warm-up restarts from w*. The noise is measured again during
   the draws and judged by the ``noise`` health check.
   **Momentum.** With ``sampler="auto"`` (the default) the chains are SGHMC (Chen, Fox & Guestrin
   2014), whose friction α follows the measured noise (:func:`lambdahat.noise.choose_friction`):
   the smallest α ≥ ``noise.MIN_FRICTION`` whose noise bias, SGLD's divided by α, stays within
   2% of λ̂. At α = 1 SGHMC is SGLD; a small α keeps the velocity for about 1/α steps, so the chains cross the
   flat valleys of singular models (along which only γ confines them, and SGLD needs about
   2/(εγ) steps to relax) about 1/α times faster, at no larger step-size bias. Its acceptance
   diagnostic is that of the SGLD proposal from the same point. The friction is frozen with ε
   for the draws.
2. **Localisation.** γ = 1 (the value of Lau et al.'s deep-linear-network and ResNet runs). After
   the warm-up the :func:`~lambdahat.health.check_localization` statistics are read on its last
   half; while they say the prior, not the loss, confines the chain, γ is divided by 10 and the
   warm-up restarts from w* (at most twice).
3. **Draws.** In blocks at the frozen ε and γ, until the convergence, R̂ and ESS checks pass and
   the Monte Carlo standard error is at most ``target_rel_mcse`` × λ̂, or the step budget
   ``max_steps`` is spent. When the convergence check finds λ̂ still rising or falling, the first
   half of the draws so far becomes burn-in (any prefix of a fixed-setting chain may be
   discarded).
4. **Bias.** After the draws, every chain continues for a segment at ε/2 (settling, then
   measuring). SGLD's bias is about linear in ε for small ε (for a quadratic loss the factor is
   1 / (1 − εa/4)), so 2 (λ̂(ε) − λ̂(ε/2)) estimates the bias at ε; it is reported with its
   standard error and judged by the ``bias`` health check. Halving rather than doubling keeps
   the segment from exploring further than the draws did (a larger step also travels faster
   along flat directions, which a doubled segment would mistake for bias). The segment is not
   part of the trace's draws.

A run's randomness comes only from (seed, chain), and the budget is in steps, never seconds, so
the same call gives the same result, bit for bit, on any machine.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import diagnostics, health, noise, stopping
from .cost import announce_cost
from .chains import ChainSet
from .settings import AUTO, Settings, default_max_steps

__all__ = ["Adaptation", "adapt_and_sample", "WINDOW", "MALA_ACCEPTANCE"]

WINDOW = 100
#: Exact MALA's own acceptance biases nothing; ≈ 0.6 mixes well (Roberts & Rosenthal 1998: 0.574).
MALA_ACCEPTANCE = 0.6
MAX_REWARMS = 3
#: Restarts after a divergence before the step size is capped at half the one that diverged (and
#: the steps thrown away count against ``max_steps``, so the warm-up always ends).
MAX_FREE_RESTARTS = 3
#: Steps at the draws' friction before them (burn-in), in damping times 1/α.
SETTLE_DAMPING_TIMES = 5
#: How often the warm-up records the acceptance (every step would double its cost).
WARMUP_ACCEPTANCE_EVERY = 4
#: During the draws (the sampler's option): enough to report the acceptance, cheap.
DRAW_ACCEPTANCE_EVERY = 10
MIN_WARMUP = 1_000
MIN_DRAWS = 1_000
DRAW_BLOCK = 1_000
MAX_GAMMA_REDUCTIONS = 2
#: Warm-up windows between measurements of the minibatch gradient noise (:class:`lambdahat.noise.NoiseMonitor`).
NOISE_EVERY = 5
#: Batch-size raises or control-variate switches (each restarts the warm-up) at most.
MAX_NOISE_REMEDIES = 2


@dataclass
class Adaptation:
    """What the warm-up chose and why.

    ``phases``: one dict per phase (``name``, ``steps``, ``step_size``, ``localization``,
    ``acceptance``); ``notes``: one sentence per auto setting saying how it got its value;
    ``bias`` and ``bias_mcse``: λ̂(2ε) − λ̂(ε) and its standard error (None when not measured);
    ``budget_spent``: the draws stopped at ``max_steps``, not because the checks passed;
    ``gradient_evaluations``: per chain, every phase included (a proposal check costs one more,
    a noise measurement four); ``noise_bias``: the λ̂ that minibatch noise adds, predicted from the
    noise measured in the draws (None when not measured); ``chain_mode``: the mode the chains ran in.
    """

    phases: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bias: float | None = None
    bias_mcse: float | None = None
    budget_spent: bool = False
    gradient_evaluations: int = 0
    discarded_steps: int = 0
    noise_bias: float | None = None
    chain_mode: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(phases=self.phases, notes=self.notes, bias=self.bias, bias_mcse=self.bias_mcse,
                    budget_spent=self.budget_spent, gradient_evaluations=self.gradient_evaluations,
                    discarded_steps=self.discarded_steps, noise_bias=self.noise_bias)


def _options(settings_sampler, every: int) -> dict[str, Any]:
    """The sampler option that makes it record the acceptance ``every`` steps, where it has one."""
    return {"acceptance_every": every} if "acceptance_every" in settings_sampler.options else {}


def adapt_and_sample(chains: ChainSet, settings: Settings, *, init_loss: float, nbeta: float, num_params: int,
                     auto_batch: bool = False, bar=None) -> tuple[dict[str, np.ndarray], int, list[int | None],
                                                                  Settings, Adaptation]:
    """Run ``chains`` with every auto field of ``settings`` chosen on the way (module docstring).

    ``auto_batch``: the batch size was not given, so the warm-up may raise it where minibatch
    noise would otherwise force a much smaller ε. Returns the per-step records of burn-in and
    draws (chain, step), the number of burn-in steps, each chain's first non-finite step, the
    settings with every auto field resolved, and the :class:`Adaptation` record.
    """
    sampler = settings.sampler_config
    momentum = settings.sampler == AUTO  # SGHMC whose friction follows the measured minibatch noise
    log = Adaptation(chain_mode=chains.mode)
    auto_step = settings.step_size == AUTO
    auto_gamma = settings.localization == AUTO
    auto_burnin = settings.num_burnin_steps == AUTO
    auto_draws = settings.num_draws == AUTO
    budget = default_max_steps(num_params) if settings.max_steps == AUTO else int(settings.max_steps)
    exact = sampler.name == "mala"
    target = MALA_ACCEPTANCE if exact else health.acceptance_target(0.0)

    step = 0.01 / nbeta if auto_step else float(settings.step_size)
    gamma = 1.0 if auto_gamma else float(settings.localization)
    if chains.localization != gamma:
        chains.restart(gamma)
    warm_every = _options(sampler, WARMUP_ACCEPTANCE_EVERY) if auto_step else _options(sampler, DRAW_ACCEPTANCE_EVERY)
    draw_every = _options(sampler, DRAW_ACCEPTANCE_EVERY)
    friction = float(sampler.options.get("friction", 1.0)) if sampler.name == "sghmc" else 1.0
    cost = sampler.with_options(**warm_every).evaluations_per_step
    draw_cost = sampler.with_options(**draw_every).evaluations_per_step
    reserve = budget // 5 if auto_step and sampler.name != "mala" else 0  # for the bias check
    budget_draws = budget - reserve
    max_warmup = budget // 2 if auto_burnin else int(settings.num_burnin_steps)
    min_warmup = min(MIN_WARMUP, max_warmup) if auto_burnin else max_warmup
    draw_floor = MIN_DRAWS if auto_draws else int(settings.num_draws)
    step_sizes: list[float] = []  # the ε of every kept step
    n = chains.job.data.n
    measure_noise = auto_step and not exact
    monitor = noise.NoiseMonitor(settings.seed, nbeta, init_loss)
    draw_noise: list[float] = []  # measured in the draws, of the gradient in use
    noise_cap = math.inf
    remedies = 0

    def friction_option() -> dict[str, float]:
        """The auto sampler's current friction, as a sampler option."""
        return {"friction": friction} if momentum else {}

    def friction_for(llc: float) -> tuple[float, float]:
        """The friction (:func:`lambdahat.noise.choose_friction`) for the noise at the chains' points
        now, and the cap on ε the noise sets (∞ below friction 1)."""
        level = monitor.level(chains)
        chosen = noise.choose_friction(noise.noise_bias(step, nbeta, level), llc)
        return (chosen, math.inf) if chosen < 1.0 else (1.0, noise.step_cap(llc, nbeta, level))

    def spend(records: dict[str, np.ndarray], per_step: float) -> None:
        log.gradient_evaluations += int(round(records["loss"].shape[1] * per_step))

    def warm_up(steps_min: int, steps_max: int) -> tuple[list[dict[str, np.ndarray]], float]:
        """Adapt ε window by window until the acceptance and the loss level have settled."""
        nonlocal step, restarts, ceiling, noise_cap, target, friction
        done, windows = 0, []
        while done < steps_max:
            length = min(WINDOW, steps_max - done)
            began = time.perf_counter()
            records = chains.advance(length, step, options={**warm_every, **friction_option()}, bar=bar)
            if chains.steps == length and remedies == 0 and not log.discarded_steps:
                announce_cost(bar, (time.perf_counter() - began) / length, budget, len(chains.chains), chains.job)
            spend(records, cost)
            if not stopping.finite(records) and auto_step and log.discarded_steps + chains.steps < budget:
                log.discarded_steps += chains.steps
                log.notes.append(f"a chain diverged at ε = {step:.3g} during the warm-up: every chain restarted from w* "
                                 "at ε / 10")
                restarts += 1
                if restarts > MAX_FREE_RESTARTS:  # diverging again and again: never climb back to where it broke
                    ceiling = min(ceiling, step / 2)
                chains.reset()
                step_sizes.clear()
                step /= 10
                done, windows = 0, []
                continue
            step_sizes.extend([step] * length)
            done += length
            windows.append(records)
            # the running λ̂ of the last windows sets the target and the noise cap
            running = _running_llc(windows, nbeta, init_loss)
            if not exact and math.isfinite(running):
                target = health.acceptance_target(running)
            if measure_noise and len(windows) % NOISE_EVERY == 1:
                if momentum:  # the noise sets the friction; it caps ε only once the friction is 1 (SGLD)
                    friction, noise_cap = friction_for(running)
                else:
                    noise_cap = monitor.cap(chains, running, friction)
            if auto_step:
                step = min(step * stopping.step_factor(stopping.acceptance(records), target), ceiling, noise_cap)
            capped = auto_step and step >= noise_cap
            if done >= steps_min and stopping.settled(windows, target if auto_step else None, init_loss, nbeta, capped):
                break
        recent = [a for a in (stopping.acceptance(r) for r in windows[-3:]) if math.isfinite(a)]
        return windows, float(np.mean(recent)) if recent else float("nan")

    restarts, ceiling = 0, math.inf
    # 1-2. warm-up: step size, then localisation (all burn-in: no probe evaluations)
    chains.probe_active = False
    if bar is not None:
        bar.set_description("warm-up")
    reductions = 0
    while True:
        windows, warm_acc = warm_up(min_warmup, max_warmup)
        if remedies < MAX_NOISE_REMEDIES and step >= noise_cap and math.isfinite(warm_acc):
            # the acceptance would allow a larger ε than the noise does: remove noise where it pays for itself
            wanted = step * max(1.0, stopping.rejection_ratio(warm_acc, target) ** (-2.0 / 3.0))
            change = monitor.remedy(chains, wanted, noise_cap, auto_batch=auto_batch,
                                    auto_cv=settings.control_variate == AUTO)
            if change is not None:
                remedies += 1
                what = (f"batch_size raised from {chains.job.batch_size} to {change['batch_size']}" if "batch_size" in change
                        else f"the control-variate gradient switched on (noise {monitor.recent(1):.3g} against "
                             f"{monitor.recent(0):.3g})")
                log.notes.append(f"minibatch gradient noise capped ε at {noise_cap:.3g} where the acceptance allowed "
                                 f"about {wanted:.3g}: {what}, and the warm-up restarted from w*")
                log.discarded_steps += chains.steps
                chains = _rebuilt(chains, gamma, settings.paired_loss == AUTO, **change)
                log.chain_mode = chains.mode
                step_sizes.clear()
                noise_cap = math.inf
                continue
        if not auto_gamma or reductions >= MAX_GAMMA_REDUCTIONS or not windows:
            break
        half = windows[len(windows) // 2:]
        share, elasticity = stopping.prior_statistics_of(half, gamma, nbeta, num_params, init_loss)
        if not health.localization_too_tight(share, elasticity):
            break
        log.notes.append(
            f"γ = {gamma:g} confined the warm-up chains (prior share {share:.0%}, ∂ log λ̂ / ∂ log γ = {elasticity:.2f}): "
            f"γ lowered to {gamma / 10:g} and the warm-up restarted from w*"
        )
        log.discarded_steps += chains.steps
        gamma /= 10
        reductions += 1
        chains.reset()
        chains.restart(gamma)
        step_sizes.clear()
    log.phases.append(dict(name="warm-up", steps=chains.steps, step_size=step, localization=gamma, acceptance=warm_acc))

    def freeze_friction() -> None:
        """Fix the draws' friction for the noise at the warm-up's end and let the velocity settle."""
        nonlocal friction, draw_every
        friction = friction_for(_running_llc(windows, nbeta, init_loss))[0]
        draw_every = {**draw_every, "friction": friction}
        settle = min(math.ceil(SETTLE_DAMPING_TIMES / friction), max(0, budget_draws - chains.steps - MIN_DRAWS)) \
            if auto_burnin else 0  # a given burn-in is kept as given
        if settle:
            spend(chains.advance(settle, step, options=draw_every, bar=bar), draw_cost)
            step_sizes.extend([step] * settle)

    if momentum:
        freeze_friction()
    burnin = chains.steps
    rewarms = 0
    chains.probe_active = True
    if bar is not None:
        bar.set_description("draws")

    # 3. draws at frozen settings; back to the warm-up if their acceptance leaves the band
    draws: list[dict[str, np.ndarray]] = []
    while True:
        have = sum(r["loss"].shape[1] for r in draws)
        if not auto_draws:
            if have >= draw_floor:
                break
            length = draw_floor - have
        else:
            if chains.steps >= budget_draws:
                log.budget_spent = True
                break
            length = min(max(DRAW_BLOCK, draw_floor - have), budget_draws - chains.steps)
        records = chains.advance(length, step, options=draw_every, bar=bar)
        spend(records, draw_cost)
        step_sizes.extend([step] * length)
        draws.append(records)
        if measure_noise and chains.job.batch_size < n:  # the chains may travel where the noise is larger
            draw_noise.append(monitor.measure(chains))
        if not auto_draws:
            continue
        healthy = [k for k, s in enumerate(chains.first_bad) if s is None]
        if not healthy:
            break
        acc = stopping.acceptance(records)
        losses = np.concatenate([r["loss"] for r in draws], axis=1)[healthy]
        low = health.EXACT_MALA_ACCEPT_BAND[0] if exact else health.acceptance_band(nbeta * (float(np.nanmean(losses)) - init_loss))[0]
        if auto_step and auto_burnin and rewarms < MAX_REWARMS and math.isfinite(acc) and acc < low \
                and chains.steps + MIN_WARMUP < budget_draws:
            # the chains moved on into steeper ground: adapt again, and count what came before as burn-in
            rewarms += 1
            log.notes.append(f"the draws' MALA acceptance fell to {acc:.2f} at ε = {step:.3g}: the warm-up resumed")
            if bar is not None:
                bar.set_description("warm-up (resumed)")
            chains.probe_active = False
            windows, warm_acc = warm_up(MIN_WARMUP // 2, min(max_warmup, budget_draws - chains.steps - MIN_DRAWS))
            if momentum:
                freeze_friction()
            chains.probe_active = True
            if bar is not None:
                bar.set_description("draws")
            burnin = chains.steps
            draws = []
            log.phases.append(dict(name="warm-up", steps=chains.steps - log.phases[-1]["steps"], step_size=step,
                                   localization=gamma, acceptance=warm_acc))
            continue
        if losses.shape[1] < draw_floor:
            continue
        run = chains.recorded("loss")[healthy]
        verdict = stopping.draws_verdict(losses, init_loss, nbeta, settings.target_rel_mcse, run)
        if verdict == "ok":
            break
        if verdict == "moving" and auto_burnin and losses.shape[1] >= 2 * MIN_DRAWS:
            # the first half of the draws was still burn-in: move it there
            half, moved, keep = losses.shape[1] // 2, 0, []
            for r in draws:
                size = r["loss"].shape[1]
                if moved + size <= half and not keep:
                    moved += size
                    continue
                keep.append(r)
            burnin += moved
            draws = keep
    num_draws = sum(r["loss"].shape[1] for r in draws)
    draw_acc = stopping.acceptance({"mala_accept": np.concatenate([r["mala_accept"] for r in draws], axis=1)}) if (
        draws and "mala_accept" in draws[0]) else float("nan")
    log.phases.append(dict(name="draws", steps=num_draws, step_size=step, localization=gamma, acceptance=draw_acc))
    log.gradient_evaluations += monitor.evaluations
    if draw_noise:
        log.noise_bias = noise.noise_bias(step, nbeta, float(np.mean(draw_noise)), friction)
    if auto_step:
        log.notes.append(
            f"step_size ε = {step:.3g} (ε·nβ = {step * nbeta:.3g}), adapted in the warm-up so that the MALA acceptance of "
            f"the sampler's own steps approaches {target:.4g}, the target at this λ̂ (draws: {draw_acc:.4f})"
            + (f", and capped so that minibatch gradient noise adds at most {noise.NOISE_BIAS:.0%} of λ̂ "
               f"(predicted: {log.noise_bias:.3g})" if step >= noise_cap and log.noise_bias is not None else "")
        )
    if momentum:
        log.notes.append(
            f"sampler SGHMC with friction α = {friction:.2g}: the smallest α ≥ {noise.MIN_FRICTION} (1 is SGLD) whose "
            f"minibatch-noise bias (ε/16α) nβ² E‖∇L_B₁ − ∇L_B₂‖² stays within {noise.NOISE_BIAS:.0%} of λ̂ at the "
            "warm-up's end (SGHMC moves about 1/α times further than SGLD per step along directions the loss "
            "leaves flat); the friction followed the measured noise through the warm-up")
    if auto_gamma:
        log.notes.append(f"localization γ = {gamma:g}" + (" (the default: the localization check passed in the warm-up)"
                                                          if reductions == 0 else ""))
    if auto_burnin:
        log.notes.append(f"num_burnin_steps = {burnin}: the warm-up until the acceptance and the loss level settled"
                         + (", and draws moved to burn-in while λ̂ was still moving" if burnin > _warmup_steps(log) else ""))
    if auto_draws:
        log.notes.append(
            f"num_draws = {num_draws}: " + (f"the step budget max_steps = {budget} was spent before the length targets "
                                            f"(convergence, R̂, ESS ≥ {stopping.MIN_ESS:.0f}, MCSE ≤ {settings.target_rel_mcse:.0%} of λ̂) "
                                            "were all met" if log.budget_spent else
                                            "extended in blocks until the convergence, R̂, ESS and MCSE targets passed")
        )

    # 4. the bias of ε by step halving, on a segment after the draws (not part of the trace)
    healthy = [k for k, s in enumerate(chains.first_bad) if s is None]
    if auto_step and sampler.name != "mala" and healthy and draws:
        stats = diagnostics.llc_statistics(np.concatenate([r["loss"] for r in draws], axis=1)[healthy], init_loss, nbeta)
        if bar is not None:
            bar.set_description("bias check at ε/2")
        settle = min(max(2 * WINDOW, min(num_draws // 5, reserve // 4)), reserve // 2)
        measure = max(WINDOW, min(max(MIN_DRAWS, num_draws // 2), max(reserve - reserve // 4, MIN_DRAWS // 2),
                                  reserve - settle))
        chains.keep = False
        try:
            settled = chains.advance(settle, step / 2, options=draw_every, bar=bar)
            records = chains.advance(measure, step / 2, options=draw_every, bar=bar)
        finally:
            chains.keep = True
        spend(settled, draw_cost)
        spend(records, draw_cost)
        half = diagnostics.llc_statistics(records["loss"][healthy], init_loss, nbeta)
        # linear in ε: λ̂(ε) − λ̂(ε/2) is half the bias at ε
        log.bias = 2 * (stats["llc_mean"] - half["llc_mean"])
        log.bias_mcse = 2 * math.hypot(stats["llc_mcse"], half["llc_mcse"])
        log.phases.append(dict(name="bias check", steps=settle + measure, step_size=step / 2, localization=gamma,
                               acceptance=stopping.acceptance(records)))

    records, first_bad = chains.records()
    records["step_size"] = np.broadcast_to(np.asarray(step_sizes, dtype=float), records["loss"].shape).copy()
    ran = sampler.with_options(**draw_every) if momentum else settings.sampler
    resolved = settings.replace(step_size=step, localization=gamma, num_burnin_steps=burnin, num_draws=num_draws,
                                max_steps=budget, batch_size=chains.job.batch_size,
                                control_variate=chains.job.control_variate is not None,
                                paired_loss=chains.job.paired_loss is not None, sampler=ran)
    return records, burnin, first_bad, resolved, log


def _running_llc(windows: list[dict[str, np.ndarray]], nbeta: float, init_loss: float) -> float:
    """λ̂ over the last ``NOISE_EVERY`` warm-up windows; NaN when there is none or none is finite."""
    if not windows:
        return math.nan
    recent = np.concatenate([r["loss"] for r in windows[-NOISE_EVERY:]], axis=1)
    return nbeta * (float(np.nanmean(recent)) - init_loss) if np.isfinite(recent).any() else math.nan


def _rebuilt(chains: ChainSet, gamma: float, auto_pair: bool, **changes: Any) -> ChainSet:
    """The same chains from w* with ``changes`` to their job (vectorised only where that still works);
    ``auto_pair``: the paired loss was chosen by the run, so it goes where batches become the data."""
    job = dataclasses.replace(chains.job, **changes, _potential=chains.job.potential)
    if auto_pair and job.batch_size >= job.data.n:  # every batch is the data: L_B(w*) = L_n(w*), nothing to pair
        job.paired_loss = None
    mode = chains.mode if chains.mode == "sequential" or job.check_stacked() is None else "sequential"
    fresh = ChainSet(job, chains.chains, mode)
    fresh.restart(gamma)
    fresh.probe_active = chains.probe_active
    return fresh


def _warmup_steps(log: Adaptation) -> int:
    return sum(p["steps"] for p in log.phases if p["name"] == "warm-up")


