#!/usr/bin/env python
"""Convert a megatron_opt DCP checkpoint into one plain torch.save file of full (unsharded) tensors.

    python tools/convert_checkpoint.py SAVE_DIR_OR_CHECKPOINT OUT.pt [--iteration N] [--model-only]

OUT.pt holds only dicts, lists, strings, numbers and tensors, so ``torch.load(OUT.pt, weights_only=True)``
reads it: ``{"iteration", "metadata" (metadata.json as a dict), "model": {name: tensor},
"optimizer": {name: {state key: tensor}}}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict

import torch

from megatron_opt.checkpointing import CheckpointError, read_full_checkpoint

MODEL, OPTIM = "model/", "optimizer/"


def convert(path: str, out: str, iteration=None, model_only: bool = False) -> Dict[str, Any]:
    meta, tensors = read_full_checkpoint(path, iteration, prefix=MODEL if model_only else "")
    model = {k[len(MODEL):]: v for k, v in tensors.items() if k.startswith(MODEL)}
    optimizer: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIM):
            name, _, state_key = key[len(OPTIM):].rpartition("/")
            optimizer.setdefault(name, {})[state_key] = value
    result = {"iteration": meta["iteration"], "metadata": meta, "model": model, "optimizer": optimizer}
    tmp = f"{out}.tmp-{os.getpid()}"
    torch.save(result, tmp)
    os.replace(tmp, out)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("out")
    parser.add_argument("--iteration", type=int, default=None)
    parser.add_argument("--model-only", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = convert(args.path, args.out, args.iteration, args.model_only)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: iteration {result['iteration']}, {len(result['model'])} model tensors, "
          f"{sum(len(v) for v in result['optimizer'].values())} optimizer tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
