"""Wrappers that give every inner ``torch.optim.Optimizer`` Megatron's step protocol.

``step()`` always runs the same sequence, written once in ``MegatronOptimizer``::

    prepare_grads (move grads into place, unscale, detect inf)  → on inf: (False, None, None)
    global grad norm (always computed, always a float)          → above the skip threshold: no update
    clip with that norm (when config.clip_grad > 0) → count zeros (when logged) → step_with_ready_grads

Subclasses only decide where gradients come from and where the updated values go:
``FP32Optimizer`` (fp32 model params), ``Float16Optimizer`` (bf16/fp16 model params with fp32 main
params and an optional loss scaler), and ``ChainedOptimizer`` (several optimizers that must share
one global norm and one clipping decision).

With ``skip_step_sigma`` on CUDA params the decision is made on device instead (``DeviceSkipStep``
in ``device_skip_step.py``, shared by every wrapper, ``ChainedOptimizer`` included).
"""

from __future__ import annotations

import math

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

from megatron_opt.clip_grads import (
    clip_grad_by_total_norm_fp32,
    clip_grad_by_total_norm_tensor,
    count_zeros_fp32,
    get_grad_norm_fp32,
    grad_norm_fp32_tensor,
    grad_norm_power_fp32,
    norm_from_powers,
    param_is_not_shared,
    param_is_not_tensor_parallel_duplicate,
)
from megatron_opt.config import OptimizerConfig
from megatron_opt.device_skip_step import DeviceSkipStep, StepResult
from megatron_opt.grad_scaler import MegatronGradScaler
from megatron_opt.parallel import ProcessGroup, all_reduce, default_device
from megatron_opt.rank_agreement import any_rank
from megatron_opt.skip_step import SkipStepDetector

InitStateFn = Callable[[torch.optim.Optimizer], None]

# Attributes through which a parameter describes itself; a main-param clone must carry them all.
PARAM_ATTRIBUTES = (
    "tensor_model_parallel",
    "partition_dim",
    "partition_stride",
    "is_qkv",
    "qkv_split_shapes",
    "is_embedding_or_output",
    "is_embedding_or_output_parameter",
    "shared",
    "sequence_parallel",
    "use_muon",
)
# Per-step bookkeeping the DDP keeps on model params; stale on a clone, so never copied.
_NOT_COPIED = frozenset({"main_grad", "grad_added_to_main_grad"})
_PLAIN_TYPES = (bool, int, float, str, tuple)


@dataclass(frozen=True)
class GradStatsGroups:
    """Where gradient statistics are reduced.

    ``reduce_group``: grad norm², zero counts and found-inf are reduced over it (the model-parallel
    group for a plain optimizer). ``tp_group``: decides which replicated params are TP duplicates.
    ``skip_group``: where the skip decision (found-inf, non-finite norm) is agreed, when
    ``reduce_group`` does not already span the data-parallel replicas (a plain optimizer reduces over
    mp only, so a NaN that reaches one replica's reduced gradient would otherwise skip there and
    step everywhere else). ``None`` means a group of one.
    """

    reduce_group: ProcessGroup = None
    tp_group: ProcessGroup = None
    skip_group: ProcessGroup = None


def _zero_grads(params: Sequence[torch.Tensor], set_to_none: bool) -> None:
    for p in params:
        if p.grad is None:
            continue
        if set_to_none:
            p.grad = None
        else:
            if p.grad.grad_fn is not None:
                p.grad.detach_()
            else:
                p.grad.requires_grad_(False)
            p.grad.zero_()


def _unscale_and_find_inf(grads: List[torch.Tensor], grad_scaler: MegatronGradScaler, group: ProcessGroup) -> bool:
    """Divide ``grads`` by the loss scale in place; True when any rank of ``group`` saw inf/nan."""
    found_inf = torch.zeros(1, dtype=torch.float32, device=grad_scaler.device)
    if grads:
        inv_scale = grad_scaler.inv_scale
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
    all_reduce(found_inf, group, dist.ReduceOp.MAX)
    return bool(found_inf.item() > 0)


class MegatronOptimizer(DeviceSkipStep, ABC):
    """The step protocol shared by every wrapper; ``optimizer=None`` is a rank with no parameters.

    ``skip_on_device`` and the device-side skip-step path come from ``DeviceSkipStep``.
    """

    def __init__(
        self,
        optimizer: Optional[torch.optim.Optimizer],
        config: OptimizerConfig,
        grad_stats: GradStatsGroups = GradStatsGroups(),
        init_state_fn: Optional[InitStateFn] = None,
    ) -> None:
        self.optimizer = optimizer
        self.config = config
        self.grad_stats = grad_stats
        self.init_state_fn = init_state_fn
        self.grad_scaler: Optional[MegatronGradScaler] = None
        self._unit_loss_scale: Optional[torch.Tensor] = None
        self.skip_detector: Optional[SkipStepDetector] = (
            SkipStepDetector(config.skip_step_sigma, config.skip_step_window) if config.skip_step_sigma is not None else None
        )
        self._latest_loss: Optional[float] = None

    def observe_loss(self, loss: Any) -> None:
        """Give the step the reduced loss of this iteration (used by ``skip_step_sigma``)."""
        self._latest_loss = float(loss)

    # ---- parameters and gradients ---------------------------------------------------------------

    def get_parameters(self) -> List[torch.nn.Parameter]:
        """The parameters the inner optimizer updates (fp32 main params for mixed precision)."""
        if self.optimizer is None:
            return []
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _all_grads(self) -> List[torch.Tensor]:
        return [p.grad for p in self.get_parameters() if p.grad is not None]

    def get_grads_for_norm(self) -> List[torch.Tensor]:
        """Grads that count towards the norm: not tied copies, not TP duplicates."""
        tp_group = self.grad_stats.tp_group
        return [
            p.grad
            for p in self.get_parameters()
            if p.grad is not None and param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p, tp_group)
        ]

    def _grad_norm_power(self) -> float:
        """Σ grad² reduced over this optimizer's own group (for containers mixing groups)."""
        return grad_norm_power_fp32(self.get_grads_for_norm(), 2.0, self.grad_stats.reduce_group)

    def get_grad_norm(self) -> float:
        return get_grad_norm_fp32(self.get_grads_for_norm(), 2.0, self.grad_stats.reduce_group)

    def get_grad_norm_tensor(self) -> torch.Tensor:
        """The same norm as a 0-d fp32 tensor on the grads' device (no host read)."""
        return grad_norm_fp32_tensor(self.get_grads_for_norm(), 2.0, self.grad_stats.reduce_group)

    def _clip_grads_to_tensor(self, grad_norm: torch.Tensor) -> None:
        if self.config.clip_grad > 0.0:
            clip_grad_by_total_norm_tensor(self._all_grads(), self.config.clip_grad, grad_norm)

    def _inner_optimizers(self) -> List[torch.optim.Optimizer]:
        return [self.optimizer] if self.optimizer is not None else []

    def _clip_grads_to(self, grad_norm: float) -> None:
        """Clip with ``config.clip_grad`` against an already computed (possibly global) norm."""
        if self.config.clip_grad > 0.0:
            clip_grad_by_total_norm_fp32(self._all_grads(), self.config.clip_grad, grad_norm)

    def clip_grad_norm(self, clip_grad: float) -> float:
        """Clip every grad so that the global norm is at most ``clip_grad``; returns the norm before."""
        grad_norm = self.get_grad_norm()
        clip_grad_by_total_norm_fp32(self._all_grads(), clip_grad, grad_norm)
        return grad_norm

    def count_zeros(self) -> float:
        return count_zeros_fp32(self.get_grads_for_norm(), self.grad_stats.reduce_group)

    def _logs_num_zeros(self) -> bool:
        return self.config.log_num_zeros_in_grad

    # ---- the step -----------------------------------------------------------------------------

    @abstractmethod
    def prepare_grads(self) -> bool:
        """Put gradients where the inner optimizer reads them; return True if any rank found inf/nan."""

    @abstractmethod
    def step_with_ready_grads(self) -> bool:
        """Run the inner update on prepared (and clipped) grads; return success."""

    @torch.no_grad()
    def step(self) -> StepResult:
        """One optimizer step; returns ``(updated, grad_norm, num_zeros)``."""
        if self.prepare_grads():
            return False, None, None
        if self._skip_decided_on_device():
            return self._finish_device_step(*self._step_with_device_decision())
        grad_norm = self.get_grad_norm()
        # A non-finite norm (nan/inf gradient without a loss scaler to catch it) skips the update on
        # every rank alike: the norm is reduced over reduce_group, and skip_group (the DP replicas of
        # a plain optimizer) agrees on the decision, so one replica's bad gradient skips everywhere.
        skip = (
            not math.isfinite(grad_norm)
            or grad_norm > self.config.grad_norm_skip_threshold
            or self._spike_detected(grad_norm)
        )
        if any_rank(skip, self.grad_stats.skip_group, self.get_loss_scale().device):
            return False, grad_norm, self.count_zeros() if self._logs_num_zeros() else None
        self._clip_grads_to(grad_norm)
        num_zeros = self.count_zeros() if self._logs_num_zeros() else None
        updated = self.step_with_ready_grads()
        return updated, grad_norm, num_zeros

    def _unscale_grads_and_update_scaler(self) -> bool:
        """With a loss scaler: unscale the prepared grads, agree on found-inf over the reduce group."""
        if self.grad_scaler is None:
            return False
        found_inf = _unscale_and_find_inf(self._all_grads(), self.grad_scaler, self.grad_stats.reduce_group)
        found_inf = any_rank(found_inf, self.grad_stats.skip_group, self.grad_scaler.device)
        self.grad_scaler.update(found_inf)
        return found_inf

    def _spike_detected(self, grad_norm: float) -> bool:
        if self.skip_detector is None:
            return False
        loss, self._latest_loss = self._latest_loss, None
        return self.skip_detector.should_skip(loss, grad_norm)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _zero_grads(self.get_parameters(), set_to_none)

    # ---- loss scaling -------------------------------------------------------------------------

    def get_loss_scale(self) -> torch.Tensor:
        """The current loss scale as a 1-element fp32 tensor (1.0 without a scaler)."""
        if self.grad_scaler is not None:
            return self.grad_scaler.scale
        if self._unit_loss_scale is None:
            params = self.get_parameters()
            device = params[0].device if params else default_device()
            self._unit_loss_scale = torch.ones(1, dtype=torch.float32, device=device)
        return self._unit_loss_scale

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.get_loss_scale() * loss

    # ---- state --------------------------------------------------------------------------------

    def init_state(self) -> None:
        """Create optimizer state before the first step (e.g. to load a checkpoint into it)."""
        if self.init_state_fn is not None and self.optimizer is not None:
            self.init_state_fn(self.optimizer)

    def reload_model_params(self) -> None:
        """Refresh whatever copy of the model params this wrapper keeps (none by default)."""

    def scale_main_params_(self, row_scales: Mapping[int, torch.Tensor]) -> None:
        """Multiply the fp32 copies this wrapper keeps of some model params by one factor per row (dim 0).

        ``row_scales`` maps ``id(model_param)`` to its factors. The model params themselves are the
        caller's to scale (qk_clip does both); this keeps main params/shards in step. None by default.
        """

    @abstractmethod
    def state_dict(self) -> Any: ...

    @abstractmethod
    def load_state_dict(self, state_dict: Any) -> None: ...

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return self.optimizer.param_groups if self.optimizer is not None else []

    @param_groups.setter
    def param_groups(self, value: List[Dict[str, Any]]) -> None:
        if self.optimizer is None:
            raise ValueError("param_groups cannot be set on a rank without an optimizer")
        self.optimizer.param_groups = value

    @property
    def state(self) -> Mapping[Any, Any]:
        return self.optimizer.state if self.optimizer is not None else {}


class FP32Optimizer(MegatronOptimizer):
    """fp32 model params updated in place; grads come from ``main_grad`` when the DDP provides it.

    A ``grad_scaler`` is optional (a constant ``loss_scale`` with fp32 params); with one, grads are
    unscaled and checked for inf/nan exactly as in ``Float16Optimizer``.
    """

    def __init__(
        self,
        optimizer: Optional[torch.optim.Optimizer],
        config: OptimizerConfig,
        grad_stats: GradStatsGroups = GradStatsGroups(),
        init_state_fn: Optional[InitStateFn] = None,
        grad_scaler: Optional[MegatronGradScaler] = None,
    ) -> None:
        super().__init__(optimizer, config, grad_stats, init_state_fn)
        self.grad_scaler = grad_scaler

    def prepare_grads(self) -> bool:
        for p in self.get_parameters():
            main_grad = getattr(p, "main_grad", None)
            if main_grad is not None:
                p.grad = main_grad
        return self._unscale_grads_and_update_scaler()

    def step_with_ready_grads(self) -> bool:
        if self.optimizer is not None:
            self.optimizer.step()
        return True

    def state_dict(self) -> Dict[str, Any]:
        return self.optimizer.state_dict() if self.optimizer is not None else {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state_dict)


def _make_main_param(model_param: torch.nn.Parameter) -> torch.nn.Parameter:
    """An fp32 clone of a bf16/fp16 param that still describes itself like the original."""
    main_param = torch.nn.Parameter(model_param.detach().clone().float(), requires_grad=model_param.requires_grad)
    for name, value in vars(model_param).items():
        if name in _NOT_COPIED or name.startswith("_"):
            continue
        if name in PARAM_ATTRIBUTES or isinstance(value, _PLAIN_TYPES):
            setattr(main_param, name, value)
    return main_param


class Float16Optimizer(MegatronOptimizer):
    """bf16/fp16 model params, fp32 main params in the inner optimizer, optional loss scaling.

    Every bf16/fp16 param of the inner optimizer is replaced by an fp32 clone (its state moves with
    it); fp32 params are updated in place. After each inner step the main params are cast back into
    the model params.
    """

    def __init__(
        self,
        optimizer: Optional[torch.optim.Optimizer],
        config: OptimizerConfig,
        grad_scaler: Optional[MegatronGradScaler],
        grad_stats: GradStatsGroups = GradStatsGroups(),
        init_state_fn: Optional[InitStateFn] = None,
    ) -> None:
        super().__init__(optimizer, config, grad_stats, init_state_fn)
        self.grad_scaler = grad_scaler
        # Per inner param group, aligned with group["params"]: the model param behind each entry.
        self.model_param_groups: List[List[torch.nn.Parameter]] = []
        # Per inner param group: only the fp32 clones (what the checkpoint calls fp32_from_fp16_params).
        self.fp32_from_float16_groups: List[List[torch.nn.Parameter]] = []
        if optimizer is not None:
            self._swap_in_main_params(optimizer)

    def _swap_in_main_params(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            model_params: List[torch.nn.Parameter] = []
            clones: List[torch.nn.Parameter] = []
            for i, param in enumerate(group["params"]):
                model_params.append(param)
                if param.dtype in (torch.float16, torch.bfloat16):
                    main_param = _make_main_param(param)
                    group["params"][i] = main_param
                    clones.append(main_param)
                    if param in optimizer.state:
                        optimizer.state[main_param] = optimizer.state.pop(param)
                elif param.dtype != torch.float32:
                    raise TypeError(
                        f"Float16Optimizer got a parameter of dtype {param.dtype}; expected torch.float16, "
                        "torch.bfloat16 or torch.float32"
                    )
            self.model_param_groups.append(model_params)
            self.fp32_from_float16_groups.append(clones)

    def _model_main_pairs(self) -> Iterator[Tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        if self.optimizer is None:
            return
        for model_params, group in zip(self.model_param_groups, self.optimizer.param_groups):
            yield from zip(model_params, group["params"])

    def prepare_grads(self) -> bool:
        for model_param, main_param in self._model_main_pairs():
            main_grad = getattr(model_param, "main_grad", None)
            if model_param is main_param:
                if main_grad is not None:
                    main_param.grad = main_grad
                continue
            if main_grad is not None:
                main_param.grad = main_grad.float()
            elif model_param.grad is not None:
                main_param.grad = model_param.grad.float()
                model_param.grad = None  # the fp32 copy is the one that is used from here on
            else:
                main_param.grad = None
        return self._unscale_grads_and_update_scaler()

    def step_with_ready_grads(self) -> bool:
        if self.optimizer is None:
            return True
        self.optimizer.step()
        self._copy_main_params_to_model_params()
        return True

    def _float16_pairs(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        model, main = [], []
        for model_param, main_param in self._model_main_pairs():
            if model_param is not main_param:
                model.append(model_param.data)
                main.append(main_param.data)
        return model, main

    def _copy_main_params_to_model_params(self) -> None:
        model, main = self._float16_pairs()
        if model:
            torch._foreach_copy_(model, main)

    def reload_model_params(self) -> None:
        """Re-read the fp32 main params from the model params (after the model was loaded or changed)."""
        model, main = self._float16_pairs()
        if model:
            with torch.no_grad():
                torch._foreach_copy_(main, model)

    def scale_main_params_(self, row_scales: Mapping[int, torch.Tensor]) -> None:
        for model_param, main_param in self._model_main_pairs():
            scale = row_scales.get(id(model_param))
            if scale is not None and model_param is not main_param:
                main_param.data.mul_(scale.view(-1, *([1] * (main_param.dim() - 1))))

    def zero_grad(self, set_to_none: bool = True) -> None:
        model_params = [p for group in self.model_param_groups for p in group]
        _zero_grads(model_params, set_to_none)
        _zero_grads([p for group in self.fp32_from_float16_groups for p in group], set_to_none)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "fp32_from_fp16_params": [list(group) for group in self.fp32_from_float16_groups],
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load our own format or Megatron's legacy keys (optimizer_state_dict, fp32_from_fp16)."""
        inner = state_dict["optimizer"] if "optimizer" in state_dict else state_dict["optimizer_state_dict"]
        if self.optimizer is not None:
            self.optimizer.load_state_dict(inner)

        scaler_state = state_dict.get("grad_scaler")
        if self.grad_scaler is not None:
            if scaler_state is None:
                warnings.warn("no grad scaler state in the checkpoint; keeping the current loss scale", stacklevel=2)
            else:
                self.grad_scaler.load_state_dict(scaler_state)

        saved = state_dict["fp32_from_fp16_params"] if "fp32_from_fp16_params" in state_dict else state_dict["fp32_from_fp16"]
        if len(saved) != len(self.fp32_from_float16_groups):
            raise ValueError(
                f"fp32_from_fp16_params has {len(saved)} groups; this optimizer has {len(self.fp32_from_float16_groups)}"
            )
        with torch.no_grad():
            for current_group, saved_group in zip(self.fp32_from_float16_groups, saved):
                if len(current_group) != len(saved_group):
                    raise ValueError(
                        f"fp32_from_fp16_params group has {len(saved_group)} params; expected {len(current_group)}"
                    )
                for current, value in zip(current_group, saved_group):
                    current.copy_(value)


class _ChainedStateView(MappingABC):
    """Read-only union of the children's ``state`` dicts, keyed by parameter."""

    def __init__(self, children: Sequence[MegatronOptimizer]) -> None:
        self._children = children

    def __getitem__(self, param: Any) -> Any:
        for child in self._children:
            if param in child.state:
                return child.state[param]
        raise KeyError(param)

    def __iter__(self) -> Iterator[Any]:
        for child in self._children:
            yield from child.state

    def __len__(self) -> int:
        return sum(len(child.state) for child in self._children)


class ChainedOptimizer(MegatronOptimizer):
    """Several wrappers stepped as one: one global grad norm, one clip/skip decision, one result.

    Children may use different inner optimizers, configs and reduce groups. The norm is reduced
    once over the concatenated grads when every child reduces over the same group, otherwise each
    child reduces Σg² over its own group and the results are added. ``config`` defaults to the
    first child's and supplies ``grad_norm_skip_threshold``; each child clips with its own
    ``clip_grad``.
    """

    def __init__(self, chained_optimizers: Sequence[MegatronOptimizer], config: Optional[OptimizerConfig] = None) -> None:
        children = list(chained_optimizers)
        if not children and config is None:
            raise ValueError("ChainedOptimizer needs at least one child optimizer or an explicit config")
        super().__init__(None, config if config is not None else children[0].config, children[0].grad_stats if children else GradStatsGroups())
        self.chained_optimizers: List[MegatronOptimizer] = children

    # ---- parameters and gradients ---------------------------------------------------------------

    def get_parameters(self) -> List[torch.nn.Parameter]:
        return [p for child in self.chained_optimizers for p in child.get_parameters()]

    def _all_grads(self) -> List[torch.Tensor]:
        return [g for child in self.chained_optimizers for g in child._all_grads()]

    def get_grads_for_norm(self) -> List[torch.Tensor]:
        return [g for child in self.chained_optimizers for g in child.get_grads_for_norm()]

    def _shared_reduce_group(self) -> Tuple[bool, ProcessGroup]:
        groups = [child.grad_stats.reduce_group for child in self.chained_optimizers]
        first = groups[0] if groups else None
        return all(g is first for g in groups), first

    def _grad_norm_power(self) -> float:
        shared, group = self._shared_reduce_group()
        if shared:
            return grad_norm_power_fp32(self.get_grads_for_norm(), 2.0, group)
        return sum(child._grad_norm_power() for child in self.chained_optimizers)

    def get_grad_norm(self) -> float:
        shared, group = self._shared_reduce_group()
        if shared:
            return get_grad_norm_fp32(self.get_grads_for_norm(), 2.0, group)
        return norm_from_powers([self._grad_norm_power()], 2.0)

    def _clip_grads_to(self, grad_norm: float) -> None:
        for child in self.chained_optimizers:
            child._clip_grads_to(grad_norm)

    def get_grad_norm_tensor(self) -> torch.Tensor:
        shared, group = self._shared_reduce_group()
        if shared:
            return grad_norm_fp32_tensor(self.get_grads_for_norm(), 2.0, group)
        # children reduced over different groups: combined on the host as get_grad_norm does (a read)
        params = self.get_parameters()
        return torch.tensor(self.get_grad_norm(), dtype=torch.float64, device=params[0].device if params else None)

    def _clip_grads_to_tensor(self, grad_norm: torch.Tensor) -> None:
        for child in self.chained_optimizers:
            child._clip_grads_to_tensor(grad_norm)

    def _inner_optimizers(self) -> List[torch.optim.Optimizer]:
        return [o for child in self.chained_optimizers for o in child._inner_optimizers()]

    def count_zeros(self) -> float:
        shared, group = self._shared_reduce_group()
        if shared:
            return count_zeros_fp32(self.get_grads_for_norm(), group)
        return sum(child.count_zeros() for child in self.chained_optimizers)

    def _logs_num_zeros(self) -> bool:
        return self.config.log_num_zeros_in_grad or any(c.config.log_num_zeros_in_grad for c in self.chained_optimizers)

    # ---- the step -----------------------------------------------------------------------------

    def prepare_grads(self) -> bool:
        found_inf = False
        for child in self.chained_optimizers:  # every child runs: each may join a collective
            found_inf = child.prepare_grads() or found_inf
        return found_inf

    def step_with_ready_grads(self) -> bool:
        success = True
        for child in self.chained_optimizers:
            success = child.step_with_ready_grads() and success
        return success

    def zero_grad(self, set_to_none: bool = True) -> None:
        for child in self.chained_optimizers:
            child.zero_grad(set_to_none)

    def get_loss_scale(self) -> torch.Tensor:
        if not self.chained_optimizers:
            return super().get_loss_scale()
        return self.chained_optimizers[0].get_loss_scale()

    # ---- state --------------------------------------------------------------------------------

    def init_state(self) -> None:
        for child in self.chained_optimizers:
            child.init_state()

    def reload_model_params(self) -> None:
        for child in self.chained_optimizers:
            child.reload_model_params()

    def scale_main_params_(self, row_scales: Mapping[int, torch.Tensor]) -> None:
        for child in self.chained_optimizers:
            child.scale_main_params_(row_scales)

    def state_dict(self) -> List[Any]:
        """One entry per child, always a list (also for a single child)."""
        return [child.state_dict() for child in self.chained_optimizers]

    def load_state_dict(self, state_dict: Union[Sequence[Any], Mapping[Any, Any]]) -> None:
        """Accepts our list, a dict keyed 0..n-1 (Megatron), or a bare dict for a single child."""
        if isinstance(state_dict, Mapping):
            if state_dict and all(isinstance(k, int) for k in state_dict):
                state_dict = [state_dict[k] for k in sorted(state_dict)]
            elif len(self.chained_optimizers) == 1:
                state_dict = [state_dict]
            else:
                raise ValueError(
                    f"ChainedOptimizer with {len(self.chained_optimizers)} children needs a list of state dicts; got a dict"
                )
        if len(state_dict) != len(self.chained_optimizers):
            raise ValueError(f"got {len(state_dict)} state dicts for {len(self.chained_optimizers)} child optimizers")
        for child, child_state in zip(self.chained_optimizers, state_dict):
            child.load_state_dict(child_state)

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        """The children's live group dicts, so a scheduler's writes reach them."""
        return [group for child in self.chained_optimizers for group in child.param_groups]

    @property
    def state(self) -> Mapping[Any, Any]:
        return _ChainedStateView(self.chained_optimizers)
