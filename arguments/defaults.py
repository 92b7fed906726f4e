"""Read OptimizerConfig's defaults and field docstrings, so the CLI never restates them.

Megatron-LM writes its CLI defaults by hand and they drift (``--muon-momentum`` 0.9 on the CLI,
0.95 in the config). Here every flag that sets a config field asks this module for the default.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Any, Dict

from megatron_opt.config import OptimizerConfig


@functools.lru_cache(maxsize=None)
def _config_fields() -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(OptimizerConfig)}


def config_field_names() -> tuple:
    """Every OptimizerConfig field, in declaration order."""
    return tuple(_config_fields())


def config_default(field_name: str) -> Any:
    """The dataclass default of one OptimizerConfig field (KeyError for an unknown name)."""
    field = _config_fields()[field_name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    raise KeyError(f"OptimizerConfig.{field_name} has no default")


@functools.lru_cache(maxsize=None)
def _field_docstrings() -> Dict[str, str]:
    """The string literal under each field in config.py (attribute docstrings are not kept at runtime)."""
    try:
        source = textwrap.dedent(inspect.getsource(OptimizerConfig))
    except (OSError, TypeError):
        return {}
    class_node = ast.parse(source).body[0]
    docs: Dict[str, str] = {}
    previous_field = None
    for node in getattr(class_node, "body", []):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            previous_field = node.target.id
            continue
        if previous_field and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            docs[previous_field] = " ".join(node.value.value.split())
        previous_field = None
    return docs


def config_field_doc(field_name: str) -> str:
    """One-line description of a field, taken from its docstring in config.py ('' if unavailable)."""
    return _field_docstrings().get(field_name, "")
