"""The warm-up of an adaptive run: the step size, the friction, the minibatch-noise remedies and γ.

:class:`WarmUp` holds what the warm-up adapts (ε, γ, the SGHMC friction, the noise cap on ε, the
acceptance target) while :func:`lambdahat.adapt.adapt_and_sample` runs it, freezes it for the
draws and resumes it when the draws' acceptance leaves its band. The rules are stated in the
docstring of :mod:`lambdahat.adapt`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from . import health, noise, stopping
from .chains import ChainSet
from .cost import announce_cost
from .settings import AUTO, Settings, default_max_steps

__all__ = ["WarmUp", "WINDOW", "MALA_ACCEPTANCE", "MIN_WARMUP", "MIN_DRAWS", "NOISE_EVERY", "running_llc"]

WINDOW = 100
#: Exact MALA's own acceptance biases nothing; ≈ 0.6 mixes well (Roberts & Rosenthal 1998: 0.574).
MALA_ACCEPTANCE = 0.6
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
MAX_GAMMA_REDUCTIONS = 2
#: Warm-up windows between measurements of the minibatch gradient noise (:class:`lambdahat.noise.NoiseMonitor`).
NOISE_EVERY = 5
#: Batch-size raises or control-variate switches (each restarts the warm-up) at most.
MAX_NOISE_REMEDIES = 2


def _options(settings_sampler, every: int) -> dict[str, Any]:
    """The sampler option that makes it record the acceptance ``every`` steps, where it has one."""
    return {"acceptance_every": every} if "acceptance_every" in settings_sampler.options else {}


class WarmUp:
    """The adapted state of one run and the warm-up that moves it (module docstring).

    ``chains`` may be rebuilt (a raised batch size, the control variate), so callers read it from
    here after :meth:`run`. ``step_sizes`` is the ε of every kept step; ``log`` the run's
    :class:`lambdahat.adapt.Adaptation`, to which every phase and note is added.
    """

    def __init__(self, chains: ChainSet, settings: Settings, log, *, init_loss: float, nbeta: float,
                 num_params: int, auto_batch: bool, bar=None):
        self.chains, self.settings, self.log, self.bar = chains, settings, log, bar
        self.init_loss, self.nbeta, self.num_params, self.auto_batch = init_loss, nbeta, num_params, auto_batch
        self.sampler = sampler = settings.sampler_config
        self.momentum = settings.sampler == AUTO  # SGHMC whose friction follows the measured minibatch noise
        self.auto_step = settings.step_size == AUTO
        self.auto_gamma = settings.localization == AUTO
        self.auto_burnin = settings.num_burnin_steps == AUTO
        self.auto_draws = settings.num_draws == AUTO
        self.budget = default_max_steps(num_params) if settings.max_steps == AUTO else int(settings.max_steps)
        self.exact = sampler.name == "mala"
        self.target = MALA_ACCEPTANCE if self.exact else health.acceptance_target(0.0)
        self.step = 0.01 / nbeta if self.auto_step else float(settings.step_size)
        self.gamma = 1.0 if self.auto_gamma else float(settings.localization)
        if chains.localization != self.gamma:
            chains.restart(self.gamma)
        every = WARMUP_ACCEPTANCE_EVERY if self.auto_step else DRAW_ACCEPTANCE_EVERY
        self.warm_every = _options(sampler, every)
        self.draw_every = {**_options(sampler, DRAW_ACCEPTANCE_EVERY), **sampler.draws_options()}
        self.friction = float(sampler.options.get("friction", 1.0)) if sampler.name == "sghmc" else 1.0
        self.cost = sampler.with_options(**self.warm_every).evaluations_per_step
        self.draw_cost = sampler.with_options(**self.draw_every).evaluations_per_step
        self.reserve = self.budget // 5 if self.auto_step and sampler.name != "mala" else 0  # for the bias check
        self.budget_draws = self.budget - self.reserve
        self.max_warmup = self.budget // 2 if self.auto_burnin else int(settings.num_burnin_steps)
        self.min_warmup = min(MIN_WARMUP, self.max_warmup) if self.auto_burnin else self.max_warmup
        self.step_sizes: list[float] = []
        self.measure_noise = self.auto_step and not self.exact
        self.monitor = noise.NoiseMonitor(settings.seed, nbeta, init_loss)
        self.noise_cap = math.inf
        self.remedies = self.restarts = self.reductions = 0
        self.ceiling = math.inf
        self.windows: list[dict[str, np.ndarray]] = []
        self.timed: tuple[int, bool] | None = None  # the (batch size, control variate) whose cost was announced

    def friction_option(self) -> dict[str, float]:
        """The auto sampler's current friction, as a sampler option."""
        return {"friction": self.friction} if self.momentum else {}

    def friction_for(self, llc: float) -> tuple[float, float]:
        """The friction (:func:`lambdahat.noise.choose_friction`) for the noise at the chains' points
        now, and the cap on ε the noise sets (∞ below friction 1)."""
        level = self.monitor.level(self.chains)
        chosen = noise.choose_friction(noise.noise_bias(self.step, self.nbeta, level), llc)
        return (chosen, math.inf) if chosen < 1.0 else (1.0, noise.step_cap(llc, self.nbeta, level))

    def spend(self, records: dict[str, np.ndarray], per_step: float) -> None:
        self.log.gradient_evaluations += int(round(records["loss"].shape[1] * per_step))

    def advance(self, steps: int, step_size: float, options: dict[str, Any]) -> dict[str, np.ndarray]:
        """Draw-time steps (the draws, a settling stretch, the bias segment), their cost spent."""
        records = self.chains.advance(steps, step_size, options=options, bar=self.bar)
        self.spend(records, self.draw_cost)
        return records

    def windows_until_settled(self, steps_min: int, steps_max: int) -> float:
        """Adapt ε window by window until the acceptance and the loss level have settled; the windows
        are left in ``self.windows`` and the mean acceptance of the last three is returned."""
        chains, log = self.chains, self.log
        done, self.windows = 0, []
        while done < steps_max:
            length = min(WINDOW, steps_max - done)
            began = time.perf_counter()
            records = chains.advance(length, self.step, options={**self.warm_every, **self.friction_option()},
                                     bar=self.bar)
            gradient = (chains.job.batch_size, chains.job.control_variate is not None)
            if chains.steps == length and gradient != self.timed:  # the first window, and each after a noise remedy
                self.timed = gradient
                announce_cost(self.bar, (time.perf_counter() - began) / length, self.budget, len(chains.chains),
                              chains.job)
            self.spend(records, self.cost)
            if not stopping.finite(records) and self.auto_step and log.discarded_steps + chains.steps < self.budget:
                log.discarded_steps += chains.steps
                log.notes.append(f"a chain diverged at ε = {self.step:.3g} during the warm-up: every chain restarted "
                                 "from w* at ε / 10")
                self.restarts += 1
                if self.restarts > MAX_FREE_RESTARTS:  # diverging again and again: never climb back to where it broke
                    self.ceiling = min(self.ceiling, self.step / 2)
                chains.reset()
                self.step_sizes.clear()
                self.step /= 10
                done, self.windows = 0, []
                continue
            self.step_sizes.extend([self.step] * length)
            done += length
            self.windows.append(records)
            # the running λ̂ of the last windows sets the target and the noise cap
            running = running_llc(self.windows, self.nbeta, self.init_loss)
            if not self.exact and math.isfinite(running):
                self.target = health.acceptance_target(running)
            if self.measure_noise and len(self.windows) % NOISE_EVERY == 1:
                if self.momentum:  # the noise sets the friction; it caps ε only once the friction is 1 (SGLD)
                    self.friction, self.noise_cap = self.friction_for(running)
                else:
                    self.noise_cap = self.monitor.cap(chains, running, self.friction)
            if self.auto_step:
                self.step = min(self.step * stopping.step_factor(stopping.acceptance(records), self.target),
                                self.ceiling, self.noise_cap)
            capped = self.auto_step and self.step >= self.noise_cap
            if done >= steps_min and stopping.settled(self.windows, self.target if self.auto_step else None,
                                                      self.init_loss, self.nbeta, capped):
                break
        recent = [a for a in (stopping.acceptance(r) for r in self.windows[-3:]) if math.isfinite(a)]
        return float(np.mean(recent)) if recent else float("nan")

    def run(self) -> None:
        """Steps 1–2 of :mod:`lambdahat.adapt`: the step size (restarting where a noise remedy pays
        for itself), then the localisation, then (SGHMC) the draws' friction and its settling
        steps; the phase, settling included, is added to the log."""
        self.chains.probe_active = False  # all burn-in: no probe evaluations
        if self.bar is not None:
            self.bar.set_description("warm-up")
        while True:
            acceptance = self.windows_until_settled(self.min_warmup, self.max_warmup)
            if self._remedied(acceptance):
                continue
            if not self.auto_gamma or self.reductions >= MAX_GAMMA_REDUCTIONS or not self.windows:
                break
            if not self._lowered_gamma():
                break
        if self.momentum:
            self.freeze_friction()
        self.log.phases.append(dict(name="warm-up", steps=self.chains.steps, step_size=self.step,
                                    localization=self.gamma, acceptance=acceptance))

    def remedied_in_draws(self, acceptance: float) -> bool:
        """After the first block of draws, :meth:`_remedied` on their acceptance and, where it
        restarted the chains, the whole warm-up again (:meth:`run`); True when it did.

        The warm-up judges the acceptance on its last three windows, a few hundred recorded
        proposals whose rejection rate is near 0.001 (on a noisy regression of 6 weights: 0.9968
        there, 0.9991 over the draws that followed, which allow 3.7 times the capped ε where the
        warm-up saw 1.6 times), so the draws' first block is the better judge. A chain held far
        below the ε its acceptance allows mixes as many times more slowly."""
        if not self._remedied(acceptance, judged_on="the first draws"):
            return False
        for phase in self.log.phases:  # thrown away with the chains: not part of this run's burn-in
            if phase["name"] == "warm-up":
                phase["name"] = "discarded warm-up"
        self.run()
        return True

    def _remedied(self, acceptance: float, judged_on: str = "the warm-up") -> bool:
        """Where the acceptance (over ``judged_on``) would allow a larger ε than the noise does,
        remove noise (a larger batch, the control variate) and restart from w*; True when it did."""
        if self.remedies >= MAX_NOISE_REMEDIES or self.step < self.noise_cap or not math.isfinite(acceptance):
            return False
        chains, monitor = self.chains, self.monitor
        wanted = self.step * max(1.0, stopping.rejection_ratio(acceptance, self.target) ** (-2.0 / 3.0))
        change = monitor.remedy(chains, wanted, self.noise_cap, auto_batch=self.auto_batch,
                                auto_cv=self.settings.control_variate == AUTO)
        if change is None:
            return False
        self.remedies += 1
        what = (f"batch_size raised from {chains.job.batch_size} to {change['batch_size']}" if "batch_size" in change
                else f"the control-variate gradient switched on (noise {monitor.recent(1):.3g} against "
                     f"{monitor.recent(0):.3g})")
        self.log.notes.append(f"minibatch gradient noise capped ε at {self.noise_cap:.3g} where the acceptance of "
                              f"{judged_on} ({acceptance:.4f}) allowed about {wanted:.3g}: {what}, and the warm-up "
                              "restarted from w*")
        self.log.discarded_steps += chains.steps
        self.chains = _rebuilt(chains, self.gamma, self.settings.paired_loss == AUTO, **change)
        self.log.chain_mode = self.chains.mode
        self.step_sizes.clear()
        self.noise_cap = math.inf
        return True

    def _lowered_gamma(self) -> bool:
        """While the localisation check's statistics on the warm-up's last half say the prior, not the
        loss, confines the chains, γ ÷ 10 and restart from w*; True when it did."""
        half = self.windows[len(self.windows) // 2:]
        share, elasticity = stopping.prior_statistics_of(half, self.gamma, self.nbeta, self.num_params, self.init_loss)
        if not health.localization_too_tight(share, elasticity):
            return False
        self.log.notes.append(
            f"γ = {self.gamma:g} confined the warm-up chains (prior share {share:.0%}, ∂ log λ̂ / ∂ log γ = "
            f"{elasticity:.2f}): γ lowered to {self.gamma / 10:g} and the warm-up restarted from w*")
        self.log.discarded_steps += self.chains.steps
        self.gamma /= 10
        self.reductions += 1
        self.chains.reset()
        self.chains.restart(self.gamma)
        self.step_sizes.clear()
        return True

    def resume(self) -> None:
        """The warm-up again, after the draws' acceptance left its band: the draws so far and the
        resumed warm-up (with its settling, under momentum) become one more warm-up phase."""
        if self.bar is not None:
            self.bar.set_description("warm-up (resumed)")
        self.chains.probe_active = False
        acceptance = self.windows_until_settled(
            MIN_WARMUP // 2, min(self.max_warmup, self.budget_draws - self.chains.steps - MIN_DRAWS))
        if self.momentum:
            self.freeze_friction()
        self.log.phases.append(dict(name="warm-up", steps=self.chains.steps - self.log.warmup_steps, step_size=self.step,
                                    localization=self.gamma, acceptance=acceptance))

    def freeze_friction(self) -> None:
        """Fix the draws' friction for the noise at the warm-up's end and let the velocity settle."""
        self.friction = self.friction_for(running_llc(self.windows, self.nbeta, self.init_loss))[0]
        self.draw_every = {**self.draw_every, "friction": self.friction}
        settle = min(math.ceil(SETTLE_DAMPING_TIMES / self.friction),
                     max(0, self.budget_draws - self.chains.steps - MIN_DRAWS)) \
            if self.auto_burnin else 0  # a given burn-in is kept as given
        if settle:
            self.advance(settle, self.step, self.draw_every)
            self.step_sizes.extend([self.step] * settle)


def running_llc(windows: list[dict[str, np.ndarray]], nbeta: float, init_loss: float) -> float:
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
