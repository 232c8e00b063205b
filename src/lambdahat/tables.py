"""Numbers as text, and result rows as CSV, JSON and DataFrames: one way, shared by every result.

Rows are plain dicts. Lists (such as the names of the failing checks) stay lists in rows, JSON and
DataFrames; only a CSV cell, which must be one string, joins them with ``";"``. Missing numbers
are None or NaN: JSON writes them as ``null`` (strict JSON has no NaN), text as a dash. Files are
written atomically: a failed or interrupted write leaves the old file (or none), never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["fmt", "plain", "as_float", "number", "jsonable", "json_text", "csv_text", "write_text_atomic", "write_csv",
           "write_json", "to_dataframe"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def fmt(value: Any, spec: str = "", *, width: int = 0, missing: str = "—") -> str:
    """``format(value, spec)`` right-aligned to ``width``; None or NaN as ``missing``."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        text = missing
    else:
        text = format(float(value) if isinstance(value, np.floating) else value, spec)
    return f"{text:>{width}}" if width else text


def plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (bool, int or float); anything else as it is."""
    return value.item() if isinstance(value, (np.bool_, np.integer, np.floating)) else value


def as_float(value: Any) -> float:
    """A number as float; None as NaN."""
    return float("nan") if value is None else float(value)


def number(value: Any) -> float | None:
    """A number as float for JSON; None, NaN and ±inf as None."""
    return float(value) if value is not None and math.isfinite(float(value)) else None


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON values: non-finite floats become None, numpy scalars Python numbers,
    objects with ``to_dict()`` (settings, stages) their dict, tensors a short description with a
    content hash, functions their qualified name. Never a memory address."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (float, np.floating)):
        return number(value)
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in (sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value)]
    if isinstance(value, Tensor):
        from .checkpoints import tensor_sha256

        return f"tensor{tuple(value.shape)} sha256:{tensor_sha256(value)[:12]}"
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist()) if value.size <= 1000 else f"array{value.shape} {value.dtype}"
    if isinstance(value, PurePath):
        return str(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):
        return jsonable(to_dict())
    func = getattr(value, "func", None)
    if callable(func) and hasattr(value, "keywords"):  # functools.partial
        return f"partial({jsonable(func)})"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return _ADDRESS.sub("", repr(value))


def json_text(value: Any) -> str:
    """Strict JSON (no NaN) of :func:`jsonable` ``(value)``, indented, with a final newline."""
    return json.dumps(jsonable(value), indent=1, allow_nan=False) + "\n"


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return value


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV with a header of ``columns`` and one line per row (list cells joined by ";", None empty)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows({k: _cell(row[k]) for k in columns} for row in rows)
    return buffer.getvalue()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: readers see the old
    file or the whole new one; on any error (disk full, interruption) the temporary file is removed
    and the error raised."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write :func:`csv_text` to ``path`` (atomically); returns the path."""
    return write_text_atomic(path, csv_text(rows, columns))


def write_json(path: str | Path, value: Any) -> Path:
    """Write :func:`json_text` to ``path`` (atomically); returns the path."""
    return write_text_atomic(path, json_text(value))


def to_dataframe(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *, instead: str = "write_csv(path)"):
    """The rows as a ``pandas.DataFrame`` with ``columns`` (needs pandas; ``instead`` names what does not)."""
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError(f"to_dataframe needs pandas (pip install pandas); {instead} needs nothing.") from err
    return pd.DataFrame([{k: row[k] for k in columns} for row in rows], columns=list(columns))
