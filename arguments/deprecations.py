"""Deprecated spellings still accepted: each use warns once with DeprecationWarning and says what to use."""

from __future__ import annotations

import argparse
import warnings
from typing import Any


def warn_deprecated(message: str) -> None:
    warnings.warn(message, DeprecationWarning, stacklevel=3)


def warn_deprecated_flag(old_flag: str, new_flag: str) -> None:
    warn_deprecated(f"{old_flag} is deprecated. Use {new_flag} instead.")


def warn_dist_prefix(optimizer: str, base_name: str) -> None:
    warn_deprecated(f"optimizer={optimizer!r} is deprecated. Use --optimizer {base_name} --use-distributed-optimizer instead.")


class DeprecatedStoreTrue(argparse.Action):
    """A store_true flag kept as an alias of another: sets the same dest and warns."""

    def __init__(self, option_strings: Any, dest: str, replacement: str, help: str = "", **_: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, const=True, default=argparse.SUPPRESS, help=help)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        warn_deprecated_flag(option_string or self.option_strings[0], self.replacement)
        setattr(namespace, self.dest, True)
