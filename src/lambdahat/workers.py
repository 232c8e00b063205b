"""A process pool whose workers never outlive the process that made it: :func:`lambdahat.trajectory`'s
own (``workers=``) and ``lambdahat trajectory --workers``'s.

Each worker leaves Ctrl-C to the parent (which stops the pool at once with :func:`stop_pool`,
without waiting for running chains), and exits as soon as the process that made the pool is gone,
even when it was killed with SIGKILL and could not stop its pool (an idle worker would otherwise
wait for work forever). It watches two things every half second: its own parent (which changes
when the parent dies and the worker is re-parented) and the pool's maker by process id (which is
not the worker's parent under a fork server).
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

#: how often, in seconds, a worker checks that the pool's maker is still there
WATCH_INTERVAL = 0.5


def _worker_start(maker: int, threads: int | None) -> None:
    """Initializer of every worker: ``threads`` torch threads (None: as inherited), Ctrl-C left to
    the maker (which stops the pool), and exit as soon as the maker is gone (killed, even by SIGKILL)."""
    if threads is not None:
        torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    threading.Thread(target=_exit_with, args=(maker, parent), daemon=True, name="lambdahat-parent-watch").start()


def _exit_with(maker: int, parent: int, interval: float = WATCH_INTERVAL) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent or not _alive(maker):
            os._exit(1)  # the maker is gone: nobody will read this worker's results


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a pid reused by another user's process
        return False
    return True


def worker_pool(workers: int, *, context: str | None = "spawn", threads: int | None = 1) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes started by :func:`_worker_start`.

    ``context``: the multiprocessing start method (None: the platform's default, e.g. fork on
    Linux before Python 3.14, which keeps the modules the parent imported, such as a model factory
    loaded from a file). ``threads``: torch intra-op threads per worker (None: what the worker
    inherits: the parent's setting under fork, torch's default under spawn)."""
    mp_context = multiprocessing.get_context(context) if context is not None else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp_context, initializer=_worker_start,
                               initargs=(os.getpid(), threads))


def stop_pool(pool: ProcessPoolExecutor | None) -> None:
    """Stop now: cancel what is queued and end the workers, without waiting for running chains."""
    if pool is None:
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle before 3.14
    # taken before shutdown, which sets the attribute to None (private before 3.14, like _processes)
    manager = getattr(pool, "_executor_manager_thread", None)
    terminate = getattr(pool, "terminate_workers", None)  # Python ≥ 3.14
    if terminate is not None:
        terminate()
    else:
        for process in processes:
            if process.is_alive():
                process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
    # shutdown(wait=False) leaves the pool's manager thread to close its wake-up pipe on its own. If
    # that races the interpreter's exit hook writing to the pipe, the hook fails ("Bad file
    # descriptor"), the interpreter skips joining the remaining threads, and a thread still in torch
    # at exit aborts the process. Joined here, the manager has closed the pipe first.
    if manager is not None and manager.is_alive():
        manager.join(timeout=30)
