"""Range maps and LPT balancing on hand-made layouts; sharded-optimizer factory checks in one process."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from megatron_opt.config import OptimizerConfig
from megatron_opt.distributed import DDPConfig, DistributedDataParallel
from megatron_opt.distributed.distrib_optimizer import DistributedOptimizer
from megatron_opt.distributed.layer_wise import LayerWiseDistributedOptimizer
from megatron_opt.distributed.sharding import (
    ShardRange,
    SlotInfo,
    bin_loads,
    bucket_shard,
    lpt_assign,
    newton_schulz_cost,
    shard_param_ranges,
)
from megatron_opt.errors import ConfigError
from megatron_opt.factory import get_megatron_optimizer

# Buffer of 2 buckets: bucket 0 = [0, 12) holds a[0:5), b[5:11) + 1 padding; bucket 1 = [12, 16) holds c[12:16).
SLOTS = [SlotInfo("a", 0, 5, 0), SlotInfo("b", 5, 11, 0), SlotInfo("c", 12, 16, 1)]
BUCKETS = [(0, 12), (12, 16)]


def test_bucket_shard_and_indivisible_bucket():
    assert bucket_shard((0, 12), 0, 2) == (0, 6)
    assert bucket_shard((12, 16), 1, 2) == (14, 16)
    with pytest.raises(ValueError, match="not divisible"):
        bucket_shard((0, 10), 0, 3)


def test_range_map_two_ranks_cuts_through_parameters():
    r0 = shard_param_ranges(SLOTS, BUCKETS, 0, 2)
    r1 = shard_param_ranges(SLOTS, BUCKETS, 1, 2)
    assert r0 == [
        ShardRange("a", 0, (0, 5), (0, 5), (0, 5), (0, 5)),
        ShardRange("b", 0, (5, 6), (5, 6), (5, 6), (0, 1)),
        ShardRange("c", 1, (12, 14), (0, 2), (0, 2), (0, 2)),
    ]
    assert r1 == [
        ShardRange("b", 0, (6, 11), (6, 11), (0, 5), (1, 6)),
        ShardRange("c", 1, (14, 16), (2, 4), (0, 2), (2, 4)),
    ]


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_range_maps_cover_every_element_exactly_once(dp):
    slots = [SlotInfo("a", 0, 7, 0), SlotInfo("b", 7, 8, 0), SlotInfo("c", 8, 19, 0), SlotInfo("d", 20, 33, 1)]
    buckets = [(0, 20), (20, 36)]
    covered = {s.name: [0] * (s.end - s.start) for s in slots}
    for rank in range(dp):
        for r in shard_param_ranges(slots, buckets, rank, dp):
            assert r.numel == r.buffer_range[1] - r.buffer_range[0] == r.shard_range[1] - r.shard_range[0]
            for i in range(*r.param_range):
                covered[r.name][i] += 1
    assert all(c == [1] * len(c) for c in covered.values())


def test_newton_schulz_cost():
    assert newton_schulz_cost((8, 2)) == 8 * 2 * 2
    assert newton_schulz_cost((2, 8)) == 8 * 2 * 2
    assert newton_schulz_cost((5,)) == 5


def test_lpt_hand_made():
    # largest first: 10→0, 9→1, 8→1 (9 < 10), 7→0 (loads 17/17 tie: lower bin), then the 1s by index:
    # item 0 → bin 0 (tie), item 3 → bin 1 (17 < 18)
    costs = [1, 10, 8, 1, 7, 9]
    owners = lpt_assign(costs, 2)
    assert owners == [0, 0, 1, 1, 0, 1]
    assert bin_loads(costs, owners, 2) == [18, 18]


def test_lpt_ties_deterministic_and_balanced():
    costs = [newton_schulz_cost(s) for s in [(64, 16), (16, 64), (32, 32), (32, 32), (8, 8), (8, 8), (8, 8)]]
    assert lpt_assign(costs, 3) == lpt_assign(list(costs), 3)
    owners = lpt_assign(costs, 3)
    # the two 32x32 (cost 32768) go first, to bins 0 and 1; the 64x16 and 16x64 (16384 each) both to bin 2
    assert owners[:4] == [2, 2, 0, 1]
    loads = bin_loads(costs, owners, 3)
    assert max(loads) - min(loads) <= max(costs)
    assert lpt_assign([5, 5, 5], 1) == [0, 0, 0]
    assert lpt_assign([], 4) == []


# ---- single-process behaviour of the wrappers ---------------------------------------------------


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w1 = nn.Linear(6, 5)
        self.w2 = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.w2(torch.tanh(self.w1(x))).pow(2).mean()


def run_steps(model, opt, steps=3):
    torch.manual_seed(1)
    for _ in range(steps):
        model.zero_grad_buffer() if hasattr(model, "zero_grad_buffer") else model.zero_grad()
        opt.zero_grad()
        model(torch.randn(4, 6)).backward()
        if hasattr(model, "finish_grad_sync"):
            model.finish_grad_sync()
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["adam", "sgd", "lion"])
def test_dp1_distributed_optimizer_equals_plain(name):
    cfg = dict(optimizer=name, lr=1e-2, clip_grad=1.0)
    plain = DistributedDataParallel(Tiny(), DDPConfig())
    ref = run_steps(plain, get_megatron_optimizer(OptimizerConfig(**cfg), [plain]))
    model = DistributedDataParallel(Tiny(), DDPConfig(use_distributed_optimizer=True, bucket_size=20))
    opt = get_megatron_optimizer(OptimizerConfig(use_distributed_optimizer=True, **cfg), [model])
    assert isinstance(opt, DistributedOptimizer)
    got = run_steps(model, opt)
    for n in ref:
        assert torch.equal(got[n], ref[n]), n


def test_scheduler_writes_reach_inner_groups_and_keys_kept():
    model = DistributedDataParallel(Tiny(), DDPConfig(use_distributed_optimizer=True))
    opt = get_megatron_optimizer(OptimizerConfig(lr=1e-2, use_distributed_optimizer=True), [model])
    for group in opt.param_groups:
        assert {"max_lr", "min_lr", "lr_mult", "wd_mult", "param_names"} <= set(group)
        assert len(group["param_names"]) == len(group["params"])
        group["lr"] = 0.123
    assert all(g["lr"] == 0.123 for g in opt.optimizer.param_groups)
    assert all(p.dim() == 1 for g in opt.optimizer.param_groups for p in g["params"])


def test_factory_errors():
    with pytest.raises(ConfigError, match="not DistributedDataParallel"):
        get_megatron_optimizer(OptimizerConfig(lr=1e-3, use_distributed_optimizer=True), [Tiny()])
    with pytest.raises(ConfigError, match=r"DDPConfig\(use_distributed_optimizer=True\)"):
        get_megatron_optimizer(OptimizerConfig(lr=1e-3, use_distributed_optimizer=True), [DistributedDataParallel(Tiny(), DDPConfig())])
    with pytest.raises(ConfigError, match="use_layer_wise_distributed_optimizer"):
        get_megatron_optimizer(OptimizerConfig(optimizer="muon", lr=1e-3, use_distributed_optimizer=True),
                               [DistributedDataParallel(Tiny(), DDPConfig(use_distributed_optimizer=True))])
    with pytest.raises(ConfigError, match="all-reduced gradients"):
        get_megatron_optimizer(OptimizerConfig(optimizer="muon", lr=1e-3, use_layer_wise_distributed_optimizer=True),
                               [DistributedDataParallel(Tiny(), DDPConfig(use_distributed_optimizer=True))])


def test_layer_wise_dp1_equals_plain_muon():
    plain = DistributedDataParallel(Tiny(), DDPConfig())
    ref = run_steps(plain, get_megatron_optimizer(OptimizerConfig(optimizer="muon", lr=1e-2), [plain]))
    model = DistributedDataParallel(Tiny(), DDPConfig())
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="muon", lr=1e-2, use_layer_wise_distributed_optimizer=True), [model])
    assert [type(c).__name__ for c in opt.chained_optimizers] == ["LayerWiseDistributedOptimizer", "DistributedOptimizer"]
    assert isinstance(opt.chained_optimizers[0], LayerWiseDistributedOptimizer)
    got = run_steps(model, opt)
    for n in ref:
        assert torch.equal(got[n], ref[n]), n
