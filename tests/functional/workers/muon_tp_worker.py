"""torchrun worker (2 ranks, gloo): Muon-family TP modes against single-process runs on full matrices.

Every rank builds the same full weights and gradients, runs the TP=1 optimizer on them locally, then
runs the TP=2 optimizer on its shard and gathers the shards. Prints ``RESULT <check> <max abs diff>
<tolerance>`` on rank 0 and exits non-zero if any check is over its tolerance.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from megatron_opt.emerging import TensorParallelAdaptiveMuon, TensorParallelMuon
from megatron_opt.parallel import ProcessGroupCollection, all_gather_concat

STEPS = 3
COMMON = dict(lr=0.05, momentum=0.9, weight_decay=0.1, fp32_matmul_prec="highest", num_ns_steps=5)
QKV_SPLIT = (8, 4, 4)  # 4 query groups of 16 rows: each of the 2 ranks holds 2 whole groups


def full_problem(seed: int):
    """name → (full weight, [full grads], partition_dim, is_qkv)."""
    gen = torch.Generator().manual_seed(seed)
    # The wide column-parallel and tall row-parallel weights make normuon reduce over the sharded dim.
    specs = {
        "column_parallel": ((32, 24), 0, False),
        "column_parallel_wide": ((24, 40), 0, False),
        "row_parallel": ((24, 40), 1, False),
        "row_parallel_tall": ((40, 24), 1, False),
        "qkv": ((64, 16), 0, True),
    }
    return {
        name: (torch.randn(shape, generator=gen), [torch.randn(shape, generator=gen) for _ in range(STEPS)], pdim, qkv)
        for name, (shape, pdim, qkv) in specs.items()
    }


def make_param(w: torch.Tensor, pdim, is_qkv: bool) -> torch.nn.Parameter:
    p = torch.nn.Parameter(w.clone())
    if pdim is not None:
        p.tensor_model_parallel = True
        p.partition_dim = pdim
    if is_qkv:
        p.is_qkv = True
        p.qkv_split_shapes = QKV_SPLIT
    return p


def run(cls, kwargs, problem, shard_of=None, group=None, skip=None, skip_on_device=False):
    """Run STEPS steps; with ``shard_of`` (tp_size, rank) every tensor is this rank's shard.

    ``skip``: that step gets a nan gradient and is skipped, by not stepping or (``skip_on_device``) by
    stepping with ``found_inf`` set, as MegatronOptimizer's device path does."""
    params, grads = [], []
    for w, gs, pdim, qkv in problem.values():
        if shard_of is not None:
            size, rank = shard_of
            w = w.chunk(size, dim=pdim)[rank]
            gs = [g.chunk(size, dim=pdim)[rank] for g in gs]
        params.append(make_param(w, pdim if shard_of is not None else None, qkv))
        grads.append(gs)
    opt = cls(params, tp_group=group, **kwargs)
    for step in range(STEPS):
        for p, gs in zip(params, grads):
            p.grad = gs[step].clone()
        if step == skip:
            params[0].grad[0, 0] = float("nan")
            if not skip_on_device:
                continue
        if skip_on_device:
            opt.found_inf, opt.grad_scale = torch.tensor(float(step == skip)), None
        opt.step()
        opt.found_inf = None
    return {name: p.detach() for name, p in zip(problem, params)}


def gathered(local, problem, group):
    return {name: all_gather_concat(t, group, dim=problem[name][2]) for name, t in local.items()}


def max_diff(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main() -> int:
    dist.init_process_group("gloo")
    pgs = ProcessGroupCollection.initialize(tensor_model_parallel_size=2)
    tp, rank = pgs.tp, pgs.tp_rank
    problem = full_problem(seed=1234)
    checks = []  # (name, diff, tolerance)

    variants = [
        ("muon", TensorParallelMuon, dict(COMMON, split_qkv=False)),
        ("muon_split_qkv", TensorParallelMuon, dict(COMMON, split_qkv=True, nesterov=True)),
        ("adamuon", TensorParallelAdaptiveMuon, dict(COMMON, split_qkv=True, moment2_method="adamuon")),
        ("normuon", TensorParallelAdaptiveMuon, dict(COMMON, split_qkv=True, moment2_method="normuon")),
        ("namo", TensorParallelAdaptiveMuon, dict(COMMON, split_qkv=False, moment2_method="namo")),
        # Gram-space NS where a matrix is >= 1.5:1 (the 24x40 / 40x24 weights and the 32x16 Q blocks; under
        # distributed TP also with all-reduced Grams of the row-parallel shards), plain NS for the rest.
        ("muon_gram", TensorParallelMuon, dict(COMMON, split_qkv=True, ns_algorithm="gram")),
    ]
    for label, cls, kwargs in variants:
        single = run(cls, kwargs, problem)
        dup = gathered(run(cls, dict(kwargs, tp_mode="duplicated"), problem, (2, rank), tp), problem, tp)
        distr = gathered(run(cls, dict(kwargs, tp_mode="distributed"), problem, (2, rank), tp), problem, tp)
        moved = max_diff(single, {k: v[0] for k, v in problem.items()})
        # duplicated runs the very same NS on the gathered matrix: equal to TP=1 up to fp32 rounding.
        checks.append((f"{label}.duplicated_vs_tp1", max_diff(dup, single), 1e-6))
        # distributed sums per-shard Grams (another summation order) through 5 NS steps; relative to how far
        # the weights moved, because adamuon's elementwise O/sqrt(V) magnifies rounding where |O| is small.
        checks.append((f"{label}.distributed_vs_duplicated(relative)", max_diff(distr, dup) / moved, 5e-5))
        checks.append((f"{label}.weights_moved(negated)", -moved, -1e-2))

    # a skipped step decided on device runs NS (and its TP collectives) on every rank, writes nothing.
    for label, cls, kwargs in (variants[1], variants[3]):
        for mode in ("duplicated", "distributed"):
            kw = dict(kwargs, tp_mode=mode)
            host = run(cls, kw, problem, (2, rank), tp, skip=1)
            device = run(cls, kw, problem, (2, rank), tp, skip=1, skip_on_device=True)
            checks.append((f"{label}.{mode}_device_skip_vs_host_skip", max_diff(device, host), 0.0))

    # A 260-row Gram on each shard: the symmetric-block Newton–Schulz (from SYMMETRIC_MIN_ROWS on CPU) in all
    # three places, TP=1, duplicated (gathered) and distributed (all-reduced assembled Gram). Plain Muon only:
    # adamuon's O/sqrt(V) magnifies summation-order differences of this size beyond a useful tolerance.
    gen = torch.Generator().manual_seed(11)
    big = {"column_parallel_big": (torch.randn(520, 260, generator=gen), [torch.randn(520, 260, generator=gen) for _ in range(STEPS)], 0, False)}
    big_single = run(TensorParallelMuon, COMMON, big)
    big_dup = gathered(run(TensorParallelMuon, dict(COMMON, tp_mode="duplicated"), big, (2, rank), tp), big, tp)
    big_distr = gathered(run(TensorParallelMuon, dict(COMMON, tp_mode="distributed"), big, (2, rank), tp), big, tp)
    checks.append(("muon_big.duplicated_vs_tp1", max_diff(big_dup, big_single), 1e-6))
    checks.append(("muon_big.distributed_vs_duplicated", max_diff(big_distr, big_dup), 1e-5))
    # the same 520x260 weight through the Gram-space NS: its 260x260 Grams on symmetric blocks, and under
    # distributed TP two all-reduced Grams per NS call instead of five.
    gram = dict(COMMON, ns_algorithm="gram")
    gram_single = run(TensorParallelMuon, gram, big)
    gram_dup = gathered(run(TensorParallelMuon, dict(gram, tp_mode="duplicated"), big, (2, rank), tp), big, tp)
    gram_distr = gathered(run(TensorParallelMuon, dict(gram, tp_mode="distributed"), big, (2, rank), tp), big, tp)
    checks.append(("muon_big_gram.duplicated_vs_tp1", max_diff(gram_dup, gram_single), 1e-6))
    checks.append(("muon_big_gram.distributed_vs_duplicated", max_diff(gram_distr, gram_dup), 1e-5))
    # and it is the same polynomial: within fp32 rounding of the standard loop's weights
    checks.append(("muon_big_gram.vs_standard_tp1", max_diff(gram_single, big_single), 1e-5))

    # blockwise at TP=2 == Muon run separately (no TP) on each shard.
    block_kwargs = dict(COMMON, split_qkv=True)
    blockwise = run(TensorParallelMuon, dict(block_kwargs, tp_mode="blockwise"), problem, (2, rank), tp)
    shard_problem = {k: (w.chunk(2, pdim)[rank], [g.chunk(2, pdim)[rank] for g in gs], pdim, qkv) for k, (w, gs, pdim, qkv) in problem.items()}
    alone = run(TensorParallelMuon, block_kwargs, shard_problem)
    checks.append(("muon.blockwise_vs_per_shard_muon", max_diff(blockwise, alone), 0.0))
    checks.append(("muon.blockwise_differs_from_tp1(negated)",
                   -max_diff(gathered(blockwise, problem, tp), run(TensorParallelMuon, block_kwargs, problem)), -1e-3))

    failed = [c for c in checks if not c[1] <= c[2]]
    if rank == 0:
        for name, diff, tol in checks:
            print(f"RESULT {name} {diff:.3e} {tol:.1e}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
