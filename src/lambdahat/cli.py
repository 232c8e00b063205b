"""The command line: ``lambdahat demo``, ``lambdahat calibrate`` and ``lambdahat truth …``.

This module parses arguments and calls the library; the science lives in
:mod:`lambdahat.estimate`, :mod:`lambdahat.tasks` and :mod:`lambdahat.truth`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, truth

__all__ = ["DEMO_SETTINGS", "CALIBRATE_SETTINGS", "main"]

#: Everything ``lambdahat demo`` runs: the task, the sampler settings, and what ``--quick`` changes.
#: The truth for this task is λ = 105 (Aoyagi 2024, Theorem 1) with d = 800 weights.
DEMO_SETTINGS: dict = {
    "task": {"widths": [30, 20, 10], "rank": 1, "n": 10_000, "seed": 0},
    "estimate": {
        "step_size": 5e-5,
        "localization": 1.0,
        "nbeta": None,
        "num_chains": 4,
        "num_draws": 2000,
        "num_burnin_steps": 2000,
        "batch_size": 500,
    },
    "quick": {"num_draws": 200, "num_burnin_steps": 200},
    # One intra-op thread: as fast as two on this small model when the machine is idle, and ~4× faster
    # than two when another process holds a core (measured on 2 cores).
    "torch_threads": 1,
}

#: What ``lambdahat calibrate`` sweeps by default, on the demo's task (DEMO_SETTINGS["task"]): the
#: coarse ε grid is ε·nβ ∈ {1, 0.1, 0.01, 0.001} (``step_sizes`` None), nβ = n / log n and 100 (so the
#: map has two rows), γ = 1 and 100, each with 4 short chains; ``--quick`` shortens them.
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


def _int_list(text: str) -> list[int]:
    """``"3,5,4,3"`` → ``[3, 5, 4, 3]``."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 3,5,4,3, got {text!r}"
        ) from None
    return values


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


# name → (help, arguments as (flags, kwargs), the call that returns a LearningCoefficient)
_TRUTH_FAMILIES: dict[str, tuple[str, list[tuple[tuple[str, ...], dict]], Callable]] = {
    "dln": (
        "deep linear network W_L ⋯ W_1 x (Aoyagi 2024, Theorem 1)",
        [
            (("widths",), dict(type=_int_list, help="layer widths input → output, e.g. 3,5,4,3")),
            (("--rank",), dict(type=_int, default=0, help="rank r of the true map (default 0)")),
        ],
        lambda a: truth.deep_linear_network(a.widths, a.rank),
    ),
    "rrr": (
        "reduced-rank regression B A x (Aoyagi & Watanabe 2005)",
        [
            (("input_dim",), dict(type=_int, metavar="M", help="input dimension M (input_dim)")),
            (("hidden_dim",), dict(type=_int, metavar="H", help="hidden dimension H (hidden_dim)")),
            (("output_dim",), dict(type=_int, metavar="N", help="output dimension N (output_dim)")),
            (("--rank",), dict(type=_int, default=0, help="rank r of the true map (default 0)")),
        ],
        lambda a: truth.reduced_rank_regression(a.input_dim, a.hidden_dim, a.output_dim, a.rank),
    ),
    "regular": (
        "regular model with D parameters: λ = D/2",
        [(("num_params",), dict(type=_int, metavar="D", help="number of parameters D (num_params)"))],
        lambda a: truth.regular(a.num_params),
    ),
    "quasi-homogeneous": (
        "K(w) = Σ c_i |w_i|^p_i: λ = Σ 1/p_i",
        [(("powers",), dict(type=_int_list, help="the powers p_i, e.g. 4,2"))],
        lambda a: truth.quasi_homogeneous(a.powers),
    ),
    "normal-crossing": (
        "K(w) = Π w_i^(2 k_i) near 0: λ = min 1/(2 k_i)",
        [(("exponents",), dict(type=_int_list, help="the exponents k_i, e.g. 1,2"))],
        lambda a: truth.normal_crossing(a.exponents),
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lambdahat",
        description="Estimate the local learning coefficient (LLC) of PyTorch models.",
    )
    parser.add_argument("--version", action="version", version=f"lambdahat {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    spec, quick = DEMO_SETTINGS["task"], DEMO_SETTINGS["quick"]
    demo = commands.add_parser(
        "demo",
        help="estimate the LLC of a deep linear network with a known answer",
        description=f"Estimate the LLC of a {'-'.join(map(str, spec['widths']))} deep linear network "
        f"(rank {spec['rank']}, true λ = {truth.deep_linear_network(spec['widths'], spec['rank']).value}), "
        "print the estimate against the truth and write a PNG of the loss traces and running λ̂.",
    )
    demo.add_argument("--out", type=Path, default=Path("."), help="folder for demo_llc.png (default: here)")
    demo.add_argument("--seed", type=_int, default=0, help="sampler seed (default 0)")
    demo.add_argument(
        "--quick",
        action="store_true",
        help=f"a short run ({quick['num_burnin_steps']} burn-in steps, {quick['num_draws']} draws)",
    )
    demo.add_argument("--report", type=Path, default=None, metavar="HTML",
                      help="also write a one-page HTML report (figures, numbers, health verdicts, configuration)")
    demo.set_defaults(run=_demo)

    sweep, quick_sweep = CALIBRATE_SETTINGS["sweep"], CALIBRATE_SETTINGS["quick"]
    cal = commands.add_parser(
        "calibrate",
        help="sweep step size × nβ × γ with short chains and recommend one setting",
        description="Sweep step size × nβ × γ with short chains on a deep linear network with a known answer "
        f"(default: the demo's {'-'.join(map(str, spec['widths']))}, rank {spec['rank']}), judge every run with the "
        "health checks, and recommend one setting with the rule that chose it (lambdahat.calibrate).",
    )
    cal.add_argument("--widths", type=_int_list, default=spec["widths"], help="layer widths input → output")
    cal.add_argument("--rank", type=_int, default=spec["rank"], help="rank of the teacher")
    cal.add_argument("--n", type=_int, default=spec["n"], help="number of samples")
    cal.add_argument("--step-sizes", type=_float_list, default=sweep["step_sizes"], metavar="LIST",
                     help="coarse ε grid, e.g. 1e-3,1e-4,1e-5 (default: ε·nβ ∈ {1, 0.1, 0.01, 0.001})")
    cal.add_argument("--nbetas", type=_nbeta_list, default=None, metavar="LIST",
                     help="nβ values; 'auto' is n / log n (default: auto,100)")
    cal.add_argument("--localizations", type=_float_list, default=None, metavar="LIST",
                     help="γ values (default: 1,100)")
    cal.add_argument("--seed", type=_int, default=0, help="sampler seed (default 0)")
    cal.add_argument("--quick", action="store_true",
                     help=f"short chains ({quick_sweep['num_burnin_steps']} + {quick_sweep['num_draws']}), "
                     "only nβ = n / log n and γ = 1")
    cal.add_argument("--csv", type=Path, default=None, help="write the table of every setting tried to this CSV file")
    cal.add_argument("--report", type=Path, default=None, metavar="HTML", help="write a one-page HTML report")
    cal.add_argument("--out", type=Path, default=Path("."), help="folder for calibration_map.png (default: here)")
    cal.set_defaults(run=_calibrate)

    from .cli_estimate import add_parser as add_estimate_parser

    add_estimate_parser(commands)
    _add_trajectory_parser(commands)

    truth_cmd = commands.add_parser(
        "truth", help="print an exact learning coefficient", description="Print an exact learning coefficient."
    )
    families = truth_cmd.add_subparsers(dest="family", metavar="FAMILY", required=True)
    for name, (help_text, arguments, compute) in _TRUTH_FAMILIES.items():
        family = families.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in arguments:
            family.add_argument(*flags, **kwargs)
        family.set_defaults(run=_truth, compute=compute, parser=family)
    return parser


def _truth(args: argparse.Namespace) -> int:
    try:
        lc = args.compute(args)
    except ValueError as err:
        args.parser.error(str(err))  # exits with status 2, like any other bad argument
    print(lc)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import tasks
    from .estimate import estimate_llc
    from .plot import plot_summary

    spec = DEMO_SETTINGS["task"]
    settings = dict(DEMO_SETTINGS["estimate"])
    if args.quick:
        settings.update(DEMO_SETTINGS["quick"])

    task = tasks.deep_linear_network(spec["widths"], rank=spec["rank"], n=spec["n"], seed=spec["seed"])
    num_weights = sum(p.numel() for p in task.model.parameters())
    arch = "-".join(map(str, spec["widths"]))
    print(
        f"Task: deep linear network {arch} at a teacher whose every layer has rank {spec['rank']}; "
        f"n = {task.n:,} samples, d = {num_weights} weights, true λ = {task.truth.value} (Aoyagi 2024)."
    )
    nbeta = settings["nbeta"]
    print(
        f"Sampling with SGLD: {settings['num_chains']} chains × ({settings['num_burnin_steps']} burn-in "
        f"+ {settings['num_draws']} draws), step_size {settings['step_size']:g}, localization "
        f"{settings['localization']:g}, nβ = {'n / log n' if nbeta is None else f'{nbeta:g}'}, "
        f"batch {settings['batch_size']}, seed {args.seed}."
    )
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(DEMO_SETTINGS["torch_threads"])
    try:
        result = estimate_llc(task.model, task.data, task.loss_fn, **settings, seed=args.seed, progress=True)
    finally:
        torch.set_num_threads(threads)
    print(result)
    true_value = float(task.truth.value)
    rel = 100 * (result.llc_mean - true_value) / true_value
    print(
        f"truth λ = {task.truth.value} (Aoyagi 2024) — estimate {result.llc_mean:.4g} ± {result.llc_mcse:.2g}, "
        f"relative error {rel:+.1f}%, {result.wall_time:.1f} s"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "demo_llc.png"
    figure = plot_summary(result, truth=task.truth, title=f"DLN {arch}, rank {spec['rank']}")
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")
    if args.report is not None:
        from .report import write_report

        print(f"wrote {write_report(result, args.report, truth=task.truth, title=f'LLC of the DLN {arch} demo')}")
    return 0


def _float_list(text: str) -> list[float]:
    """``"1e-3,1e-4"`` → ``[0.001, 0.0001]``."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1e-3,1e-4, got {text!r}") from None


def _nbeta_list(text: str) -> list[float | None]:
    """``"auto,100"`` → ``[None, 100.0]`` (auto: n / log n)."""
    try:
        return [None if part.strip().lower() == "auto" else float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers or 'auto' (n / log n), e.g. auto,100, got {text!r}") from None


def _calibrate(args: argparse.Namespace) -> int:
    import torch

    from . import tasks
    from .calibrate import calibrate
    from .plot import plot_calibration_map

    settings = dict(CALIBRATE_SETTINGS["sweep"])
    if args.quick:
        settings.update(CALIBRATE_SETTINGS["quick"])
    settings.update(step_sizes=args.step_sizes, seed=args.seed)
    for name in ("nbetas", "localizations"):  # given on the command line: they win over --quick
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    try:
        task = tasks.deep_linear_network(args.widths, rank=args.rank, n=args.n, seed=DEMO_SETTINGS["task"]["seed"])
    except ValueError as err:
        raise SystemExit(f"lambdahat calibrate: error: {err}") from None
    arch = "-".join(map(str, args.widths))
    print(
        f"Task: deep linear network {arch}, rank {args.rank}, n = {task.n:,}, true λ = {task.truth.value} (Aoyagi 2024; "
        "reported only, the rule does not see it)."
    )
    print(
        f"Sweeping step sizes {settings['step_sizes'] or 'ε·nβ ∈ {1, 0.1, 0.01, 0.001}'} × nβ "
        f"{['n / log n' if v is None else v for v in settings['nbetas']]} × γ {settings['localizations']}, "
        f"{settings['num_chains']} chains × ({settings['num_burnin_steps']} + {settings['num_draws']}) steps each."
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(DEMO_SETTINGS["torch_threads"])
    try:
        result = calibrate(task.model, task.data, task.loss_fn, truth=task.truth, progress=True, **settings)
    finally:
        torch.set_num_threads(threads)
    print()
    print(result)
    true_value = float(task.truth.value)
    for run in result.recommended_results().values():
        print(f"At the recommended setting the calibration run gave λ̂ = {run.llc_mean:.4g} ± {run.llc_mcse:.2g} "
              f"against the truth λ = {task.truth.value} ({100 * (run.llc_mean - true_value) / true_value:+.1f}%).")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "calibration_map.png"
    plot_calibration_map(result).savefig(path, dpi=110)
    print(f"wrote {path}")
    if args.csv is not None:
        print(f"wrote {result.write_csv(args.csv)}")
    if args.report is not None:
        from .report import write_report

        print(f"wrote {write_report(result, args.report, title=f'Calibration of the DLN {arch}')}")
    return 0 if result.recommended is not None else 1


def _add_trajectory_parser(commands) -> None:
    """``lambdahat trajectory``: its arguments and run function live in :mod:`lambdahat.cli_trajectory`."""
    from .cli_trajectory import add_parser

    add_parser(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
