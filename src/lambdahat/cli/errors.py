"""How the command line reports a user's mistake: one line naming the flag or file, and the fix.

:class:`UserError` is raised anywhere below a command and turned into ``lambdahat COMMAND: error:
…`` with a non-zero exit status by :func:`lambdahat.cli.main`; argument errors found while
parsing go through :class:`ArgumentParser`, which prints the same one line (without argparse's
usage block) and exits with status 2.
"""

from __future__ import annotations

import argparse

__all__ = ["UserError", "ArgumentParser", "positive_int"]


class UserError(Exception):
    """A mistake in the command line, a config file or an input file: the message says which and how to fix it."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors as one line: ``prog: error: message (see prog --help)``, and no
    abbreviated flags (``--n`` would silently mean ``--nbeta`` until a flag ``--num-…`` is added)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value
