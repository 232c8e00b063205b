"""Running a job's chains at fixed settings, in one go: one after another or vectorised in this
process, or as tasks on an executor (a process pool, a Dask client's executor); the mode
``chain_mode="auto"`` chooses by a measured rule. :mod:`lambdahat.adapt` uses
:class:`~lambdahat.chains.ChainSet` directly instead, segment by segment.
"""

from __future__ import annotations

import os
import pickle
import warnings
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .chains import ChainJob, ChainRecord, progress_enabled
from .settings import CHAIN_MODES
from .trace import Trace

__all__ = ["run_chains", "choose_mode", "AUTO_VECTORIZE_MAX_PARAMS", "AUTO_VECTORIZE_MAX_WORK"]


#: "auto" vectorises K chains when the model has at most this many sampled weights and the per-step
#: work, weights × batch size, is at most AUTO_VECTORIZE_MAX_WORK. Measured for 4 chains of ReLU
#: MLPs on one CPU thread (sequential time / vectorised time): d = 417 → 2.2×, 10k → 1.4×,
#: 37k → 1.4× (batch 256); 140k → 1.1×; 543k at batch 64 → 0.63× (K copies of large weight
#: matrices no longer fit in cache).
AUTO_VECTORIZE_MAX_PARAMS = 2**16
AUTO_VECTORIZE_MAX_WORK = 2**23


def _run_chain_task(job: ChainJob | bytes, chain: int, submitter: int) -> ChainRecord:
    """An executor task: one chain, one thread per worker process (``job`` as :func:`_pickled`'s
    bytes from a process pool)."""
    if isinstance(job, bytes):
        job = pickle.loads(job)
    if os.getpid() != submitter:
        torch.set_num_threads(1)  # oversubscribed intra-op threads are 10–40× slower on shared cores
    return job.run(chain)


def choose_mode(job: ChainJob, num_chains: int, chain_mode: str, train_mode: bool) -> tuple[str, str | None]:
    """The mode to run in, and a message when a requested vectorised run falls back."""
    if chain_mode not in CHAIN_MODES:
        raise ValueError(f"chain_mode must be one of {CHAIN_MODES}, got {chain_mode!r}.")
    if chain_mode == "sequential" or num_chains == 1:
        return "sequential", None
    d = job.potential.num_params
    if chain_mode == "auto" and (d > AUTO_VECTORIZE_MAX_PARAMS or d * job.batch_size > AUTO_VECTORIZE_MAX_WORK):
        return "sequential", None
    if train_mode:
        reason = "the model is sampled in train mode (dropout/BatchNorm state cannot be split between chains)"
    else:
        reason = job.check_stacked()
    if reason is None:
        return "vectorized", None
    message = f"vectorised chains are not available here ({reason}); running the chains one after another."
    return "sequential", (message if chain_mode == "vectorized" else None)


def _pickled(job: ChainJob) -> bytes:
    """The job as standard-pickle bytes, for a process pool; say what cannot travel.

    Sent as bytes, its tensors are copied into the task instead of moved to shared memory: a
    process pool pickles tensors with torch's reductions, which hand each worker a file descriptor
    through the parent's ``multiprocessing.resource_sharer`` thread, and a worker ended by Ctrl-C
    mid-handover made that thread print a "Connection reset by peer" traceback. One pickling
    serves every chain."""
    try:
        return pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as whole:
        for what, obj in (("loss_fn", job.loss_fn), ("model", job.model)):
            try:
                pickle.dumps(obj)
            except Exception as err:
                raise ValueError(
                    f"executor: {what} cannot be sent to a worker process ({type(err).__name__}: {err}); define it at "
                    "module level (not a lambda or a local function), or use a Dask executor, which pickles closures."
                ) from None
        raise ValueError(
            f"executor: the run cannot be sent to a worker process ({type(whole).__name__}: {whole}); the data "
            "must be tensors or a picklable dataset, or run without an executor."
        ) from None


def run_chains(
    job: ChainJob,
    *,
    num_chains: int,
    config: dict[str, Any],
    chain_mode: str = "auto",
    train_mode: bool = False,
    executor: Executor | None = None,
    progress: bool = True,
) -> Trace:
    """Run ``num_chains`` chains of ``job.num_steps`` steps each from w*, the first
    ``job.num_burnin_steps`` of them burn-in; return the Trace.

    ``config`` is recorded in the Trace, with ``chain_mode`` set to the mode actually used."""
    from tqdm.auto import tqdm

    total = num_chains * job.num_steps
    bar = tqdm(total=total, desc="sampling", unit="step", disable=not progress_enabled(progress), leave=False)
    try:
        if executor is not None:
            mode = "executor"
            if isinstance(executor, ThreadPoolExecutor):
                raise ValueError(
                    "executor: a ThreadPoolExecutor would run chains concurrently on the one shared model and data in "
                    "this process, which is not safe; use a ProcessPoolExecutor or a Dask client's get_executor()."
                )
            task = _pickled(job) if isinstance(executor, ProcessPoolExecutor) else job
            futures = [executor.submit(_run_chain_task, task, chain, os.getpid()) for chain in range(num_chains)]
            rows = []
            for future in futures:  # in chain order; the bar advances as each chain lands
                rows.append(future.result())
                bar.update(job.num_steps)
        else:
            mode, message = choose_mode(job, num_chains, chain_mode, train_mode)
            if message:
                warnings.warn(message, stacklevel=3)
            if mode == "vectorized":
                rows = job.run_stacked(range(num_chains), bar)
            else:
                rows = [job.run(chain, bar) for chain in range(num_chains)]
    finally:
        bar.close()
    arrays = {name: np.stack([records[name] for records, _ in rows]) for name in rows[0][0]}
    return Trace(arrays, job.num_burnin_steps, [bad for _, bad in rows], {**config, "chain_mode": mode})
