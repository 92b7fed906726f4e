"""Plot the learning rate and weight decay a pretrain command line will use, before running it.

    python tools/plot_schedule.py <the same flags as training/pretrain_gpt.py> --out schedule.png
    python tools/plot_schedule.py --yaml-cfg examples/gpt_muon.yaml --world-size 4 --out muon.png --json muon.json

The flags go through the real parse_and_validate (so a bad command line fails here the same way,
one line and exit 2) and the real scheduler arithmetic (Megatron-LM's sample units); the scheduler
runs over a dummy param group, with no model and no torch.distributed. Point i of the curve is
the value logged at iteration i (after i optimizer steps, i.e. i x global batch size samples).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arguments import parse_and_validate, run_cli  # noqa: E402
from arguments.parser import MegatronArgumentParser  # noqa: E402
from training.schedule import scheduler_from_args, train_iters_from_args  # noqa: E402


class ScheduleOnly:
    """Stands in for the optimizer: one default param group with no parameters."""

    def __init__(self) -> None:
        self.param_groups: List[Dict] = [{"params": [], "default_config": True}]


def schedule_samples(args: argparse.Namespace) -> Dict[str, List[float]]:
    """``{"iteration", "samples", "lr", "wd"}`` for iterations 0..train_iters of these (validated) args."""
    holder = ScheduleOnly()
    scheduler = scheduler_from_args(holder, args)
    group = holder.param_groups[0]
    out: Dict[str, List[float]] = {"iteration": [], "samples": [], "lr": [], "wd": []}
    for it in range(train_iters_from_args(args) + 1):
        if it > 0:
            scheduler.step(args.global_batch_size)
        out["iteration"].append(it)
        out["samples"].append(scheduler.num_steps)
        out["lr"].append(float(group["lr"]))
        out["wd"].append(float(group["weight_decay"]))
    return out


def main(argv: Sequence[str]) -> int:
    tool = MegatronArgumentParser(add_help=False, allow_abbrev=False)
    tool.add_argument("--out", default="schedule.png", help="PNG to write.")
    tool.add_argument("--json", default=None, help="Also write the sampled values as JSON.")
    tool.add_argument("--world-size", type=int, default=1, help="Ranks the run will use (sets the data-parallel size).")
    own, rest = tool.parse_known_args(list(argv))
    args, _ = parse_and_validate(rest, own.world_size)
    samples = schedule_samples(args)
    from training.plotting import plot_schedule

    title = f"{args.lr_decay_style} lr, {args.weight_decay_incr_style} wd, global batch {args.global_batch_size}"
    plot_schedule(samples["iteration"], samples["lr"], samples["wd"], own.out, title=title)
    if own.json:
        with open(own.json, "w", encoding="utf-8") as f:
            json.dump(samples, f)
    lrs = samples["lr"]
    print(f"wrote {own.out}: {len(lrs)} points, lr {lrs[0]:.3e} -> max {max(lrs):.3e} -> {lrs[-1]:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
