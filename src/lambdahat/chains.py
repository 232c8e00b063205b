"""Run sampler chains and collect their per-step records into a Trace.

Each chain c draws its noise and its batch order from its own generators, seeded from
(seed, c) alone, so a chain's result does not depend on how many chains run or in what order.
The hot loop stores per-step quantities into preallocated device tensors and synchronises with
the host only every ``check_every`` steps, to look for divergence and update the progress bar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import DataSource
from .trace import Trace

__all__ = ["chain_seeds", "run_chains"]


def chain_seeds(seed: int, chain: int) -> tuple[int, int, int]:
    """Three independent 63-bit seeds (noise, batch order, model randomness such as dropout in
    train mode) for chain ``chain`` of run ``seed``."""
    states = np.random.SeedSequence([seed, chain]).generate_state(3, dtype=np.uint64)
    return tuple(int(s) >> 1 for s in states)


def run_chains(
    sampler,
    w_start: Tensor,
    data: DataSource,
    *,
    num_chains: int,
    num_steps: int,
    num_burnin_steps: int,
    batch_size: int,
    seed: int,
    config: dict[str, Any],
    progress: bool = True,
    check_every: int = 100,
    on_chain_done: Callable[[int], None] | None = None,
) -> Trace:
    """Run ``num_chains`` chains of ``num_steps`` steps each from ``w_start``; return the Trace."""
    from tqdm.auto import tqdm

    device = w_start.device
    records: dict[str, list[np.ndarray]] = {}
    diverged_at: list[int | None] = []
    bar = tqdm(total=num_chains * num_steps, desc="sampling", unit="step", disable=not progress, leave=False)
    try:
        for chain in range(num_chains):
            # the model's own randomness (dropout in train mode) comes from the global RNG: fork it
            # so each chain is reproducible from (seed, chain) and the caller's RNG is left alone
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(chain_seeds(seed, chain)[2])
                trace_rows = _run_one_chain(sampler, w_start, data, chain, num_steps, batch_size, seed, check_every, bar)
            diverged_at.append(trace_rows[1])
            for name, values in trace_rows[0].items():
                records.setdefault(name, []).append(values)
            if on_chain_done is not None:
                on_chain_done(chain)
    finally:
        bar.close()
    arrays = {name: np.stack(rows) for name, rows in records.items()}
    return Trace(arrays, num_burnin_steps, diverged_at, config)


def _run_one_chain(sampler, w_start, data, chain, num_steps, batch_size, seed, check_every, bar):
    """One chain: its per-step records as float64 arrays, and its divergence step (or None)."""
    device = w_start.device
    noise_seed, batch_seed, _ = chain_seeds(seed, chain)
    noise_gen = torch.Generator(device=device).manual_seed(noise_seed)
    batch_gen = torch.Generator().manual_seed(batch_seed)
    batches = data.minibatches(batch_size, batch_gen)
    state = sampler.init(w_start)
    per_step: dict[str, Tensor] = {}
    first_bad: int | None = None
    done = 0
    while done < num_steps and first_bad is None:
        stop = min(done + check_every, num_steps)
        for t in range(done, stop):
            state, info = sampler.step(state, next(batches), noise_gen)
            for name, value in zip(info._fields, info):
                if name not in per_step:
                    per_step[name] = torch.full((num_steps,), float("nan"), device=device, dtype=value.dtype)
                per_step[name][t] = value
        chunk = per_step["loss"][done:stop]
        bad = ~torch.isfinite(chunk)
        if bool(bad.any()):
            first_bad = done + int(bad.nonzero()[0])
            for values in per_step.values():
                values[first_bad:] = float("nan")
        bar.update(stop - done)
        done = stop
    if first_bad is not None:
        bar.update(num_steps - done)
    return {name: values.double().cpu().numpy() for name, values in per_step.items()}, first_bad
