"""``lambdahat trajectory``: the LLC of every checkpoint in a folder, its stages, a table and a plot.

Parses where the checkpoints, model, data and the one setting come from (flags or a TOML file;
flags win) and calls :func:`lambdahat.trajectory`. The model and data arguments are those of
``lambdahat estimate`` (:mod:`lambdahat.cli_estimate`).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from .cli_estimate import add_setting_arguments, load_config, resolve_inputs, set_threads

__all__ = ["add_parser", "read_config", "STAGE_FLAGS"]

#: detect_stages keyword → (type, help); each becomes a flag --name-with-dashes.
STAGE_FLAGS: dict[str, tuple[Any, str]] = {
    "smoothing": (float, "kernel half-width as a fraction of the step range (default 0.1)"),
    "flat_tol": (float, "slope below which λ̂ counts as flat, as a fraction of its typical slope (default 0.1)"),
    "min_stage": (float, "shortest stage, as a fraction of the step range (default 0.1)"),
    "significance": (float, "a slope within this many standard errors of 0 counts as flat (default 2)"),
}
_INPUT_KEYS = ("checkpoints", "model", "model_kwargs", "hf", "data", "seq_len", "loss", "head", "params", "out",
               "cache_dir", "workers", "log_steps")

DESCRIPTION = """\
Estimate the LLC λ̂ = nβ (E[L_n(w)] − L_n(w*)) (Lau et al., arXiv 2308.12108) of every checkpoint in
a folder, with ONE sampler setting for all of them, and find the stages of training: the critical
points of the λ̂ curve, where it peaks, dips or plateaus (after Hoogland et al., arXiv 2402.02364).

Checkpoint files end in .pt/.pth/.ckpt/.bin/.safetensors and carry their training step as the last
number in the name (step_000100.pt, ckpt-100.pth). Each holds a state dict (directly, or under
"model"/"state_dict", as training loops save it) for the model that --model builds.

Keep the setting fixed across checkpoints: λ̂ at different nβ are different quantities, and a step
size re-tuned per checkpoint makes neighbours incomparable. Choose it once with `lambdahat
calibrate` / lambdahat.calibrate on a few checkpoints, and pass it here with flags or --config.

Writes to --out: trajectory.csv (one row per checkpoint: step, λ̂, its MCSE and spread, L_n(w*),
health), trajectory.json (the table, the stages, the settings), trajectory.png (λ̂ and L_n(w*)
against step, stage boundaries marked) and stages.json. Each finished checkpoint is cached in
--out/cache (or --cache-dir): run the same command again after an interruption, or after adding
checkpoints, and only the missing ones are estimated.
"""

EXAMPLES = """\
examples:
  lambdahat trajectory runs/ckpts --model lambdahat.models:tiny_transformer \\
      --model-kwargs '{"d_model": 32, "seq_len": 64}' --data corpus.txt --seq-len 64 \\
      --nbeta 30 --step-size 1e-4 --localization 100 --num-chains 4 --num-draws 200 --out llc_run
  lambdahat trajectory runs/ckpts --config trajectory.toml --json > summary.json
  lambdahat trajectory runs/ckpts --hf ./my-gpt2 --data corpus.txt --nbeta 30 --log-steps

a TOML file holds the same names as the flags, with underscores; flags override it:
  checkpoints = "runs/ckpts"
  model = "mypkg.models:make_model"     # or hf = "DIR"
  model_kwargs = { d_model = 32 }
  data = "corpus.txt"                   # .pt/.npz tensors, or text (the model's tokenizer, else bytes)
  seq_len = 64
  out = "llc_run"
  [estimate]                            # estimate_llc's arguments: one setting for every checkpoint
  step_size = 1e-4
  nbeta = 30.0
  localization = 100.0
  num_chains = 4
  num_draws = 200
  [stages]                              # detect_stages' arguments
  log_steps = true
"""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "trajectory",
        help="the LLC of every checkpoint in a folder with one setting, its stages, a table and a plot",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoints", nargs="?", type=Path, default=None, metavar="CHECKPOINTS",
                        help="folder of checkpoint files whose names carry the step, e.g. step_000100.pt")
    group = parser.add_argument_group("model and data")
    group.add_argument("--config", type=Path, default=None, metavar="TOML", help="read everything from a TOML file")
    group.add_argument("--model", default=None, metavar="MODULE:FUNCTION",
                       help="a factory returning the checkpoints' nn.Module: 'package.module:function' or 'file.py:function'")
    group.add_argument("--model-kwargs", type=json.loads, default=None, metavar="JSON",
                       help='keyword arguments for the factory, as JSON, e.g. \'{"d_model": 32}\'')
    group.add_argument("--hf", type=Path, default=None, metavar="DIR",
                       help="a local Hugging Face causal LM folder: the architecture (and tokenizer) the checkpoints load into")
    group.add_argument("--data", type=Path, default=None, help=".pt/.npz tensors, or a text file (tokenised into windows)")
    group.add_argument("--seq-len", type=int, default=None, help="tokens per window for text data (default 64)")
    group.add_argument("--loss", choices=("gaussian_nll", "cross_entropy", "next_token"), default=None,
                       help="default: next_token for text and Hugging Face models, else gaussian_nll")
    group.add_argument("--head", default=None, metavar="LAYER.HEAD", help="measure one attention head only, e.g. 1.2")
    group.add_argument("--params", nargs="+", default=None, metavar="NAME",
                       help="measure only these parameters or submodules (names or prefixes)")
    settings = parser.add_argument_group("sampler settings: one for every checkpoint (estimate_llc's arguments)")
    add_setting_arguments(settings)
    stages = parser.add_argument_group("stage detection (lambdahat.stages.detect_stages)")
    stages.add_argument("--log-steps", action="store_true", default=None,
                        help="judge the curve against log(step), for logarithmically spaced checkpoints")
    for name, (kind, help_text) in STAGE_FLAGS.items():
        stages.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text)
    out = parser.add_argument_group("output and running")
    out.add_argument("--out", type=Path, default=None, metavar="DIR", help="folder for the table, plot and stages (default: trajectory)")
    out.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="per-checkpoint cache (default: OUT/cache)")
    out.add_argument("--no-cache", action="store_true", help="recompute every checkpoint and cache nothing")
    out.add_argument("--workers", type=int, default=None,
                     help="run checkpoints × chains on a pool of this many worker processes (default: none, in this process)")
    out.add_argument("--threads", type=int, default=None,
                     help="torch intra-op threads (default: 1 for models under 1M weights, else torch's own)")
    out.add_argument("--json", action="store_true", help="print the table, stages and settings as JSON on stdout")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def read_config(args: argparse.Namespace) -> dict[str, Any]:
    """The TOML file (if any) overlaid with the flags that were given: inputs at the top level,
    estimate_llc settings under ``estimate``, detect_stages options under ``stages``."""
    config, settings, tables = load_config(args, _INPUT_KEYS, "trajectory", sections=("stages",))
    stage_options = tables["stages"]
    if "log_steps" in config:  # a top-level key or the flag (which load_config already laid over it)
        stage_options["log_steps"] = config.pop("log_steps")
    for key in STAGE_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            stage_options[key] = value
    config["estimate"], config["stages"] = settings, stage_options
    return config


def run(args: argparse.Namespace) -> int:
    from .trajectory import trajectory

    config = read_config(args)
    if not config.get("checkpoints"):
        raise SystemExit("lambdahat trajectory: error: give the CHECKPOINTS folder (or checkpoints = \"DIR\" in --config).")
    if config.get("task"):
        raise SystemExit("lambdahat trajectory: error: a built-in task has no checkpoints; use --model or --hf.")
    template, data, loss_fn, _, sampled = resolve_inputs(config)
    settings = dict(config["estimate"])
    if sampled is not None:
        settings["sampled_params"] = sampled

    def make_model():  # a fresh copy of the factory's (or folder's) model for each checkpoint
        return copy.deepcopy(template)

    set_threads(args.threads, template)
    out = Path(config.get("out") or "trajectory")
    out.mkdir(parents=True, exist_ok=True)
    cache = None if args.no_cache else Path(config.get("cache_dir") or out / "cache")
    workers = config.get("workers")
    pool = None
    if workers:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=int(workers))
    try:
        result = trajectory(config["checkpoints"], make_model, data, loss_fn, settings, cache_dir=cache,
                            executor=pool, progress=not (args.no_progress or args.json),
                            stage_options=config["stages"])
    except (ValueError, TypeError) as err:
        raise SystemExit(f"lambdahat trajectory: error: {err}") from None
    finally:
        if pool is not None:
            pool.shutdown()

    written = [result.to_csv(out / "trajectory.csv"), result.to_json(out / "trajectory.json")]
    stages_path = out / "stages.json"
    stages_path.write_text(json.dumps(result.stages.to_dict() if result.stages is not None else None, indent=1) + "\n")
    written.append(stages_path)
    figure = result.plot(title=Path(config["checkpoints"]).name)
    figure.savefig(out / "trajectory.png", dpi=110)
    written.append(out / "trajectory.png")
    if args.json:
        json.dump({**result.to_dict(), "files": [str(p) for p in written]}, sys.stdout, indent=1)
        print()
    else:
        print(result)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
