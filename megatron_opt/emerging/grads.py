"""Where an optimizer reads a parameter's gradient from."""

from __future__ import annotations

from typing import Optional

import torch


def gradient_of(p: torch.Tensor) -> Optional[torch.Tensor]:
    """``main_grad`` (our DDP buffer) when the parameter has one, else ``grad``."""
    g = getattr(p, "main_grad", None)
    return g if g is not None else p.grad
