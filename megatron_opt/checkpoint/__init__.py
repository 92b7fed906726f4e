"""Sharded checkpoints with torch.distributed.checkpoint, keyed by parameter name in global shape.

Modules: ``files`` (directory layout, completion marker, atomic publish, ``latest`` pointer),
``optim_state`` (optimizer state by parameter name; the protocol a sharded optimizer implements),
``rng`` (per-rank RNG states as JSON), ``core`` (save_checkpoint / load_checkpoint). See
docs/checkpoints.md.
"""

from megatron_opt.checkpoint.core import (
    LoadedCheckpoint,
    load_checkpoint,
    model_key,
    optimizer_key,
    read_checkpoint_metadata,
    read_full_checkpoint,
    save_checkpoint,
)
from megatron_opt.checkpoint.files import CheckpointError, resolve_checkpoint_dir
from megatron_opt.checkpoint.optim_state import (
    ShardedStateOptimizer,
    load_named_optimizer_state,
    named_optimizer_state,
)

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "ShardedStateOptimizer",
    "load_checkpoint",
    "load_named_optimizer_state",
    "model_key",
    "named_optimizer_state",
    "optimizer_key",
    "read_checkpoint_metadata",
    "read_full_checkpoint",
    "resolve_checkpoint_dir",
    "save_checkpoint",
]
