#!/usr/bin/env python
"""Print what a megatron_opt checkpoint holds: iteration, layout, args, every tensor with shape and dtype.

    python tools/inspect_checkpoint.py SAVE_DIR_OR_CHECKPOINT [--iteration N] [--json]

Reads only metadata (no tensor data). A checkpoint that is missing, incomplete or corrupt is
reported in one line on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_opt.checkpointing import CheckpointError, read_checkpoint_metadata, resolve_checkpoint_dir


def describe(path: str, iteration=None) -> dict:
    ckpt = resolve_checkpoint_dir(path, iteration)
    if ckpt is None:
        raise CheckpointError(path, "no checkpoint found")
    meta, tensors = read_checkpoint_metadata(ckpt)
    return {
        "path": ckpt,
        "iteration": meta["iteration"],
        "layout": meta.get("layout"),
        "consumed_train_samples": meta.get("consumed_train_samples"),
        "has_optimizer": meta.get("has_optimizer"),
        "has_rng": meta.get("has_rng"),
        "args": meta.get("args"),
        "scheduler": meta.get("scheduler"),
        "tensors": {k: {"shape": list(v.size), "dtype": str(v.properties.dtype).replace("torch.", "")}
                    for k, v in sorted(tensors.items())},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--iteration", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    args = parser.parse_args(argv)
    try:
        info = describe(args.path, args.iteration)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"checkpoint: {info['path']}")
    print(f"iteration: {info['iteration']}")
    print(f"layout: {json.dumps(info['layout'], sort_keys=True)}")
    print(f"consumed_train_samples: {info['consumed_train_samples']}")
    print(f"optimizer state: {'yes' if info['has_optimizer'] else 'no'}; rng: {'yes' if info['has_rng'] else 'no'}")
    print(f"args: {json.dumps(info['args'], sort_keys=True)}")
    print(f"tensors ({len(info['tensors'])}):")
    for key, t in info["tensors"].items():
        print(f"  {key}  {t['dtype']}  {t['shape']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
