"""Lion against a plain loop written here, foreach against the single-tensor path, and its registry entry."""

from __future__ import annotations


import pytest
import torch

from megatron_opt.config import OptimizerConfig
from megatron_opt.emerging.entries_lion_soap import lion_config_to_kwargs, lion_default_param_overrides, register_lion_and_soap
from megatron_opt.emerging.lion import Lion
from megatron_opt.errors import ConfigError
from megatron_opt.parallel import ProcessGroupCollection

SHAPES = [(5, 3), (7,), (), (4, 2, 3), (1, 6)]
STEPS = 10


def lion_reference(p, g, m, lr, beta1, beta2, wd, decoupled):
    """One Lion step for one tensor, written from the paper's formulas; returns (p, m)."""
    if decoupled:
        p = p * (1 - lr * wd)
    else:
        g = g + wd * p
    c = beta1 * m + (1 - beta1) * g
    p = p - lr * torch.sign(c)
    m = beta2 * m + (1 - beta2) * g
    return p, m


def make_params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)) for s in SHAPES]


def grads_for(params, step, seed=1):
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]


def lr_at(step):
    """A schedule that rewrites group['lr'] every step, as the LR scheduler does."""
    return 1e-2 * (1.0 - step / (2 * STEPS))


def run_lion(params, foreach, decoupled, steps=STEPS):
    """Two groups with their own betas and decay plus scheduler bookkeeping keys; param 2 has no grad on step 3."""
    groups = [
        dict(params=params[:2], betas=(0.9, 0.99), weight_decay=0.1, param_names=["a", "b"], max_lr=1e-2, min_lr=0.0, lr_mult=1.0),
        dict(params=params[2:], weight_decay=0.05, param_names=["c", "d", "e"], wd_mult=0.5, optimizer="lion"),
    ]
    opt = Lion(groups, lr=1.0, betas=(0.95, 0.98), use_decoupled_weight_decay=decoupled, foreach=foreach)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        for i, (p, g) in enumerate(zip(params, grads_for(params, step))):
            p.grad = None if (step == 3 and i == 2) else g
        opt.step()
    return opt


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("foreach", [True, False])
def test_matches_reference_loop(foreach, decoupled):
    params = make_params()
    expected = [p.detach().clone() for p in params]
    moments = [torch.zeros_like(p) for p in params]
    settings = [((0.9, 0.99), 0.1)] * 2 + [((0.95, 0.98), 0.05)] * 3
    for step in range(STEPS):
        for i, g in enumerate(grads_for(params, step)):
            if step == 3 and i == 2:
                continue
            (b1, b2), wd = settings[i]
            expected[i], moments[i] = lion_reference(expected[i], g, moments[i], lr_at(step), b1, b2, wd, decoupled)
    opt = run_lion(params, foreach, decoupled)
    for p, want, m in zip(params, expected, moments):
        torch.testing.assert_close(p.detach(), want, atol=1e-7, rtol=0)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, atol=1e-7, rtol=1e-6)
    assert set(opt.state[params[0]]) == {"exp_avg"}


@pytest.mark.parametrize("decoupled", [True, False])
def test_foreach_equals_single_tensor_bitwise(decoupled):
    """Mixed dtypes too, so the foreach path has several (device, dtype) buckets."""
    results = []
    for foreach in (True, False):
        params = make_params()
        params[1] = torch.nn.Parameter(params[1].detach().double())
        params[3] = torch.nn.Parameter(params[3].detach().bfloat16())
        opt = run_lion(params, foreach, decoupled)
        results.append((params, opt))
    (pa, oa), (pb, ob) = results
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
        assert torch.equal(oa.state[a]["exp_avg"], ob.state[b]["exp_avg"])


def test_l2_leaves_grad_untouched_and_reads_main_grad():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([100.0, 100.0])  # ignored: main_grad wins
    p.main_grad = torch.tensor([0.5, 0.25])
    before = p.main_grad.clone()
    Lion([p], lr=0.1, betas=(0.0, 0.5), weight_decay=1.0, use_decoupled_weight_decay=False, foreach=False).step()
    assert torch.equal(p.main_grad, before)
    # g + wd·p = (1.5, -1.75): sign (+, -); the moment is 0.5·g with β2 = 0.5.
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -1.9]))


def test_init_state_creates_exp_avg_for_every_param():
    params = make_params()
    opt = Lion(params, lr=1e-3)
    opt.init_state()
    assert all(torch.equal(opt.state[p]["exp_avg"], torch.zeros_like(p)) for p in params)
    assert len(opt.state_dict()["state"]) == len(params)


def test_eager_state_gives_the_same_step_as_lazy_state():
    a, b = make_params(), make_params()
    oa, ob = Lion(a, lr=1e-2, weight_decay=0.1), Lion(b, lr=1e-2, weight_decay=0.1)
    oa.init_state()
    for step in range(3):
        for pa, pb, g in zip(a, b, grads_for(a, step)):
            pa.grad, pb.grad = g, g.clone()
        oa.step()
        ob.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(betas=(0.9,)), dict(weight_decay=-0.1)])
def test_bad_hyperparameters_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        Lion([torch.nn.Parameter(torch.zeros(2))], **kwargs)


# ---- an independent implementation (lion-pytorch, pinned in the test extras) -------------------


def test_matches_independent_lion_pytorch():
    from lion_pytorch import Lion as TheirLion

    ours, theirs = make_params(), make_params()
    o = Lion(ours, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    t = TheirLion(theirs, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    for step in range(STEPS):
        for a, b, g in zip(ours, theirs, grads_for(ours, step)):
            a.grad, b.grad = g, g.clone()
        o.step()
        t.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# ---- registry entry -------------------------------------------------------------------------------


def test_config_to_kwargs_uses_lion_betas_not_adam_betas():
    cfg = OptimizerConfig(optimizer="lion", lr=3e-4, weight_decay=0.2, decoupled_weight_decay=False, lion_beta1=0.8, lion_beta2=0.9)
    kwargs = lion_config_to_kwargs(cfg, ProcessGroupCollection())
    assert kwargs == dict(lr=3e-4, betas=(0.8, 0.9), weight_decay=0.2, use_decoupled_weight_decay=False)
    assert lion_default_param_overrides(cfg) == {}
    opt = Lion([torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4, 4))], **kwargs)
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)


def test_config_to_kwargs_needs_lr():
    with pytest.raises(ConfigError, match="lr"):
        lion_config_to_kwargs(OptimizerConfig(optimizer="lion"), ProcessGroupCollection())


def test_registered_entry_builds_lion_and_inits_state():
    from megatron_opt.emerging.registry import get_emerging_optimizer_entry

    register_lion_and_soap()
    register_lion_and_soap()  # idempotent
    entry = get_emerging_optimizer_entry("lion")
    assert entry.optimizer_cls is Lion
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = entry.optimizer_cls([p], **entry.config_to_kwargs(OptimizerConfig(optimizer="lion", lr=1e-3), ProcessGroupCollection()))
    entry.init_state_fn(opt)
    assert torch.equal(opt.state[p]["exp_avg"], torch.zeros(2, 2))
