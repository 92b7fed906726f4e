"""Old top-level names (``AdamOptimizerConfig``, ``SGDOptimizerConfig``, ...), reached through
``megatron_opt.__getattr__`` so they warn once when a script uses them. The library never imports this.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_opt.config import OptimizerConfig
from megatron_opt.deprecation import warn_once


@dataclass
class AdamOptimizerConfig(OptimizerConfig):
    """Deprecated: ``OptimizerConfig(optimizer='adam', ...)``."""

    optimizer: str = "adam"


@dataclass
class SGDOptimizerConfig(OptimizerConfig):
    """Deprecated: ``OptimizerConfig(optimizer='sgd', ...)``."""

    optimizer: str = "sgd"


def _get_megatron_muon_optimizer(*args, **kwargs):
    from megatron_opt.muon import get_megatron_muon_optimizer

    return get_megatron_muon_optimizer(*args, **kwargs)


# old name → (object, new name to point at)
LEGACY_NAMES = {
    "AdamOptimizerConfig": (AdamOptimizerConfig, "OptimizerConfig(optimizer='adam')"),
    "SGDOptimizerConfig": (SGDOptimizerConfig, "OptimizerConfig(optimizer='sgd')"),
    "get_megatron_muon_optimizer": (_get_megatron_muon_optimizer, "get_megatron_optimizer"),
}


def resolve(name: str):
    obj, new = LEGACY_NAMES[name]
    warn_once(f"megatron_opt.{name}", f"megatron_opt.{name} is deprecated; use {new}", stacklevel=4)
    return obj
