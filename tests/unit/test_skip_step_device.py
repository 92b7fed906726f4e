"""Skip-step decided on device (DeviceSkipStepDetector, MegatronOptimizer.skip_on_device) against the float path.

The float path (SkipStepDetector, host floats, math.fsum) is the oracle: the tensor path must make the
same decisions, keep the same windows and, inside the optimizer, produce bitwise the same parameters.
Runs on CPU tensors with ``skip_on_device=True`` forced (on CUDA it is the default).
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from host_reads import NoHostReads
from tiny_models import TinyLM, lm_loss
from megatron_opt import OptimizerConfig, get_megatron_optimizer
from megatron_opt.skip_step import DeviceSkipStepDetector, SkipStepDetector


def t(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def spiky_sequence(n: int, seed: int):
    """(loss, grad_norm) pairs: slow drift plus noise, with loss and norm spikes and a few nan/inf losses."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        loss, norm = 3.0 - i / n + rng.gauss(0, 0.05), 1.0 + rng.gauss(0, 0.1)
        r = rng.random()
        if r < 0.04:
            loss *= rng.uniform(2, 50)
        elif r < 0.08:
            norm *= rng.uniform(2, 50)
        elif r < 0.09:
            loss = rng.choice([math.nan, math.inf])
        out.append((loss, norm))
    return out


@pytest.mark.parametrize("seed,window,min_history", [(0, 16, 5), (1, 128, 10), (2, 7, 3)])
def test_tensor_detector_makes_the_same_decisions_as_the_float_detector(seed, window, min_history):
    cpu, dev = SkipStepDetector(3.0, window, min_history), DeviceSkipStepDetector(3.0, window, min_history)
    sequence = spiky_sequence(400, seed)
    expected = [cpu.should_skip(loss, norm) for loss, norm in sequence]
    got = [bool(dev.should_skip(t(loss), t(norm))) for loss, norm in sequence]
    assert got == expected
    assert 10 < sum(expected) < 100  # the sequence really has spikes, and most steps pass
    assert dev.num_skipped == cpu.num_skipped
    assert dev.state_dict() == cpu.state_dict()  # same windows, oldest first, bitwise


def test_already_rejected_steps_are_skipped_without_entering_or_counting():
    dev = DeviceSkipStepDetector(3.0, 8, 2)
    for v in (1.0, 1.1, 0.9):
        assert not bool(dev.should_skip(t(v), t(v)))
    assert bool(dev.should_skip(t(1.0), t(1.0), already_skipped=torch.tensor(True)))
    assert dev.num_skipped == 0 and dev.state_dict()["loss"] == [1.0, 1.1, 0.9]


def test_state_dict_round_trips_between_the_two_detectors():
    cpu = SkipStepDetector(3.0, 8, 3)
    for loss, norm in spiky_sequence(30, 5):
        cpu.should_skip(loss, norm)
    dev = DeviceSkipStepDetector(3.0, 8, 3)
    dev.load_state_dict(cpu.state_dict())
    assert dev.state_dict() == cpu.state_dict()
    for loss, norm in spiky_sequence(40, 6):
        assert bool(dev.should_skip(t(loss), t(norm))) == cpu.should_skip(loss, norm)


def run(config: OptimizerConfig, on_device: bool, steps: int = 30):
    model = TinyLM()
    opt = get_megatron_optimizer(config, [model])
    opt.skip_on_device = on_device
    record = []
    for step in range(steps):
        opt.zero_grad()
        loss = lm_loss(model, step)
        loss.backward()
        if step == 22:  # a gradient spike
            for p in model.parameters():
                p.grad.mul_(100.0)
        opt.observe_loss(loss.item() * (1000.0 if step == 15 else 1.0))  # a loss spike
        updated, norm, _ = opt.step()
        record.append((updated, norm, [p.detach().clone() for p in model.parameters()]))
    return opt, record


@pytest.mark.parametrize("config", [
    OptimizerConfig(lr=1e-2, skip_step_sigma=3.0, skip_step_window=16, standard_backend="torch_fused"),
    OptimizerConfig(lr=1e-2, skip_step_sigma=3.0, skip_step_window=16, standard_backend="torch_fused", clip_grad=0.05),
    OptimizerConfig(optimizer="sgd", lr=0.1, skip_step_sigma=3.0, skip_step_window=16, standard_backend="torch_fused"),
    OptimizerConfig(lr=1e-2, skip_step_sigma=3.0, skip_step_window=16, standard_backend="torch_foreach"),
    OptimizerConfig(optimizer="lion", lr=1e-3, skip_step_sigma=3.0, skip_step_window=16),
    OptimizerConfig(optimizer="muon", lr=1e-2, skip_step_sigma=3.0, skip_step_window=16, muon_fp32_matmul_prec="highest"),
], ids=["adam_fused", "adam_fused_clipped", "sgd_fused", "adam_foreach", "lion", "muon_chained"])
def test_device_decision_trains_bitwise_like_the_float_path(config):
    opt_f, host = run(config, on_device=False)
    opt_d, dev = run(config, on_device=True)
    assert [u for u, _, _ in host] == [u for u, _, _ in dev]
    skipped = [i for i, (u, _, _) in enumerate(host) if not u]
    assert 15 in skipped and 22 in skipped and len(skipped) <= 4, skipped  # the injected spikes, few others
    for (_, n_h, p_h), (_, n_d, p_d) in zip(host, dev):
        assert n_h == n_d
        assert all(torch.equal(a, b) for a, b in zip(p_h, p_d))
    assert isinstance(opt_d.skip_detector, DeviceSkipStepDetector) and opt_d.skip_detector.num_skipped == len(skipped)
    assert opt_d.skip_detector.state_dict() == opt_f.skip_detector.state_dict()


def test_fused_adam_path_decides_and_updates_without_reading_back():
    model = TinyLM()
    opt = get_megatron_optimizer(OptimizerConfig(lr=1e-2, skip_step_sigma=3.0, standard_backend="torch_fused"), [model])
    opt.skip_on_device = True
    assert opt.optimizer.defaults.get("fused")
    for step in range(3):
        opt.zero_grad()
        loss = lm_loss(model, step)
        loss.backward()
        opt.observe_loss(loss.item())
        opt.prepare_grads()
        before = [p.detach().clone() for p in model.parameters()]
        with NoHostReads():
            updated, norm, _ = opt._step_with_device_decision()
        assert bool(updated) and float(norm) > 0
        assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
