"""``lambdahat trajectory``: the LLC of every checkpoint in a folder, its stages, a table and a plot.

Parses where the checkpoints, model, data and the one setting come from (the input group of
``lambdahat estimate``, flags or a TOML file; flags win) and calls :func:`lambdahat.trajectory`.
With ``--workers`` the pool's processes ignore Ctrl-C (the command handles it once, stops them and
says how to resume) and exit by themselves when the command is killed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from ..workers import stop_pool, worker_pool
from .config import Option, add_setting_flags, read_config
from .errors import UserError, positive_int
from .estimate import add_running_flags
from .inputs import add_input_group, input_options, resolve_inputs, torch_threads
from .outputs import check_folder, make_folder, write_file

__all__ = ["add_parser", "run", "STAGE_OPTIONS"]

#: detect_stages' options: the [stages] table of a config file and one flag each.
STAGE_OPTIONS: tuple[Option, ...] = (
    Option("log_steps", "switch", "judge the curve against log(step), for logarithmically spaced checkpoints"),
    Option("smoothing", "posfloat", "kernel half-width as a fraction of the step range (default 0.1)", "X"),
    Option("flat_tol", "posfloat", "slope below which λ̂ counts as flat, as a fraction of its typical slope "
           "(default 0.1)", "X"),
    Option("min_stage", "posfloat", "shortest stage, as a fraction of the step range (default 0.1)", "X"),
    Option("significance", "posfloat", "a slope within this many standard errors of 0 counts as flat (default 2)",
           "X"),
)
_OWN_OPTIONS: tuple[Option, ...] = (
    Option("checkpoints", "path", "folder of checkpoint files whose names carry the step, e.g. step_000100.pt",
           "CHECKPOINTS", positional=True),
    Option("out", "path", "folder for the table, plot and stages, created if missing (default: trajectory)", "DIR"),
    Option("cache_dir", "path", "per-checkpoint cache (default: OUT/cache)", "DIR"),
    Option("workers", "posint", "run checkpoints × chains on a pool of this many worker processes (default: none, "
           "in this process)", "N"),
)

DESCRIPTION = """\
Estimate the LLC λ̂ = nβ (E[L_n(w)] − L_n(w*)) (Lau et al., arXiv 2308.12108) of every checkpoint in
a folder, with ONE sampler setting for all of them, and find the stages of training: the critical
points of the λ̂ curve, where it peaks, dips or plateaus (after Hoogland et al., arXiv 2402.02364).

Checkpoint files end in .pt/.pth/.ckpt/.bin/.safetensors and carry their training step as the last
number in the name (step_000100.pt, ckpt-100.pth). Each holds a state dict (directly, or under
"model"/"state_dict", as training loops save it) for the model that --model builds.

Keep the setting fixed across checkpoints: λ̂ at different nβ are different quantities, and a step
size re-tuned per checkpoint makes neighbours incomparable. Choose it once with `lambdahat
calibrate --checkpoint FIRST LAST ...` / lambdahat.calibrate, and pass it here with flags or --config.

Writes to --out: trajectory.csv (one row per checkpoint: step, λ̂, its MCSE and spread, L_n(w*),
health), trajectory.json (the table, the stages, the settings), trajectory.png (λ̂ and L_n(w*)
against step, stage boundaries marked) and stages.json. Each finished checkpoint is cached in
--out/cache (or --cache-dir): run the same command again after an interruption (Ctrl-C), or after
adding checkpoints, and only the missing ones are estimated.
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
  model = "mypkg.models:make_model"     # or hf = "DIR"; model is code: it is imported and run
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


def _options() -> list[Option]:
    return [*input_options(task=False, checkpoint=None), *_OWN_OPTIONS]


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "trajectory",
        help="the LLC of every checkpoint in a folder with one setting, its stages, a table and a plot",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _OWN_OPTIONS[0].add_to(parser)
    add_input_group(parser, input_options(task=False, checkpoint=None))
    add_setting_flags(parser.add_argument_group("sampler settings: one for every checkpoint (lambdahat.settings.Settings)"))
    stages = parser.add_argument_group("stage detection (lambdahat.stages.detect_stages)")
    for option in STAGE_OPTIONS:
        option.add_to(stages)
    out = parser.add_argument_group("output and running")
    for option in _OWN_OPTIONS[1:]:
        option.add_to(out)
    out.add_argument("--no-cache", action="store_true", help="recompute every checkpoint and cache nothing")
    out.add_argument("--json", action="store_true", help="print the table, stages and settings as JSON on stdout")
    add_running_flags(out)
    parser.set_defaults(run=run, interrupted="interrupted; the finished checkpoints are cached: rerun the same "
                        "command to resume.")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..trajectory import trajectory

    config = read_config(args, _options(), tables={"stages": STAGE_OPTIONS})
    values = config.values
    if values.get("checkpoints") is None:
        raise UserError('give the CHECKPOINTS folder (or checkpoints = "DIR" in --config).')
    if not Path(values["checkpoints"]).is_dir():
        raise UserError(f"CHECKPOINTS {values['checkpoints']} is not a folder; give the folder of checkpoint files.")
    out = Path(values.get("out") or "trajectory")
    check_folder(out, "--out")
    cache = None if args.no_cache else Path(values.get("cache_dir") or out / "cache")
    if cache is not None:
        check_folder(cache, "--cache-dir")
    inputs = resolve_inputs(values)
    settings = dict(config.settings)
    if inputs.sampled_params is not None:
        settings["sampled_params"] = inputs.sampled_params
    template = inputs.model

    def make_model():  # a fresh copy of the factory's (or folder's) model for each checkpoint
        return copy.deepcopy(template)

    pool = _pool(values.get("workers"))
    try:
        with torch_threads(args.threads, template):
            result = trajectory(values["checkpoints"], make_model, inputs.data, inputs.loss_fn, settings,
                                cache_dir=cache, executor=pool, progress=not (args.no_progress or args.json),
                                stage_options=config.tables["stages"])
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None
    except OSError as err:  # the cache: a full disk, a read-only folder
        raise UserError(f"cannot write {err.filename or cache}: {err.strerror or err}; free some space or choose "
                        "another --cache-dir (or --no-cache), then rerun to resume.") from None
    except BaseException:  # Ctrl-C above all: stop the workers now rather than after their running tasks
        stop_pool(pool)
        pool = None
        raise
    finally:
        if pool is not None:
            pool.shutdown()

    make_folder(out, "--out")
    stages = json.dumps(result.stages.to_dict() if result.stages is not None else None, indent=1) + "\n"
    written = [
        write_file(out / "trajectory.csv", "--out", result.to_csv),
        write_file(out / "trajectory.json", "--out", result.to_json),
        write_file(out / "stages.json", "--out", lambda tmp: tmp.write_text(stages)),
    ]
    figure = result.plot(title=Path(values["checkpoints"]).name)
    written.append(write_file(out / "trajectory.png", "--out", lambda tmp: figure.savefig(tmp, dpi=110)))
    if args.json:
        json.dump({**result.to_dict(), "files": [str(p) for p in written]}, sys.stdout, indent=1)
        print()
    else:
        print(result)
    return 0


def _pool(workers: int | None):
    """``--workers``: lambdahat.workers' pool, started the platform's default way (fork on Linux
    before Python 3.14: the workers keep the modules the command imported, a model factory from a
    file among them) and with the torch threads the command set (--threads, or its own policy)."""
    if not workers:
        return None
    return worker_pool(positive_int(str(workers)), context=None, threads=None)
