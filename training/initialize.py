"""Start-up: world size from the launcher, torch.distributed, device and seeds.

Under torchrun the environment holds RANK / WORLD_SIZE / MASTER_ADDR; a plain ``python`` launch is
a world of one and needs no process group. The backend is NCCL with CUDA and gloo otherwise
(``megatron_opt.parallel.backend_for_device``) unless ``--distributed-backend`` says otherwise.
"""

from __future__ import annotations

import datetime
import os
import random
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_opt.parallel import ProcessGroupCollection, backend_for_device, default_device


def launcher_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 for a plain launch); known before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launcher_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def initialize_distributed(backend: Optional[str] = None, timeout_minutes: int = 10) -> torch.device:
    """Create the default process group when launched with more than one rank; returns this rank's device."""
    device = default_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if launcher_world_size() > 1 and not dist.is_initialized():
        backend = backend or backend_for_device()
        kwargs = {"device_id": device} if (backend == "nccl" and device.type == "cuda") else {}
        timeout = datetime.timedelta(minutes=timeout_minutes)
        store = _store_for_this_attempt(timeout)
        if store is not None:
            kwargs.update(store=store, rank=launcher_rank(), world_size=launcher_world_size())
        dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return device


def _store_for_this_attempt(timeout: datetime.timedelta) -> Optional[dist.Store]:
    """Under ``torchrun --max-restarts``: the agent's store, with keys private to this restart attempt.

    torchrun keeps one TCPStore (hosted by its agent) for every attempt, and the default process
    group's keys (each rank's gloo/NCCL address) carry no attempt number, so a restarted rank can
    read the address of a dead rank from the previous attempt and fail to connect. A prefix with
    ``TORCHELASTIC_RESTART_COUNT`` gives every attempt its own keys. ``None``: use the usual env://.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), launcher_world_size(),
                           is_master=False, timeout=timeout)
    return dist.PrefixStore(f"megatron_opt/attempt_{attempt}", client)


def set_seeds(seed: int, pgs: ProcessGroupCollection) -> None:
    """Megatron-LM's offset: every pipeline stage gets its own stream (the model init does not depend on it)."""
    seed = seed + 100 * pgs.pp_rank
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def destroy_distributed(clean_exit: bool = True) -> None:
    """Tear the process group down; after a clean run every rank first waits for the others.

    Without the barrier a rank that finishes early (rank 0 still writes the plot) can tear down its
    gloo connections under a peer and abort it at exit.
    """
    if dist.is_initialized():
        if clean_exit:
            dist.barrier()
        dist.destroy_process_group()
