"""``validate_args``: every rule that involves more than one flag, checked once after parsing.

Each rule is a small function that raises ConfigError with one line naming the flags, the values
and what is allowed, or fills in a value derived from others. Unlike Megatron-LM, the overlap
check runs *after* the emerging-optimizer rewrite, so it sees the optimizer that will really run.
"""

from __future__ import annotations

import argparse

from megatron_opt.errors import ConfigError
from megatron_opt.optimizer_names import LEGACY_DIST_PREFIX, is_dotted_path, is_emerging
from megatron_opt.parallel import RankLayout

from arguments.deprecations import warn_dist_prefix

SUPPORTED_CKPT_FORMATS = ("torch_dist",)


def _not_allowed(what: str, allowed: str) -> ConfigError:
    return ConfigError(f"{what} is not allowed; expected {allowed}")


def check_parallel_layout(args: argparse.Namespace, world_size: int) -> None:
    """world size = tp * pp * dp; records data_parallel_size."""
    layout = RankLayout.create(world_size, args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
    args.world_size = world_size
    args.data_parallel_size = layout.dp
    if args.tensor_model_parallel_size == 1:
        args.sequence_parallel = False  # nothing to shard along the sequence without TP


def check_batch_sizes(args: argparse.Namespace) -> None:
    per_step = args.micro_batch_size * args.data_parallel_size
    if args.global_batch_size is None:
        args.global_batch_size = per_step
    if args.global_batch_size % per_step != 0:
        raise _not_allowed(
            f"--global-batch-size={args.global_batch_size} with --micro-batch-size={args.micro_batch_size} and data-parallel size {args.data_parallel_size}",
            f"a multiple of micro-batch-size * data-parallel size = {per_step}",
        )
    args.num_micro_batches = args.global_batch_size // per_step


def check_model_shape(args: argparse.Namespace) -> None:
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    heads = args.num_attention_heads
    if heads % tp != 0:
        raise _not_allowed(f"--num-attention-heads={heads} with --tensor-model-parallel-size={tp}", f"a multiple of {tp}")
    if not args.group_query_attention:
        args.num_query_groups = heads
    groups = args.num_query_groups
    if groups % tp != 0:
        raise _not_allowed(f"--num-query-groups={groups} with --tensor-model-parallel-size={tp}", f"a multiple of {tp}")
    if heads % groups != 0:
        raise _not_allowed(f"--num-query-groups={groups} with --num-attention-heads={heads}", f"a divisor of {heads}")
    if args.num_layers % pp != 0:
        raise _not_allowed(f"--num-layers={args.num_layers} with --pipeline-model-parallel-size={pp}", f"a multiple of {pp}")
    if args.kv_channels is None:
        if args.hidden_size % heads != 0:
            raise _not_allowed(f"--hidden-size={args.hidden_size} with --num-attention-heads={heads}", f"a multiple of {heads} (or set --kv-channels)")
        args.kv_channels = args.hidden_size // heads
    if args.ffn_hidden_size is None:
        args.ffn_hidden_size = 4 * args.hidden_size
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.max_position_embeddings < args.seq_length:
        raise _not_allowed(f"--max-position-embeddings={args.max_position_embeddings} with --seq-length={args.seq_length}", f"a value >= {args.seq_length}")


def check_precision(args: argparse.Namespace) -> None:
    if args.fp16 and args.bf16:
        raise _not_allowed("--fp16 together with --bf16", "at most one of --fp16, --bf16")
    if args.bf16:
        args.accumulate_allreduce_grads_in_fp32 = True  # bf16 gradients are too coarse to accumulate in


def check_learning_rate(args: argparse.Namespace) -> None:
    if args.lr is None:
        raise ConfigError("--lr is required; expected a peak learning rate such as --lr 3e-4")
    if args.min_lr > args.lr:
        raise _not_allowed(f"--min-lr={args.min_lr} with --lr={args.lr}", "--min-lr <= --lr")


def check_training_length(args: argparse.Namespace) -> None:
    if args.train_iters is not None and args.train_samples is not None:
        raise _not_allowed(f"--train-iters={args.train_iters} together with --train-samples={args.train_samples}", "exactly one of them")
    if args.train_iters is None and args.train_samples is None:
        raise ConfigError("neither --train-iters nor --train-samples was given; expected exactly one of them")


def check_schedule_units(args: argparse.Namespace) -> None:
    """Iteration-based and sample-based schedule flags must not be mixed."""
    if args.train_iters is not None:
        unit, other = "--train-iters", {
            "--lr-decay-samples": args.lr_decay_samples,
            "--lr-wsd-decay-samples": args.lr_wsd_decay_samples,
            "--lr-warmup-samples": args.lr_warmup_samples or None,
            "--lr-power-decay-samples": args.lr_power_decay_samples or None,
        }
    else:
        unit, other = "--train-samples", {
            "--lr-decay-iters": args.lr_decay_iters,
            "--lr-wsd-decay-iters": args.lr_wsd_decay_iters,
            "--lr-warmup-iters": args.lr_warmup_iters or None,
            "--lr-power-decay-iters": args.lr_power_decay_iters or None,
        }
    for flag, value in other.items():
        if value is not None:
            kind = "iteration" if unit == "--train-iters" else "sample"
            raise _not_allowed(f"{flag}={value} with {unit}", f"{kind}-based schedule flags only (do not mix iterations and samples)")


def check_warmup(args: argparse.Namespace) -> None:
    fraction = args.lr_warmup_fraction
    if fraction is None:
        return
    if not 0.0 <= fraction <= 1.0:
        raise _not_allowed(f"--lr-warmup-fraction={fraction}", "a number in [0, 1]")
    if args.lr_warmup_iters or args.lr_warmup_samples:
        given = f"--lr-warmup-iters={args.lr_warmup_iters}" if args.lr_warmup_iters else f"--lr-warmup-samples={args.lr_warmup_samples}"
        raise _not_allowed(f"--lr-warmup-fraction={fraction} together with {given}", "only one way to set the warmup length")


def check_wsd_length(args: argparse.Namespace) -> None:
    if args.lr_decay_style not in ("WSD", "WSD-S"):
        return
    if args.lr_wsd_decay_iters is None and args.lr_wsd_decay_samples is None:
        flag = "--lr-wsd-decay-iters" if args.train_iters is not None else "--lr-wsd-decay-samples"
        raise ConfigError(f"--lr-decay-style={args.lr_decay_style} needs {flag}; expected the length of the anneal")


def resolve_weight_decay(args: argparse.Namespace) -> None:
    """constant: start/end unset and both become --weight-decay; otherwise both are required."""
    style = args.weight_decay_incr_style
    if style == "constant":
        for flag, value in (("--start-weight-decay", args.start_weight_decay), ("--end-weight-decay", args.end_weight_decay)):
            if value is not None and value != args.weight_decay:  # equal: already resolved (validate twice)
                raise _not_allowed(f"{flag}={value} with --weight-decay-incr-style=constant", "it unset (constant style uses --weight-decay), or a linear/cosine style")
        args.start_weight_decay = args.weight_decay
        args.end_weight_decay = args.weight_decay
        return
    missing = [flag for flag, value in (("--start-weight-decay", args.start_weight_decay), ("--end-weight-decay", args.end_weight_decay)) if value is None]
    if missing:
        raise ConfigError(f"--weight-decay-incr-style={style} needs {' and '.join(missing)}; expected both --start-weight-decay and --end-weight-decay")
    for flag, value in (("--start-weight-decay", args.start_weight_decay), ("--end-weight-decay", args.end_weight_decay)):
        if value < 0:
            raise _not_allowed(f"{flag}={value}", "a number >= 0")


def resolve_emerging_optimizer(args: argparse.Namespace) -> None:
    """dist_<name> → <name> + layer-wise; emerging + --use-distributed-optimizer → layer-wise instead of ZeRO-1."""
    if not hasattr(args, "use_layer_wise_distributed_optimizer"):
        args.use_layer_wise_distributed_optimizer = False
    name = args.optimizer
    if name.startswith(LEGACY_DIST_PREFIX) and not is_dotted_path(name):
        base = name[len(LEGACY_DIST_PREFIX):]
        if not is_emerging(base):
            raise _not_allowed(f"--optimizer={name}", "the dist_ prefix only with an emerging optimizer; use --use-distributed-optimizer instead")
        warn_dist_prefix(name, base)
        args.optimizer = base
        args.use_layer_wise_distributed_optimizer = True
        args.use_distributed_optimizer = False
    if is_emerging(args.optimizer) and args.use_distributed_optimizer:
        args.use_layer_wise_distributed_optimizer = True
        args.use_distributed_optimizer = False
    if is_emerging(args.optimizer) and args.fp16:
        raise _not_allowed(f"--optimizer={args.optimizer} with --fp16", "--bf16 or fp32 (emerging optimizers do not support fp16 loss scaling)")


def check_overlap(args: argparse.Namespace) -> None:
    """Runs after resolve_emerging_optimizer, so muon + --use-distributed-optimizer counts as sharded."""
    if not args.overlap_param_gather:
        return
    if not (args.use_distributed_optimizer or args.use_layer_wise_distributed_optimizer):
        raise _not_allowed("--overlap-param-gather without --use-distributed-optimizer", "--use-distributed-optimizer as well")
    if not args.overlap_grad_reduce:
        raise _not_allowed("--overlap-param-gather without --overlap-grad-reduce", "--overlap-grad-reduce as well")


def check_checkpoint_format(args: argparse.Namespace) -> None:
    if args.ckpt_format not in SUPPORTED_CKPT_FORMATS:
        raise _not_allowed(f"--ckpt-format={args.ckpt_format}", "one of " + ", ".join(SUPPORTED_CKPT_FORMATS))


def validate_args(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """Check every cross-flag rule and fill in derived values (in place); returns ``args``."""
    check_parallel_layout(args, world_size)
    check_batch_sizes(args)
    check_model_shape(args)
    check_precision(args)
    check_learning_rate(args)
    check_training_length(args)
    check_schedule_units(args)
    check_warmup(args)
    check_wsd_length(args)
    resolve_weight_decay(args)
    resolve_emerging_optimizer(args)
    check_overlap(args)
    check_checkpoint_format(args)
    return args
