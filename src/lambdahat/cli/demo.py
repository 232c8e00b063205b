"""``lambdahat demo``: ``lambdahat estimate`` on a built-in task with a known answer.

It runs the estimate pipeline of :mod:`lambdahat.cli.estimate` on :data:`DEMO_SETTINGS`' task
(a deep linear network, named like ``--task``), prints the estimate against the truth and writes
``demo_llc.png`` into ``--out``. Any sampler flag of ``estimate`` overrides the demo's setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import truth
from .config import add_setting_flags, read_config
from .errors import UserError
from .estimate import add_running_flags, run_estimate, truth_line, write_results
from .inputs import format_task, resolve_inputs
from .outputs import check_file, check_folder, make_folder, write_file

__all__ = ["DEMO_SETTINGS", "add_parser", "run"]

#: Everything ``lambdahat demo`` runs: the task (the dict form of ``--task dln:30,20,10:1:10000``),
#: the sampler settings (none: the warm-up of ``lambdahat.adapt`` chooses them, as for a user who
#: passes none), and what ``--quick`` changes. The truth for this task is λ = 105 (Aoyagi 2024,
#: Theorem 1) with d = 800 weights.
DEMO_SETTINGS: dict = {
    "task": {"widths": [30, 20, 10], "rank": 1, "n": 10_000, "seed": 0},
    "estimate": {},
    "quick": {"max_steps": 4000},
}


def add_parser(commands) -> argparse.ArgumentParser:
    spec, quick = DEMO_SETTINGS["task"], DEMO_SETTINGS["quick"]
    parser = commands.add_parser(
        "demo",
        help="estimate the LLC of a deep linear network with a known answer",
        description=f"`lambdahat estimate --task {format_task(spec)}` with the demo's setting: the LLC of a "
        f"{'-'.join(map(str, spec['widths']))} deep linear network (rank {spec['rank']}, true λ = "
        f"{truth.deep_linear_network(spec['widths'], spec['rank']).value}), printed against the truth, and a PNG "
        "of the loss traces and running λ̂.",
    )
    parser.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                        help="folder for demo_llc.png, created if missing (default: here)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (" + ", ".join(f"{k} {v}" for k, v in quick.items()) + ")")
    parser.add_argument("--report", type=Path, default=None, metavar="HTML",
                        help="also write a one-page HTML report (figures, numbers, health verdicts, configuration)")
    add_running_flags(parser)
    add_setting_flags(parser.add_argument_group("sampler settings (override the demo's; lambdahat.settings.Settings)"))
    parser.set_defaults(run=run, interrupted="interrupted; nothing was written.")
    return parser


def run(args: argparse.Namespace) -> int:
    given = read_config(args, ()).settings
    preset = dict(DEMO_SETTINGS["estimate"])
    if args.quick:
        preset.update(DEMO_SETTINGS["quick"])
    settings = {k: v for k, v in preset.items() if v is not None}
    settings.update(given)
    settings.setdefault("seed", 0)
    check_folder(args.out, "--out")
    check_file(args.report, "--report")
    inputs = resolve_inputs({"task": DEMO_SETTINGS["task"]})
    if inputs.truth is None:  # pragma: no cover - every built-in task has one
        raise UserError("the demo's task has no known answer.")
    print(f"Task: {inputs.description}.")
    given_text = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in settings.items() if k != "seed")
    print("Sampling: " + (given_text + "; the rest" if given_text else "no settings given: all")
          + " chosen by the adaptive warm-up" + (", nβ = n / log n" if "nbeta" not in settings else "")
          + f", seed {settings['seed']}.")
    result = run_estimate(inputs, settings, threads=args.threads, progress=not args.no_progress)
    print(result)
    print(truth_line(inputs, result))
    spec = DEMO_SETTINGS["task"]
    arch = "-".join(map(str, spec["widths"]))
    from ..plot import plot_summary

    figure = plot_summary(result, truth=inputs.truth, title=f"DLN {arch}, rank {spec['rank']}")
    out = make_folder(args.out, "--out")
    write_file(out / "demo_llc.png", "--out", lambda tmp: figure.savefig(tmp, dpi=110), stream=sys.stdout)
    write_results(result, inputs, report=args.report, title=f"LLC of the DLN {arch} demo", stream=sys.stdout)
    return 0
