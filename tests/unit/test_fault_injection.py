"""training/fault_injection.py: inert unless set, one-line refusal of bad values, aims at one rank."""

from __future__ import annotations

import pytest
import torch

from megatron_opt.errors import ConfigError
from training.fault_injection import FaultPlan, error_report_delay_s


def test_inert_without_environment():
    plan = FaultPlan.from_env({})
    assert plan.inert and plan == FaultPlan()
    model = torch.nn.Linear(2, 2)
    model(torch.ones(1, 2)).sum().backward()
    before = model.weight.grad.clone()
    plan.corrupt_grads(model, 1, 0)
    plan.kill_if_due(1, 0)  # would not return if it killed
    assert torch.equal(model.weight.grad, before)


@pytest.mark.parametrize("name,value", [("MEGATRON_OPT_FAULT_KILL_AT_ITER", "x"), ("MEGATRON_OPT_FAULT_KILL_AT_ITER", "0"),
                                        ("MEGATRON_OPT_FAULT_NAN_GRAD_AT_ITER", "1.5"), ("MEGATRON_OPT_FAULT_RANK", "-1")])
def test_bad_values_are_one_line(name, value):
    with pytest.raises(ConfigError) as exc:
        FaultPlan.from_env({name: value})
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{name}={value!r} is not allowed")


def test_nan_only_on_the_chosen_rank_and_iteration():
    plan = FaultPlan.from_env({"MEGATRON_OPT_FAULT_NAN_GRAD_AT_ITER": "3", "MEGATRON_OPT_FAULT_RANK": "1"})
    model = torch.nn.Linear(2, 2)
    model(torch.ones(1, 2)).sum().backward()
    plan.corrupt_grads(model, 3, 0)
    plan.corrupt_grads(model, 2, 1)
    assert torch.isfinite(model.weight.grad).all()
    plan.corrupt_grads(model, 3, 1)
    assert torch.isnan(model.weight.grad).all() and torch.isnan(model.bias.grad).all()


def test_kill_only_on_first_attempt():
    plan = FaultPlan.from_env({"MEGATRON_OPT_FAULT_KILL_AT_ITER": "2", "TORCHELASTIC_RESTART_COUNT": "1"})
    assert plan.kill_at == 2 and plan.attempt == 1
    plan.kill_if_due(2, 0)  # a restarted attempt is left alone (returns)


def test_error_report_delay_is_zero_unless_set_and_refuses_bad_values():
    assert error_report_delay_s({}) == 0.0
    assert error_report_delay_s({"MEGATRON_OPT_FAULT_SLOW_ERROR_REPORT_S": "2"}) == 2.0
    with pytest.raises(ConfigError, match="MEGATRON_OPT_FAULT_SLOW_ERROR_REPORT_S='-1' is not allowed"):
        error_report_delay_s({"MEGATRON_OPT_FAULT_SLOW_ERROR_REPORT_S": "-1"})
