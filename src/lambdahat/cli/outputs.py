"""Files the commands write: checked before any work, written whole or not at all.

The rule: a flag that names a *folder* (``--out``, ``--cache-dir``) is created with its parents
when missing; a flag that names a *file* (``--plot``, ``--report``, ``--save-trace``, ``--csv``)
must point into a folder that exists. Both are checked before anything is sampled, so a typo costs
nothing, and no stray folder trees are made from a mistyped path. Each file is written to a
temporary name beside it and renamed into place; on any failure (a full disk, an interrupt) the
temporary file is deleted, so there is never a partial or 0-byte PNG, HTML, CSV, JSON or NPZ.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .errors import UserError

__all__ = ["check_file", "check_folder", "make_folder", "write_file"]


def check_file(path: Path | None, flag: str) -> None:
    """``path`` (named by ``flag``) can be written as a file: it is not a folder and its folder exists."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; name a file, e.g. {path / ('out' + _suffix(flag))}.")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: the folder {parent} does not exist; create it first (mkdir -p {parent}) "
                        "or write somewhere else.")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: the folder {parent} is not writable; choose another place.")


def check_folder(path: Path, flag: str) -> None:
    """``path`` (named by ``flag``) is a folder or can be made one."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; name a folder (it is created if missing).")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{flag} {path}: {ancestor} is a file, so the folder cannot be made; name another folder.")
    if not os.access(ancestor, os.W_OK):
        raise UserError(f"{flag} {path}: {ancestor} is not writable; choose another folder.")


def make_folder(path: Path, flag: str) -> Path:
    check_folder(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the folder {path} ({flag}): {err.strerror or err}.") from None
    return path


def write_file(path: Path, flag: str, write: Callable[[Path], Any], *, stream: TextIO | None = None) -> Path:
    """``write(tmp)`` writes the file at a temporary path beside ``path``; it is then renamed to
    ``path``. On failure nothing is left: an ``OSError`` becomes a :class:`UserError` naming ``flag``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({flag}): {err.strerror or err}; nothing was left there — free some "
                        "space or choose another place, then rerun.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    print(f"wrote {path}", file=stream or sys.stderr)
    return path


def _suffix(flag: str) -> str:
    return {"--plot": ".png", "--report": ".html", "--save-trace": ".npz", "--csv": ".csv"}.get(flag, "")
