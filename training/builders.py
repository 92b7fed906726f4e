"""Validated args → this rank's model chunk, optimizer, scheduler and data (one small function each)."""

from __future__ import annotations

import argparse
from typing import Any, Optional, Tuple

import torch

from megatron_opt.config import OptimizerConfig
from megatron_opt.distributed.ddp import DDPConfig, DistributedDataParallel
from megatron_opt.errors import ConfigError
from megatron_opt.factory import get_megatron_optimizer
from megatron_opt.parallel import ProcessGroupCollection
from training.data import BatchLayout, DataConfig, SampleDataset, build_datasets
from training.model import GPT, GPTConfig


def params_dtype(args: argparse.Namespace) -> torch.dtype:
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def build_model(args: argparse.Namespace, pgs: ProcessGroupCollection, device: torch.device) -> DistributedDataParallel:
    """This pipeline stage's GPT (its TP shard), on ``device``, wrapped in our DDP as the optimizer factory expects."""
    gpt_config = GPTConfig(
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_attention_heads=args.num_attention_heads,
        seq_length=args.max_position_embeddings,
        vocab_size=args.vocab_size,
        num_query_groups=args.num_query_groups,
        kv_channels=args.kv_channels,
        ffn_hidden_size=args.ffn_hidden_size,
        normalization=args.normalization,
        tie_embeddings=not args.untie_embeddings_and_output_weights,
        init_method_std=args.init_method_std,
        params_dtype=params_dtype(args),
        seed=args.seed,
        record_max_attention_logit=bool(args.qk_clip or args.log_max_attention_logit),
    )
    gpt = GPT(gpt_config, pgs).to(device)
    ddp_config = DDPConfig(
        grad_reduce_in_fp32=bool(args.accumulate_allreduce_grads_in_fp32),
        overlap_grad_reduce=bool(args.overlap_grad_reduce),
        bucket_size=args.ddp_bucket_size,
        # ZeRO-1 needs reduce-scattered grads; the layer-wise optimizer (emerging + --use-distributed-optimizer,
        # already rewritten by validate_args) needs all-reduced ones.
        use_distributed_optimizer=bool(args.use_distributed_optimizer),
    )
    model = DistributedDataParallel(gpt, ddp_config, pgs)
    model.broadcast_params()
    return model


def build_optimizer(config: OptimizerConfig, model: torch.nn.Module, pgs: ProcessGroupCollection) -> Any:
    return get_megatron_optimizer(config, [model], pg_collection=pgs)


def data_path_from_args(args: argparse.Namespace) -> Optional[str]:
    """One corpus: ``--data-path PATH`` or Megatron's weighted form ``--data-path 1.0 PATH``."""
    paths = list(args.data_path or [])
    if len(paths) == 2:
        try:
            float(paths[0])
            paths = paths[1:]
        except ValueError:
            pass
    if len(paths) > 1:
        raise ConfigError(f"--data-path={' '.join(args.data_path)} is not allowed; expected one file or prefix (blending is not supported)")
    return paths[0] if paths else None


def valid_fraction_from_split(split: str) -> float:
    """--split 'train,valid,test' weights → the validation share (test data is not used)."""
    try:
        parts = [float(x) for x in split.replace("/", ",").split(",")]
    except ValueError:
        raise ConfigError(f"--split={split!r} is not allowed; expected comma-separated weights such as 969,30,1") from None
    parts = (parts + [0.0, 0.0])[:3]
    if any(p < 0 for p in parts) or sum(parts) <= 0 or parts[0] <= 0:
        raise ConfigError(f"--split={split!r} is not allowed; expected non-negative weights with a positive train share")
    return parts[1] / sum(parts)


def build_data(args: argparse.Namespace, pgs: ProcessGroupCollection) -> Tuple[SampleDataset, Optional[SampleDataset], BatchLayout]:
    """(train, validation or None, this DP rank's batch layout); every rank builds the same datasets."""
    config = DataConfig(seq_length=args.seq_length, data_path=data_path_from_args(args),
                        valid_fraction=valid_fraction_from_split(args.split), seed=args.seed)
    train, valid = build_datasets(config, vocab_size=args.vocab_size)
    layout = BatchLayout(args.micro_batch_size, args.num_micro_batches, pgs.dp_size, pgs.dp_rank)
    return train, valid, layout
