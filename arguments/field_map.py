"""Which argparse destination sets which OptimizerConfig field: written out, no prefix magic.

Megatron-LM copies every argument whose name happens to match a config field. Here the mapping is
an explicit table, so a renamed field or flag fails a test instead of silently dropping a value.
"""

from __future__ import annotations

from typing import Dict, Tuple

FIELD_FOR_DEST: Dict[str, str] = {
    # which optimizer
    "optimizer": "optimizer",
    "optimizer_kwargs": "optimizer_kwargs",
    "standard_backend": "standard_backend",
    # learning rate and weight decay
    "lr": "lr",
    "min_lr": "min_lr",
    "decoupled_lr": "decoupled_lr",
    "decoupled_min_lr": "decoupled_min_lr",
    "weight_decay": "weight_decay",
    "apply_wd_to_qk_layernorm": "apply_wd_to_qk_layernorm",
    "decoupled_weight_decay": "decoupled_weight_decay",  # --no-decoupled-weight-decay
    # precision
    "fp16": "fp16",
    "bf16": "bf16",
    "use_precision_aware_optimizer": "use_precision_aware_optimizer",
    "main_grads_dtype": "main_grads_dtype",
    "main_params_dtype": "main_params_dtype",
    "exp_avg_dtype": "exp_avg_dtype",
    "exp_avg_sq_dtype": "exp_avg_sq_dtype",
    # loss scaling
    "loss_scale": "loss_scale",
    "initial_loss_scale": "initial_loss_scale",
    "min_loss_scale": "min_loss_scale",
    "loss_scale_window": "loss_scale_window",
    "hysteresis": "hysteresis",
    # adam / sgd
    "adam_beta1": "adam_beta1",
    "adam_beta2": "adam_beta2",
    "adam_eps": "adam_eps",
    "sgd_momentum": "sgd_momentum",
    # muon
    "muon_momentum": "muon_momentum",
    "muon_split_qkv": "muon_split_qkv",  # --muon-no-split-qkv
    "muon_nesterov": "muon_nesterov",  # --muon-nesterov, legacy --muon-use-nesterov
    "muon_scale_mode": "muon_scale_mode",
    "muon_fp32_matmul_prec": "muon_fp32_matmul_prec",
    "muon_coefficient_type": "muon_coefficient_type",
    "muon_custom_coefficients": "muon_custom_coefficients",
    "muon_num_ns_steps": "muon_num_ns_steps",
    "muon_tp_mode": "muon_tp_mode",
    "muon_ns_algorithm": "muon_ns_algorithm",
    "muon_gram_ns_restarts": "muon_gram_ns_restarts",
    "muon_use_syrk": "muon_use_syrk",
    "muon_extra_scale_factor": "muon_extra_scale_factor",
    "muon_scalar_optimizer": "muon_scalar_optimizer",
    # adaptive muon
    "adaptive_muon_moment2_method": "adaptive_muon_moment2_method",
    "adaptive_muon_beta2": "adaptive_muon_beta2",
    "adaptive_muon_eps": "adaptive_muon_eps",
    # lion
    "lion_beta1": "lion_beta1",
    "lion_beta2": "lion_beta2",
    # soap
    "soap_shampoo_beta": "soap_shampoo_beta",
    "soap_precondition_frequency": "soap_precondition_frequency",
    "soap_max_update_rms": "soap_max_update_rms",
    # distributed
    "use_distributed_optimizer": "use_distributed_optimizer",
    "overlap_param_gather": "overlap_param_gather",
    # clipping, skipping, logging
    "clip_grad": "clip_grad",
    "grad_norm_skip_threshold": "grad_norm_skip_threshold",
    "skip_step_sigma": "skip_step_sigma",
    "skip_step_window": "skip_step_window",
    "log_num_zeros_in_grad": "log_num_zeros_in_grad",
    # QK-clip
    "qk_clip": "qk_clip",
    "qk_clip_threshold": "qk_clip_threshold",
    "qk_clip_alpha": "qk_clip_alpha",
    "log_max_attention_logit": "log_max_attention_logit",
}
"""argparse dest → OptimizerConfig field, for every flag whose value goes straight into the config."""

DERIVED_FIELDS: Dict[str, str] = {
    "params_dtype": "fp32, or bf16/fp16 from --bf16/--fp16",
    "use_layer_wise_distributed_optimizer": "set by validate_args: an emerging optimizer with --use-distributed-optimizer (or dist_<name>)",
}
"""Fields computed from several flags rather than set by one."""

CONFIG_ONLY_FIELDS: Tuple[str, ...] = ("soap_use_kl_shampoo", "soap_correct_bias")
"""Fields with no flag (set them in Python); the CLI always uses their defaults."""
