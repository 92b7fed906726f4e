"""Checkpoint save/load (the entry point named in DESIGN.md); the code lives in ``megatron_opt.checkpoint``."""

from megatron_opt.checkpoint import *  # noqa: F401,F403
from megatron_opt.checkpoint import __all__  # noqa: F401
