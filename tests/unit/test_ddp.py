"""DDP grad buffers in one process: layout, padding, accumulation into main_grad."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from megatron_opt.distributed import DDPConfig, DistributedDataParallel
from megatron_opt.distributed.ddp import plan_buckets
from megatron_opt.errors import ConfigError


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 2))


def test_plan_buckets_pads_each_bucket_to_the_dp_size():
    params, buckets = plan_buckets([10, 3, 6, 5], bucket_size=12, dp_size=4)
    # bucket 0 = 10 + 3 = 13 -> padded to 16; bucket 1 = 6 + 5 = 11 -> 12
    assert buckets == [(0, 16), (16, 28)]
    assert params == [(0, 10, 0), (10, 13, 0), (16, 22, 1), (22, 27, 1)]
    assert plan_buckets([10, 3], bucket_size=None, dp_size=3) == ([(0, 10, 0), (10, 13, 0)], [(0, 15)])


def test_buffer_layout_is_reverse_parameter_order_with_views():
    model = make_model()
    ddp = DistributedDataParallel(model, DDPConfig(bucket_size=20))
    names = [n for n, _ in model.named_parameters()]
    buffer = ddp.buffers[0]
    slots = sorted(buffer.param_index_map.values(), key=lambda s: s.start)
    assert [s.name for s in slots] == names[::-1]
    # backward order numels 2, 6, 3, 21 | 7, 35: a bucket closes once it holds >= 20 elements
    assert [len(b.params) for b in buffer.buckets] == [4, 2]
    assert [(b.start, b.end) for b in buffer.buckets] == [(0, 32), (32, 74)]
    for b_prev, b_next in zip(buffer.buckets, buffer.buckets[1:]):
        assert b_prev.end == b_next.start
    for p, slot in buffer.param_index_map.items():
        assert p.main_grad.data_ptr() == buffer.data[slot.start:].data_ptr()
        assert p.main_grad.dtype == torch.float32 and p.main_grad.shape == p.shape
    assert [n for n, _ in ddp.named_parameters()] == names  # no "module." prefix
    assert set(ddp.state_dict()) == set(model.state_dict())


def test_accumulation_equals_summed_autograd_and_zero_grad_resets():
    model, reference = make_model(), make_model()
    ddp = DistributedDataParallel(model, DDPConfig(bucket_size=16))
    xs = [torch.randn(4, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for x in xs:
        ddp(x).pow(2).sum().backward()
        reference(x).pow(2).sum().backward()
    ddp.finish_grad_sync()
    for p, r in zip(model.parameters(), reference.parameters()):
        assert p.grad is None
        torch.testing.assert_close(p.main_grad, r.grad)
    ddp.zero_grad_buffer()
    assert all(float(b.data.abs().sum()) == 0.0 for b in ddp.buffers)


def test_overlap_requires_no_sync_for_all_but_the_last_micro_batch():
    ddp = DistributedDataParallel(make_model(), DDPConfig(overlap_grad_reduce=True, bucket_size=16))
    x = torch.randn(4, 5)
    with ddp.no_sync():
        ddp(x).sum().backward()
    ddp(x).sum().backward()
    ddp.finish_grad_sync()
    ddp.zero_grad_buffer()
    ddp(x).sum().backward()
    with pytest.raises(RuntimeError, match="no_sync"):
        ddp(x).sum().backward()


def test_bf16_params_get_an_fp32_buffer_per_dtype():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).to(torch.bfloat16))
    ddp = DistributedDataParallel(model, DDPConfig())
    assert sorted(str(b.param_dtype) for b in ddp.buffers) == ["torch.bfloat16", "torch.float32"]
    assert all(b.data.dtype == torch.float32 for b in ddp.buffers)
    low = DistributedDataParallel(nn.Linear(4, 4).to(torch.bfloat16), DDPConfig(grad_reduce_in_fp32=False))
    assert low.buffers[0].data.dtype == torch.bfloat16


def test_bad_bucket_size_is_a_config_error():
    with pytest.raises(ConfigError, match="bucket_size=0"):
        DDPConfig(bucket_size=0)
