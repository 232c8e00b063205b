"""Susceptibilities of model components to the probe samples, from restricted runs and one full run.

Baker, Wang, Hoogland, Pathak, Murfet, "Structural Inference: Interpreting Small Language Models with
Susceptibilities", arXiv 2504.18274 (App. C.4); Elliott & Murfet, "Susceptibilities and Patterning",
arXiv 2605.07980.

**The quantity.** Up-weight a probe sample z in the data: L_h(w) = L_n(w) + h (ℓ_z(w) − L_n(w)),
the posterior p_h(w) ∝ exp(−nβ L_h(w) − (γ/2)‖w − w*‖²). For an observable φ the linear response is
d/dh E_h[φ] at h = 0 = −nβ Cov_p(φ, ΔL_z), ΔL_z = ℓ_z − L_n (fluctuation–dissipation), and the
susceptibility is that derivative over nβ: χ(z) = −Cov_p(φ, ΔL_z). The observable of a component C
(a weight restriction: the weights u of C move, the others v stay at v*) is
φ_C(w) = δ(v − v*) (L_n(w) − L_n(w*)), whose expectation is (up to a constant) the mean loss rise of
the restricted posterior p_C(u) ∝ exp(−nβ L_n(u, v*) − (γ/2)‖u − u*‖²), i.e. its weight-refined LLC
over nβ (Wang et al., arXiv 2410.02984). Because of the δ, E_p[φ_C X] = (Z_C / Z) E_C[(L_n − L_n(w*)) X]
for any X, while E_p[ΔL_z] stays an expectation over the full posterior, so

    χ_C(z) = −( E_C[φ ΔL_z] − E_C[φ] · E_full[ΔL_z] ),   φ(w) = L̄(w) − L̄(w*),   ΔL_z(w) = ℓ_z(w) − L̄(w),

with the positive normaliser Z_C / Z dropped (devinterp's implementation of App. C.4 drops it too). E_C is over a **restricted run**
(``estimate_llc(..., sampled_params=C)``: SGLD on the weights of C only, the rest frozen at w*, the
same nβ, γ, step and chain length) and E_full over one **full run** of every weight. L̄ is the mean
per-sample loss over a fixed reference set of the sampling data (``reference`` samples spread
evenly over ``data``; all of it by default up to 512 samples), evaluated with the probe at every
probed draw, so that φ and ΔL use the same L̄, and L̄(w*) on it once at w* (eval mode). Estimates
are sample means over the probed draws of the chains that did not diverge, pooled. Per token
(``per_token=True``, a loss with a ``per_token`` form such as :func:`lambdahat.losses.next_token`),
ℓ_z is the loss of one position of one sequence, giving an (m, T) table per component; L̄ is then
the mean over the reference's sequences and positions.

Reading it: χ_C(z) < 0 when, under the posterior, ℓ_z − L̄ rises with the loss of C, so that
up-weighting z lowers E[φ_C] to first order (d/dh E_h[φ_C] = nβ χ_C); χ_C(z) > 0 the other way. The
mean of χ_C over the samples of a distribution q' is the susceptibility to shifting the data toward
q' (ΔL is linear in the perturbation). No nβ factor: nβ χ is the derivative.

If the full run's means equal the restricted run's (E_full[ΔL] = E_C[ΔL]), χ_C(z) = −Cov_C(L̄, ΔL_z).

**Standard error.** χ̂ = −mean_C[u], u_t = φ_t (ΔL_t − m), m = mean_full[ΔL]; by the delta method
Var(χ̂) ≈ Var(mean_C[u]) + mean_C[φ]² Var(m), each variance by batch means (10 consecutive blocks
per chain), the runs being independent (run k draws from seed + k + 1; the full run from seed).

**devinterp.** devinterp's ``susceptibilities`` / ``compute_susceptibilities``
(``src/devinterp/slt/susceptibilities.py`` of timaeus-research/devinterp, read in its source; that
it is the code released as 2.0.1 was not confirmed) computes
sus = E_C[φ L̄] − E_C[φ ℓ] − E_C[φ] (E_full[L̄] − E_full[ℓ]) with φ = L̄_C − L0: the same sign and
scale (no nβ) as here, since that is −(E_C[φ ΔL] − E_C[φ] E_full[ΔL]). Its conventions differ:
``weight_restrictions`` must hold a ``"full"`` entry (None), here the full run is always made and
``components`` holds only the restrictions; its L̄ is the per-token loss of a fixed subset of the
``sampling_task`` observable (batch_size × batches_per_draw sequences), here the ``reference`` subset
of ``data``; its L0 is the full run's ``init_loss`` (the mean of ``num_init_loss_batches`` random
minibatches at w*, in train mode), here L̄(w*) on the reference itself, so φ(w*) = 0 exactly; its
result is per token, (batch, target_position) per observable and restriction, here per sample unless
``per_token=True``; its ``lr`` is ε here, and its default ``localization`` is 0 (γ = 1 or adapted
here); its chains see the same batches (``match_sampling_input_ids_across_chains``) and every
restriction's run the same ``init_seed``, here each chain has its own batches and each run its own
seed. With the same draws, reference set and L0 the two give the same numbers.

**Cost.** 1 + K runs of ``estimate_llc`` for K components (the restricted ones at the full run's
settings, which the warm-up chooses when they are left ``"auto"``), each evaluating m + R probe and
reference losses per probed draw and chain (R = ``reference`` samples).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .data import DataSource, as_data_source, followed_by
from .estimate import LLCResult, estimate_llc
from .losses import make_per_sample_loss, make_per_token_loss
from .observables import check_compatible, check_store
from .probe_estimates import healthy_moments, moments_susceptibility, reference_weights
from .potential import check_masks, select_params
from .settings import Settings

__all__ = ["susceptibilities", "SusceptibilityResult", "susceptibility_from_runs"]

#: Reference samples (for L̄) by default: all of ``data`` up to this many, else this many spread evenly.
DEFAULT_REFERENCE = 512

#: Batch-means blocks per chain for the standard error.
BLOCKS = 10


@dataclass
class SusceptibilityResult:
    """χ_C of every probe sample (and token) for every component: see :mod:`lambdahat.susceptibility`.

    ``values[k, i]`` (``[k, i, t]`` per token) is χ of component ``components[k]`` for probe sample i
    (position t); ``stderr`` its Monte Carlo standard error; ``runs[name]`` the restricted run of each
    component (its ``llc_mean`` is the weight-refined LLC) and ``full`` the full run.
    """

    values: np.ndarray
    stderr: np.ndarray
    components: list[str]
    full: LLCResult
    runs: dict[str, LLCResult]
    per_token: bool
    reference_size: int
    reference_loss: float
    settings: Settings = field(repr=False)

    @property
    def nbeta(self) -> float:
        return float(self.full.nbeta)

    def __getitem__(self, component: str) -> np.ndarray:
        """The row of one component: (m,) or (m, T)."""
        if component not in self.components:
            raise KeyError(f"{component!r} is not a component here; components are {self.components}.")
        return self.values[self.components.index(component)]

    @property
    def columns(self) -> list[str]:
        return ["component", "sample", *(["token"] if self.per_token else []), "susceptibility", "stderr"]

    def rows(self) -> list[dict[str, Any]]:
        """One row per (component, sample[, token]): the long table behind :meth:`to_frame` and :meth:`write_csv`."""
        out = []
        for k, name in enumerate(self.components):
            for index in np.ndindex(*self.values.shape[1:]):
                row: dict[str, Any] = {"component": name, "sample": int(index[0])}
                if self.per_token:
                    row["token"] = int(index[1])
                row["susceptibility"] = float(self.values[(k, *index)])
                row["stderr"] = float(self.stderr[(k, *index)])
                out.append(row)
        return out

    def to_frame(self):
        """The long table as a ``pandas.DataFrame`` (needs pandas; :meth:`write_csv` does not)."""
        from .tables import to_dataframe

        return to_dataframe(self.rows(), self.columns)

    def write_csv(self, path: Any):
        """Write the long table to ``path`` as CSV (atomically); returns the path."""
        from .tables import write_csv

        return write_csv(path, self.rows(), self.columns)

    def plot(self, ax: Any = None, **kwargs: Any):
        """Heatmap of components × probe samples (:func:`lambdahat.plot.plot_susceptibilities`)."""
        from .plot import plot_susceptibilities

        return plot_susceptibilities(self, ax=ax, **kwargs)

    def __str__(self) -> str:
        shape = "×".join(str(s) for s in self.values.shape[1:])
        lines = [f"susceptibilities χ_C: {len(self.components)} component(s) × {shape} probe "
                 f"{'(sample, token)' if self.per_token else 'samples'}; nβ = {self.nbeta:.4g}, "
                 f"L̄ over {self.reference_size} reference samples"]
        for k, name in enumerate(self.components):
            row, se = self.values[k], self.stderr[k]
            lines.append(f"  {name}: χ from {np.nanmin(row):+.4g} to {np.nanmax(row):+.4g} "
                         f"(median stderr {np.nanmedian(se):.2g}); refined λ̂ {self.runs[name].llc_mean:.4g}")
        return "\n".join(lines)


def susceptibilities(
    model: nn.Module,
    data: Any,
    loss_fn: Callable[..., Tensor],
    components: Mapping[str, Any],
    probe: Any,
    *,
    per_token: bool = False,
    reference: int | None = DEFAULT_REFERENCE,
    probe_every: int = 1,
    probe_batch_size: int | None = None,
    probe_store: str = "raw",
    progress: bool = True,
    **settings: Any,
) -> SusceptibilityResult:
    """The susceptibility χ_C(z) of each component C to each probe sample z (Baker et al., arXiv
    2504.18274, App. C.4):

        χ_C(z) = −( E_C[φ ΔL_z] − E_C[φ] · E_full[ΔL_z] ),  φ = L̄ − L̄(w*),  ΔL_z = ℓ_z − L̄,

    E_C over the restricted run of C (only its weights sampled, the rest at w*), E_full over one full
    run; the derivation, the reference loss L̄ and the relation to devinterp are in
    :mod:`lambdahat.susceptibility`.

    Args:
        model, data, loss_fn: as for :func:`lambdahat.estimate_llc`; the loss needs a per-sample
            form (a per-token one with ``per_token=True``), see :mod:`lambdahat.losses`.
        components: ``{name: restriction}``, each restriction what ``sampled_params`` accepts: a list
            of parameter names or submodule prefixes, or ``{parameter name: boolean mask}``
            (``lh.component(model, "layer 0 head 1")``, ``lh.components(model, "head")``).
        probe: the probe samples z, in the form of ``data``.
        per_token: χ per position of each probe sequence, (K, m, T).
        reference: how many samples of ``data`` (spread evenly) make the reference set of L̄; None:
            all of them. Default: all up to 512.
        probe_every, probe_batch_size: as for ``estimate_llc``: evaluate probe and reference after
            every k-th draw, in chunks of this many samples.
        probe_store: ``"raw"``: every run keeps its probed rows; ``"moments"``: streaming moments
            (:mod:`lambdahat.probe_moments`) with one weight query, the reference loss L̄, kept per
            batch-means block, so memory does not grow with the draws: per chain 11 × 3 × (m + R)
            float64 sums. The same χ̂ and standard errors to rounding at fixed settings.
        progress: progress bars of the runs.
        **settings: the settings of the full run (:class:`lambdahat.settings.Settings`); those left
            ``"auto"`` are chosen by its warm-up, and the restricted runs run at the full run's
            resolved settings, component k with ``seed + k + 1``.

    Cost: 1 + K runs, each with m + R losses per probed draw and chain.
    """
    if "sampled_params" in settings:
        raise ValueError("sampled_params: susceptibilities sets the restriction of each run itself; give the "
                         "restrictions as components={name: sampled_params}.")
    checked = Settings.from_mapping(settings, where="susceptibilities")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    specs = _checked_components(model, components)
    if probe is None:
        raise ValueError("probe: susceptibilities needs probe samples (in the form of data), whose χ it computes.")
    if not isinstance(per_token, bool):
        raise ValueError(f"per_token must be True or False, got {per_token!r}.")
    source = as_data_source(data)
    try:
        probe_source = as_data_source(probe)
    except (TypeError, ValueError) as err:
        raise ValueError(f"probe: {err}") from None
    check_compatible(probe_source, source)
    index = _reference_indices(source.n, reference)
    combined = followed_by(probe_source, source, index)
    m = probe_source.n
    check_store(probe_store, None)
    store = {} if probe_store == "raw" else {"probe_store": "moments", "probe_queries": reference_weights(m, len(index))}
    try:  # read item by item, a probe sample of another shape first fails when batched with the data's
        combined.batch(torch.tensor([0, m]))
    except Exception as err:
        raise ValueError(f"probe: its samples cannot be batched with the data's ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:300]}); give probe in the form of data, with samples of the "
                         "same shape.") from None

    full = estimate_llc(model, data, loss_fn, probe=combined, probe_every=probe_every,
                        probe_batch_size=probe_batch_size, probe_per_token=per_token, progress=progress, **store,
                        **settings)
    fixed = full.settings
    reference_loss = _reference_loss(model, loss_fn, source, index, per_token, checked.init_loss_batch_size)
    runs = {}
    for k, (name, spec) in enumerate(specs.items()):
        runs[name] = estimate_llc(model, data, loss_fn, probe=combined, probe_every=probe_every,
                                  probe_batch_size=probe_batch_size, probe_per_token=per_token, progress=progress,
                                  sampled_params=spec, **store, **{**fixed, "seed": fixed.seed + k + 1})
    values, errors = [], []
    for name, run in runs.items():
        if store:
            chi, se = moments_susceptibility(*healthy_moments(run.trace, f"components[{name!r}]", "χ"),
                                             *healthy_moments(full.trace, "the full run", "χ"), m, reference_loss)
        else:
            chi, se = susceptibility_from_runs(_probe_rows(run, f"components[{name!r}]"),
                                               _probe_rows(full, "the full run"), m, reference_loss)
        values.append(chi)
        errors.append(se)
    return SusceptibilityResult(values=np.stack(values), stderr=np.stack(errors), components=list(specs), full=full,
                                runs=runs, per_token=per_token, reference_size=len(index),
                                reference_loss=reference_loss, settings=fixed)


def susceptibility_from_runs(restricted: np.ndarray, full: np.ndarray, m: int,
                             reference_loss: float) -> tuple[np.ndarray, np.ndarray]:
    """χ̂ and its standard error from the probe rows of a restricted and a full run.

    ``restricted``, ``full``: (chain, draw, m + R[, T]) losses, the m probe samples first and then
    the R reference samples; ``reference_loss`` = L̄(w*). Returns (χ̂, stderr), each (m[, T]):
    χ̂ = −(mean_C[φ ΔL] − mean_C[φ] mean_full[ΔL]) as in :mod:`lambdahat.susceptibility`.
    """
    phi_c, delta_c = _split(restricted, m, reference_loss)
    _, delta_f = _split(full, m, reference_loss)
    mean_delta = delta_f.mean(axis=(0, 1))
    extra = (None,) * (delta_c.ndim - 2)
    u = phi_c[(..., *extra)] * (delta_c - mean_delta)
    chi = -u.mean(axis=(0, 1))
    se = np.sqrt(_batch_means_var(u) + float(phi_c.mean()) ** 2 * _batch_means_var(delta_f))
    return chi, se


def _split(rows: np.ndarray, m: int, reference_loss: float) -> tuple[np.ndarray, np.ndarray]:
    """φ = L̄ − L̄(w*), shape (chain, draw), and ΔL = ℓ − L̄, shape (chain, draw, m[, T])."""
    probe, ref = rows[:, :, :m], rows[:, :, m:]
    mean_ref = ref.reshape(*ref.shape[:2], -1).mean(axis=2)
    extra = (None,) * (probe.ndim - 2)
    return mean_ref - reference_loss, probe - mean_ref[(..., *extra)]


def _batch_means_var(x: np.ndarray) -> np.ndarray:
    """Variance of the pooled mean of x (chain, draw, ...) by batch means: BLOCKS consecutive blocks per chain."""
    chains, draws = x.shape[:2]
    blocks = max(1, min(BLOCKS, draws // 2))
    usable = draws // blocks * blocks
    means = x[:, :usable].reshape(chains, blocks, usable // blocks, *x.shape[2:]).mean(axis=2)
    means = means.reshape(chains * blocks, *x.shape[2:])
    if len(means) < 2:
        return np.full(x.shape[2:], np.nan)
    return means.var(axis=0, ddof=1) / len(means)


def _probe_rows(result: LLCResult, which: str) -> np.ndarray:
    trace = result.trace
    healthy = trace.healthy_chains
    if not healthy:
        raise ValueError(f"{which}: every chain diverged, so there are no posterior draws; lower step_size or raise "
                         "localization.")
    rows = np.asarray(trace.probe, dtype=np.float64)[healthy]
    if rows.shape[1] < 2:
        raise ValueError(f"{which}: {rows.shape[1]} probed draw(s); χ needs at least 2 (more draws, or a smaller "
                         "probe_every).")
    return rows


def _checked_components(model: nn.Module, components: Any) -> dict[str, Any]:
    """``components`` checked before any sampling: a non-empty mapping of names to restrictions that
    each select at least one weight."""
    if not isinstance(components, Mapping):
        raise TypeError(f"components must be a mapping {{name: sampled_params}} (a list of parameter names or "
                        f"{{name: boolean mask}}, e.g. lh.components(model, 'head')), got {type(components).__name__}.")
    if not components:
        raise ValueError("components is empty: give at least one {name: restriction}, e.g. "
                         "lh.components(model, 'head') or {'first layer': ['0']}.")
    checked = {}
    for name, spec in components.items():
        if not isinstance(name, str):
            raise TypeError(f"components: names must be strings, got {name!r}.")
        if spec is None:
            raise ValueError(f"components[{name!r}] is None; the full run is always made, give only restrictions "
                             "(a list of parameter names or {name: boolean mask}).")
        try:
            if isinstance(spec, Mapping):
                check_masks(model, spec)
            else:
                select_params(model, spec)
        except (TypeError, ValueError) as err:
            text = re.sub(r"^sampled_params(\[[^\]]*\])?:?\s*", "", str(err))
            raise ValueError(f"components[{name!r}] matches no weight of the model as given: {text}") from None
        checked[name] = spec
    return checked


def _reference_indices(n: int, reference: int | None) -> Tensor:
    if reference is None:
        return torch.arange(n)
    if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)) or reference < 1:
        raise ValueError(f"reference must be a positive number of samples of data, or None for all of it; "
                         f"got {reference!r}.")
    if reference >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, int(reference)).round().long().unique()


def _reference_loss(model: nn.Module, loss_fn: Callable[..., Tensor], data: DataSource, index: Tensor,
                    per_token: bool, chunk: int) -> float:
    """L̄(w*): the mean loss of the reference samples at the model's weights, in eval mode (with the
    same per-sample or per-token form as the probe rows)."""
    per = make_per_token_loss(model, loss_fn) if per_token else make_per_sample_loss(model, loss_fn)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    source = data.to(device)
    tensors = {name: p.detach() for name, p in model.named_parameters()}
    modes = {module: module.training for module in model.modules()}
    total, count = 0.0, 0
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(index), chunk):
                values = per(tensors, source.batch(index[start:start + chunk])).double()
                total += float(values.sum())
                count += values.numel()
    finally:
        for module, mode in modes.items():
            module.training = mode
    value = total / count
    if not math.isfinite(value):
        raise ValueError(f"loss_fn is not finite at w* on the reference samples (L̄(w*) = {value}).")
    return value
