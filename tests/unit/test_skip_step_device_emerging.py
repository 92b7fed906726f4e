"""Our optimizers (Muon, adaptive Muon, Lion, SOAP) skip on device through ``found_inf``: no host read.

Oracle: the same 30 steps with the decision made on the host (``skip_on_device=False``), which never
calls the inner optimizer on a skipped step. The device runs call ``prepare_grads`` and then the device
decision plus the update with every tensor → host read made to raise (``step()`` itself only adds the
conversion of its return values to Python numbers at the end, after the update is queued).
"""

from __future__ import annotations

from typing import Dict, List

import pytest
import torch

from host_reads import NoHostReads
from tiny_models import TinyLM, lm_loss
from megatron_opt import OptimizerConfig, get_megatron_optimizer
from megatron_opt.distributed import DDPConfig, DistributedDataParallel
from megatron_opt.emerging.lion import Lion

SPIKE_LOSS_STEP, SPIKE_GRAD_STEP = 15, 22


def state_snapshot(opt) -> List[Dict[str, torch.Tensor]]:
    """Every state tensor of every parameter the optimizer updates, in parameter order (cloned)."""
    out = []
    for p in opt.get_parameters():
        state = opt.state.get(p, {}) if hasattr(opt.state, "get") else opt.state[p]
        out.append({k: v.detach().clone() for k, v in state.items() if torch.is_tensor(v)})
    return out


def build_model(config: OptimizerConfig) -> torch.nn.Module:
    """TinyLM; bf16 and wrapped in our DDP (one process) for the ZeRO-1 / layer-wise wrappers."""
    model = TinyLM()
    if not (config.use_distributed_optimizer or config.use_layer_wise_distributed_optimizer):
        return model
    return DistributedDataParallel(model.to(torch.bfloat16), DDPConfig(use_distributed_optimizer=config.use_distributed_optimizer, bucket_size=300))


def grads_of(model: torch.nn.Module) -> List[torch.Tensor]:
    return [getattr(p, "main_grad", None) if getattr(p, "main_grad", None) is not None else p.grad for p in model.parameters()]


def run(config: OptimizerConfig, on_device: bool, steps: int = 30):
    model = build_model(config)
    opt = get_megatron_optimizer(config, [model])
    opt.skip_on_device = on_device
    record = []
    for step in range(steps):
        if hasattr(model, "zero_grad_buffer"):
            model.zero_grad_buffer()
        opt.zero_grad()
        loss = lm_loss(model, step)
        loss.backward()
        if hasattr(model, "finish_grad_sync"):
            model.finish_grad_sync()
        if step == SPIKE_GRAD_STEP:
            for g in grads_of(model):
                g.mul_(100.0)
        opt.observe_loss(loss.item() * (1000.0 if step == SPIKE_LOSS_STEP else 1.0))
        if on_device:
            assert not opt.prepare_grads()
            with NoHostReads():
                result = opt._step_with_device_decision()
            updated, norm, _ = opt._finish_device_step(*result)  # what step() does after the update is queued
        else:
            updated, norm, _ = opt.step()
        record.append((updated, norm, [p.detach().clone() for p in model.parameters()], state_snapshot(opt)))
    return record


def assert_same_state(a: List[Dict[str, torch.Tensor]], b: List[Dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


CONFIGS = {
    "muon_adamw_fused": OptimizerConfig(optimizer="muon", lr=1e-2, muon_fp32_matmul_prec="highest", standard_backend="torch_fused"),
    "muon_nesterov_l2": OptimizerConfig(optimizer="muon", lr=1e-2, muon_fp32_matmul_prec="highest", muon_nesterov=True,
                                        decoupled_weight_decay=False, weight_decay=0.1, standard_backend="torch_fused"),
    "normuon": OptimizerConfig(optimizer="adaptive_muon", adaptive_muon_moment2_method="normuon", lr=1e-2,
                               muon_fp32_matmul_prec="highest", standard_backend="torch_fused"),
    "lion": OptimizerConfig(optimizer="lion", lr=1e-3, weight_decay=0.1),
    "soap": OptimizerConfig(optimizer="soap", lr=1e-2, soap_precondition_frequency=3, standard_backend="torch_fused"),
    "soap_l2_clipped": OptimizerConfig(optimizer="soap", lr=1e-2, soap_precondition_frequency=2, soap_max_update_rms=0.5,
                                       decoupled_weight_decay=False, weight_decay=0.1, standard_backend="torch_fused"),
    # ZeRO-1 (main shards copied back into the bf16 params and gathered) and layer-wise (bf16 main params)
    "zero1_lion_bf16": OptimizerConfig(optimizer="lion", lr=1e-3, weight_decay=0.1, bf16=True, use_distributed_optimizer=True),
    "layer_wise_muon_bf16": OptimizerConfig(optimizer="muon", lr=1e-2, muon_fp32_matmul_prec="highest", bf16=True,
                                            use_layer_wise_distributed_optimizer=True, standard_backend="torch_fused"),
    "layer_wise_soap_bf16": OptimizerConfig(optimizer="soap", lr=1e-2, soap_precondition_frequency=2, bf16=True,
                                            use_layer_wise_distributed_optimizer=True, standard_backend="torch_fused"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_device_skip_is_bitwise_the_host_decision_and_reads_nothing_back(name):
    config = CONFIGS[name].replace(skip_step_sigma=3.0, skip_step_window=16)
    host, dev = run(config, on_device=False), run(config, on_device=True)
    assert [r[0] for r in host] == [r[0] for r in dev]
    skipped = [i for i, r in enumerate(host) if not r[0]]
    assert SPIKE_LOSS_STEP in skipped and SPIKE_GRAD_STEP in skipped and len(skipped) <= 4, skipped
    for step, ((_, n_h, p_h, s_h), (_, n_d, p_d, s_d)) in enumerate(zip(host, dev)):
        assert n_h == n_d, step
        assert all(torch.equal(a, b) for a, b in zip(p_h, p_d)), step
        assert_same_state(s_h, s_d)
    for step in skipped:  # the skipped step left params and state bitwise as the step before
        _, _, p_before, s_before = dev[step - 1]
        _, _, p_after, s_after = dev[step]
        assert all(torch.equal(a, b) for a, b in zip(p_before, p_after)), step
        assert_same_state(s_before, s_after)
    assert not all(torch.equal(a, b) for a, b in zip(dev[0][2], dev[-1][2]))  # and it did train


@pytest.mark.parametrize("foreach", [False, True])
def test_lion_found_inf_skips_or_steps_like_the_plain_step(foreach):
    """Lion's own loop and foreach kernels, driven directly as torch.amp.GradScaler would (1-element found_inf)."""
    torch.manual_seed(0)
    shapes = [(4, 3), (5,), ()]
    ref = [torch.randn(s) for s in shapes]
    params = [p.clone() for p in ref]
    opt_ref = Lion(ref, lr=1e-2, weight_decay=0.1, foreach=foreach)
    opt = Lion(params, lr=1e-2, weight_decay=0.1, foreach=foreach)
    for step in range(6):
        grads = [torch.randn(s) for s in shapes]
        skip = step in (2, 4)
        if skip:
            grads[0][0, 0] = float("inf")
        for p, r, g in zip(params, ref, grads):
            p.grad, r.grad = g.clone(), g.clone()
        before = [p.clone() for p in params]
        if not skip:
            opt_ref.step()
        opt.found_inf, opt.grad_scale = torch.tensor([1.0 if skip else 0.0]), None
        with NoHostReads():
            opt.step()
        opt.found_inf = None
        assert all(torch.equal(p, r) for p, r in zip(params, ref))
        assert all(torch.equal(opt.state[p]["exp_avg"], opt_ref.state[r]["exp_avg"]) for p, r in zip(params, ref))
        if skip:
            assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("reports_outcome", [True, False])
def test_soap_found_inf_keeps_step_count_basis_and_statistics_on_skipped_steps(reports_outcome):
    """Skips on the first step (the eigh branch) and on refresh steps (f = 2) leave SOAP's state bitwise alone.

    A caller that reports each outcome (as MegatronOptimizer.step does) gets steps without a host read;
    one that does not costs SOAP one read of its step counter per step, with the same bits."""
    from megatron_opt.emerging.soap import SOAP

    torch.manual_seed(0)
    shapes = [(5, 3), (4, 4)]
    ref = [torch.randn(s) for s in shapes]
    params = [p.clone() for p in ref]
    kwargs = dict(lr=1e-2, precondition_frequency=2, weight_decay=0.1)
    opt_ref, opt = SOAP(ref, **kwargs), SOAP(params, **kwargs)
    opt_ref.init_state()
    opt.init_state()
    skips = {0, 3, 4, 7}
    for step in range(10):
        grads = [torch.randn(s) for s in shapes]
        skip = step in skips
        if skip:
            grads[1][2, 1] = float("nan")
        for p, r, g in zip(params, ref, grads):
            p.grad, r.grad = g.clone(), g.clone()
        if not skip:
            opt_ref.step()
        opt.found_inf, opt.grad_scale = torch.tensor([1.0 if skip else 0.0]), None
        if reports_outcome:
            with NoHostReads():
                opt.step()
            opt.note_step_outcome(skipped=skip)
        else:
            opt.step()
        opt.found_inf = None
        assert all(torch.equal(p, r) for p, r in zip(params, ref)), step
        for p, r in zip(params, ref):
            assert opt.state[p].keys() == opt_ref.state[r].keys()
            assert all(torch.equal(opt.state[p][k], opt_ref.state[r][k]) for k in opt.state[p]), step
    assert int(opt.state[params[0]]["step"]) == 10 - len(skips)


@pytest.mark.parametrize("name", ["lion", "muon", "soap"])
def test_torch_grad_scaler_drives_our_optimizers_through_grad_scale_and_found_inf(name):
    """torch.amp.GradScaler hands still-scaled grads (grad_scale) and its found_inf to ``step()``: the same bits
    as stepping on the unscaled grads (a power-of-two scale is exact), and the inf step is skipped."""
    from megatron_opt.emerging.muon import TensorParallelMuon
    from megatron_opt.emerging.soap import SOAP

    make = {"lion": lambda ps: Lion(ps, lr=1e-2, weight_decay=0.1),
            "muon": lambda ps: TensorParallelMuon(ps, lr=1e-2, fp32_matmul_prec="highest"),
            "soap": lambda ps: SOAP(ps, lr=1e-2, precondition_frequency=2)}[name]
    torch.manual_seed(0)
    w_ref = torch.nn.Parameter(torch.randn(6, 4))
    w = torch.nn.Parameter(w_ref.detach().clone())
    opt_ref, opt = make([w_ref]), make([w])
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    for step in range(6):
        x = torch.randn(3, 4)
        (x @ w_ref.T).square().mean().backward()
        scaler.scale((x @ w.T).square().mean()).backward()
        if step == 3:
            w.grad[0, 0] = float("inf")
        else:
            opt_ref.step()
        scaler.step(opt)
        scaler.update()
        assert torch.equal(w, w_ref), step
        if step != 3:  # unscaled in place, as torch's fused kernels do (our updates are nearly scale-free)
            assert torch.equal(w.grad, w_ref.grad), step
        opt.zero_grad()
        opt_ref.zero_grad()
    assert scaler.get_scale() == 512.0  # the inf step halved the scale
