"""Sampler chains: what one chain needs (:class:`ChainJob`) and chains that advance segment by
segment keeping their state (:class:`ChainSet`); :mod:`lambdahat.runs` runs them in one go.

Each chain c draws its noise and its batch order from its own generators, seeded from
(seed, c) alone, so a chain's result does not depend on how many chains run, in what order,
whether they are stepped one after another or together, or on which machine of an executor.

Three ways to run the same chains:

- ``"sequential"``: one chain after another, in this process.
- ``"vectorized"``: all chains as one (K, d) state, the loss and gradient of every chain in one
  ``torch.func.vmap`` call (each chain on its own minibatch). For small models this replaces K
  small calls by one larger one. Not for models sampled in train mode (dropout and BatchNorm
  draw from and write to state that vmap would share between chains).
- on an executor (``concurrent.futures.Executor``: a process pool, ``dask.distributed``'s
  ``Client.get_executor()``, …): one task per chain, each rebuilding the potential from the
  pickled model, data and loss.

The hot loop itself is :func:`lambdahat.loop.step_chains`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from .data import DataSource
from .loop import forked, forked_rng, step_chains, stacked_batches
from .noise import control_variate
from .potential import LocalizedPotential, Potential
from .samplers import SamplerConfig
from .settings import CHAIN_MODES

if TYPE_CHECKING:
    from .observables import Probe

__all__ = ["ChainJob", "ChainSet", "chain_seeds", "progress_enabled", "CHAIN_MODES"]


ChainRecord = tuple[dict[str, np.ndarray], int | None]  # per-step arrays, first divergent step


def progress_enabled(progress: bool) -> bool:
    """Show a progress bar only when asked and someone can see it: a terminal or a notebook
    (bars written into a log file or a pipe are noise)."""
    if not progress:
        return False
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)()) or "ipykernel" in sys.modules


def chain_seeds(seed: int, chain: int) -> tuple[int, int, int]:
    """Three independent 63-bit seeds (noise, batch order, model randomness such as dropout in
    train mode) for chain ``chain`` of run ``seed``."""
    states = np.random.SeedSequence([seed, chain]).generate_state(3, dtype=np.uint64)
    return tuple(int(s) >> 1 for s in states)


@dataclass
class ChainJob:
    """Everything one chain needs, picklable, so that a chain can run in another process."""

    model: nn.Module
    loss_fn: Callable[..., Tensor]
    sampled_names: Sequence[str]
    masks: Mapping[str, Tensor] | None
    data: DataSource
    sampler: SamplerConfig
    step_size: float
    nbeta: float
    localization: float
    num_steps: int
    batch_size: int
    seed: int
    #: the first steps of ``num_steps`` that are burn-in (the draws' steps may be built differently:
    #: :meth:`lambdahat.samplers.SamplerConfig.draws_options`)
    num_burnin_steps: int = 0
    check_every: int = 100
    #: (L_n(w*), ∇L_n(w*)): sample with the control-variate gradient of :func:`lambdahat.noise.control_variate`
    control_variate: tuple[float, Tensor] | None = None
    #: L_n(w*): record the paired loss L_B(w) − L_B(w*) + L_n(w*) of :mod:`lambdahat.noise` as ``loss``
    #: (the chain is unchanged; the batch loss at w* is recorded as ``anchor_loss``). Moot with the
    #: control variate, whose loss is paired already.
    paired_loss: float | None = None
    #: per-sample losses of a probe set, evaluated while sampling (:class:`lambdahat.observables.Probe`)
    probe: Probe | None = None
    _potential: Potential | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_potential": None}  # rebuilt where the job runs

    @property
    def potential(self) -> Potential:
        if self._potential is None:
            self._potential = Potential(self.model, self.loss_fn, self.sampled_names, self.masks)
        return self._potential

    @property
    def shared_batch(self) -> bool:
        """Every step sees the full data, so chains can share one batch."""
        return self.batch_size >= self.data.n

    def run(self, chain: int, bar=None) -> ChainRecord:
        """Chain ``chain`` on its own, all ``num_steps`` steps at the job's settings."""
        chains = ChainSet(self, [chain], "sequential")
        self._advance(chains, bar)
        records, bad = chains.records()
        return {name: values[0] for name, values in records.items()}, bad[0]

    def run_stacked(self, chains: Sequence[int], bar=None) -> list[ChainRecord]:
        """Chains ``chains`` together as one (K, d) state, each with its own generators."""
        stacked = ChainSet(self, chains, "vectorized")
        self._advance(stacked, bar)
        records, bad = stacked.records()
        return [({name: values[k] for name, values in records.items()}, bad[k]) for k in range(len(chains))]

    def _advance(self, chains: ChainSet, bar) -> None:
        """All ``num_steps`` steps. Where the sampler has draws options (RMSProp-SGLD's frozen
        preconditioner), the first half of the burn-in runs without them and everything after with
        them, so that the chain relaxes under the frozen sampler's exact law before the draws; one
        segment otherwise."""
        frozen = self.sampler.draws_options()
        adapting = min(self.num_burnin_steps, self.num_steps) // 2
        if frozen and adapting:
            chains.advance(adapting, self.step_size, bar=bar)
            chains.advance(self.num_steps - adapting, self.step_size, options=frozen, bar=bar)
        else:
            chains.advance(self.num_steps, self.step_size, bar=bar)

    def check_stacked(self) -> str | None:
        """Try one vectorised loss-and-gradient call; the reason it fails, or None."""
        try:
            idx = torch.arange(min(self.batch_size, self.data.n))
            batch = self.data.batch(idx) if self.shared_batch else self.data.batch(torch.stack([idx, idx]))
            w = self.potential.w_star.expand(2, -1)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                loss, grad = self.potential.stacked_loss_and_grad(self.shared_batch)(w, batch)
            slow = [str(w.message) for w in caught if "batching rule" in str(w.message)]
            if slow:  # vmap would loop over the chains in Python: no faster than sequential
                return "an operation has no vmap batching rule: " + slow[0].split(". ")[0]
            single, _ = self.potential.loss_and_grad(self.potential.w_star, self.data.batch(idx))
            if loss.shape != (2,) or grad.shape != w.shape or not torch.allclose(loss[0], single, rtol=1e-4, atol=1e-6):
                return "the vectorised loss does not match the loss of one chain"
        except Exception as err:  # any failure means: run the chains one after another instead
            return f"{type(err).__name__}: {err}".splitlines()[0][:300]
        return None


class ChainSet:
    """Chains of one job that advance segment by segment, keeping their state in between.

    Each chain's noise, batch order and model randomness come from (seed, chain) alone and
    continue from one segment to the next, so a run split into segments at fixed settings is
    bit-identical to one long segment. Between segments the step size (and, with
    :meth:`restart`, the localisation) may change: that is how the warm-up of
    :mod:`lambdahat.adapt` adapts, and the draws after it run at frozen settings.
    ``mode`` is ``"sequential"`` (one chain after another) or ``"vectorized"`` (one (K, d) state).

    With ``job.probe`` (:class:`lambdahat.observables.Probe`), every kept segment also evaluates
    the probe's per-sample losses at the chains' points after the probe's scheduled steps (the step
    numbers count kept steps, as ``steps`` does); :meth:`records` returns them as ``"probe"``
    (chain, row, sample) and ``"probe_step"`` (chain, row). ``probe_active = False`` skips the
    probe in the segments that follow (a warm-up, whose rows would be dropped as burn-in anyway).
    With ``probe.store == "moments"`` each row is folded into streaming moments instead
    (:mod:`lambdahat.probe_moments`), one set per kept segment, returned as ``"probe_partial_*"`` records.
    """

    def __init__(self, job: ChainJob, chains: Sequence[int], mode: str):
        self.job, self.mode, self.chains = job, mode, list(chains)
        w_star = job.potential.w_star
        device = w_star.device
        seeds = [chain_seeds(job.seed, c) for c in self.chains]
        self.localization = job.localization
        self._segments: list[dict[str, np.ndarray]] = []
        self.first_bad: list[int | None] = [None] * len(self.chains)
        self.steps = 0
        self.keep = True  # False: segments are run and returned but not recorded (a side measurement)
        if mode == "vectorized":
            self._noise = [[torch.Generator(device=device).manual_seed(s[0]) for s in seeds]]
            if job.shared_batch:
                self._batches = [job.data.minibatches(job.batch_size, torch.Generator())]
            else:
                orders = [job.data.minibatch_indices(job.batch_size, torch.Generator().manual_seed(s[1])) for s in seeds]
                self._batches = [stacked_batches(job.data, orders)]
            self._loss_and_grad = job.potential.stacked_loss_and_grad(job.shared_batch)
            self._starts = [w_star.expand(len(self.chains), -1)]
            self._rng = [None]
        else:
            self._noise = [torch.Generator(device=device).manual_seed(s[0]) for s in seeds]
            self._batches = [job.data.minibatches(job.batch_size, torch.Generator().manual_seed(s[1])) for s in seeds]
            self._loss_and_grad = job.potential.loss_and_grad
            self._starts = [w_star] * len(self.chains)
            self._rng = [("seed", s[2]) for s in seeds]  # the model's own RNG (dropout), per chain
        if job.control_variate is not None:
            self._loss_and_grad = control_variate(self._loss_and_grad, w_star, *job.control_variate)
        # the paired loss: (batch -> L_B(w*), L_n(w*)), or None
        self._anchor = None
        if job.paired_loss is not None and job.control_variate is None:
            anchor = job.potential.anchor_loss(mode == "vectorized" and not job.shared_batch)
            if any(module.training for module in job.model.modules()):  # dropout at w* leaves the chain's randomness alone
                anchor = forked(anchor, device)
            self._anchor = (anchor, job.paired_loss)
        self._states: list[Any] = [None] * len(self._starts)
        # the probe hook: per kept segment, (steps probed, per-sample losses (chain, row, sample))
        self._probe_losses = job.probe.evaluator(job.potential, job.model, job.loss_fn) if job.probe else None
        self._probe_segments: list[tuple[np.ndarray, Any]] = []
        self._moments = None  # probe_store="moments": one streaming accumulator per chain group
        if job.probe is not None and job.probe.store == "moments":
            from .probe_moments import StreamingMoments

            probe = job.probe
            self._moments = [StreamingMoments(w.shape[0] if w.dim() == 2 else 1, probe.size, probe.query_rows,
                                              probe.moment_weights, device,
                                              all_rows=probe.queries is None and probe.weights is None)
                             for w in self._starts]
        # False: kept segments are not probed (a warm-up whose rows would be dropped as burn-in anyway)
        self.probe_active = True

    def positions(self) -> Tensor:
        """Every chain's current point, (chain, d) (w* for a chain that has not stepped yet)."""
        rows = [start if state is None else state.params for state, start in zip(self._states, self._starts)]
        return torch.cat([w.reshape(-1, w.shape[-1]) for w in rows])

    def restart(self, localization: float) -> None:
        """Send every chain back to w* (its generators continue), with a new localisation."""
        self.localization = localization
        self._states = [None] * len(self._starts)

    def reset(self) -> None:
        """Send every chain back to w* and forget every record so far (a warm-up that starts
        over); the generators continue."""
        self._states = [None] * len(self._starts)
        self._segments.clear()
        self._probe_segments.clear()
        self.first_bad = [None] * len(self.chains)
        self.steps = 0

    def advance(self, num_steps: int, step_size: float, *, options: Mapping[str, Any] | None = None, bar=None) -> dict[str, np.ndarray]:
        """Run every chain ``num_steps`` more steps at ``step_size``; return this segment's records,
        float64 arrays shaped (chain, step). A chain that diverged stays NaN from its first
        non-finite step on."""
        job = self.job
        potential = LocalizedPotential(self._loss_and_grad, job.potential.w_star, job.nbeta, self.localization)
        sampler = job.sampler.with_options(**dict(options or {})).build(potential, step_size=step_size)
        device = job.potential.w_star.device
        probing = self._probe_losses is not None and self.keep and self.probe_active
        probed = job.probe.schedule(self.steps, num_steps) if probing else None
        probe_rows: list[Tensor | None] = []
        rows = []
        for i in range(len(self._starts)):
            probe_rows.append(None)
            if self.mode != "vectorized" and self.first_bad[i] is not None and self._segments:
                names = self._segments[-1].keys()  # a diverged chain is not stepped again
                rows.append(({name: np.full((1, num_steps), np.nan) for name in names}, None))
                continue
            hook = None
            if probed is not None and len(probed):
                probe_rows[i], hook = self._probe_hook(i, probed)
            with forked_rng(device):
                rng = self._rng[i]
                if isinstance(rng, tuple):
                    torch.manual_seed(rng[1])
                elif rng is not None:
                    torch.set_rng_state(rng)
                state, records, bad = step_chains(
                    sampler, self._states[i], self._starts[i], self._batches[i], self._noise[i], num_steps, job.check_every, bar,
                    hook, self._anchor,
                )
                if rng is not None:
                    self._rng[i] = torch.get_rng_state()
            self._states[i] = state
            rows.append((records, bad))
        if self.mode == "vectorized":
            records, bad = rows[0]
        else:
            records = {name: np.concatenate([r[name] for r, _ in rows]) for name in rows[0][0]}
            bad = [b[0] if b is not None else None for _, b in rows]
            bad = bad if any(b is not None for b in bad) else None
        first_bad = list(self.first_bad)
        if bad is not None:
            for k, step in enumerate(bad):
                if step is not None and first_bad[k] is None:
                    first_bad[k] = self.steps + step
        for k, step in enumerate(first_bad):  # a chain that diverged earlier stays diverged
            if step is not None and step < self.steps + num_steps:
                for values in records.values():
                    values[k, max(0, step - self.steps):] = np.nan
        if self.keep:
            if probed is not None:
                self._probe_segments.append(self._probe_segment(probe_rows, probed, first_bad))
            self.first_bad = first_bad
            self._segments.append(records)
            self.steps += num_steps
        return records

    def _probe_hook(self, i: int, probed: np.ndarray) -> tuple[Any, tuple[dict[int, int], Callable]]:
        """Chain group i's probe buffer (chain, row, sample), NaN until filled, or its streaming
        moments, and the hook of :func:`step_chains` that stores row r, the probe's losses after step
        ``probed[r]``, in it."""
        w_star = self.job.potential.w_star
        width = self._starts[i].shape[0] if self._starts[i].dim() == 2 else 1
        device = w_star.device
        if self._moments is not None:  # streaming: each row folded into the group's moments as it comes
            rows = self._moments[i]
            rows.begin(len(probed))
            keep = rows.add
        else:
            rows = torch.full((width, len(probed), self.job.probe.size), float("nan"), device=device, dtype=w_star.dtype)

            def keep(row: int, losses: Tensor) -> None:
                rows[:, row] = losses

        def record(row: int, params: Tensor) -> None:
            # forked: a stochastic forward (dropout in train mode) leaves the chain's own randomness as it was
            with forked_rng(device):
                keep(row, self._probe_losses(params).reshape(width, -1))

        return rows, ({int(t): r for r, t in enumerate(probed)}, record)

    def _probe_segment(self, probe_rows: list[Tensor | None], probed: np.ndarray,
                       first_bad: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
        """This segment's probe rows as (global steps, losses (chain, row, sample)); NaN for a
        chain from its first non-finite step on."""
        m = self.job.probe.size
        if self._moments is not None:  # (steps, moments with a leading chain axis); a skipped group's are NaN
            groups = [rows.end() if rows is not None else self._moments[i].skipped(len(probed))
                      for i, rows in enumerate(probe_rows)]
            return self.steps + probed, {name: np.concatenate([g[name] for g in groups]) for name in groups[0]}
        parts = []
        for i, rows in enumerate(probe_rows):
            if rows is None:
                width = self._starts[i].shape[0] if self._starts[i].dim() == 2 else 1
                parts.append(np.full((width, len(probed), m), np.nan))
            else:
                parts.append(rows.cpu().numpy())
        values = np.concatenate(parts)
        steps = self.steps + probed
        for k, step in enumerate(first_bad):
            if step is not None:
                values[k, steps >= step] = np.nan
        return steps, values

    def probe_records(self) -> tuple[np.ndarray, np.ndarray]:
        """Every kept probe row: the per-sample losses (chain, row, sample) and the step after
        which each row was evaluated, broadcast to (chain, row)."""
        m, k = self.job.probe.size, len(self.chains)
        steps = np.concatenate([s for s, _ in self._probe_segments]) if self._probe_segments else np.zeros(0, np.int64)
        values = (np.concatenate([v for _, v in self._probe_segments], axis=1) if self._probe_segments
                  else np.zeros((k, 0, m)))
        return values, np.broadcast_to(steps, (k, len(steps))).copy()

    def recorded(self, name: str) -> np.ndarray:
        """Every recorded step of ``name`` so far, shaped (chain, step)."""
        return np.concatenate([seg[name] for seg in self._segments], axis=1)

    def records(self) -> tuple[dict[str, np.ndarray], list[int | None]]:
        """Every step of every segment, shaped (chain, step), and each chain's first bad step."""
        records = {name: self.recorded(name) for name in self._segments[0]}
        if self._moments is not None:  # per-segment moments; Trace merges them into Trace.probe_moments
            from .probe_moments import partial_records

            shift = np.concatenate([moments.shift_array() for moments in self._moments])
            records.update(partial_records(self._probe_segments, shift, self.job.probe.moment_weights))
        elif self._probe_losses is not None:  # the probe hook's rows; Trace moves them to Trace.probe
            records["probe"], records["probe_step"] = self.probe_records()
        return records, list(self.first_bad)
