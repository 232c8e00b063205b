"""The result of an LLC estimate: λ̂ with its Monte Carlo error, its verdict and its record.

λ̂ = nβ (E_w[L_n(w)] − L_n(w*)) (Lau, Furman, Wang, Murfet, Wei, "The Local Learning
Coefficient: A Singularity-Aware Complexity Measure", arXiv 2308.12108), from the post-burn-in
losses of a :class:`~lambdahat.trace.Trace`; :func:`lambdahat.estimate_llc` builds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import diagnostics, health
from .adapt import Adaptation
from .descent import Descent
from .nbeta_rung import NBETA_FACTOR, Comparison, NbetaRung, compare
from .settings import Settings
from .tables import number
from .trace import Trace

__all__ = ["LLCResult", "llc_from_trace"]


@dataclass
class LLCResult:
    """An LLC estimate with its uncertainty, its verdict and everything that produced it.

    - ``llc_mean``: mean of the per-chain estimates over the chains that did not diverge.
    - ``llc_std``: the standard deviation of one chain's estimate: across chains (ddof = 1) when
      two or more chains are healthy, else the single chain's own Monte Carlo standard error.
    - ``llc_mcse``: Monte Carlo standard error of ``llc_mean``: nβ · sd(L) / √ESS over all healthy
      draws (ESS of the mean; Vehtari et al. 2021), or, when larger, the between-chain standard
      error ``llc_std`` / √(healthy chains). The ESS route trusts every chain to have mixed; the
      white minibatch noise of unpaired losses inflates it, and chains that settle in different
      places show up only between chains.
    - ``llc_per_chain``: λ̂_c per chain, NaN for a diverged chain.
    - ``init_loss``: L_n(w*), on all n samples, in eval mode.
    - ``diverged``: {chain: first step with a non-finite loss}.
    - ``settings``: the :class:`~lambdahat.settings.Settings` that ran, every ``"auto"`` replaced by
      the value chosen; ``estimate_llc(other, data, loss, **result.settings)`` runs at the same.
    - ``adaptation``: what the warm-up chose and why (None when no setting was ``"auto"``).
    - ``checks``: the health checks of :mod:`lambdahat.health`, computed once; ``certified`` is
      true only when every one passed.
    - ``gradient_evaluations``: loss-and-gradient evaluations of all chains together, warm-up, bias
      check and the run at 4nβ included (a MALA acceptance check on a step costs one more).
    - ``nbeta_rung``: the same estimate at 4nβ (:class:`~lambdahat.nbeta_rung.NbetaRung`; None when
      not measured), judged by the ``nbeta`` check; :meth:`nbeta_comparison` states the change.
    - ``lowered_from``: the nβ the call started at (n / log n) when λ̂ fell with nβ there and the
      estimate moved to nβ / 4 (:mod:`lambdahat.nbeta_rung`, "Lowering nβ"); ``nbeta_rung`` is then
      the run at that first nβ and ``fall_rung`` its own run at 4nβ, the one that showed the fall.
      None when the estimate stayed where it started. ``fall_rung`` is None when the descent showed
      the fall first.
    - ``descent``: how far w* sits above a nearby minimum, nβ (L_n(w*) − L_n(ŵ)), measured by a
      deterministic descent from w* and from the chains' last points at the first nβ
      (:class:`~lambdahat.descent.Descent`); where it guarantees a fall of λ̂ from nβ to 4nβ, the
      run at 4nβ is not made. None when not measured (a given nβ, a probe, no nβ check).
    """

    llc_mean: float
    llc_std: float
    llc_mcse: float
    llc_per_chain: np.ndarray
    init_loss: float
    nbeta: float
    trace: Trace
    settings: Settings
    num_params: int
    diverged: dict[int, int] = field(default_factory=dict)
    ess: float = float("nan")
    wall_time: float = float("nan")
    adaptation: Adaptation | None = None
    gradient_evaluations: int = 0
    checks: tuple[health.Check, ...] = ()
    nbeta_rung: NbetaRung | None = None
    lowered_from: float | None = None
    fall_rung: NbetaRung | None = None
    descent: Descent | None = None

    @classmethod
    def from_trace(cls, trace: Trace, init_loss: float, nbeta: float, settings: Settings, num_params: int,
                   **extra: Any) -> LLCResult:
        """λ̂, its error and the health checks of a Trace (computed once, stored on the result)."""
        result = cls(init_loss=init_loss, nbeta=nbeta, trace=trace, settings=settings, num_params=num_params,
                     **extra, **llc_from_trace(trace, init_loss, nbeta))
        result.checks = tuple(health.check_health(result))
        return result

    @property
    def config(self) -> dict[str, Any]:
        """Every setting and derived number as JSON-ready values (what ``Trace.save`` stores)."""
        return self.trace.config

    @property
    def certified(self) -> bool:
        """True only when every health check passed (see :attr:`checks`)."""
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def healthy(self) -> bool:
        """The same as :attr:`certified` (the older name)."""
        return self.certified

    def nbeta_comparison(self) -> Comparison | None:
        """λ̂ here against λ̂ at 4nβ, and the λ the change implies (:func:`lambdahat.nbeta_rung.compare`)."""
        if self.nbeta_rung is None:
            return None
        return compare(self.llc_mean, self.llc_mcse, self.nbeta, self.nbeta_rung)

    def burnin_at(self, step_size: float) -> int:
        """The burn-in a fixed run at ``step_size`` needs for its chains to travel from w* as far as
        this run's did (:meth:`lambdahat.adapt.Adaptation.burnin_at`), and never fewer steps than ran."""
        ran = self.settings.num_burnin_steps
        travel = self.adaptation.burnin_at(step_size) if self.adaptation is not None else None
        return ran if travel is None else max(ran, travel)

    def fixed_settings(self) -> Settings:
        """``settings`` as one fixed setting for another model or checkpoint: the same ε, γ, nβ,
        sampler, batch and draws, with the burn-in :meth:`burnin_at` ε (the warm-up's early steps
        are larger than the final ε, so the burn-in steps that ran are too few at ε). ``settings``
        itself when that is the burn-in that ran (as when no setting was adapted)."""
        fixed = self.burnin_at(self.settings.step_size)
        if fixed == self.settings.num_burnin_steps:
            return self.settings
        return self.settings.replace(num_burnin_steps=fixed)

    @property
    def ess_per_gradient(self) -> float:
        """Effective draws per loss-and-gradient evaluation: the work-normalised efficiency."""
        return self.ess / self.gradient_evaluations if self.gradient_evaluations else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """The numbers, verdicts and settings as plain JSON-ready values (no arrays of draws;
        save ``trace`` for those). Non-finite numbers become None."""
        return dict(
            llc_mean=number(self.llc_mean),
            llc_std=number(self.llc_std),
            llc_mcse=number(self.llc_mcse),
            llc_per_chain=[number(v) for v in self.llc_per_chain],
            init_loss=number(self.init_loss),
            nbeta=self.nbeta,
            ess=number(self.ess),
            diverged={str(c): s for c, s in self.diverged.items()},
            certified=self.certified,
            healthy=self.certified,
            checks=[dict(name=c.name, ok=c.ok, skipped=c.skipped, verdict=c.verdict) for c in self.checks],
            bias=number(self.adaptation.bias) if self.adaptation and self.adaptation.bias is not None else None,
            adaptation=self.adaptation.to_dict() if self.adaptation else None,
            nbeta_rung=self.nbeta_rung.to_dict() if self.nbeta_rung else None,
            lowered_from=self.lowered_from,
            fall_rung=self.fall_rung.to_dict() if self.fall_rung else None,
            descent=self.descent.to_dict() if self.descent else None,
            gradient_evaluations=self.gradient_evaluations,
            wall_time=number(self.wall_time),
            settings=self.settings.to_dict(),
            config=self.config,
        )

    def running_llc(self) -> np.ndarray:
        """λ̂ after each post-burn-in draw, per chain: nβ (cumulative mean of L − L_n(w*))."""
        losses = self.trace.draws("loss")
        counts = np.arange(1, losses.shape[1] + 1)
        return self.nbeta * (np.cumsum(losses, axis=1) / counts - self.init_loss)

    def __str__(self) -> str:
        cfg, st = self.config, self.settings
        healthy = len(self.llc_per_chain) - len(self.diverged)
        if healthy == 0:
            head = "LLC estimate: none — every chain diverged"
        else:
            head = (
                f"LLC estimate λ̂ = {self.llc_mean:.4g} ± {self.llc_mcse:.2g} (MCSE); "
                f"std of a chain's estimate {self.llc_std:.3g}"
            )
        failing = [check for check in self.checks if not check.ok]
        if self.certified:
            verdict = f"  CERTIFIED: every health check passed ({', '.join(c.name for c in self.checks if not c.skipped)})"
        else:
            verdict = (f"  NOT CERTIFIED: {len(failing)} of {len(self.checks)} checks failed "
                       f"({', '.join(c.name for c in failing)}); do not trust this number as it stands")
        sampler = st.sampler if isinstance(st.sampler, str) else st.sampler.name
        lines = [
            head,
            verdict,
            "  per chain: " + ", ".join("diverged" if math.isnan(v) else f"{v:.4g}" for v in self.llc_per_chain),
            f"  L_n(w*) = {self.init_loss:.6g} on {cfg.get('init_loss_samples', '?')} samples; nβ = {self.nbeta:.6g}"
            + (" (n / log n)" if cfg.get("nbeta_default") else ""),
            f"  sampler {sampler}{_options_text(cfg.get('sampler_options'))}: step_size {st.step_size:.4g}, "
            f"localization {st.localization:g}, {st.num_chains} chains × {st.num_draws} draws after "
            f"{st.num_burnin_steps} burn-in steps, batch {st.batch_size}, {self.num_params} sampled weights, seed {st.seed}",
            f"  effective sample size {self.ess:.0f}; {self.gradient_evaluations} gradient evaluations"
            + (f"; {self.wall_time:.1f} s" if math.isfinite(self.wall_time) else ""),
        ]
        if self.adaptation is not None:
            lines.append("  chosen by the warm-up: " + "; ".join(self.adaptation.notes) + ".")
            if self.adaptation.bias is not None and math.isfinite(self.adaptation.bias):
                lines.append(f"  step-size bias, measured by halving ε: {self.adaptation.bias:+.3g} ± "
                             f"{self.adaptation.bias_mcse:.2g}")
        if self.lowered_from is not None:
            first, fall = self.nbeta_rung, self.fall_rung
            there = f"there (nβ = {first.nbeta:.6g}) λ̂ = {first.llc:.4g} ± {first.mcse:.2g}"
            seen = (f"{there} fell to {fall.llc:.4g} ± {fall.mcse:.2g} at 4nβ" if fall is not None else
                    f"{there}, and a descent from w* found nβ (L_n(w*) − L_n) = {self.descent.fall:.3g}, so λ̂ "
                    f"would fall by about {(NBETA_FACTOR - 1) * self.descent.fall:.3g} from nβ to 4nβ (that run "
                    "was not needed)")
            lines.append(f"  nβ lowered to a quarter of n / log n: {seen}; w* sits above a nearby minimum of L_n and "
                         "λ̂ carries −nβ (L_n(w*) − L_min), four times smaller here")
        comparison = self.nbeta_comparison()
        if comparison is not None:
            rung = self.nbeta_rung
            lines.append(f"  at 4nβ = {rung.nbeta:.6g}: λ̂ = {rung.llc:.4g} ± {rung.mcse:.2g} ("
                         + (f"that run failed {', '.join(rung.failed)}: no conclusion" if rung.failed else
                            comparison.kind if comparison.kind == "flat" else
                            f"{comparison.kind}; the λ it implies: {comparison.implied:.4g} ± {comparison.implied_se:.2g}")
                         + ")")
        if self.diverged:
            where = ", ".join(f"chain {c} at step {s}" for c, s in self.diverged.items())
            rest = f"the mean is over the other {healthy}" if healthy else "there is no estimate"
            lines.append(
                f"  WARNING: {len(self.diverged)} chain(s) diverged ({where}); {rest}. "
                "Lower step_size, or raise localization."
            )
        # divergence already has its WARNING line above
        lines += [f"  - {c.name}: {c.verdict}" for c in failing if c.name != "divergence"]
        return "\n".join(lines)


def _options_text(options: dict[str, Any] | None) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""


def llc_from_trace(trace: Trace, init_loss: float, nbeta: float) -> dict[str, Any]:
    """λ̂ per chain (NaN for a diverged chain), and over the healthy chains their mean, spread and
    Monte Carlo standard error (:func:`lambdahat.diagnostics.llc_statistics`), from a Trace."""
    losses = trace.draws("loss")
    per_chain = nbeta * (losses.mean(axis=1) - init_loss)
    healthy, diverged = trace.healthy_chains, trace.diverged
    if not healthy:
        nan = float("nan")
        return dict(llc_mean=nan, llc_std=nan, llc_mcse=nan, llc_per_chain=per_chain, diverged=diverged, ess=0.0)
    return dict(**diagnostics.llc_statistics(losses[healthy], init_loss, nbeta), llc_per_chain=per_chain,
                diverged=diverged)
