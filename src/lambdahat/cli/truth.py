"""``lambdahat truth FAMILY …``: print an exact learning coefficient."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .. import truth

__all__ = ["add_parser"]


def _int_list(text: str) -> list[int]:
    """``"3,5,4,3"`` → ``[3, 5, 4, 3]``."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 3,5,4,3, got {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


# name → (help, arguments as (flags, kwargs), the call that returns a LearningCoefficient)
_FAMILIES: dict[str, tuple[str, list[tuple[tuple[str, ...], dict]], Callable]] = {
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


def add_parser(commands) -> None:
    command = commands.add_parser("truth", help="print an exact learning coefficient",
                                  description="Print an exact learning coefficient.")
    families = command.add_subparsers(dest="family", metavar="FAMILY", required=True)
    for name, (help_text, arguments, compute) in _FAMILIES.items():
        family = families.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in arguments:
            family.add_argument(*flags, **kwargs)
        family.set_defaults(run=_run, compute=compute, parser=family)


def _run(args: argparse.Namespace) -> int:
    try:
        lc = args.compute(args)
    except ValueError as err:
        args.parser.error(str(err))  # exits with status 2, like any other bad argument
    print(lc)
    return 0
