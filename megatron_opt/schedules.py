"""Learning-rate and weight-decay schedules as pure functions of the step.

Every formula here takes the step count and the schedule's shape and returns a number; nothing
is stored and nothing is mutated, so a schedule can be plotted, tested or replayed from any step
(the TorchTitan / OLMo-core shape). ``OptimizerParamScheduler`` (scheduler.py) owns the state:
the step count, the param groups and checkpointing.

Units are whatever the caller counts (Megatron counts samples: iterations x global batch size);
every step-like number of one schedule must use the same unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

from megatron_opt.errors import config_error

LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD", "power", "WSD-S")
"""Megatron-LM's five styles plus PowerLR ("power") and multi-period WSD ("WSD-S")."""
WSD_DECAY_STYLES = ("exponential", "linear", "cosine", "minus_sqrt")
"""How WSD and WSD-S anneal from max to min over the last ``wsd_decay_steps`` of a period."""
WD_INCR_STYLES = ("constant", "linear", "cosine")

DEFAULT_POWER_EXPONENT = -0.51
"""OLMo-core PowerLR's default exponent b in ``max_lr * (n / warmup) ** b``."""


# ---- decay coefficients: r in [0, 1] -> coeff in [0, 1], 1 at the start and 0 at the end -----------


def linear_coeff(r: float) -> float:
    return 1.0 - r


def cosine_coeff(r: float) -> float:
    return 0.5 * (math.cos(math.pi * r) + 1.0)


def exponential_coeff(r: float) -> float:
    """``2 * 0.5**r - 1``: falls fastest at the start of the anneal; 1 at r=0, 0 at r=1."""
    return 2.0 * 0.5**r - 1.0


def minus_sqrt_coeff(r: float) -> float:
    return 1.0 - math.sqrt(r)


ANNEAL_COEFFS: Dict[str, Callable[[float], float]] = {
    "exponential": exponential_coeff,
    "linear": linear_coeff,
    "cosine": cosine_coeff,
    "minus_sqrt": minus_sqrt_coeff,
}


# ---- typed shape of one learning-rate schedule ----------------------------------------------------


@dataclass(frozen=True)
class LRStyleOptions:
    """Extra arguments of the styles Megatron-LM does not have; ignored by the other styles.

    power_exponent: b in PowerLR's ``max_lr * (n / lr_warmup_steps) ** b`` (b < 0).
    power_decay_steps: length of PowerLR's optional linear tail to ``min_lr`` that ends at
        ``lr_decay_steps`` (0 = no tail; the power law just runs until ``lr_decay_steps``).
    wsds_period_ends: WSD-S period end steps, strictly increasing; the last must equal
        ``lr_decay_steps``. Each period is flat at max_lr then anneals to min_lr over its last
        ``wsd_decay_steps``; the next period jumps back to max_lr.
    """

    power_exponent: float = DEFAULT_POWER_EXPONENT
    power_decay_steps: float = 0
    wsds_period_ends: Tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Accept a list from YAML/checkpoints but keep the dataclass hashable and immutable.
        object.__setattr__(self, "wsds_period_ends", tuple(self.wsds_period_ends))


@dataclass(frozen=True)
class LRSchedule:
    """The shape of a learning-rate curve; max_lr/min_lr come per call because they vary per group."""

    init_lr: float
    lr_warmup_steps: float
    lr_decay_steps: float
    lr_decay_style: str
    wsd_decay_steps: Optional[float] = None
    lr_wsd_decay_style: Optional[str] = None
    options: LRStyleOptions = field(default_factory=LRStyleOptions)

    def __post_init__(self) -> None:
        validate_lr_schedule(self)


@dataclass(frozen=True)
class WDSchedule:
    """The shape of a weight-decay curve; start/end come per call because they may vary per group."""

    wd_incr_steps: float
    wd_incr_style: str

    def __post_init__(self) -> None:
        _require_choice("wd_incr_style", self.wd_incr_style, WD_INCR_STYLES)
        _require_number("wd_incr_steps", self.wd_incr_steps)
        if self.wd_incr_style == "constant":
            _require(self.wd_incr_steps >= 0, "wd_incr_steps", self.wd_incr_steps, "a number >= 0")
        else:
            _require(self.wd_incr_steps > 0, "wd_incr_steps", self.wd_incr_steps, f"a number > 0 with wd_incr_style={self.wd_incr_style!r}")


# ---- the curves ------------------------------------------------------------------------------------


def warmup_lr(init_lr: float, max_lr: float, num_steps: float, warmup_steps: float) -> float:
    """Linear ramp from init_lr at step 0 to max_lr at the end of warmup."""
    return init_lr + (max_lr - init_lr) * num_steps / warmup_steps


def inverse_square_root_lr(max_lr: float, min_lr: float, num_steps: float, warmup_steps: float) -> float:
    """``max_lr * sqrt(warmup / n)``, equal to max_lr at the end of warmup, floored at min_lr."""
    lr = max_lr * math.sqrt(max(warmup_steps, 1)) / math.sqrt(max(num_steps, 1))
    return max(min_lr, lr)


def wsd_coeff(num_steps: float, decay_steps: float, wsd_decay_steps: float, wsd_style: str) -> float:
    """1 until ``decay_steps - wsd_decay_steps``, then the anneal coefficient of the fraction annealed."""
    anneal_start = decay_steps - wsd_decay_steps
    if num_steps <= anneal_start:
        return 1.0
    return ANNEAL_COEFFS[wsd_style]((num_steps - anneal_start) / wsd_decay_steps)


def wsds_coeff(num_steps: float, period_ends: Tuple[float, ...], wsd_decay_steps: float, wsd_style: str) -> float:
    """WSD within the period that contains n (the first period whose end is >= n)."""
    for end in period_ends:
        if num_steps <= end:
            return wsd_coeff(num_steps, end, wsd_decay_steps, wsd_style)
    return 0.0


def power_lr(
    max_lr: float,
    min_lr: float,
    num_steps: float,
    warmup_steps: float,
    decay_steps: float,
    exponent: float,
    tail_steps: float,
) -> float:
    """PowerLR: ``max_lr * (n / warmup) ** b`` floored at min_lr; optional linear tail to min_lr.

    With a tail of T steps, the lr at ``decay_steps - T`` falls linearly to min_lr at decay_steps.
    """

    def power_law(n: float) -> float:
        return max(min_lr, max_lr * (n / warmup_steps) ** exponent)

    tail_start = decay_steps - tail_steps
    if tail_steps > 0 and num_steps > tail_start:
        return min_lr + (power_law(tail_start) - min_lr) * (decay_steps - num_steps) / tail_steps
    return power_law(num_steps)


def lr_at(schedule: LRSchedule, num_steps: float, max_lr: float, min_lr: float) -> float:
    """The learning rate after ``num_steps`` steps (Megatron-LM's order of cases)."""
    s = schedule
    if s.lr_warmup_steps > 0 and num_steps <= s.lr_warmup_steps:
        return warmup_lr(s.init_lr, max_lr, num_steps, s.lr_warmup_steps)
    if s.lr_decay_style == "constant":
        return max_lr
    if num_steps > s.lr_decay_steps:
        return min_lr
    if s.lr_decay_style == "inverse-square-root":
        return inverse_square_root_lr(max_lr, min_lr, num_steps, s.lr_warmup_steps)
    if s.lr_decay_style == "power":
        return power_lr(
            max_lr, min_lr, num_steps, s.lr_warmup_steps, s.lr_decay_steps, s.options.power_exponent, s.options.power_decay_steps
        )
    decay_ratio = (num_steps - s.lr_warmup_steps) / (s.lr_decay_steps - s.lr_warmup_steps)
    coeff = _decay_coeff(s, num_steps, decay_ratio)
    return min_lr + coeff * (max_lr - min_lr)


def _decay_coeff(s: LRSchedule, num_steps: float, decay_ratio: float) -> float:
    if s.lr_decay_style == "linear":
        return linear_coeff(decay_ratio)
    if s.lr_decay_style == "cosine":
        return cosine_coeff(decay_ratio)
    assert s.wsd_decay_steps is not None and s.lr_wsd_decay_style is not None  # validated
    if s.lr_decay_style == "WSD":
        return wsd_coeff(num_steps, s.lr_decay_steps, s.wsd_decay_steps, s.lr_wsd_decay_style)
    return wsds_coeff(num_steps, s.options.wsds_period_ends, s.wsd_decay_steps, s.lr_wsd_decay_style)


def wd_at(schedule: WDSchedule, num_steps: float, start_wd: float, end_wd: float) -> float:
    """Weight decay after ``num_steps`` steps: rises from start_wd to end_wd over wd_incr_steps."""
    if num_steps > schedule.wd_incr_steps or schedule.wd_incr_style == "constant":
        return end_wd
    incr_ratio = num_steps / schedule.wd_incr_steps
    if schedule.wd_incr_style == "linear":
        coeff = incr_ratio
    else:  # cosine: slow start, slow finish
        coeff = 0.5 * (math.cos(math.pi * (1.0 - incr_ratio)) + 1.0)
    return start_wd + coeff * (end_wd - start_wd)


# ---- validation ------------------------------------------------------------------------------------


def validate_lr_schedule(s: LRSchedule) -> None:
    """Refuse shapes the formulas cannot evaluate, naming the constructor argument at fault."""
    _require_choice("lr_decay_style", s.lr_decay_style, LR_DECAY_STYLES)
    for name in ("init_lr", "lr_warmup_steps", "lr_decay_steps"):
        _require_number(name, getattr(s, name))
    _require(s.init_lr >= 0, "init_lr", s.init_lr, "a number >= 0")
    _require(s.lr_warmup_steps >= 0, "lr_warmup_steps", s.lr_warmup_steps, "a number >= 0")
    _require(s.lr_decay_steps > 0, "lr_decay_steps", s.lr_decay_steps, "a number > 0")
    _require(
        s.lr_warmup_steps < s.lr_decay_steps,
        "lr_warmup_steps",
        s.lr_warmup_steps,
        f"a number < lr_decay_steps ({s.lr_decay_steps})",
    )
    if s.lr_decay_style in ("WSD", "WSD-S"):
        _validate_wsd(s)
    if s.lr_decay_style == "WSD-S":
        _validate_wsds(s)
    if s.lr_decay_style == "power":
        _validate_power(s)


def _validate_wsd(s: LRSchedule) -> None:
    style = s.lr_decay_style
    _require(s.wsd_decay_steps is not None, "wsd_decay_steps", None, f"a number > 0 with lr_decay_style={style!r}")
    _require_number("wsd_decay_steps", s.wsd_decay_steps)
    _require(s.wsd_decay_steps > 0, "wsd_decay_steps", s.wsd_decay_steps, "a number > 0")
    if style == "WSD":
        room = s.lr_decay_steps - s.lr_warmup_steps
        _require(
            s.wsd_decay_steps <= room,
            "wsd_decay_steps",
            s.wsd_decay_steps,
            f"a number <= lr_decay_steps - lr_warmup_steps ({room})",
        )
    _require_choice("lr_wsd_decay_style", s.lr_wsd_decay_style, WSD_DECAY_STYLES, f" with lr_decay_style={style!r}")


def _validate_wsds(s: LRSchedule) -> None:
    ends = s.options.wsds_period_ends
    name = "wsds_period_ends"
    _require(len(ends) > 0, name, ends, "a non-empty list of period end steps with lr_decay_style='WSD-S'")
    for e in ends:
        _require_number(name, e)
    _require(ends[-1] == s.lr_decay_steps, name, ends, f"a list whose last end equals lr_decay_steps ({s.lr_decay_steps})")
    starts = (0,) + ends[:-1]
    for i, (start, end) in enumerate(zip(starts, ends)):
        first_stable = s.lr_warmup_steps if i == 0 else start
        _require(
            end - s.wsd_decay_steps >= first_stable,
            name,
            ends,
            f"strictly increasing ends, each period (after warmup) at least wsd_decay_steps ({s.wsd_decay_steps}) long",
        )


def _validate_power(s: LRSchedule) -> None:
    o = s.options
    _require_number("power_exponent", o.power_exponent)
    _require(o.power_exponent < 0, "power_exponent", o.power_exponent, "a number < 0 (the lr decays as a power of the step)")
    _require(s.lr_warmup_steps > 0, "lr_warmup_steps", s.lr_warmup_steps, "a number > 0 with lr_decay_style='power'")
    _require_number("power_decay_steps", o.power_decay_steps)
    room = s.lr_decay_steps - s.lr_warmup_steps
    _require(
        0 <= o.power_decay_steps <= room,
        "power_decay_steps",
        o.power_decay_steps,
        f"a number in [0, lr_decay_steps - lr_warmup_steps] = [0, {room}]",
    )


def _require(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise config_error(name, value, allowed)


def _require_number(name: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    _require(ok, name, value, "a finite number")


def _require_choice(name: str, value: object, allowed: Tuple[str, ...], context: str = "") -> None:
    _require(value in allowed, name, value, "one of " + ", ".join(repr(a) for a in allowed) + context)
