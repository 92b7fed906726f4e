"""Command line (+ optional YAML file) → validated Namespace and OptimizerConfig."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional, Sequence, Tuple

from megatron_opt.config import OptimizerConfig

from arguments.parser import MegatronArgumentParser, build_parser
from arguments.translate import config_from_args
from arguments.validate import validate_args
from arguments.yaml_config import yaml_defaults


def _yaml_cfg_path(argv: Sequence[str]) -> Optional[str]:
    """Find --yaml-cfg without touching any other flag (so no other action runs twice)."""
    pre = MegatronArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--yaml-cfg", type=str, default=None)
    known, _ = pre.parse_known_args(list(argv))
    return known.yaml_cfg


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse flags; values from --yaml-cfg become defaults so explicit flags override them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    path = _yaml_cfg_path(argv)
    if path is not None:
        parser.set_defaults(**yaml_defaults(path, parser))
    return parser.parse_args(argv)


def parse_and_validate(argv: Optional[Sequence[str]], world_size: int) -> Tuple[argparse.Namespace, OptimizerConfig]:
    """parse_args → validate_args → config_from_args; any bad input raises ConfigError.

    Warnings (deprecated spellings) are held back until the whole command line is accepted, so a
    refused one prints exactly one line: the error.
    """
    with warnings.catch_warnings(record=True) as held:
        args = validate_args(parse_args(argv), world_size)
        config = config_from_args(args)
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return args, config
