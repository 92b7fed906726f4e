"""The argparse parser: Megatron-LM's flag names, one function per group.

Every flag that sets an OptimizerConfig field takes its default and help text from the dataclass
(``_config_flag``), so ``--help``, the config and ``docs/flags.md`` always agree.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from megatron_opt.config import (
    FP32_MATMUL_PRECISIONS,
    MOMENT2_METHODS,
    NS_ALGORITHMS,
    SCALAR_OPTIMIZERS,
    SCALE_MODES,
    STANDARD_BACKENDS,
    TP_MODES,
)
from megatron_opt.errors import ConfigError
from megatron_opt.ns_coefficients import get_supported_coefficient_types

from arguments.defaults import config_default, config_field_doc
from arguments.deprecations import DeprecatedStoreTrue
from arguments.field_map import FIELD_FOR_DEST
from arguments.flag_types import (
    coefficient_triples,
    dtype_flag,
    non_negative_int,
    optimizer_choices,
    optimizer_name,
    positive_int,
    yaml_mapping,
)

LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD", "power", "WSD-S")
"""Megatron-LM's five styles plus ours: power (PowerLR) and WSD-S (multi-period WSD)."""
LR_WSD_DECAY_STYLES = ("exponential", "linear", "cosine", "minus_sqrt")
WD_INCR_STYLES = ("constant", "linear", "cosine")
CKPT_FORMATS = ("torch", "torch_dist", "torch_dcp", "fsdp_dtensor")
"""Megatron-LM's formats; validate_args accepts only torch_dist (the others are recognised to explain that)."""
NORMALIZATIONS = ("LayerNorm", "RMSNorm")
DISTRIBUTED_BACKENDS = ("nccl", "gloo")


class MegatronArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigError, so every bad command line is one line on stderr."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(" ".join(message.split()))


def _help_text(text: str) -> str:
    return text.replace("%", "%%")


def _config_flag(group: Any, *option_strings: str, field: str, help: str = "", **kwargs: Any) -> None:
    """Add a flag that sets OptimizerConfig.<field>; default and help come from the dataclass."""
    if FIELD_FOR_DEST.get(field) != field:
        raise RuntimeError(f"{option_strings[0]} sets {field!r}, which is missing from arguments.field_map.FIELD_FOR_DEST")
    group.add_argument(*option_strings, dest=field, default=config_default(field), help=_help_text(help or config_field_doc(field)), **kwargs)


def _deprecated_alias(group: Any, old_flag: str, new_flag: str, dest: str) -> None:
    """An old store_true spelling that still works, warns once per use, and sets the new flag's dest."""
    group.add_argument(old_flag, dest=dest, action=DeprecatedStoreTrue, replacement=new_flag, help=f"Deprecated alias of {new_flag}.")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model", "GPT shape (defaults are a toy model so a bare command runs)")
    g.add_argument("--num-layers", type=positive_int, default=2, help="Transformer layers.")
    g.add_argument("--hidden-size", type=positive_int, default=64, help="Hidden size.")
    g.add_argument("--ffn-hidden-size", type=positive_int, default=None, help="MLP hidden size (default 4 * hidden size).")
    g.add_argument("--num-attention-heads", type=positive_int, default=4, help="Attention heads.")
    g.add_argument("--group-query-attention", action="store_true", help="Use grouped-query attention with --num-query-groups.")
    g.add_argument("--num-query-groups", type=positive_int, default=1, help="Key/value groups with --group-query-attention.")
    g.add_argument("--kv-channels", type=positive_int, default=None, help="Per-head size (default hidden size / heads).")
    g.add_argument("--seq-length", type=positive_int, default=64, help="Tokens per sample.")
    g.add_argument("--max-position-embeddings", type=positive_int, default=None, help="Position-embedding table size (default --seq-length).")
    g.add_argument("--vocab-size", type=positive_int, default=256, help="Vocabulary size (256 = byte-level tokens).")
    g.add_argument("--normalization", choices=NORMALIZATIONS, default="LayerNorm", help="Norm layer.")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true", help="Separate input embedding and output weights.")
    g.add_argument("--init-method-std", type=float, default=0.02, help="Std of the normal weight initialisation.")


def add_parallelism_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=positive_int, default=1, help="Tensor-parallel size.")
    g.add_argument("--pipeline-model-parallel-size", type=positive_int, default=1, help="Pipeline-parallel size.")
    g.add_argument("--sequence-parallel", action="store_true", help="Shard activations along the sequence in TP regions (ignored when TP is 1).")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=positive_int, default=1, help="Samples per forward/backward on one rank.")
    g.add_argument("--global-batch-size", type=positive_int, default=None, help="Samples per optimizer step (default micro batch * data-parallel size).")
    g.add_argument("--train-iters", type=positive_int, default=None, help="Optimizer steps to train (exclusive with --train-samples).")
    g.add_argument("--train-samples", type=positive_int, default=None, help="Samples to train (exclusive with --train-iters).")
    g.add_argument("--seed", type=int, default=1234, help="Random seed.")
    g.add_argument("--eval-interval", type=positive_int, default=1000, help="Iterations between evaluations.")
    g.add_argument("--eval-iters", type=non_negative_int, default=100, help="Batches per evaluation (0 disables).")
    g.add_argument("--log-interval", type=positive_int, default=100, help="Iterations between log lines.")
    g.add_argument("--exit-interval", type=positive_int, default=None, help="Exit after an iteration divisible by this.")
    g.add_argument("--max-skipped-steps", type=non_negative_int, default=None, help="Stop when this many optimizer steps in a row were skipped (default: never).")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data-path", nargs="*", default=None, help="Data files (default: synthetic data).")
    g.add_argument("--split", type=str, default="969,30,1", help="Train,valid,test proportions.")


def add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("optimizer")
    _config_flag(
        g, "--optimizer", field="optimizer", type=optimizer_name, metavar="{" + ",".join(optimizer_choices()) + ",pkg.module.Class}",
        help="adam | sgd | an emerging optimizer | a dotted class path. dist_<name> is deprecated: use --optimizer <name> --use-distributed-optimizer.",
    )
    _config_flag(g, "--optimizer-kwargs", field="optimizer_kwargs", type=yaml_mapping, metavar="YAML")
    _config_flag(g, "--standard-backend", field="standard_backend", choices=STANDARD_BACKENDS)
    _config_flag(g, "--lr", field="lr", type=float)
    _config_flag(g, "--min-lr", field="min_lr", type=float)
    _config_flag(g, "--decoupled-lr", field="decoupled_lr", type=float)
    _config_flag(g, "--decoupled-min-lr", field="decoupled_min_lr", type=float)
    _config_flag(g, "--weight-decay", field="weight_decay", type=float)
    g.add_argument("--start-weight-decay", type=float, default=None, help="Weight decay at step 0 (non-constant --weight-decay-incr-style).")
    g.add_argument("--end-weight-decay", type=float, default=None, help="Weight decay at the end (non-constant --weight-decay-incr-style).")
    g.add_argument("--weight-decay-incr-style", choices=WD_INCR_STYLES, default="constant", help="How weight decay moves from start to end.")
    _config_flag(g, "--apply-wd-to-qk-layernorm", field="apply_wd_to_qk_layernorm", action="store_true")
    _deprecated_alias(g, "--no-weight-decay-cond-type", "--apply-wd-to-qk-layernorm", dest="apply_wd_to_qk_layernorm")
    _config_flag(g, "--no-decoupled-weight-decay", field="decoupled_weight_decay", action="store_false", help="Use L2 decay added to the gradient instead of AdamW-style decoupled decay.")
    _config_flag(g, "--clip-grad", field="clip_grad", type=float)
    _config_flag(g, "--adam-beta1", field="adam_beta1", type=float)
    _config_flag(g, "--adam-beta2", field="adam_beta2", type=float)
    _config_flag(g, "--adam-eps", field="adam_eps", type=float)
    _config_flag(g, "--sgd-momentum", field="sgd_momentum", type=float)
    _config_flag(g, "--skip-step-sigma", field="skip_step_sigma", type=float)
    _config_flag(g, "--skip-step-window", field="skip_step_window", type=int)
    _config_flag(g, "--grad-norm-skip-threshold", field="grad_norm_skip_threshold", type=float)
    _config_flag(g, "--qk-clip", field="qk_clip", action="store_true")
    _config_flag(g, "--qk-clip-threshold", field="qk_clip_threshold", type=float)
    _config_flag(g, "--qk-clip-alpha", field="qk_clip_alpha", type=float)
    _config_flag(g, "--log-max-attention-logit", field="log_max_attention_logit", action="store_true")
    _config_flag(g, "--log-num-zeros-in-grad", field="log_num_zeros_in_grad", action="store_true")


def add_emerging_optimizer_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("emerging optimizers (muon, adaptive_muon, lion, soap)")
    _config_flag(g, "--muon-momentum", field="muon_momentum", type=float)
    _config_flag(g, "--muon-no-split-qkv", field="muon_split_qkv", action="store_false", help="Orthogonalize a fused QKV weight as one matrix.")
    _config_flag(g, "--muon-nesterov", field="muon_nesterov", action="store_true")
    _deprecated_alias(g, "--muon-use-nesterov", "--muon-nesterov", dest="muon_nesterov")
    _config_flag(g, "--muon-scale-mode", field="muon_scale_mode", choices=SCALE_MODES)
    _config_flag(g, "--muon-fp32-matmul-prec", field="muon_fp32_matmul_prec", choices=FP32_MATMUL_PRECISIONS)
    _config_flag(g, "--muon-coefficient-type", field="muon_coefficient_type", choices=get_supported_coefficient_types())
    _config_flag(g, "--muon-custom-coefficients", field="muon_custom_coefficients", type=coefficient_triples, metavar="YAML")
    _config_flag(g, "--muon-num-ns-steps", field="muon_num_ns_steps", type=positive_int)
    _config_flag(g, "--muon-tp-mode", field="muon_tp_mode", choices=TP_MODES)
    _config_flag(g, "--muon-ns-algorithm", field="muon_ns_algorithm", choices=NS_ALGORITHMS)
    _config_flag(g, "--muon-gram-ns-restarts", field="muon_gram_ns_restarts", type=non_negative_int, nargs="*", metavar="STEP")
    _config_flag(g, "--muon-use-syrk", field="muon_use_syrk", action="store_true")
    _config_flag(g, "--muon-extra-scale-factor", field="muon_extra_scale_factor", type=float)
    _config_flag(g, "--muon-scalar-optimizer", field="muon_scalar_optimizer", choices=tuple(sorted(SCALAR_OPTIMIZERS)))
    _config_flag(g, "--adaptive-muon-moment2-method", field="adaptive_muon_moment2_method", choices=MOMENT2_METHODS)
    _config_flag(g, "--adaptive-muon-beta2", field="adaptive_muon_beta2", type=float)
    _config_flag(g, "--adaptive-muon-eps", field="adaptive_muon_eps", type=float)
    _config_flag(g, "--lion-beta1", field="lion_beta1", type=float)
    _config_flag(g, "--lion-beta2", field="lion_beta2", type=float)
    _config_flag(g, "--soap-shampoo-beta", field="soap_shampoo_beta", type=float)
    _config_flag(g, "--soap-precondition-frequency", field="soap_precondition_frequency", type=positive_int)
    _config_flag(g, "--soap-max-update-rms", field="soap_max_update_rms", type=float)


def add_scheduler_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("learning-rate scheduler")
    g.add_argument("--lr-decay-style", choices=LR_DECAY_STYLES, default="linear", help="Decay after warmup.")
    g.add_argument("--lr-wsd-decay-style", choices=LR_WSD_DECAY_STYLES, default="exponential", help="Anneal shape of WSD / WSD-S.")
    g.add_argument("--lr-decay-iters", type=positive_int, default=None, help="Iterations to decay over (default --train-iters).")
    g.add_argument("--lr-decay-samples", type=positive_int, default=None, help="Samples to decay over (default --train-samples).")
    g.add_argument("--lr-wsd-decay-iters", type=positive_int, default=None, help="Iterations of the WSD anneal.")
    g.add_argument("--lr-wsd-decay-samples", type=positive_int, default=None, help="Samples of the WSD anneal.")
    g.add_argument("--lr-warmup-fraction", type=float, default=None, help="Warmup as a fraction of the decay length (exclusive with --lr-warmup-iters/-samples).")
    g.add_argument("--lr-warmup-iters", type=non_negative_int, default=0, help="Warmup iterations.")
    g.add_argument("--lr-warmup-samples", type=non_negative_int, default=0, help="Warmup samples.")
    g.add_argument("--lr-warmup-init", type=float, default=0.0, help="Learning rate at the start of warmup.")
    g.add_argument("--lr-power-exponent", type=float, default=-0.51, help="Exponent b of --lr-decay-style power: max_lr * (n / warmup) ** b.")
    g.add_argument("--lr-power-decay-iters", type=non_negative_int, default=0, help="Linear tail to --min-lr at the end of the power decay (iterations).")
    g.add_argument("--lr-power-decay-samples", type=non_negative_int, default=0, help="Linear tail to --min-lr at the end of the power decay (samples).")
    g.add_argument("--lr-wsds-period-ends", type=positive_int, nargs="+", default=None, help="WSD-S period ends in the training unit; the last equals the decay length.")
    g.add_argument("--override-opt-param-scheduler", "--override-opt_param-scheduler", dest="override_opt_param_scheduler", action="store_true",
                   help="Use the command-line scheduler values even when loading a checkpoint.")
    g.add_argument("--use-checkpoint-opt-param-scheduler", "--use-checkpoint-opt_param-scheduler", dest="use_checkpoint_opt_param_scheduler", action="store_true",
                   help="Take the scheduler values from the checkpoint.")


def add_mixed_precision_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("mixed precision")
    _config_flag(g, "--fp16", field="fp16", action="store_true")
    _config_flag(g, "--bf16", field="bf16", action="store_true")
    _config_flag(g, "--loss-scale", field="loss_scale", type=float)
    _config_flag(g, "--initial-loss-scale", field="initial_loss_scale", type=float)
    _config_flag(g, "--min-loss-scale", field="min_loss_scale", type=float)
    _config_flag(g, "--loss-scale-window", field="loss_scale_window", type=float)
    _config_flag(g, "--hysteresis", field="hysteresis", type=positive_int)
    g.add_argument("--accumulate-allreduce-grads-in-fp32", action="store_true", help="Accumulate and all-reduce gradients in fp32 (always on with --bf16).")
    _config_flag(g, "--use-precision-aware-optimizer", field="use_precision_aware_optimizer", action="store_true")
    _config_flag(g, "--main-grads-dtype", field="main_grads_dtype", type=dtype_flag("fp32", "bf16"), metavar="{fp32,bf16}")
    _config_flag(g, "--main-params-dtype", field="main_params_dtype", type=dtype_flag("fp32", "fp16"), metavar="{fp32,fp16}")
    _config_flag(g, "--exp-avg-dtype", field="exp_avg_dtype", type=dtype_flag("fp32", "fp16", "bf16"), metavar="{fp32,fp16,bf16}")
    _config_flag(g, "--exp-avg-sq-dtype", field="exp_avg_sq_dtype", type=dtype_flag("fp32", "fp16", "bf16"), metavar="{fp32,fp16,bf16}")


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("distributed")
    _config_flag(g, "--use-distributed-optimizer", field="use_distributed_optimizer", action="store_true",
                 help="Shard optimizer state over data-parallel ranks (ZeRO-1 for adam/sgd, layer-wise for emerging optimizers).")
    g.add_argument("--overlap-grad-reduce", action="store_true", help="Overlap the gradient reduce-scatter/all-reduce with backward.")
    _config_flag(g, "--overlap-param-gather", field="overlap_param_gather", action="store_true")
    g.add_argument("--ddp-bucket-size", type=positive_int, default=None, help="Elements per gradient bucket (default: one bucket per model chunk).")
    g.add_argument("--distributed-backend", choices=DISTRIBUTED_BACKENDS, default=None, help="torch.distributed backend (default: nccl with CUDA, gloo otherwise).")
    g.add_argument("--distributed-timeout-minutes", type=positive_int, default=10, help="Timeout of collectives.")


def add_checkpointing_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("checkpointing")
    g.add_argument("--save", type=str, default=None, help="Directory to save checkpoints to.")
    g.add_argument("--load", type=str, default=None, help="Directory to load a checkpoint from.")
    g.add_argument("--save-interval", type=positive_int, default=None, help="Iterations between checkpoints.")
    g.add_argument("--no-save-optim", action="store_true", help="Do not save optimizer state.")
    g.add_argument("--no-load-optim", action="store_true", help="Do not load optimizer state.")
    g.add_argument("--no-load-rng", action="store_true", help="Do not load RNG state.")
    g.add_argument("--finetune", action="store_true", help="Load model weights only and start at iteration 0.")
    g.add_argument("--ckpt-format", choices=CKPT_FORMATS, default="torch_dist", help="Checkpoint format (only torch_dist is supported).")


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("logging")
    g.add_argument("--log-dir", "--tensorboard-dir", dest="log_dir", type=str, default=None, help="Directory for logs and TensorBoard events.")
    g.add_argument("--metrics-file", type=str, default=None, help="Write per-iteration metrics (JSON lines) here.")
    g.add_argument("--no-progress", action="store_true", help="No progress bar.")
    g.add_argument("--plot-file", type=str, default=None, help="Write a loss / lr plot here at the end.")


def build_parser() -> argparse.ArgumentParser:
    """The full parser; errors raise ConfigError (run_cli turns them into one line and exit code 2)."""
    parser = MegatronArgumentParser(
        prog="megatron_opt",
        description="Megatron-LM-compatible flags for megatron_opt.",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--yaml-cfg", type=str, default=None, metavar="FILE",
                        help="YAML file of flag values (keys as flag or field names); flags given on the command line win.")
    add_model_args(parser)
    add_parallelism_args(parser)
    add_training_args(parser)
    add_data_args(parser)
    add_optimizer_args(parser)
    add_emerging_optimizer_args(parser)
    add_scheduler_args(parser)
    add_mixed_precision_args(parser)
    add_distributed_args(parser)
    add_checkpointing_args(parser)
    add_logging_args(parser)
    return parser
