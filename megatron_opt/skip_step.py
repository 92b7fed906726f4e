"""Rolling-window spike detection: skip a step whose loss or grad norm is an outlier.

A step is skipped when its loss or its gradient norm is more than ``sigma`` standard deviations
above the mean of the last ``window`` accepted steps (OLMo-core's skip-step idea). Skipped values
do not enter the window, so one spike cannot widen the band for the next. Nothing is decided until
``min_history`` accepted steps have been seen.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Optional


@dataclass
class RollingStat:
    window: int
    values: Deque[float] = field(default_factory=deque)

    def is_outlier(self, value: float, sigma: float, min_history: int) -> bool:
        if len(self.values) < min_history:
            return False
        n = len(self.values)
        mean = math.fsum(self.values) / n
        var = math.fsum((v - mean) ** 2 for v in self.values) / (n - 1)
        return value > mean + sigma * math.sqrt(var)

    def add(self, value: float) -> None:
        self.values.append(value)
        while len(self.values) > self.window:
            self.values.popleft()


@dataclass
class SkipStepDetector:
    """Decides per step from (loss, grad_norm); every rank sees the same reduced values."""

    sigma: float
    window: int = 128
    min_history: int = 10
    loss: RollingStat = field(init=False)
    grad_norm: RollingStat = field(init=False)
    num_skipped: int = 0

    def __post_init__(self) -> None:
        self.loss = RollingStat(self.window)
        self.grad_norm = RollingStat(self.window)

    def should_skip(self, loss: Optional[float], grad_norm: float) -> bool:
        """True to skip; otherwise the values join the window."""
        loss_spike = loss is not None and (not math.isfinite(loss) or self.loss.is_outlier(loss, self.sigma, self.min_history))
        norm_spike = self.grad_norm.is_outlier(grad_norm, self.sigma, self.min_history)
        if loss_spike or norm_spike:
            self.num_skipped += 1
            return True
        if loss is not None:
            self.loss.add(loss)
        self.grad_norm.add(grad_norm)
        return False

    def state_dict(self) -> dict:
        return {"loss": list(self.loss.values), "grad_norm": list(self.grad_norm.values), "num_skipped": self.num_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.loss.values = deque(float(v) for v in state["loss"])
        self.grad_norm.values = deque(float(v) for v in state["grad_norm"])
        self.num_skipped = int(state["num_skipped"])
