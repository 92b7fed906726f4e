"""The error guard for entry points: a ConfigError becomes one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Callable, List, NoReturn, Optional, Sequence

from megatron_opt.errors import ConfigError

EXIT_USAGE = 2
"""Same code argparse uses for a bad command line."""

MainFn = Callable[[List[str]], Optional[int]]


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def _print_warning_line(message: Warning | str, category: type, filename: str, lineno: int, file: object = None, line: object = None) -> None:
    print(f"warning: {one_line(str(message))}", file=sys.stderr, flush=True)


def run_cli(main_fn: MainFn, argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main_fn(argv)``; return its exit code, or 2 after printing ``error: <message>`` for a ConfigError.

    Only ConfigError is caught: any other exception is a bug and keeps its traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with warnings.catch_warnings():
            # A deprecated flag or optimizer name is news for the person at the terminal: show it, once, on one line.
            warnings.simplefilter("default", DeprecationWarning)
            warnings.showwarning = _print_warning_line
            result = main_fn(args)
    except ConfigError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    return int(result or 0)


def cli_entry_point(main_fn: MainFn) -> Callable[[Optional[Sequence[str]]], NoReturn]:
    """Decorator: ``@cli_entry_point def main(argv): ...`` then ``main()`` exits with run_cli's code."""

    @functools.wraps(main_fn)
    def entry(argv: Optional[Sequence[str]] = None) -> NoReturn:
        sys.exit(run_cli(main_fn, argv))

    return entry
