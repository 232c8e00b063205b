"""Trace: every recorded per-step quantity as arrays shaped (chain, step), plus the config."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .tables import plain

__all__ = ["Trace"]


@dataclass
class Trace:
    """Per-step records of a sampling run.

    ``arrays[name]`` has shape (chain, step) and covers every step, burn-in included; use
    :meth:`draws` for the post-burn-in part. Steps after a chain diverged are NaN, and
    ``diverged_at[c]`` is the first step whose loss was not finite (None for a healthy chain).
    ``config`` holds every setting that produced the run (JSON-serialisable).

    ``probe`` (a run with ``estimate_llc(..., probe=...)``, else None): the per-sample losses of
    the probe set, shaped (chain, draw, sample) (or (chain, draw, sample, token) for a per-token
    probe, whose ``config["probe"]["shape"]`` is (sample, token)), for the probed draws after burn-in only;
    ``probe_steps[r]`` is the step after which row r was evaluated (≥ ``num_burnin_steps``, on the
    step axis of ``arrays``). A row is NaN for a chain that had diverged by then. Records as
    :meth:`lambdahat.chains.ChainSet.records` gives them may carry the probe as
    ``arrays["probe"]`` (chain, row, sample) and ``arrays["probe_step"]`` (chain, row), burn-in
    rows included: they are moved here, and the rows before ``num_burnin_steps`` dropped.

    ``probe_moments`` (a run with ``probe_store="moments"``, else None): the streaming moments of the
    probe losses instead of their rows (:class:`lambdahat.probe_moments.ProbeMoments`), over the same
    post-burn-in draws, NaN for a chain that diverged; records may carry them per segment as
    ``arrays["probe_partial_*"]``, merged here (a saved Trace holds them as ``probe_moments_*``).
    """

    arrays: dict[str, np.ndarray]
    num_burnin_steps: int
    diverged_at: list[int | None]
    config: dict[str, Any] = field(default_factory=dict)
    probe: np.ndarray | None = None
    probe_steps: np.ndarray | None = None
    probe_moments: Any = None

    def __post_init__(self) -> None:
        moments = [name for name in self.arrays if name.startswith(("probe_partial_", "probe_moments_"))]
        if moments:
            from .probe_moments import PARTIAL, ProbeMoments

            self.arrays = dict(self.arrays)
            parts = {name: self.arrays.pop(name) for name in moments}
            if any(name.startswith(PARTIAL) for name in parts):
                self.probe_moments = ProbeMoments.from_partials(parts, self.num_burnin_steps, self.diverged_at,
                                                                self.config)
            else:
                self.probe_moments = ProbeMoments.from_arrays(parts)
        if "probe" in self.arrays:
            self.arrays = dict(self.arrays)
            self.probe = np.asarray(self.arrays.pop("probe"))
            self.probe_steps = self.arrays.pop("probe_step", None)
        if self.probe is not None:
            rows = self.probe.shape[1]
            steps = np.arange(rows) if self.probe_steps is None else np.asarray(self.probe_steps)
            steps = steps.reshape(-1, rows)[0].astype(np.int64)
            kept = steps >= self.num_burnin_steps
            self.probe, self.probe_steps = self.probe[:, kept], steps[kept]
            shape = (self.config.get("probe") or {}).get("shape")
            if shape and self.probe.ndim == 3:  # a per-token probe is recorded flat: (chain, row, sample, token)
                self.probe = self.probe.reshape(*self.probe.shape[:2], *shape)

    @property
    def num_chains(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    @property
    def num_steps(self) -> int:
        return next(iter(self.arrays.values())).shape[1]

    @property
    def diverged(self) -> dict[int, int]:
        """{chain: first step with a non-finite loss}, for the chains that diverged."""
        return {c: step for c, step in enumerate(self.diverged_at) if step is not None}

    @property
    def healthy_chains(self) -> list[int]:
        """Indices of the chains that did not diverge."""
        return [c for c, step in enumerate(self.diverged_at) if step is None]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def draws(self, name: str = "loss") -> np.ndarray:
        """The post-burn-in part of ``name``, shaped (chain, draw)."""
        return self.arrays[name][:, self.num_burnin_steps :]

    def save(self, path: str | Path) -> Path:
        """Save to a ``.npz`` file (arrays, the probe's losses and steps or its moments when there are any,
        divergence steps and config as JSON); returns its path.

        ``.npz`` is appended when ``path`` lacks it (as numpy does), so ``save("x")`` writes
        ``x.npz`` and ``load("x")`` reads it back. The file is written to a temporary name in the
        same folder and renamed into place: a full disk or an interrupt leaves the old file (or
        none), never a partial one.
        """
        target = _npz(Path(path))
        meta = json.dumps(
            {"num_burnin_steps": self.num_burnin_steps, "diverged_at": self.diverged_at, "config": self.config},
            default=_json_value,
        )
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            probe = {} if self.probe is None else {"probe": self.probe, "probe_step": self.probe_steps}
            if self.probe_moments is not None:
                probe.update(self.probe_moments.arrays())
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, __meta__=np.array(meta), **self.arrays, **probe)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a file written by :meth:`save` (``path`` with or without its ``.npz``)."""
        path = Path(path)
        if not path.is_file() and _npz(path).is_file():
            path = _npz(path)
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["__meta__"]))
            arrays = {k: archive[k] for k in archive.files if k != "__meta__"}
        return cls(arrays, meta["num_burnin_steps"], meta["diverged_at"], meta["config"])


def _npz(path: Path) -> Path:
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def _json_value(value: Any) -> Any:
    """numpy scalars and arrays as plain Python values, for the JSON metadata."""
    if plain(value) is not value:
        return plain(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Trace.save: config value {value!r} of type {type(value).__name__} is not JSON-serialisable.")
