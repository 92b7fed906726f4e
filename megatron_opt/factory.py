"""``get_megatron_optimizer``: the one entry point from (config, model, process groups) to an optimizer.

1. parameter groups from the config plus overrides (the caller's dict is never mutated);
2. one inner optimizer per optimizer name: standard (adam/sgd), emerging (registry), or a dotted path;
3. each wrapped for precision (FP32Optimizer / Float16Optimizer) and for sharding:
   ``use_distributed_optimizer`` → DistributedOptimizer (ZeRO-1, elementwise optimizers);
   ``use_layer_wise_distributed_optimizer`` → LayerWiseDistributedOptimizer for the emerging
   optimizer, its scalar parameters → DistributedOptimizer over the same (all-reduced) DDP buffers;
4. one child → it; several → a ChainedOptimizer with one global gradient norm.

The sharded optimizers need the DDP grad buffers: as in Megatron-LM the model chunks passed in ARE
``DistributedDataParallel`` wrappers (their ``buffers`` are read).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from megatron_opt.config import OptimizerConfig, ParamGroupOverride, ParamKey, get_standard_config_overrides
from megatron_opt.distributed.ddp import DistributedDataParallel
from megatron_opt.distributed.distrib_optimizer import DistributedOptimizer, dp_mp_group
from megatron_opt.distributed.layer_wise import LayerWiseDistributedOptimizer
from megatron_opt.deprecation import warn_once
from megatron_opt.emerging.registry import get_emerging_optimizer_entry
from megatron_opt.errors import ConfigError, config_error
from megatron_opt.grad_scaler import build_grad_scaler
from megatron_opt.optimizer import ChainedOptimizer, Float16Optimizer, FP32Optimizer, GradStatsGroups, MegatronOptimizer
from megatron_opt.optimizer_names import LEGACY_DIST_PREFIX, STANDARD_OPTIMIZERS, is_dotted_path, is_emerging

# Optimizers whose state is elementwise, so that byte-range (ZeRO-1) sharding is exact.
ELEMENTWISE_OPTIMIZERS = frozenset({"adam", "sgd", "lion"})
from megatron_opt.parallel import ProcessGroupCollection, group_size
from megatron_opt.param_groups import build_param_groups, partition_by_optimizer
from megatron_opt.standard import build_standard_optimizer

InitStateFn = Callable[[torch.optim.Optimizer], None]


@dataclass(frozen=True)
class InnerOptimizer:
    """A raw torch optimizer plus the function that creates its state eagerly (or None)."""

    optimizer: torch.optim.Optimizer
    init_state_fn: Optional[InitStateFn]


def get_megatron_optimizer(
    config: OptimizerConfig,
    model_chunks: Sequence[torch.nn.Module],
    config_overrides: Optional[Mapping[ParamKey, ParamGroupOverride]] = None,
    pg_collection: Optional[ProcessGroupCollection] = None,
) -> MegatronOptimizer:
    """Build the optimizer for this rank's model chunks.

    ``config_overrides=None`` applies the standard overrides (no decay for biases and 1-D
    parameters, ``decoupled_lr`` for embedding/output parameters); a dict is used exactly as
    given (``{}`` = none). Emerging optimizers add their routing (what they cannot handle goes to
    ``muon_scalar_optimizer``) beneath the user's overrides, so a user's ``optimizer`` override wins.
    """
    pgs = pg_collection or ProcessGroupCollection.single_process()
    config = resolve_legacy_optimizer_name(config)
    if isinstance(model_chunks, torch.nn.Module):
        model_chunks = [model_chunks]
    overrides = get_standard_config_overrides(config) if config_overrides is None else dict(config_overrides)
    primary = config.emerging_name
    default_routes = get_emerging_optimizer_entry(primary).default_param_overrides(config) if is_emerging(primary) else {}
    groups = build_param_groups(model_chunks, config, overrides, default_routes)
    ddp_chunks = _ddp_chunks_for_sharding(config, model_chunks)

    children: List[MegatronOptimizer] = []
    for name, name_groups in partition_by_optimizer(groups).items():
        child_config = config if name == primary else config.replace(optimizer=name, optimizer_kwargs=None if not is_dotted_path(name) else config.optimizer_kwargs)
        children.append(_build_child(name, name_groups, child_config, config, pgs, ddp_chunks, model_chunks))
    if not children:
        # A rank that holds no trainable parameter still takes part in every collective.
        sharded = config.use_distributed_optimizer or config.use_layer_wise_distributed_optimizer
        children.append(FP32Optimizer(None, config, _sharded_grad_stats(pgs) if sharded else _grad_stats(pgs)))
    if len(children) == 1:
        return children[0]
    return ChainedOptimizer(children, config=config)


def resolve_legacy_optimizer_name(config: OptimizerConfig) -> OptimizerConfig:
    """``dist_muon`` (deprecated) means ``muon`` with the layer-wise distributed optimizer."""
    if not config.optimizer.startswith(LEGACY_DIST_PREFIX):
        return config
    name = config.emerging_name
    warn_once(
        f"optimizer={config.optimizer}",
        f"optimizer={config.optimizer!r} is deprecated. Use optimizer={name!r} with use_layer_wise_distributed_optimizer=True.",
        stacklevel=4,
    )
    return config.replace(optimizer=name, use_layer_wise_distributed_optimizer=True, use_distributed_optimizer=False)


def _grad_stats(pgs: ProcessGroupCollection) -> GradStatsGroups:
    return GradStatsGroups(reduce_group=pgs.mp, tp_group=pgs.tp, skip_group=_skip_agreement_group(pgs))


def _skip_agreement_group(pgs: ProcessGroupCollection):
    """dp × mp for a plain optimizer over several DP replicas (None when there is one, or no such group)."""
    dp, mp = group_size(pgs.dp), group_size(pgs.mp)
    if dp == 1:
        return None
    if mp == 1:
        return pgs.dp
    return pgs.world if pgs.world is not None and group_size(pgs.world) == dp * mp else None


def _sharded_grad_stats(pgs: ProcessGroupCollection) -> GradStatsGroups:
    """Sharded optimizers hold disjoint pieces over DP: their statistics are summed over dp × mp."""
    return GradStatsGroups(reduce_group=dp_mp_group(pgs), tp_group=pgs.tp)


def _ddp_chunks_for_sharding(config: OptimizerConfig, model_chunks: Sequence[torch.nn.Module]) -> List[DistributedDataParallel]:
    """The DDP wrappers whose grad buffers a sharded optimizer reads; checks how they reduce."""
    if not (config.use_distributed_optimizer or config.use_layer_wise_distributed_optimizer):
        return []
    wrapped = [c for c in model_chunks if isinstance(c, DistributedDataParallel)]
    if config.use_distributed_optimizer:
        if len(wrapped) != len(model_chunks):
            raise ConfigError(
                "use_distributed_optimizer=True is not allowed with model chunks that are not DistributedDataParallel; "
                "expected every chunk wrapped as DistributedDataParallel(module, DDPConfig(use_distributed_optimizer=True), pgs)"
            )
        for c in wrapped:
            if not c.config.use_distributed_optimizer:
                raise ConfigError(
                    "use_distributed_optimizer=True is not allowed with DDPConfig(use_distributed_optimizer=False); "
                    "expected the DDP wrapper built with DDPConfig(use_distributed_optimizer=True) so gradients are reduce-scattered"
                )
        return wrapped
    # layer-wise: every rank needs full (all-reduced) gradients of the matrices it owns
    for c in wrapped:
        if c.config.use_distributed_optimizer:
            raise ConfigError(
                "use_layer_wise_distributed_optimizer=True is not allowed with DDPConfig(use_distributed_optimizer=True); "
                "expected DDPConfig(use_distributed_optimizer=False): the layer-wise optimizer needs all-reduced gradients"
            )
    return wrapped if len(wrapped) == len(model_chunks) else []


def _build_child(
    name: str,
    groups: List[Dict[str, Any]],
    child_config: OptimizerConfig,
    run_config: OptimizerConfig,
    pgs: ProcessGroupCollection,
    ddp_chunks: Sequence[DistributedDataParallel] = (),
    model_chunks: Sequence[torch.nn.Module] = (),
) -> MegatronOptimizer:
    if is_emerging(run_config.emerging_name) and run_config.fp16:
        raise ConfigError(
            f"fp16=True is not allowed with optimizer={run_config.optimizer!r}; expected bf16 or fp32 "
            "(emerging optimizers run without loss scaling)"
        )
    if run_config.use_distributed_optimizer and not (name in ELEMENTWISE_OPTIMIZERS or is_dotted_path(name)):
        raise ConfigError(
            f"use_distributed_optimizer=True is not allowed with optimizer={name!r}; expected an optimizer with elementwise "
            f"state ({', '.join(sorted(ELEMENTWISE_OPTIMIZERS))}); use use_layer_wise_distributed_optimizer=True for {name!r}"
        )
    inner = build_inner_optimizer(name, groups, child_config, pgs)
    layer_wise = run_config.use_layer_wise_distributed_optimizer and name == run_config.emerging_name and is_emerging(name)
    if layer_wise:
        wrapped: MegatronOptimizer = LayerWiseDistributedOptimizer(
            inner.optimizer, child_config, pgs.dp, _sharded_grad_stats(pgs), inner.init_state_fn, model_chunks)
    elif ddp_chunks:
        # ZeRO-1 (also for the layer-wise optimizer's scalar params, sliced from all-reduced grads)
        wrapped = DistributedOptimizer(
            inner.optimizer, child_config, ddp_chunks, build_grad_scaler(child_config),
            _sharded_grad_stats(pgs), inner.init_state_fn)
    else:
        wrapped = _wrap_for_precision(inner, child_config, _grad_stats(pgs))
    if inner.init_state_fn is not None:
        wrapped.init_state()
    return wrapped


def _wrap_for_precision(inner: "InnerOptimizer", child_config: OptimizerConfig, grad_stats: GradStatsGroups) -> MegatronOptimizer:
    if child_config.bf16 or child_config.fp16:
        return Float16Optimizer(inner.optimizer, child_config, build_grad_scaler(child_config), grad_stats, inner.init_state_fn)
    return FP32Optimizer(inner.optimizer, child_config, grad_stats, inner.init_state_fn)


def build_inner_optimizer(
    name: str, groups: List[Dict[str, Any]], config: OptimizerConfig, pgs: ProcessGroupCollection
) -> InnerOptimizer:
    """The raw optimizer for one optimizer name over its groups."""
    if name in STANDARD_OPTIMIZERS:
        return InnerOptimizer(build_standard_optimizer(name, groups, config).optimizer, None)
    if is_emerging(name):
        entry = get_emerging_optimizer_entry(name)
        optimizer = entry.optimizer_cls(groups, **entry.config_to_kwargs(config, pgs))
        return InnerOptimizer(optimizer, entry.init_state_fn)
    if is_dotted_path(name):
        return InnerOptimizer(_build_dotted(name, groups, config), None)
    raise config_error("optimizer", name, "adam, sgd, a registered emerging optimizer or a dotted class path")


def import_optimizer_class(path: str) -> type:
    """Import ``pkg.module.Class``; only ever called for a path the user gave explicitly."""
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - report any import failure as one line
        raise ConfigError(f"optimizer={path!r} is not allowed; module {module_name!r} cannot be imported ({type(exc).__name__}: {exc})") from None
    cls = getattr(module, attr, None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer={path!r} is not allowed; expected {module_name}.{attr} to be a torch.optim.Optimizer subclass")
    return cls


def _build_dotted(path: str, groups: List[Dict[str, Any]], config: OptimizerConfig) -> torch.optim.Optimizer:
    cls = import_optimizer_class(path)
    kwargs = dict(config.optimizer_kwargs or {})
    try:
        inspect.signature(cls).bind(groups, **{"lr": config.lr, **kwargs})
    except TypeError:
        allowed = ", ".join(p for p in inspect.signature(cls).parameters if p not in ("self", "params"))
        raise ConfigError(f"optimizer_kwargs={kwargs!r} is not allowed for {path}; expected keywords among: {allowed}") from None
    try:
        return cls(groups, **{"lr": config.lr, **kwargs})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer_kwargs={kwargs!r} is not allowed for {path}; the class refused them: {exc}") from None
