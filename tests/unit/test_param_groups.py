import pytest
import torch

from tiny_models import TinyLM
from megatron_opt import ConfigError, OptimizerConfig, ParamKey, ParamPredicate, get_standard_config_overrides
from megatron_opt.param_groups import build_param_groups, partition_by_optimizer


def _names(group):
    return set(group["param_names"])


def test_standard_overrides_put_biases_and_1d_params_in_a_no_decay_group():
    model = TinyLM()
    config = OptimizerConfig(lr=1e-3, weight_decay=0.1)
    groups = build_param_groups([model], config, get_standard_config_overrides(config))
    assert len(groups) == 2
    decay, no_decay = groups
    expected_no_decay = {n for n, p in model.named_parameters() if p.ndim == 1}
    assert _names(no_decay) == expected_no_decay
    assert _names(decay) == {n for n, _ in model.named_parameters()} - expected_no_decay
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert decay["default_config"] and decay["max_lr"] == 1e-3 and decay["min_lr"] == 0.0


def test_decoupled_lr_lands_on_embedding_and_output_only():
    model = TinyLM()
    config = OptimizerConfig(lr=1e-3, decoupled_lr=5e-4, decoupled_min_lr=1e-5)
    groups = build_param_groups([model], config, get_standard_config_overrides(config))
    decoupled = [g for g in groups if g["is_decoupled_lr"]]
    assert len(decoupled) == 1
    assert _names(decoupled[0]) == {"embedding.weight", "output.weight"}
    assert (decoupled[0]["max_lr"], decoupled[0]["min_lr"], decoupled[0]["lr"]) == (5e-4, 1e-5, 5e-4)
    for g in groups:
        if not g["is_decoupled_lr"]:
            assert g["max_lr"] == 1e-3 and not (_names(g) & {"embedding.weight", "output.weight"})


def test_lr_mult_and_hyperparameter_overrides_reach_exactly_the_matching_params():
    model = TinyLM()
    config = OptimizerConfig(lr=1e-3)
    overrides = {
        ParamKey(name="blocks.0.*"): {"lr_mult": 0.5, "adam_beta2": 0.95},
        ParamKey(name="*.bias"): {"wd_mult": 0.0},
    }
    groups = build_param_groups([model], config, overrides)
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert by_name["blocks.0.fc1.weight"]["lr_mult"] == 0.5 and by_name["blocks.0.fc1.weight"]["betas"] == (0.9, 0.95)
    assert by_name["blocks.0.fc1.bias"]["lr_mult"] == 0.5 and by_name["blocks.0.fc1.bias"]["wd_mult"] == 0.0
    assert by_name["blocks.1.fc1.weight"]["lr_mult"] == 1.0 and "betas" not in by_name["blocks.1.fc1.weight"]
    assert by_name["blocks.1.fc1.bias"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_conflicting_overrides_name_the_parameter_and_both_keys():
    model = TinyLM()
    overrides = {ParamKey(name="blocks.*"): {"lr_mult": 0.5}, ParamKey(name="*.fc1.*"): {"lr_mult": 2.0}}
    with pytest.raises(ConfigError) as err:
        build_param_groups([model], OptimizerConfig(lr=1e-3), overrides)
    msg = str(err.value)
    assert "blocks.0.fc1.weight" in msg and "blocks.*" in msg and "*.fc1.*" in msg


def test_routing_override_moves_parameters_to_another_optimizer_and_leaves_callers_dict_alone():
    model = TinyLM()
    overrides = {ParamKey(predicate=ParamPredicate("one_d", lambda p: p.ndim == 1)): {"optimizer": "sgd"}}
    snapshot = {k: dict(v) for k, v in overrides.items()}
    groups = build_param_groups([model], OptimizerConfig(lr=1e-3), overrides)
    buckets = partition_by_optimizer(groups)
    assert list(buckets) == ["adam", "sgd"]
    assert {n for g in buckets["sgd"] for n in g["param_names"]} == {n for n, p in model.named_parameters() if p.ndim == 1}
    assert overrides == snapshot


def test_unknown_override_key_and_frozen_params():
    model = TinyLM()
    with pytest.raises(ConfigError, match="lr_multiplier"):
        build_param_groups([model], OptimizerConfig(lr=1e-3), {ParamKey(name="*"): {"lr_multiplier": 2}})
    model.embedding.weight.requires_grad_(False)
    groups = build_param_groups([model], OptimizerConfig(lr=1e-3), {})
    assert "embedding.weight" not in {n for g in groups for n in g["param_names"]}


def test_groups_are_deterministic_across_builds():
    a = build_param_groups([TinyLM()], OptimizerConfig(lr=1e-3), get_standard_config_overrides(OptimizerConfig(lr=1e-3)))
    b = build_param_groups([TinyLM()], OptimizerConfig(lr=1e-3), get_standard_config_overrides(OptimizerConfig(lr=1e-3)))
    assert [g["param_names"] for g in a] == [g["param_names"] for g in b]


def test_missing_lr_is_a_config_error():
    with pytest.raises(ConfigError, match="lr=None"):
        build_param_groups([TinyLM()], OptimizerConfig(), {})
