"""--save / --load / --no-load-optim / --no-load-rng / --finetune → megatron_opt.checkpointing.

The one place the train loop talks to the checkpoint library: what to save (model chunks, optimizer
unless --no-save-optim, scheduler, RNG, consumed samples, the args) and how a load sets the
iteration to continue from.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import torch

from megatron_opt.checkpointing import load_checkpoint, save_checkpoint
from megatron_opt.distributed.distrib_optimizer import finish_param_sync
from megatron_opt.parallel import ProcessGroupCollection


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint and restored by a load."""

    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0


def save(args: argparse.Namespace, progress: Progress, model_chunks: Sequence[torch.nn.Module], optimizer: Any,
         scheduler: Any, pgs: ProcessGroupCollection) -> str:
    """Save ``progress.iteration`` under --save (a collective); returns the checkpoint directory."""
    finish_param_sync(optimizer)  # a sharded optimizer's updated params must be in the model first
    return save_checkpoint(
        args.save, progress.iteration, model_chunks, optimizer, scheduler,
        pg_collection=pgs, args=vars(args),
        consumed_train_samples=progress.consumed_train_samples,
        consumed_valid_samples=progress.consumed_valid_samples,
        save_optim=not args.no_save_optim,
    )


def load(args: argparse.Namespace, model_chunks: Sequence[torch.nn.Module], optimizer: Any, scheduler: Any,
         pgs: ProcessGroupCollection) -> Optional[Tuple[Progress, str]]:
    """Load from --load: (progress, checkpoint path), or None when --load is unset or holds no checkpoint."""
    if not args.load:
        return None
    loaded = load_checkpoint(
        args.load, model_chunks, optimizer, scheduler, pg_collection=pgs,
        no_load_optim=args.no_load_optim, no_load_rng=args.no_load_rng, finetune=args.finetune,
    )
    if loaded is None:
        return None
    progress = Progress(loaded.iteration, loaded.consumed_train_samples, loaded.consumed_valid_samples)
    if not loaded.loaded_scheduler:
        # --finetune / --no-load-optim: the schedule restarts (finetune) or continues from the iteration.
        scheduler.num_steps = 0
        scheduler.step(progress.consumed_train_samples)
    return progress, loaded.path
