"""Every sampling setting of an LLC estimate and its default, in one place.

:class:`Settings` is the only place defaults live. :func:`~lambdahat.estimate_llc` builds one
from its keyword arguments, the result records the settings that ran (``result.settings``, with
every ``"auto"`` replaced by the value the warm-up chose), the command line derives its flags
and TOML keys from the fields here, and the trajectory cache key is computed from them.

A field whose default is ``"auto"`` is chosen by the adaptive warm-up of
:mod:`lambdahat.adapt`; any value the user gives is kept as given. ``Settings`` behaves like a
read-only mapping, so ``estimate_llc(other_model, data, loss, **result.settings)`` runs another
model at exactly the setting the first one ended with (the way to compare models at one
setting).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .tables import plain

__all__ = ["AUTO", "Settings", "CHAIN_MODES", "parse_setting", "default_max_steps"]

AUTO = "auto"
CHAIN_MODES = ("auto", "sequential", "vectorized")


def _help(text: str, cli: str = "float") -> dict[str, str]:
    return {"help": text, "cli": cli}


@dataclass(frozen=True)
class Settings:
    """The settings of one LLC estimate (Lau et al., arXiv 2308.12108).

    Sampling targets p(w) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²) with SGLD,
    w ← w − (ε/2) [nβ ∇L_B(w) + γ (w − w*)] + √ε ξ, and λ̂ = nβ (E[L_n(w)] − L_n(w*)).
    ``"auto"`` fields are chosen by the warm-up (see :mod:`lambdahat.adapt`).
    """

    step_size: float | str = field(default=AUTO, metadata=_help(
        "ε, the SGLD step size and noise variance; auto: adapted in the warm-up so that the MALA acceptance of "
        "SGLD's own steps meets a bias target", "float_or_auto"))
    localization: float | str = field(default=AUTO, metadata=_help(
        "γ, the pull toward w*; auto: 1, lowered tenfold while the localization check says the prior confines "
        "the chain", "float_or_auto"))
    nbeta: float | None = field(default=None, metadata=_help(
        "nβ, inverse temperature × n; default n / log n; keep it fixed across compared models", "float"))
    num_chains: int = field(default=4, metadata=_help("independent chains", "int"))
    num_burnin_steps: int | str = field(default=AUTO, metadata=_help(
        "steps per chain before the draws, not averaged; auto: the warm-up plus a settling burn-in", "int_or_auto"))
    num_draws: int | str = field(default=AUTO, metadata=_help(
        "draws per chain after burn-in; auto: extended until the convergence, R-hat and ESS checks pass and the "
        "MCSE is within target_rel_mcse, or the step budget is spent", "int_or_auto"))
    batch_size: int | None = field(default=None, metadata=_help(
        "minibatch size; default the DataLoader's, else 256 (clipped to n), raised by the warm-up when minibatch "
        "gradient noise would otherwise bias λ̂ or force a much smaller step", "int"))
    control_variate: bool | str = field(default=AUTO, metadata=_help(
        "sample with the control-variate gradient ∇L_B(w) − ∇L_B(w*) + ∇L_n(w*) (Baker et al. 2019), which removes "
        "most minibatch noise for twice the cost of a step; auto: switched on by the warm-up when the measured "
        "minibatch noise would otherwise hold the step size down (off when the other settings are all given)",
        "bool_or_auto"))
    paired_loss: bool | str = field(default=AUTO, metadata=_help(
        "record each step's loss as L_B(w) − L_B(w*) + L_n(w*), with the same batch at w* (one more forward, no "
        "backward): the same mean as L_B(w) without the minibatch spread of the loss at w*, which dominates λ̂'s "
        "error on noisy data; auto: on when a setting is auto, batches are smaller than the data and that spread, "
        "nβ·sd(L_B(w*)), is at least 1 (the control variate's loss is paired already)", "bool_or_auto"))
    sampler: Any = field(default=AUTO, metadata=_help(
        "sgld, rmsprop_sgld, sghmc, sgnht or mala; auto: when step_size is auto, SGHMC with the smallest friction "
        "the measured minibatch noise allows (the warm-up chooses it), else sgld", "str"))
    max_steps: int | str = field(default=AUTO, metadata=_help(
        "budget of steps per chain for the auto settings (warm-up, burn-in, draws and the bias check together); "
        "auto: 40,000 up to 1,000 sampled weights, then halved with every tenfold more (20,000 at 10⁴, 10,000 at "
        "10⁵), never below 5,000 "
        "(a count of steps, not of seconds, so that a seed gives the same result on any machine)", "int_or_auto"))
    nbeta_check: bool | str = field(default=AUTO, metadata=_help(
        "measure λ̂ again at 4nβ (one more run) to see whether the value at nβ is already the learning coefficient "
        "(the nbeta health check); auto: on when nbeta is the default n / log n and a sampling setting is auto",
        "bool_or_auto"))
    target_rel_mcse: float = field(default=0.02, metadata=_help(
        "auto draws stop once the Monte Carlo standard error is at most this fraction of λ̂", "float"))
    seed: int = field(default=0, metadata=_help("the run's seed", "int"))
    chain_mode: str = field(default="auto", metadata=_help("auto, sequential or vectorized", "str"))
    train_mode: bool = field(default=False, metadata=_help("sample in train mode (dropout on)", "bool"))
    init_loss_batch_size: int = field(default=4096, metadata=_help("batch size for L_n(w*) on the full data", "int"))
    precision: str = field(default="float32", metadata=_help(
        "float32 (the model as it is), bfloat16 or float16 (its forward and backward under torch.autocast; the weights, "
        "w − w*, the noise, the update and the losses stay float32: lambdahat.precision)", "str"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # numpy scalars as Python numbers: settings always serialise to JSON
            object.__setattr__(self, f.name, plain(getattr(self, f.name)))
        _check_positive_or_auto("step_size", self.step_size, "e.g. 1e-5, or 'auto' to adapt it")
        if self.localization != AUTO:
            if not _is_real(self.localization) or not math.isfinite(self.localization) or self.localization < 0:
                raise ValueError(f"localization must be a finite number ≥ 0 or 'auto', got {self.localization!r}.")
            if self.localization > 1e12:
                raise ValueError(f"localization={self.localization!r} is absurdly large; try 1.0, or 'auto'.")
        if self.nbeta is not None:
            _check_positive_or_auto("nbeta", self.nbeta, "pass None for n / log n, or a fixed value such as 30", auto=False)
        _check_int("num_chains", self.num_chains, 1, "run at least one chain (4 or more to judge convergence)")
        _check_int("num_burnin_steps", self.num_burnin_steps, 0, "use 0 for no burn-in, or 'auto'", auto=True)
        _check_int("num_draws", self.num_draws, 1, "the estimate needs draws after burn-in; or 'auto'", auto=True)
        if self.batch_size is not None:
            _check_int("batch_size", self.batch_size, 1, "use a positive minibatch size, e.g. 256")
        _check_int("max_steps", self.max_steps, 100, "the auto settings need a budget of at least 100 steps", auto=True)
        if not _is_real(self.target_rel_mcse) or not 0 < self.target_rel_mcse < 1:
            raise ValueError(f"target_rel_mcse must be a number in (0, 1), got {self.target_rel_mcse!r}; e.g. 0.02.")
        _check_int("seed", self.seed, 0, "use a non-negative integer seed")
        if self.chain_mode not in CHAIN_MODES:
            raise ValueError(f"chain_mode must be one of {CHAIN_MODES}, got {self.chain_mode!r}.")
        if not (isinstance(self.control_variate, bool) or self.control_variate == AUTO):
            raise ValueError(f"control_variate must be True, False or 'auto', got {self.control_variate!r}.")
        if not (isinstance(self.paired_loss, bool) or self.paired_loss == AUTO):
            raise ValueError(f"paired_loss must be True, False or 'auto', got {self.paired_loss!r}.")
        if not (isinstance(self.nbeta_check, bool) or self.nbeta_check == AUTO):
            raise ValueError(f"nbeta_check must be True, False or 'auto', got {self.nbeta_check!r}.")
        if not isinstance(self.train_mode, bool):
            raise ValueError(f"train_mode must be True or False, got {self.train_mode!r}.")
        _check_int("init_loss_batch_size", self.init_loss_batch_size, 1, "use a positive batch size")
        from .precision import precision_name

        object.__setattr__(self, "precision", precision_name(self.precision))  # a torch dtype as its name
        from .samplers import SamplerConfig, as_sampler_config

        if not isinstance(self.sampler, (str, SamplerConfig)):
            raise TypeError(
                f"sampler must be a name such as 'sgld' or a lambdahat.samplers.SamplerConfig, got {type(self.sampler).__name__}."
            )
        if self.sampler != AUTO:
            as_sampler_config(self.sampler)  # checks the name

    # --- a read-only mapping, so that **settings passes straight to estimate_llc -------------
    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]

    def __getitem__(self, name: str) -> Any:
        if name not in self.keys():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated like the original)."""
        unknown = sorted(set(changes) - set(self.keys()))
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}; settings are {self.keys()}.")
        return dataclasses.replace(self, **changes)

    @property
    def sampler_config(self):
        """The sampler that runs: ``sampler`` itself, or for ``"auto"`` SGHMC at friction 1 (the
        warm-up's, which is SGLD; :mod:`lambdahat.adapt` lowers it for the draws) when step_size is
        auto, and SGLD when it is given."""
        from .samplers import SamplerConfig, as_sampler_config

        if self.sampler != AUTO:
            return as_sampler_config(self.sampler)
        return SamplerConfig("sghmc", friction=1.0) if self.step_size == AUTO else as_sampler_config("sgld")

    @property
    def auto_fields(self) -> list[str]:
        """The fields left to the warm-up."""
        return [k for k in ("step_size", "localization", "num_burnin_steps", "num_draws") if getattr(self, k) == AUTO]

    @property
    def measures_nbeta(self) -> bool:
        """Whether the run measures λ̂ again at 4nβ (``nbeta_check``; auto: nβ default and a setting auto)."""
        if self.nbeta_check == AUTO:
            return self.nbeta is None and bool(self.auto_fields)
        return bool(self.nbeta_check)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (a SamplerConfig as {"name", **options})."""
        from .samplers import SamplerConfig

        out = {}
        for key, value in self.items():
            if isinstance(value, SamplerConfig):
                value = {"name": value.name, **dict(value.options)}
            out[key] = value
        return out

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "settings") -> Settings:
        """Build from a mapping of setting names, naming any unknown key and listing the known ones."""
        if isinstance(values, Settings):
            return values
        if not isinstance(values, Mapping):
            raise TypeError(f"{where} must be a mapping of setting names to values, got {type(values).__name__}.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TypeError(f"{where}: unknown setting(s) {unknown}; settings are {known}.")
        values = dict(values)
        sampler = values.get("sampler")
        if isinstance(sampler, Mapping):
            from .samplers import SamplerConfig

            options = dict(sampler)
            values["sampler"] = SamplerConfig(options.pop("name"), **options)
        return cls(**values)

    def __str__(self) -> str:
        def show(value: Any) -> str:
            if isinstance(value, float):
                return f"{value:.4g}"
            return str(value)

        return ", ".join(f"{k}={show(v)}" for k, v in self.items())


def default_max_steps(num_params: int) -> int:
    """The step budget ``max_steps="auto"`` means for a model of ``num_params`` sampled weights:
    40,000 up to 1,000 weights, then halved with every tenfold more (20,000 at 10⁴, 10,000 at 10⁵),
    never below 5,000, rounded to 100. A step's cost grows about in proportion to the weights, so
    the longest run at each size is that of the size bands this replaces (40k / 20k / 10k / 5k up
    to 10³ / 10⁴ / 10⁵ / beyond), without their cliffs: 1,001 weights had half the budget of 1,000."""
    if num_params <= 1_000:
        return 40_000
    return max(5_000, int(round(40_000 * (1_000 / num_params) ** math.log10(2), -2)))


def parse_setting(name: str, text: str) -> Any:
    """A command-line string as the value of setting ``name`` (by the field's ``cli`` kind)."""
    kinds = {f.name: f.metadata.get("cli", "str") for f in dataclasses.fields(Settings)}
    if name not in kinds:
        raise KeyError(name)
    kind = kinds[name]
    if kind.endswith("_or_auto") and text.strip().lower() == AUTO:
        return AUTO
    base = kind.removesuffix("_or_auto")
    try:
        if base == "float":
            return float(text)
        if base == "int":
            return int(text)
        if base == "bool":
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
    except ValueError:
        what = {"float": "a number", "int": "an integer", "bool": "true or false"}[base]
        extra = " or 'auto'" if kind.endswith("_or_auto") else ""
        raise ValueError(f"--{name.replace('_', '-')} must be {what}{extra}, got {text!r}.") from None
    return text


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive_or_auto(name: str, value: Any, hint: str, auto: bool = True) -> None:
    if auto and value == AUTO:
        return
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number{' or ' + repr(AUTO) if auto else ''}, got {value!r}; {hint}.")


def _check_int(name: str, value: Any, minimum: int, hint: str, auto: bool = False) -> None:
    if auto and value == AUTO:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}{' or ' + repr(AUTO) if auto else ''}, got {value!r}; {hint}.")
