import math

import pytest
import torch

from megatron_opt import ConfigError, OptimizerConfig, ParamKey, ParamPredicate, get_standard_config_overrides
from megatron_opt.ns_coefficients import coefficients_for_steps, get_supported_coefficient_types


def test_defaults_match_megatron():
    c = OptimizerConfig()
    assert (c.optimizer, c.weight_decay, c.adam_beta1, c.adam_beta2, c.adam_eps) == ("adam", 0.01, 0.9, 0.999, 1e-8)
    assert (c.muon_momentum, c.muon_coefficient_type, c.muon_num_ns_steps, c.muon_scale_mode) == (0.95, "quintic", 5, "spectral")
    assert (c.lion_beta1, c.lion_beta2, c.clip_grad) == (0.95, 0.98, 1.0)
    assert c.grad_norm_skip_threshold == math.inf and c.initial_loss_scale == 2.0**32


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(optimizer="adamw2"), "optimizer='adamw2'"),
        (dict(lr=-1.0), "lr=-1.0"),
        (dict(lr=1e-3, min_lr=1e-2), "min_lr=0.01"),
        (dict(fp16=True, bf16=True), "fp16=True together with bf16=True"),
        (dict(muon_coefficient_type="quintik"), "muon_coefficient_type='quintik'"),
        (dict(muon_num_ns_steps=0), "muon_num_ns_steps=0"),
        (dict(muon_tp_mode="sharded"), "muon_tp_mode='sharded'"),
        (dict(adam_beta1=1.0), "adam_beta1=1.0"),
        (dict(lr="fast"), "lr='fast'"),
        (dict(main_params_dtype="bf16"), "main_params_dtype=torch.bfloat16"),
        (dict(use_distributed_optimizer=True, use_layer_wise_distributed_optimizer=True), "use_layer_wise_distributed_optimizer"),
        (dict(muon_scalar_optimizer="sgd"), "muon_scalar_optimizer='sgd'"),
    ],
)
def test_invalid_config_names_field_and_value(kwargs, fragment):
    with pytest.raises(ConfigError) as err:
        OptimizerConfig(**kwargs)
    assert fragment in str(err.value)
    assert "expected" in str(err.value)


def test_yaml_style_values_are_coerced():
    c = OptimizerConfig(lr="1e-3", params_dtype="bf16", muon_num_ns_steps=5.0)
    assert c.lr == 1e-3 and c.params_dtype == torch.bfloat16 and c.muon_num_ns_steps == 5


def test_coefficient_iteration_semantics():
    assert set(get_supported_coefficient_types()) >= {"simple", "quintic", "polar_express", "cans", "aol", "deepseekv4", "cubic5", "custom"}
    q = coefficients_for_steps("quintic", 7)
    assert q[5] == q[0] and q[6] == q[1]  # cycles
    p = coefficients_for_steps("polar_express", 10)
    assert p[8] == p[9] == p[7]  # repeats the last
    with pytest.raises(ConfigError):
        coefficients_for_steps("cubic5", 6)


def test_param_key_matches_by_or_and_hashes_by_name():
    p1, p2 = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3, 3))
    p2.is_embedding_or_output = True
    k = ParamKey(name="*.bias", attr="is_embedding_or_output")
    assert k.matches(p1, "layer.bias") and k.matches(p2, "emb.weight") and not k.matches(p1, "layer.weight")
    assert not ParamKey().matches(p1, "x.bias")
    a = ParamKey(predicate=ParamPredicate("one_d", lambda p: p.ndim == 1))
    b = ParamKey(predicate=ParamPredicate("one_d", lambda p: False))
    assert a == b and hash(a) == hash(b)


def test_standard_overrides():
    c = OptimizerConfig(lr=1e-3, decoupled_lr=5e-4, decoupled_min_lr=1e-5)
    overrides = get_standard_config_overrides(c)
    assert list(overrides.values()) == [{"wd_mult": 0.0}, {"max_lr": 5e-4, "min_lr": 1e-5}]


def test_error_table_tool_refuses_every_row(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "errors.md"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(root / "tools" / "config_error_table.py"), "--write", str(out)], check=True, cwd=root)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| `")]
    assert len(rows) >= 30
    assert all("is not allowed; expected" in row for row in rows)
