import math

import torch

from tiny_models import TinyLM, lm_loss
from megatron_opt import OptimizerConfig, get_megatron_optimizer
from megatron_opt.skip_step import SkipStepDetector


def test_detector_flags_only_values_beyond_sigma_of_the_window():
    det = SkipStepDetector(sigma=3.0, window=8, min_history=4)
    values = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02]
    assert [det.should_skip(v, v) for v in values] == [False] * 6
    mean = sum(values) / 6
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 5)
    assert det.should_skip(mean + 3.2 * std, 1.0)  # loss spike
    assert det.should_skip(1.0, mean + 3.2 * std)  # grad-norm spike
    assert not det.should_skip(mean + 2.5 * std, 1.0)
    assert det.num_skipped == 2
    assert len(det.loss.values) == 7  # the skipped values never entered the window


def test_injected_loss_spike_is_skipped_and_counted_normal_steps_are_not():
    model = TinyLM()
    config = OptimizerConfig(lr=1e-3, skip_step_sigma=3.0, skip_step_window=16)
    opt = get_megatron_optimizer(config, [model])
    results = []
    for step in range(20):
        opt.zero_grad()
        loss = lm_loss(model, step)
        loss.backward()
        reported = loss.item() * (1000.0 if step == 15 else 1.0)  # the spike a data glitch would cause
        if step == 15:
            before = [p.detach().clone() for p in model.parameters()]
        opt.observe_loss(reported)
        results.append(opt.step()[0])
        if step == 15:
            assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert results == [True] * 15 + [False] + [True] * 4
    assert opt.skip_detector.num_skipped == 1
