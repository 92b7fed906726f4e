"""GPT pretraining with megatron_opt, launched by torchrun with Megatron-LM's flags.

    torchrun --nproc_per_node 2 training/pretrain_gpt.py --tensor-model-parallel-size 2 \\
        --optimizer muon --lr 2e-3 --train-iters 100 --save runs/muon_tp2

A bad command line prints one ``error: ...`` line and exits with 2 (before any process group is
created, so every rank stops alike). See docs/training.md.

Only rank 0 prints a user error. torchrun ends the whole job as soon as any rank fails, so the other
ranks wait (``ERROR_REPORT_GRACE_S``) instead of exiting at once, which could kill rank 0 before its line
is out; rank 0's exit ends the job first, so the wait is never seen.
"""

from __future__ import annotations

import os
import sys
import time
from typing import List, Optional

if __package__ in (None, ""):  # run as a script (torchrun training/pretrain_gpt.py): make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arguments import parse_and_validate, run_cli
from megatron_opt.checkpointing import CheckpointError
from megatron_opt.errors import ConfigError
from megatron_opt.parallel import ProcessGroupCollection
from training import checkpoint_glue
from training.builders import build_data, build_model, build_optimizer
from training.consistency import check_ranks_agree
from training.fault_injection import error_report_delay_s
from training.initialize import destroy_distributed, initialize_distributed, launcher_rank, launcher_world_size, set_seeds
from training.schedule import scheduler_from_args
from training.train_loop import Run, train


def main(argv: List[str]) -> int:
    args, config = parse_and_validate(argv, launcher_world_size())
    device = initialize_distributed(args.distributed_backend, args.distributed_timeout_minutes)
    try:
        check_ranks_agree(args, config)  # before any group or collective that differing settings would hang
        pgs = ProcessGroupCollection.initialize(args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
        set_seeds(args.seed, pgs)
        model = build_model(args, pgs, device)
        optimizer = build_optimizer(config, model, pgs)
        scheduler = scheduler_from_args(optimizer, args)
        train_data, valid_data, layout = build_data(args, pgs)
        progress = checkpoint_glue.Progress()
        loaded = checkpoint_glue.load(args, [model], optimizer, scheduler, pgs)
        if loaded is not None:
            progress, path = loaded
            if launcher_rank() == 0:
                print(f"loaded checkpoint {path} at iteration {progress.iteration}", flush=True)
        run = Run(args, pgs, device, model, optimizer, scheduler, train_data, valid_data, layout)
        code = train(run, progress)
    except BaseException:
        destroy_distributed(clean_exit=False)
        raise
    destroy_distributed()
    return code


ERROR_REPORT_GRACE_S = 30.0
"""How long a rank other than 0 stays up after a user error, so that rank 0 can print it (see above)."""


def _main_on_this_rank(argv: List[str]) -> Optional[int]:
    """Errors a user can fix are one line from rank 0: ConfigError (run_cli prints it, exit 2), CheckpointError (exit 1)."""
    try:
        return main(argv)
    except ConfigError:
        if launcher_rank() == 0:
            time.sleep(error_report_delay_s())
            raise
        return _after_rank0_reported(2)
    except CheckpointError as exc:
        if launcher_rank() == 0:
            time.sleep(error_report_delay_s())
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 1
        return _after_rank0_reported(1)


def _after_rank0_reported(code: int) -> int:
    if launcher_world_size() > 1:
        time.sleep(ERROR_REPORT_GRACE_S)
    return code


if __name__ == "__main__":
    sys.exit(run_cli(_main_on_this_rank))
