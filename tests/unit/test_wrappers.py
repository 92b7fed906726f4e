"""FP32 / Float16 / Chained wrappers against torch.optim run by hand on identical models.

Tolerances: runs that differ from the oracle only in how the global norm is summed
(sqrt(Σ‖g‖²) vs torch's vector_norm of per-tensor norms) are compared with
``assert_close(rtol=1e-5, atol=1e-6)`` after 20 steps; everything else is bitwise.
"""

import copy
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from megatron_opt.config import OptimizerConfig
from megatron_opt.grad_scaler import DynamicGradScaler, build_grad_scaler
from megatron_opt.optimizer import (
    ChainedOptimizer,
    Float16Optimizer,
    FP32Optimizer,
    GradStatsGroups,
    MegatronOptimizer,
)

CPU = torch.device("cpu")
STEPS = 20
TIGHT = dict(rtol=1e-5, atol=1e-6)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def batch(step, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 6, generator=g).to(dtype), torch.randn(16, 3, generator=g).to(dtype)


def backward(model, step, loss_mult=1.0):
    dtype = next(model.parameters()).dtype
    x, y = batch(step, dtype)
    loss = ((model(x) - y) ** 2).mean() * loss_mult
    loss.backward()


def cfg(**kw):
    kw.setdefault("lr", 1e-2)
    kw.setdefault("clip_grad", 0.0)
    return OptimizerConfig(**kw)


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def assert_params_equal(a, b):
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


# ---- FP32Optimizer ------------------------------------------------------------------------------


def test_fp32_no_clip_is_bitwise_adamw_and_reports_torch_norm():
    model, ref = make_model(), make_model()
    opt = FP32Optimizer(adamw(model.parameters()), cfg(clip_grad=0.0))
    ref_opt = adamw(ref.parameters())
    for step in range(STEPS):
        opt.zero_grad()
        ref_opt.zero_grad()
        backward(model, step)
        backward(ref, step)
        ref_norm = torch.nn.utils.get_total_norm([p.grad for p in ref.parameters()]).item()
        ok, norm, zeros = opt.step()
        ref_opt.step()
        assert ok is True and zeros is None
        assert isinstance(norm, float) and norm == pytest.approx(ref_norm, rel=1e-6)
    assert_params_equal(model, ref)


def test_fp32_clip_matches_adamw_after_clip_grad_norm():
    model, ref = make_model(), make_model()
    opt = FP32Optimizer(adamw(model.parameters()), cfg(clip_grad=1.0))
    ref_opt = adamw(ref.parameters())
    clipped_steps = 0
    for step in range(STEPS):
        opt.zero_grad()
        ref_opt.zero_grad()
        backward(model, step, loss_mult=20.0)
        backward(ref, step, loss_mult=20.0)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm=1.0).item()
        clipped_steps += ref_norm > 1.0
        _, norm, _ = opt.step()
        ref_opt.step()
        assert norm == pytest.approx(ref_norm, rel=1e-5)
    assert clipped_steps == STEPS  # the test really exercises clipping
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, r, **TIGHT)


def test_fp32_reads_main_grad_and_counts_zeros():
    model = make_model()
    ref = make_model()
    opt = FP32Optimizer(torch.optim.SGD(model.parameters(), lr=0.1), cfg(log_num_zeros_in_grad=True))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    backward(ref, 0)
    for p, r in zip(model.parameters(), ref.parameters()):
        p.main_grad = r.grad.clone()
        p.grad = None
    model[0].weight.main_grad[0].zero_()
    ref[0].weight.grad[0].zero_()
    ok, norm, zeros = opt.step()
    ref_opt.step()
    assert ok and zeros == float(sum(int((r.grad == 0).sum()) for r in ref.parameters())) and zeros >= 6
    assert all(p.grad is p.main_grad for p in model.parameters())
    assert_params_equal(model, ref)


def test_grad_norm_skip_threshold_skips_the_update():
    model = make_model()
    before = copy.deepcopy(model)
    opt = FP32Optimizer(adamw(model.parameters()), cfg(clip_grad=1.0, grad_norm_skip_threshold=0.5))
    backward(model, 0, loss_mult=100.0)
    expected_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    ok, norm, zeros = opt.step()
    assert ok is False and zeros is None and norm == pytest.approx(expected_norm, rel=1e-6) and norm > 0.5
    assert_params_equal(model, before)
    assert len(opt.state) == 0
    opt.zero_grad()
    backward(model, 0, loss_mult=1e-3)
    ok, norm, _ = opt.step()
    assert ok is True and norm < 0.5
    assert not torch.equal(model[0].weight, before[0].weight)


def test_shared_params_are_left_out_of_the_norm_but_clipped():
    a, b, c = (nn.Parameter(torch.zeros(4)) for _ in range(3))
    a.shared = True
    c.tensor_model_parallel = True
    a.grad, b.grad, c.grad = torch.full((4,), 3.0), torch.full((4,), 1.0), torch.full((4,), 2.0)
    opt = FP32Optimizer(torch.optim.SGD([a, b, c], lr=1.0), cfg(clip_grad=1.0))
    expected = math.sqrt(4 * 1.0 + 4 * 4.0)  # b and c only; single process = TP rank 0
    assert opt.get_grad_norm() == pytest.approx(expected, rel=1e-6)
    _, norm, _ = opt.step()
    assert norm == pytest.approx(expected, rel=1e-6)
    coeff = 1.0 / (expected + 1e-6)
    torch.testing.assert_close(a, torch.full((4,), -3.0 * coeff))  # the shared grad is clipped too
    torch.testing.assert_close(b, torch.full((4,), -1.0 * coeff))


def test_init_state_creates_state_before_first_step_and_matches_lazy_init():
    def init_adamw_state(optimizer):
        for group in optimizer.param_groups:
            for p in group["params"]:
                optimizer.state[p] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": torch.zeros_like(p),
                }

    model, ref = make_model(), make_model()
    opt = FP32Optimizer(adamw(model.parameters()), cfg(), init_state_fn=init_adamw_state)
    ref_opt = adamw(ref.parameters())
    opt.init_state()
    assert len(opt.state) == 4 and all(torch.count_nonzero(s["exp_avg"]) == 0 for s in opt.state.values())
    for step in range(3):
        for o, m in ((opt, model), (ref_opt, ref)):
            o.zero_grad()
            backward(m, step)
            o.step()
    assert_params_equal(model, ref)


def test_rank_without_parameters_still_steps():
    for opt in (FP32Optimizer(None, cfg()), Float16Optimizer(None, cfg(fp16=True), DynamicGradScaler(4.0, 1.0, device=CPU))):
        assert opt.step() == (True, 0.0, None)
        assert opt.get_loss_scale().shape == (1,)
        assert opt.param_groups == [] and len(opt.state) == 0
        opt.zero_grad()


def test_fp32_with_constant_scaler_unscales_and_skips_on_inf():
    model, ref = make_model(), make_model()
    config = cfg(loss_scale=8.0)
    opt = FP32Optimizer(torch.optim.SGD(model.parameters(), lr=0.1), config, grad_scaler=build_grad_scaler(config, CPU))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    assert opt.get_loss_scale().item() == 8.0
    backward(model, 0, loss_mult=opt.get_loss_scale().item())
    backward(ref, 0)
    assert opt.step()[0]
    ref_opt.step()
    assert_params_equal(model, ref)  # scaling by a power of two and back is exact
    before = copy.deepcopy(model)
    opt.zero_grad()
    backward(model, 1)
    model[2].bias.grad[0] = math.nan
    assert opt.step() == (False, None, None)
    assert_params_equal(model, before)
    assert opt.get_loss_scale().item() == 8.0


def test_loss_scale_is_one_without_scaler():
    opt = FP32Optimizer(adamw(make_model().parameters()), cfg())
    assert opt.get_loss_scale().tolist() == [1.0]
    assert opt.scale_loss(torch.tensor(3.0)).item() == 3.0


# ---- Float16Optimizer ----------------------------------------------------------------------------


def test_bf16_matches_fp32_master_loop_bitwise_and_fp32_run_within_tolerance():
    fp32_model = make_model()
    model = make_model().to(torch.bfloat16)
    oracle_model = make_model().to(torch.bfloat16)
    opt = Float16Optimizer(adamw(model.parameters()), cfg(bf16=True, clip_grad=0.0), grad_scaler=None)
    fp32_opt = adamw(fp32_model.parameters())
    # Oracle: a plain AdamW on fp32 copies, fed with the bf16 grads, cast back into the bf16 model.
    masters = [p.detach().float().clone().requires_grad_() for p in oracle_model.parameters()]
    oracle_opt = adamw(masters)
    for step in range(STEPS):
        opt.zero_grad()
        fp32_opt.zero_grad()
        oracle_model.zero_grad()
        backward(model, step)
        backward(fp32_model, step)
        backward(oracle_model, step)
        assert opt.step()[0]
        fp32_opt.step()
        for m, p in zip(masters, oracle_model.parameters()):
            m.grad = p.grad.float()
        oracle_opt.step()
        with torch.no_grad():
            for m, p in zip(masters, oracle_model.parameters()):
                p.copy_(m)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    main_params = opt.get_parameters()
    assert all(p.dtype == torch.float32 for p in main_params)
    for main, master in zip(main_params, masters):
        assert torch.equal(main, master)
    assert_params_equal(model, oracle_model)
    for main, model_p in zip(main_params, model.parameters()):
        assert torch.equal(model_p, main.to(torch.bfloat16))
    max_diff = max((m - p).abs().max().item() for m, p in zip(main_params, fp32_model.parameters()))
    assert max_diff < 5e-3  # observed ~1e-3: bf16 forward/backward vs fp32, 20 AdamW steps at lr=1e-2


def test_float16_copies_self_describing_attributes_and_rejects_other_dtypes():
    p = nn.Parameter(torch.zeros(6, 4, dtype=torch.bfloat16))
    p.tensor_model_parallel, p.partition_dim, p.partition_stride = True, 0, 1
    p.is_qkv, p.qkv_split_shapes, p.shared, p.use_muon = True, (2, 2, 2), True, False
    p.custom_flag, p.not_plain = 7, {"x": 1}
    f32 = nn.Parameter(torch.zeros(3))
    opt = Float16Optimizer(torch.optim.SGD([p, f32], lr=0.1), cfg(bf16=True), None)
    main, kept = opt.param_groups[0]["params"]
    assert main is not p and main.dtype == torch.float32 and kept is f32
    for name, value in dict(tensor_model_parallel=True, partition_dim=0, partition_stride=1, is_qkv=True,
                            qkv_split_shapes=(2, 2, 2), shared=True, use_muon=False, custom_flag=7).items():
        assert getattr(main, name) == value
    assert not hasattr(main, "not_plain")
    with pytest.raises(TypeError, match="float64"):
        Float16Optimizer(torch.optim.SGD([nn.Parameter(torch.zeros(2, dtype=torch.float64))], lr=0.1), cfg(bf16=True), None)


def test_float16_moves_existing_state_to_main_params_and_uses_main_grad():
    p = nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    inner = torch.optim.SGD([p], lr=0.5, momentum=0.9)
    inner.state[p]["momentum_buffer"] = torch.full((3,), 2.0)
    opt = Float16Optimizer(inner, cfg(bf16=True), None)
    main = opt.get_parameters()[0]
    assert p not in inner.state and torch.equal(inner.state[main]["momentum_buffer"], torch.full((3,), 2.0))
    p.main_grad = torch.full((3,), 0.25)
    assert opt.step()[0]
    assert main.grad is p.main_grad
    # buf = 0.9 * 2 + 0.25 = 2.05; main = 1 - 0.5 * 2.05
    torch.testing.assert_close(main.detach(), torch.full((3,), 1 - 0.5 * 2.05), rtol=0, atol=1e-7)
    assert torch.equal(p.detach(), main.detach().to(torch.bfloat16))


def _fp16_setup(**config_kw):
    torch.manual_seed(3)
    model = nn.Linear(4, 3).half()
    config = cfg(fp16=True, initial_loss_scale=2.0**10, min_loss_scale=1.0, loss_scale_window=3, hysteresis=2, **config_kw)
    opt = Float16Optimizer(adamw(model.parameters()), config, build_grad_scaler(config, CPU))
    return model, opt


def _set_scaled_grads(model, opt, step, poison=None):
    g = torch.Generator().manual_seed(step)
    scale = opt.get_loss_scale().item()
    raw = [torch.randn(p.shape, generator=g) for p in model.parameters()]
    for p, r in zip(model.parameters(), raw):
        p.grad = (r * scale).half()
    if poison is not None:
        model.weight.grad[1, 2] = poison
    return raw


@pytest.mark.parametrize("poison", [math.inf, -math.inf, math.nan])
def test_fp16_overflow_skips_step_and_leaves_everything_unchanged(poison):
    model, opt = _fp16_setup()
    _set_scaled_grads(model, opt, 0)
    assert opt.step()[0]
    model_before = [p.detach().clone() for p in model.parameters()]
    main_before = [p.detach().clone() for p in opt.get_parameters()]
    state_before = copy.deepcopy(opt.state_dict()["optimizer"]["state"])
    _set_scaled_grads(model, opt, 1, poison=poison)
    assert opt.step() == (False, None, None)
    assert all(torch.equal(a, b) for a, b in zip(model_before, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(main_before, opt.get_parameters()))
    state_after = opt.state_dict()["optimizer"]["state"]
    for idx, s in state_before.items():
        for key, value in s.items():
            assert torch.equal(value, state_after[idx][key])


def test_fp16_scale_trajectory_and_unscaled_update_match_oracle():
    model, opt = _fp16_setup()
    masters = [p.detach().float().clone().requires_grad_() for p in model.parameters()]
    oracle = adamw(masters)
    T, F = True, False
    pattern = [F, T, T, T, F, F, F, F]
    expected_scales = [2.0**10, 2.0**10, 2.0**9, 2.0**8, 2.0**8, 2.0**8, 2.0**9, 2.0**9]
    scales = []
    for step, overflow in enumerate(pattern):
        opt.zero_grad()
        scale = opt.get_loss_scale().item()
        raw = _set_scaled_grads(model, opt, step, poison=math.inf if overflow else None)
        ok, norm, _ = opt.step()
        scales.append(opt.get_loss_scale().item())
        assert ok is (not overflow)
        if not overflow:
            # Oracle: the same fp16 grads divided by the (power-of-two) scale, stepped in fp32.
            for m, r in zip(masters, raw):
                m.grad = (r * scale).half().float() / scale
            expected_norm = torch.nn.utils.get_total_norm([m.grad for m in masters]).item()
            assert norm == pytest.approx(expected_norm, rel=1e-6)
            oracle.step()
    assert scales == expected_scales
    for main, m in zip(opt.get_parameters(), masters):
        assert torch.equal(main, m)


def test_float16_state_dict_round_trip_and_legacy_keys():
    model, opt = _fp16_setup()
    for step in range(3):
        opt.zero_grad()
        _set_scaled_grads(model, opt, step, poison=math.inf if step == 1 else None)
        opt.step()
    state = copy.deepcopy(opt.state_dict())
    assert set(state) == {"optimizer", "grad_scaler", "fp32_from_fp16_params"}
    assert state["grad_scaler"]["hysteresis_tracker"] == 1
    assert [len(g) for g in state["fp32_from_fp16_params"]] == [2]

    for legacy in (False, True):
        fresh_model, fresh = _fp16_setup()
        fresh_model.load_state_dict(model.state_dict())
        sd = copy.deepcopy(state)
        if legacy:
            sd = {"optimizer_state_dict": sd["optimizer"], "grad_scaler": sd["grad_scaler"], "fp32_from_fp16": sd["fp32_from_fp16_params"]}
        fresh.load_state_dict(sd)
        assert fresh.get_loss_scale().item() == opt.get_loss_scale().item()
        for a, b in zip(fresh.get_parameters(), opt.get_parameters()):
            assert torch.equal(a, b)

    # reload_model_params pulls the model values into the main params.
    with torch.no_grad():
        model.weight.fill_(0.5)
    opt.reload_model_params()
    assert torch.equal(opt.get_parameters()[0], torch.full_like(opt.get_parameters()[0], 0.5))


# ---- ChainedOptimizer ------------------------------------------------------------------------------


def _two_child_chain(model, clip_grad=1.0, log_zeros=False):
    first = FP32Optimizer(adamw(model[0].parameters()), cfg(clip_grad=clip_grad, log_num_zeros_in_grad=log_zeros))
    second = FP32Optimizer(torch.optim.SGD(model[2].parameters(), lr=0.05, momentum=0.9), cfg(clip_grad=clip_grad))
    return ChainedOptimizer([first, second])


def test_chain_clips_with_one_global_norm_like_torch():
    model, ref = make_model(), make_model()
    chain = _two_child_chain(model)
    ref_opts = [adamw(ref[0].parameters()), torch.optim.SGD(ref[2].parameters(), lr=0.05, momentum=0.9)]
    for step in range(STEPS):
        chain.zero_grad()
        ref.zero_grad()
        backward(model, step, loss_mult=20.0)
        backward(ref, step, loss_mult=20.0)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm=1.0).item()
        assert ref_norm > 1.0
        ok, norm, zeros = chain.step()
        for o in ref_opts:
            o.step()
        assert ok is True and zeros is None and norm == pytest.approx(ref_norm, rel=1e-5)
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, r, **TIGHT)


def test_single_child_chain_returns_the_same_types_as_the_child():
    model = make_model()
    chain = ChainedOptimizer([FP32Optimizer(adamw(model.parameters()), cfg(log_num_zeros_in_grad=True))])
    backward(model, 0)
    ok, norm, zeros = chain.step()
    assert type(ok) is bool and type(norm) is float and type(zeros) is float
    assert isinstance(chain.state_dict(), list) and len(chain.state_dict()) == 1
    assert chain.get_loss_scale().tolist() == [1.0]


def test_chain_state_dict_round_trip_continues_bitwise():
    model = make_model()
    chain = _two_child_chain(model)
    for step in range(5):
        chain.zero_grad()
        backward(model, step, loss_mult=20.0)
        chain.step()
    state = copy.deepcopy(chain.state_dict())
    assert isinstance(state, list) and len(state) == 2

    resumed_model = make_model(seed=42)
    resumed_model.load_state_dict(model.state_dict())
    resumed = _two_child_chain(resumed_model)
    resumed.load_state_dict(state)
    for step in range(5, 10):
        for c, m in ((chain, model), (resumed, resumed_model)):
            c.zero_grad()
            backward(m, step, loss_mult=20.0)
            c.step()
    assert_params_equal(model, resumed_model)

    single = ChainedOptimizer([FP32Optimizer(adamw(make_model().parameters()), cfg())])
    single.load_state_dict(adamw(make_model().parameters()).state_dict())  # bare dict for one child
    with pytest.raises(ValueError):
        resumed.load_state_dict(state[0])


def test_chain_param_groups_are_the_childrens_live_dicts():
    model = make_model()
    chain = _two_child_chain(model)
    assert len(chain.param_groups) == 2
    for group, lr in zip(chain.param_groups, (0.123, 0.456)):
        group["lr"] = lr
    assert chain.chained_optimizers[0].param_groups[0]["lr"] == 0.123
    assert chain.chained_optimizers[1].optimizer.param_groups[0]["lr"] == 0.456
    backward(model, 0)
    chain.step()
    assert len(chain.state) == 4 and set(chain.state) == set(model.parameters())
    assert "momentum_buffer" in chain.state[model[2].weight] and "exp_avg" in chain.state[model[0].weight]


def test_chain_counts_zeros_and_mixes_fp32_with_bf16_children():
    model = make_model()
    model[2].to(torch.bfloat16)
    fp32_child = FP32Optimizer(torch.optim.SGD(model[0].parameters(), lr=0.1), cfg(log_num_zeros_in_grad=True))
    bf16_child = Float16Optimizer(torch.optim.SGD(model[2].parameters(), lr=0.1), cfg(bf16=True), None)
    chain = ChainedOptimizer([fp32_child, bf16_child])
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[0].bias.grad[:5] = 0.0
    model[2].weight.grad[0] = 0.0
    ok, norm, zeros = chain.step()
    n_params = sum(p.numel() for p in model.parameters())
    assert ok and zeros == 5 + 12
    assert norm == pytest.approx(math.sqrt(n_params - 17), rel=1e-6)


@pytest.fixture
def world_of_one(tmp_path):
    """A real (size-1) process group, so children can reduce over distinct group objects."""
    assert not dist.is_initialized()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_chain_with_different_reduce_groups_combines_squared_norms(world_of_one):
    model, ref = make_model(), make_model()
    first = FP32Optimizer(adamw(model[0].parameters()), cfg(clip_grad=1.0), GradStatsGroups(reduce_group=None))
    second = FP32Optimizer(
        torch.optim.SGD(model[2].parameters(), lr=0.05),
        cfg(clip_grad=0.0),  # this child does not clip: its grads keep their size
        GradStatsGroups(reduce_group=world_of_one, tp_group=world_of_one),
    )
    chain = ChainedOptimizer([first, second])
    assert not chain._shared_reduce_group()[0]
    backward(model, 0, loss_mult=20.0)
    backward(ref, 0, loss_mult=20.0)
    ref_norm = torch.nn.utils.get_total_norm([p.grad for p in ref.parameters()]).item()
    second_grads = [p.grad.clone() for p in model[2].parameters()]
    ok, norm, _ = chain.step()
    assert ok and norm == pytest.approx(ref_norm, rel=1e-6)
    coeff = 1.0 / (ref_norm + 1e-6)
    torch.testing.assert_close(model[0].weight.grad, ref[0].weight.grad * coeff, rtol=1e-6, atol=0)
    assert all(torch.equal(g, p.grad) for g, p in zip(second_grads, model[2].parameters()))


def test_chain_fp16_overflow_in_one_child_skips_all():
    model = make_model()
    model[2].half()
    fp32_child = FP32Optimizer(adamw(model[0].parameters()), cfg())
    config = cfg(fp16=True, initial_loss_scale=4.0, loss_scale_window=3, hysteresis=1)
    fp16_child = Float16Optimizer(adamw(model[2].parameters()), config, build_grad_scaler(config, CPU))
    chain = ChainedOptimizer([fp32_child, fp16_child])
    assert chain.get_loss_scale().item() == 1.0  # child 0's scale
    before = copy.deepcopy(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[2].bias.grad[0] = math.inf
    assert chain.step() == (False, None, None)
    assert_params_equal(model, before)
    assert fp16_child.get_loss_scale().item() == 2.0
    assert isinstance(chain, MegatronOptimizer)
