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
   what the acceptance allows (judged at the warm-up's end, and again on the first block of
   draws, whose acceptance rests on many more proposals), an automatic batch size is raised (else
   the control-variate gradient is switched on) and the warm-up restarts from w*. The noise is
   measured again during the draws and judged by the ``noise`` health check; where it predicts more than
   ``noise.NOISE_LIMIT`` (5%) of λ̂ at the frozen ε and friction (the chains travelled where the
   noise is larger), the warm-up resumes, as it does when the draws' acceptance leaves its band.
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
5. **Halving.** Where that bias exceeds what the ``bias`` check allows (5% of λ̂ beyond two
   standard errors), ε is halved once and the draws run again at ε/2, from the segment's end
   (which ran at ε/2 and so has settled them); everything before counts as burn-in and the bias
   is measured again at the new ε. Not where the user gave the burn-in, nor where the budget
   left after the segment cannot hold as many draws again; then the check refuses the result.

A run's randomness comes only from (seed, chain), and the budget is in steps, never seconds, so
the same call gives the same result, bit for bit, on any machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import diagnostics, health, noise, stopping
from .chains import ChainSet
from .settings import Settings
from .warmup import MALA_ACCEPTANCE, MIN_DRAWS, MIN_WARMUP, WINDOW, WarmUp

__all__ = ["Adaptation", "adapt_and_sample", "WINDOW", "MALA_ACCEPTANCE"]

#: Times the draws may send the run back to the warm-up (their acceptance left its band, or their
#: measured noise predicts more than ``noise.NOISE_LIMIT`` of λ̂).
MAX_REWARMS = 3
DRAW_BLOCK = 1_000


@dataclass
class Adaptation:
    """What the warm-up chose and why.

    ``phases``: one dict per phase (``name``, ``steps``, ``step_size``, ``localization``,
    ``acceptance``); ``notes``: one sentence per auto setting saying how it got its value;
    ``bias`` and ``bias_mcse``: 2 (λ̂(ε) − λ̂(ε/2)), the step-size bias at ε by halving, and its
    standard error (None when not measured);
    ``budget_spent``: the draws stopped at ``max_steps``, not because the checks passed;
    ``gradient_evaluations``: per chain, every phase included (a proposal check costs one more,
    a noise measurement four); ``noise_bias``: the λ̂ that minibatch noise adds, predicted from the
    noise measured in the draws (None when not measured); ``chain_mode``: the mode the chains ran in;
    ``burnin_travel``: Σ_t ε_t over the burn-in since the chains last left w*, which sets how far
    they moved from it (a Langevin chain's spread along a flat direction grows like Σ_t ε_t, and
    its relaxation under γ takes Σ_t ε_t ≈ 2/γ): see :meth:`burnin_at`.
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
    burnin_travel: float | None = None

    def burnin_at(self, step_size: float) -> int | None:
        """The burn-in a fixed run at ``step_size`` needs to move its chains from w* as far as this
        run's burn-in did: ⌈Σ_t ε_t / ε⌉. The warm-up starts at ε₀ = 0.01/nβ and, on deep or
        stiff models, ends many times lower, so a fixed run from w* with the same number of
        burn-in steps travels far less (on a seen depth-5 network ε fell 30-fold, and such a
        rerun gave λ̂ 10% lower than the adaptive run's). None when not recorded."""
        if self.burnin_travel is None:
            return None
        return math.ceil(self.burnin_travel / step_size - 1e-6)  # a constant ε gives back the steps, not one more

    @property
    def warmup_steps(self) -> int:
        """Steps of every warm-up phase so far (resumed ones and SGHMC's settling included)."""
        return sum(p["steps"] for p in self.phases if p["name"] == "warm-up")

    def to_dict(self) -> dict[str, Any]:
        return dict(phases=self.phases, notes=self.notes, bias=self.bias, bias_mcse=self.bias_mcse,
                    budget_spent=self.budget_spent, gradient_evaluations=self.gradient_evaluations,
                    discarded_steps=self.discarded_steps, noise_bias=self.noise_bias,
                    burnin_travel=self.burnin_travel)


def adapt_and_sample(chains: ChainSet, settings: Settings, *, init_loss: float, nbeta: float, num_params: int,
                     auto_batch: bool = False, bar=None) -> tuple[dict[str, np.ndarray], int, list[int | None],
                                                                  Settings, Adaptation]:
    """Run ``chains`` with every auto field of ``settings`` chosen on the way (module docstring).

    ``auto_batch``: the batch size was not given, so the warm-up may raise it where minibatch
    noise would otherwise force a much smaller ε. Returns the per-step records of burn-in and
    draws (chain, step), the number of burn-in steps, each chain's first non-finite step, the
    settings with every auto field resolved, and the :class:`Adaptation` record.
    """
    log = Adaptation(chain_mode=chains.mode)
    warm = WarmUp(chains, settings, log, init_loss=init_loss, nbeta=nbeta, num_params=num_params,
                  auto_batch=auto_batch, bar=bar)
    warm.run()  # 1-2. step size, friction, noise remedies, localisation
    halved = False
    while True:
        burnin, draws, noise_level = _draws(warm, settings, rewarm=not halved)  # 3.
        num_draws = sum(r["loss"].shape[1] for r in draws)
        draw_acc = stopping.acceptance({"mala_accept": np.concatenate([r["mala_accept"] for r in draws], axis=1)}) if (
            draws and "mala_accept" in draws[0]) else float("nan")
        log.phases.append(dict(name="draws", steps=num_draws, step_size=warm.step, localization=warm.gamma,
                               acceptance=draw_acc))
        segment, draws_llc = _bias_by_halving(warm, draws, num_draws)  # 4.
        if halved or not _halve_for_bias(warm, num_draws, segment, draws_llc):
            break
        halved = True  # 5.
    log.gradient_evaluations += warm.monitor.evaluations
    log.burnin_travel = float(np.sum(warm.step_sizes[:burnin]))
    if noise_level is not None:
        log.noise_bias = noise.noise_bias(warm.step, nbeta, noise_level, warm.friction)
    _explain(warm, settings, burnin, num_draws, draw_acc, halved)

    chains = warm.chains
    records, first_bad = chains.records()
    records["step_size"] = np.broadcast_to(np.asarray(warm.step_sizes, dtype=float), records["loss"].shape).copy()
    ran = warm.sampler.with_options(**warm.draw_every) if warm.momentum else settings.sampler
    resolved = settings.replace(step_size=warm.step, localization=warm.gamma, num_burnin_steps=burnin,
                                num_draws=num_draws, max_steps=warm.budget, batch_size=chains.job.batch_size,
                                control_variate=chains.job.control_variate is not None,
                                paired_loss=chains.job.paired_loss is not None, sampler=ran)
    return records, burnin, first_bad, resolved, log


def _draws(warm: WarmUp, settings: Settings, rewarm: bool = True) -> tuple[int, list[dict[str, np.ndarray]], float | None]:
    """Step 3: draws in blocks at frozen settings until the length targets pass or the budget is
    spent; back to the warm-up if their acceptance leaves the band (unless ``rewarm`` is False: the
    warm-up would undo a step halved for bias). Returns the burn-in length, the kept draws' records
    and the mean gradient noise measured in them (None when not measured)."""
    chains, log, nbeta, init_loss = warm.chains, warm.log, warm.nbeta, warm.init_loss
    auto_draws = warm.auto_draws
    draw_floor = MIN_DRAWS if auto_draws else int(settings.num_draws)
    burnin, rewarms = chains.steps, 0
    draw_noise: list[float] = []  # measured in the draws, of the gradient in use
    chains.probe_active = True
    if warm.bar is not None:
        warm.bar.set_description("draws")
    draws: list[dict[str, np.ndarray]] = []
    while True:
        have = sum(r["loss"].shape[1] for r in draws)
        if not auto_draws:
            if have >= draw_floor:
                break
            length = draw_floor - have
        else:
            if chains.steps >= warm.budget_draws:
                log.budget_spent = True
                break
            length = min(max(DRAW_BLOCK, draw_floor - have), warm.budget_draws - chains.steps)
        records = warm.advance(length, warm.step, warm.draw_every)
        warm.step_sizes.extend([warm.step] * length)
        draws.append(records)
        if warm.measure_noise and chains.job.batch_size < chains.job.data.n:  # the chains may travel where it is larger
            draw_noise.append(warm.monitor.measure(chains))
        if len(draws) == 1 and rewarm and warm.auto_burnin and warm.remedied_in_draws(stopping.acceptance(records)):
            chains = _draws_again(warm)  # rebuilt from w* with less noise, and warmed up again
            burnin, draws, draw_noise = chains.steps, [], []
            continue
        if not auto_draws:
            continue
        healthy = [k for k, s in enumerate(chains.first_bad) if s is None]
        if not healthy:
            break
        losses = np.concatenate([r["loss"] for r in draws], axis=1)[healthy]
        why = _why_resume(warm, stopping.acceptance(records), nbeta * (float(np.nanmean(losses)) - init_loss),
                          draw_noise)
        if why and rewarm and warm.auto_step and warm.auto_burnin and rewarms < MAX_REWARMS \
                and chains.steps + MIN_WARMUP < warm.budget_draws:
            # the chains moved on into steeper or noisier ground: adapt again, and count what came before as burn-in
            rewarms += 1
            log.notes.append(f"{why}: the warm-up resumed")
            warm.resume()
            chains = _draws_again(warm)
            burnin, draws, draw_noise = chains.steps, [], []
            continue
        if losses.shape[1] < draw_floor:
            continue
        run = chains.recorded("loss")[healthy]
        verdict = stopping.draws_verdict(losses, init_loss, nbeta, settings.target_rel_mcse, run)
        if verdict == "ok":
            break
        if verdict == "moving" and warm.auto_burnin and losses.shape[1] >= 2 * MIN_DRAWS:
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
    return burnin, draws, float(np.mean(draw_noise)) if draw_noise else None


def _draws_again(warm: WarmUp) -> ChainSet:
    """The chains after a warm-up inside the draws (resumed, or rerun after a noise remedy), set to
    draw again: probed, and the progress bar says so. Everything before counts as burn-in."""
    chains = warm.chains
    chains.probe_active = True
    if warm.bar is not None:
        warm.bar.set_description("draws")
    return chains


def _why_resume(warm: WarmUp, acceptance: float, llc: float, draw_noise: list[float]) -> str | None:
    """Why the draws so far cannot stand at the frozen settings, or None: their MALA acceptance fell
    below its band (the chains reached steeper ground), or the minibatch noise measured in them
    predicts a λ̂ beyond ``noise.NOISE_LIMIT`` × λ̂ at the frozen ε and friction (the chains reached
    noisier ground, where the ``noise`` check would refuse the result)."""
    low = health.EXACT_MALA_ACCEPT_BAND[0] if warm.exact else health.acceptance_band(llc)[0]
    if math.isfinite(acceptance) and acceptance < low:
        return f"the draws' MALA acceptance fell to {acceptance:.2f} at ε = {warm.step:.3g}"
    if draw_noise and math.isfinite(llc):
        predicted = noise.noise_bias(warm.step, warm.nbeta, float(np.mean(draw_noise)), warm.friction)
        if predicted > noise.NOISE_LIMIT * abs(llc):
            return (f"the minibatch noise measured in the draws predicts {predicted:.3g} of λ̂ = {llc:.4g} "
                    f"({predicted / abs(llc):.1%}, beyond {noise.NOISE_LIMIT:.0%}) at ε = {warm.step:.3g}, friction {warm.friction:.2g}")
    return None


#: The note on a fixed rerun's burn-in appears when it needs this many times the steps that ran.
FIXED_BURNIN_NOTE = 1.5


def _explain(warm: WarmUp, settings: Settings, burnin: int, num_draws: int, draw_acc: float, halved: bool) -> None:
    """One note per auto setting: the value it got and why."""
    log, step, nbeta = warm.log, warm.step, warm.nbeta
    if warm.auto_step:
        log.notes.append(
            f"step_size ε = {step:.3g} (ε·nβ = {step * nbeta:.3g}), adapted in the warm-up so that the MALA acceptance of "
            f"the sampler's own steps approaches {warm.target:.4g}, the target at this λ̂"
            + (", then halved for the step-size bias" if halved else "") + f" (draws: {draw_acc:.4f})"
            + (f", and capped so that minibatch gradient noise adds at most {noise.NOISE_BIAS:.0%} of λ̂ "
               f"(predicted: {log.noise_bias:.3g})" if step >= warm.noise_cap and log.noise_bias is not None else "")
        )
    if warm.momentum:
        log.notes.append(
            f"sampler SGHMC with friction α = {warm.friction:.2g}: the smallest α ≥ {noise.MIN_FRICTION} (1 is SGLD) whose "
            f"minibatch-noise bias (ε/16α) nβ² E‖∇L_B₁ − ∇L_B₂‖² stays within {noise.NOISE_BIAS:.0%} of λ̂ at the "
            "warm-up's end (SGHMC moves about 1/α times further than SGLD per step along directions the loss "
            "leaves flat); the friction followed the measured noise through the warm-up")
    if warm.auto_gamma:
        log.notes.append(f"localization γ = {warm.gamma:g}" + (" (the default: the localization check passed in the warm-up)"
                                                               if warm.reductions == 0 else ""))
    if warm.auto_burnin:
        log.notes.append(f"num_burnin_steps = {burnin}: the warm-up until the acceptance and the loss level settled"
                         + (", and the draws at ε before it was halved for the step-size bias" if halved else
                            ", and draws moved to burn-in while λ̂ was still moving" if burnin > log.warmup_steps else ""))
    fixed = log.burnin_at(step)
    if fixed is not None and fixed > FIXED_BURNIN_NOTE * max(burnin, 1):
        log.notes.append(
            f"a fixed run from w* at ε = {step:.3g} moves as far as this burn-in did only after about {fixed} steps "
            f"(the warm-up's steps were larger: Σ ε_t = {log.burnin_travel:.3g} over {burnin}); "
            "result.fixed_settings() carries that burn-in, for comparing another model at this setting")
    if warm.auto_draws:
        log.notes.append(
            f"num_draws = {num_draws}: " + (f"the step budget max_steps = {warm.budget} was spent before the length targets "
                                            f"(convergence, R̂, ESS ≥ {stopping.MIN_ESS:.0f}, MCSE ≤ {settings.target_rel_mcse:.0%} of λ̂) "
                                            "were all met" if log.budget_spent else
                                            "extended in blocks until the convergence, R̂, ESS and MCSE targets passed")
        )


def _bias_by_halving(warm: WarmUp, draws: list[dict[str, np.ndarray]], num_draws: int) -> tuple[int, float]:
    """Step 4: the bias of ε by step halving, on a segment after the draws (not part of the trace).
    Returns the segment's length in steps and the draws' λ̂ (0 and NaN when it was not measured)."""
    chains, log, step, reserve = warm.chains, warm.log, warm.step, warm.reserve
    healthy = [k for k, s in enumerate(chains.first_bad) if s is None]
    if not (warm.auto_step and warm.sampler.name != "mala" and healthy and draws):
        return 0, float("nan")
    loss = np.concatenate([r["loss"] for r in draws], axis=1)[healthy]
    stats = diagnostics.llc_statistics(loss, warm.init_loss, warm.nbeta)
    if warm.bar is not None:
        warm.bar.set_description("bias check at ε/2")
    settle = min(max(2 * WINDOW, min(num_draws // 5, reserve // 4)), reserve // 2)
    measure = max(WINDOW, min(max(MIN_DRAWS, num_draws // 2), max(reserve - reserve // 4, MIN_DRAWS // 2),
                              reserve - settle))
    chains.keep = False
    try:
        warm.advance(settle, step / 2, warm.draw_every)
        records = warm.advance(measure, step / 2, warm.draw_every)
    finally:
        chains.keep = True
    half = diagnostics.llc_statistics(records["loss"][healthy], warm.init_loss, warm.nbeta)
    # linear in ε: λ̂(ε) − λ̂(ε/2) is half the bias at ε
    log.bias = 2 * (stats["llc_mean"] - half["llc_mean"])
    log.bias_mcse = 2 * math.hypot(stats["llc_mcse"], half["llc_mcse"])
    log.phases.append(dict(name="bias check", steps=settle + measure, step_size=step / 2, localization=warm.gamma,
                           acceptance=stopping.acceptance(records)))
    return settle + measure, float(stats["llc_mean"])


def _halve_for_bias(warm: WarmUp, num_draws: int, segment: int, llc: float) -> bool:
    """Step 5, the bias check turned into an action: when the bias measured at ε exceeds what the
    ``bias`` check allows, ε is halved (SGLD's bias is about linear in ε, so it halves too) and the
    draws are run again at ε / 2 after the segment, which ran at ε / 2 already and so serves to
    settle them; everything before counts as burn-in. Only with an auto burn-in (a burn-in the
    user gave is kept as given), and only when the budget left after the segment holds at least
    as many draws again. Returns whether it did."""
    log, chains = warm.log, warm.chains
    if not (segment and warm.auto_burnin and log.bias is not None
            and health.bias_beyond(log.bias, float(log.bias_mcse or 0.0), llc)):
        return False
    if chains.steps + segment + max(num_draws, MIN_DRAWS) > warm.budget_draws:
        log.notes.append(f"the step-size bias {log.bias:+.3g} ± {log.bias_mcse:.2g} at ε = {warm.step:.3g} exceeds "
                         f"{health.MAX_STEP_BIAS:.0%} of λ̂, and the step budget left no room to draw again at ε / 2")
        return False
    log.notes.append(f"the step-size bias {log.bias:+.3g} ± {log.bias_mcse:.2g} at ε = {warm.step:.3g} exceeded "
                     f"{health.MAX_STEP_BIAS:.0%} of λ̂ = {llc:.4g}: ε was halved and the draws run again "
                     "(those before became burn-in)")
    warm.budget_draws -= segment  # the segment's steps are not in chains.steps
    warm.step /= 2
    log.budget_spent = False  # the draws at ε/2 judge it afresh
    if warm.bar is not None:
        warm.bar.set_description("draws at ε/2")
    return True
