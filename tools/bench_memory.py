"""Per-rank memory of the ZeRO-1 distributed optimizer against the theoretical per-parameter table.

Run ``python tools/bench_memory.py`` (it launches ``torchrun --nproc_per_node d`` for d = 1, 2, 4 on
gloo/CPU; ``--dp 1 2 4 8`` to choose) or, for one size, ``torchrun --nproc_per_node 2
tools/bench_memory.py --worker``.

Bytes counted per rank, after one real training step (so Adam's state exists):

* params       every model parameter (full, replicated over DP): 2 B (bf16) or 4 B (fp32) each;
* grads        the DDP fp32 grad buffer (replicated, including bucket padding): 4 B each;
* main params  fp32 main shards that are separate tensors (bf16: 4 B per owned element; fp32 models
               use views into the params, so 0);
* moments      Adam's ``exp_avg`` + ``exp_avg_sq`` of the owned elements: 8 B each (the 0-d ``step``
               is not counted).

Theory per parameter (Megatron-LM's table, d = DP size): bf16 params / fp32 grads ``6 + 12/d``;
fp32 ``8 + 8/d``. The ratio measured / theory is printed; the difference is bucket padding.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(precision: str) -> dict:
    import datetime

    import torch
    import torch.distributed as dist

    from megatron_opt.config import OptimizerConfig
    from megatron_opt.distributed import DDPConfig, DistributedDataParallel
    from megatron_opt.distributed.distrib_optimizer import DistributedOptimizer
    from megatron_opt.factory import get_megatron_optimizer
    from megatron_opt.parallel import ProcessGroupCollection
    from training.model import GPT, GPTConfig
    from training.pipeline import forward_backward

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    pgs = ProcessGroupCollection.initialize(1, 1)
    bf16 = precision == "bf16"
    gpt = GPTConfig(hidden_size=128, num_layers=4, num_attention_heads=4, seq_length=32, vocab_size=512,
                    params_dtype=torch.bfloat16 if bf16 else torch.float32)
    model = DistributedDataParallel(GPT(gpt, pgs), DDPConfig(use_distributed_optimizer=True, bucket_size=100_000), pgs)
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, bf16=bf16, use_distributed_optimizer=True),
                                 [model], pg_collection=pgs)
    assert isinstance(opt, DistributedOptimizer)
    g = torch.Generator().manual_seed(pgs.dp_rank)
    batch = [(torch.randint(0, 512, (2, 32), generator=g), torch.randint(0, 512, (2, 32), generator=g))]
    forward_backward(model, batch, pgs)
    opt.step()

    n_params = sum(p.numel() for p in model.parameters())
    counts = {
        "params": sum(p.numel() * p.element_size() for p in model.parameters()),
        "grads": sum(b.data.numel() * b.data.element_size() for b in model.buffers),
        "main_params": sum(pc.shard.numel() * pc.shard.element_size() for pc in opt.pieces if not pc.is_view),
        "moments": sum(v.numel() * v.element_size() for pc in opt.pieces for k, v in opt.optimizer.state[pc.shard].items()
                       if k in ("exp_avg", "exp_avg_sq")),
    }
    worst = torch.tensor([counts[k] for k in ("params", "grads", "main_params", "moments")], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)  # the most loaded rank
    d = pgs.dp_size
    per_param = (6 + 12 / d) if bf16 else (8 + 8 / d)
    total = float(worst.sum())
    return {"precision": precision, "dp": d, "n_params": n_params,
            **{k: int(v) for k, v in zip(("params", "grads", "main_params", "moments"), worst.tolist())},
            "total_bytes": int(total), "bytes_per_param": total / n_params, "theory_per_param": per_param,
            "ratio": total / (n_params * per_param)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help="run as one torchrun rank")
    parser.add_argument("--dp", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    if args.worker:
        import torch.distributed as dist

        results = [worker(p) for p in ("bf16", "fp32")]
        if dist.get_rank() == 0:
            for r in results:
                print("RESULT " + json.dumps(r), flush=True)
        dist.destroy_process_group()
        return

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    rows = []
    for d in args.dp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={d}", __file__, "--worker"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            sys.exit(f"torchrun dp={d} failed:\n{proc.stderr[-3000:]}")
        rows += [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    print(f"{'precision':9} {'dp':>3} {'params':>9} {'param B':>9} {'grad B':>9} {'main B':>9} {'moment B':>9} "
          f"{'B/param':>8} {'theory':>7} {'ratio':>6}")
    for r in sorted(rows, key=lambda r: (r["precision"], r["dp"])):
        print(f"{r['precision']:9} {r['dp']:>3} {r['n_params']:>9} {r['params']:>9} {r['grads']:>9} {r['main_params']:>9} "
              f"{r['moments']:>9} {r['bytes_per_param']:>8.3f} {r['theory_per_param']:>7.3f} {r['ratio']:>6.3f}")


if __name__ == "__main__":
    main()
