"""``lambdahat calibrate``: one sampler setting for one or several models, by :func:`lambdahat.calibrate`.

Takes the model, checkpoint and data flags of ``lambdahat estimate`` (the shared input group;
``--checkpoint`` may name several files: one setting is chosen for all of them) and its sampler
flags (a setting given is kept as given in every run; the rest are adapted on each model, then one
setting is taken for all and verified on each). Without a model it calibrates on the demo's task.
Prints the calibration table and the recommendation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import add_setting_flags, read_config
from .errors import UserError
from .estimate import add_running_flags
from .inputs import add_input_group, format_task, input_options, parse_task, resolve_inputs, torch_threads
from .outputs import check_file, write_file

__all__ = ["CALIBRATE_SETTINGS", "add_parser", "run"]

#: ``--quick``: a smaller step budget per run.
CALIBRATE_SETTINGS: dict = {"quick": {"max_steps": 3000}}


def add_parser(commands) -> argparse.ArgumentParser:
    from .demo import DEMO_SETTINGS

    parser = commands.add_parser(
        "calibrate",
        help="one sampler setting for several models: adapt on each, take one, verify it on each",
        description="Run the adaptive estimate on one or several models (the model flags of `lambdahat estimate`; "
        "default: the demo's task, --task " + format_task(DEMO_SETTINGS["task"]) + "), take the smallest step size, "
        "the smallest localization and the longest chains any of them chose as one setting, and verify it on every "
        "model (lambdahat.calibrate). Exit status 1 when the setting does not certify every model.",
    )
    add_input_group(parser, input_options(checkpoint="many"))
    quick = CALIBRATE_SETTINGS["quick"]
    parser.add_argument("--quick", action="store_true", help=f"a smaller step budget (max_steps {quick['max_steps']})")
    add_setting_flags(parser.add_argument_group("settings of every run (lambdahat.settings.Settings)"))
    out = parser.add_argument_group("output")
    out.add_argument("--csv", type=Path, default=None, help="write the table of every setting tried to this CSV file")
    out.add_argument("--report", type=Path, default=None, metavar="HTML", help="write a one-page HTML report")
    add_running_flags(out)
    parser.set_defaults(run=run, interrupted="interrupted; nothing was written.")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..calibrate import calibrate
    from .demo import DEMO_SETTINGS

    config = read_config(args, input_options(checkpoint="many"))
    check_file(args.csv, "--csv")
    check_file(args.report, "--report")
    settings = dict(CALIBRATE_SETTINGS["quick"]) if args.quick else {}
    settings.update(config.settings)
    values = dict(config.values)
    if not any(values.get(k) is not None for k in ("model", "hf", "task")):
        values["task"] = DEMO_SETTINGS["task"]
    inputs = resolve_inputs(values)
    if inputs.sampled_params is not None:
        settings["sampled_params"] = inputs.sampled_params
    if inputs.truth is not None:
        print(f"Task: {inputs.description} (reported only, the rule does not see it).")
    with torch_threads(args.threads, inputs.model):
        try:
            result = calibrate(inputs.model, inputs.data, inputs.loss_fn, truth=inputs.truth,
                               progress=not args.no_progress, **settings)
        except (ValueError, TypeError) as err:
            raise UserError(str(err)) from None
    print()
    print(result)
    if inputs.truth is not None:
        true_value = float(inputs.truth.value)
        for run_result in result.recommended_results().values():
            print(f"At the recommended setting λ̂ = {run_result.llc_mean:.4g} ± "
                  f"{run_result.llc_mcse:.2g} against the truth λ = {inputs.truth.value} "
                  f"({100 * (run_result.llc_mean - true_value) / true_value:+.1f}%).")
    if args.csv is not None:
        write_file(args.csv, "--csv", result.write_csv, stream=sys.stdout)
    if args.report is not None:
        from ..report import write_report

        title = f"Calibration of the {_title(values)}"
        write_file(args.report, "--report", lambda tmp: write_report(result, tmp, title=title), stream=sys.stdout)
    return 0 if result.certified else 1


def _title(values: dict) -> str:
    task = values.get("task")
    if task is not None:
        task = parse_task(task) if isinstance(task, str) else task
        return f"{task.get('family', 'dln').upper()} {'-'.join(map(str, task['widths']))}"
    return str(values.get("model") or values.get("hf"))
