"""The skip-step decision made on device, so the update is queued before the host reads anything.

``MegatronOptimizer.step`` takes this path when ``skip_step_sigma`` is set and the params are on CUDA
(or ``skip_on_device`` forces it): the norm, the threshold / non-finite / rolling-window test
(``DeviceSkipStepDetector``), the agreement over ``skip_group``, clipping and the update all stay on
device, and the decision reaches a fused or our own inner optimizer as ``found_inf``. The host reads
the outcome once, at the end. A mixin rather than part of ``optimizer.py`` so that file keeps the
wrappers and their host-side step; it sits below ``optimizer.py`` and never imports it.
See docs/skip_step.md.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from megatron_opt.rank_agreement import any_rank_on_device
from megatron_opt.skip_step import DeviceSkipStepDetector

StepResult = Tuple[bool, Optional[float], Optional[float]]


class DeviceSkipStep:
    """Mixin for ``MegatronOptimizer``: the device-side skip-step path of ``step()``.

    It reads what the wrapper already has: ``config``, ``grad_stats``, ``skip_detector``,
    ``_latest_loss``, ``get_parameters``, ``get_grad_norm_tensor``, ``_clip_grads_to_tensor``,
    ``count_zeros``, ``_logs_num_zeros``, ``_inner_optimizers`` and ``step_with_ready_grads``.
    """

    skip_on_device: Optional[bool] = None
    """skip_step_sigma decided on device (DeviceSkipStepDetector): None = when the params are on CUDA;
    True/False forces it (the tests force True on CPU). See docs/skip_step.md."""

    def _skip_decided_on_device(self) -> bool:
        if self.skip_detector is None:
            return False
        if self.skip_on_device is not None:
            return self.skip_on_device
        params = self.get_parameters()
        return bool(params) and params[0].is_cuda

    def _step_with_device_decision(self) -> Tuple[torch.Tensor, torch.Tensor, Optional[float]]:
        """Norm, non-finite / threshold / rolling-window test, clipping and the update, without a host read
        when every inner optimizer takes a device-side skip (``found_inf``: torch's fused Adam/AdamW/SGD, our
        Muon family, Lion, SOAP); otherwise one read of the decision before the update. Returns (updated,
        grad_norm) as tensors; ``_finish_device_step`` reads them."""
        grad_norm = self.get_grad_norm_tensor()
        norm64 = grad_norm.to(torch.float64)
        rejected = ~torch.isfinite(norm64) | (norm64 > self.config.grad_norm_skip_threshold)
        loss, self._latest_loss = self._latest_loss, None
        loss_t = None if loss is None else torch.tensor(loss, dtype=torch.float64).to(grad_norm.device, non_blocking=True)
        skip = self._device_skip_detector(grad_norm.device).should_skip(loss_t, norm64, rejected)
        skip = any_rank_on_device(skip, self.grad_stats.skip_group)
        self._clip_grads_to_tensor(grad_norm)
        num_zeros = self.count_zeros() if self._logs_num_zeros() else None  # count_zeros reads back (logging)
        inner = self._inner_optimizers()
        if inner and all(getattr(o, "_step_supports_amp_scaling", False) for o in inner):
            found_inf = skip.to(torch.float32)
            for o in inner:
                o.found_inf, o.grad_scale = found_inf, None
            try:
                self.step_with_ready_grads()
            finally:
                for o in inner:
                    o.found_inf = None
            return ~skip, grad_norm, num_zeros
        if bool(skip):  # this inner optimizer cannot skip on device: one host read of the decision
            return torch.zeros((), dtype=torch.bool), grad_norm, num_zeros
        return torch.tensor(bool(self.step_with_ready_grads())), grad_norm, num_zeros

    def _finish_device_step(self, updated: torch.Tensor, grad_norm: torch.Tensor, num_zeros: Optional[float]) -> StepResult:
        """The host reads the result, after the update is queued, and tells the inner optimizers that keep a
        host-side step count (SOAP: ``note_step_outcome``) how the step they were handed ended."""
        accepted = bool(updated)
        for o in self._inner_optimizers():
            if hasattr(o, "note_step_outcome"):
                o.note_step_outcome(skipped=not accepted)
        return accepted, float(grad_norm), num_zeros

    def _device_skip_detector(self, device: torch.device) -> DeviceSkipStepDetector:
        """Replaces the float detector on first use, carrying its window over."""
        if not isinstance(self.skip_detector, DeviceSkipStepDetector):
            float_state = self.skip_detector.state_dict()
            self.skip_detector = DeviceSkipStepDetector(self.skip_detector.sigma, self.skip_detector.window,
                                                        self.skip_detector.min_history, device)
            self.skip_detector.load_state_dict(float_state)
        return self.skip_detector
