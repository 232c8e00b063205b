"""lambdahat.tables: numbers as text, rows as CSV / JSON / DataFrame, written atomically."""

import csv
import functools
import io
import json
import math
import os

import numpy as np
import pytest
import torch

from lambdahat import tables
from lambdahat.settings import Settings


def test_fmt_missing_width_and_numpy():
    assert tables.fmt(None, ".3g") == "—" and tables.fmt(float("nan"), ".3g", missing="-") == "-"
    assert tables.fmt(float("inf"), ".3g") == "inf"  # infinite is a value, not a missing one
    assert tables.fmt(1234.5678, ".4g", width=8) == "    1235"
    assert tables.fmt(1234.5678, ".4g", width=8) == f"{1234.5678:>8.4g}"
    assert tables.fmt(np.float32(0.5), ".2f") == "0.50" and tables.fmt(7, "d", width=3) == "  7"
    assert tables.fmt(None, ".2f", width=4) == "   —"


def test_numbers_for_json_and_arrays():
    assert tables.number(float("nan")) is None and tables.number(float("-inf")) is None and tables.number(2) == 2.0
    assert tables.number(None) is None
    assert math.isnan(tables.as_float(None)) and tables.as_float(3) == 3.0


def test_jsonable_is_plain_json_without_addresses():
    value = {
        "nan": float("nan"), "np": np.int64(3), "npf": np.float32(0.25), "list": (1, [2.0, float("inf")]),
        "tensor": torch.zeros(2, 3), "settings": Settings(seed=2), "fn": tables.fmt,
        "partial": functools.partial(tables.fmt, spec=".3g"), "obj": object(), "set": {2, 1},
    }
    out = tables.jsonable(value)
    text = json.dumps(out, allow_nan=False)
    assert "0x" not in text
    assert out["nan"] is None and out["np"] == 3 and out["npf"] == 0.25 and out["list"] == [1, [2.0, None]]
    assert out["tensor"].startswith("tensor(2, 3) sha256:") and out["settings"]["seed"] == 2
    assert out["fn"] == "lambdahat.tables.fmt" and out["partial"] == "partial(lambdahat.tables.fmt)"
    assert out["set"] == [1, 2]


def test_csv_joins_lists_only_in_the_cell():
    rows = [dict(step=1, failing=["rhat", "ess"], x=None, y=0.5), dict(step=2, failing=[], x=1, y=float("nan"))]
    text = tables.csv_text(rows, ["step", "failing", "x", "y"])
    back = list(csv.DictReader(io.StringIO(text)))
    assert back[0] == {"step": "1", "failing": "rhat;ess", "x": "", "y": "0.5"}
    assert back[1]["failing"] == "" and back[1]["y"] == "nan"
    assert rows[0]["failing"] == ["rhat", "ess"]  # the rows keep their lists


def test_write_json_is_strict_and_writes_whole_files(tmp_path, monkeypatch):
    path = tables.write_json(tmp_path / "a.json", {"x": float("nan"), "names": ["a"]})
    assert json.loads(path.read_text()) == {"x": None, "names": ["a"]} and path.read_text().endswith("\n")
    tables.write_csv(tmp_path / "a.csv", [dict(a=1)], ["a"])
    assert (tmp_path / "a.csv").read_text().splitlines() == ["a", "1"]

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tables.write_json(tmp_path / "a.json", {"x": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.json"]  # no temporary file left
    assert json.loads((tmp_path / "a.json").read_text())["x"] is None  # the old file, whole


def test_to_dataframe():
    rows = [dict(a=1, b=["x"])]
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pandas.*write_csv"):
            tables.to_dataframe(rows, ["a", "b"])
    else:
        frame = tables.to_dataframe(rows, ["a", "b"])
        assert list(frame.columns) == ["a", "b"] and frame["b"][0] == ["x"]
