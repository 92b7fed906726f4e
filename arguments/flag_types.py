"""argparse ``type=`` callables: each turns one command-line string into a checked value.

They raise ``argparse.ArgumentTypeError`` with "<value> is not allowed; expected <allowed>" so the
parser's one-line error names the flag, the value and what is allowed. The YAML loader reuses them;
those marked ``accepts_structured`` also take the already-parsed YAML object (a mapping, a list).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
import yaml

from megatron_opt.optimizer_names import LEGACY_DIST_PREFIX, emerging_optimizer_names, is_dotted_path, known_optimizer_names

DTYPE_BY_NAME: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAME_BY_DTYPE: Dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPE_BY_NAME.items()}


def _not_allowed(value: Any, allowed: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{value!r} is not allowed; expected {allowed}")


def optimizer_choices() -> Tuple[str, ...]:
    """Names --optimizer accepts besides a dotted path (the legacy dist_ spellings included)."""
    names = sorted(known_optimizer_names())
    return tuple(names) + tuple(LEGACY_DIST_PREFIX + n for n in sorted(emerging_optimizer_names()))


def optimizer_name(value: str) -> str:
    """A known optimizer, a legacy ``dist_<emerging>`` name, or a dotted class path (``torch.optim.RAdam``)."""
    if value in optimizer_choices() or is_dotted_path(value):
        return value
    raise _not_allowed(value, "one of " + ", ".join(optimizer_choices()) + " or a dotted class path like torch.optim.RAdam")


def positive_int(value: str) -> int:
    """An integer >= 1 (sizes, counts, intervals)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _not_allowed(value, "an integer >= 1") from None
    if number < 1:
        raise _not_allowed(number, "an integer >= 1")
    return number


def non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _not_allowed(value, "an integer >= 0") from None
    if number < 0:
        raise _not_allowed(number, "an integer >= 0")
    return number


def _parse_yaml_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise _not_allowed(value, "valid YAML or JSON") from None


def yaml_mapping(value: Any) -> Dict[str, Any]:
    """A YAML/JSON mapping string such as '{"betas": [0.9, 0.95]}' (or the mapping itself from a YAML file)."""
    parsed = _parse_yaml_text(value)
    if not isinstance(parsed, Mapping) or not all(isinstance(k, str) for k in parsed):
        raise _not_allowed(value, "a YAML/JSON mapping of keyword names to values, e.g. '{\"betas\": [0.9, 0.95]}'")
    return dict(parsed)


yaml_mapping.accepts_structured = True  # type: ignore[attr-defined]


def coefficient_triples(value: Any) -> List[List[float]]:
    """A YAML/JSON list of (a, b, c) triples such as '[[3.4445, -4.775, 2.0315]]'."""
    parsed = _parse_yaml_text(value)
    allowed = "a YAML/JSON list of [a, b, c] number triples, e.g. '[[3.4445, -4.775, 2.0315]]'"
    if not isinstance(parsed, Sequence) or isinstance(parsed, str) or not parsed:
        raise _not_allowed(value, allowed)
    triples = []
    for triple in parsed:
        if not isinstance(triple, Sequence) or isinstance(triple, str) or len(triple) != 3:
            raise _not_allowed(value, allowed)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in triple):
            raise _not_allowed(value, allowed)
        triples.append([float(x) for x in triple])
    return triples


coefficient_triples.accepts_structured = True  # type: ignore[attr-defined]


def dtype_flag(*allowed_names: str) -> Callable[[str], torch.dtype]:
    """A type that maps a short dtype name (fp32, bf16, fp16) to a torch.dtype, limited to ``allowed_names``."""

    def parse_dtype(value: str) -> torch.dtype:
        if value in allowed_names:
            return DTYPE_BY_NAME[value]
        raise _not_allowed(value, "one of " + ", ".join(allowed_names))

    parse_dtype.__name__ = "dtype"
    return parse_dtype
