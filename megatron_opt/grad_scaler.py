"""Loss scaling for fp16 training: a constant scale, or a dynamic one that backs off on overflow.

The scale lives on the accelerator as a 1-element fp32 tensor so that ``loss * scale`` and the
fused unscale kernel never synchronise with the host. The dynamic rule follows Megatron-LM, so a
run resumed from a Megatron checkpoint continues with the same scale trajectory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, Optional

import torch

from megatron_opt.config import OptimizerConfig
from megatron_opt.errors import config_error
from megatron_opt.parallel import default_device


class MegatronGradScaler(ABC):
    """A loss scale and its reciprocal; subclasses decide how the scale evolves."""

    def __init__(self, initial_scale: float, device: Optional[torch.device] = None) -> None:
        if not initial_scale > 0:
            raise config_error("initial_scale", initial_scale, "a number > 0")
        self.device = torch.device(device) if device is not None else default_device()
        self._scale = torch.tensor([float(initial_scale)], dtype=torch.float32, device=self.device)

    @property
    def scale(self) -> torch.Tensor:
        return self._scale

    @property
    def inv_scale(self) -> torch.Tensor:
        # The reciprocal is taken in double so 1/2**k stays exact before rounding to fp32.
        return self._scale.double().reciprocal().float()

    @abstractmethod
    def update(self, found_inf: bool) -> None:
        """Advance the scale after a step that did (or did not) overflow."""

    @abstractmethod
    def state_dict(self) -> Dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None: ...


class ConstantGradScaler(MegatronGradScaler):
    """A fixed scale (``--loss-scale``): nothing to update, nothing to save."""

    def update(self, found_inf: bool) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        pass


class DynamicGradScaler(MegatronGradScaler):
    """Back off after ``hysteresis`` overflows, grow after ``growth_interval`` clean steps in a row.

    On an overflow the clean-step counter restarts and the hysteresis budget shrinks by one; once
    the budget is used up every further overflow multiplies the scale by ``backoff_factor`` (never
    below ``min_scale``). A full window of clean steps multiplies it by ``growth_factor`` and
    refills the budget.
    """

    def __init__(
        self,
        initial_scale: float,
        min_scale: float,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 1000,
        hysteresis: int = 2,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(initial_scale, device)
        if not 0 < min_scale <= initial_scale:
            raise config_error("min_scale", min_scale, f"a number in (0, initial_scale={initial_scale}]")
        if not growth_factor > 1.0:
            raise config_error("growth_factor", growth_factor, "a number > 1")
        if not 0.0 < backoff_factor < 1.0:
            raise config_error("backoff_factor", backoff_factor, "a number in (0, 1)")
        if int(growth_interval) < 1:
            raise config_error("growth_interval", growth_interval, "an integer >= 1")
        if int(hysteresis) < 1:
            raise config_error("hysteresis", hysteresis, "an integer >= 1")
        self.min_scale = torch.tensor([float(min_scale)], dtype=torch.float32, device=self.device)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.hysteresis = int(hysteresis)
        self._growth_tracker = 0
        self._hysteresis_tracker = self.hysteresis

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self._growth_tracker = 0
            self._hysteresis_tracker -= 1
            if self._hysteresis_tracker <= 0:
                self._scale = torch.max(self._scale * self.backoff_factor, self.min_scale)
            return
        self._growth_tracker += 1
        if self._growth_tracker == self.growth_interval:
            self._growth_tracker = 0
            self._hysteresis_tracker = self.hysteresis
            self._scale = self._scale * self.growth_factor

    def state_dict(self) -> Dict[str, Any]:
        return {
            "scale": self._scale.detach().clone(),
            "growth_tracker": self._growth_tracker,
            "hysteresis_tracker": self._hysteresis_tracker,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        scale = torch.as_tensor(state_dict["scale"], dtype=torch.float32).reshape(1)
        self._scale = scale.to(self.device).clone()
        self._growth_tracker = int(state_dict["growth_tracker"])
        self._hysteresis_tracker = int(state_dict["hysteresis_tracker"])


def build_grad_scaler(config: OptimizerConfig, device: Optional[torch.device] = None) -> Optional[MegatronGradScaler]:
    """Constant scale when ``loss_scale`` is set, dynamic for fp16, none otherwise (bf16/fp32)."""
    if config.loss_scale is not None:
        return ConstantGradScaler(config.loss_scale, device)
    if config.fp16:
        return DynamicGradScaler(
            initial_scale=config.initial_loss_scale,
            min_scale=config.min_loss_scale,
            growth_factor=2.0,
            backoff_factor=0.5,
            growth_interval=int(config.loss_scale_window),
            hysteresis=config.hysteresis,
            device=device,
        )
    return None
