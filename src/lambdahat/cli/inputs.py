"""The one input group of ``estimate``, ``trajectory`` and ``calibrate``: where the model, its
weights, the data and the loss come from; built-in tasks by one spec; the one thread policy.

A model comes from exactly one of ``--model MODULE:FUNCTION`` (a factory: imported and run, see
the trust note in :mod:`lambdahat.cli.config`), ``--hf DIR`` (a local Hugging Face folder) or
``--task SPEC``, a built-in problem with a known answer. A task is named one way everywhere:
``dln:WIDTHS:RANK[:N]`` (a deep linear network, Aoyagi 2024) or ``rrr:M,H,N:RANK[:N]`` (reduced-rank
regression, Aoyagi & Watanabe 2005), N samples (default 10,000); the demo's task is the same dict.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TRUST_NOTE, Option
from .errors import UserError

__all__ = ["INPUT_OPTIONS", "Inputs", "add_input_group", "input_options", "resolve_inputs", "torch_threads",
           "parse_task", "format_task"]

LOSSES = ("gaussian_nll", "cross_entropy", "next_token")

INPUT_OPTIONS: tuple[Option, ...] = (
    Option("model", "text", "a factory returning an nn.Module: 'package.module:function' or 'file.py:function' "
           "(imported and run: it is code)", "MODULE:FUNCTION"),
    Option("model_kwargs", "object", 'keyword arguments for the factory, as JSON, e.g. \'{"hidden": 64}\'', "JSON"),
    Option("hf", "path", "a local Hugging Face causal LM folder (loaded without trust_remote_code)", "DIR"),
    Option("task", "text", "a built-in task with a known λ: dln:WIDTHS:RANK[:N] (e.g. dln:30,20,10:1) or "
           "rrr:M,H,N:RANK[:N]; N samples, default 10000", "SPEC"),
    Option("checkpoint", "path", "a state-dict file (.pt or .safetensors) to load into the model (read with "
           "weights_only=True)", "FILE"),
    Option("data", "path", ".pt/.npz tensors, or a text file (tokenised into windows)", "FILE"),
    Option("seq_len", "posint", "tokens per window for text data (default 64)", "N"),
    Option("loss", "choice", "default: next_token for text and Hugging Face models, the task's own for tasks, "
           "else gaussian_nll", choices=LOSSES),
    Option("head", "head", "measure one attention head only, e.g. 1.2 (head 2 of layer 1)", "LAYER.HEAD"),
    Option("params", "names", "measure only these parameters or submodules (names or prefixes)", "NAME"),
)


def input_options(*, task: bool = True, checkpoint: str | None = "one") -> list[Option]:
    """The input options of a command: without ``--task`` (trajectory) or ``--checkpoint``, or with
    several checkpoints (``checkpoint="many"``: calibrate, one setting for all of them)."""
    options = []
    for option in INPUT_OPTIONS:
        if option.name == "task" and not task:
            continue
        if option.name == "checkpoint":
            if checkpoint is None:
                continue
            if checkpoint == "many":
                option = Option("checkpoint", "paths", "one or more state-dict files (.pt or .safetensors) of the "
                                "model: one setting is chosen for all of them", "FILE")
        options.append(option)
    return options


def add_input_group(parser: argparse.ArgumentParser, options: list[Option], title: str = "model and data") -> None:
    group = parser.add_argument_group(title, description=TRUST_NOTE)
    group.add_argument("--config", type=Path, default=None, metavar="TOML",
                       help="read inputs and settings from a TOML file (flags override it); its model key is code")
    for option in options:
        option.add_to(group)


@dataclass
class Inputs:
    """A resolved model (or, for calibrate, {name: model}), data, loss and what is known about them."""

    model: Any
    data: Any
    loss_fn: Any
    truth: Any = None
    truth_source: str | None = None
    sampled_params: Any = None
    description: str | None = None


def resolve_inputs(values: dict[str, Any]) -> Inputs:
    """Build the model, load the weights and the data; a :class:`UserError` naming the flag on any mistake."""
    from .. import datafiles, losses, models

    sources = [k for k in ("model", "hf", "task") if values.get(k) is not None]
    if len(sources) != 1:
        raise UserError("give exactly one of --model MODULE:FUNCTION, --hf DIR or --task SPEC"
                        + (f" (got {', '.join('--' + s for s in sources)})." if sources else "."))
    if values.get("model_kwargs") is not None and "model" not in sources:
        raise UserError("--model-kwargs is for a --model factory; drop it, or give --model.")
    if values.get("head") is not None and values.get("params") is not None:
        raise UserError("give --head or --params, not both.")
    inputs = Inputs(None, None, None)
    tokenizer, default_loss = None, "gaussian_nll"
    if "task" in sources:
        if values.get("data") is not None:
            raise UserError("--task brings its own data; drop --data (or use --model with --data).")
        task = build_task(values["task"])
        inputs = Inputs(task.model, task.data, task.loss_fn, task.truth, _CITATIONS[task.family], None,
                        task.description)
    else:
        if "hf" in sources:
            try:
                model, tokenizer = models.load_hf(values["hf"])
            except (ValueError, ImportError, OSError) as err:
                raise UserError(f"--hf {values['hf']}: {err}") from None
            default_loss = "next_token"
        else:
            spec = values["model"]
            try:
                model = models.load_factory(spec, **(values.get("model_kwargs") or {}))
            except (ValueError, TypeError, ImportError) as err:
                hint = " (check --model-kwargs)" if isinstance(err, TypeError) and values.get("model_kwargs") else ""
                raise UserError(f"--model {spec}: {err}{hint}") from None
        if values.get("data") is None:
            raise UserError("--data FILE is needed with --model or --hf.")
        path = Path(values["data"])
        seq_len = {"seq_len": values["seq_len"]} if values.get("seq_len") is not None else {}
        try:
            data = datafiles.load_data(path, tokenizer=tokenizer, **seq_len)
        except (ValueError, OSError) as err:
            raise UserError(f"--data: {err}") from None
        if path.suffix not in (".pt", ".pth", ".npz"):
            default_loss = "next_token"
        inputs = Inputs(model, data, None)
    if values.get("loss") is not None:
        inputs.loss_fn = getattr(losses, values["loss"])
    elif inputs.loss_fn is None:
        inputs.loss_fn = getattr(losses, default_loss)
    checkpoints = values.get("checkpoint")
    if checkpoints is not None:
        inputs.model = _load_checkpoints(inputs.model, checkpoints)
    first = next(iter(inputs.model.values())) if isinstance(inputs.model, dict) else inputs.model
    if any(p.is_meta for p in first.parameters()):
        raise UserError(f"--{sources[0]}: the model's parameters are on the meta device (shapes without values); "
                        "build it on 'cpu' or load real weights with --checkpoint.")
    if values.get("head") is not None:
        layer, head = values["head"]
        try:
            inputs.sampled_params = models.head_mask(first, layer, head)
        except ValueError as err:
            raise UserError(f"--head {layer}.{head}: {err}") from None
    elif values.get("params") is not None:
        inputs.sampled_params = list(values["params"])
    return inputs


def _load_checkpoints(template, checkpoints):
    from .. import models

    paths = checkpoints if isinstance(checkpoints, list) else [checkpoints]
    loaded = {}
    for path in paths:
        model = template if len(paths) == 1 else copy.deepcopy(template)
        try:
            loaded[Path(path).stem] = models.load_weights(model, path)
        except ValueError as err:
            raise UserError(f"--checkpoint: {err}") from None
    if len(loaded) != len(paths):
        raise UserError("--checkpoint: two files share a name; give each checkpoint a distinct file name.")
    return loaded if isinstance(checkpoints, list) and len(paths) > 1 else next(iter(loaded.values()))


# --- built-in tasks ---------------------------------------------------------------------------

_FAMILIES = {"dln": "deep linear network", "rrr": "reduced-rank regression"}
_CITATIONS = {"dln": "Aoyagi 2024", "rrr": "Aoyagi & Watanabe 2005"}
_TASK_FORM = "dln:30,20,10:1 or rrr:5,3,5:1 (optionally :N samples, e.g. dln:30,20,10:1:10000)"


def parse_task(spec: str) -> dict[str, Any]:
    """``"dln:30,20,10:1"`` → ``{"family": "dln", "widths": [30, 20, 10], "rank": 1}`` (and ``"n"`` if given)."""
    parts = spec.split(":")
    if len(parts) not in (3, 4) or parts[0] not in _FAMILIES:
        raise UserError(f"--task must look like {_TASK_FORM}, got {spec!r}.")
    try:
        dims = [int(v) for v in parts[1].split(",")]
        task: dict[str, Any] = {"family": parts[0], "widths": dims, "rank": int(parts[2])}
        if len(parts) == 4:
            task["n"] = int(parts[3])
    except ValueError:
        raise UserError(f"--task must look like {_TASK_FORM}, got {spec!r}.") from None
    if task.get("n", 1) < 1:
        raise UserError(f"--task {spec}: the number of samples N must be a positive integer, got {task['n']}.")
    if task["family"] == "rrr" and len(dims) != 3:
        raise UserError(f"--task rrr takes three dimensions M,H,N, got {parts[1]!r}; e.g. rrr:5,3,5:1.")
    return task


def format_task(task: dict[str, Any]) -> str:
    """The spec of a task dict (the inverse of :func:`parse_task`)."""
    n = f":{task['n']}" if "n" in task else ""
    return f"{task.get('family', 'dln')}:{','.join(map(str, task['widths']))}:{task['rank']}{n}"


@dataclass
class _Task:
    family: str
    model: Any
    data: Any
    loss_fn: Any
    truth: Any
    description: str


def build_task(task: str | dict[str, Any]) -> _Task:
    """The model, data and truth of a task spec or dict (keys family, widths, rank, n, seed)."""
    from .. import tasks

    spec = parse_task(task) if isinstance(task, str) else dict(task)
    family = spec.pop("family", "dln")
    widths, rank = spec.pop("widths"), spec.pop("rank")
    try:
        if family == "dln":
            built = tasks.deep_linear_network(widths, rank=rank, **spec)
        else:
            built = tasks.reduced_rank_regression(*widths, rank=rank, **spec)
    except (ValueError, TypeError) as err:
        raise UserError(f"--task {format_task({'family': family, 'widths': widths, 'rank': rank})}: {err}") from None
    d = sum(p.numel() for p in built.model.parameters())
    description = (f"{_FAMILIES[family]} {'-'.join(map(str, widths))} at a teacher of rank {rank}; n = {built.n:,} "
                   f"samples, d = {d} weights, true λ = {built.truth.value} ({_CITATIONS[family]})")
    return _Task(family, built.model, built.data, built.loss_fn, built.truth, description)


# --- the thread policy ------------------------------------------------------------------------


@contextmanager
def torch_threads(requested: int | None, model: Any) -> Iterator[None]:
    """Torch intra-op threads while a command runs, restored after: as ``--threads`` asks, else the
    library's policy (:func:`lambdahat.estimate.select_threads`: one thread up to 2²⁰ weights)."""
    import torch

    from ..estimate import select_threads

    first = next(iter(model.values())) if isinstance(model, dict) else model
    threads = requested
    if threads is None:
        threads = select_threads(sum(p.numel() for p in first.parameters()))
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
