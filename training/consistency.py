"""Start-up check that every rank was given the same configuration.

Ranks launched with different flags or YAML files (a stale file on one node, a per-node wrapper
script, an environment variable read into a flag) otherwise hang in mismatched collectives or
train silently diverging replicas. Right after the process group exists, every rank hashes its
resolved arguments and ``OptimizerConfig``; one ``all_gather_object`` of the hashes decides, and
only on a mismatch are the field values gathered to name what differs and on which ranks.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from collections import defaultdict
from typing import Dict, List

import torch.distributed as dist

from megatron_opt.config import OptimizerConfig
from megatron_opt.errors import ConfigError

MAX_FIELDS_NAMED = 6
"""The error line names this many differing fields, then says how many more there are."""
NOT_COMPARED = frozenset({"yaml_cfg"})
"""The YAML file's *path* may differ per node (a node-local copy); its resolved values are compared."""


def resolved_fields(args: argparse.Namespace, config: OptimizerConfig) -> Dict[str, str]:
    """Every setting that must agree, as ``{name: repr(value)}``: ``--flag`` names, then ``config.field`` names."""
    fields = {"--" + name.replace("_", "-"): repr(value) for name, value in sorted(vars(args).items()) if name not in NOT_COMPARED}
    for f in dataclasses.fields(config):
        fields[f"config.{f.name}"] = repr(getattr(config, f.name))
    return fields


def fingerprint(fields: Dict[str, str]) -> str:
    return hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()


def _ranks(ranks: List[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ",".join(map(str, ranks))


def describe_disagreement(per_rank: List[Dict[str, str]]) -> str:
    """One line naming the differing fields and which ranks hold which value (``None`` if all agree)."""
    names = sorted(set().union(*per_rank))
    differing = [n for n in names if len({fields.get(n, "<unset>") for fields in per_rank}) > 1]
    flags = {n[2:].replace("-", "_") for n in differing if n.startswith("--")}
    # a config field built from a differing flag repeats it: name the flag only
    differing = [n for n in differing if not (n.startswith("config.") and n[len("config."):] in flags)] or differing
    if not differing:
        return ""
    parts = []
    for name in differing[:MAX_FIELDS_NAMED]:
        holders: Dict[str, List[int]] = defaultdict(list)
        for rank, fields in enumerate(per_rank):
            holders[fields.get(name, "<unset>")].append(rank)
        parts.append(f"{name}: " + ", ".join(f"{_ranks(r)} {v}" for v, r in sorted(holders.items(), key=lambda kv: kv[1][0])))
    more = f"; and {len(differing) - MAX_FIELDS_NAMED} more" if len(differing) > MAX_FIELDS_NAMED else ""
    return (f"ranks were started with different configurations ({'; '.join(parts)}{more}); "
            "expected every rank to get the same command line and YAML file")


def check_ranks_agree(args: argparse.Namespace, config: OptimizerConfig) -> None:
    """Collective over the default group; raises ConfigError (the same line on every rank) on a mismatch."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    fields = resolved_fields(args, config)
    hashes: List[str] = [""] * dist.get_world_size()
    dist.all_gather_object(hashes, fingerprint(fields))
    if len(set(hashes)) == 1:
        return
    per_rank: List[Dict[str, str]] = [{}] * dist.get_world_size()
    dist.all_gather_object(per_rank, fields)
    raise ConfigError(describe_disagreement(per_rank) or "ranks were started with different configurations")
