"""``lambdahat calibrate``: one sampler setting for one or several models, by :func:`lambdahat.calibrate`.

Takes the model, checkpoint and data flags of ``lambdahat estimate`` (the shared input group;
``--checkpoint`` may name several files: one setting is chosen for all of them) and its sampler
flags (a setting given is kept as given in every run). Without a model it calibrates on the demo's
task. Prints the calibration table and the rule's recommendation.

Two generations of :func:`lambdahat.calibrate` are served while the adaptive one lands: the grid
sweep (``step_sizes``/``nbetas``/``localizations`` lists: ``--step-sizes`` etc., with the defaults of
:data:`CALIBRATE_SETTINGS`) and the adaptive one, which takes the settings only.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
from pathlib import Path

from .config import SETTING_NAMES, add_setting_flags, read_config
from .errors import UserError
from .estimate import add_running_flags
from .inputs import add_input_group, format_task, input_options, parse_task, resolve_inputs, torch_threads
from .outputs import check_file, check_folder, make_folder, write_file

__all__ = ["CALIBRATE_SETTINGS", "add_parser", "run"]

#: What ``lambdahat calibrate`` sweeps by default: the coarse ε grid is ε·nβ ∈ {1, 0.1, 0.01,
#: 0.001} (``step_sizes`` None), nβ = n / log n and 100 (so the map has two rows), γ = 1 and 100,
#: each with 4 short chains; ``--quick`` shortens them. Flags win over both.
CALIBRATE_SETTINGS: dict = {
    "sweep": {
        "step_sizes": None,
        "nbetas": [None, 100.0],
        "localizations": [1.0, 100.0],
        "num_chains": 4,
        "num_draws": 400,
        "num_burnin_steps": 400,
        "batch_size": 500,
    },
    "quick": {"num_draws": 100, "num_burnin_steps": 100, "nbetas": [None], "localizations": [1.0]},
}
_SWEPT = {"step_size": "step_sizes", "localization": "localizations", "nbeta": "nbetas"}  # setting → its sweep list


def _number_list(what: str, example: str, *, auto: bool = False, zero: bool = False):
    def parse(text: str) -> list:
        values = []
        for part in text.split(","):
            if auto and part.strip().lower() == "auto":
                values.append(None)
                continue
            try:
                value = float(part)
            except ValueError:
                value = float("nan")
            if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
                raise argparse.ArgumentTypeError(
                    f"expected comma-separated {what}{' or auto (n / log n)' if auto else ''} such as {example}, "
                    f"got {part.strip()!r} in {text!r}")
            values.append(value)
        return values

    return parse


def add_parser(commands) -> argparse.ArgumentParser:
    from .demo import DEMO_SETTINGS

    parser = commands.add_parser(
        "calibrate",
        help="sweep step size × nβ × γ with short chains and recommend one setting",
        description="Sweep step size × nβ × γ with short chains on one or several models (the model flags of "
        "`lambdahat estimate`; default: the demo's task, --task " + format_task(DEMO_SETTINGS["task"]) + "), judge "
        "every run with the health checks, and recommend one setting with the rule that chose it "
        "(lambdahat.calibrate).",
    )
    add_input_group(parser, input_options(checkpoint="many"))
    sweep = parser.add_argument_group("the sweep")
    sweep.add_argument("--step-sizes", type=_number_list("positive step sizes", "1e-3,1e-4"), default=None,
                       metavar="LIST", help="coarse ε grid, e.g. 1e-3,1e-4,1e-5 (default: ε·nβ ∈ {1, 0.1, 0.01, 0.001})")
    sweep.add_argument("--nbetas", type=_number_list("positive nβ values", "auto,100", auto=True), default=None,
                       metavar="LIST", help="nβ values; 'auto' is n / log n (default: auto,100)")
    sweep.add_argument("--localizations", type=_number_list("γ values ≥ 0", "1,100", zero=True), default=None,
                       metavar="LIST", help="γ values (default: 1,100)")
    quick = CALIBRATE_SETTINGS["quick"]
    sweep.add_argument("--quick", action="store_true", help=f"short chains ({quick['num_burnin_steps']} + "
                       f"{quick['num_draws']}), only nβ = n / log n and γ = 1")
    add_setting_flags(parser.add_argument_group("settings of every run (lambdahat.settings.Settings)"))
    out = parser.add_argument_group("output")
    out.add_argument("--csv", type=Path, default=None, help="write the table of every setting tried to this CSV file")
    out.add_argument("--report", type=Path, default=None, metavar="HTML", help="write a one-page HTML report")
    out.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                     help="folder for calibration_map.png of a grid sweep, created if missing (default: here)")
    add_running_flags(out)
    parser.set_defaults(run=run, interrupted="interrupted; nothing was written.")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..calibrate import calibrate
    from .demo import DEMO_SETTINGS

    config = read_config(args, input_options(checkpoint="many"))
    check_folder(args.out, "--out")
    check_file(args.csv, "--csv")
    check_file(args.report, "--report")
    sweep = "step_sizes" in inspect.signature(calibrate).parameters
    settings = _sweep_settings(args, config.settings) if sweep else _adaptive_settings(args, config.settings)
    values = dict(config.values)
    if not any(values.get(k) is not None for k in ("model", "hf", "task")):
        values["task"] = DEMO_SETTINGS["task"]
    inputs = resolve_inputs(values)
    if inputs.sampled_params is not None:
        settings["sampled_params"] = inputs.sampled_params
    if inputs.truth is not None:
        print(f"Task: {inputs.description} (reported only, the rule does not see it).")
    if sweep:
        grid = settings["step_sizes"] or "ε·nβ ∈ {1, 0.1, 0.01, 0.001}"
        print(f"Sweeping step sizes {grid} × nβ {['n / log n' if v is None else v for v in settings['nbetas']]} × γ "
              f"{settings['localizations']}, {settings['num_chains']} chains × ({settings['num_burnin_steps']} + "
              f"{settings['num_draws']}) steps each.")
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
            print(f"At the recommended setting the calibration run gave λ̂ = {run_result.llc_mean:.4g} ± "
                  f"{run_result.llc_mcse:.2g} against the truth λ = {inputs.truth.value} "
                  f"({100 * (run_result.llc_mean - true_value) / true_value:+.1f}%).")
    if sweep:
        from ..plot import plot_calibration_map

        figure = plot_calibration_map(result)
        out = make_folder(args.out, "--out")
        write_file(out / "calibration_map.png", "--out", lambda tmp: figure.savefig(tmp, dpi=110), stream=sys.stdout)
    if args.csv is not None:
        write_file(args.csv, "--csv", result.write_csv, stream=sys.stdout)
    if args.report is not None:
        from ..report import write_report

        title = f"Calibration of the {_title(values)}"
        write_file(args.report, "--report", lambda tmp: write_report(result, tmp, title=title), stream=sys.stdout)
    return 0 if getattr(result, "certified", result.recommended is not None) else 1


def _sweep_settings(args: argparse.Namespace, given: dict) -> dict:
    """The grid sweep's arguments: the preset, --quick, the lists given, then the settings given."""
    for name, plural in _SWEPT.items():
        if name in given:
            raise UserError(f"--{name.replace('_', '-')}: this lambdahat.calibrate sweeps it; give a list with "
                            f"--{plural.replace('_', '-')} instead.")
    settings = dict(CALIBRATE_SETTINGS["sweep"])
    if args.quick:
        settings.update(CALIBRATE_SETTINGS["quick"])
    for name in _SWEPT.values():  # given on the command line: they win over --quick
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    settings.update(given)
    return settings


def _adaptive_settings(args: argparse.Namespace, given: dict) -> dict:
    """The adaptive calibrate's arguments: only the settings given (--quick: short chains)."""
    for name, plural in _SWEPT.items():
        if getattr(args, plural) is not None:
            raise UserError(f"--{plural.replace('_', '-')}: lambdahat.calibrate adapts {name} itself; fix one value with "
                            f"--{name.replace('_', '-')}, or leave it to the adaptation.")
    settings = {k: v for k, v in CALIBRATE_SETTINGS["quick"].items() if k in SETTING_NAMES} if args.quick else {}
    settings.update(given)
    return settings


def _title(values: dict) -> str:
    task = values.get("task")
    if task is not None:
        task = parse_task(task) if isinstance(task, str) else task
        return f"{task.get('family', 'dln').upper()} {'-'.join(map(str, task['widths']))}"
    return str(values.get("model") or values.get("hf"))
