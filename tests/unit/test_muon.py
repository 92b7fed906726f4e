"""TensorParallelMuon (single process) against torch.optim.Muon and plain reference loops; the registry."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from megatron_opt.config import OptimizerConfig
from megatron_opt.emerging import (
    TensorParallelMuon,
    get_emerging_optimizer_entry,
    muon_scale_factor,
    register_emerging_optimizer,
)
from megatron_opt.emerging.registry import EmergingOptimizerEntry
from megatron_opt.errors import ConfigError
from megatron_opt.ns_coefficients import coefficients_for_steps
from megatron_opt.optimizer_names import known_optimizer_names
from megatron_opt.parallel import ProcessGroupCollection

KJ = (3.4445, -4.7750, 2.0315)


def reference_ns(x: torch.Tensor, triples) -> torch.Tensor:
    X = x.double()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / max(X.norm().item(), 1e-7)
    for a, b, c in triples:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def reference_muon(w, grads, *, lr, wd, mu, nesterov, decoupled, triples, scale, orthogonalize=None):
    """One parameter, written out step by step in float64."""
    w = w.double().clone()
    m = torch.zeros_like(w)
    orthogonalize = orthogonalize or (lambda c: reference_ns(c, triples))
    for g in grads:
        g = g.double()
        if decoupled:
            w = w * (1 - lr * wd)
        else:
            g = g + wd * w
        m = mu * m + (1 - mu) * g
        c = (1 - mu) * g + mu * m if nesterov else m
        w = w - lr * scale * orthogonalize(c)
    return w


def make_grads(shape, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(steps)]


def run(opt, params, grads_per_param):
    for step_grads in zip(*grads_per_param):
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()


# ---- torch.optim.Muon ---------------------------------------------------------------------------


@pytest.mark.parametrize("fp32_oracle", [True, False])
def test_matches_torch_muon(monkeypatch, fp32_oracle):
    shapes = [(32, 16), (16, 48), (24, 24)]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in shapes]
    grads = [make_grads(s, 10, seed=10 + i) for i, s in enumerate(shapes)]
    ours = [torch.nn.Parameter(w.clone()) for w in init]
    theirs = [torch.nn.Parameter(w.clone()) for w in init]
    opt = TensorParallelMuon(
        ours, lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.1, coefficient_type="simple",
        num_ns_steps=5, scale_mode="shape_scaling", fp32_matmul_prec="highest" if fp32_oracle else "medium",
    )
    ref = torch.optim.Muon(theirs, lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.1, ns_coefficients=KJ, eps=1e-7, ns_steps=5)
    if fp32_oracle:
        # torch's NS casts to bf16 with grad.bfloat16(); make that cast a copy so torch's own code runs in fp32.
        monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self, *a, **k: self.clone())
    run(ref, theirs, grads)
    monkeypatch.undo()
    run(opt, ours, grads)
    for a, b, w0 in zip(ours, theirs, init):
        if fp32_oracle:
            torch.testing.assert_close(a.detach(), b.detach(), atol=2e-5, rtol=1e-5)
        else:
            # bf16 iterations on both sides, rounded at different places: agree to bf16 accuracy of the
            # accumulated update (10 steps of lr*scale*|O| ≈ 0.02–0.03 per entry).
            assert (a - b).abs().max().item() < 5e-3
            assert (a - w0).abs().max().item() > 0.05


# ---- reference loops ----------------------------------------------------------------------------


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("nesterov", [True, False])
def test_weight_decay_l2_vs_decoupled(decoupled, nesterov):
    shape = (20, 36)
    w0 = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    grads = make_grads(shape, 6, seed=2)
    p = torch.nn.Parameter(w0.clone())
    opt = TensorParallelMuon([p], lr=0.05, momentum=0.8, nesterov=nesterov, weight_decay=0.3,
                             use_decoupled_weight_decay=decoupled, fp32_matmul_prec="highest")
    for g in grads:
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.grad, g, atol=0, rtol=0)  # L2 never writes into the gradient
    triples = coefficients_for_steps("quintic", 5)
    expected = reference_muon(w0, grads, lr=0.05, wd=0.3, mu=0.8, nesterov=nesterov, decoupled=decoupled,
                              triples=triples, scale=math.sqrt(36))
    torch.testing.assert_close(p.detach().double(), expected, atol=2e-5, rtol=1e-5)
    other = reference_muon(w0, grads, lr=0.05, wd=0.3, mu=0.8, nesterov=nesterov, decoupled=not decoupled,
                           triples=triples, scale=math.sqrt(36))
    assert (other - expected).abs().max().item() > 1e-3  # the two decay forms are distinguishable here


def test_group_hyperparameters_are_read_at_step_time():
    shape = (16, 24)
    w0 = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    grads = [make_grads(shape, 4, seed=5), make_grads(shape, 4, seed=6)]
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    groups = [
        {"params": [params[0]], "lr": 0.1, "weight_decay": 0.0, "max_lr": 9.0, "param_names": ["a"], "optimizer": "muon"},
        {"params": [params[1]], "lr": 0.05, "weight_decay": 0.2, "momentum": 0.5, "extra_scale_factor": 0.2, "wd_mult": 1.0, "param_names": ["b"]},
    ]
    opt = TensorParallelMuon(groups, momentum=0.9, fp32_matmul_prec="highest", scale_mode="unit_rms_norm")
    lrs = [0.1, 0.2, 0.3, 0.4]
    for step in range(4):
        for g in opt.param_groups:
            g["lr"] = lrs[step] * (1.0 if g is opt.param_groups[0] else 0.5)
        for p, gs in zip(params, grads):
            p.grad = gs[step].clone()
        opt.step()
    triples = coefficients_for_steps("quintic", 5)
    scale = math.sqrt(16 / 24)
    for i, (lr_mult, wd, mu, extra) in enumerate([(1.0, 0.0, 0.9, 1.0), (0.5, 0.2, 0.5, 0.2)]):
        w = w0[i].double()
        m = torch.zeros_like(w)
        for step in range(4):
            lr = lrs[step] * lr_mult
            w = w * (1 - lr * wd)
            m = mu * m + (1 - mu) * grads[i][step].double()
            w = w - lr * scale * extra * reference_ns(m, triples)
        torch.testing.assert_close(params[i].detach().double(), w, atol=2e-5, rtol=1e-5)


def _qkv_param(groups, split, cols, seed):
    w = torch.randn(groups * sum(split), cols, generator=torch.Generator().manual_seed(seed))
    p = torch.nn.Parameter(w.clone())
    p.is_qkv = True
    p.qkv_split_shapes = split
    return w, p


def test_split_qkv_orthogonalizes_blocks_separately():
    groups, split, cols = 2, (8, 4, 4), 12
    w0, p = _qkv_param(groups, split, cols, seed=7)
    grads = make_grads(w0.shape, 3, seed=8)
    opt = TensorParallelMuon([p], lr=0.1, momentum=0.9, weight_decay=0.0, split_qkv=True, fp32_matmul_prec="highest")
    run(opt, [p], [grads])
    triples = coefficients_for_steps("quintic", 5)

    def blockwise_update(c):
        parts = c.view(groups, sum(split), cols).split(split, dim=1)
        outs = [reference_ns(b.reshape(-1, cols), triples) * math.sqrt(max(groups * rows, cols)) for b, rows in zip(parts, split)]
        return torch.cat([o.view(groups, -1, cols) for o in outs], dim=1).view(c.shape)

    expected = reference_muon(w0, grads, lr=0.1, wd=0.0, mu=0.9, nesterov=False, decoupled=True, triples=triples,
                              scale=1.0, orthogonalize=blockwise_update)
    torch.testing.assert_close(p.detach().double(), expected, atol=2e-5, rtol=1e-5)
    whole = reference_muon(w0, grads, lr=0.1, wd=0.0, mu=0.9, nesterov=False, decoupled=True, triples=triples,
                           scale=math.sqrt(32))
    assert (whole - expected).abs().max().item() > 1e-2


def test_split_qkv_not_divisible_warns_and_uses_whole_matrix(caplog):
    w0, p = _qkv_param(3, (4, 2, 2), 10, seed=9)  # 24 rows
    p.qkv_split_shapes = (5, 2, 2)  # 24 % 9 != 0
    q = torch.nn.Parameter(w0.clone())
    grads = make_grads(w0.shape, 2, seed=10)
    with caplog.at_level(logging.WARNING, logger="megatron_opt.emerging.muon"):
        run(TensorParallelMuon([p], split_qkv=True, fp32_matmul_prec="highest"), [p], [grads])
    assert any(r.levelno == logging.WARNING and "not divisible" in r.getMessage() for r in caplog.records)
    run(TensorParallelMuon([q], fp32_matmul_prec="highest"), [q], [grads])
    torch.testing.assert_close(p.detach(), q.detach(), atol=0, rtol=0)


def test_batched_same_shape_equals_one_at_a_time():
    shape = (24, 40)
    w0 = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    grads = [make_grads(shape, 3, seed=20 + i) for i in range(4)]
    together = [torch.nn.Parameter(w.clone()) for w in w0]
    run(TensorParallelMuon(together, fp32_matmul_prec="highest"), together, grads)
    for w, g, p in zip(w0, grads, together):
        alone = torch.nn.Parameter(w.clone())
        run(TensorParallelMuon([alone], fp32_matmul_prec="highest"), [alone], [g])
        torch.testing.assert_close(p.detach(), alone.detach(), atol=1e-6, rtol=1e-6)


def test_main_grad_is_used_when_present():
    p = torch.nn.Parameter(torch.zeros(8, 8))
    p.main_grad = torch.eye(8)
    opt = TensorParallelMuon([p], lr=1.0, momentum=0.0, weight_decay=0.0, coefficient_type="polar_express",
                             num_ns_steps=12, scale_mode="shape_scaling", fp32_matmul_prec="highest")
    opt.step()
    torch.testing.assert_close(p.detach(), -torch.eye(8), atol=1e-4, rtol=0)


def test_init_state_covers_params_without_grad():
    a, b = torch.nn.Parameter(torch.randn(4, 6)), torch.nn.Parameter(torch.randn(6, 4))
    opt = TensorParallelMuon([a, b])
    opt.init_state()
    state = opt.state_dict()["state"]
    assert sorted(state) == [0, 1]
    assert state[1]["momentum_buffer"].shape == (6, 4) and state[1]["momentum_buffer"].abs().sum() == 0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_ns_steps=0), "num_ns_steps"),
        (dict(scale_mode="rms"), "scale_mode"),
        (dict(tp_mode="sideways"), "tp_mode"),
        (dict(fp32_matmul_prec="fast"), "fp32_matmul_prec"),
        (dict(coefficient_type="cubic5", num_ns_steps=4), "num_ns_steps"),
        (dict(coefficient_type="custom"), "muon_custom_coefficients"),
        (dict(momentum=1.0), "momentum"),
    ],
)
def test_bad_constructor_values_raise_config_error(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TensorParallelMuon([torch.nn.Parameter(torch.randn(4, 4))], **kwargs)


def test_scale_factors():
    assert muon_scale_factor(64, 16, "spectral") == 8.0
    assert muon_scale_factor(64, 16, "unit_rms_norm") == 2.0
    assert muon_scale_factor(16, 64, "unit_rms_norm") == 0.5
    assert muon_scale_factor(16, 64, "shape_scaling") == 1.0
    assert muon_scale_factor(64, 16, "shape_scaling") == 2.0


# ---- registry -----------------------------------------------------------------------------------


def test_registry_maps_every_field_explicitly():
    config = OptimizerConfig(
        optimizer="adaptive_muon", lr=0.03, weight_decay=0.2, decoupled_weight_decay=False, muon_momentum=0.8,
        muon_nesterov=True, muon_split_qkv=False, muon_coefficient_type="custom", muon_custom_coefficients=[(3, -3, 1)],
        muon_num_ns_steps=3, muon_scale_mode="unit_rms_norm", muon_extra_scale_factor=0.2, muon_fp32_matmul_prec="high",
        muon_tp_mode="blockwise", adaptive_muon_moment2_method="normuon", adaptive_muon_beta2=0.9, adaptive_muon_eps=1e-6,
        muon_ns_algorithm="gram", muon_gram_ns_restarts=[1, 2], muon_use_syrk=True,
    )
    entry = get_emerging_optimizer_entry("adaptive_muon")
    kwargs = entry.config_to_kwargs(config, ProcessGroupCollection.single_process())
    assert kwargs == dict(
        lr=0.03, momentum=0.8, nesterov=True, weight_decay=0.2, use_decoupled_weight_decay=False, split_qkv=False,
        coefficient_type="custom", custom_coefficients=((3.0, -3.0, 1.0),), num_ns_steps=3, scale_mode="unit_rms_norm",
        extra_scale_factor=0.2, fp32_matmul_prec="high", tp_mode="blockwise", tp_group=None,
        moment2_method="normuon", beta2=0.9, eps=1e-6, ns_algorithm="gram", gram_restarts=(1, 2), use_syrk=True,
    )
    p = torch.nn.Parameter(torch.randn(4, 4))
    opt = entry.optimizer_cls([{"params": [p], "lr": 0.03, "weight_decay": 0.2, "min_lr": 0.0, "lr_mult": 1.0}], **kwargs)
    entry.init_state_fn(opt)
    assert set(opt.state[p]) == {"momentum_buffer", "moment2_buffer"}
    assert opt.use_decoupled_weight_decay is False


def test_default_overrides_route_non_matrices_to_scalar_optimizer():
    config = OptimizerConfig(optimizer="muon", lr=0.01, muon_scalar_optimizer="lion")
    overrides = get_emerging_optimizer_entry("muon").default_param_overrides(config)
    ((key, value),) = overrides.items()
    assert value == {"optimizer": "lion"}

    def param(shape, **attrs):
        p = torch.nn.Parameter(torch.zeros(shape))
        for k, v in attrs.items():
            setattr(p, k, v)
        return p

    assert not key.matches(param((4, 4)), "w")
    assert key.matches(param((4,)), "b")
    assert key.matches(param((2, 2, 2)), "conv")
    assert key.matches(param((4, 4), is_embedding_or_output=True), "emb")
    assert key.matches(param((4, 4), is_embedding_or_output_parameter=True), "out")
    assert key.matches(param((4, 4), use_muon=False), "opted_out")


def test_registry_errors_and_registration(monkeypatch):
    from megatron_opt import optimizer_names
    from megatron_opt.emerging import registry

    with pytest.raises(ConfigError, match="nope") as err:
        get_emerging_optimizer_entry("nope")
    listed = str(err.value).rsplit(": ", 1)[-1].split(", ")
    assert {"muon", "adaptive_muon"} <= set(listed)
    entry = get_emerging_optimizer_entry("muon")
    with pytest.raises(ConfigError, match="muon"):
        register_emerging_optimizer("muon", entry)
    # Register on copies of the two tables so the alias does not leak into other tests.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(optimizer_names, "_registered_emerging", set(optimizer_names._registered_emerging))
    name = "test_only_muon_alias"
    register_emerging_optimizer(name, EmergingOptimizerEntry(entry.optimizer_cls, entry.config_to_kwargs,
                                                             entry.default_param_overrides, entry.init_state_fn))
    assert name in known_optimizer_names()
    assert get_emerging_optimizer_entry(name).optimizer_cls is TensorParallelMuon


def test_bench_quick_runs(capsys):
    main = _load_bench_main()

    main(["--quick"])
    out = capsys.readouterr().out
    assert "ratio" in out and "FLOP/s" in out


def _load_bench_main():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / "bench_muon.py"
    spec = importlib.util.spec_from_file_location("bench_muon", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
