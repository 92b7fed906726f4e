"""Megatron-LM's scheduler arithmetic: validated args → OptimizerParamScheduler, in samples.

Megatron counts scheduler steps in samples. In iteration mode (``--train-iters``) every
iteration-valued flag is multiplied by the global batch size; in sample mode (``--train-samples``)
the sample-valued flags are used as given. Each training iteration then calls
``scheduler.step(global_batch_size)``. Shared by the train loop and tools/plot_schedule.py.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

from megatron_opt.scheduler import OptimizerParamScheduler
from megatron_opt.schedules import LRStyleOptions


def train_iters_from_args(args: argparse.Namespace) -> int:
    """Iterations to run: ``--train-iters``, or ``--train-samples // global batch size`` (as Megatron-LM)."""
    if args.train_iters is not None:
        return int(args.train_iters)
    return int(args.train_samples) // int(args.global_batch_size)


def _samples(iters: Optional[int], samples: Optional[int], gbs: int, iteration_mode: bool) -> Optional[int]:
    if iteration_mode:
        return None if iters is None else int(iters) * gbs
    return None if samples is None else int(samples)


def scheduler_from_args(optimizer: Any, args: argparse.Namespace) -> OptimizerParamScheduler:
    """The OptimizerParamScheduler Megatron-LM would build for these (validated) args."""
    gbs = int(args.global_batch_size)
    iteration_mode = args.train_iters is not None
    if iteration_mode:
        train_steps = int(args.train_iters) * gbs
        decay_steps = int(args.lr_decay_iters or args.train_iters) * gbs
        warmup_steps = int(args.lr_warmup_iters) * gbs
        wsd_steps = _samples(args.lr_wsd_decay_iters, None, gbs, True)
        power_decay_steps = int(args.lr_power_decay_iters) * gbs
        period_ends = tuple(int(e) * gbs for e in (args.lr_wsds_period_ends or ()))
    else:
        train_steps = int(args.train_samples)
        decay_steps = int(args.lr_decay_samples or args.train_samples)
        warmup_steps = int(args.lr_warmup_samples)
        wsd_steps = _samples(None, args.lr_wsd_decay_samples, gbs, False)
        power_decay_steps = int(args.lr_power_decay_samples)
        period_ends = tuple(int(e) for e in (args.lr_wsds_period_ends or ()))
    if args.lr_warmup_fraction is not None:
        warmup_steps = args.lr_warmup_fraction * decay_steps
    options = LRStyleOptions(power_exponent=args.lr_power_exponent, power_decay_steps=power_decay_steps,
                             wsds_period_ends=period_ends)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=args.lr_warmup_init,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style=args.lr_decay_style,
        start_wd=args.start_weight_decay,
        end_wd=args.end_weight_decay,
        wd_incr_steps=train_steps,
        wd_incr_style=args.weight_decay_incr_style,
        use_checkpoint_opt_param_scheduler=args.use_checkpoint_opt_param_scheduler,
        override_opt_param_scheduler=args.override_opt_param_scheduler,
        wsd_decay_steps=wsd_steps,
        lr_wsd_decay_style=args.lr_wsd_decay_style,
        lr_style_options=options,
    )
