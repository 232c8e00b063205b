"""What every experiment shares: its command line, the machine it ran on, its output files.

A full run writes its Markdown section to ``docs/results/NAME.md`` and its figures to
``docs/figures/``; ``python -m experiments.collect`` joins the sections into docs/results.md.
A ``--quick`` run writes to a scratch folder (``--out``) so CI never touches the docs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


@dataclass
class Run:
    """One experiment's invocation: its name, size, output folders and start time."""

    name: str
    quick: bool
    out: Path
    figures: Path
    argv: list[str]
    started: float = field(default_factory=time.perf_counter)

    @property
    def command(self) -> str:
        return " ".join(["python -m experiments." + self.name, *self.argv])

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def figure_path(self, stem: str) -> Path:
        self.figures.mkdir(parents=True, exist_ok=True)
        return self.figures / f"{stem}.png"

    def write_section(self, body: str) -> Path:
        """Write the experiment's Markdown section, stamped with command, machine and wall time."""
        self.out.mkdir(parents=True, exist_ok=True)
        stamp = (
            f"*Command:* `{self.command}`  \n"
            f"*Machine:* {machine()}  \n"
            f"*Wall time:* {self.elapsed() / 60:.1f} min\n\n"
        )
        path = self.out / f"{self.name}.md"
        path.write_text(body.rstrip() + "\n\n" + stamp)
        return path


def parse(name: str, description: str, argv: Sequence[str] | None, extra=None) -> tuple[Run, argparse.Namespace]:
    """The shared command line: ``--quick`` and ``--out``, plus what ``extra(parser)`` adds."""
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    parser.add_argument("--quick", action="store_true", help="CI-sized run that checks the direction of the result")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the Markdown section and figures (default: docs/results for a full run, "
        "experiments/out for --quick)",
    )
    if extra is not None:
        extra(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.out is None:
        out = REPO / "experiments" / "out" if args.quick else DOCS / "results"
        figures = out if args.quick else DOCS / "figures"
    else:
        out = figures = args.out
    return Run(name, args.quick, out, figures, argv), args


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} on 1 thread, "
        f"Python {platform.python_version()}, no GPU"
        if not torch.cuda.is_available()
        else f"{torch.cuda.get_device_name()} with torch {torch.__version__}"
    )


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (no ties expected among continuous estimates)."""
    rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as a Markdown table; ``columns`` pairs a row key with its header."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3g}"
    return str(value)
