"""The LLC along a training run: one fixed setting for every checkpoint, cached per checkpoint.

λ̂(w_t) = nβ (E_w[L_n(w)] − L_n(w_t)) at each saved checkpoint w_t (Lau et al., arXiv 2308.12108),
the curve whose critical points Hoogland et al. (arXiv 2402.02364) use to divide training into
developmental stages (:mod:`lambdahat.stages`). Every checkpoint gets the **same** setting: λ̂ at
different nβ estimate different finite-nβ quantities, and a step size re-tuned per checkpoint
makes neighbouring points incomparable (calibrate once on several checkpoints, then fix it;
``settings="auto"`` does that). Finished checkpoints are cached (:mod:`lambdahat.cache`), so a
rerun estimates only the rest; :mod:`lambdahat.checkpoints` finds and loads them. The one setting is
resolved (or calibrated, for ``"auto"``) by :mod:`lambdahat.trajectory_settings`, and ``workers=``
runs on the pool of :mod:`lambdahat.workers`.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from . import cache as _cache
from . import tables
from .checkpoints import CHECKPOINT_SUFFIXES, as_checkpoint_list, checkpoint_identity, list_checkpoints, load_checkpoint
from .chains import progress_enabled
from .estimate import LLCResult, estimate_llc
from .stages import StageResult, detect_stages
from .trajectory_settings import as_settings, calibrated, resolve_settings
from .workers import stop_pool as _stop_pool
from .workers import worker_pool as _worker_pool

__all__ = ["TrajectoryResult", "TrajectoryInterrupted", "trajectory", "list_checkpoints", "resolve_settings",
           "CHECKPOINT_SUFFIXES", "ROW_KEYS"]

#: The columns of the table, in order.
ROW_KEYS = (
    "step", "llc_mean", "llc_std", "llc_mcse", "init_loss", "nbeta", "ess", "diverged", "healthy", "failing",
    "wall_time", "path",
)
_FLOAT_KEYS = ("llc_mean", "llc_std", "llc_mcse", "init_loss", "nbeta", "ess", "wall_time")
_SHOWN = ("step_size", "nbeta", "localization", "num_chains", "num_draws", "num_burnin_steps", "batch_size", "seed")


class TrajectoryInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt (Ctrl-C) during :func:`trajectory`: ``done`` of ``total`` checkpoints
    are in the cache (0 without one); ``partial`` is the table of the checkpoints finished."""

    def __init__(self, done: int, total: int, partial: TrajectoryResult | None = None):
        self.done, self.total, self.partial = done, total, partial
        super().__init__(f"interrupted: {done} of {total} checkpoints cached; rerun the same command to resume")


@dataclass
class TrajectoryResult:
    """The LLC of every checkpoint, with one setting, and the stages of the curve.

    - ``rows``: one dict per checkpoint, by step, keys :data:`ROW_KEYS`: ``step``, ``llc_mean``,
      ``llc_std``, ``llc_mcse``, ``init_loss`` (L_n(w*)), ``nbeta``, ``ess``, ``diverged`` (number of
      diverged chains), ``healthy`` (all health checks passed), ``failing`` (the list of names of the
      failing checks), ``wall_time`` (seconds the estimate took when it was computed) and ``path``
      (the checkpoint file, or None for an in-memory state dict). Missing numbers are NaN.
    - ``verdicts``: {step: {check name: verdict}} for the failing checks.
    - ``settings``: the estimate_llc keyword arguments used for every checkpoint.
    - ``stages``: :func:`lambdahat.stages.detect_stages` on the curve (None with fewer than 3
      finite points); :meth:`detect_stages` reruns it with other options.
    - ``computed`` / ``cached``: the steps estimated in this call / loaded from the cache.
    - ``results``: the full :class:`~lambdahat.LLCResult` (traces included) of the checkpoints
      computed in this call; cached checkpoints keep only their row.
    """

    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    stages: StageResult | None = None
    verdicts: dict[int, dict[str, str]] = field(default_factory=dict)
    computed: list[int] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)
    wall_time: float = float("nan")
    results: dict[int, LLCResult] = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> np.ndarray:
        return np.array([row["step"] for row in self.rows], dtype=float)

    def column(self, name: str) -> np.ndarray:
        """One numeric column as an array (NaN where missing)."""
        if name not in ROW_KEYS:
            raise KeyError(f"no column {name!r}; columns are {ROW_KEYS}.")
        return np.array([tables.as_float(row[name]) for row in self.rows], dtype=float)

    def detect_stages(self, **options: Any) -> StageResult:
        """Stage boundaries of the λ̂ curve (:func:`lambdahat.stages.detect_stages` options)."""
        return detect_stages(self.steps, self.column("llc_mean"), **options)

    def to_dataframe(self):
        """The table as a ``pandas.DataFrame`` (needs pandas; ``to_csv``/``to_json`` do not)."""
        return tables.to_dataframe(self.rows, ROW_KEYS, instead="to_csv(path)")

    def to_csv(self, path: str | Path) -> Path:
        """Write the table as CSV, one row per checkpoint (``failing`` joined by ";"); returns the path."""
        return tables.write_csv(path, self.rows, ROW_KEYS)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the traces, JSON-ready (non-finite numbers become None)."""
        return tables.jsonable(dict(
            rows=self.rows, verdicts={str(step): v for step, v in self.verdicts.items()}, settings=self.settings,
            stages=self.stages, computed=self.computed, cached=self.cached, wall_time=self.wall_time,
        ))

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON; returns the path."""
        return tables.write_json(path, self.to_dict())

    def plot(self, stages: StageResult | None = None, title: str | None = None):
        """λ̂ ± MCSE band and L_n(w*) against training step, stage boundaries marked; a Figure
        (:func:`lambdahat.plot.plot_trajectory`)."""
        from .plot import plot_trajectory

        return plot_trajectory(self, stages=stages, title=title)

    def table(self) -> str:
        """The table as fixed-width text."""
        lines = [f"{'step':>10} {'λ̂':>10} {'± MCSE':>8} {'std':>8} {'L_n(w*)':>10} {'time s':>7}  health"]
        for row in self.rows:
            cached = " (cached)" if row["step"] in self.cached else ""
            health = "ok" if row["healthy"] else "FAIL: " + ", ".join(row["failing"])
            lines.append(
                f"{row['step']:>10} {tables.fmt(row['llc_mean'], '.4g', width=10)} "
                f"{tables.fmt(row['llc_mcse'], '.2g', width=8)} {tables.fmt(row['llc_std'], '.3g', width=8)} "
                f"{tables.fmt(row['init_loss'], '.5g', width=10)} {tables.fmt(row['wall_time'], '.1f', width=7)}"
                f"  {health}{cached}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        head = (
            f"LLC trajectory over {len(self.rows)} checkpoints ({len(self.computed)} estimated, {len(self.cached)} from "
            f"the cache)" + (f" in {self.wall_time:.1f} s" if math.isfinite(self.wall_time) else "")
        )
        setting = ", ".join(f"{k} {v}" for k, v in self.settings.items() if k in _SHOWN)
        lines = [head, f"one setting for all: {setting or 'estimate_llc defaults'}", self.table()]
        if self.stages is not None:
            lines.append(str(self.stages))
        unhealthy = [row["step"] for row in self.rows if not row["healthy"]]
        if unhealthy:
            lines.append(f"{len(unhealthy)} checkpoint(s) failed a health check: steps {unhealthy}; see .verdicts.")
        return "\n".join(lines)


# --- stage options, checked before any work (the settings: lambdahat.trajectory_settings) -------


def _check_stage_options(options: Any, steps: list[int]) -> dict[str, Any]:
    """Names and values of ``stage_options``, checked by running detect_stages on a stand-in curve."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"stage_options must be a dict of detect_stages options, got {type(options).__name__}.")
    names = set(inspect.signature(detect_stages).parameters) - {"steps", "llc"}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"stage_options has unknown key(s) {unknown}; detect_stages takes {sorted(names)}.")
    x = np.asarray(steps, dtype=float) if len(steps) >= 3 else np.arange(3.0)
    try:
        detect_stages(x, np.linspace(0.0, 1.0, x.size), **options)
    except (ValueError, TypeError) as err:
        raise ValueError(f"stage_options: {err}") from None
    return dict(options)


def _row(step: int, source: Any, result: LLCResult) -> tuple[dict[str, Any], dict[str, str]]:
    failing = [c for c in result.checks if not c.ok]
    values = {k: float(getattr(result, k)) for k in _FLOAT_KEYS}
    values.update(step=step, diverged=len(result.diverged), healthy=not failing, failing=[c.name for c in failing],
                  path=str(source) if isinstance(source, Path) else None)
    return {k: values[k] for k in ROW_KEYS}, {c.name: c.verdict for c in failing}


# --- the run -------------------------------------------------------------------------------------


def trajectory(
    checkpoints: str | Path | Iterable[tuple[int, str | Path | Mapping[str, Tensor]]],
    make_model: Callable[[], nn.Module],
    data: Any,
    loss_fn: Callable[..., Tensor],
    settings: Mapping[str, Any] | Any = None,
    *,
    cache_dir: str | Path | None = None,
    executor: Executor | None = None,
    workers: int | None = None,
    progress: bool = True,
    stage_options: Mapping[str, Any] | None = None,
    checkpoints_in_flight: int = 4,
    probe: Any = None,
    probe_every: int = 1,
    probe_per_token: bool = False,
    probe_batch_size: int | None = None,
    probe_store: str = "raw",
    probe_queries: Any = None,
) -> TrajectoryResult:
    """The LLC of every checkpoint of a training run, with one fixed setting.

    λ̂(w_t) by :func:`~lambdahat.estimate_llc` for each checkpoint w_t with the same ``settings``,
    then the stages of the curve (:func:`lambdahat.stages.detect_stages`). Every argument and
    option is checked before the first checkpoint is estimated. Guide: docs/trajectory.md.

    Args:
        checkpoints: a directory of files whose names carry the step (:func:`list_checkpoints`), or
            a sequence of ``(step, path or state_dict)``.
        make_model: ``make_model()`` returns a fresh model of the checkpoints' architecture, into
            which each checkpoint is loaded; for a factory with arguments pass
            ``functools.partial(factory, **kwargs)`` (the arguments are then in the cache key).
        data, loss_fn: as for :func:`~lambdahat.estimate_llc`; the same for every checkpoint.
        settings: estimate_llc keyword arguments (:class:`~lambdahat.settings.Settings` fields and
            ``sampled_params``); a calibration (its ``recommended``); or ``"auto"``:
            :func:`lambdahat.calibrate.calibrate` (seed 0) on the first, middle and last checkpoint
            chooses the one setting, kept in the cache. Whatever is left ``"auto"`` (None: everything)
            is chosen that way, once, with the given settings kept: checkpoints never adapt their
            settings one by one, which would make neighbouring estimates incomparable.
        cache_dir: each finished checkpoint is written here and reused on a rerun, keyed by its
            contents and everything else the result depends on (:mod:`lambdahat.cache` says what
            the key cannot see). None: no cache.
        executor: a ``concurrent.futures.Executor`` (a process pool, Dask's ``get_executor()``, not
            threads: a checkpoint's chains share one model) that runs the chains as tasks, for up to
            ``checkpoints_in_flight`` checkpoints at once; each is cached when its chains are back.
            Results equal the sequential run's with ``chain_mode="sequential"``.
        workers: instead of ``executor``, a process pool of trajectory's own: one torch thread per
            worker, stopped at once on Ctrl-C, and no worker outlives this process (even on SIGKILL).
        progress: progress bars. stage_options: :func:`lambdahat.stages.detect_stages` options.
        checkpoints_in_flight: with an executor, how many checkpoints are loaded at once.
        probe, probe_every, probe_per_token, probe_batch_size, probe_store, probe_queries: the probe
            set of :func:`~lambdahat.estimate_llc` and its options, evaluated at every checkpoint
            (``result.results[step].trace``; ``lh.bif(result.results[step])``).
            Not with ``cache_dir``: the cache keeps each checkpoint's row, not its probe losses.

    Returns:
        A :class:`TrajectoryResult` (``rows``, ``to_csv``, ``to_json``, ``stages``, ``plot()``).

    Raises:
        TrajectoryInterrupted: a KeyboardInterrupt that says how many checkpoints are cached. An
            error in one checkpoint is raised once the others in flight are finished and cached; a
            failing stage detection is a warning (``stages`` None), the table is kept.
    """
    start = time.perf_counter()
    items = as_checkpoint_list(checkpoints)
    auto = isinstance(settings, str) and settings == "auto"
    if isinstance(settings, str) and not auto:
        raise ValueError(f"settings must be a dict of estimate_llc arguments, a calibration or 'auto', got {settings!r}.")
    settings = {} if auto else resolve_settings(settings)
    if not callable(make_model):
        raise TypeError(f"make_model must be a function returning a fresh nn.Module, got {type(make_model).__name__}.")
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}.")
    if workers is not None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer (or None for no pool), got {workers!r}.")
        if executor is not None:
            raise ValueError("give executor or workers, not both.")
    if not isinstance(checkpoints_in_flight, int) or checkpoints_in_flight < 1:
        raise ValueError(f"checkpoints_in_flight must be a positive integer, got {checkpoints_in_flight!r}.")
    stage_options = _check_stage_options(stage_options, [step for step, _ in items])
    if probe is not None and cache_dir is not None:
        raise ValueError("probe with cache_dir: the cache keeps each checkpoint's row, not its probe losses, so a "
                         "rerun could not return them; pass cache_dir=None to probe (or drop probe to cache).")
    probing = {} if probe is None else {"probe": probe, "probe_every": probe_every, "probe_per_token": probe_per_token,
                                        "probe_batch_size": probe_batch_size, "probe_store": probe_store,
                                        "probe_queries": probe_queries}
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        if cache.exists() and not cache.is_dir():
            raise ValueError(f"cache_dir {str(cache)!r} is a file, not a folder; name a folder (it is created).")
        cache.mkdir(parents=True, exist_ok=True)
        _cache.remove_stale_temporaries(cache)
    if auto or as_settings(settings).auto_fields:
        # every checkpoint at one setting: what is left auto is calibrated once, not per checkpoint
        settings = calibrated(items, make_model, data, loss_fn, cache, progress, given=settings)
    key = _cache.cache_key(as_settings(settings).to_dict(), data=data, loss_fn=loss_fn, make_model=make_model,
                           sampled_params=settings.get("sampled_params"))

    from tqdm.auto import tqdm

    rows: dict[int, dict[str, Any]] = {}
    verdicts: dict[int, dict[str, str]] = {}
    results: dict[int, LLCResult] = {}
    cached: list[int] = []
    pool = _worker_pool(workers) if workers is not None else None
    executor = pool or executor
    threads: ThreadPoolExecutor | None = None
    futures: dict = {}
    interrupted = False
    bar = tqdm(total=len(items), desc="checkpoints", unit="ckpt", disable=not progress_enabled(progress))

    def estimate(step: int, source: Any, inner_progress: bool) -> LLCResult:
        model = load_checkpoint(make_model, step, source)
        return estimate_llc(model, data, loss_fn, executor=executor, progress=inner_progress, **probing, **settings)

    def finish(step: int, source: Any, identity: str, result: LLCResult) -> None:
        rows[step], verdicts[step] = _row(step, source, result)
        results[step] = result
        if cache is not None:
            summary = {k: v for k, v in result.to_dict().items() if k != "config"}
            _cache.write_entry(_cache.entry_path(cache, step, identity, key), identity, key, settings=settings,
                               row=rows[step], verdicts=verdicts[step], estimate=summary)
        bar.update(1)

    try:
        todo = []
        for step, source in items:
            identity = checkpoint_identity(source)
            hit = None if cache is None else _cache.read_row(_cache.entry_path(cache, step, identity, key), identity,
                                                              key, step=step, columns=ROW_KEYS, floats=_FLOAT_KEYS)
            if hit is not None:
                rows[step], verdicts[step] = hit
                rows[step]["path"] = str(source) if isinstance(source, Path) else None  # where it is now
                cached.append(step)
                bar.update(1)
            else:
                todo.append((step, source, identity))
        bar.set_postfix(cached=len(cached))
        if executor is None:
            for step, source, identity in todo:
                bar.set_description(f"checkpoint {step}")
                finish(step, source, identity, estimate(step, source, progress))
        else:
            # threads only prepare checkpoints and wait: the chains run on the executor
            threads = ThreadPoolExecutor(max_workers=checkpoints_in_flight)
            futures = {threads.submit(estimate, step, source, False): (step, source, identity)
                       for step, source, identity in todo}
            errors = []
            for future in as_completed(futures):
                try:
                    finish(*futures[future], future.result())
                except Exception as err:  # keep caching the others; raise the first at the end
                    errors.append(err)
            if errors:
                raise errors[0]
    except KeyboardInterrupt as err:
        interrupted = True
        if pool is not None:
            _stop_pool(pool)
            # the checkpoints' threads now fail at once on the stopped pool; let them end before the
            # interpreter does, so none is inside torch at exit
            wait(futures, timeout=30)
        partial = _result(items, rows, verdicts, results, cached, settings)
        raise TrajectoryInterrupted(len(cached) + len(results) if cache else 0, len(items), partial) from err
    finally:
        if threads is not None:
            threads.shutdown(wait=not interrupted, cancel_futures=True)
        if pool is not None and not interrupted:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()

    result = _result(items, rows, verdicts, results, cached, settings)
    if np.isfinite(result.column("llc_mean")).sum() >= 3:
        try:
            result.stages = result.detect_stages(**stage_options)
        except Exception as err:  # the table is complete and cached: do not lose it to the last step
            warnings.warn(f"stage detection failed ({type(err).__name__}: {err}); the table is complete, stages is None.",
                          stacklevel=2)
    result.wall_time = time.perf_counter() - start
    return result


def _result(items: list, rows: dict, verdicts: dict, results: dict, cached: list, settings: dict) -> TrajectoryResult:
    """The table of the checkpoints finished so far, in step order."""
    return TrajectoryResult(
        rows=[rows[step] for step, _ in items if step in rows],
        settings=settings,
        verdicts={step: v for step, v in verdicts.items() if v},
        computed=sorted(results),
        cached=cached,
        results=results,
    )
