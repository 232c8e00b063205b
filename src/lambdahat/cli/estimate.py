"""``lambdahat estimate``: the LLC of any model from the command line.

Parses where the model, weights, data and settings come from (:mod:`lambdahat.cli.inputs`, flags
or a TOML file, flags win; the same setting gives the same result either way) and calls
:func:`lambdahat.estimate_llc`. :func:`run_estimate` and :func:`write_results` are shared with
``lambdahat demo``, which is this command on a built-in task.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from .config import TRUST_NOTE, add_setting_flags, read_config
from .errors import UserError, positive_int
from .inputs import Inputs, add_input_group, input_options, resolve_inputs, torch_threads
from .outputs import check_file, write_file

__all__ = ["add_parser", "run", "run_estimate", "write_results", "add_output_flags"]

EXAMPLES = f"""\
examples:
  lambdahat estimate --task dln:30,20,10:1 --step-size 5e-5 --localization 1 --batch-size 500
  lambdahat estimate --model lambdahat.models:tiny_transformer --checkpoint step_1000.pt \\
      --data corpus.txt --seq-len 64 --nbeta 30 --head 1.2 --json
  lambdahat estimate --hf ./my-gpt2 --data corpus.txt --nbeta 30 --step-size 1e-5
  lambdahat estimate --config run.toml --seed 3        # flags override the file

a TOML file holds the same names as the flags, with underscores:
  model = "mypkg.models:make_mlp"      # or hf = "DIR", or task = "dln:30,20,10:1"
  model_kwargs = {{ hidden = 64 }}
  checkpoint = "ckpt/step_1000.pt"
  data = "data.pt"                     # .pt/.npz tensors, or a text file
  loss = "gaussian_nll"
  [estimate]                           # the sampler settings (or at the top level)
  step_size = 1e-4
  nbeta = 30.0

trust: {TRUST_NOTE}
files: --plot/--report/--save-trace must go into an existing folder (checked before sampling);
each is written whole (temporary file, then renamed) or not at all.
"""


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "estimate",
        help="estimate the LLC of a model (factory, Hugging Face folder or built-in task) on data from a file",
        description="Estimate the local learning coefficient λ̂ = nβ (E[L_n(w)] − L_n(w*)) of a model at its "
        "weights w*, by SGLD on the localised tempered posterior (Lau et al., arXiv 2308.12108). Prints the "
        "estimate with its error bar, per-chain values, health verdicts and the settings used.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_group(parser, input_options())
    add_setting_flags(parser.add_argument_group("sampler settings (estimate_llc's arguments; lambdahat.settings.Settings)"))
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the result as JSON on stdout (verdicts, settings, numbers)")
    add_output_flags(out)
    parser.set_defaults(run=run, interrupted="interrupted; nothing was written.")
    return parser


def add_output_flags(group, *, trace: bool = True) -> None:
    group.add_argument("--report", type=Path, default=None, metavar="HTML", help="write a one-page HTML report")
    group.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write the loss traces and running λ̂")
    if trace:
        group.add_argument("--save-trace", type=Path, default=None, metavar="NPZ",
                           help="save every chain's per-step records (.npz is appended if missing)")
    add_running_flags(group)


def add_running_flags(group) -> None:
    group.add_argument("--threads", type=positive_int, default=None, metavar="N",
                       help="torch intra-op threads (default: 1 for models under 1M weights, else torch's own)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = read_config(args, input_options())
    outputs = _check_outputs(args)
    inputs = resolve_inputs(config.values)
    result = run_estimate(inputs, config.settings, threads=args.threads,
                          progress=not (args.no_progress or args.json))
    if args.json:
        out = result.to_dict()
        if inputs.truth is not None:
            out["truth"] = float(inputs.truth.value)
        json.dump(out, sys.stdout, indent=2, default=str)
        print()
    else:
        print(result)
        if inputs.truth is not None:
            print(truth_line(inputs, result))
    write_results(result, inputs, **outputs)
    return 0


def _check_outputs(args: argparse.Namespace) -> dict[str, Path | None]:
    trace = getattr(args, "save_trace", None)
    if trace is not None and trace.suffix != ".npz":
        trace = trace.with_name(trace.name + ".npz")
    outputs = {"plot": args.plot, "report": args.report, "save_trace": trace}
    for name, path in outputs.items():
        check_file(path, "--" + name.replace("_", "-"))
    return outputs


def run_estimate(inputs: Inputs, settings: dict[str, Any], *, threads: int | None, progress: bool):
    """:func:`lambdahat.estimate_llc` with only the settings that were given (the rest keep its
    defaults), under the thread policy; a :class:`UserError` for a mistake it reports."""
    from ..estimate import estimate_llc

    kwargs = dict(settings)
    if inputs.sampled_params is not None:
        kwargs["sampled_params"] = inputs.sampled_params
    with torch_threads(threads, inputs.model):
        try:
            return estimate_llc(inputs.model, inputs.data, inputs.loss_fn, progress=progress, **kwargs)
        except (ValueError, TypeError) as err:
            raise UserError(str(err)) from None


def truth_line(inputs: Inputs, result) -> str:
    value = float(inputs.truth.value)
    rel = 100 * (result.llc_mean - value) / value if value else float("nan")
    return (f"truth λ = {inputs.truth.value} ({inputs.truth_source}) — estimate {result.llc_mean:.4g} ± "
            f"{result.llc_mcse:.2g}, relative error {rel:+.1f}%, {result.wall_time:.1f} s")


def write_results(result, inputs: Inputs, *, plot: Path | None = None, report: Path | None = None,
                  save_trace: Path | None = None, title: str | None = None, stream: TextIO | None = None) -> None:
    """The figure, HTML report and trace a run asked for, each written whole or not at all."""
    if plot is not None:
        from ..plot import plot_summary

        figure = plot_summary(result, truth=inputs.truth, title=title)
        write_file(plot, "--plot", lambda tmp: figure.savefig(tmp, dpi=110), stream=stream)
    if report is not None:
        from ..report import write_report

        write_file(report, "--report", lambda tmp: write_report(result, tmp, truth=inputs.truth, title=title),
                   stream=stream)
    if save_trace is not None:
        write_file(save_trace, "--save-trace", lambda tmp: result.trace.save(tmp), stream=stream)
