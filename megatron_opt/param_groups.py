"""Model chunks + overrides → parameter groups, each identified by its effective settings.

Every trainable parameter gets exactly one set of effective settings (lr range, multipliers,
weight-decay range, which optimizer, per-group hyperparameters) from the config plus the
``ParamKey`` overrides that match it. Parameters with equal settings share a group. Groups and the
parameters inside them are ordered deterministically (model order), so every rank and every run
with the same model reaches the same layout without talking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from megatron_opt.config import (
    HYPERPARAMETER_OVERRIDE_KEYS,
    OptimizerConfig,
    ParamGroupOverride,
    ParamKey,
    validate_override,
)
from megatron_opt.errors import ConfigError

# Which group key each hyperparameter override becomes, per optimizer. An override that the
# parameter's optimizer does not have is not applicable to it and is left out of its group.
_GROUP_KEYS: Dict[str, Dict[str, Tuple[str, Optional[int]]]] = {
    "adam": {"adam_beta1": ("betas", 0), "adam_beta2": ("betas", 1), "adam_eps": ("eps", None)},
    "sgd": {"sgd_momentum": ("momentum", None)},
    "muon": {"muon_momentum": ("momentum", None), "muon_extra_scale_factor": ("extra_scale_factor", None)},
    "adaptive_muon": {"muon_momentum": ("momentum", None), "muon_extra_scale_factor": ("extra_scale_factor", None)},
    "lion": {"lion_beta1": ("betas", 0), "lion_beta2": ("betas", 1)},
}

_DEFAULT_PAIR = {"betas": {"adam": ("adam_beta1", "adam_beta2"), "lion": ("lion_beta1", "lion_beta2")}}


@dataclass(frozen=True)
class GroupSettings:
    """The effective settings that identify a parameter group."""

    optimizer: str
    max_lr: float
    min_lr: float
    lr_mult: float
    wd_mult: float
    start_wd: Optional[float]
    end_wd: Optional[float]
    is_decoupled_lr: bool
    default_config: bool
    hyperparameters: Tuple[Tuple[str, Any], ...]

    def is_plain(self, config: OptimizerConfig) -> bool:
        """No override changed anything: Megatron's "no-override group", which comes first."""
        return (self.max_lr, self.min_lr, self.lr_mult, self.wd_mult, self.start_wd, self.end_wd, self.hyperparameters) == (
            config.lr,
            config.min_lr,
            1.0,
            1.0,
            None,
            None,
            (),
        )


def named_trainable_parameters(model_chunks: Sequence[torch.nn.Module]) -> List[Tuple[str, torch.nn.Parameter]]:
    """(qualified name, parameter) for every trainable parameter, in model order, each once."""
    seen: Dict[int, str] = {}
    names: Dict[str, int] = {}
    result = []
    for chunk in model_chunks:
        for name, param in chunk.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            name = _unwrap_name(name)
            if name in names:
                raise ConfigError(f"parameter name {name!r} appears in two model chunks; expected unique qualified names across chunks")
            seen[id(param)] = name
            names[name] = id(param)
            result.append((name, param))
    return result


def _unwrap_name(name: str) -> str:
    """Names are the identity: strip the wrapper prefix a DDP/``module`` wrapper adds."""
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def merge_overrides(
    param: torch.nn.Parameter, name: str, overrides: Mapping[ParamKey, ParamGroupOverride]
) -> Tuple[ParamGroupOverride, Dict[str, ParamKey]]:
    """Union of every matching override; two keys that set one field differently is an error."""
    merged: ParamGroupOverride = {}
    source: Dict[str, ParamKey] = {}
    for key, override in overrides.items():
        if not key.matches(param, name):
            continue
        for field_name, value in override.items():
            if field_name in merged and merged[field_name] != value:
                raise ConfigError(
                    f"parameter {name}: override {field_name}={value!r} from {key.describe()} conflicts with "
                    f"{field_name}={merged[field_name]!r} from {source[field_name].describe()}; expected matching keys to agree"
                )
            merged[field_name] = value
            source[field_name] = key
    return merged, source


def _settings_for(
    param: torch.nn.Parameter,
    name: str,
    config: OptimizerConfig,
    overrides: Mapping[ParamKey, ParamGroupOverride],
    default_routes: Mapping[ParamKey, ParamGroupOverride],
) -> GroupSettings:
    merged, _ = merge_overrides(param, name, overrides)
    optimizer = merged.get("optimizer")
    if optimizer is None:
        routed, _ = merge_overrides(param, name, default_routes)
        optimizer = routed.get("optimizer", config.emerging_name)
    max_lr = float(merged.get("max_lr", config.lr))
    min_lr = float(merged.get("min_lr", config.min_lr))
    if min_lr > max_lr:
        raise ConfigError(f"parameter {name}: min_lr={min_lr} is not allowed; expected a value <= max_lr ({max_lr})")
    table = _GROUP_KEYS.get(optimizer, {})
    hyper = tuple(sorted((k, float(v)) for k, v in merged.items() if k in HYPERPARAMETER_OVERRIDE_KEYS and k in table))
    return GroupSettings(
        optimizer=optimizer,
        max_lr=max_lr,
        min_lr=min_lr,
        lr_mult=float(merged.get("lr_mult", 1.0)),
        wd_mult=float(merged.get("wd_mult", 1.0)),
        start_wd=_opt_float(merged.get("start_wd")),
        end_wd=_opt_float(merged.get("end_wd")),
        is_decoupled_lr="max_lr" in merged and config.decoupled_lr is not None and merged["max_lr"] == config.decoupled_lr,
        default_config=not any("lr" in k for k in merged),
        hyperparameters=hyper,
    )


def _opt_float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def _group_dict(settings: GroupSettings, config: OptimizerConfig) -> Dict[str, Any]:
    group: Dict[str, Any] = {
        "params": [],
        "param_names": [],
        "optimizer": settings.optimizer,
        "lr": settings.max_lr * settings.lr_mult,
        "max_lr": settings.max_lr,
        "min_lr": settings.min_lr,
        "lr_mult": settings.lr_mult,
        "wd_mult": settings.wd_mult,
        "weight_decay": (settings.start_wd if settings.start_wd is not None else config.weight_decay) * settings.wd_mult,
        "is_decoupled_lr": settings.is_decoupled_lr,
        "default_config": settings.default_config,
    }
    if settings.start_wd is not None:
        group["start_wd"] = settings.start_wd
    if settings.end_wd is not None:
        group["end_wd"] = settings.end_wd
    table = _GROUP_KEYS.get(settings.optimizer, {})
    for key, value in settings.hyperparameters:
        group_key, index = table[key]
        if index is None:
            group[group_key] = value
        else:
            pair = list(group.get(group_key) or [getattr(config, f) for f in _DEFAULT_PAIR[group_key][settings.optimizer]])
            pair[index] = value
            group[group_key] = tuple(pair)
    return group


def build_param_groups(
    model_chunks: Sequence[torch.nn.Module],
    config: OptimizerConfig,
    overrides: Mapping[ParamKey, ParamGroupOverride],
    default_routes: Optional[Mapping[ParamKey, ParamGroupOverride]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups as torch-style dicts with our bookkeeping keys.

    ``overrides`` are the user's (or the standard ones); ``default_routes`` are an emerging
    optimizer's routing defaults (e.g. 1-D and embedding parameters → adam), which a user's
    ``optimizer`` override beats without conflict. Neither mapping is mutated.
    """
    if config.lr is None:
        raise ConfigError("lr=None is not allowed; expected a learning rate >= 0 (set --lr or OptimizerConfig.lr)")
    for key, override in overrides.items():
        if not isinstance(key, ParamKey):
            raise ConfigError(f"config_overrides key {key!r} is not allowed; expected a ParamKey")
        validate_override(key, override)
    default_routes = default_routes or {}
    groups: Dict[GroupSettings, Dict[str, Any]] = {}
    for name, param in named_trainable_parameters(model_chunks):
        settings = _settings_for(param, name, config, overrides, default_routes)
        group = groups.get(settings)
        if group is None:
            group = groups[settings] = _group_dict(settings, config)
        group["params"].append(param)
        group["param_names"].append(name)
    # Primary optimizer first; within an optimizer the plain group first, then model order.
    first_seen = {s: i for i, s in enumerate(groups)}
    optimizer_seen: Dict[str, int] = {}
    for s in groups:
        optimizer_seen.setdefault(s.optimizer, len(optimizer_seen))
    ordered = sorted(
        groups,
        key=lambda s: (s.optimizer != config.emerging_name, optimizer_seen[s.optimizer], not s.is_plain(config), first_seen[s]),
    )
    return [groups[s] for s in ordered]


def partition_by_optimizer(groups: Sequence[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """Groups bucketed by optimizer name, in first-appearance order (the primary optimizer first)."""
    buckets: Dict[str, List[Dict[str, Any]]] = {}
    for group in groups:
        buckets.setdefault(group["optimizer"], []).append(group)
    return buckets
