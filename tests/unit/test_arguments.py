"""arguments/: the real argparse parser, YAML files, validate_args and config_from_args."""

from __future__ import annotations

import argparse
import dataclasses
import warnings

import pytest
import torch

from arguments import (
    FIELD_FOR_DEST,
    build_parser,
    config_default,
    config_from_args,
    parse_and_validate,
    parse_args,
    run_cli,
    validate_args,
)
from arguments.field_map import CONFIG_ONLY_FIELDS, DERIVED_FIELDS
from megatron_opt.config import OptimizerConfig
from megatron_opt.errors import ConfigError

BASE = ["--lr", "1e-3", "--train-iters", "10"]


def resolve(*flags: str, world_size: int = 1):
    return parse_and_validate(BASE + list(flags), world_size)


def deprecation_messages(record) -> list:
    return [str(w.message) for w in record if issubclass(w.category, DeprecationWarning)]


# ---- defaults: the dataclass is the single source of truth -------------------------------------


def test_parser_default_equals_dataclass_default_for_every_mapped_flag():
    parser = build_parser()
    for dest, field in FIELD_FOR_DEST.items():
        assert parser.get_default(dest) == config_default(field), (dest, field)


def test_muon_momentum_default_is_the_configs_not_megatrons_cli_value():
    assert build_parser().get_default("muon_momentum") == 0.95
    _, config = resolve("--optimizer", "muon")
    assert config.muon_momentum == 0.95


def test_bare_command_line_gives_exactly_the_default_config():
    _, config = resolve()
    assert config == OptimizerConfig(lr=1e-3)


def test_every_config_field_is_mapped_derived_or_declared_config_only():
    fields = [f.name for f in dataclasses.fields(OptimizerConfig)]
    mapped = set(FIELD_FOR_DEST.values())
    unaccounted = [f for f in fields if f not in mapped and f not in DERIVED_FIELDS and f not in CONFIG_ONLY_FIELDS]
    assert unaccounted == []
    assert mapped <= set(fields)


def test_every_mapped_dest_is_a_parser_destination():
    dests = {a.dest for a in build_parser()._actions}
    assert set(FIELD_FOR_DEST) <= dests


# ---- every --muon-* flag (and the other emerging ones) reaches the config -----------------------

MUON_FLAG_CASES = [
    (["--muon-momentum", "0.8"], "muon_momentum", 0.8),
    (["--muon-no-split-qkv"], "muon_split_qkv", False),
    (["--muon-nesterov"], "muon_nesterov", True),
    (["--muon-scale-mode", "unit_rms_norm"], "muon_scale_mode", "unit_rms_norm"),
    (["--muon-fp32-matmul-prec", "highest"], "muon_fp32_matmul_prec", "highest"),
    (["--muon-coefficient-type", "polar_express"], "muon_coefficient_type", "polar_express"),
    (["--muon-coefficient-type", "custom", "--muon-custom-coefficients", "[[3, -4, 2], [2, -1.5, 0.5]]"],
     "muon_custom_coefficients", ((3.0, -4.0, 2.0), (2.0, -1.5, 0.5))),
    (["--muon-num-ns-steps", "7"], "muon_num_ns_steps", 7),
    (["--muon-tp-mode", "blockwise"], "muon_tp_mode", "blockwise"),
    (["--muon-extra-scale-factor", "0.2"], "muon_extra_scale_factor", 0.2),
    (["--muon-scalar-optimizer", "lion"], "muon_scalar_optimizer", "lion"),
    (["--muon-ns-algorithm", "gram"], "muon_ns_algorithm", "gram"),
    (["--muon-gram-ns-restarts", "2", "4"], "muon_gram_ns_restarts", (2, 4)),
    (["--muon-use-syrk"], "muon_use_syrk", True),
]


@pytest.mark.parametrize("flags, field, expected", MUON_FLAG_CASES)
def test_muon_flag_reaches_config(flags, field, expected):
    _, config = resolve("--optimizer", "muon", *flags)
    assert getattr(config, field) == expected
    assert expected != config_default(field)


def test_muon_flag_cases_cover_every_muon_flag():
    options = {o for a in build_parser()._actions for o in a.option_strings if o.startswith("--muon-")}
    covered = {f for flags, _, _ in MUON_FLAG_CASES for f in flags if f.startswith("--muon-")}
    assert options - covered == {"--muon-use-nesterov"}  # the alias has its own test


@pytest.mark.parametrize(
    "flags, field, expected",
    [
        (["--optimizer", "adaptive_muon", "--adaptive-muon-moment2-method", "normuon"], "adaptive_muon_moment2_method", "normuon"),
        (["--optimizer", "adaptive_muon", "--adaptive-muon-beta2", "0.9"], "adaptive_muon_beta2", 0.9),
        (["--optimizer", "adaptive_muon", "--adaptive-muon-eps", "1e-6"], "adaptive_muon_eps", 1e-6),
        (["--optimizer", "lion", "--lion-beta1", "0.9"], "lion_beta1", 0.9),
        (["--optimizer", "lion", "--lion-beta2", "0.99"], "lion_beta2", 0.99),
        (["--optimizer", "soap", "--soap-shampoo-beta", "0.9"], "soap_shampoo_beta", 0.9),
        (["--optimizer", "soap", "--soap-precondition-frequency", "10"], "soap_precondition_frequency", 10),
        (["--optimizer", "soap", "--soap-max-update-rms", "1.0"], "soap_max_update_rms", 1.0),
        (["--adam-beta1", "0.8", "--adam-beta2", "0.95"], "adam_beta2", 0.95),
        (["--adam-eps", "1e-6"], "adam_eps", 1e-6),
        (["--optimizer", "sgd", "--sgd-momentum", "0.5"], "sgd_momentum", 0.5),
        (["--no-decoupled-weight-decay"], "decoupled_weight_decay", False),
        (["--apply-wd-to-qk-layernorm"], "apply_wd_to_qk_layernorm", True),
        (["--clip-grad", "0"], "clip_grad", 0.0),
        (["--grad-norm-skip-threshold", "100"], "grad_norm_skip_threshold", 100.0),
        (["--skip-step-sigma", "6", "--skip-step-window", "32"], "skip_step_window", 32),
        (["--log-num-zeros-in-grad"], "log_num_zeros_in_grad", True),
        (["--standard-backend", "torch_foreach"], "standard_backend", "torch_foreach"),
        (["--decoupled-lr", "5e-4", "--decoupled-min-lr", "1e-5"], "decoupled_min_lr", 1e-5),
        (["--bf16"], "params_dtype", torch.bfloat16),
        (["--fp16", "--loss-scale", "128"], "loss_scale", 128.0),
        (["--fp16", "--initial-loss-scale", "65536", "--min-loss-scale", "2", "--loss-scale-window", "50", "--hysteresis", "3"], "hysteresis", 3),
        (["--use-distributed-optimizer", "--use-precision-aware-optimizer", "--exp-avg-dtype", "bf16"], "exp_avg_dtype", torch.bfloat16),
        (["--optimizer", "torch.optim.RAdam", "--optimizer-kwargs", '{"decoupled_weight_decay": true}'],
         "optimizer_kwargs", {"decoupled_weight_decay": True}),
    ],
)
def test_other_optimizer_flags_reach_config(flags, field, expected):
    _, config = resolve(*flags)
    assert getattr(config, field) == expected


# ---- deprecated spellings -----------------------------------------------------------------------


def test_dist_muon_becomes_muon_layer_wise_with_one_warning():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        args, config = resolve("--optimizer", "dist_muon")
        validate_args(args, 1)  # validating again must not warn again
    assert deprecation_messages(record) == [
        "optimizer='dist_muon' is deprecated. Use --optimizer muon --use-distributed-optimizer instead."
    ]
    assert (args.optimizer, args.use_layer_wise_distributed_optimizer, args.use_distributed_optimizer) == ("muon", True, False)
    assert (config.optimizer, config.use_layer_wise_distributed_optimizer, config.use_distributed_optimizer) == ("muon", True, False)


def test_dist_prefix_on_a_standard_optimizer_is_an_error():
    with pytest.raises(ConfigError, match="^argument --optimizer: 'dist_adam' is not allowed; expected one of adam,"):
        parse_args(BASE + ["--optimizer", "dist_adam"])
    args = parse_args(BASE)
    args.optimizer = "dist_adam"  # e.g. set programmatically: validate_args refuses it too
    with pytest.raises(ConfigError, match="^--optimizer=dist_adam is not allowed; expected the dist_ prefix only with an emerging optimizer"):
        validate_args(args, 1)


def test_muon_use_nesterov_alias_warns_once_and_sets_muon_nesterov():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        args, config = resolve("--optimizer", "muon", "--muon-use-nesterov")
    assert deprecation_messages(record) == ["--muon-use-nesterov is deprecated. Use --muon-nesterov instead."]
    assert args.muon_nesterov is True and config.muon_nesterov is True


def test_no_weight_decay_cond_type_is_a_deprecated_alias():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _, config = resolve("--no-weight-decay-cond-type")
    assert config.apply_wd_to_qk_layernorm is True
    assert deprecation_messages(record) == ["--no-weight-decay-cond-type is deprecated. Use --apply-wd-to-qk-layernorm instead."]


def test_muon_nesterov_is_off_without_either_flag():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        args, _ = resolve("--optimizer", "muon")
    assert args.muon_nesterov is False and deprecation_messages(record) == []


# ---- emerging optimizer + distributed optimizer --------------------------------------------------


@pytest.mark.parametrize("name", ["muon", "adaptive_muon", "lion", "soap"])
def test_emerging_with_distributed_optimizer_becomes_layer_wise(name):
    args, config = resolve("--optimizer", name, "--use-distributed-optimizer", world_size=2)
    assert (config.use_distributed_optimizer, config.use_layer_wise_distributed_optimizer) == (False, True)
    assert config.optimizer == name


@pytest.mark.parametrize("name", ["adam", "sgd", "torch.optim.RAdam"])
def test_standard_or_dotted_with_distributed_optimizer_stays_zero1(name):
    _, config = resolve("--optimizer", name, "--use-distributed-optimizer", world_size=2)
    assert (config.use_distributed_optimizer, config.use_layer_wise_distributed_optimizer) == (True, False)


def test_overlap_param_gather_is_checked_after_the_layer_wise_rewrite():
    _, config = resolve("--optimizer", "muon", "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather")
    assert config.overlap_param_gather and config.use_layer_wise_distributed_optimizer
    with pytest.raises(ConfigError, match="--overlap-param-gather without --overlap-grad-reduce"):
        resolve("--optimizer", "muon", "--use-distributed-optimizer", "--overlap-param-gather")
    with pytest.raises(ConfigError, match="--overlap-param-gather without --use-distributed-optimizer"):
        resolve("--optimizer", "muon", "--overlap-grad-reduce", "--overlap-param-gather")


# ---- derived values -------------------------------------------------------------------------------


def test_derived_model_and_batch_values():
    args, _ = resolve("--hidden-size", "96", "--num-attention-heads", "6", "--micro-batch-size", "2",
                      "--tensor-model-parallel-size", "2", "--num-layers", "4", "--pipeline-model-parallel-size", "2", world_size=8)
    assert (args.data_parallel_size, args.global_batch_size, args.num_micro_batches) == (2, 4, 1)
    assert (args.kv_channels, args.ffn_hidden_size, args.max_position_embeddings, args.num_query_groups) == (16, 384, 64, 6)


def test_sequence_parallel_is_dropped_without_tensor_parallelism():
    args, _ = resolve("--sequence-parallel")
    assert args.sequence_parallel is False
    args, _ = resolve("--sequence-parallel", "--tensor-model-parallel-size", "2", world_size=2)
    assert args.sequence_parallel is True


def test_constant_weight_decay_sets_start_and_end():
    args, _ = resolve("--weight-decay", "0.1")
    assert (args.start_weight_decay, args.end_weight_decay) == (0.1, 0.1)
    args, _ = resolve("--weight-decay-incr-style", "linear", "--start-weight-decay", "0.0", "--end-weight-decay", "0.1")
    assert (args.start_weight_decay, args.end_weight_decay) == (0.0, 0.1)


def test_bf16_turns_on_fp32_gradient_accumulation():
    args, config = resolve("--bf16")
    assert args.accumulate_allreduce_grads_in_fp32 and config.bf16 and config.params_dtype == torch.bfloat16


def test_override_scheduler_flags_accept_megatron_underscore_spelling():
    args = parse_args(BASE + ["--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler"])
    assert args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler
    assert parse_args(BASE + ["--tensorboard-dir", "tb"]).log_dir == "tb"


# ---- invalid combinations (in process; tests/unit/test_cli_errors.py checks the CLI's output) ---


@pytest.mark.parametrize(
    "flags, world_size, message",
    [
        (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 6,
         "world size 6 is not allowed with --tensor-model-parallel-size=2 and --pipeline-model-parallel-size=2; expected a multiple of tp*pp=4"),
        (["--global-batch-size", "6", "--micro-batch-size", "4"], 1,
         "--global-batch-size=6 with --micro-batch-size=4 and data-parallel size 1 is not allowed; expected a multiple of micro-batch-size * data-parallel size = 4"),
        (["--num-attention-heads", "3", "--hidden-size", "48", "--tensor-model-parallel-size", "2"], 2,
         "--num-attention-heads=3 with --tensor-model-parallel-size=2 is not allowed; expected a multiple of 2"),
        (["--group-query-attention", "--num-query-groups", "1", "--tensor-model-parallel-size", "2"], 2,
         "--num-query-groups=1 with --tensor-model-parallel-size=2 is not allowed; expected a multiple of 2"),
        (["--group-query-attention", "--num-query-groups", "3"], 1,
         "--num-query-groups=3 with --num-attention-heads=4 is not allowed; expected a divisor of 4"),
        (["--num-layers", "3", "--pipeline-model-parallel-size", "2"], 2,
         "--num-layers=3 with --pipeline-model-parallel-size=2 is not allowed; expected a multiple of 2"),
        (["--fp16", "--bf16"], 1, "--fp16 together with --bf16 is not allowed; expected at most one of --fp16, --bf16"),
        (["--min-lr", "0.1"], 1, "--min-lr=0.1 with --lr=0.001 is not allowed; expected --min-lr <= --lr"),
        (["--train-samples", "100"], 1, "--train-iters=10 together with --train-samples=100 is not allowed; expected exactly one of them"),
        (["--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "5"], 1,
         "--lr-warmup-fraction=0.1 together with --lr-warmup-iters=5 is not allowed; expected only one way to set the warmup length"),
        (["--lr-decay-samples", "100"], 1,
         "--lr-decay-samples=100 with --train-iters is not allowed; expected iteration-based schedule flags only (do not mix iterations and samples)"),
        (["--start-weight-decay", "0.0"], 1,
         "--start-weight-decay=0.0 with --weight-decay-incr-style=constant is not allowed; expected it unset (constant style uses --weight-decay), or a linear/cosine style"),
        (["--weight-decay-incr-style", "cosine", "--start-weight-decay", "0.0"], 1,
         "--weight-decay-incr-style=cosine needs --end-weight-decay; expected both --start-weight-decay and --end-weight-decay"),
        (["--overlap-param-gather", "--overlap-grad-reduce"], 1,
         "--overlap-param-gather without --use-distributed-optimizer is not allowed; expected --use-distributed-optimizer as well"),
        (["--optimizer", "muon", "--fp16"], 1,
         "--optimizer=muon with --fp16 is not allowed; expected --bf16 or fp32 (emerging optimizers do not support fp16 loss scaling)"),
        (["--ckpt-format", "torch"], 1, "--ckpt-format=torch is not allowed; expected one of torch_dist"),
        (["--lr-decay-style", "WSD"], 1, "--lr-decay-style=WSD needs --lr-wsd-decay-iters; expected the length of the anneal"),
    ],
)
def test_invalid_combination_raises_one_line_config_error(flags, world_size, message):
    with pytest.raises(ConfigError) as info:
        resolve(*flags, world_size=world_size)
    assert str(info.value) == message


def test_missing_lr_and_missing_training_length():
    with pytest.raises(ConfigError, match="^--lr is required"):
        parse_and_validate(["--train-iters", "10"], 1)
    with pytest.raises(ConfigError, match="^neither --train-iters nor --train-samples was given"):
        parse_and_validate(["--lr", "1e-3"], 1)


def test_sample_based_training_refuses_iteration_schedule_flags():
    args, _ = parse_and_validate(["--lr", "1e-3", "--train-samples", "640", "--lr-warmup-samples", "64"], 1)
    assert args.lr_warmup_samples == 64
    with pytest.raises(ConfigError, match=r"^--lr-warmup-iters=5 with --train-samples is not allowed"):
        parse_and_validate(["--lr", "1e-3", "--train-samples", "640", "--lr-warmup-iters", "5"], 1)


def test_config_errors_name_the_flag():
    with pytest.raises(ConfigError) as info:
        resolve("--adam-beta1", "1.5")
    assert str(info.value) == "--adam-beta1: adam_beta1=1.5 is not allowed; expected a number in [0.0, 1.0)"


def test_parser_errors_are_config_errors_not_system_exit():
    with pytest.raises(ConfigError, match="^argument --optimizer: 'adamw2' is not allowed; expected one of adam,"):
        parse_args(BASE + ["--optimizer", "adamw2"])
    with pytest.raises(ConfigError, match="^unrecognized arguments: --muon-momentun 0.9$"):
        parse_args(BASE + ["--muon-momentun", "0.9"])
    with pytest.raises(ConfigError, match=r"^argument --muon-coefficient-type: invalid choice: 'quintik'"):
        parse_args(BASE + ["--muon-coefficient-type", "quintik"])


def test_run_cli_prints_one_line_and_returns_2(capsys):
    def main(argv):
        parse_and_validate(argv, 1)
        return 0

    assert run_cli(main, ["--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert err == "error: neither --train-iters nor --train-samples was given; expected exactly one of them\n"
    assert run_cli(main, BASE) == 0


# ---- YAML config files ---------------------------------------------------------------------------


def write_yaml(tmp_path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_accepts_flag_and_field_spellings(tmp_path):
    path = write_yaml(tmp_path, "optimizer: muon\nmuon-momentum: 0.9\nmuon_num_ns_steps: 6\nmuon-no-split-qkv: true\n"
                                "lr: 2e-3\ntrain-iters: 100\nbf16: true\ndata-path: [a.bin, b.bin]\nexp_avg_dtype: fp32\n")
    args, config = parse_and_validate(["--yaml-cfg", path], 1)
    assert (config.optimizer, config.muon_momentum, config.muon_num_ns_steps, config.muon_split_qkv) == ("muon", 0.9, 6, False)
    assert (config.lr, config.bf16, args.train_iters, args.data_path) == (2e-3, True, 100, ["a.bin", "b.bin"])


def test_yaml_field_spelling_of_a_store_false_flag(tmp_path):
    path = write_yaml(tmp_path, "muon_split_qkv: false\ndecoupled_weight_decay: false\n")
    _, config = parse_and_validate(["--yaml-cfg", path] + BASE, 1)
    assert config.muon_split_qkv is False and config.decoupled_weight_decay is False


def test_explicit_cli_flags_override_the_yaml_file(tmp_path):
    path = write_yaml(tmp_path, "optimizer: lion\nlion-beta1: 0.9\nlr: 1e-2\ntrain-iters: 5\n")
    _, config = parse_and_validate(["--lion-beta1", "0.8", "--yaml-cfg", path, "--lr", "3e-4"], 1)
    assert (config.optimizer, config.lion_beta1, config.lr) == ("lion", 0.8, 3e-4)


def test_yaml_mapping_for_optimizer_kwargs(tmp_path):
    path = write_yaml(tmp_path, "optimizer: torch.optim.RAdam\noptimizer-kwargs: {decoupled_weight_decay: true}\n")
    _, config = parse_and_validate(["--yaml-cfg", path] + BASE, 1)
    assert config.optimizer_kwargs == {"decoupled_weight_decay": True}


def test_yaml_deprecated_key_warns_once(tmp_path):
    path = write_yaml(tmp_path, "muon-use-nesterov: true\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _, config = parse_and_validate(["--yaml-cfg", path] + BASE, 1)
    assert config.muon_nesterov is True
    assert deprecation_messages(record) == ["--muon-use-nesterov is deprecated. Use --muon-nesterov instead."]


@pytest.mark.parametrize(
    "text, message",
    [
        ("muon-momentun: 0.9\n", "unknown key 'muon-momentun' in {path}; expected a flag name (e.g. muon-momentum) or a field name (e.g. muon_momentum), see --help"),
        ("muon-tp-mode: sharded\n", "muon-tp-mode='sharded' in {path} is not allowed; expected one of duplicated, distributed, blockwise"),
        ("lr: fast\n", "lr='fast' in {path} is not allowed; expected a number"),
        ("bf16: 1\n", "bf16=1 in {path} is not allowed; expected true or false"),
        ("optimizer: adamw2\n", "optimizer in {path}: 'adamw2' is not allowed; expected one of adam,"),
        ("- lr\n", "--yaml-cfg={path!r} is not allowed; expected a mapping of flag names to values at the top level"),
        ("yaml-cfg: other.yaml\n", "unknown key 'yaml-cfg' in {path}"),
    ],
)
def test_bad_yaml_content_is_a_config_error_naming_key_and_file(tmp_path, text, message):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        parse_args(["--yaml-cfg", path])
    assert str(info.value).startswith(message.format(path=path))


def test_missing_yaml_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a readable file"):
        parse_args(["--yaml-cfg", path])


def test_example_configs_parse_and_validate():
    import pathlib

    examples = sorted((pathlib.Path(__file__).parents[2] / "examples").glob("*.yaml"))
    assert examples, "examples/*.yaml missing"
    for example in examples:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # examples must not use deprecated spellings
            args, config = parse_and_validate(["--yaml-cfg", str(example)], 8)
        assert isinstance(args, argparse.Namespace) and config.lr is not None


def test_docs_flags_md_is_generated_from_the_current_parser():
    import pathlib

    from arguments.flags_doc import render_flags_markdown

    docs = pathlib.Path(__file__).parents[2] / "docs" / "flags.md"
    assert docs.read_text(encoding="utf-8") == render_flags_markdown(), "run: python tools/flags_table.py"
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert f"`{option}`" in docs.read_text(encoding="utf-8") or option in ("-h", "--help")
