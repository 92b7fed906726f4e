"""save_checkpoint / load_checkpoint: DCP files keyed by parameter name, tensors in their global shape.

Keys (flat, one DCP entry each):

* ``model/<param name>`` — the model parameter (its dtype), global shape;
* ``optimizer/<param name>/<state key>`` — e.g. ``exp_avg``, ``exp_avg_sq``, ``step`` (0-d),
  ``momentum_buffer``; ``optimizer/<param name>/main_param`` — the fp32 main copy of a bf16/fp16
  parameter.

A tensor-parallel shard is handed to DCP as a DTensor with ``Shard(partition_dim)`` over a mesh
of this rank's TP group, so every rank writes its own piece and a different TP size reads the
pieces it needs. Data-parallel replicas produce identical entries and DCP writes each once.
Pipeline stages hold different keys; DCP merges the plans. Everything that is not a tensor goes
to JSON (``metadata.json``, ``rng/rank_*.json``): loading unpickles nothing of ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from megatron_opt.checkpoint import files
from megatron_opt.checkpoint.files import CheckpointError, one_line
from megatron_opt.checkpoint.optim_state import (
    MAIN_PARAM_KEY,
    ShardedStateOptimizer,
    create_missing_state,
    leaf_optimizers,
    load_named_optimizer_state,
    merge_summaries,
    named_optimizer_state,
    optimizer_summary,
)
from megatron_opt.checkpoint.rng import get_rng_state, set_rng_state
from megatron_opt.config import SCHEDULE_OVERRIDE_KEYS
from megatron_opt.parallel import ProcessGroupCollection

MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"
# Group settings restored with the optimizer state (as Megatron-LM's optimizer.load_state_dict does);
# the scheduler then applies override / use-checkpoint to them.
RESTORED_GROUP_KEYS = ("lr", "weight_decay") + tuple(SCHEDULE_OVERRIDE_KEYS)


def model_key(name: str) -> str:
    return MODEL_PREFIX + name


def optimizer_key(name: str, state_key: str) -> str:
    return f"{OPTIMIZER_PREFIX}{name}/{state_key}"


@dataclass
class LoadedCheckpoint:
    """What ``load_checkpoint`` restored, for the training loop to continue from."""

    path: str
    iteration: int
    consumed_train_samples: int
    consumed_valid_samples: int
    args: Dict[str, Any]
    data_state: Any
    loaded_optimizer: bool
    loaded_rng: bool
    loaded_scheduler: bool


# ------------------------------------------------------------------------------------------------
# ranks


def _world(pgs: ProcessGroupCollection):
    if pgs.world is not None:
        return pgs.world
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def _rank(world) -> int:
    return dist.get_rank() if world is not None else 0


def _world_size(world) -> int:
    return dist.get_world_size(world) if world is not None else 1


def _dcp(fn, state, world, **kwargs) -> None:
    """dcp.save / dcp.load over ``world``, or in this process alone (without DCP's warning about it)."""
    if world is not None:
        fn(state, process_group=world, **kwargs)
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
        fn(state, no_dist=True, **kwargs)


def _barrier(world) -> None:
    if world is not None:
        dist.barrier(group=world)


def _agree(world, path: str, error: Optional[str]) -> None:
    """Collective: if any rank has an error, every rank raises (the lowest rank's message)."""
    if world is None:
        if error is not None:
            raise CheckpointError(path, error)
        return
    gathered: List[Optional[str]] = [None] * _world_size(world)
    dist.all_gather_object(gathered, error, group=world)
    for r, msg in enumerate(gathered):
        if msg is not None:
            raise CheckpointError(path, msg if r == _rank(world) or msg.startswith("rank ") else f"rank {r}: {msg}")


def _broadcast_nonce(world) -> str:
    value = torch.tensor([int.from_bytes(os.urandom(4), "little")], dtype=torch.int64)
    if world is not None:
        dist.broadcast(value, src=dist.get_global_rank(world, 0), group=world)
    return f"{int(value.item()):08x}"


# ------------------------------------------------------------------------------------------------
# global shapes


@dataclass(frozen=True)
class _Layout:
    local_shape: Tuple[int, ...]
    global_shape: Tuple[int, ...]
    partition_dim: Optional[int]  # None: the same full tensor on every TP rank


class _GlobalView:
    """Turns local tensors into what DCP should see: the tensor itself, or a TP-sharded DTensor."""

    def __init__(self, pgs: ProcessGroupCollection) -> None:
        self.pgs = pgs
        self._meshes: Dict[str, Any] = {}

    def layout(self, name: str, param: torch.Tensor) -> _Layout:
        local = tuple(param.shape)
        if self.pgs.tp_size > 1 and getattr(param, "tensor_model_parallel", False):
            dim = int(getattr(param, "partition_dim", -1))
            if dim < 0 or dim >= len(local):
                raise ValueError(f"parameter {name}: partition_dim={dim} for a {len(local)}-d tensor")
            if int(getattr(param, "partition_stride", 1)) != 1:
                raise ValueError(f"parameter {name}: partition_stride={param.partition_stride} is not supported by the checkpoint")
            global_shape = list(local)
            global_shape[dim] *= self.pgs.tp_size
            return _Layout(local, tuple(global_shape), dim)
        return _Layout(local, local, None)

    def _mesh(self, device_type: str):
        if device_type not in self._meshes:
            from torch.distributed.device_mesh import DeviceMesh

            self._meshes[device_type] = DeviceMesh.from_group(self.pgs.tp, device_type)
        return self._meshes[device_type]

    def local_shape_of(self, layout: _Layout, saved_shape: Sequence[int]) -> Tuple[int, ...]:
        """The local shape of a state tensor whose global (saved) shape is ``saved_shape``."""
        if tuple(saved_shape) == layout.global_shape:
            return layout.local_shape
        return tuple(saved_shape)

    def wrap(self, name: str, key: str, tensor: torch.Tensor, layout: _Layout):
        if layout.partition_dim is None or tensor.dim() == 0:
            return tensor
        if tuple(tensor.shape) != layout.local_shape:
            raise ValueError(
                f"{key} of tensor-parallel parameter {name} has shape {list(tensor.shape)}, not the parameter's "
                f"{list(layout.local_shape)}; it cannot be stored in global shape"
            )
        from torch.distributed.tensor import DTensor, Shard

        stride = [1] * len(layout.global_shape)
        for i in range(len(stride) - 2, -1, -1):
            stride[i] = stride[i + 1] * layout.global_shape[i + 1]
        return DTensor.from_local(tensor, self._mesh(tensor.device.type), [Shard(layout.partition_dim)],
                                  run_check=False, shape=torch.Size(layout.global_shape), stride=tuple(stride))


def _model_params(model_chunks: Sequence[torch.nn.Module]) -> Dict[str, torch.nn.Parameter]:
    if isinstance(model_chunks, torch.nn.Module):
        model_chunks = [model_chunks]
    out: Dict[str, torch.nn.Parameter] = {}
    for chunk in model_chunks:
        for name, p in chunk.named_parameters():
            if name in out and out[name] is not p:
                raise ValueError(f"parameter name {name} occurs in two model chunks; names must be unique")
            out[name] = p
    return out


def _jsonable(value: Any) -> Any:
    """Plain JSON data: dicts, lists, numbers, strings; anything else becomes its repr."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if torch.is_tensor(value) and value.numel() == 1:
        return value.item()
    return repr(value)


def _grad_scaler_states(optimizer: Any) -> List[Optional[Dict[str, Any]]]:
    if optimizer is None:
        return []
    return [_jsonable(leaf.grad_scaler.state_dict()) if getattr(leaf, "grad_scaler", None) is not None else None
            for leaf in leaf_optimizers(optimizer)]


# ------------------------------------------------------------------------------------------------
# save


def save_checkpoint(
    save_dir: str,
    iteration: int,
    model_chunks: Sequence[torch.nn.Module],
    optimizer: Any = None,
    scheduler: Any = None,
    *,
    pg_collection: Optional[ProcessGroupCollection] = None,
    args: Any = None,
    consumed_train_samples: int = 0,
    consumed_valid_samples: int = 0,
    data_state: Any = None,
    save_optim: bool = True,
    save_rng: bool = True,
) -> str:
    """Save a checkpoint of ``iteration`` under ``save_dir`` (a collective on every rank); returns its path.

    The files are written to ``iter_XXXXXXX.tmp-<nonce>``; only after every rank finished does
    rank 0 write ``metadata.json`` and the completion marker, rename the directory to
    ``iter_XXXXXXX`` and point ``latest_checkpointed_iteration.txt`` at it. A save that fails or is
    killed leaves the previous checkpoint and ``latest`` as they were.
    """
    pgs = pg_collection or ProcessGroupCollection.single_process()
    world = _world(pgs)
    rank = _rank(world)
    save_dir = os.path.abspath(save_dir)
    final_dir = os.path.join(save_dir, files.iteration_dir_name(iteration))
    nonce = _broadcast_nonce(world)
    tmp_dir = f"{final_dir}.tmp-{nonce}"

    error = None
    if rank == 0:
        try:
            os.makedirs(save_dir, exist_ok=True)
            files.remove_stale_temporaries(save_dir)
            os.makedirs(tmp_dir)
        except OSError as exc:
            error = f"cannot create {tmp_dir} ({exc})"
    _agree(world, final_dir, error)

    error, state, summary = None, {}, {}
    try:
        state = _state_to_save(model_chunks, optimizer if save_optim else None, pgs)
        summary = optimizer_summary(optimizer) if (optimizer is not None and save_optim) else {}
        if save_rng:
            rng_path = os.path.join(tmp_dir, files.rng_file_name(rank))
            os.makedirs(os.path.dirname(rng_path), exist_ok=True)
            files.write_file_durably(rng_path, json.dumps({"rank": rank, "tp_rank": pgs.tp_rank, "pp_rank": pgs.pp_rank,
                                                           "dp_rank": pgs.dp_rank, "rng": get_rng_state()}))
    except (ValueError, OSError) as exc:
        error = one_line(exc)
    _agree(world, final_dir, error)

    summaries: List[Dict[str, Any]] = [summary]
    if world is not None:
        summaries = [None] * _world_size(world)  # type: ignore[list-item]
        dist.all_gather_object(summaries, summary, group=world)

    try:
        _dcp(dcp.save, state, world, storage_writer=dcp.FileSystemWriter(tmp_dir, sync_files=True))
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - DCP reports any rank's failure as one exception
        raise CheckpointError(final_dir, f"save failed, nothing was published ({type(exc).__name__}: {exc})") from None
    _barrier(world)  # every rank's files (DCP data and RNG JSON) are on disk

    error = None
    if rank == 0:
        try:
            merged = merge_summaries(summaries)
            metadata = {
                "format": files.FORMAT,
                "iteration": int(iteration),
                "consumed_train_samples": int(consumed_train_samples),
                "consumed_valid_samples": int(consumed_valid_samples),
                "data_state": _jsonable(data_state),
                "args": _jsonable(args) if args is not None else {},
                "layout": {"world_size": _world_size(world), "tp": pgs.tp_size, "pp": pgs.pp_size, "dp": pgs.dp_size},
                "has_optimizer": bool(save_optim and optimizer is not None),
                "has_rng": bool(save_rng),
                "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
                "grad_scalers": _grad_scaler_states(optimizer) if save_optim else [],
                "optimizer": merged,
                "torch_version": torch.__version__,
            }
            files.write_file_durably(os.path.join(tmp_dir, files.METADATA_FILE), json.dumps(metadata, indent=1, sort_keys=True))
            files.write_marker(tmp_dir, iteration)
            files.publish(tmp_dir, final_dir, nonce)
            files.write_latest(save_dir, iteration)
        except OSError as exc:
            error = f"publishing failed ({exc}); the previous checkpoint is untouched"
    _agree(world, final_dir, error)
    return final_dir


def _state_to_save(model_chunks, optimizer, pgs: ProcessGroupCollection) -> Dict[str, Any]:
    view = _GlobalView(pgs)
    params = _model_params(model_chunks)
    layouts = {name: view.layout(name, p) for name, p in params.items()}
    state: Dict[str, Any] = {}
    for name, p in params.items():
        state[model_key(name)] = view.wrap(name, "model", p.detach(), layouts[name])
    if optimizer is not None:
        for name, entry in named_optimizer_state(optimizer).items():
            if name not in layouts:
                raise ValueError(f"optimizer parameter {name} is not a parameter of the model chunks")
            for key, tensor in entry.items():
                state[optimizer_key(name, key)] = view.wrap(name, key, tensor, layouts[name])
    return state


# ------------------------------------------------------------------------------------------------
# load


def read_checkpoint_metadata(ckpt_dir: str) -> Tuple[Dict[str, Any], Dict[str, TensorStorageMetadata]]:
    """Check a checkpoint is complete and readable; return (metadata.json, {DCP key: tensor metadata})."""
    files.verify_complete(ckpt_dir)
    meta = files.read_json(ckpt_dir, files.METADATA_FILE, "metadata")
    if not isinstance(meta, dict) or meta.get("format") != files.FORMAT:
        raise CheckpointError(ckpt_dir, f"{files.METADATA_FILE} is not {files.FORMAT} metadata")
    try:
        dcp_meta = dcp.FileSystemReader(ckpt_dir).read_metadata()
    except (Exception, CheckpointException) as exc:  # noqa: BLE001
        raise CheckpointError(ckpt_dir, f"DCP metadata cannot be read ({type(exc).__name__}: {exc})") from None
    tensors = {k: v for k, v in dcp_meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
    return meta, tensors


def _shape_error(ckpt_key: str, what: str, saved: Sequence[int], now: Sequence[int], extra: str = "") -> str:
    return f"{what}: shape {list(saved)} in checkpoint, {list(now)} in model{extra}"


def load_checkpoint(
    load_dir: str,
    model_chunks: Sequence[torch.nn.Module],
    optimizer: Any = None,
    scheduler: Any = None,
    *,
    pg_collection: Optional[ProcessGroupCollection] = None,
    iteration: Optional[int] = None,
    no_load_optim: bool = False,
    no_load_rng: bool = False,
    finetune: bool = False,
    strict: bool = True,
) -> Optional[LoadedCheckpoint]:
    """Load a checkpoint into this rank's model chunks (and optimizer, scheduler); a collective.

    ``load_dir`` is a checkpoint directory or a save directory (then ``iteration``, else the
    ``latest`` pointer). Returns None when a save directory holds no checkpoint. Any layout can
    be read (TP/PP/DP sizes may differ from the saving run). ``finetune``: model only, iteration
    and consumed samples 0. ``no_load_optim``: model only, iteration kept. The scheduler is
    loaded after the optimizer (and only with it); its override / use-checkpoint flags apply.
    Raises ``CheckpointError`` (one line: path and reason) on every rank when any rank refuses.
    """
    pgs = pg_collection or ProcessGroupCollection.single_process()
    world = _world(pgs)
    ckpt_dir = files.resolve_checkpoint_dir(load_dir, iteration)
    if ckpt_dir is None:
        return None
    load_optim = optimizer is not None and not no_load_optim and not finetune

    error: Optional[str] = None
    state: Dict[str, Any] = {}
    named: Dict[str, Dict[str, torch.Tensor]] = {}
    reload_main = False
    meta: Dict[str, Any] = {}
    params: Dict[str, torch.nn.Parameter] = {}
    saved_tensors: Dict[str, TensorStorageMetadata] = {}
    try:
        meta, saved_tensors = read_checkpoint_metadata(ckpt_dir)
        params = _model_params(model_chunks)
        state, named, reload_main = _state_to_load(meta, saved_tensors, params, optimizer if load_optim else None, pgs)
    except CheckpointError as exc:
        error = exc.reason
    except ValueError as exc:
        error = one_line(exc)
    _agree(world, ckpt_dir, error)

    if strict:
        names = set(params)
        if world is not None:
            gathered: List[Any] = [None] * _world_size(world)
            dist.all_gather_object(gathered, sorted(names), group=world)
            names = {n for part in gathered for n in part}
        extra = sorted(k[len(MODEL_PREFIX):] for k in saved_tensors if k.startswith(MODEL_PREFIX) and k[len(MODEL_PREFIX):] not in names)
        if extra:
            raise CheckpointError(ckpt_dir, f"parameter {extra[0]} is in the checkpoint but not in the model "
                                            f"({len(extra)} such; a different model? strict=False ignores them)")

    try:
        _dcp(dcp.load, state, world, storage_reader=dcp.FileSystemReader(ckpt_dir))
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - a corrupt file surfaces as any exception inside DCP
        raise CheckpointError(ckpt_dir, f"tensor data cannot be read ({type(exc).__name__}: {exc})") from None

    loaded_scheduler = False
    if load_optim:
        load_named_optimizer_state(optimizer, named)
        if reload_main:
            warnings.warn(f"checkpoint {ckpt_dir}: no fp32 main params saved; main params recomputed from the model params",
                          stacklevel=2)
            optimizer.reload_model_params()
        _restore_groups(optimizer, meta.get("optimizer", {}))
        _restore_grad_scalers(optimizer, meta.get("grad_scalers") or [])
        if scheduler is not None and meta.get("scheduler") is not None:
            scheduler.load_state_dict(meta["scheduler"])
            loaded_scheduler = True
    elif optimizer is not None:
        optimizer.reload_model_params()

    loaded_rng = False
    if not no_load_rng and not finetune:
        loaded_rng = _load_rng(ckpt_dir, meta, pgs, world)

    return LoadedCheckpoint(
        path=ckpt_dir,
        iteration=0 if finetune else int(meta["iteration"]),
        consumed_train_samples=0 if finetune else int(meta.get("consumed_train_samples", 0)),
        consumed_valid_samples=0 if finetune else int(meta.get("consumed_valid_samples", 0)),
        args=meta.get("args") or {},
        data_state=None if finetune else meta.get("data_state"),
        loaded_optimizer=load_optim,
        loaded_rng=loaded_rng,
        loaded_scheduler=loaded_scheduler,
    )


def _state_to_load(meta, saved: Dict[str, TensorStorageMetadata], params: Dict[str, torch.nn.Parameter], optimizer,
                   pgs: ProcessGroupCollection):
    view = _GlobalView(pgs)
    layouts = {name: view.layout(name, p) for name, p in params.items()}
    state: Dict[str, Any] = {}
    for name, p in params.items():
        key = model_key(name)
        if key not in saved:
            raise ValueError(f"missing parameter {name}")
        lay = layouts[name]
        if tuple(saved[key].size) != lay.global_shape:
            raise ValueError(_shape_error(key, f"parameter {name}", saved[key].size, lay.global_shape))
        state[key] = view.wrap(name, "model", p.detach(), lay)
    if optimizer is None:
        return state, {}, False

    if not meta.get("has_optimizer"):
        raise ValueError("optimizer state missing (saved with --no-save-optim?); load with no_load_optim=True")
    optimizer.init_state() if hasattr(optimizer, "init_state") else None
    saved_summary = meta.get("optimizer") or {}
    current = optimizer_summary(optimizer)
    wanted: Dict[str, Dict[str, Tuple[str, Tuple[int, ...], torch.dtype]]] = {}
    for name, now in current.items():
        if name not in layouts:
            raise ValueError(f"optimizer parameter {name} is not a parameter of the model chunks")
        was = saved_summary.get(name)
        if was is None:
            raise ValueError(f"optimizer state for {name} missing (saved with --no-save-optim, or a different model?)")
        if was["optimizer"] != now["optimizer"]:
            raise ValueError(f"parameter {name}: optimizer {was['optimizer']} in checkpoint, {now['optimizer']} now")
        if now["state"] and set(now["state"]) != set(was["state"]):
            raise ValueError(f"optimizer state for {name}: keys {sorted(was['state'])} in checkpoint, "
                             f"{sorted(now['state'])} in the optimizer")
        entry = {}
        for key, kind in was["state"].items():
            ck = optimizer_key(name, key)
            if ck not in saved:
                raise ValueError(f"optimizer state {key} for {name} missing")
            entry[key] = (kind, view.local_shape_of(layouts[name], saved[ck].size), saved[ck].properties.dtype)
        wanted[name] = entry
    create_missing_state(optimizer, wanted, lambda n, k, shape: view.local_shape_of(layouts[n], shape))

    named = named_optimizer_state(optimizer)
    reload_main = False
    for name, entry in named.items():
        lay = layouts[name]
        for key, tensor in entry.items():
            ck = optimizer_key(name, key)
            if ck not in saved:
                if key == MAIN_PARAM_KEY:
                    reload_main = True
                    continue
                raise ValueError(f"optimizer state {key} for {name} missing")
            global_shape = lay.global_shape if tuple(tensor.shape) == lay.local_shape else tuple(tensor.shape)
            if tensor.dim() > 0 and tuple(saved[ck].size) != global_shape:
                raise ValueError(_shape_error(ck, f"optimizer state {key} of {name}", saved[ck].size, global_shape))
            state[ck] = view.wrap(name, key, tensor, lay)
    return state, named, reload_main


def _restore_groups(optimizer: Any, saved_summary: Mapping[str, Any]) -> None:
    for group in optimizer.param_groups:
        names = group.get("param_names") or []
        saved = next((saved_summary[n]["group"] for n in names if n in saved_summary), None)
        if not saved:
            continue
        for key in RESTORED_GROUP_KEYS:
            if key in saved and saved[key] is not None:
                group[key] = saved[key]


def _restore_grad_scalers(optimizer: Any, saved: List[Optional[Dict[str, Any]]]) -> None:
    leaves = leaf_optimizers(optimizer)
    fallback = next((s for s in saved if s is not None), None)
    for i, leaf in enumerate(leaves):
        scaler = getattr(leaf, "grad_scaler", None)
        if scaler is None:
            continue
        value = saved[i] if i < len(saved) and saved[i] is not None else fallback
        if value is None:
            warnings.warn("no grad scaler state in the checkpoint; keeping the current loss scale", stacklevel=3)
        else:
            scaler.load_state_dict(value)


def _load_rng(ckpt_dir: str, meta: Mapping[str, Any], pgs: ProcessGroupCollection, world) -> bool:
    if not meta.get("has_rng"):
        warnings.warn(f"checkpoint {ckpt_dir}: saved without RNG states; RNG not restored", stacklevel=3)
        return False
    saved = meta.get("layout", {})
    now = {"world_size": _world_size(world), "tp": pgs.tp_size, "pp": pgs.pp_size, "dp": pgs.dp_size}
    if any(saved.get(k) != v for k, v in now.items()):
        warnings.warn(f"checkpoint {ckpt_dir}: saved with layout {saved}, running {now}; RNG states not restored",
                      stacklevel=3)
        return False
    error = None
    try:
        record = files.read_json(ckpt_dir, files.rng_file_name(_rank(world)), "RNG state")
        set_rng_state(record["rng"])
    except CheckpointError as exc:
        error = exc.reason
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        error = f"RNG state {files.rng_file_name(_rank(world))} is malformed ({type(exc).__name__}: {exc})"
    _agree(world, ckpt_dir, error)
    return True


# ------------------------------------------------------------------------------------------------
# whole-checkpoint reads for tools and tests (one process, full tensors)


def read_full_checkpoint(path: str, iteration: Optional[int] = None, prefix: str = "") -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """Every tensor (whose key starts with ``prefix``) in full, in this process; plus metadata.json.

    Works inside or outside a distributed job (no collectives).
    """
    ckpt_dir = files.resolve_checkpoint_dir(path, iteration)
    if ckpt_dir is None:
        raise CheckpointError(os.path.abspath(path), "no checkpoint found")
    meta, saved = read_checkpoint_metadata(ckpt_dir)
    state = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in saved.items() if k.startswith(prefix)}
    try:
        _dcp(dcp.load, state, None, storage_reader=dcp.FileSystemReader(ckpt_dir))
    except (Exception, CheckpointException) as exc:  # noqa: BLE001
        raise CheckpointError(ckpt_dir, f"tensor data cannot be read ({type(exc).__name__}: {exc})") from None
    return meta, state
