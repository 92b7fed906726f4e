"""Each old name: still works, warns exactly once, and behaves exactly like the new name."""

import dataclasses
import importlib
import sys
import warnings

import pytest
import torch

from tiny_models import TinyLM, lm_loss
from megatron_opt import OptimizerConfig, get_megatron_optimizer
from megatron_opt.deprecation import reset_for_tests
from megatron_opt.emerging import TensorParallelMuon


@pytest.fixture(autouse=True)
def fresh_warnings():
    reset_for_tests()
    yield
    reset_for_tests()


def _deprecations(record):
    return [w for w in record if issubclass(w.category, DeprecationWarning)]


def _train(model, opt, steps=5):
    for step in range(steps):
        opt.zero_grad()
        lm_loss(model, step).backward()
        opt.step()


def test_old_muon_module_imports_and_warns_once():
    sys.modules.pop("megatron_opt.muon", None)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        legacy = importlib.import_module("megatron_opt.muon")
        importlib.import_module("megatron_opt.muon")
    assert len(_deprecations(record)) == 1
    for name in ("TensorParallelMuon", "get_megatron_muon_optimizer", "newton_schulz", "newton_schulz_tp", "get_muon_scale_factor"):
        assert hasattr(legacy, name)


def test_get_megatron_muon_optimizer_equals_get_megatron_optimizer():
    from megatron_opt.muon import get_megatron_muon_optimizer

    config = OptimizerConfig(optimizer="muon", lr=0.02, muon_fp32_matmul_prec="highest")
    old_model, new_model = TinyLM(), TinyLM()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        old = get_megatron_muon_optimizer(config, [old_model])
        get_megatron_muon_optimizer(config, [TinyLM()])
    assert len(_deprecations(record)) == 1
    new = get_megatron_optimizer(config, [new_model])
    _train(old_model, old)
    _train(new_model, new)
    for a, b in zip(old_model.parameters(), new_model.parameters()):
        assert torch.equal(a, b)
    lw = get_megatron_muon_optimizer(config, [TinyLM()], layer_wise_distributed_optimizer=True)
    assert lw.config.use_layer_wise_distributed_optimizer


def test_old_constructor_keywords_mean_the_new_ones():
    from megatron_opt.muon import TensorParallelMuon as OldMuon

    torch.manual_seed(0)
    w_old = torch.nn.Parameter(torch.randn(16, 8))
    w_new = torch.nn.Parameter(w_old.detach().clone())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        old = OldMuon([w_old], lr=0.02, momentum_beta=0.9, use_nesterov=True, mode="blockwise", fp32_matmul_prec="highest")
        OldMuon([torch.nn.Parameter(torch.zeros(2, 2))], momentum_beta=0.9)
    assert len(_deprecations(record)) == 3  # one per old keyword, never again
    new = TensorParallelMuon([w_new], lr=0.02, momentum=0.9, nesterov=True, tp_mode="blockwise", fp32_matmul_prec="highest")
    for step in range(4):
        g = torch.randn(16, 8, generator=torch.Generator().manual_seed(step))
        w_old.grad, w_new.grad = g.clone(), g.clone()
        old.step(), new.step()
    assert torch.equal(w_old, w_new)


@pytest.mark.parametrize("name,optimizer", [("AdamOptimizerConfig", "adam"), ("SGDOptimizerConfig", "sgd")])
def test_old_config_classes_are_optimizer_config_with_that_optimizer(name, optimizer):
    import megatron_opt

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cls = getattr(megatron_opt, name)
        getattr(megatron_opt, name)
    assert len(_deprecations(record)) == 1
    old = cls(lr=1e-3, weight_decay=0.05)
    assert isinstance(old, OptimizerConfig)
    assert dataclasses.asdict(old) == dataclasses.asdict(OptimizerConfig(optimizer=optimizer, lr=1e-3, weight_decay=0.05))


def test_muon_use_nesterov_field_means_muon_nesterov():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        old = OptimizerConfig(lr=1e-3, muon_use_nesterov=True)
        OptimizerConfig(lr=1e-3, muon_use_nesterov=True)
    assert len(_deprecations(record)) == 1
    assert dataclasses.asdict(old) == dataclasses.asdict(OptimizerConfig(lr=1e-3, muon_nesterov=True))


def test_dist_muon_name_means_muon_with_layer_wise():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        opt = get_megatron_optimizer(OptimizerConfig(optimizer="dist_muon", lr=0.02), [TinyLM()])
    assert any("dist_muon" in str(w.message) for w in _deprecations(record))
    assert opt.config.optimizer == "muon" and opt.config.use_layer_wise_distributed_optimizer


def test_unknown_top_level_name_is_still_an_attribute_error():
    import megatron_opt

    with pytest.raises(AttributeError):
        megatron_opt.NoSuchThing
