"""OptimizerParamScheduler: lr/wd values against the formulas written out here, resume semantics."""

import math

import pytest
import torch

from megatron_opt.errors import ConfigError
from megatron_opt.scheduler import OptimizerParamScheduler
from megatron_opt.schedules import LRStyleOptions

INIT, MAX, MIN = 0.01, 1.0, 0.1
W, D, WSD_STEPS = 10, 100, 20  # warmup, decay and anneal length in iterations; scaled by `unit`
WSDS_ENDS = (40, 100)
WSDS_ANNEAL = 10
POWER_B = -0.51
POWER_TAIL = 30


class Groups:
    """The only thing the scheduler needs from an optimizer: a list of group dicts."""

    def __init__(self, *groups):
        self.param_groups = [dict(params=[], **g) for g in groups]


def make(optimizer=None, style="linear", unit=1, **kw):
    args = dict(
        init_lr=INIT, max_lr=MAX, min_lr=MIN, lr_warmup_steps=W * unit, lr_decay_steps=D * unit, lr_decay_style=style,
        start_wd=0.0, end_wd=0.1, wd_incr_steps=D * unit, wd_incr_style="linear",
    )
    args.update(kw)
    return OptimizerParamScheduler(optimizer if optimizer is not None else Groups({}), **args)


# ---- the oracle: Megatron-LM's formulas, written out independently ---------------------------------


def anneal(style, r):
    return {
        "linear": 1 - r,
        "cosine": (1 + math.cos(math.pi * r)) / 2,
        "exponential": 2 * 0.5**r - 1,
        "minus_sqrt": 1 - r**0.5,
    }[style]


def expected_lr(style, n, u, mx=MAX, mn=MIN):
    """Expected lr after n steps where every length is in iterations times u."""
    w, d = W * u, D * u
    if n <= w:
        return INIT + (mx - INIT) * n / w
    if style == "constant":
        return mx
    if n > d:
        return mn
    if style == "inverse-square-root":
        return max(mn, mx * (w / n) ** 0.5)
    if style == "power":
        return max(mn, mx * (n / w) ** POWER_B)
    if style == "power-tail":
        t0 = d - POWER_TAIL * u
        if n <= t0:
            return max(mn, mx * (n / w) ** POWER_B)
        at_t0 = max(mn, mx * (t0 / w) ** POWER_B)
        return mn + (at_t0 - mn) * (d - n) / (POWER_TAIL * u)
    if style == "WSD-S":
        end = next(e * u for e in WSDS_ENDS if n <= e * u)
        a = end - WSDS_ANNEAL * u
        return mx if n <= a else mn + (mx - mn) * (1 - (n - a) / (WSDS_ANNEAL * u))
    if style.startswith("WSD-"):
        a = d - WSD_STEPS * u
        return mx if n <= a else mn + (mx - mn) * anneal(style[4:], (n - a) / (WSD_STEPS * u))
    r = (n - w) / (d - w)
    return mn + (mx - mn) * anneal(style, r)


def style_kwargs(style, u):
    if style.startswith("WSD-") and style != "WSD-S":
        return dict(style="WSD", wsd_decay_steps=WSD_STEPS * u, lr_wsd_decay_style=style[4:])
    if style == "WSD-S":
        opts = LRStyleOptions(wsds_period_ends=[e * u for e in WSDS_ENDS])
        return dict(style="WSD-S", wsd_decay_steps=WSDS_ANNEAL * u, lr_wsd_decay_style="linear", lr_style_options=opts)
    if style == "power":
        return dict(style="power", lr_style_options=LRStyleOptions(power_exponent=POWER_B))
    if style == "power-tail":
        return dict(style="power", lr_style_options=LRStyleOptions(power_exponent=POWER_B, power_decay_steps=POWER_TAIL * u))
    return dict(style=style)


STYLES = [
    "constant", "linear", "cosine", "inverse-square-root",
    "WSD-linear", "WSD-cosine", "WSD-exponential", "WSD-minus_sqrt",
    "power", "power-tail", "WSD-S",
]
CHECK_ITERS = (0, 3, 10, 11, 25, 39, 40, 41, 55, 75, 80, 85, 90, 99, 100, 101, 130)


@pytest.mark.parametrize("unit", [1, 8], ids=["iterations", "samples_gbs8"])
@pytest.mark.parametrize("style", STYLES)
def test_lr_follows_formula_through_warmup_decay_and_beyond(style, unit):
    opt = Groups({})
    sched = make(opt, unit=unit, **style_kwargs(style, unit))
    for it in range(max(CHECK_ITERS) + 1):
        if it in CHECK_ITERS:
            want = expected_lr(style, it * unit, unit)
            assert sched.num_steps == it * unit
            assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12, abs=1e-15), (style, it)
        sched.step(unit)


@pytest.mark.parametrize(
    "style, iteration, value",
    [
        ("linear", 55, (MAX + MIN) / 2),  # halfway between warmup end and decay end
        ("cosine", 55, (MAX + MIN) / 2),
        ("cosine", 100, MIN),
        ("inverse-square-root", 40, MAX / 2),  # sqrt(10/40)
        ("inverse-square-root", 130, MIN),  # past decay: min
        ("WSD-linear", 90, (MAX + MIN) / 2),  # anneal runs 80..100
        ("WSD-exponential", 90, MIN + (MAX - MIN) * (2**0.5 - 1)),
        ("WSD-minus_sqrt", 85, (MAX + MIN) / 2),  # r' = 1/4
        ("WSD-cosine", 80, MAX),
        ("power", 40, 4**-0.51),
        ("WSD-S", 35, (MAX + MIN) / 2),  # period 1 anneals 30..40
        ("WSD-S", 41, MAX),  # back to max in period 2
        ("constant", 500, MAX),
    ],
)
def test_landmark_values(style, iteration, value):
    """A few values worked out by hand, so the oracle above is not the only witness."""
    opt = Groups({})
    sched = make(opt, **style_kwargs(style, 1))
    sched.step(iteration)
    assert opt.param_groups[0]["lr"] == pytest.approx(value, rel=1e-12)


def test_power_is_floored_at_min_lr():
    opt = Groups({})
    sched = make(opt, min_lr=0.4, **style_kwargs("power", 1))
    sched.step(20)
    assert opt.param_groups[0]["lr"] == pytest.approx(2**-0.51)  # 0.70, above the floor
    sched.step(80)
    assert opt.param_groups[0]["lr"] == 0.4  # 10**-0.51 = 0.31 would be below it


def test_warmup_starts_at_init_lr():
    opt = Groups({})
    make(opt, style="cosine")
    assert opt.param_groups[0]["lr"] == INIT


@pytest.mark.parametrize("style", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("unit", [1, 8])
def test_weight_decay_styles(style, unit):
    start, end = (0.05, 0.05) if style == "constant" else (0.01, 0.09)
    opt = Groups({})
    sched = make(opt, unit=unit, start_wd=start, end_wd=end, wd_incr_steps=40 * unit, wd_incr_style=style)
    for it in (0, 10, 20, 40, 41, 200):
        sched.num_steps = 0
        sched.step(it * unit)
        r = it / 40
        if it > 40 or style == "constant":
            want = end
        elif style == "linear":
            want = start + r * (end - start)
        else:
            want = start + (end - start) * 0.5 * (math.cos(math.pi * (1 - r)) + 1)
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert style == "constant" or sched.get_wd() == end


def test_cosine_wd_landmarks():
    opt = Groups({})
    sched = make(opt, start_wd=0.0, end_wd=0.1, wd_incr_steps=40, wd_incr_style="cosine")
    sched.step(20)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.05)
    sched.step(-10)  # r = 1/4: 0.5 * (cos(3pi/4) + 1) = (1 - 1/sqrt 2) / 2
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1 * (1 - 2**-0.5) / 2)


def test_per_group_keys_and_multipliers():
    opt = Groups(
        {},
        {"max_lr": 2.0, "min_lr": 0.5},
        {"lr_mult": 0.25, "wd_mult": 0.0},
        {"start_wd": 0.2, "end_wd": 0.4, "wd_mult": 0.5},
    )
    sched = make(opt, style="linear")
    sched.step(55)  # halfway through decay; wd 55% through its increase
    lrs = [g["lr"] for g in opt.param_groups]
    wds = [g["weight_decay"] for g in opt.param_groups]
    assert lrs == pytest.approx([(MAX + MIN) / 2, (2.0 + 0.5) / 2, 0.25 * (MAX + MIN) / 2, (MAX + MIN) / 2])
    assert wds == pytest.approx([0.055, 0.055, 0.0, 0.5 * (0.2 + 0.55 * 0.2)])
    assert sched.get_lr(opt.param_groups[2]) == lrs[2]


def test_every_group_updated_including_empty_ones_and_tensor_values_in_place():
    lr_tensor = torch.tensor(123.0)
    wd_tensor = torch.tensor(7.0)
    opt = Groups({"lr": lr_tensor, "weight_decay": wd_tensor}, {"lr": 5.0, "weight_decay": 5.0})
    sched = make(opt, style="constant", start_wd=0.02, end_wd=0.02, wd_incr_style="constant")
    sched.step(10)
    assert opt.param_groups[0]["lr"] is lr_tensor and opt.param_groups[0]["weight_decay"] is wd_tensor
    assert lr_tensor.item() == pytest.approx(MAX) and wd_tensor.item() == pytest.approx(0.02)
    assert opt.param_groups[1]["lr"] == MAX and opt.param_groups[1]["weight_decay"] == 0.02


def test_real_sgd_groups_are_driven():
    p1, p2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([{"params": [p1]}, {"params": [p2], "lr_mult": 0.1}], lr=123.0)
    sched = make(opt, style="cosine")
    sched.step(55)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.55, 0.055])


def test_canonical_lr_for_logging():
    opt = Groups({"lr_mult": 0.5, "default_config": False}, {"default_config": True})
    sched = make(opt, style="constant")
    sched.step(20)
    assert sched.get_canonical_lr_for_logging() == MAX
    assert sched.get_canonical_lr_for_logging([{"lr": 0.3}, {"lr": 0.4}]) == 0.3


# ---- checkpoints and resume --------------------------------------------------------------------------


def test_state_dict_has_megatron_fields_plus_wsd_and_new_style_fields():
    sched = make(style="WSD", wsd_decay_steps=20, lr_wsd_decay_style="cosine")
    sched.step(33)
    sd = sched.state_dict()
    assert sd["num_steps"] == 33 and sd["max_lr"] == MAX and sd["min_lr"] == MIN and sd["init_lr"] == INIT
    assert (sd["lr_warmup_steps"], sd["lr_decay_steps"], sd["lr_decay_style"]) == (W, D, "WSD")
    assert (sd["start_wd"], sd["end_wd"], sd["wd_incr_style"], sd["wd_incr_steps"]) == (0.0, 0.1, "linear", D)
    assert (sd["wsd_decay_steps"], sd["lr_wsd_decay_style"]) == (20, "cosine")
    assert (sd["power_exponent"], sd["power_decay_steps"], sd["wsds_period_ends"]) == (-0.51, 0, [])


@pytest.mark.parametrize("style", ["cosine", "WSD-exponential", "WSD-S", "power-tail"])
def test_round_trip_continues_the_same_curve(style):
    a_opt, b_opt = Groups({}, {"max_lr": 3.0}), Groups({}, {"max_lr": 3.0})
    a = make(a_opt, unit=8, **style_kwargs(style, 8))
    for _ in range(37):
        a.step(8)
    b = make(b_opt, unit=8, **style_kwargs(style, 8))
    b.load_state_dict(a.state_dict())
    assert b.num_steps == 37 * 8
    for _ in range(80):
        assert [g["lr"] for g in b_opt.param_groups] == [g["lr"] for g in a_opt.param_groups]
        assert [g["weight_decay"] for g in b_opt.param_groups] == [g["weight_decay"] for g in a_opt.param_groups]
        a.step(8)
        b.step(8)
    assert b_opt.param_groups[0]["lr"] == pytest.approx(expected_lr(style, 117 * 8, 8))


def test_load_into_a_stepped_scheduler_sets_the_step_instead_of_adding_to_it():
    sd = _checkpoint_at(55, style="linear")
    opt = Groups({})
    sched = make(opt, style="linear")
    sched.step(30)
    sched.load_state_dict(sd)
    assert sched.num_steps == 55 and opt.param_groups[0]["lr"] == pytest.approx((MAX + MIN) / 2)


def _checkpoint_at(num_steps, **kw):
    sched = make(**kw)
    sched.step(num_steps)
    return sched.state_dict()


def test_use_checkpoint_takes_checkpoint_values_and_continues_from_its_step():
    sd = _checkpoint_at(55, style="linear")
    opt = Groups({})
    sched = make(opt, style="cosine", max_lr=2.0, lr_decay_steps=200)  # runtime differs; checkpoint wins
    assert opt.param_groups[0]["lr"] == INIT  # fresh scheduler: step 0
    sched.load_state_dict(sd)
    assert (sched.max_lr, sched.lr_decay_steps, sched.lr_decay_style, sched.num_steps) == (MAX, D, "linear", 55)
    assert opt.param_groups[0]["lr"] == pytest.approx((MAX + MIN) / 2)  # step 55, not 0
    sched.step(1)
    assert opt.param_groups[0]["lr"] == pytest.approx(MIN + (MAX - MIN) * (1 - 46 / 90))


def test_override_keeps_runtime_values_at_the_checkpoint_step():
    sd = _checkpoint_at(55, style="linear")
    opt = Groups({})
    sched = make(opt, style="cosine", max_lr=2.0, min_lr=0.0, lr_decay_steps=200,
                 override_opt_param_scheduler=True, use_checkpoint_opt_param_scheduler=False)
    sched.load_state_dict(sd)
    assert (sched.max_lr, sched.lr_decay_steps, sched.num_steps) == (2.0, 200, 55)
    r = (55 - W) / (200 - W)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * 0.5 * (math.cos(math.pi * r) + 1))


def test_neither_flag_requires_agreement_and_names_both_values():
    sd = _checkpoint_at(30, style="linear")
    sched = make(style="linear", min_lr=0.2, use_checkpoint_opt_param_scheduler=False)
    with pytest.raises(ConfigError, match=r"min_lr: the scheduler has 0\.2 but the checkpoint has 0\.1"):
        sched.load_state_dict(sd)
    same = make(style="linear", use_checkpoint_opt_param_scheduler=False)
    same.load_state_dict(sd)
    assert same.num_steps == 30


def _sgd(max_lr):
    p = torch.nn.Parameter(torch.ones(2))
    return torch.optim.SGD([{"params": [p], "max_lr": max_lr, "min_lr": 0.0}], lr=max_lr)


def _resume_with_optimizer_checkpoint(**flags):
    """Run 1 used group max_lr=1.0; run 2 is configured with 0.5 and loads run 1's optimizer and scheduler."""
    old_opt = _sgd(1.0)
    old = make(old_opt, style="linear", min_lr=0.0)
    old.step(55)
    opt_sd, sched_sd = old_opt.state_dict(), old.state_dict()

    new_opt = _sgd(0.5)
    new = make(new_opt, style="linear", min_lr=0.0, **flags)
    new_opt.load_state_dict(opt_sd)  # the optimizer checkpoint brings back max_lr=1.0 in the group
    assert new_opt.param_groups[0]["max_lr"] == 1.0
    new.load_state_dict(sched_sd)
    return new_opt


def test_override_beats_max_lr_restored_by_the_optimizer_checkpoint():
    opt = _resume_with_optimizer_checkpoint(override_opt_param_scheduler=True, use_checkpoint_opt_param_scheduler=False)
    assert opt.param_groups[0]["max_lr"] == 0.5
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.5)  # linear, halfway, min 0


def test_use_checkpoint_keeps_max_lr_restored_by_the_optimizer_checkpoint():
    opt = _resume_with_optimizer_checkpoint()
    assert opt.param_groups[0]["max_lr"] == 1.0
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_neither_flag_refuses_a_group_max_lr_that_changed():
    with pytest.raises(ConfigError, match=r"param_groups\[0\]\.max_lr: the scheduler has 0\.5 but the checkpoint has 1\.0"):
        _resume_with_optimizer_checkpoint(use_checkpoint_opt_param_scheduler=False)


def test_override_removes_group_keys_the_runtime_config_does_not_have():
    opt = Groups({})
    sched = make(opt, style="constant", override_opt_param_scheduler=True, use_checkpoint_opt_param_scheduler=False)
    opt.param_groups = [{"params": [], "max_lr": 9.0, "lr_mult": 3.0}]  # as a loaded optimizer would leave them
    sched.load_state_dict(_checkpoint_at(20, style="constant"))
    assert "max_lr" not in opt.param_groups[0] and "lr_mult" not in opt.param_groups[0]
    assert opt.param_groups[0]["lr"] == MAX


@pytest.mark.parametrize(
    "legacy",
    [
        {"start_lr": MAX, "warmup_iter": W, "end_iter": D, "decay_style": "cosine", "num_iters": 55},
        {"max_lr": MAX, "warmup_steps": W, "decay_steps": D, "lr_decay_style": "cosine", "num_steps": 55},
    ],
)
def test_legacy_keys_load(legacy):
    sd = dict(legacy, min_lr=MIN)  # no wd, init_lr or WSD fields: older checkpoints lack them
    opt = Groups({})
    sched = make(opt, style="cosine", use_checkpoint_opt_param_scheduler=False)
    sched.load_state_dict(sd)
    assert sched.num_steps == 55 and sched.wsd_decay_steps is None and sched.init_lr == INIT
    assert opt.param_groups[0]["lr"] == pytest.approx((MAX + MIN) / 2)


def test_checkpoint_without_num_steps_is_refused():
    with pytest.raises(ConfigError, match="num_steps"):
        make().load_state_dict({"max_lr": MAX})


def test_use_checkpoint_wsd_style_without_wsd_fields_is_refused():
    sd = _checkpoint_at(10, style="WSD", wsd_decay_steps=20, lr_wsd_decay_style="linear")
    del sd["wsd_decay_steps"], sd["lr_wsd_decay_style"]  # as Megatron-LM writes it
    with pytest.raises(ConfigError, match="wsd_decay_steps"):
        make(style="linear").load_state_dict(sd)


# ---- constructor validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(min_lr=-0.1), "min_lr=-0.1"),
        (dict(min_lr=2.0), "min_lr=2.0"),
        (dict(init_lr=1.5), "init_lr=1.5"),
        (dict(max_lr=float("nan")), "max_lr=nan"),
        (dict(lr_decay_steps=0, lr_warmup_steps=0), "lr_decay_steps=0"),
        (dict(lr_warmup_steps=100), "lr_warmup_steps=100"),
        (dict(lr_warmup_steps=-1), "lr_warmup_steps=-1"),
        (dict(start_wd=-0.1), "start_wd=-0.1"),
        (dict(start_wd=0.2, end_wd=0.1), "start_wd=0.2"),
        (dict(wd_incr_style="constant", start_wd=0.0, end_wd=0.1), "end_wd=0.1"),
        (dict(wd_incr_steps=0), "wd_incr_steps=0"),
        (dict(lr_decay_style="cosin"), "lr_decay_style='cosin'"),
        (dict(wd_incr_style="exp"), "wd_incr_style='exp'"),
        (dict(lr_decay_style="WSD", lr_wsd_decay_style="linear"), "wsd_decay_steps=None"),
        (dict(lr_decay_style="WSD", wsd_decay_steps=20), "lr_wsd_decay_style=None"),
        (dict(lr_decay_style="WSD", wsd_decay_steps=20, lr_wsd_decay_style="sqrt"), "lr_wsd_decay_style='sqrt'"),
        (dict(lr_decay_style="WSD", wsd_decay_steps=95, lr_wsd_decay_style="linear"), "wsd_decay_steps=95"),
        (dict(override_opt_param_scheduler=True), "override_opt_param_scheduler=True"),
        (dict(lr_decay_style="power", lr_style_options=LRStyleOptions(power_exponent=0.5)), "power_exponent=0.5"),
        (dict(lr_decay_style="power", lr_warmup_steps=0), "lr_warmup_steps=0"),
        (dict(lr_decay_style="power", lr_style_options=LRStyleOptions(power_decay_steps=95)), "power_decay_steps=95"),
        (dict(lr_decay_style="WSD-S", wsd_decay_steps=10, lr_wsd_decay_style="linear"), "wsds_period_ends=()"),
        (
            dict(lr_decay_style="WSD-S", wsd_decay_steps=10, lr_wsd_decay_style="linear",
                 lr_style_options=LRStyleOptions(wsds_period_ends=(40, 90))),
            "wsds_period_ends=(40, 90)",
        ),
        (
            dict(lr_decay_style="WSD-S", wsd_decay_steps=10, lr_wsd_decay_style="linear",
                 lr_style_options=LRStyleOptions(wsds_period_ends=(40, 45, 100))),
            "wsds_period_ends=(40, 45, 100)",
        ),
    ],
)
def test_invalid_constructor_arguments_raise_config_error(kw, fragment):
    with pytest.raises(ConfigError) as err:
        make(**kw)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "group, fragment",
    [
        ({"max_lr": 0.05}, "param_groups[0].min_lr=0.1"),  # min above the group's max
        ({"lr_mult": -1.0}, "param_groups[0].lr_mult=-1.0"),
        ({"start_wd": 0.5}, "param_groups[0].start_wd=0.5"),  # above the scheduler's end_wd
    ],
)
def test_invalid_group_values_raise_config_error(group, fragment):
    with pytest.raises(ConfigError) as err:
        make(Groups(group))
    assert fragment in str(err.value)
