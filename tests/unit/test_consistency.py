"""training/consistency.py: the comparison and its one-line message (the collective is tested under torchrun)."""

from __future__ import annotations

import argparse

from megatron_opt.config import OptimizerConfig
from training.consistency import describe_disagreement, fingerprint, resolved_fields


def fields(lr=1e-3, yaml_cfg=None, **config):
    return resolved_fields(argparse.Namespace(lr=lr, yaml_cfg=yaml_cfg), OptimizerConfig(lr=lr, **config))


def test_equal_settings_agree_and_the_yaml_path_is_not_compared():
    a, b = fields(yaml_cfg="/node0/cfg.yaml"), fields(yaml_cfg="/node1/cfg.yaml")
    assert fingerprint(a) == fingerprint(b)
    assert describe_disagreement([a, b, a]) == ""


def test_names_flag_once_and_groups_ranks_by_value():
    message = describe_disagreement([fields(), fields(lr=2e-3), fields(), fields(lr=2e-3)])
    assert message == ("ranks were started with different configurations (--lr: ranks 0,2 0.001, ranks 1,3 0.002); "
                       "expected every rank to get the same command line and YAML file")


def test_config_only_difference_is_named_by_field_and_long_lists_are_cut():
    message = describe_disagreement([fields(), fields(adam_beta2=0.95)])
    assert "config.adam_beta2: rank 0 0.999, rank 1 0.95" in message and "\n" not in message
    many = describe_disagreement([fields(), fields(adam_beta1=0.8, adam_beta2=0.9, adam_eps=1e-6, weight_decay=0.1,
                                                  min_lr=1e-5, clip_grad=0.5, sgd_momentum=0.5, hysteresis=3)])
    assert many.count("rank 1") == 6 and "; and 2 more)" in many
