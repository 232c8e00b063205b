"""Trace: every recorded per-step quantity as arrays shaped (chain, step), plus the config."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Trace"]


@dataclass
class Trace:
    """Per-step records of a sampling run.

    ``arrays[name]`` has shape (chain, step) and covers every step, burn-in included; use
    :meth:`draws` for the post-burn-in part. Steps after a chain diverged are NaN, and
    ``diverged_at[c]`` is the first step whose loss was not finite (None for a healthy chain).
    ``config`` holds every setting that produced the run (JSON-serialisable).
    """

    arrays: dict[str, np.ndarray]
    num_burnin_steps: int
    diverged_at: list[int | None]
    config: dict[str, Any] = field(default_factory=dict)

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

    def save(self, path: str | Path) -> None:
        """Save to a ``.npz`` file (arrays, divergence steps and config as JSON)."""
        meta = {
            "num_burnin_steps": self.num_burnin_steps,
            "diverged_at": self.diverged_at,
            "config": self.config,
        }
        np.savez_compressed(Path(path), __meta__=np.array(json.dumps(meta)), **self.arrays)

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        with np.load(Path(path), allow_pickle=False) as archive:
            meta = json.loads(str(archive["__meta__"]))
            arrays = {k: archive[k] for k in archive.files if k != "__meta__"}
        return cls(arrays, meta["num_burnin_steps"], meta["diverged_at"], meta["config"])
