"""Data-parallel gradient buffers (ddp) and, beside them, the sharded optimizers."""

from megatron_opt.distributed.ddp import Bucket, DDPConfig, DistributedDataParallel, GradBuffer, ParamSlot
from megatron_opt.distributed.distrib_optimizer import DistributedOptimizer, finish_param_sync
from megatron_opt.distributed.layer_wise import LayerWiseDistributedOptimizer

__all__ = [
    "Bucket",
    "DDPConfig",
    "DistributedDataParallel",
    "DistributedOptimizer",
    "GradBuffer",
    "LayerWiseDistributedOptimizer",
    "ParamSlot",
    "finish_param_sync",
]
