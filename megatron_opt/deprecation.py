"""One DeprecationWarning per old name per process, pointing at the new name."""

from __future__ import annotations

import warnings
from typing import Set

_warned: Set[str] = set()


def warn_once(key: str, message: str, stacklevel: int = 3) -> None:
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel)


def reset_for_tests() -> None:
    """Forget what has been warned (tests that check "exactly once" start from a clean slate)."""
    _warned.clear()
