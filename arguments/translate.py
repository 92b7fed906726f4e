"""``config_from_args``: the validated Namespace → OptimizerConfig, field by field.

The dataclass is constructed (not patched), so its own validation runs; a ConfigError it raises is
prefixed with the flag that set the offending field, so the user knows what to change.
"""

from __future__ import annotations

import argparse
import functools
import math
from typing import Any, Dict

import torch

from megatron_opt.config import OptimizerConfig
from megatron_opt.errors import ConfigError

from arguments.field_map import FIELD_FOR_DEST
from arguments.flag_types import NAME_BY_DTYPE


def params_dtype_from_args(args: argparse.Namespace) -> torch.dtype:
    if args.bf16:
        return torch.bfloat16
    if args.fp16:
        return torch.float16
    return torch.float32


def config_values_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The keyword arguments for OptimizerConfig: mapped flags plus the derived fields."""
    values = {field: getattr(args, dest) for dest, field in FIELD_FOR_DEST.items()}
    values["params_dtype"] = params_dtype_from_args(args)
    values["use_layer_wise_distributed_optimizer"] = getattr(args, "use_layer_wise_distributed_optimizer", False)
    return values


@functools.lru_cache(maxsize=None)
def _flag_for_field() -> Dict[str, str]:
    from arguments.parser import build_parser  # the parser is only needed to name flags in messages

    flags: Dict[str, str] = {}
    for action in build_parser()._actions:
        if action.option_strings and FIELD_FOR_DEST.get(action.dest):
            flags.setdefault(FIELD_FOR_DEST[action.dest], action.option_strings[0])
    return flags


def config_from_args(args: argparse.Namespace) -> OptimizerConfig:
    """Build the OptimizerConfig for ``args`` (normally after ``validate_args``)."""
    try:
        return OptimizerConfig(**config_values_from_args(args))
    except ConfigError as exc:
        message = str(exc)
        for field, flag in _flag_for_field().items():
            if message.startswith(f"{field}="):
                raise ConfigError(f"{flag}: {message}") from None
        raise


def _plain(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return NAME_BY_DTYPE.get(value, str(value))
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return value
    return value


def config_as_dict(config: OptimizerConfig) -> Dict[str, Any]:
    """Plain values (dtype names, lists) so the config can be printed as YAML and fed back with --yaml-cfg."""
    return {field: _plain(getattr(config, field)) for field in config.__dataclass_fields__}
