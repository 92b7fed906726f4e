"""Per-rank random-number-generator states as plain JSON (no pickles): python, numpy, torch CPU, CUDA."""

from __future__ import annotations

import base64
import random
from typing import Any, Dict

import torch

try:  # numpy is optional for the library
    import numpy as np
except ImportError:  # pragma: no cover - numpy is installed in every test environment
    np = None


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes() if np is not None else bytes(t.cpu().tolist())).decode("ascii")


def _from_b64(text: str) -> torch.Tensor:
    return torch.tensor(list(base64.b64decode(text.encode("ascii"))), dtype=torch.uint8)


def get_rng_state() -> Dict[str, Any]:
    version, internal, gauss = random.getstate()
    state: Dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "torch_cpu": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": [int(k) for k in keys], "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    torch.set_rng_state(_from_b64(state["torch_cpu"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            raise ValueError(f"{len(cuda)} CUDA RNG states saved, {torch.cuda.device_count()} devices now")
        torch.cuda.set_rng_state_all([_from_b64(s) for s in cuda])
    if np is not None and "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
