"""Optimizer state by parameter name: the protocol between optimizers and the checkpoint code.

Every optimizer is seen as ``{param name: {state key: tensor}}``. A tensor is either in the
parameter's LOCAL shape on this rank (its tensor-parallel shard; the checkpoint code turns it into
the global shape) or a 0-d scalar (e.g. Adam's ``step``). Mixed-precision wrappers add their fp32
copy of the parameter under the key ``main_param``.

``FP32Optimizer``, ``Float16Optimizer`` and ``ChainedOptimizer`` are handled here from their
``param_groups`` (``params`` and ``param_names`` in the same order). Any other optimizer — e.g. a
ZeRO optimizer whose state is sharded over data-parallel ranks by flat ranges — plugs in by
implementing :class:`ShardedStateOptimizer`:

* ``sharded_named_state()`` returns the mapping above with full local-shape tensors (a ZeRO
  optimizer gathers its ranges over DP; the checkpoint deduplicates DP replicas). On save they are
  written; on load the SAME call is made after ``init_state()`` and DCP fills the returned
  tensors in place, so they must be buffers the optimizer will read back (or fresh buffers).
* ``load_sharded_named_state(named_state)`` is then called with those filled tensors; it copies
  them into the optimizer (a ZeRO optimizer scatters each to its own flat range and refreshes
  its model-parameter copies).
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, List, Mapping, Optional, Protocol, Tuple, runtime_checkable

import torch

NamedState = Dict[str, Dict[str, torch.Tensor]]
MAIN_PARAM_KEY = "main_param"


@runtime_checkable
class ShardedStateOptimizer(Protocol):
    def sharded_named_state(self) -> NamedState: ...

    def load_sharded_named_state(self, named_state: NamedState) -> None: ...


def leaf_optimizers(optimizer: Any) -> List[Any]:
    """The wrappers that own state: a ChainedOptimizer's children (recursively), else the optimizer."""
    children = getattr(optimizer, "chained_optimizers", None)
    if children is None or isinstance(optimizer, ShardedStateOptimizer):
        return [optimizer]
    return [leaf for child in children for leaf in leaf_optimizers(child)]


def _named_params(leaf: Any) -> List[Tuple[str, torch.Tensor, Dict[str, Any], Optional[torch.Tensor]]]:
    """(name, optimizer param, its group, model param when the optimizer param is an fp32 main copy)."""
    out = []
    model_groups = getattr(leaf, "model_param_groups", None)
    for gi, group in enumerate(leaf.param_groups):
        names = group.get("param_names")
        if names is None or len(names) != len(group["params"]):
            raise ValueError(f"param group {gi} of {type(leaf).__name__} has no 'param_names' aligned with 'params'")
        for pi, (name, p) in enumerate(zip(names, group["params"])):
            model_p = model_groups[gi][pi] if model_groups is not None and gi < len(model_groups) else None
            out.append((name, p, group, model_p if model_p is not None and model_p is not p else None))
    return out


def _as_tensor(value: Any) -> Optional[torch.Tensor]:
    if torch.is_tensor(value):
        return value.detach()
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return torch.tensor(int(value), dtype=torch.int64)
    if isinstance(value, numbers.Real):
        return torch.tensor(float(value), dtype=torch.float64)
    return None


def state_kind(value: Any) -> Optional[str]:
    """How a state value is stored: 'tensor', 'int', 'float', or None (not checkpointed)."""
    if torch.is_tensor(value):
        return "tensor"
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    return None


def named_optimizer_state(optimizer: Any) -> NamedState:
    """``{param name: {state key: tensor}}`` for any of our optimizers (live tensors, no copies).

    Python-number state values become 0-d tensors (copies); everything else is the optimizer's own
    tensor, so loading into the returned mapping loads into the optimizer.
    """
    out: NamedState = {}
    for leaf in leaf_optimizers(optimizer):
        part = leaf.sharded_named_state() if isinstance(leaf, ShardedStateOptimizer) else _plain_named_state(leaf)
        for name, entry in part.items():
            if name in out:
                raise ValueError(f"parameter {name} appears in two optimizers")
            out[name] = entry
    return out


def _plain_named_state(leaf: Any) -> NamedState:
    out: NamedState = {}
    state = leaf.state
    for name, p, _, model_p in _named_params(leaf):
        entry: Dict[str, torch.Tensor] = {}
        for key, value in (state[p].items() if p in state else ()):
            t = _as_tensor(value)
            if t is not None:
                entry[key] = t
        if model_p is not None:
            entry[MAIN_PARAM_KEY] = p.detach()
        out[name] = entry
    return out


def algorithm_name(leaf: Any) -> str:
    """The class of the torch optimizer doing the math under any of our wrappers.

    A checkpoint records this name, not the wrapper's, so a ZeRO / layer-wise checkpoint and a plain
    one of the same algorithm are interchangeable (the wrappers differ only in where state lives).
    """
    inner = getattr(leaf, "optimizer", None)
    return type(inner).__name__ if inner is not None else type(leaf).__name__


def optimizer_summary(optimizer: Any) -> Dict[str, Dict[str, Any]]:
    """JSON-safe facts per parameter name: optimizer class, state keys and kinds, group settings."""
    out: Dict[str, Dict[str, Any]] = {}
    for leaf in leaf_optimizers(optimizer):
        cls = algorithm_name(leaf)
        if isinstance(leaf, ShardedStateOptimizer):
            # a sharded optimizer's groups hold only what this rank owns: other ranks name the rest
            groups = {n: _json_group(g) for g in leaf.param_groups for n in (g.get("param_names") or ())}
            for name, entry in leaf.sharded_named_state().items():
                out[name] = {"optimizer": cls, "state": {k: "tensor" for k in entry if k != MAIN_PARAM_KEY},
                             "main_param": MAIN_PARAM_KEY in entry, "group": groups.get(name, {})}
            continue
        state = leaf.state
        for name, p, group, model_p in _named_params(leaf):
            kinds = {}
            for key, value in (state[p].items() if p in state else ()):
                kind = state_kind(value)
                if kind is not None:
                    kinds[key] = kind
            out[name] = {"optimizer": cls, "state": kinds, "main_param": model_p is not None, "group": _json_group(group)}
    return out


def merge_summaries(parts: List[Optional[Dict[str, Dict[str, Any]]]]) -> Dict[str, Dict[str, Any]]:
    """One summary from every rank's: a parameter's group settings come from a rank that owns it."""
    merged: Dict[str, Dict[str, Any]] = {}
    for part in parts:
        for name, entry in (part or {}).items():
            if name not in merged or (entry["group"] and not merged[name]["group"]):
                merged[name] = entry
    return merged


def _json_group(group: Mapping[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in group.items():
        if key in ("params", "param_names"):
            continue
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            out[key] = list(value)
    return out


def create_missing_state(optimizer: Any, saved: Mapping[str, Mapping[str, Tuple[str, torch.Size, torch.dtype]]],
                         local_shape_of) -> None:
    """Give lazily-initialised optimizers (torch Adam/SGD before their first step) state to load into.

    ``saved``: per parameter name, ``{state key: (kind, local shape, dtype)}`` as found in the
    checkpoint. A key the optimizer does not hold yet is created as zeros of that shape and dtype
    on the parameter's device — except ``step``, which torch keeps on the CPU unless the group is
    ``fused`` or ``capturable``. Python-number state is created as a number and stays one.
    Only plain wrappers are touched; protocol optimizers create their state in ``init_state()``.
    """
    for leaf in leaf_optimizers(optimizer):
        if isinstance(leaf, ShardedStateOptimizer) or getattr(leaf, "optimizer", None) is None:
            continue
        inner_state = leaf.optimizer.state
        for name, p, group, _ in _named_params(leaf):
            wanted = saved.get(name)
            if not wanted:
                continue
            st = inner_state[p]
            for key, (kind, shape, dtype) in wanted.items():
                if key in st:
                    continue
                if kind == "int":
                    st[key] = 0
                elif kind == "float":
                    st[key] = 0.0
                else:
                    on_param = key != "step" or group.get("fused") or group.get("capturable")
                    device = p.device if on_param else torch.device("cpu")
                    st[key] = torch.zeros(tuple(local_shape_of(name, key, shape)), dtype=dtype, device=device)


def load_named_optimizer_state(optimizer: Any, loaded: NamedState) -> None:
    """Hand state filled in place by DCP back to the optimizers (numbers converted back)."""
    for leaf in leaf_optimizers(optimizer):
        if isinstance(leaf, ShardedStateOptimizer):
            names = set(leaf.sharded_named_state())
            leaf.load_sharded_named_state({n: loaded[n] for n in names if n in loaded})
            continue
        state = leaf.state
        for name, p, _, model_p in _named_params(leaf):
            entry = loaded.get(name, {})
            st = state[p] if p in state else {}
            for key, tensor in entry.items():
                if key == MAIN_PARAM_KEY:
                    continue  # loaded in place into the main param itself
                current = st.get(key)
                if torch.is_tensor(current):
                    if current.data_ptr() != tensor.data_ptr():
                        with torch.no_grad():
                            current.copy_(tensor)
                elif isinstance(current, bool):
                    continue
                elif isinstance(current, numbers.Integral):
                    st[key] = int(tensor.item())
                elif isinstance(current, numbers.Real):
                    st[key] = float(tensor.item())
