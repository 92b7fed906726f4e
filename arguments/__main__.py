"""``python -m arguments [flags]``: parse and validate, then print the resolved OptimizerConfig as YAML.

Handy to check a command line before launching it. ``--world-size N`` (only here, default 1 or
$WORLD_SIZE) says how many ranks the launch will have, for the parallel-layout rules.
"""

from __future__ import annotations

import os
import sys
from typing import List

import yaml

from arguments.cli import cli_entry_point
from arguments.flag_types import positive_int
from arguments.parse import parse_and_validate
from arguments.parser import MegatronArgumentParser
from arguments.translate import config_as_dict


def _split_world_size(argv: List[str]) -> tuple:
    pre = MegatronArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--world-size", type=positive_int, default=int(os.environ.get("WORLD_SIZE", "1")))
    known, rest = pre.parse_known_args(argv)
    return known.world_size, rest


@cli_entry_point
def main(argv: List[str]) -> int:
    world_size, rest = _split_world_size(argv)
    _, config = parse_and_validate(rest, world_size)
    yaml.safe_dump(config_as_dict(config), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    main()
