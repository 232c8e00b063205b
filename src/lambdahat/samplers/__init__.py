"""Samplers of the localised tempered posterior, one module each.

Every sampler targets p(w) ∝ exp(−U(w)) for the localised potential
U(w) = nβ L_B(w) + (γ/2)‖w − w*‖² of :class:`lambdahat.potential.LocalizedPotential`, which
alone forms U and ∇U; nβ, γ and w* are the potential's, so a sampler works for any potential with
that interface (``nbeta``, ``localization``, ``w_star``, and called as ``potential(w, batch)``,
returning the batch loss, U, ∇U and ‖w − w*‖ per chain). Every sampler is built and used the same way::

    sampler = SAMPLERS[name](potential, step_size=ε, **options)   # or SamplerConfig(...).build
    state = sampler.init(w, batch)            # batch: the first step's (only MALA looks at it)
    state, info = sampler.step(state, batch, generator)

``w`` is flat, shaped (d,) for one chain or (K, d) for K chains stepped together (then
``generator`` is a sequence of K generators). ``info`` is a small NamedTuple of per-chain
tensors; ``info.loss`` is the batch loss at the state *before* the step (free: it is computed
for the gradient anyway, and unbiased for L_n(w_t)).

The one rule on buffers: ``init`` copies ``w``; ``step`` may overwrite any tensor of the state
it is given (it updates ``state.params`` in place) and of the potential's value (∇U is built in
the loss gradient's buffer), and returns the new state. Keep no reference to an old state.

| name           | what it is                                    | options                      |
|----------------|-----------------------------------------------|------------------------------|
| ``sgld``         | SGLD (Welling & Teh 2011)                      | acceptance_every             |
| ``rmsprop_sgld`` | RMSProp-preconditioned SGLD (Li et al. 2016)   | alpha, eps, adapt, acceptance_every |
| ``sghmc``        | SG Hamiltonian MC (Chen et al. 2014)           | friction, acceptance_every   |
| ``sgnht``        | SG Nosé–Hoover thermostat (Ding et al. 2014)   | diffusion                    |
| ``mala``         | Metropolis-adjusted Langevin, full batch, exact | —                            |
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from . import mala, rmsprop_sgld, sghmc, sgld, sgnht

if TYPE_CHECKING:
    from ..potential import LocalizedPotential

__all__ = ["Sampler", "SamplerConfig", "SAMPLERS", "as_sampler_config", "sgld", "rmsprop_sgld", "sghmc", "sgnht", "mala"]


class Sampler(NamedTuple):
    """``init(params, batch) -> state`` and ``step(state, batch, generator) -> (state, info)``."""

    init: Callable[[Any, Any], Any]
    step: Callable[[Any, Any, Any], tuple[Any, Any]]


SAMPLERS = {
    "sgld": sgld.build,
    "rmsprop_sgld": rmsprop_sgld.build,
    "sghmc": sghmc.build,
    "sgnht": sgnht.build,
    "mala": mala.build,
}

FULL_BATCH = frozenset({"mala"})  # exact only when every step sees the whole data


class SamplerConfig:
    """A sampler by name with its own settings, e.g. ``SamplerConfig("sghmc", friction=0.05)``.

    Pass it as ``estimate_llc(..., sampler=SamplerConfig(...))``; a plain name is the same with
    the sampler's default settings. The step size, nβ and γ are the run's, not the sampler's.
    """

    def __init__(self, name: str, **options: Any):
        if name not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}.")
        allowed = _options_of(SAMPLERS[name])
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"sampler {name!r} has no option(s) {unknown}; its options are {sorted(allowed) or 'none'}."
            )
        self.name = name
        self._options = {**allowed, **options}
        SAMPLERS[name](_OPTIONS_CHECK, step_size=1.0, **self._options)  # each option's value checked now, before any work

    @property
    def options(self) -> MappingProxyType:
        """Every option of the sampler, defaults included (read-only)."""
        return MappingProxyType(self._options)

    def with_options(self, **options: Any) -> SamplerConfig:
        """The same sampler with some options changed."""
        return SamplerConfig(self.name, **{**self._options, **options}) if options else self

    @property
    def evaluations_per_step(self) -> float:
        """Loss-and-gradient evaluations per step: one (MALA carries the current point's in its
        state), plus one on every ``acceptance_every``-th step for the SGLD-type samplers' check."""
        every = self._options.get("acceptance_every", 0)
        return 1.0 + (1.0 / every if every else 0.0)

    def draws_options(self) -> dict[str, Any]:
        """The options the frozen steps are built with, on top of these: RMSProp-SGLD with
        ``adapt="burnin"`` freezes its preconditioner (``adapt="never"``) from halfway through a
        fixed run's burn-in (:meth:`lambdahat.chains.ChainJob.run`) and for an adaptive run's
        draws; nothing for the others."""
        return {"adapt": "never"} if self._options.get("adapt") == "burnin" else {}

    @property
    def full_batch(self) -> bool:
        """Whether the sampler must see the full data every step (MALA)."""
        return self.name in FULL_BATCH

    def build(self, potential: LocalizedPotential, *, step_size: float) -> Sampler:
        """The sampler with these options, for ``potential`` at ``step_size``."""
        return SAMPLERS[self.name](potential, step_size=step_size, **self.options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SamplerConfig) and (self.name, dict(self.options)) == (other.name, dict(other.options))

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.options.items()))))

    def __repr__(self) -> str:
        settings = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"SamplerConfig({self.name!r}{settings})"


class _OptionsCheck(NamedTuple):
    """A stand-in potential: building a sampler against it runs the builder's checks of its
    options (builders read nothing else of the potential until a step)."""

    nbeta: float = 1.0
    localization: float = 0.0


_OPTIONS_CHECK = _OptionsCheck()


def as_sampler_config(sampler: str | SamplerConfig) -> SamplerConfig:
    """A name or a SamplerConfig, as a SamplerConfig."""
    if isinstance(sampler, SamplerConfig):
        return sampler
    if isinstance(sampler, str):
        return SamplerConfig(sampler)
    raise TypeError(
        f"sampler must be a name such as 'sgld' or a lambdahat.samplers.SamplerConfig, got {type(sampler).__name__}."
    )


def _options_of(build: Callable[..., Sampler]) -> dict[str, Any]:
    """A build function's sampler-specific keyword options and their defaults."""
    return {
        name: p.default
        for name, p in inspect.signature(build).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name != "step_size"
    }
