"""ZeRO-1: optimizer state and fp32 main params sharded over data-parallel ranks.

Layout. Our ``DistributedDataParallel`` keeps one flat fp32 grad buffer per parameter dtype, cut
into buckets whose sizes are multiples of the DP size. DP rank ``r`` owns the contiguous slice
``[r·n/dp, (r+1)·n/dp)`` of every bucket, whatever parameters it cuts through
(``sharding.shard_param_ranges``). For every owned piece of a parameter this rank keeps one flat
fp32 "main shard" (an ``nn.Parameter``): a view into the model parameter when that is fp32, an
fp32 copy when it is bf16/fp16. The shards replace the model parameters in the inner optimizer's
groups; every other group key (lr, weight_decay, max_lr, ...) stays, and ``param_groups`` returns
the inner optimizer's own group dicts so a scheduler's writes reach it.

One step::

    DDP reduce-scatter (or all-reduce)  → owned slice of main_grad is the DP mean
    prepare_grads                        → shard.grad = owned slice of main_grad (unscale if scaler)
    grad norm / zeros                    → over the shards (disjoint over DP), one reduction over dp×mp
    inner step                           → updates only the shards
    write back + all-gather              → owned ranges of the model params, then every bucket's
                                           params are all-gathered over DP

The all-gather uses ``all_gather_into_tensor`` when the backend has it (probed once at start-up)
and ``all_gather`` of equal-size slices otherwise. With ``config.overlap_param_gather`` it is started
asynchronously at the end of ``step`` and waited for in a forward pre-hook on every model chunk
(or by an explicit ``finish_param_sync()``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from megatron_opt.config import OptimizerConfig
from megatron_opt.distributed.ddp import DistributedDataParallel
from megatron_opt.distributed.sharding import ShardRange, SlotInfo, bucket_shard, shard_param_ranges
from megatron_opt.errors import ConfigError
from megatron_opt.grad_scaler import MegatronGradScaler
from megatron_opt.optimizer import (
    PARAM_ATTRIBUTES,
    GradStatsGroups,
    InitStateFn,
    MegatronOptimizer,
    _zero_grads,
)
from megatron_opt.parallel import ProcessGroup, ProcessGroupCollection, group_rank, group_size

MAIN_PARAM_KEY = "main_param"


def dp_mp_group(pgs: ProcessGroupCollection) -> ProcessGroup:
    """A group covering data × model parallel ranks: where sharded grad statistics are summed."""
    dp, mp = group_size(pgs.dp), group_size(pgs.mp)
    if dp == 1:
        return pgs.mp
    if mp == 1:
        return pgs.dp
    if pgs.world is None or group_size(pgs.world) != dp * mp:
        raise ConfigError(
            f"pg_collection.world of size {group_size(pgs.world)} is not allowed for a sharded optimizer; expected the "
            f"group of all dp*mp = {dp * mp} ranks (grad norms are summed over it)"
        )
    return pgs.world


_GATHER_INTO_TENSOR: Dict[int, bool] = {}
# torch >= 2.13 names the one-tensor all-gather all_gather_single (all_gather_into_tensor is deprecated).
_all_gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def gather_into_tensor_available(group: ProcessGroup) -> bool:
    """Whether ``all_gather_into_tensor`` works on this group's backend (probed collectively, once)."""
    key = id(group)
    if key not in _GATHER_INTO_TENSOR:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
        size = group_size(group)
        out = torch.zeros(size, device=device)
        inp = torch.full((1,), float(group_rank(group) + 1), device=device)
        try:
            _all_gather_into(out, inp, group=group)
            ok = bool(torch.equal(out.cpu(), torch.arange(1, size + 1, dtype=out.dtype)))
        except (RuntimeError, NotImplementedError, AttributeError):
            ok = False
        _GATHER_INTO_TENSOR[key] = ok
    return _GATHER_INTO_TENSOR[key]


def all_gather_flat(output: torch.Tensor, local: torch.Tensor, group: ProcessGroup, into_tensor: bool, async_op: bool):
    """Gather equal-size ``local`` from every rank into ``output`` (rank order); returns the work handle."""
    if into_tensor:
        return _all_gather_into(output, local, group=group, async_op=async_op)
    return dist.all_gather(list(output.chunk(group_size(group))), local, group=group, async_op=async_op)


def copy_param_attributes(source: torch.Tensor, target: torch.Tensor) -> None:
    """Give a main shard the self-describing attributes of its model param (TP, shared, ...)."""
    for name in PARAM_ATTRIBUTES:
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))


@dataclass
class _Piece:
    """One owned piece: the model param, its main shard and where both live."""

    name: str
    model_param: nn.Parameter
    shard: nn.Parameter
    range: ShardRange
    bucket_key: Tuple[int, int, int]
    """(chunk index, buffer index, bucket index)."""
    is_view: bool

    def model_slice(self) -> torch.Tensor:
        start, end = self.range.param_range
        return self.model_param.data.view(-1)[start:end]

    def grad_slice(self) -> Optional[torch.Tensor]:
        main_grad = getattr(self.model_param, "main_grad", None)
        if main_grad is None:
            return None
        start, end = self.range.param_range
        return main_grad.view(-1)[start:end]


@dataclass
class _BucketPlan:
    """What is gathered for one bucket: its size, dtype, this rank's shard and the managed params."""

    numel: int
    dtype: torch.dtype
    device: torch.device
    shard: Tuple[int, int]
    """Owned range relative to the bucket start."""
    params: List[Tuple[nn.Parameter, int, int]]
    """(model param, start, end) relative to the bucket start, for every param this optimizer manages."""
    pieces: List[_Piece]


class DistributedOptimizer(MegatronOptimizer):
    """ZeRO-1 wrapper around an inner optimizer whose state is elementwise (Adam, SGD, Lion, ...).

    ``optimizer`` must have been built over model params that all live in the grad buffers of
    ``ddp_chunks``; its groups are rewritten to hold this rank's main shards before any state exists.
    ``grad_stats.reduce_group`` must cover dp × mp (see ``dp_mp_group``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        config: OptimizerConfig,
        ddp_chunks: Sequence[DistributedDataParallel],
        grad_scaler: Optional[MegatronGradScaler] = None,
        grad_stats: GradStatsGroups = GradStatsGroups(),
        init_state_fn: Optional[InitStateFn] = None,
    ) -> None:
        super().__init__(optimizer, config, grad_stats, init_state_fn)
        self.grad_scaler = grad_scaler
        self.ddp_chunks = list(ddp_chunks)
        if not self.ddp_chunks:
            raise ConfigError("use_distributed_optimizer=True is not allowed without DistributedDataParallel-wrapped model chunks")
        self.dp_group = self.ddp_chunks[0].dp_group
        self.dp_size = group_size(self.dp_group)
        self.dp_rank = group_rank(self.dp_group)
        for chunk in self.ddp_chunks:
            if group_size(chunk.dp_group) != self.dp_size:
                raise ConfigError("every model chunk must be wrapped by DistributedDataParallel over the same data-parallel group")
        self._gather_into_tensor = self.dp_size > 1 and gather_into_tensor_available(self.dp_group)
        self._pending_gathers: List[Tuple[Any, torch.Tensor, _BucketPlan]] = []
        self._hooks = []

        self.pieces: List[_Piece] = []
        self._piece_groups: List[List[_Piece]] = []
        self._bucket_plans: Dict[Tuple[int, int, int], _BucketPlan] = {}
        self._build_shards()
        if config.overlap_param_gather:
            for chunk in self.ddp_chunks:
                self._hooks.append(chunk.register_forward_pre_hook(lambda module, args: self.finish_param_sync()))

    # ---- layout -------------------------------------------------------------------------------

    def _locate(self) -> Dict[nn.Parameter, Tuple[int, int, Any]]:
        where: Dict[nn.Parameter, Tuple[int, int, Any]] = {}
        for c, chunk in enumerate(self.ddp_chunks):
            for b, buffer in enumerate(chunk.buffers):
                for p, slot in buffer.param_index_map.items():
                    where[p] = (c, b, slot)
        return where

    def _build_shards(self) -> None:
        where = self._locate()
        managed = []
        for group in self.optimizer.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for p, name in zip(group["params"], names):
                if p not in where:
                    raise ConfigError(
                        f"parameter {name or tuple(p.shape)} is not allowed in the distributed optimizer; expected every "
                        "parameter in the grad buffers of the DistributedDataParallel-wrapped model chunks"
                    )
                managed.append(p)
        managed_set = set(managed)

        # Owned ranges of every buffer, once per (chunk, buffer).
        owned: Dict[nn.Parameter, Tuple[ShardRange, Tuple[int, int, int]]] = {}
        for c, chunk in enumerate(self.ddp_chunks):
            for b, buffer in enumerate(chunk.buffers):
                bucket_ranges = [(bk.start, bk.end) for bk in buffer.buckets]
                params_by_name = {}
                slots = []
                for p, slot in buffer.param_index_map.items():
                    if p in managed_set:
                        params_by_name[slot.name] = p
                        slots.append(SlotInfo(slot.name, slot.start, slot.end, slot.bucket_index))
                for r in shard_param_ranges(slots, bucket_ranges, self.dp_rank, self.dp_size):
                    owned[params_by_name[r.name]] = (r, (c, b, r.bucket_index))
                for bk in buffer.buckets:
                    members = [(p, s.start - bk.start, s.end - bk.start) for p, s in buffer.param_index_map.items()
                               if p in managed_set and s.bucket_index == bk.index]
                    if not members:
                        continue
                    lo, hi = bucket_shard((bk.start, bk.end), self.dp_rank, self.dp_size)
                    self._bucket_plans[(c, b, bk.index)] = _BucketPlan(
                        bk.numel, buffer.param_dtype, buffer.data.device, (lo - bk.start, hi - bk.start), members, [])

        for group in self.optimizer.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            shards, shard_names, pieces = [], [], []
            for p, name in zip(group["params"], names):
                if p not in owned:
                    continue
                r, key = owned[p]
                piece = self._make_piece(name or where[p][2].name, p, r, key)
                pieces.append(piece)
                shards.append(piece.shard)
                shard_names.append(piece.name)
                self._bucket_plans[key].pieces.append(piece)
            group["params"] = shards
            if "param_names" in group:
                group["param_names"] = shard_names
            self._piece_groups.append(pieces)
            self.pieces.extend(pieces)
        if self.optimizer.state:
            raise ConfigError("the inner optimizer of a DistributedOptimizer must not have state yet (build it fresh)")

    @staticmethod
    def _make_piece(name: str, p: nn.Parameter, r: ShardRange, key: Tuple[int, int, int]) -> _Piece:
        start, end = r.param_range
        flat = p.data.view(-1)[start:end]
        if p.dtype == torch.float32:
            shard = nn.Parameter(flat, requires_grad=p.requires_grad)  # shares storage with the model param
            is_view = True
        elif p.dtype in (torch.float16, torch.bfloat16):
            shard = nn.Parameter(flat.detach().clone().float(), requires_grad=p.requires_grad)
            is_view = False
        else:
            raise TypeError(f"DistributedOptimizer got parameter {name} of dtype {p.dtype}; expected fp32, bf16 or fp16")
        copy_param_attributes(p, shard)
        return _Piece(name, p, shard, r, key, is_view)

    # ---- gradients ----------------------------------------------------------------------------

    def prepare_grads(self) -> bool:
        self.finish_param_sync()
        for piece in self.pieces:
            grad = piece.grad_slice()
            if grad is None and piece.model_param.grad is not None:
                start, end = piece.range.param_range
                grad = piece.model_param.grad.view(-1)[start:end]
            piece.shard.grad = None if grad is None else (grad if grad.dtype == torch.float32 else grad.float())
        return self._unscale_grads_and_update_scaler()

    def zero_grad(self, set_to_none: bool = True) -> None:
        _zero_grads([p.shard for p in self.pieces], set_to_none)
        _zero_grads(list({id(p.model_param): p.model_param for p in self.pieces}.values()), set_to_none)

    # ---- the update and the parameter all-gather -------------------------------------------------

    def step_with_ready_grads(self) -> bool:
        self.optimizer.step()
        self._copy_main_to_model()
        self.start_param_sync()
        if not self.config.overlap_param_gather:
            self.finish_param_sync()
        return True

    def _copy_main_to_model(self) -> None:
        with torch.no_grad():
            for piece in self.pieces:
                if not piece.is_view:
                    piece.model_slice().copy_(piece.shard.data)

    @torch.no_grad()
    def start_param_sync(self) -> None:
        """Launch the all-gather of every bucket's updated params (async with overlap_param_gather)."""
        if self.dp_size == 1:
            return
        self.finish_param_sync()
        async_op = self.config.overlap_param_gather
        for key in sorted(self._bucket_plans):  # same order on every rank
            plan = self._bucket_plans[key]
            lo, hi = plan.shard
            local = torch.zeros(hi - lo, dtype=plan.dtype, device=plan.device)
            for piece in plan.pieces:
                s, e = piece.range.shard_range
                local[s:e].copy_(piece.model_slice())
            full = torch.empty(plan.numel, dtype=plan.dtype, device=plan.device)
            work = all_gather_flat(full, local, self.dp_group, self._gather_into_tensor, async_op)
            self._pending_gathers.append((work if async_op else None, full, plan))

    @torch.no_grad()
    def finish_param_sync(self) -> None:
        """Wait for a pending parameter all-gather and copy the results into the model params.

        With ``overlap_param_gather`` a forward pre-hook on every model chunk calls this; a train loop
        that reads the params before the next forward must call it itself.
        """
        pending, self._pending_gathers = self._pending_gathers, []
        for work, full, plan in pending:
            if work is not None:
                work.wait()
            for p, start, end in plan.params:
                p.data.view(-1).copy_(full[start:end])

    @torch.no_grad()
    def scale_main_params_(self, row_scales) -> None:
        """Scale this rank's main shards; fp32 shards are views of the model param (scaled by the caller)."""
        for piece in self.pieces:
            scale = row_scales.get(id(piece.model_param))
            if scale is None or piece.is_view:
                continue
            start, end = piece.range.param_range
            row_numel = piece.model_param[0].numel() if piece.model_param.dim() > 0 else 1
            rows = torch.arange(start, end, device=scale.device) // row_numel
            piece.shard.data.mul_(scale[rows].to(piece.shard.device))

    # ---- state ----------------------------------------------------------------------------------

    def init_state(self) -> None:
        """Create optimizer state for every shard (Adam's zeros when no init_state_fn is given)."""
        if self.init_state_fn is not None:
            self.init_state_fn(self.optimizer)
            return
        if isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    state = self.optimizer.state[p]
                    if len(state) == 0:
                        state["step"] = torch.tensor(0.0, dtype=torch.float32)
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        if group.get("amsgrad"):
                            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def reload_model_params(self) -> None:
        """Re-read the main shards from the model params (after the model was loaded)."""
        with torch.no_grad():
            for piece in self.pieces:
                if not piece.is_view:
                    piece.shard.data.copy_(piece.model_slice())

    def state_dict(self) -> Dict[str, Any]:
        """This rank's shard of everything; loads back only on the same layout (same DP size, buckets)."""
        self.finish_param_sync()
        return {
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "shard_layout": [(p.name, p.range.param_range) for p in self.pieces],
            "main_params": [p.shard.detach().clone() for p in self.pieces],
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        layout = [(p.name, p.range.param_range) for p in self.pieces]
        saved_layout = [(n, tuple(r)) for n, r in state_dict["shard_layout"]]
        if saved_layout != layout:
            raise ValueError(
                "DistributedOptimizer state_dict was saved with another shard layout (DP size, bucket size or model); "
                "use named_full_state()/load_named_full_state() to reshard"
            )
        self.optimizer.load_state_dict(state_dict["optimizer"])
        scaler_state = state_dict.get("grad_scaler")
        if self.grad_scaler is not None:
            if scaler_state is None:
                warnings.warn("no grad scaler state in the checkpoint; keeping the current loss scale", stacklevel=2)
            else:
                self.grad_scaler.load_state_dict(scaler_state)
        with torch.no_grad():
            for piece, value in zip(self.pieces, state_dict["main_params"]):
                piece.shard.data.copy_(value)
        self._copy_main_to_model()
        self.start_param_sync()
        self.finish_param_sync()

    # ---- per-parameter full state (checkpointing) ---------------------------------------------

    def _local_state_keys(self) -> Tuple[List[str], Dict[str, Dict[str, Any]]]:
        elementwise, scalars = set(), {}
        for piece in self.pieces:
            for key, value in self.optimizer.state.get(piece.shard, {}).items():
                if torch.is_tensor(value) and value.dim() >= 1:
                    elementwise.add(key)
                else:
                    scalars.setdefault(piece.name, {})[key] = value.detach().cpu().clone() if torch.is_tensor(value) else value
        return sorted(elementwise), scalars

    def _gather_objects(self, obj: Any) -> List[Any]:
        if self.dp_size == 1:
            return [obj]
        out: List[Any] = [None] * self.dp_size
        dist.all_gather_object(out, obj, group=self.dp_group)
        return out

    def _mixed_precision(self) -> bool:
        return any(not p.is_view for p in self.pieces)

    @torch.no_grad()
    def named_full_state(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """``{param name: {state key: full tensor}}`` gathered over DP (a collective on every DP rank).

        Elementwise state comes back in the parameter's local (TP-shard) shape, scalar state (Adam's
        ``step``) as it is stored; with bf16/fp16 params the fp32 master copy is under ``main_param``.
        """
        self.finish_param_sync()
        keys, scalars = self._local_state_keys()
        gathered = self._gather_objects((keys, scalars, self._mixed_precision()))
        all_keys = sorted({k for g in gathered for k in g[0]})
        mixed = any(g[2] for g in gathered)
        if mixed:
            all_keys.append(MAIN_PARAM_KEY)
        out: Dict[str, Dict[str, torch.Tensor]] = {}
        names = {id(p): n for n, p in self._managed_names()}
        for key in all_keys:
            for bucket_key in sorted(self._bucket_plans):
                plan = self._bucket_plans[bucket_key]
                lo, hi = plan.shard
                local = torch.zeros(hi - lo, dtype=torch.float32, device=plan.device)
                for piece in plan.pieces:
                    s, e = piece.range.shard_range
                    value = piece.shard.data if key == MAIN_PARAM_KEY else self.optimizer.state.get(piece.shard, {}).get(key)
                    if value is not None:
                        local[s:e].copy_(value)
                if self.dp_size > 1:
                    full = torch.empty(plan.numel, dtype=torch.float32, device=plan.device)
                    all_gather_flat(full, local, self.dp_group, self._gather_into_tensor, False)
                else:
                    full = local
                for p, start, end in plan.params:
                    if key == MAIN_PARAM_KEY and p.dtype == torch.float32:
                        continue
                    out.setdefault(names[id(p)], {})[key] = full[start:end].clone().view(p.shape)
        for g in gathered:
            for name, entry in g[1].items():
                for key, value in entry.items():
                    out.setdefault(name, {}).setdefault(key, value)
        return out

    def _managed_names(self) -> List[Tuple[str, nn.Parameter]]:
        seen: Dict[int, Tuple[str, nn.Parameter]] = {}
        for piece in self.pieces:
            seen[id(piece.model_param)] = (piece.name, piece.model_param)
        # params this rank owns no piece of: name them from the DDP slots
        for plan in self._bucket_plans.values():
            for p, _, _ in plan.params:
                if id(p) not in seen:
                    seen[id(p)] = (self._slot_name(p), p)
        return list(seen.values())

    def _slot_name(self, p: nn.Parameter) -> str:
        for chunk in self.ddp_chunks:
            for buffer in chunk.buffers:
                if p in buffer.param_index_map:
                    return buffer.param_index_map[p].name
        raise KeyError("parameter not in any grad buffer")

    @torch.no_grad()
    def load_named_full_state(self, named_state: Dict[str, Dict[str, torch.Tensor]]) -> None:
        """Scatter full per-parameter state back into this rank's shards (no communication needed
        beyond refreshing the model params when ``main_param`` is given)."""
        touched_main = False
        for piece in self.pieces:
            entry = named_state.get(piece.name)
            if entry is None:
                continue
            start, end = piece.range.param_range
            state = self.optimizer.state[piece.shard]
            for key, value in entry.items():
                if key == MAIN_PARAM_KEY:
                    piece.shard.data.copy_(value.reshape(-1)[start:end])
                    touched_main = True
                elif torch.is_tensor(value) and value.dim() >= 1:
                    part = value.reshape(-1)[start:end].to(device=piece.shard.device, dtype=torch.float32)
                    if key in state and torch.is_tensor(state[key]) and state[key].shape == part.shape:
                        state[key].copy_(part)
                    else:
                        state[key] = part.clone()
                else:
                    state[key] = value.clone() if torch.is_tensor(value) else value
        # every DP rank must join the gather, whether or not it owned a touched piece
        any_main = self._gather_objects(touched_main)
        if any(any_main):
            self._copy_main_to_model()
            self.start_param_sync()
            self.finish_param_sync()

    # the protocol megatron_opt.checkpoint.optim_state.ShardedStateOptimizer expects
    def sharded_named_state(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return self.named_full_state()

    def load_sharded_named_state(self, named_state: Dict[str, Dict[str, torch.Tensor]]) -> None:
        self.load_named_full_state(named_state)


def finish_param_sync(optimizer: Any) -> None:
    """Wait for every pending parameter all-gather under ``optimizer`` (walks ChainedOptimizer children).

    A train loop with ``overlap_param_gather`` need not call it (a forward pre-hook does), except to
    read the parameters before the next forward (evaluation, checkpoints, logging).
    """
    for child in getattr(optimizer, "chained_optimizers", None) or [optimizer]:
        if child is not optimizer:
            finish_param_sync(child)
        elif hasattr(child, "finish_param_sync"):
            child.finish_param_sync()
