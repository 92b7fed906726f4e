"""``OptimizerParamScheduler``: writes lr and weight decay into every param group each step.

Megatron-LM's argument names and checkpoint format, with three deliberate differences (see
docs/scheduler.md): a group's ``lr_mult`` is applied, the WSD and new-style fields are saved, and
``override_opt_param_scheduler`` also beats per-group values restored by an optimizer checkpoint.
The formulas themselves live in schedules.py as pure functions of the step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, MutableMapping, Optional

import torch

from megatron_opt.config import SCHEDULE_OVERRIDE_KEYS
from megatron_opt.errors import ConfigError, config_error
from megatron_opt.schedules import LRSchedule, LRStyleOptions, WDSchedule, lr_at, wd_at

# Checkpoint keys of older Megatron-LM releases -> today's names.
LEGACY_STATE_KEYS: Dict[str, str] = {
    "start_lr": "max_lr",
    "warmup_iter": "lr_warmup_steps",
    "warmup_steps": "lr_warmup_steps",
    "end_iter": "lr_decay_steps",
    "decay_steps": "lr_decay_steps",
    "decay_style": "lr_decay_style",
    "num_iters": "num_steps",
}

# Fields checked against the checkpoint on load (num_steps is always taken from the checkpoint).
_LR_SHAPE_FIELDS = ("init_lr", "lr_warmup_steps", "lr_decay_steps", "lr_decay_style", "wsd_decay_steps", "lr_wsd_decay_style")
_OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(LRStyleOptions))
_WD_SHAPE_FIELDS = ("wd_incr_steps", "wd_incr_style")
_VALUE_FIELDS = ("max_lr", "min_lr", "start_wd", "end_wd")
STATE_FIELDS = _VALUE_FIELDS + _LR_SHAPE_FIELDS + _OPTION_FIELDS + _WD_SHAPE_FIELDS


class OptimizerParamScheduler:
    """Learning-rate and weight-decay schedule over an optimizer's param groups.

    ``optimizer`` is anything with ``param_groups`` (a list of dicts). Steps are in the caller's
    unit (Megatron: samples). Per group it reads ``max_lr``/``min_lr`` (default: the scheduler's),
    ``lr_mult`` and ``wd_mult`` (default 1.0) and ``start_wd``/``end_wd`` (default: the
    scheduler's), and writes ``lr = schedule * lr_mult`` and ``weight_decay = schedule * wd_mult``.

    Resume contract: build the scheduler before loading any checkpoint (it remembers the groups'
    runtime schedule keys), then call ``optimizer.load_state_dict`` and after it
    ``scheduler.load_state_dict``.
    """

    def __init__(
        self,
        optimizer: Any,
        init_lr: float,
        max_lr: float,
        min_lr: float,
        lr_warmup_steps: float,
        lr_decay_steps: float,
        lr_decay_style: str,
        start_wd: float,
        end_wd: float,
        wd_incr_steps: float,
        wd_incr_style: str,
        use_checkpoint_opt_param_scheduler: bool = True,
        override_opt_param_scheduler: bool = False,
        wsd_decay_steps: Optional[float] = None,
        lr_wsd_decay_style: Optional[str] = None,
        lr_style_options: Optional[LRStyleOptions] = None,
    ) -> None:
        if override_opt_param_scheduler and use_checkpoint_opt_param_scheduler:
            raise config_error(
                "override_opt_param_scheduler",
                True,
                "False when use_checkpoint_opt_param_scheduler=True (the two are mutually exclusive)",
            )
        self.optimizer = optimizer
        self.use_checkpoint_opt_param_scheduler = use_checkpoint_opt_param_scheduler
        self.override_opt_param_scheduler = override_opt_param_scheduler
        self.lr_schedule = LRSchedule(
            init_lr, lr_warmup_steps, lr_decay_steps, lr_decay_style, wsd_decay_steps, lr_wsd_decay_style,
            lr_style_options if lr_style_options is not None else LRStyleOptions(),
        )
        self.wd_schedule = WDSchedule(wd_incr_steps, wd_incr_style)
        _validate_values(self.lr_schedule, self.wd_schedule, max_lr, min_lr, start_wd, end_wd)
        self.max_lr = float(max_lr)
        self.min_lr = float(min_lr)
        self.start_wd = float(start_wd)
        self.end_wd = float(end_wd)
        for i, group in enumerate(optimizer.param_groups):
            self._validate_group(i, group)
        self._runtime_group_settings = _group_schedule_keys(optimizer.param_groups)
        self.num_steps: float = 0
        self.step(0)

    # ---- Megatron-LM attribute names (read-only views of the typed schedules) ------------------

    init_lr = property(lambda self: self.lr_schedule.init_lr)
    lr_warmup_steps = property(lambda self: self.lr_schedule.lr_warmup_steps)
    lr_decay_steps = property(lambda self: self.lr_schedule.lr_decay_steps)
    lr_decay_style = property(lambda self: self.lr_schedule.lr_decay_style)
    wsd_decay_steps = property(lambda self: self.lr_schedule.wsd_decay_steps)
    lr_wsd_decay_style = property(lambda self: self.lr_schedule.lr_wsd_decay_style)
    lr_style_options = property(lambda self: self.lr_schedule.options)
    wd_incr_steps = property(lambda self: self.wd_schedule.wd_incr_steps)
    wd_incr_style = property(lambda self: self.wd_schedule.wd_incr_style)

    # ---- the schedule ---------------------------------------------------------------------------

    def get_lr(self, param_group: Optional[Mapping[str, Any]] = None) -> float:
        """The lr this group gets now: the schedule between its max/min lr, times its lr_mult."""
        group = param_group if param_group is not None else {}
        max_lr = group.get("max_lr", self.max_lr)
        min_lr = group.get("min_lr", self.min_lr)
        return lr_at(self.lr_schedule, self.num_steps, max_lr, min_lr) * group.get("lr_mult", 1.0)

    def get_wd(self, param_group: Optional[Mapping[str, Any]] = None) -> float:
        """The weight decay this group gets now: the schedule between its start/end, times its wd_mult."""
        group = param_group if param_group is not None else {}
        start_wd = group.get("start_wd", self.start_wd)
        end_wd = group.get("end_wd", self.end_wd)
        return wd_at(self.wd_schedule, self.num_steps, start_wd, end_wd) * group.get("wd_mult", 1.0)

    def step(self, increment: float) -> None:
        """Advance by ``increment`` (iterations or samples) and update every group, empty ones too."""
        self.num_steps += increment
        for group in self.optimizer.param_groups:
            _write(group, "lr", self.get_lr(group))
            _write(group, "weight_decay", self.get_wd(group))

    def get_canonical_lr_for_logging(self, param_groups: Optional[List[Mapping[str, Any]]] = None) -> Optional[float]:
        """The lr of the first ``default_config=True`` group (else the first group); None without groups."""
        groups = list(self.optimizer.param_groups if param_groups is None else param_groups)
        if not groups:
            return None
        chosen = next((g for g in groups if g.get("default_config", False)), groups[0])
        return float(chosen["lr"])

    def _validate_group(self, index: int, group: Mapping[str, Any]) -> None:
        """The group's effective values (its own keys, else the scheduler's) must make a valid curve."""
        prefix = f"param_groups[{index}]."
        for key in SCHEDULE_OVERRIDE_KEYS:
            if key in group:
                _require_finite(prefix + key, group[key])
                if group[key] < 0:
                    raise config_error(prefix + key, group[key], "a number >= 0")
        _check_pair(prefix, group.get("min_lr", self.min_lr), group.get("max_lr", self.max_lr), "min_lr", "max_lr")
        start_wd, end_wd = group.get("start_wd", self.start_wd), group.get("end_wd", self.end_wd)
        _check_pair(prefix, start_wd, end_wd, "start_wd", "end_wd")
        if self.wd_incr_style == "constant" and start_wd != end_wd:
            raise config_error(prefix + "end_wd", end_wd, f"a value equal to start_wd ({start_wd}) with wd_incr_style='constant'")

    # ---- checkpointing ----------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Every field that shapes the curve, plus ``num_steps`` (WSD and new-style fields included)."""
        sd: Dict[str, Any] = {name: self._current(name) for name in STATE_FIELDS}
        sd["wsds_period_ends"] = list(sd["wsds_period_ends"])
        sd["num_steps"] = self.num_steps
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the schedule and step count; call it after ``optimizer.load_state_dict``.

        Per field: override -> this scheduler's value; use_checkpoint -> the checkpoint's; neither ->
        they must be equal (ConfigError otherwise). A field absent from the checkpoint (older
        formats) keeps this scheduler's value. The same rule covers the per-group schedule keys
        (max_lr, min_lr, lr_mult, wd_mult, start_wd, end_wd) that the optimizer checkpoint restored.
        """
        sd = _canonical_state(state_dict)
        if "num_steps" not in sd:
            raise config_error("state_dict", sorted(state_dict), "a scheduler state dict with num_steps (or num_iters)")
        chosen = {name: self._choose(name, self._current(name), sd[name]) if name in sd else self._current(name) for name in STATE_FIELDS}
        options = LRStyleOptions(**{name: chosen[name] for name in _OPTION_FIELDS})
        lr_schedule = LRSchedule(**{name: chosen[name] for name in _LR_SHAPE_FIELDS}, options=options)
        wd_schedule = WDSchedule(**{name: chosen[name] for name in _WD_SHAPE_FIELDS})
        _validate_values(lr_schedule, wd_schedule, *(chosen[name] for name in _VALUE_FIELDS))
        self._reconcile_groups()
        self.lr_schedule, self.wd_schedule = lr_schedule, wd_schedule
        self.max_lr, self.min_lr, self.start_wd, self.end_wd = (float(chosen[name]) for name in _VALUE_FIELDS)
        self.num_steps = 0
        self.step(sd["num_steps"])

    def apply_runtime_group_lrs(self) -> None:
        """Put back the groups' schedule keys as they were when this scheduler was built.

        An optimizer checkpoint restores ``max_lr``/``min_lr``/... into the param groups; in
        override mode the runtime values must win (Megatron-LM #1138, #963). Keys a group did not
        have at construction are removed so it falls back to the scheduler's values again.
        """
        groups = self._groups_matching_snapshot()
        for group, runtime in zip(groups, self._runtime_group_settings):
            for key in SCHEDULE_OVERRIDE_KEYS:
                if key in runtime:
                    group[key] = runtime[key]
                else:
                    group.pop(key, None)

    def _reconcile_groups(self) -> None:
        if self.override_opt_param_scheduler:
            self.apply_runtime_group_lrs()
        elif not self.use_checkpoint_opt_param_scheduler:
            groups = self._groups_matching_snapshot()
            for i, (group, runtime) in enumerate(zip(groups, self._runtime_group_settings)):
                for key in SCHEDULE_OVERRIDE_KEYS:
                    self._choose(f"param_groups[{i}].{key}", runtime.get(key), group.get(key))

    def _groups_matching_snapshot(self) -> List[MutableMapping[str, Any]]:
        groups = list(self.optimizer.param_groups)
        expected = len(self._runtime_group_settings)
        if len(groups) != expected:
            raise config_error("len(optimizer.param_groups)", len(groups), f"{expected}, the number of groups when the scheduler was built")
        return groups

    def _current(self, name: str) -> Any:
        if name in _OPTION_FIELDS:
            return getattr(self.lr_schedule.options, name)
        return getattr(self, name)

    def _choose(self, name: str, class_value: Any, checkpoint_value: Any) -> Any:
        """Megatron-LM's check-and-set, raising ConfigError instead of asserting."""
        if self.override_opt_param_scheduler:
            return class_value
        if name == "wsds_period_ends":
            class_value, checkpoint_value = tuple(class_value), tuple(checkpoint_value)
        if not self.use_checkpoint_opt_param_scheduler and class_value != checkpoint_value:
            raise ConfigError(
                f"{name}: the scheduler has {class_value!r} but the checkpoint has {checkpoint_value!r}; "
                "expected equal values, or pass override_opt_param_scheduler=True (keep the scheduler's) "
                "or use_checkpoint_opt_param_scheduler=True (keep the checkpoint's)"
            )
        return checkpoint_value


def _canonical_state(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Rename legacy keys; a key under today's name wins over its legacy spelling."""
    sd = {LEGACY_STATE_KEYS.get(k, k): v for k, v in state_dict.items() if k in LEGACY_STATE_KEYS}
    sd.update({k: v for k, v in state_dict.items() if k not in LEGACY_STATE_KEYS})
    return sd


def _group_schedule_keys(groups: List[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    return [{k: g[k] for k in SCHEDULE_OVERRIDE_KEYS if k in g} for g in groups]


def _write(group: MutableMapping[str, Any], key: str, value: float) -> None:
    """Write in place when the group holds a tensor (CUDA-graphed optimizers read it by address)."""
    current = group.get(key)
    if isinstance(current, torch.Tensor):
        current.fill_(value)
    else:
        group[key] = value


def _validate_values(lr: LRSchedule, wd: WDSchedule, max_lr: Any, min_lr: Any, start_wd: Any, end_wd: Any) -> None:
    for name, value in (("max_lr", max_lr), ("min_lr", min_lr), ("start_wd", start_wd), ("end_wd", end_wd)):
        _require_finite(name, value)
    _check_pair("", min_lr, max_lr, "min_lr", "max_lr")
    if lr.init_lr > max_lr:
        raise config_error("init_lr", lr.init_lr, f"a number <= max_lr ({max_lr})")
    _check_pair("", start_wd, end_wd, "start_wd", "end_wd")
    if wd.wd_incr_style == "constant" and start_wd != end_wd:
        raise config_error("end_wd", end_wd, f"a value equal to start_wd ({start_wd}) with wd_incr_style='constant'")


def _check_pair(prefix: str, low: float, high: float, low_name: str, high_name: str) -> None:
    """0 <= low <= high, naming the field at fault."""
    if low < 0:
        raise config_error(prefix + low_name, low, "a number >= 0")
    if low > high:
        raise config_error(prefix + low_name, low, f"a number <= {high_name} ({high})")


def _require_finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise config_error(name, value, "a finite number")


__all__ = ["LEGACY_STATE_KEYS", "LRStyleOptions", "OptimizerParamScheduler", "STATE_FIELDS"]
