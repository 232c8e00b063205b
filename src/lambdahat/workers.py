"""A process pool whose workers never outlive their parent: :func:`lambdahat.trajectory`'s own
(``workers=``).

Each worker runs one torch thread, leaves Ctrl-C to the parent (which stops the pool at once with
:func:`stop_pool`, without waiting for running chains), and exits as soon as the parent is gone,
even when it was killed with SIGKILL and could not stop its pool (an idle worker would otherwise
wait for work forever).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import torch

__all__ = ["worker_pool", "stop_pool"]


def _worker_start(parent: int) -> None:
    """Initializer of trajectory's own workers: one torch thread, Ctrl-C left to the parent (which
    stops the pool), and exit as soon as the parent is gone (killed, even by SIGKILL)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="lambdahat-parent-watch").start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)  # the parent is gone: nobody will read this worker's results


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes started by :func:`_worker_start`."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_start, initargs=(os.getpid(),))


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop now: cancel what is queued and end the workers, without waiting for running chains."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle before 3.14
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
