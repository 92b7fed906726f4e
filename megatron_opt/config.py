"""One typed ``OptimizerConfig`` and the ``ParamKey`` vocabulary for per-parameter-group overrides.

The field defaults here are the single source of truth: the CLI (``arguments/``) reads its defaults
from this dataclass, so the two can never drift as they do in Megatron-LM. Validation runs at
construction and raises ``ConfigError`` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch

from megatron_opt.deprecation import warn_once
from megatron_opt.errors import ConfigError, config_error
from megatron_opt.ns_coefficients import validate_coefficient_type
from megatron_opt.optimizer_names import (
    LEGACY_DIST_PREFIX,
    SCALAR_OPTIMIZERS,
    is_dotted_path,
    known_optimizer_names,
)

DTYPE_NAMES: Dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}

SCALE_MODES = ("spectral", "unit_rms_norm", "shape_scaling")
TP_MODES = ("duplicated", "distributed", "blockwise")
FP32_MATMUL_PRECISIONS = ("low", "medium", "high", "highest")
MOMENT2_METHODS = ("adamuon", "normuon", "namo")
NS_ALGORITHMS = ("standard", "gram")
STANDARD_BACKENDS = ("auto", "te", "apex", "torch_fused", "torch_foreach")
PARAMS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FINITE_FIELDS = ("lr", "min_lr", "decoupled_lr", "decoupled_min_lr", "weight_decay", "loss_scale", "initial_loss_scale",
                 "min_loss_scale", "loss_scale_window", "adam_eps", "adaptive_muon_eps", "muon_extra_scale_factor")
"""Fields where +inf passes the range check but is never meaningful (found by tests/unit/test_fuzz_inputs.py)."""
_FP32_MAX = float(torch.finfo(torch.float32).max)


@dataclass
class OptimizerConfig:
    """Everything that decides how parameters are optimized. One instance per run."""

    # ---- which optimizer -------------------------------------------------------------------
    optimizer: str = "adam"
    """adam | sgd | a registered emerging optimizer (muon, adaptive_muon, lion, soap) | a dotted class path."""
    optimizer_kwargs: Optional[Dict[str, Any]] = None
    """Keyword arguments for a dotted-path optimizer class (ignored for named optimizers)."""
    standard_backend: str = "auto"
    """Adam/SGD implementation: auto (TE → apex → torch fused → torch foreach) or force one."""

    # ---- learning rate and weight decay ----------------------------------------------------
    lr: Optional[float] = None
    """Peak learning rate; required before an optimizer is built."""
    min_lr: float = 0.0
    """Learning rate at the end of decay."""
    decoupled_lr: Optional[float] = None
    """Separate peak lr for embedding/output parameters (None = use lr)."""
    decoupled_min_lr: Optional[float] = None
    """Separate min lr for embedding/output parameters (None = use min_lr)."""
    weight_decay: float = 0.01
    """Weight-decay coefficient (L2 or decoupled, see decoupled_weight_decay)."""
    apply_wd_to_qk_layernorm: bool = False
    """Decay q_layernorm/k_layernorm weights even though they are 1-D."""
    decoupled_weight_decay: bool = True
    """True: AdamW-style decay p -= lr*wd*p. False: L2 added to the gradient."""

    # ---- precision -------------------------------------------------------------------------
    fp16: bool = False
    """Model parameters in fp16 with fp32 main params and loss scaling."""
    bf16: bool = False
    """Model parameters in bf16 with fp32 main params."""
    params_dtype: torch.dtype = torch.float32
    """dtype the model is initialised in."""
    use_precision_aware_optimizer: bool = False
    """Let TE FusedAdam hold reduced-precision main params/moments (needs TE and the distributed optimizer)."""
    main_grads_dtype: torch.dtype = torch.float32
    """dtype of main gradients (fp32 unless precision-aware)."""
    main_params_dtype: torch.dtype = torch.float32
    """dtype of main parameters (fp32 unless precision-aware)."""
    exp_avg_dtype: torch.dtype = torch.float32
    """dtype of Adam's first moment (fp32 unless precision-aware)."""
    exp_avg_sq_dtype: torch.dtype = torch.float32
    """dtype of Adam's second moment (fp32 unless precision-aware)."""

    # ---- loss scaling ------------------------------------------------------------------------
    loss_scale: Optional[float] = None
    """Constant loss scale; None with fp16 means dynamic scaling."""
    initial_loss_scale: float = 2.0**32
    """Starting scale for dynamic loss scaling."""
    min_loss_scale: float = 1.0
    """The dynamic scale never backs off below this."""
    loss_scale_window: float = 1000
    """Clean steps before the dynamic scale grows."""
    hysteresis: int = 2
    """Overflowing steps tolerated before the dynamic scale backs off."""

    # ---- adam / sgd ----------------------------------------------------------------------------
    adam_beta1: float = 0.9
    """Adam first-moment decay."""
    adam_beta2: float = 0.999
    """Adam second-moment decay."""
    adam_eps: float = 1e-8
    """Adam denominator epsilon."""
    sgd_momentum: float = 0.9
    """SGD momentum."""

    # ---- muon --------------------------------------------------------------------------------
    muon_momentum: float = 0.95
    """Muon momentum (EMA form: m <- lerp(m, g, 1 - momentum))."""
    muon_split_qkv: bool = True
    """Orthogonalize the Q, K and V blocks of a fused QKV weight separately."""
    muon_nesterov: bool = False
    """Nesterov momentum for Muon."""
    muon_scale_mode: str = "spectral"
    """Update scale: spectral sqrt(max(m,n)) | unit_rms_norm sqrt(m/n) | shape_scaling sqrt(max(1,m/n))."""
    muon_fp32_matmul_prec: str = "medium"
    """Newton–Schulz precision: low/medium (bf16), high (TF32), highest (fp32)."""
    muon_coefficient_type: str = "quintic"
    """Newton–Schulz coefficient set (see ns_coefficients.get_supported_coefficient_types)."""
    muon_custom_coefficients: Optional[Tuple[Tuple[float, float, float], ...]] = None
    """(a, b, c) triples when muon_coefficient_type='custom'."""
    muon_num_ns_steps: int = 5
    """Newton–Schulz iterations."""
    muon_tp_mode: str = "duplicated"
    """Tensor-parallel Newton–Schulz: duplicated | distributed | blockwise."""
    muon_ns_algorithm: str = "standard"
    """Newton–Schulz loop: standard (X ← aX + BX every step) | gram (the same polynomial in Gram space with
    restarts, for matrices >= 1.5:1: ~0.6x the NS time of the standard loop there; opt-in, as its fp32
    error is up to 3.4x the standard loop's, see docs/muon.md)."""
    muon_gram_ns_restarts: Optional[Tuple[int, ...]] = None
    """With muon_ns_algorithm=gram: the NS steps (1-based) after which X is formed again from its Gram
    iteration; None = after every 3rd step (5 steps: after step 3)."""
    muon_use_syrk: bool = False
    """Megatron-LM's switch for its symmetric (SYRK) Gram kernel. Here: the symmetric-block products of
    Newton–Schulz on every device from 256 rows (without it: from 256 rows on CPU, 2048 elsewhere)."""
    muon_extra_scale_factor: float = 1.0
    """Extra multiplier on the Muon update (0.2 with spectral matches AdamW's update RMS)."""
    muon_scalar_optimizer: str = "adam"
    """Optimizer for parameters Muon does not handle (embeddings, output, biases, norms): adam | lion."""

    # ---- adaptive muon -------------------------------------------------------------------------
    adaptive_muon_moment2_method: str = "adamuon"
    """Second moment for adaptive Muon: adamuon | normuon | namo."""
    adaptive_muon_beta2: float = 0.95
    """Second-moment decay for adaptive Muon."""
    adaptive_muon_eps: float = 1e-8
    """Second-moment epsilon for adaptive Muon."""

    # ---- lion --------------------------------------------------------------------------------
    lion_beta1: float = 0.95
    """Lion interpolation coefficient for the update sign."""
    lion_beta2: float = 0.98
    """Lion momentum decay."""

    # ---- soap --------------------------------------------------------------------------------
    soap_shampoo_beta: float = 0.95
    """Decay of SOAP's Kronecker-factor statistics."""
    soap_precondition_frequency: int = 1
    """Steps between eigenbasis refreshes."""
    soap_use_kl_shampoo: bool = False
    """KL-Shampoo statistics (not implemented: must stay False)."""
    soap_max_update_rms: float = 0.0
    """Clip SOAP's update RMS to this value (0 = off)."""
    soap_correct_bias: bool = True
    """Adam-style bias correction in SOAP."""

    # ---- distributed -------------------------------------------------------------------------
    use_distributed_optimizer: bool = False
    """ZeRO-1: shard optimizer state and fp32 main params over data-parallel ranks."""
    use_layer_wise_distributed_optimizer: bool = False
    """Emerging optimizers: each data-parallel rank owns whole matrices."""
    overlap_param_gather: bool = False
    """Overlap the distributed optimizer's parameter all-gather with the next forward."""

    # ---- clipping, skipping, logging --------------------------------------------------------
    clip_grad: float = 1.0
    """Clip the global gradient L2 norm to this value (0 disables)."""
    grad_norm_skip_threshold: float = math.inf
    """Skip the update when the global gradient norm exceeds this."""
    skip_step_sigma: Optional[float] = None
    """Skip a step whose loss or grad norm is more than this many std devs above its rolling mean."""
    skip_step_window: int = 128
    """Rolling-window length for skip_step_sigma."""
    log_num_zeros_in_grad: bool = False
    """Count zero gradient entries every step."""
    qk_clip: bool = False
    """QK-clip (MuonClip): after each step rescale W_q/W_k of heads whose max attention logit exceeded qk_clip_threshold."""
    qk_clip_threshold: float = 100.0
    """QK-clip threshold tau on the pre-softmax attention logit."""
    qk_clip_alpha: float = 0.5
    """Share of the QK-clip correction on W_q: q x (tau/max)^alpha, k x (tau/max)^(1-alpha)."""
    log_max_attention_logit: bool = False
    """Record and log the max pre-softmax attention logit every step without clipping (implied by qk_clip)."""

    muon_use_nesterov: dataclasses.InitVar[Optional[bool]] = None
    """Deprecated spelling of muon_nesterov (warns once); accepted at construction only."""

    def __post_init__(self, muon_use_nesterov: Optional[bool]) -> None:
        if muon_use_nesterov is not None:
            warn_once("muon_use_nesterov", "OptimizerConfig(muon_use_nesterov=...) is deprecated; use muon_nesterov=...")
            self.muon_nesterov = muon_use_nesterov
        _coerce_and_check_types(self)
        _validate(self)

    @property
    def emerging_name(self) -> str:
        """The optimizer name with a legacy ``dist_`` prefix removed."""
        name = self.optimizer
        return name[len(LEGACY_DIST_PREFIX):] if name.startswith(LEGACY_DIST_PREFIX) else name

    def replace(self, **changes: Any) -> "OptimizerConfig":
        """A validated copy with some fields changed (the original is never mutated)."""
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------
# validation


def _field_types() -> Dict[str, Any]:
    hints = typing.get_type_hints(OptimizerConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(OptimizerConfig)}


def _strip_optional(tp: Any) -> Tuple[Any, bool]:
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce_and_check_types(cfg: OptimizerConfig) -> None:
    """Accept what YAML and argparse produce (ints for floats, '1e-3', 'bf16'); refuse the rest."""
    for name, tp in _field_types().items():
        value = getattr(cfg, name)
        base, optional = _strip_optional(tp)
        if value is None:
            if optional:
                continue
            raise config_error(name, value, f"a value of type {getattr(base, '__name__', base)}")
        setattr(cfg, name, _coerce(name, value, base))


def _coerce(name: str, value: Any, base: Any) -> Any:
    if base is bool:
        if isinstance(value, bool):
            return value
        raise config_error(name, value, "true or false")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise config_error(name, value, "an integer")
    if base is float:
        if isinstance(value, bool):
            raise config_error(name, value, "a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise config_error(name, value, "a number")
    if base is str:
        if isinstance(value, str):
            return value
        raise config_error(name, value, "a string")
    if base is torch.dtype:
        if isinstance(value, torch.dtype):
            return value
        if isinstance(value, str) and value in DTYPE_NAMES:
            return DTYPE_NAMES[value]
        raise config_error(name, value, "one of " + ", ".join(DTYPE_NAMES))
    if typing.get_origin(base) in (dict, Dict):
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise config_error(name, value, "a mapping of keyword names to values")
    if typing.get_origin(base) in (tuple, Tuple):
        if typing.get_args(base) == (int, Ellipsis):
            return _coerce_ints(name, value)
        return _coerce_triples(name, value)
    return value


def _coerce_ints(name: str, value: Any) -> Tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise config_error(name, value, "a list of integers")
    return tuple(items)


def _coerce_triples(name: str, value: Any) -> Tuple[Tuple[float, float, float], ...]:
    try:
        triples = tuple(tuple(float(x) for x in t) for t in value)
    except (TypeError, ValueError):
        raise config_error(name, value, "a list of (a, b, c) number triples") from None
    # beyond the fp32 range the Newton-Schulz step cannot even multiply by the coefficient
    if not triples or any(len(t) != 3 or not all(math.isfinite(x) and abs(x) <= _FP32_MAX for x in t) for t in triples):
        raise config_error(name, value, "a non-empty list of (a, b, c) triples of finite fp32 numbers")
    return triples


def _require(cond: bool, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise config_error(name, value, allowed)


def _check_choice(cfg: OptimizerConfig, name: str, choices: Tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    _require(value in choices, name, value, "one of " + ", ".join(choices))


def _check_number(cfg: OptimizerConfig, name: str, low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False) -> None:
    value = getattr(cfg, name)
    if value is None:
        return
    ok = not math.isnan(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    lo = "(" if low_open else "["
    hi = ")" if high_open or (high == math.inf and name in FINITE_FIELDS) else "]"
    _require(ok, name, value, f"a number in {lo}{low}, {high}{hi}")


def _validate(cfg: OptimizerConfig) -> None:
    name = cfg.emerging_name
    _require(
        name in known_optimizer_names() or is_dotted_path(cfg.optimizer),
        "optimizer",
        cfg.optimizer,
        "one of " + ", ".join(sorted(known_optimizer_names())) + " or a dotted class path like torch.optim.RAdam",
    )
    if cfg.optimizer.startswith(LEGACY_DIST_PREFIX) and name in ("adam", "sgd"):
        raise config_error("optimizer", cfg.optimizer, "the dist_ prefix only with an emerging optimizer (e.g. dist_muon)")
    _check_choice(cfg, "standard_backend", STANDARD_BACKENDS)

    for f in ("lr", "min_lr", "decoupled_lr", "decoupled_min_lr", "weight_decay"):
        _check_number(cfg, f, 0.0)
    for f in FINITE_FIELDS:  # inf passes the range checks but turns every parameter into inf/nan
        value = getattr(cfg, f)
        _require(value is None or math.isfinite(value), f, value, "a finite number")
    if cfg.lr is not None:
        _require(cfg.min_lr <= cfg.lr, "min_lr", cfg.min_lr, f"a value <= lr ({cfg.lr})")
    if cfg.decoupled_lr is not None and cfg.decoupled_min_lr is not None:
        _require(cfg.decoupled_min_lr <= cfg.decoupled_lr, "decoupled_min_lr", cfg.decoupled_min_lr, f"a value <= decoupled_lr ({cfg.decoupled_lr})")

    _require(cfg.params_dtype in PARAMS_DTYPES, "params_dtype", cfg.params_dtype, "one of torch.float32, torch.bfloat16, torch.float16")
    if cfg.fp16 and cfg.bf16:
        raise ConfigError("fp16=True together with bf16=True is not allowed; expected at most one of fp16, bf16")
    for f in ("main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype"):
        if not cfg.use_precision_aware_optimizer:
            _require(getattr(cfg, f) == torch.float32, f, getattr(cfg, f), "torch.float32 unless use_precision_aware_optimizer=True")
    if cfg.use_precision_aware_optimizer:
        _require(cfg.optimizer == "adam", "use_precision_aware_optimizer", True, "only with optimizer='adam'")
        _require(cfg.use_distributed_optimizer, "use_precision_aware_optimizer", True, "only with use_distributed_optimizer=True")

    if cfg.loss_scale is not None:
        _check_number(cfg, "loss_scale", 0.0, low_open=True)
    _check_number(cfg, "initial_loss_scale", 0.0, low_open=True)
    _check_number(cfg, "min_loss_scale", 0.0, low_open=True)
    _require(cfg.min_loss_scale <= cfg.initial_loss_scale, "min_loss_scale", cfg.min_loss_scale, f"a value <= initial_loss_scale ({cfg.initial_loss_scale})")
    _check_number(cfg, "loss_scale_window", 1.0)
    _require(cfg.hysteresis >= 1, "hysteresis", cfg.hysteresis, "an integer >= 1")

    for f in ("adam_beta1", "adam_beta2", "muon_momentum", "adaptive_muon_beta2", "lion_beta1", "lion_beta2", "soap_shampoo_beta", "sgd_momentum"):
        _check_number(cfg, f, 0.0, 1.0, high_open=True)
    for f in ("adam_eps", "adaptive_muon_eps"):
        _check_number(cfg, f, 0.0, low_open=True)

    _check_choice(cfg, "muon_scale_mode", SCALE_MODES)
    _check_choice(cfg, "muon_fp32_matmul_prec", FP32_MATMUL_PRECISIONS)
    validate_coefficient_type(cfg.muon_coefficient_type)
    if cfg.muon_coefficient_type == "custom":
        _require(cfg.muon_custom_coefficients is not None, "muon_custom_coefficients", None, "a list of (a, b, c) triples when muon_coefficient_type='custom'")
    _require(cfg.muon_num_ns_steps >= 1, "muon_num_ns_steps", cfg.muon_num_ns_steps, "an integer >= 1")
    _require(cfg.muon_num_ns_steps < 100, "muon_num_ns_steps", cfg.muon_num_ns_steps, "an integer < 100")
    if cfg.muon_coefficient_type == "cubic5":
        _require(cfg.muon_num_ns_steps == 5, "muon_num_ns_steps", cfg.muon_num_ns_steps, "exactly 5 with muon_coefficient_type='cubic5'")
    _check_choice(cfg, "muon_tp_mode", TP_MODES)
    _check_choice(cfg, "muon_ns_algorithm", NS_ALGORITHMS)
    if cfg.muon_gram_ns_restarts is not None:
        r = cfg.muon_gram_ns_restarts
        _require(all(1 <= s < cfg.muon_num_ns_steps for s in r) and list(r) == sorted(set(r)), "muon_gram_ns_restarts", list(r),
                 f"increasing step numbers in 1..{cfg.muon_num_ns_steps - 1} (muon_num_ns_steps={cfg.muon_num_ns_steps}); [] for no restart")
    _check_number(cfg, "muon_extra_scale_factor", 0.0, low_open=True)
    _check_choice(cfg, "muon_scalar_optimizer", tuple(sorted(SCALAR_OPTIMIZERS)))
    _check_choice(cfg, "adaptive_muon_moment2_method", MOMENT2_METHODS)
    _require(cfg.soap_precondition_frequency >= 1, "soap_precondition_frequency", cfg.soap_precondition_frequency, "an integer >= 1")
    _require(not cfg.soap_use_kl_shampoo, "soap_use_kl_shampoo", True, "False (KL-Shampoo statistics are not implemented)")
    _check_number(cfg, "soap_max_update_rms", 0.0)

    if cfg.use_distributed_optimizer and cfg.use_layer_wise_distributed_optimizer:
        raise ConfigError(
            "use_distributed_optimizer=True together with use_layer_wise_distributed_optimizer=True is not allowed; "
            "expected at most one (emerging optimizers use the layer-wise one)"
        )

    _check_number(cfg, "clip_grad", 0.0)
    _check_number(cfg, "grad_norm_skip_threshold", 0.0, low_open=True)
    if cfg.skip_step_sigma is not None:
        _check_number(cfg, "skip_step_sigma", 0.0, low_open=True)
    _require(cfg.skip_step_window >= 2, "skip_step_window", cfg.skip_step_window, "an integer >= 2")
    _check_number(cfg, "qk_clip_threshold", 0.0, low_open=True)
    _check_number(cfg, "qk_clip_alpha", 0.0, 1.0, low_open=True, high_open=True)
    if cfg.optimizer_kwargs is not None and not is_dotted_path(cfg.optimizer):
        raise config_error("optimizer_kwargs", cfg.optimizer_kwargs, "None unless optimizer is a dotted class path")


# --------------------------------------------------------------------------------------------
# per-parameter-group overrides


@dataclass(frozen=True)
class ParamPredicate:
    """A named test on a parameter; equality and hashing go by name so it can live in a dict key."""

    name: str
    fn: Callable[[torch.nn.Parameter], bool] = field(compare=False, hash=False)

    def __call__(self, param: torch.nn.Parameter) -> bool:
        return bool(self.fn(param))


@dataclass(frozen=True)
class ParamWithNamePredicate:
    """Like ``ParamPredicate`` but the test also sees the parameter's qualified name."""

    name: str
    fn: Callable[[torch.nn.Parameter, str], bool] = field(compare=False, hash=False)

    def __call__(self, param: torch.nn.Parameter, param_name: str) -> bool:
        return bool(self.fn(param, param_name))


def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


@dataclass(frozen=True)
class ParamKey:
    """Selects parameters by glob on the qualified name, truthy attribute, or predicate (OR of all).

    Each field takes one item or several. An empty key matches nothing.
    """

    name: Union[str, Tuple[str, ...]] = ()
    attr: Union[str, Tuple[str, ...]] = ()
    predicate: Union[ParamPredicate, Tuple[ParamPredicate, ...]] = ()
    with_name_predicate: Union[ParamWithNamePredicate, Tuple[ParamWithNamePredicate, ...]] = ()

    def __post_init__(self) -> None:
        for f in ("name", "attr", "predicate", "with_name_predicate"):
            object.__setattr__(self, f, _as_tuple(getattr(self, f)))

    def matches(self, param: torch.nn.Parameter, param_name: str) -> bool:
        return (
            any(fnmatch.fnmatchcase(param_name, pattern) for pattern in self.name)
            or any(getattr(param, a, False) for a in self.attr)
            or any(p(param) for p in self.predicate)
            or any(p(param, param_name) for p in self.with_name_predicate)
        )

    def describe(self) -> str:
        parts = [f"name={list(self.name)}" if self.name else "", f"attr={list(self.attr)}" if self.attr else ""]
        parts += [f"predicate={p.name}" for p in self.predicate] + [f"with_name_predicate={p.name}" for p in self.with_name_predicate]
        return "ParamKey(" + ", ".join(p for p in parts if p) + ")"


# Keys an override dict may set. The optimizer hyperparameters are applied to the parameter group
# of whichever optimizer the parameter ends up in (when that optimizer has the hyperparameter).
SCHEDULE_OVERRIDE_KEYS = ("max_lr", "min_lr", "lr_mult", "start_wd", "end_wd", "wd_mult")
HYPERPARAMETER_OVERRIDE_KEYS = (
    "adam_beta1",
    "adam_beta2",
    "adam_eps",
    "sgd_momentum",
    "muon_momentum",
    "muon_extra_scale_factor",
    "lion_beta1",
    "lion_beta2",
)
OVERRIDE_KEYS = SCHEDULE_OVERRIDE_KEYS + ("optimizer",) + HYPERPARAMETER_OVERRIDE_KEYS

ParamGroupOverride = Dict[str, Any]


def validate_override(key: ParamKey, override: Mapping[str, Any]) -> None:
    """Refuse unknown keys and impossible values in one override dict."""
    where = f"config_overrides[{key.describe()}]"
    if not isinstance(override, Mapping):
        raise config_error(where, override, "a dict of overrides")
    for k, v in override.items():
        if k not in OVERRIDE_KEYS:
            raise config_error(f"{where}.{k}", v, "a key among " + ", ".join(OVERRIDE_KEYS))
        if k == "optimizer":
            if not isinstance(v, str) or not (v in known_optimizer_names() or is_dotted_path(v)):
                raise config_error(f"{where}.optimizer", v, "one of " + ", ".join(sorted(known_optimizer_names())))
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
            raise config_error(f"{where}.{k}", v, "a number >= 0")
        if k in ("adam_beta1", "adam_beta2", "sgd_momentum", "muon_momentum", "lion_beta1", "lion_beta2") and v >= 1:
            raise config_error(f"{where}.{k}", v, "a number in [0, 1)")
    if "min_lr" in override and "max_lr" in override and override["min_lr"] > override["max_lr"]:
        raise config_error(f"{where}.min_lr", override["min_lr"], f"a value <= max_lr ({override['max_lr']})")


def get_standard_config_overrides(config: OptimizerConfig) -> Dict[ParamKey, ParamGroupOverride]:
    """No weight decay for biases and 1-D parameters; decoupled lr for embedding/output parameters."""
    if config.apply_wd_to_qk_layernorm:
        no_wd_key = ParamKey(
            with_name_predicate=ParamWithNamePredicate(
                "no_wd_1d_except_qk_layernorm",
                lambda p, n: (p.ndim == 1 or n.endswith(".bias")) and "q_layernorm." not in n and "k_layernorm." not in n,
            )
        )
    else:
        no_wd_key = ParamKey(name="*.bias", predicate=ParamPredicate("param_len_1", lambda p: p.ndim == 1))
    overrides: Dict[ParamKey, ParamGroupOverride] = {no_wd_key: {"wd_mult": 0.0}}
    if config.decoupled_lr is not None:
        decoupled: ParamGroupOverride = {"max_lr": config.decoupled_lr}
        if config.decoupled_min_lr is not None:
            decoupled["min_lr"] = config.decoupled_min_lr
        overrides[ParamKey(attr=("is_embedding_or_output", "is_embedding_or_output_parameter"))] = decoupled
    return overrides
