"""The command line: ``lambdahat estimate | trajectory | calibrate | demo | truth``.

It parses and calls the library, and holds no science. One input group (:mod:`.inputs`) serves
``estimate``, ``trajectory`` and ``calibrate``; the sampler flags and TOML keys are derived from
:class:`lambdahat.settings.Settings` (:mod:`.config`); ``demo`` is ``estimate`` on a built-in task.
A user's mistake ends in one line ``lambdahat COMMAND: error: …`` naming the flag or file and the
fix, with a non-zero exit status (:mod:`.errors`); Ctrl-C ends in one line and status 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import calibrate, demo, estimate, trajectory, truth
from .calibrate import CALIBRATE_SETTINGS
from .demo import DEMO_SETTINGS
from .errors import ArgumentParser, UserError

__all__ = ["DEMO_SETTINGS", "CALIBRATE_SETTINGS", "UserError", "main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="lambdahat",
                            description="Estimate the local learning coefficient (LLC) of PyTorch models.")
    parser.add_argument("--version", action="version", version=f"lambdahat {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.add_parser(commands)
    calibrate.add_parser(commands)
    estimate.add_parser(commands)
    trajectory.add_parser(commands)
    truth.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    A :class:`UserError` becomes ``SystemExit("lambdahat COMMAND: error: …")`` (status 1); a
    ``KeyboardInterrupt`` prints its message (or the command's resume hint) and returns 130.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as err:
        raise SystemExit(f"lambdahat {args.command}: error: {err}") from None
    except KeyboardInterrupt as interrupt:
        print(f"lambdahat {args.command}: {str(interrupt) or getattr(args, 'interrupted', 'interrupted.')}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
