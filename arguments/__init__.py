"""Megatron-LM command-line flags and YAML configs → megatron_opt's OptimizerConfig.

This package only translates: it parses, checks cross-flag rules and builds the config. It never
touches torch.distributed or builds a model, and megatron_opt never imports it.
"""

from arguments.cli import cli_entry_point, run_cli
from arguments.defaults import config_default
from arguments.field_map import FIELD_FOR_DEST
from arguments.parse import parse_and_validate, parse_args
from arguments.parser import build_parser
from arguments.translate import config_as_dict, config_from_args
from arguments.validate import validate_args
from arguments.yaml_config import yaml_defaults

__all__ = [
    "FIELD_FOR_DEST",
    "build_parser",
    "cli_entry_point",
    "config_as_dict",
    "config_default",
    "config_from_args",
    "parse_and_validate",
    "parse_args",
    "run_cli",
    "validate_args",
    "yaml_defaults",
]
