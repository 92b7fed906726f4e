"""Loss-scale trajectories checked against hand-written expected sequences."""

import pytest
import torch

from megatron_opt.config import OptimizerConfig
from megatron_opt.errors import ConfigError
from megatron_opt.grad_scaler import ConstantGradScaler, DynamicGradScaler, build_grad_scaler

CPU = torch.device("cpu")


def _trajectory(scaler, found_infs):
    out = []
    for found_inf in found_infs:
        scaler.update(found_inf)
        out.append(scaler.scale.item())
    return out


def test_dynamic_scaler_hysteresis_backoff_and_growth():
    scaler = DynamicGradScaler(2.0**16, min_scale=1.0, growth_interval=3, hysteresis=2, device=CPU)
    T, F = True, False
    seq = [T, T, T, F, F, F, T, F, F, F, F, T, T]
    expected = [
        2.0**16,  # inf: hysteresis 2 -> 1, no backoff yet
        2.0**15,  # inf: hysteresis 1 -> 0, backoff
        2.0**14,  # inf: hysteresis -1, backoff again
        2.0**14,  # clean 1
        2.0**14,  # clean 2
        2.0**15,  # clean 3: grow, hysteresis refilled to 2
        2.0**15,  # inf: hysteresis 2 -> 1, growth tracker reset
        2.0**15,
        2.0**15,
        2.0**16,  # third clean step after the inf: grow
        2.0**16,  # clean 1 of the next window
        2.0**16,  # inf: hysteresis 2 -> 1 (growth tracker reset)
        2.0**15,  # inf: hysteresis 1 -> 0, backoff
    ]
    assert _trajectory(scaler, seq) == expected


def test_dynamic_scaler_never_backs_off_below_min_scale():
    scaler = DynamicGradScaler(8.0, min_scale=2.0, growth_interval=100, hysteresis=1, device=CPU)
    assert _trajectory(scaler, [True] * 4) == [4.0, 2.0, 2.0, 2.0]


def test_inv_scale_is_reciprocal_and_fp32():
    scaler = DynamicGradScaler(2.0**32, min_scale=1.0, growth_interval=1, hysteresis=1, device=CPU)
    assert scaler.scale.dtype == torch.float32 and scaler.scale.shape == (1,)
    assert scaler.inv_scale.dtype == torch.float32
    assert scaler.inv_scale.item() == 2.0**-32
    const = ConstantGradScaler(3.0, device=CPU)
    assert const.inv_scale.item() == pytest.approx(1 / 3.0, rel=1e-7)


def test_dynamic_scaler_state_dict_round_trip_continues_identically():
    a = DynamicGradScaler(2.0**10, min_scale=1.0, growth_interval=2, hysteresis=2, device=CPU)
    _trajectory(a, [True, False, True])
    state = a.state_dict()
    assert state["scale"].item() == 2.0**9
    assert state["growth_tracker"] == 0 and state["hysteresis_tracker"] == 0
    b = DynamicGradScaler(2.0**20, min_scale=1.0, growth_interval=2, hysteresis=2, device=CPU)
    b.load_state_dict(state)
    rest = [False, False, True, True, False, False]
    assert _trajectory(b, rest) == _trajectory(a, rest) == [2.0**9, 2.0**10, 2.0**10, 2.0**9, 2.0**9, 2.0**10]


def test_constant_scaler_never_changes():
    scaler = ConstantGradScaler(128.0, device=CPU)
    assert _trajectory(scaler, [True, False, True]) == [128.0, 128.0, 128.0]
    assert scaler.state_dict() == {}


def test_build_grad_scaler_follows_config():
    const = build_grad_scaler(OptimizerConfig(lr=1e-3, fp16=True, loss_scale=64.0), CPU)
    assert isinstance(const, ConstantGradScaler) and const.scale.item() == 64.0
    assert build_grad_scaler(OptimizerConfig(lr=1e-3, bf16=True), CPU) is None
    assert build_grad_scaler(OptimizerConfig(lr=1e-3), CPU) is None
    cfg = OptimizerConfig(lr=1e-3, fp16=True, initial_loss_scale=256.0, min_loss_scale=4.0, loss_scale_window=5, hysteresis=3)
    dyn = build_grad_scaler(cfg, CPU)
    assert isinstance(dyn, DynamicGradScaler)
    assert (dyn.scale.item(), dyn.min_scale.item(), dyn.growth_interval, dyn.hysteresis) == (256.0, 4.0, 5, 3)
    assert (dyn.growth_factor, dyn.backoff_factor) == (2.0, 0.5)


def test_bad_scaler_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="min_scale"):
        DynamicGradScaler(1.0, min_scale=2.0, device=CPU)
    with pytest.raises(ConfigError, match="backoff_factor"):
        DynamicGradScaler(4.0, min_scale=1.0, backoff_factor=1.5, device=CPU)
