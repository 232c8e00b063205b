"""Checkpoints of a training run: finding them in a folder, and naming each by its contents.

A checkpoint is a file (or an in-memory state dict) with a training step. :func:`list_checkpoints`
reads the steps from file names; :func:`checkpoint_identity` is the sha256 of a checkpoint's
contents, which the trajectory cache uses so that a rewritten file is never mistaken for the old
one.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["CHECKPOINT_SUFFIXES", "list_checkpoints", "as_checkpoint_list", "load_checkpoint", "checkpoint_identity",
           "tensor_sha256"]

#: Files in a checkpoint directory that are read; the step is the last run of digits in the name.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
_STEP = re.compile(r"(\d+)(?!.*\d)")

Source = Path | Mapping[str, Tensor]


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


def as_checkpoint_list(checkpoints: Any) -> list[tuple[int, Source]]:
    """A directory (see :func:`list_checkpoints`) or a sequence of ``(step, path or state_dict)``
    as a list of (step, Path or state dict), sorted by step; bad entries are an error."""
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


def load_checkpoint(make_model: Callable[[], nn.Module], step: int, source: Source) -> nn.Module:
    """A fresh ``make_model()`` with the checkpoint of ``step`` loaded (strictly; see
    :func:`lambdahat.models.load_weights`); a checkpoint of another architecture is a clear error."""
    from .models import load_weights

    model = make_model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"make_model() returned {type(model).__name__}, not a torch.nn.Module.")
    try:
        return load_weights(model, source)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"checkpoint for step {step} ({source if isinstance(source, Path) else 'state dict'}) "
                         f"does not load into make_model()'s model: {err}") from err


def tensor_sha256(t: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (on the CPU)."""
    t = t.detach()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.is_meta:  # no data to hash
        h.update(b"meta")
        return h.hexdigest()
    t = (t.to_dense() if t.layout != torch.strided else t).cpu().contiguous()
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_identity(source: str | Path | Mapping[str, Tensor]) -> str:
    """sha256 of the checkpoint's contents: the file's bytes, or a state dict's names and tensors."""
    h = hashlib.sha256()
    if isinstance(source, Mapping):
        for name in sorted(source):
            value = source[name]
            h.update(str(name).encode())
            h.update(tensor_sha256(value).encode() if isinstance(value, Tensor) else repr(value).encode())
        return h.hexdigest()
    with Path(source).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
