"""The hot loop: one chain, or a (K, d) stack of chains, stepped ``num_steps`` times.

It stores per-step quantities into preallocated device tensors and synchronises with the host
only every ``check_every`` steps, to look for divergence and update the progress bar: one forward
and backward per step (two with a proposal check or the paired loss's forward at w*), nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import DataSource

__all__ = ["step_chains", "stacked_batches", "forked_rng", "forked"]


def stacked_batches(data: DataSource, orders):
    """Endless batches shaped (K, B, ...): row k is chain k's next minibatch."""
    while True:
        yield data.batch(torch.stack([next(order) for order in orders]))


def forked_rng(device: torch.device):
    """``torch.random.fork_rng`` for ``device``: the global CPU generator (and this CUDA device's)
    restored on exit, so that a forward in between leaves a chain's randomness as it was."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def forked(anchor: Callable[[Any], Tensor], device: torch.device) -> Callable[[Any], Tensor]:
    def forked(batch: Any) -> Tensor:
        with forked_rng(device):
            return anchor(batch)

    return forked


def step_chains(sampler, state, start: Tensor, batches, generator, num_steps: int, check_every: int, bar, probe=None,
          anchor=None):
    """Step one chain (params of shape (d,)) or a stack (shape (K, d)) ``num_steps`` times from
    ``state``, or from a fresh state at ``start`` when ``state`` is None; return the final state,
    per-step records as float64 arrays shaped (K, num_steps) (K = 1 for one chain), and each
    chain's first non-finite step (None if none). ``probe``: ({step: row}, record), and
    ``record(row, params)`` is called after each of those steps (the probe hook). ``anchor``:
    (batch -> L_B(w*), L_n(w*)): record each step's ``anchor_loss`` and make ``loss`` the paired
    L_B(w) − L_B(w*) + L_n(w*), in float64."""
    device = start.device
    stacked = start.dim() == 2
    shape = (start.shape[0], num_steps) if stacked else (num_steps,)
    per_step: dict[str, Tensor] = {}
    first_bad = np.full(shape[:-1] or (1,), -1)
    done = 0
    while done < num_steps and (first_bad < 0).any():
        stop = min(done + check_every, num_steps)
        for t in range(done, stop):
            batch = next(batches)
            if state is None:  # init sees the first step's batch (MALA evaluates its start point on it)
                state = sampler.init(start, batch)
            state, info = sampler.step(state, batch, generator)
            if probe is not None and t in probe[0]:
                probe[1](probe[0][t], state.params)
            values = dict(zip(info._fields, info))
            if anchor is not None:
                values["anchor_loss"] = anchor[0](batch).expand_as(info.loss)
            for name, value in values.items():
                if name not in per_step:
                    per_step[name] = torch.full(shape, float("nan"), device=device, dtype=value.dtype)
                per_step[name][..., t] = value
        chunk = per_step["loss"][..., done:stop].reshape(len(first_bad), -1)
        bad = ~torch.isfinite(chunk)
        if bool(bad.any()):
            for k in bad.any(dim=1).nonzero().flatten().tolist():
                if first_bad[k] < 0:
                    first_bad[k] = done + int(bad[k].nonzero()[0])
                    for values in per_step.values():
                        values.view(len(first_bad), -1)[k, first_bad[k] :] = float("nan")
        if bar is not None:
            bar.update((stop - done) * len(first_bad))
        done = stop
    if bar is not None:
        bar.update((num_steps - done) * len(first_bad))
    records = {name: values.double().cpu().numpy() for name, values in per_step.items()}
    if anchor is not None:
        records["loss"] = records["loss"] - records["anchor_loss"] + anchor[1]
    if not stacked:
        records = {name: values[None] for name, values in records.items()}
    bad_steps = [int(s) if s >= 0 else None for s in first_bad]
    return state, records, (bad_steps if any(s is not None for s in bad_steps) else None)


