"""Layer-wise distributed optimizer: whole matrices owned by one data-parallel rank each.

Orthogonalizing optimizers (Muon, AdaptiveMuon, SOAP) need whole matrices, so ZeRO's byte-range
shards do not fit. Instead:

1. every parameter of the inner optimizer gets one owner DP rank, balanced by the Newton–Schulz
   cost ``max(m,n)·min(m,n)²`` with LPT (``sharding.lpt_assign``; deterministic, no talking);
2. the inner optimizer's groups are narrowed to this rank's parameters BEFORE it is wrapped for
   precision, so fp32 master weights (Float16Optimizer, bf16 models) exist only for local params;
   fp32 models are wrapped in FP32Optimizer;
3. the DDP all-reduces gradients (every rank has full gradients); each rank steps its own matrices;
4. grad norm and zero counts are reduced once over a group covering dp × mp: each matrix is
   counted on its owner only;
5. the updated params are all-gathered over DP: per dtype, every rank flattens its own params in
   plan order into a buffer padded to the largest rank's size, one ``all_gather`` (into one tensor
   where the backend has it) and every rank copies the other ranks' pieces out. With
   ``config.overlap_param_gather`` the gather is started asynchronously after the step and waited
   for in a forward pre-hook on every model chunk given (or by ``finish_param_sync()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from megatron_opt.config import OptimizerConfig
from megatron_opt.distributed.distrib_optimizer import MAIN_PARAM_KEY, all_gather_flat, gather_into_tensor_available
from megatron_opt.distributed.sharding import lpt_assign, newton_schulz_cost
from megatron_opt.optimizer import Float16Optimizer, FP32Optimizer, GradStatsGroups, InitStateFn, MegatronOptimizer
from megatron_opt.parallel import ProcessGroup, global_ranks, group_rank, group_size


@dataclass
class _GatherPlan:
    dtype: torch.dtype
    device: torch.device
    per_rank: List[List[nn.Parameter]]
    """Params of this dtype owned by each DP rank, in plan order."""
    max_numel: int


class LayerWiseDistributedOptimizer(MegatronOptimizer):
    """Wraps a raw torch optimizer (built over every matrix of this rank's model) for layer-wise DP.

    ``optimizer`` must be a raw ``torch.optim.Optimizer`` without state; its groups are narrowed in
    place. ``grad_stats.reduce_group`` must cover dp × mp (``distrib_optimizer.dp_mp_group``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        config: OptimizerConfig,
        dp_group: ProcessGroup,
        grad_stats: GradStatsGroups = GradStatsGroups(),
        init_state_fn: Optional[InitStateFn] = None,
        model_chunks: Sequence[nn.Module] = (),
    ) -> None:
        if isinstance(optimizer, MegatronOptimizer):
            raise TypeError("LayerWiseDistributedOptimizer takes a raw torch optimizer; it wraps it for precision itself")
        if optimizer.state:
            raise TypeError("LayerWiseDistributedOptimizer needs an optimizer without state (narrowing happens first)")
        self.dp_group = dp_group
        self.dp_size = group_size(dp_group)
        self.dp_rank = group_rank(dp_group)
        all_params = [p for g in optimizer.param_groups for p in g["params"]]
        self.owners: List[int] = lpt_assign([newton_schulz_cost(p.shape) for p in all_params], self.dp_size)
        owner_of = {id(p): r for p, r in zip(all_params, self.owners)}
        self.owner_by_name: Dict[str, int] = {}
        for g in optimizer.param_groups:
            names = g.get("param_names") or [None] * len(g["params"])
            keep = [i for i, p in enumerate(g["params"]) if owner_of[id(p)] == self.dp_rank]
            for n, p in zip(names, g["params"]):
                if n is not None:
                    self.owner_by_name[n] = owner_of[id(p)]
            g["params"] = [g["params"][i] for i in keep]
            if "param_names" in g:
                g["param_names"] = [names[i] for i in keep]
        local = [p for g in optimizer.param_groups for p in g["params"]]
        if any(p.dtype in (torch.float16, torch.bfloat16) for p in local) or config.bf16 or config.fp16:
            inner: MegatronOptimizer = Float16Optimizer(optimizer, config, None, grad_stats, init_state_fn)
        else:
            inner = FP32Optimizer(optimizer, config, grad_stats, init_state_fn)
        super().__init__(optimizer, config, grad_stats, init_state_fn)
        self.local = inner
        self._plans = self._gather_plans(all_params)
        self._gather_into_tensor = self.dp_size > 1 and gather_into_tensor_available(dp_group)
        self._pending: List[Tuple[Any, torch.Tensor, _GatherPlan]] = []
        self._hooks = []
        if config.overlap_param_gather:
            for chunk in model_chunks:
                self._hooks.append(chunk.register_forward_pre_hook(lambda module, args: self.finish_param_sync()))

    def _gather_plans(self, all_params: List[nn.Parameter]) -> List[_GatherPlan]:
        by_dtype: Dict[torch.dtype, _GatherPlan] = {}
        for p, owner in zip(all_params, self.owners):
            plan = by_dtype.get(p.dtype)
            if plan is None:
                plan = by_dtype[p.dtype] = _GatherPlan(p.dtype, p.device, [[] for _ in range(self.dp_size)], 0)
            plan.per_rank[owner].append(p)
        for plan in by_dtype.values():
            plan.max_numel = max(sum(p.numel() for p in ps) for ps in plan.per_rank)
        return [by_dtype[d] for d in sorted(by_dtype, key=str)]

    # ---- delegation to the local (precision) wrapper ------------------------------------------

    def get_parameters(self) -> List[torch.nn.Parameter]:
        return self.local.get_parameters()

    def prepare_grads(self) -> bool:
        self.finish_param_sync()
        return self.local.prepare_grads()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.local.zero_grad(set_to_none)

    def step_with_ready_grads(self) -> bool:
        ok = self.local.step_with_ready_grads()
        self.start_param_sync()
        if not self.config.overlap_param_gather:
            self.finish_param_sync()
        return ok

    def init_state(self) -> None:
        self.local.init_state()

    def reload_model_params(self) -> None:
        self.local.reload_model_params()

    def scale_main_params_(self, row_scales) -> None:
        self.local.scale_main_params_(row_scales)  # main params exist on the owner only

    def state_dict(self) -> Any:
        """This rank's own matrices only (loads back on the same DP layout)."""
        self.finish_param_sync()
        return {"local": self.local.state_dict(), "owners": list(self.owners)}

    def load_state_dict(self, state_dict: Any) -> None:
        if list(state_dict["owners"]) != self.owners:
            raise ValueError("layer-wise optimizer state was saved with another ownership layout (DP size or model differ)")
        self.local.load_state_dict(state_dict["local"])

    @property
    def model_param_groups(self):
        return getattr(self.local, "model_param_groups", None)

    # ---- parameter all-gather ----------------------------------------------------------------

    @torch.no_grad()
    def start_param_sync(self) -> None:
        if self.dp_size == 1:
            return
        self.finish_param_sync()
        async_op = self.config.overlap_param_gather
        for plan in self._plans:
            local = torch.zeros(plan.max_numel, dtype=plan.dtype, device=plan.device)
            offset = 0
            for p in plan.per_rank[self.dp_rank]:
                local[offset:offset + p.numel()].copy_(p.data.view(-1))
                offset += p.numel()
            full = torch.empty(plan.max_numel * self.dp_size, dtype=plan.dtype, device=plan.device)
            work = all_gather_flat(full, local, self.dp_group, self._gather_into_tensor, async_op)
            self._pending.append((work if async_op else None, full, plan))

    @torch.no_grad()
    def finish_param_sync(self) -> None:
        """Wait for a pending all-gather and copy the other ranks' matrices into the model params."""
        pending, self._pending = self._pending, []
        for work, full, plan in pending:
            if work is not None:
                work.wait()
            for r, params in enumerate(plan.per_rank):
                if r == self.dp_rank:
                    continue
                offset = r * plan.max_numel
                for p in params:
                    p.data.view(-1).copy_(full[offset:offset + p.numel()])
                    offset += p.numel()

    # ---- per-parameter full state (checkpointing) ---------------------------------------------

    @torch.no_grad()
    def named_full_state(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """``{name: {key: tensor}}`` for every matrix, each broadcast from its owner over DP."""
        from megatron_opt.checkpoint.optim_state import named_optimizer_state

        self.finish_param_sync()
        mine = named_optimizer_state(self.local)
        if self.dp_size == 1:
            return mine
        meta = {n: {k: (tuple(v.shape), v.dtype) for k, v in entry.items()} for n, entry in mine.items()}
        metas: List[Any] = [None] * self.dp_size
        dist.all_gather_object(metas, meta, group=self.dp_group)
        ranks = global_ranks(self.dp_group)
        out: Dict[str, Dict[str, torch.Tensor]] = {}
        device = self._plans[0].device if self._plans else torch.device("cpu")
        for r, rank_meta in enumerate(metas):
            for name in sorted(rank_meta):
                for key in sorted(rank_meta[name]):
                    shape, dtype = rank_meta[name][key]
                    t = mine[name][key].detach().to(device).clone() if r == self.dp_rank else torch.empty(shape, dtype=dtype, device=device)
                    dist.broadcast(t, src=ranks[r], group=self.dp_group)
                    out.setdefault(name, {})[key] = t
        return out

    def load_named_full_state(self, named_state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Keep what this rank owns (every rank holds the full mapping)."""
        from megatron_opt.checkpoint.optim_state import load_named_optimizer_state

        mine = {n: dict(e) for n, e in named_state.items() if self.owner_by_name.get(n) == self.dp_rank}
        load_named_optimizer_state(self.local, mine)
        with torch.no_grad():  # the fp32 master copies are not filled in place here: copy them
            for group in self.local.param_groups:
                for name, p in zip(group.get("param_names") or [], group["params"]):
                    value = mine.get(name, {}).get(MAIN_PARAM_KEY)
                    if value is not None and value.data_ptr() != p.data_ptr():
                        p.data.copy_(value.view(p.shape))

    def sharded_named_state(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return self.named_full_state()

    def load_sharded_named_state(self, named_state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        self.load_named_full_state(named_state)
