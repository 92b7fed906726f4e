"""Rolling-window spike detection: skip a step whose loss or grad norm is an outlier.

A step is skipped when its loss or its gradient norm is more than ``sigma`` standard deviations
above the mean of the last ``window`` accepted steps (OLMo-core's skip-step idea). Skipped values
do not enter the window, so one spike cannot widen the band for the next. Nothing is decided until
``min_history`` accepted steps have been seen.

Two implementations of the same rule: ``SkipStepDetector`` on host floats (the reduced loss and grad
norm the step already has as floats; ``math.fsum``) and ``DeviceSkipStepDetector`` on device tensors
(ring buffers, fp64 tensor sums, a 0-d bool decision, no host sync). See docs/skip_step.md.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, List, Optional

import torch


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


# ---- the same test on device tensors (no host sync) ---------------------------------------------


class DeviceRollingStat:
    """The window as a ring buffer tensor (fp64) on the values' device; every test is a tensor op.

    Holds the same multiset of values as RollingStat (the last ``window`` accepted values); sums are
    in fp64 but not exactly rounded like ``math.fsum``, so a value within ~1e-15 relative of the band
    edge could be decided differently — nothing else differs.
    """

    def __init__(self, window: int, device: torch.device) -> None:
        self.window = window
        self.values = torch.zeros(window, dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        """Accepted values so far (not capped); the next write goes to ``count % window``."""

    def is_outlier(self, value: torch.Tensor, sigma: float, min_history: int) -> torch.Tensor:
        n = self.count.clamp(max=self.window)
        filled = torch.arange(self.window, device=self.values.device) < n
        n_f = n.to(torch.float64)
        mean = torch.where(filled, self.values, 0.0).sum() / n_f.clamp(min=1.0)
        var = torch.where(filled, (self.values - mean) ** 2, 0.0).sum() / (n_f - 1.0).clamp(min=1.0)
        return (n >= min_history) & (value > mean + sigma * var.sqrt())

    def add_where(self, value: torch.Tensor, keep: torch.Tensor) -> None:
        """Append ``value`` where ``keep`` (a 0-d bool tensor); otherwise leave the window as it is."""
        slot = (self.count % self.window).view(1)
        old = self.values.gather(0, slot)
        self.values.scatter_(0, slot, torch.where(keep, value.view(1), old))
        self.count += keep.to(torch.int64)

    def ordered_values(self) -> List[float]:
        """The window oldest first, as RollingStat holds it (a host sync: checkpoints only)."""
        count = int(self.count)
        n = min(count, self.window)
        start = count % self.window if count > self.window else 0
        values = self.values.tolist()
        return [values[(start + i) % self.window] for i in range(n)]

    def load_values(self, values: List[float]) -> None:
        values = list(values)[-self.window:]
        self.values.zero_()
        if values:
            self.values[: len(values)] = torch.tensor(values, dtype=torch.float64)
        self.count.fill_(len(values))


class DeviceSkipStepDetector:
    """SkipStepDetector's rule with the windows, the statistics and the decision on device.

    ``should_skip`` returns a 0-d bool tensor and never reads a value back to the host, so a wrapper
    can hand the decision to a fused optimizer kernel (``found_inf``) without waiting for the GPU.
    ``already_skipped`` (e.g. a non-finite norm) skips without consulting or counting the window, as the
    float path's short-circuit does. ``state_dict`` is the float detector's format (it syncs).
    """

    def __init__(self, sigma: float, window: int = 128, min_history: int = 10, device: torch.device = torch.device("cpu")) -> None:
        self.sigma = sigma
        self.window = window
        self.min_history = min_history
        self.loss = DeviceRollingStat(window, device)
        self.grad_norm = DeviceRollingStat(window, device)
        self.num_skipped_tensor = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def num_skipped(self) -> int:
        return int(self.num_skipped_tensor)

    def should_skip(self, loss: Optional[torch.Tensor], grad_norm: torch.Tensor,
                    already_skipped: Optional[torch.Tensor] = None) -> torch.Tensor:
        grad_norm = grad_norm.to(torch.float64)
        spike = self.grad_norm.is_outlier(grad_norm, self.sigma, self.min_history)
        if loss is not None:
            loss = loss.to(torch.float64)
            spike = spike | ~torch.isfinite(loss) | self.loss.is_outlier(loss, self.sigma, self.min_history)
        if already_skipped is not None:
            spike = spike & ~already_skipped
            keep = ~(spike | already_skipped)
        else:
            keep = ~spike
        if loss is not None:
            self.loss.add_where(loss, keep)
        self.grad_norm.add_where(grad_norm, keep)
        self.num_skipped_tensor += spike.to(torch.int64)
        return spike if already_skipped is None else spike | already_skipped

    def state_dict(self) -> dict:
        return {"loss": self.loss.ordered_values(), "grad_norm": self.grad_norm.ordered_values(), "num_skipped": self.num_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_values(state["loss"])
        self.grad_norm.load_values(state["grad_norm"])
        self.num_skipped_tensor.fill_(int(state["num_skipped"]))
