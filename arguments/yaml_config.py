"""``--yaml-cfg FILE``: a flat YAML mapping of flag values, applied as parser defaults.

Keys may be spelled as flags (``muon-momentum``, ``muon-no-split-qkv``) or as fields / argparse
destinations (``muon_momentum``, ``muon_split_qkv``). Values go through the same type functions and
choices as the command line. Because they become *defaults*, a flag given on the command line
always wins over the file, and the file wins over the dataclass defaults.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import yaml

from megatron_opt.errors import ConfigError

from arguments.deprecations import DeprecatedStoreTrue, warn_deprecated_flag

_NOT_FROM_YAML = {"help", "yaml_cfg"}


@dataclass(frozen=True)
class _YamlKey:
    """How one YAML key maps onto an argparse action."""

    action: argparse.Action
    spelled_as_flag: bool
    flag: str


def read_yaml_file(path: str) -> Dict[str, Any]:
    """The file's top-level mapping ({} for an empty file); ConfigError if unreadable or not a mapping."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"--yaml-cfg={path!r} is not allowed; expected a readable file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"--yaml-cfg={path!r} is not allowed; expected valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"--yaml-cfg={path!r} is not allowed; expected a mapping of flag names to values at the top level")
    return dict(data)


def _key_index(parser: argparse.ArgumentParser) -> Dict[str, _YamlKey]:
    index: Dict[str, _YamlKey] = {}
    for action in parser._actions:  # argparse exposes no public list of actions
        if action.dest in _NOT_FROM_YAML:
            continue
        for option in action.option_strings:
            index[option.lstrip("-")] = _YamlKey(action, True, option)
        # The first action for a destination is the primary one (an alias comes later).
        index.setdefault(action.dest, _YamlKey(action, False, action.option_strings[0]))
    return index


def _convert_bool(key: str, path: str, entry: _YamlKey, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} in {path} is not allowed; expected true or false")
    if isinstance(entry.action, DeprecatedStoreTrue) and entry.spelled_as_flag:
        warn_deprecated_flag(entry.flag, entry.action.replacement)
    if entry.spelled_as_flag and entry.action.const is False:  # store_false flag: "muon-no-split-qkv: true"
        return not value
    return value


def _convert_one(key: str, path: str, action: argparse.Action, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} in {path} is not allowed; expected a value for {action.option_strings[0]}, not true/false")
    converter = action.type
    if converter is not None:
        structured = getattr(converter, "accepts_structured", False)
        try:
            value = converter(value if isinstance(value, str) or structured else str(value))
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{key} in {path}: {exc}") from None
        except (TypeError, ValueError):
            kind = {float: "a number", int: "an integer"}.get(converter, getattr(converter, "__name__", "a valid value"))
            raise ConfigError(f"{key}={value!r} in {path} is not allowed; expected {kind}") from None
    elif not isinstance(value, str):
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{key}={value!r} in {path} is not allowed; expected one of " + ", ".join(map(str, action.choices)))
    return value


def _convert(key: str, path: str, entry: _YamlKey, value: Any) -> Any:
    action = entry.action
    if action.nargs == 0:
        return _convert_bool(key, path, entry, value)
    if action.nargs in ("*", "+"):
        items = value if isinstance(value, list) else [value]
        return [_convert_one(key, path, action, item) for item in items]
    return _convert_one(key, path, action, value)


def yaml_defaults(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Read ``path`` and return {argparse dest: checked value} for ``parser.set_defaults``."""
    index = _key_index(parser)
    defaults: Dict[str, Any] = {}
    for key, value in read_yaml_file(path).items():
        entry: Optional[_YamlKey] = index.get(key) or index.get(key.replace("-", "_"))
        if entry is None:
            raise ConfigError(
                f"unknown key {key!r} in {path}; expected a flag name (e.g. muon-momentum) or a field name (e.g. muon_momentum), see --help"
            )
        defaults[entry.action.dest] = _convert(key, path, entry, value)
    return defaults
