"""Data-parallel gradient buffers (ddp) and, beside them, the sharded optimizers."""

from megatron_opt.distributed.ddp import Bucket, DDPConfig, DistributedDataParallel, GradBuffer, ParamSlot

__all__ = ["Bucket", "DDPConfig", "DistributedDataParallel", "GradBuffer", "ParamSlot"]
