"""Pipeline stages and the forward/backward schedule over micro-batches.

The schedule is all-forward-then-all-backward: simple, deadlock-free with blocking point-to-point
sends, and numerically identical to 1F1B. Activations go to the next stage and their gradients come
back with ``torch.distributed`` send/recv between neighbours of ``pgs.pp_ranks``. At PP=1 there is
no communication at all.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from megatron_opt.errors import ConfigError
from megatron_opt.parallel import ProcessGroupCollection, all_reduce

Microbatch = Tuple[torch.Tensor, torch.Tensor]
"""(tokens, labels), both ``[micro_batch_size, seq_length]`` int64."""


def stage_layer_range(num_layers: int, pp_size: int, pp_rank: int) -> range:
    """Global indices of the transformer layers pipeline stage ``pp_rank`` holds (an even split)."""
    if num_layers % pp_size != 0:
        raise ConfigError(
            f"num_layers={num_layers} is not allowed with pipeline_model_parallel_size={pp_size}; "
            f"expected a multiple of {pp_size} (every stage holds the same number of layers)")
    per_stage = num_layers // pp_size
    return range(pp_rank * per_stage, (pp_rank + 1) * per_stage)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The GPT inside wrappers such as DistributedDataParallel (which keep it as ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


@dataclass
class ForwardBackwardResult:
    loss: float
    """Mean loss over the micro-batches and DP replicas, known on every rank (for logging)."""
    num_microbatches: int


def finalize_model_grads(model: nn.Module) -> None:
    """After the last backward: finish the DP reduction, then sum the tied-embedding grads across stages."""
    if hasattr(model, "finish_grad_sync"):
        model.finish_grad_sync()
    unwrap_model(model).sync_tied_embedding_grads()


def forward_backward(
    model: nn.Module,
    microbatches: Sequence[Microbatch],
    pgs: ProcessGroupCollection,
    scale_loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    forward_only: bool = False,
    finalize_grads: bool = True,
) -> ForwardBackwardResult:
    """Run every micro-batch forward then backward on this stage; gradients accumulate to the mean.

    ``scale_loss`` multiplies the loss before backward (e.g. the fp16 grad scaler's ``scale_loss``);
    the reported loss is unscaled. Every stage gets the same ``microbatches`` (stage 0 reads the
    tokens, the last stage the labels). With ``finalize_grads`` the DP reduction and tied-embedding
    sync run at the end, so ``main_grad`` is ready for the optimizer.
    """
    gpt = unwrap_model(model)
    num_micro = len(microbatches)
    if num_micro == 0:
        raise ConfigError("num_microbatches=0 is not allowed; expected at least 1")
    prev_rank = pgs.pp_ranks[pgs.pp_rank - 1] if not pgs.is_first_stage else None
    next_rank = pgs.pp_ranks[pgs.pp_rank + 1] if not pgs.is_last_stage else None

    inputs: List[Optional[torch.Tensor]] = []
    outputs: List[torch.Tensor] = []
    losses: List[torch.Tensor] = []
    grad_context = torch.no_grad() if forward_only else contextlib.nullcontext()
    for tokens, labels in microbatches:
        hidden_in = None
        if prev_rank is not None:
            b, s = tokens.shape
            hidden_in = torch.empty(b, s, gpt.config.hidden_size, dtype=gpt.config.params_dtype, device=tokens.device)
            dist.recv(hidden_in, src=prev_rank)
            hidden_in.requires_grad_(not forward_only)
        with grad_context:
            out = model(tokens=tokens, labels=labels, hidden_states=hidden_in)
        if next_rank is not None:
            dist.send(out.detach().contiguous(), dst=next_rank)
        else:
            losses.append(out.detach())
        inputs.append(hidden_in)
        outputs.append(out)

    if not forward_only:
        sync_context = model.no_sync if hasattr(model, "no_sync") else contextlib.nullcontext
        for i in range(num_micro):
            last = i == num_micro - 1
            with contextlib.nullcontext() if last else sync_context():
                if next_rank is None:
                    loss = outputs[i] / num_micro
                    torch.autograd.backward(scale_loss(loss) if scale_loss is not None else loss)
                else:
                    grad_out = torch.empty_like(outputs[i])
                    dist.recv(grad_out, src=next_rank)
                    torch.autograd.backward(outputs[i], grad_tensors=grad_out)
            if prev_rank is not None:
                dist.send(inputs[i].grad.contiguous(), dst=prev_rank)
            outputs[i] = inputs[i] = None  # free activations as we go
        if finalize_grads:
            finalize_model_grads(model)

    return ForwardBackwardResult(loss=_mean_loss_on_every_stage(losses, pgs, microbatches[0][0].device), num_microbatches=num_micro)


def _mean_loss_on_every_stage(losses: List[torch.Tensor], pgs: ProcessGroupCollection, device: torch.device) -> float:
    value = torch.stack(losses).mean().float() if losses else torch.zeros((), dtype=torch.float32, device=device)
    if pgs.pp_size > 1:
        dist.broadcast(value, src=pgs.pp_ranks[-1], group=pgs.pp)
    if pgs.dp_size > 1:
        all_reduce(value, pgs.dp)
        value /= pgs.dp_size
    return float(value)
