"""The LLC along a training run: one fixed setting for every checkpoint, cached per checkpoint.

λ̂(w_t) = nβ (E_w[L_n(w)] − L_n(w_t)) at each saved checkpoint w_t (Lau et al., arXiv 2308.12108),
the curve whose critical points Hoogland et al. (arXiv 2402.02364) use to divide training into
developmental stages (:mod:`lambdahat.stages`).

Every checkpoint is estimated with the **same** setting (ε, nβ, γ, chains, draws, seed): λ̂ at
different nβ estimate different finite-nβ quantities, and a step size re-tuned per checkpoint
makes neighbouring points incomparable (REFERENCE: calibrate once, on several checkpoints, with
:func:`lambdahat.calibrate`, then fix that setting). Since the data, the seed and the setting are
shared, the only thing that changes along the curve is the checkpoint.

Each finished checkpoint is written to ``cache_dir`` as one JSON file, named by its step and keyed
by a hash of the checkpoint's contents, the setting, the data and the loss; a rerun (after an
interruption, or to add checkpoints) loads those and estimates only the rest.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .estimate import LLCResult, estimate_llc
from .stages import StageResult, detect_stages

__all__ = ["TrajectoryResult", "trajectory", "list_checkpoints", "resolve_settings", "CHECKPOINT_SUFFIXES", "ROW_KEYS"]

#: Files in a checkpoint directory that are read; the step is the last run of digits in the name.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
#: The columns of the table, in order.
ROW_KEYS = (
    "step", "llc_mean", "llc_std", "llc_mcse", "init_loss", "nbeta", "ess", "diverged", "healthy", "failing",
    "wall_time", "path",
)
_NOT_SETTINGS = ("model", "data", "loss_fn", "executor", "progress")
_SETTING_NAMES = frozenset(inspect.signature(estimate_llc).parameters) - set(_NOT_SETTINGS)
#: estimate_llc's own defaults, filled into every setting: the cache key then names the setting
#: actually run, and a library whose defaults change does not reuse results made with the old ones.
_DEFAULTS = {name: p.default for name, p in inspect.signature(estimate_llc).parameters.items()
             if name in _SETTING_NAMES and p.default is not inspect.Parameter.empty}
_CACHE_VERSION = 1


# --- the table ------------------------------------------------------------------------------


@dataclass
class TrajectoryResult:
    """The LLC of every checkpoint, with one setting, and the stages of the curve.

    - ``rows``: one dict per checkpoint, by step, keys :data:`ROW_KEYS`: ``step``, ``llc_mean``,
      ``llc_std``, ``llc_mcse``, ``init_loss`` (L_n(w*)), ``nbeta``, ``ess``, ``diverged`` (number of
      diverged chains), ``healthy`` (all health checks passed), ``failing`` (names of the failing
      checks), ``wall_time`` (seconds the estimate took when it was computed) and ``path`` (the
      checkpoint file, or None for an in-memory state dict). Non-finite numbers are NaN.
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
        return np.array([_float(row[name]) for row in self.rows], dtype=float)

    def detect_stages(self, **options: Any) -> StageResult:
        """Stage boundaries of the λ̂ curve (:func:`lambdahat.stages.detect_stages` options)."""
        return detect_stages(self.steps, self.column("llc_mean"), **options)

    def to_dataframe(self):
        """The table as a ``pandas.DataFrame`` (needs pandas; ``to_csv``/``to_json`` do not)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("to_dataframe needs pandas (pip install pandas); to_csv(path) needs nothing.") from err
        return pd.DataFrame([_csv_row(row) for row in self.rows], columns=list(ROW_KEYS))

    def to_csv(self, path: str | Path) -> Path:
        """Write the table as CSV, one row per checkpoint (``failing`` joined by ";"); returns the path."""
        path = Path(path)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(ROW_KEYS))
            writer.writeheader()
            writer.writerows(_csv_row(row) for row in self.rows)
        return path

    def to_dict(self) -> dict[str, Any]:
        """Everything but the traces, JSON-ready (non-finite numbers become None)."""
        return {
            "rows": [_json_row(row) for row in self.rows],
            "verdicts": {str(step): v for step, v in self.verdicts.items()},
            "settings": _jsonable(self.settings),
            "stages": self.stages.to_dict() if self.stages is not None else None,
            "computed": list(self.computed),
            "cached": list(self.cached),
            "wall_time": _number(self.wall_time),
        }

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path

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
                f"{row['step']:>10} {_fmt(row['llc_mean'], '.4g'):>10} {_fmt(row['llc_mcse'], '.2g'):>8} "
                f"{_fmt(row['llc_std'], '.3g'):>8} {_fmt(row['init_loss'], '.5g'):>10} {_fmt(row['wall_time'], '.1f'):>7}"
                f"  {health}{cached}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        s = self.settings
        head = (
            f"LLC trajectory over {len(self.rows)} checkpoints ({len(self.computed)} estimated, {len(self.cached)} from "
            f"the cache)" + (f" in {self.wall_time:.1f} s" if math.isfinite(self.wall_time) else "")
        )
        setting = ", ".join(f"{k} {v}" for k, v in s.items() if k in ("step_size", "nbeta", "localization",
                                                                       "num_chains", "num_draws", "num_burnin_steps",
                                                                       "batch_size", "seed"))
        lines = [head, f"one setting for all: {setting or 'estimate_llc defaults'}", self.table()]
        if self.stages is not None:
            lines.append(str(self.stages))
        unhealthy = [row["step"] for row in self.rows if not row["healthy"]]
        if unhealthy:
            lines.append(f"{len(unhealthy)} checkpoint(s) failed a health check: steps {unhealthy}; see .verdicts.")
        return "\n".join(lines)


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _number(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None or not math.isfinite(float(value)) else format(float(value), spec)


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "failing": ";".join(row["failing"])}


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (_number(v) if isinstance(v, float) else v) for k, v in row.items()}


def _jsonable(value: Any) -> Any:
    """Settings as JSON: tensors and callables become short descriptions."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return f"tensor{tuple(value.shape)} sha256:{_tensor_hash(value)[:12]}"
    if isinstance(value, float):
        return _number(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return repr(value)


# --- checkpoints ----------------------------------------------------------------------------

_STEP = re.compile(r"(\d+)(?!.*\d)")


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """The checkpoint files of a directory as (step, path), sorted by step.

    A checkpoint file ends in one of :data:`CHECKPOINT_SUFFIXES` and carries its training step as
    the **last run of digits** in its name: ``step_000100.pt``, ``ckpt-100.pth``, ``model_100.bin``
    and ``100.pt`` are all step 100. Other files are ignored; a checkpoint-like file with no digits
    is skipped with a warning; two files with the same step are an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"checkpoints directory {str(directory)!r} does not exist (or is not a directory).")
    found: dict[int, Path] = {}
    skipped = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix not in CHECKPOINT_SUFFIXES:
            continue
        match = _STEP.search(path.stem)
        if match is None:
            skipped.append(path.name)
            continue
        step = int(match.group(1))
        if step in found:
            raise ValueError(
                f"two checkpoints for step {step} in {str(directory)!r}: {found[step].name} and {path.name}; "
                "keep one, or pass checkpoints as a list of (step, path)."
            )
        found[step] = path
    if skipped:
        warnings.warn(f"skipped {skipped} in {directory}: no step number in the name (name files like step_000100.pt).",
                      stacklevel=2)
    if not found:
        raise ValueError(
            f"no checkpoint files in {str(directory)!r}: expected files ending in {', '.join(CHECKPOINT_SUFFIXES)} "
            "whose names carry the training step, e.g. step_000100.pt."
        )
    return sorted(found.items())


def _as_checkpoint_list(checkpoints: Any) -> list[tuple[int, str | Path | Mapping[str, Tensor]]]:
    if isinstance(checkpoints, (str, Path)):
        return list(list_checkpoints(checkpoints))
    if isinstance(checkpoints, Mapping):
        raise TypeError(
            "checkpoints must be a directory or a sequence of (step, path or state_dict) pairs, not a dict; "
            "for {step: checkpoint} pass list(d.items())."
        )
    items = []
    for item in checkpoints:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"each checkpoint must be a (step, path or state_dict) pair, got {item!r:.80}.")
        step, source = item
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            raise TypeError(f"a checkpoint's step must be an integer, got {step!r}.")
        if not isinstance(source, (str, Path, Mapping)):
            raise TypeError(f"checkpoint for step {step} must be a file path or a state dict, got {type(source).__name__}.")
        items.append((int(step), Path(source) if isinstance(source, str) else source))
    steps = [s for s, _ in items]
    if len(set(steps)) != len(steps):
        raise ValueError(f"checkpoints has repeated steps: {sorted(s for s in set(steps) if steps.count(s) > 1)}.")
    if not items:
        raise ValueError("checkpoints is empty: give a directory or at least one (step, path) pair.")
    return sorted(items, key=lambda item: item[0])


# --- settings -------------------------------------------------------------------------------


def resolve_settings(settings: Any) -> dict[str, Any]:
    """estimate_llc keyword arguments from a dict, a calibration's recommended setting, or a
    :class:`~lambdahat.calibrate.CalibrationResult` (its recommended ε, nβ, γ and num_draws, with
    the chains, burn-in, batch size and seed of the calibration runs). Unknown keys are an error."""
    from .calibrate import CalibrationResult

    if settings is None:
        return {}
    if isinstance(settings, CalibrationResult):
        if settings.recommended is None:
            raise ValueError("the calibration recommended no setting (see its .rule); pass a settings dict instead.")
        chain = {k: settings.settings[k] for k in ("num_chains", "num_burnin_steps", "batch_size", "seed")
                 if settings.settings.get(k) is not None}
        settings = {**chain, **settings.recommended}
    if not isinstance(settings, Mapping):
        raise TypeError(f"settings must be a dict of estimate_llc arguments or a CalibrationResult, got {type(settings).__name__}.")
    out = {k: v for k, v in settings.items() if k != "nbeta_default"}  # a recommended dict's note, not an argument
    allowed = _SETTING_NAMES
    unknown = sorted(set(out) - allowed)
    if unknown:
        hint = " (executor and progress are trajectory()'s own arguments)" if set(unknown) & set(_NOT_SETTINGS) else ""
        raise ValueError(f"settings has unknown key(s) {unknown}{hint}; estimate_llc takes {sorted(allowed)}.")
    return out


# --- fingerprints ---------------------------------------------------------------------------


def _tensor_hash(t: Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _checkpoint_identity(source: str | Path | Mapping[str, Tensor]) -> str:
    """sha256 of the checkpoint's contents: the file's bytes, or a state dict's names and tensors."""
    h = hashlib.sha256()
    if isinstance(source, Mapping):
        for name in sorted(source):
            value = source[name]
            h.update(name.encode())
            h.update(_tensor_hash(value).encode() if isinstance(value, Tensor) else repr(value).encode())
        return h.hexdigest()
    with Path(source).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _data_identity(data: Any) -> str:
    """Tensors by content; a Dataset or DataLoader by its type and length only."""
    if isinstance(data, Tensor):
        return _tensor_hash(data)
    if isinstance(data, (tuple, list)) and all(isinstance(t, Tensor) for t in data):
        return hashlib.sha256("".join(_tensor_hash(t) for t in data).encode()).hexdigest()
    try:
        size = len(data)
    except TypeError:
        size = "?"
    return f"{type(data).__module__}.{type(data).__qualname__}[{size}]"


def _settings_key(settings: dict[str, Any], data: Any, loss_fn: Any) -> str:
    material = json.dumps(
        {"settings": _jsonable(settings), "data": _data_identity(data), "loss": _jsonable(loss_fn),
         "version": _CACHE_VERSION},
        sort_keys=True, default=repr,
    )
    return hashlib.sha256(material.encode()).hexdigest()


# --- the run --------------------------------------------------------------------------------


def _row(step: int, source: Any, result: LLCResult) -> tuple[dict[str, Any], dict[str, str]]:
    checks = result.checks
    failing = [c for c in checks if not c.ok]
    row = dict(
        step=step,
        llc_mean=float(result.llc_mean),
        llc_std=float(result.llc_std),
        llc_mcse=float(result.llc_mcse),
        init_loss=float(result.init_loss),
        nbeta=float(result.nbeta),
        ess=float(result.ess),
        diverged=len(result.diverged),
        healthy=not failing,
        failing=[c.name for c in failing],
        wall_time=float(result.wall_time),
        path=str(source) if isinstance(source, Path) else None,
    )
    return row, {c.name: c.verdict for c in failing}


def _cache_file(cache_dir: Path, step: int, identity: str, key: str) -> Path:
    return cache_dir / f"step_{step:012d}_{identity[:10]}_{key[:10]}.json"


def _read_cache(path: Path, identity: str, key: str) -> tuple[dict[str, Any], dict[str, str]] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or half-written: compute again
    if record.get("checkpoint_sha256") != identity or record.get("settings_key") != key:
        return None
    row = {k: (_float(v) if k in ("llc_mean", "llc_std", "llc_mcse", "init_loss", "nbeta", "ess", "wall_time") else v)
           for k, v in record["row"].items()}
    return row, record.get("verdicts", {})


def _write_cache(path: Path, identity: str, key: str, settings: dict, row: dict, verdicts: dict, result: LLCResult) -> None:
    record = {
        "checkpoint_sha256": identity,
        "settings_key": key,
        "settings": _jsonable(settings),
        "row": _json_row(row),
        "verdicts": verdicts,
        "estimate": {k: v for k, v in result.to_dict().items() if k != "config"},
    }
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=repr))
    os.replace(tmp, path)  # atomic: an interrupted write leaves no half file under the real name


def trajectory(
    checkpoints: str | Path | Iterable[tuple[int, str | Path | Mapping[str, Tensor]]],
    make_model: Callable[[], nn.Module],
    data: Any,
    loss_fn: Callable[..., Tensor],
    settings: Mapping[str, Any] | Any = None,
    *,
    cache_dir: str | Path | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    stage_options: Mapping[str, Any] | None = None,
    checkpoints_in_flight: int = 4,
) -> TrajectoryResult:
    """The LLC of every checkpoint of a training run, with one fixed setting.

    λ̂(w_t) = nβ (E_w[L_n(w)] − L_n(w_t)) for each checkpoint w_t, by
    :func:`~lambdahat.estimate_llc` with the same ``settings`` (Lau et al., arXiv 2308.12108),
    then the stage boundaries of the curve (:func:`lambdahat.stages.detect_stages`, after
    Hoogland et al., arXiv 2402.02364).

    Args:
        checkpoints: a directory of checkpoint files whose names carry the step (``step_000100.pt``;
            see :func:`list_checkpoints`), or a sequence of ``(step, path or state_dict)``. Files
            hold a state dict, directly or under ``"model"``/``"state_dict"``
            (:func:`lambdahat.models.load_weights`).
        make_model: ``make_model()`` returns a fresh model of the checkpoints' architecture; each
            checkpoint is loaded into a new one.
        data, loss_fn: as for :func:`~lambdahat.estimate_llc`; the same for every checkpoint.
        settings: estimate_llc keyword arguments (``step_size``, ``nbeta``, ``localization``,
            ``num_chains``, ``num_draws``, ``num_burnin_steps``, ``batch_size``, ``seed``, …), or a
            :class:`~lambdahat.calibrate.CalibrationResult` (its recommended setting). One setting
            for every checkpoint: give ``nbeta`` a fixed value (None means n / log n, which is fixed
            too, as the data is). None: estimate_llc's defaults.
        cache_dir: write each finished checkpoint here as JSON and reuse it on a rerun; the key is
            the checkpoint's contents (sha256), the settings with estimate_llc's defaults filled
            in (so an explicit default is the same setting), the data (tensors by content; a
            Dataset only by type and length) and the loss function's name. None: no cache.
        executor: a ``concurrent.futures.Executor`` (process pool, Dask's ``get_executor()``) to run
            checkpoints × chains as tasks: up to ``checkpoints_in_flight`` checkpoints are prepared at
            once, each submitting its chains as tasks (estimate_llc's ``executor`` path, one chain
            per task; per-chain results equal the sequential run's), and each checkpoint is cached
            as soon as its chains are back. Use processes (or Dask), not a ``ThreadPoolExecutor``:
            a checkpoint's chains share one model, which threads would step on concurrently.
            Without an executor, checkpoints run one after another, chains vectorised where
            estimate_llc's ``chain_mode="auto"`` chooses.
        progress: a progress bar over checkpoints (and over sampling steps, without an executor).
        stage_options: keyword arguments for :func:`lambdahat.stages.detect_stages`.
        checkpoints_in_flight: with an executor, how many checkpoints' models are loaded and have
            chains queued at once (memory: one model each).

    Returns:
        A :class:`TrajectoryResult`: the table (``rows``; ``to_csv``, ``to_json``,
        ``to_dataframe``), the stages, ``plot()``.
    """
    start = time.perf_counter()
    items = _as_checkpoint_list(checkpoints)
    settings = resolve_settings(settings)
    if not callable(make_model):
        raise TypeError(f"make_model must be a function returning a fresh nn.Module, got {type(make_model).__name__}.")
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}.")
    if not isinstance(checkpoints_in_flight, int) or checkpoints_in_flight < 1:
        raise ValueError(f"checkpoints_in_flight must be a positive integer, got {checkpoints_in_flight!r}.")
    stage_names = set(inspect.signature(detect_stages).parameters) - {"steps", "llc"}
    unknown = sorted(set(stage_options or {}) - stage_names)
    if unknown:  # checked now, not after every checkpoint has been estimated
        raise ValueError(f"stage_options has unknown key(s) {unknown}; detect_stages takes {sorted(stage_names)}.")
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    key = _settings_key({**_DEFAULTS, **settings}, data, loss_fn)

    from tqdm.auto import tqdm

    rows: dict[int, dict[str, Any]] = {}
    verdicts: dict[int, dict[str, str]] = {}
    results: dict[int, LLCResult] = {}
    cached: list[int] = []
    todo = []
    bar = tqdm(total=len(items), desc="checkpoints", unit="ckpt", disable=not progress)
    try:
        for step, source in items:
            identity = _checkpoint_identity(source)
            hit = _read_cache(_cache_file(cache, step, identity, key), identity, key) if cache is not None else None
            if hit is not None:
                rows[step], verdicts[step] = hit
                cached.append(step)
                bar.update(1)
            else:
                todo.append((step, source, identity))
        bar.set_postfix(cached=len(cached))

        def estimate(step: int, source: Any, inner_progress: bool) -> LLCResult:
            model = make_model()
            if not isinstance(model, nn.Module):
                raise TypeError(f"make_model() returned {type(model).__name__}, not a torch.nn.Module.")
            from .models import load_weights

            try:
                load_weights(model, source)
            except (RuntimeError, ValueError) as err:
                raise ValueError(f"checkpoint for step {step} ({source if isinstance(source, Path) else 'state dict'}) "
                                 f"does not load into make_model()'s model: {err}") from err
            return estimate_llc(model, data, loss_fn, executor=executor, progress=inner_progress, **settings)

        def finish(step: int, source: Any, identity: str, result: LLCResult) -> None:
            rows[step], verdicts[step] = _row(step, source, result)
            results[step] = result
            if cache is not None:
                _write_cache(_cache_file(cache, step, identity, key), identity, key, settings, rows[step],
                             verdicts[step], result)
            bar.update(1)

        if executor is None:
            for step, source, identity in todo:
                bar.set_description(f"checkpoint {step}")
                finish(step, source, identity, estimate(step, source, progress))
        else:
            # threads only prepare checkpoints and wait: the chains run on the executor
            with ThreadPoolExecutor(max_workers=checkpoints_in_flight) as threads:
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
    finally:
        bar.close()

    ordered = [rows[step] for step, _ in items]
    result = TrajectoryResult(
        rows=ordered,
        settings=settings,
        verdicts={step: v for step, v in verdicts.items() if v},
        computed=sorted(results),
        cached=cached,
        results=results,
    )
    finite = np.isfinite(result.column("llc_mean"))
    if finite.sum() >= 3:
        result.stages = result.detect_stages(**(stage_options or {}))
    result.wall_time = time.perf_counter() - start
    return result
