"""``lambdahat estimate``: the LLC of any model from the command line.

Parses where the model, weights, data and settings come from, and calls
:func:`lambdahat.estimate_llc`. Settings come from flags or a TOML file (flags win); the same
setting gives the same result either way. :func:`resolve_inputs` and :func:`estimate_settings`
are shared with the other commands that take a model and data.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "resolve_inputs", "estimate_settings", "SETTING_FLAGS"]

#: estimate_llc keyword → (type, help). Each becomes a flag --name-with-dashes.
SETTING_FLAGS: dict[str, tuple[Any, str]] = {
    "step_size": (float, "ε, the SGLD step size and noise variance (default 2e-5)"),
    "localization": (float, "γ, the pull toward w* (default 100)"),
    "nbeta": (float, "nβ, inverse temperature × n (default n / log n); keep it fixed across compared models"),
    "num_chains": (int, "independent chains (default 4)"),
    "num_draws": (int, "draws per chain after burn-in (default 1000)"),
    "num_burnin_steps": (int, "burn-in steps per chain, not averaged (default 500)"),
    "batch_size": (int, "minibatch size (default 256)"),
    "sampler": (str, "sgld, rmsprop_sgld, sghmc, sgnht or mala (default sgld)"),
    "seed": (int, "the run's seed (default 0)"),
    "chain_mode": (str, "auto, sequential or vectorized (default auto)"),
    "init_loss_batch_size": (int, "batch size for L_n(w*) on the full data (default 4096)"),
}
_INPUT_KEYS = ("model", "model_kwargs", "hf", "task", "checkpoint", "data", "seq_len", "loss", "head", "params")
_LOSSES = ("gaussian_nll", "cross_entropy", "next_token")

EXAMPLES = """\
examples:
  lambdahat estimate --task dln:30,20,10:1 --step-size 5e-5 --localization 1 --batch-size 500
  lambdahat estimate --model lambdahat.models:tiny_transformer --checkpoint step_1000.pt \\
      --data corpus.txt --seq-len 64 --nbeta 30 --head 1.2 --json
  lambdahat estimate --hf ./my-gpt2 --data corpus.txt --nbeta 30 --step-size 1e-5
  lambdahat estimate --config run.toml --seed 3        # flags override the file

a TOML file holds the same names as the flags, with underscores:
  model = "mypkg.models:make_mlp"      # or hf = "DIR", or task = "dln:30,20,10:1"
  model_kwargs = { hidden = 64 }
  checkpoint = "ckpt/step_1000.pt"
  data = "data.pt"                     # .pt/.npz tensors, or a text file
  loss = "gaussian_nll"
  [estimate]
  step_size = 1e-4
  nbeta = 30.0
"""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "estimate",
        help="estimate the LLC of a model (factory, Hugging Face folder or built-in task) on data from a file",
        description="Estimate the local learning coefficient λ̂ = nβ (E[L_n(w)] − L_n(w*)) of a model at its "
        "weights w*, by SGLD on the localised tempered posterior (Lau et al., arXiv 2308.12108). Prints the "
        "estimate with its error bar, per-chain values, health verdicts and the settings used.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_arguments(parser)
    group = parser.add_argument_group("sampler settings (estimate_llc's arguments)")
    add_setting_arguments(group)
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the result as JSON on stdout (verdicts, settings, numbers)")
    out.add_argument("--report", type=Path, default=None, metavar="HTML", help="write a one-page HTML report")
    out.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write the loss traces and running λ̂")
    out.add_argument("--save-trace", type=Path, default=None, metavar="NPZ", help="save every chain's per-step records")
    out.add_argument("--threads", type=int, default=None,
                     help="torch intra-op threads (default: 1 for models under 1M weights, else torch's own)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and data")
    group.add_argument("--config", type=Path, default=None, metavar="TOML", help="read inputs and settings from a TOML file")
    group.add_argument("--model", default=None, metavar="MODULE:FUNCTION",
                       help="a factory returning an nn.Module: 'package.module:function' or 'file.py:function'")
    group.add_argument("--model-kwargs", type=json.loads, default=None, metavar="JSON",
                       help='keyword arguments for the factory, as JSON, e.g. \'{"hidden": 64}\'')
    group.add_argument("--hf", type=Path, default=None, metavar="DIR", help="a local Hugging Face causal LM folder")
    group.add_argument("--task", default=None, metavar="SPEC",
                       help="a built-in task with a known λ: dln:WIDTHS:RANK (e.g. dln:30,20,10:1) or rrr:M,H,N:RANK")
    group.add_argument("--checkpoint", type=Path, default=None, help="a state-dict file (.pt or .safetensors) to load")
    group.add_argument("--data", type=Path, default=None, help=".pt/.npz tensors, or a text file (tokenised into windows)")
    group.add_argument("--seq-len", type=int, default=None, help="tokens per window for text data (default 64)")
    group.add_argument("--loss", choices=_LOSSES, default=None,
                       help="default: next_token for text and Hugging Face models, the task's own for tasks, else gaussian_nll")
    group.add_argument("--head", default=None, metavar="LAYER.HEAD", help="measure one attention head only, e.g. 1.2")
    group.add_argument("--params", nargs="+", default=None, metavar="NAME",
                       help="measure only these parameters or submodules (names or prefixes)")


def add_setting_arguments(group) -> None:
    for name, (kind, help_text) in SETTING_FLAGS.items():
        group.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text)
    group.add_argument("--train-mode", action="store_true", default=None, help="sample in train mode (dropout on)")


def load_config(
    args: argparse.Namespace, input_keys: tuple[str, ...], command: str, sections: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """(inputs, estimate_llc settings, {section: table}) from the ``--config`` TOML file, if any,
    overlaid with the flags that were given (flags win). Settings may sit at the top level or
    under ``[estimate]``."""
    config: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        try:
            config = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise SystemExit(f"lambdahat {command}: error: cannot read --config {args.config}: {err}") from None
    settings = dict(config.pop("estimate", {}))
    tables = {name: dict(config.pop(name, {})) for name in sections}
    unknown = sorted(set(config) - set(input_keys) - set(SETTING_FLAGS) - {"train_mode"})
    if unknown:
        raise SystemExit(
            f"lambdahat {command}: error: unknown key(s) {unknown} in {args.config}; known: {sorted(input_keys)}, "
            f"sampler settings {sorted(SETTING_FLAGS)} (or under [estimate])"
            + "".join(f" and [{name}]" for name in sections) + "."
        )
    settings.update({k: config.pop(k) for k in list(config) if k in SETTING_FLAGS or k == "train_mode"})
    for key in input_keys:
        value = getattr(args, key, None)
        if value is not None:
            config[key] = str(value) if isinstance(value, Path) else value
    for key in (*SETTING_FLAGS, "train_mode"):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return config, settings, tables


def read_config(args: argparse.Namespace) -> dict[str, Any]:
    """The TOML file (if any) overlaid with the flags that were given."""
    config, settings, _ = load_config(args, _INPUT_KEYS, "estimate")
    config["estimate"] = settings
    return config


def resolve_inputs(config: dict[str, Any]):
    """(model, data, loss_fn, truth or None, sampled_params or None) from the inputs in ``config``."""
    from . import datafiles, losses, models

    sources = [k for k in ("model", "hf", "task") if config.get(k)]
    if len(sources) != 1:
        raise SystemExit("lambdahat: error: give exactly one of --model MODULE:FUNCTION, --hf DIR or --task SPEC"
                         + (f" (got {', '.join('--' + s for s in sources)})." if sources else "."))
    truth, tokenizer, default_loss = None, None, "gaussian_nll"
    try:
        if config.get("task"):
            task = _task(config["task"])
            model, data, loss_fn, truth = task.model, task.data, task.loss_fn, task.truth
        else:
            if config.get("hf"):
                model, tokenizer = models.load_hf(config["hf"])
                default_loss = "next_token"
            else:
                model = models.load_factory(config["model"], **(config.get("model_kwargs") or {}))
            if not config.get("data"):
                raise SystemExit("lambdahat: error: --data FILE is needed with --model or --hf.")
            path = Path(config["data"])
            data = datafiles.load_data(path, tokenizer=tokenizer, seq_len=int(config.get("seq_len") or 64))
            if path.suffix not in (".pt", ".pth", ".npz"):
                default_loss = "next_token"
            loss_fn = getattr(losses, config.get("loss") or default_loss)
        if config.get("checkpoint"):
            models.load_weights(model, config["checkpoint"])
        sampled = None
        if config.get("head"):
            layer, _, head = str(config["head"]).partition(".")
            sampled = models.head_mask(model, int(layer), int(head))
        elif config.get("params"):
            sampled = list(config["params"])
    except (ValueError, TypeError, ImportError) as err:
        raise SystemExit(f"lambdahat: error: {err}") from None
    return model, data, loss_fn, truth, sampled


def _task(spec: str):
    from . import tasks

    kind, _, rest = spec.partition(":")
    dims, _, rank = rest.partition(":")
    try:
        widths = [int(v) for v in dims.split(",")]
        rank_value = int(rank or 0)
    except ValueError:
        raise ValueError(f"--task must look like dln:30,20,10:1 or rrr:5,3,5:1, got {spec!r}.") from None
    if kind == "dln":
        return tasks.deep_linear_network(widths, rank=rank_value)
    if kind == "rrr" and len(widths) == 3:
        return tasks.reduced_rank_regression(*widths, rank=rank_value)
    raise ValueError(f"--task must look like dln:30,20,10:1 or rrr:5,3,5:1, got {spec!r}.")


def estimate_settings(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config.get("estimate", {}))


def set_threads(requested: int | None, model) -> None:
    """Torch intra-op threads for a command: as requested, else 1 for a model under 1M weights,
    which gains nothing from more and loses up to 20× when the cores are shared (measured on 2)."""
    import torch

    threads = requested
    if threads is None and sum(p.numel() for p in model.parameters()) < 1_000_000:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    from .estimate import estimate_llc

    config = read_config(args)
    model, data, loss_fn, truth, sampled = resolve_inputs(config)
    settings = estimate_settings(config)
    if sampled is not None:
        settings["sampled_params"] = sampled
    set_threads(args.threads, model)
    try:
        result = estimate_llc(model, data, loss_fn, progress=not (args.no_progress or args.json), **settings)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"lambdahat estimate: error: {err}") from None
    if args.json:
        out = result.to_dict()
        if truth is not None:
            out["truth"] = float(truth.value)
        json.dump(out, sys.stdout, indent=2, default=str)
        print()
    else:
        print(result)
        if truth is not None:
            rel = 100 * (result.llc_mean - float(truth.value)) / float(truth.value)
            print(f"truth λ = {truth.value} — relative error {rel:+.1f}%")
    if args.plot is not None:
        from .plot import plot_summary

        plot_summary(result, truth=truth).savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.report is not None:
        from .report import write_report

        print(f"wrote {write_report(result, args.report, truth=truth)}", file=sys.stderr)
    if args.save_trace is not None:
        result.trace.save(args.save_trace)
        print(f"wrote {args.save_trace}", file=sys.stderr)
    return 0
