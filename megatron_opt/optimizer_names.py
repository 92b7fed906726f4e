"""Names ``OptimizerConfig.optimizer`` accepts, kept at the bottom layer so the config can check them.

The emerging registry adds to ``_registered_emerging`` when an optimizer is registered, so a
user-registered optimizer is accepted by the config too. A dotted path (``pkg.module.Class``) is
accepted by name here and imported only by the factory.
"""

from __future__ import annotations

from typing import FrozenSet, Set

STANDARD_OPTIMIZERS: FrozenSet[str] = frozenset({"adam", "sgd"})
BUILTIN_EMERGING_OPTIMIZERS: FrozenSet[str] = frozenset({"muon", "adaptive_muon", "lion", "soap"})
SCALAR_OPTIMIZERS: FrozenSet[str] = frozenset({"adam", "lion"})
LEGACY_DIST_PREFIX = "dist_"

_registered_emerging: Set[str] = set()


def note_registered_emerging(name: str) -> None:
    _registered_emerging.add(name)


def emerging_optimizer_names() -> FrozenSet[str]:
    return BUILTIN_EMERGING_OPTIMIZERS | frozenset(_registered_emerging)


def known_optimizer_names() -> FrozenSet[str]:
    return STANDARD_OPTIMIZERS | emerging_optimizer_names()


def is_dotted_path(name: str) -> bool:
    """``some.module.ClassName``: at least one dot, every part an identifier."""
    parts = name.split(".")
    return len(parts) >= 2 and all(p.isidentifier() for p in parts)


def is_emerging(name: str) -> bool:
    return name in emerging_optimizer_names()
