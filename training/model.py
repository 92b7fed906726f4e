"""A GPT that is sharded over tensor-parallel ranks and split into pipeline stages.

Each rank builds only its stage's layers and its tensor-parallel shard of every weight. Names
are layout-independent (``decoder.layers.<global index>.…``) and every full weight is generated
from ``(seed, name)`` before slicing, so TP=1/PP=1 and any other layout start from the same model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from megatron_opt.errors import config_error
from megatron_opt.parallel import ProcessGroupCollection, all_reduce
from megatron_opt.qk_clip import QKClipTarget
from training.pipeline import stage_layer_range
from training.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    full_init_normal,
    mark_replicated,
    parallel_lm_logits,
    vocab_parallel_cross_entropy,
)

NORMALIZATIONS = ("LayerNorm", "RMSNorm")
MAX_LOGIT_SCORES_PER_CHUNK = 1 << 26
"""Recording max attention logits computes fp32 scores for this many elements at a time (256 MiB; heads in chunks)."""


@dataclass
class GPTConfig:
    hidden_size: int = 32
    num_layers: int = 2
    num_attention_heads: int = 4
    seq_length: int = 16
    vocab_size: int = 256
    num_query_groups: Optional[int] = None
    """None = num_attention_heads (plain multi-head attention)."""
    kv_channels: Optional[int] = None
    """None = hidden_size // num_attention_heads."""
    ffn_hidden_size: Optional[int] = None
    """None = 4 * hidden_size."""
    normalization: str = "LayerNorm"
    tie_embeddings: bool = True
    init_method_std: float = 0.02
    params_dtype: torch.dtype = torch.float32
    seed: int = 1234
    layernorm_epsilon: float = 1e-5
    record_max_attention_logit: bool = False
    """Record each head's largest pre-softmax logit in training forwards (for QK-clip); costs one extra QK^T."""

    def __post_init__(self) -> None:
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.kv_channels is None:
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.normalization not in NORMALIZATIONS:
            raise config_error("normalization", self.normalization, f"one of {NORMALIZATIONS}")
        if self.num_attention_heads % self.num_query_groups != 0:
            raise config_error("num_query_groups", self.num_query_groups,
                               f"a divisor of num_attention_heads={self.num_attention_heads}")

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    @property
    def qkv_split_shapes(self) -> Tuple[int, int, int]:
        """Rows of Q, K and V per query group in the fused QKV weight."""
        return (self.heads_per_group * self.kv_channels, self.kv_channels, self.kv_channels)

    def check_tensor_parallel(self, tp_size: int) -> None:
        for field, value in (("num_query_groups", self.num_query_groups), ("num_attention_heads", self.num_attention_heads),
                             ("ffn_hidden_size", self.ffn_hidden_size), ("vocab_size", self.vocab_size)):
            if value % tp_size != 0:
                raise config_error(field, value, f"a multiple of tensor_model_parallel_size={tp_size}")


def full_initial_weight(config: GPTConfig, name: str, shape: Tuple[int, ...]) -> torch.Tensor:
    """The full initial value of weight ``name``; output projections use the depth-scaled std (as Megatron)."""
    std = config.init_method_std
    if name.endswith("linear_proj.weight") or name.endswith("linear_fc2.weight"):
        std = std / math.sqrt(2.0 * config.num_layers)
    return full_init_normal(config.seed, name, shape, std, config.params_dtype)


def build_norm(config: GPTConfig) -> nn.Module:
    if config.normalization == "RMSNorm":
        return nn.RMSNorm(config.hidden_size, eps=config.layernorm_epsilon, dtype=config.params_dtype)
    return nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon, dtype=config.params_dtype)


class SelfAttention(nn.Module):
    """Causal grouped-query attention; each TP rank owns num_query_groups/tp whole groups."""

    def __init__(self, config: GPTConfig, pgs: ProcessGroupCollection, prefix: str):
        super().__init__()
        self.config = config
        c = config
        qkv_rows = c.num_query_groups * sum(c.qkv_split_shapes)
        self.linear_qkv = ColumnParallelLinear(full_initial_weight(c, prefix + "linear_qkv.weight", (qkv_rows, c.hidden_size)),
                                               bias=True, tp_group=pgs.tp, tp_rank=pgs.tp_rank, tp_size=pgs.tp_size)
        # Rows are grouped per query group as [q heads of the group..., k, v]; the 2-D weight says so.
        self.linear_qkv.weight.is_qkv = True
        self.linear_qkv.weight.qkv_split_shapes = c.qkv_split_shapes
        proj_in = c.num_attention_heads * c.kv_channels
        self.linear_proj = RowParallelLinear(full_initial_weight(c, prefix + "linear_proj.weight", (c.hidden_size, proj_in)),
                                             bias=True, tp_group=pgs.tp, tp_rank=pgs.tp_rank, tp_size=pgs.tp_size)
        self.local_groups = c.num_query_groups // pgs.tp_size
        # [local query heads], head index = group * heads_per_group + head (the row order of linear_qkv)
        if c.record_max_attention_logit:
            self.register_buffer("max_attention_logits", torch.full((self.local_groups * c.heads_per_group,), float("-inf")),
                                 persistent=False)
        else:
            self.max_attention_logits = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, s, _ = x.shape
        qkv = self.linear_qkv(x).view(b, s, self.local_groups, c.heads_per_group + 2, c.kv_channels)
        q = qkv[:, :, :, : c.heads_per_group]
        k = qkv[:, :, :, c.heads_per_group: c.heads_per_group + 1].expand_as(q)
        v = qkv[:, :, :, c.heads_per_group + 1:].expand_as(q)
        q, k, v = (t.reshape(b, s, -1, c.kv_channels).transpose(1, 2) for t in (q, k, v))
        if self.max_attention_logits is not None and self.training:
            self._record_max_logits(q, k)
        context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.linear_proj(context.transpose(1, 2).reshape(b, s, -1))


    @torch.no_grad()
    def _record_max_logits(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """Max over batch and causal (i, j) of q_i·k_j/sqrt(d) per head, kept across micro-batches; SDPA is unchanged."""
        b, heads, s, _ = q.shape
        causal = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
        chunk = max(1, MAX_LOGIT_SCORES_PER_CHUNK // max(1, b * s * s))
        parts = []
        for h in range(0, heads, chunk):
            scores = torch.matmul(q[:, h:h + chunk].float(), k[:, h:h + chunk].float().transpose(-1, -2))
            scores = scores / math.sqrt(self.config.kv_channels)
            parts.append(scores.masked_fill(~causal, float("-inf")).amax(dim=(0, 2, 3)))
        torch.maximum(self.max_attention_logits, torch.cat(parts), out=self.max_attention_logits)

    def qk_clip_target(self) -> QKClipTarget:
        return QKClipTarget(self.linear_qkv.weight, self.linear_qkv.bias, self.max_attention_logits)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, pgs: ProcessGroupCollection, prefix: str):
        super().__init__()
        c = config
        tp = dict(tp_group=pgs.tp, tp_rank=pgs.tp_rank, tp_size=pgs.tp_size)
        self.linear_fc1 = ColumnParallelLinear(full_initial_weight(c, prefix + "linear_fc1.weight", (c.ffn_hidden_size, c.hidden_size)),
                                               bias=True, **tp)
        self.linear_fc2 = RowParallelLinear(full_initial_weight(c, prefix + "linear_fc2.weight", (c.hidden_size, c.ffn_hidden_size)),
                                            bias=True, **tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, pgs: ProcessGroupCollection, prefix: str):
        super().__init__()
        self.input_layernorm = build_norm(config)
        self.self_attention = SelfAttention(config, pgs, prefix + "self_attention.")
        self.pre_mlp_layernorm = build_norm(config)
        self.mlp = MLP(config, pgs, prefix + "mlp.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention(self.input_layernorm(x))
        return x + self.mlp(self.pre_mlp_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, config: GPTConfig, pgs: ProcessGroupCollection, post_process: bool):
        super().__init__()
        # Keys are global layer indices so names do not depend on the pipeline layout.
        self.layers = nn.ModuleDict({
            str(i): TransformerLayer(config, pgs, f"decoder.layers.{i}.")
            for i in stage_layer_range(config.num_layers, pgs.pp_size, pgs.pp_rank)
        })
        self.final_layernorm = build_norm(config) if post_process else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = layer(x)
        return self.final_layernorm(x) if self.final_layernorm is not None else x


class Embedding(nn.Module):
    """Word embeddings (vocab-parallel) plus learned absolute positions; positions only on stage 0."""

    def __init__(self, config: GPTConfig, pgs: ProcessGroupCollection, with_positions: bool):
        super().__init__()
        c = config
        self.word_embeddings = VocabParallelEmbedding(
            full_initial_weight(c, "embedding.word_embeddings.weight", (c.vocab_size, c.hidden_size)),
            tp_group=pgs.tp, tp_rank=pgs.tp_rank, tp_size=pgs.tp_size)
        self.word_embeddings.weight.is_embedding_or_output = True
        if with_positions:
            self.position_embeddings = nn.Embedding(c.seq_length, c.hidden_size, dtype=c.params_dtype)
            with torch.no_grad():
                self.position_embeddings.weight.copy_(
                    full_initial_weight(c, "embedding.position_embeddings.weight", (c.seq_length, c.hidden_size)))
            mark_replicated(self.position_embeddings.weight)
            self.position_embeddings.weight.is_embedding_or_output = True
        else:
            self.position_embeddings = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.word_embeddings(tokens) + self.position_embeddings(positions).unsqueeze(0)


_DEFAULT_PARAM_ATTRIBUTES = dict(
    tensor_model_parallel=False, partition_dim=-1, partition_stride=1, is_qkv=False,
    is_embedding_or_output=False, shared=False, sequence_parallel=False,
)


class GPT(nn.Module):
    """This pipeline stage of a GPT. ``forward`` returns the mean token loss on the last stage, else hidden states."""

    def __init__(self, config: GPTConfig, pgs: Optional[ProcessGroupCollection] = None):
        super().__init__()
        pgs = pgs or ProcessGroupCollection.single_process()
        config.check_tensor_parallel(pgs.tp_size)
        self.config = config
        self.pgs = pgs
        self.pre_process = pgs.is_first_stage
        self.post_process = pgs.is_last_stage
        c = config

        if self.pre_process:
            self.embedding = Embedding(c, pgs, with_positions=True)
        elif self.post_process and c.tie_embeddings:
            # The last stage's copy of the tied word embedding: same name and initial value as on
            # stage 0, marked ``shared`` so it is not counted twice (grad norms, checkpoints).
            self.embedding = Embedding(c, pgs, with_positions=False)
            self.embedding.word_embeddings.weight.shared = True
            self.embedding.word_embeddings.weight.shared_embedding = True
        else:
            self.embedding = None

        self.decoder = Decoder(c, pgs, self.post_process)

        if self.post_process and not c.tie_embeddings:
            self.output_layer = ColumnParallelLinear(
                full_initial_weight(c, "output_layer.weight", (c.vocab_size, c.hidden_size)), bias=False,
                tp_group=pgs.tp, tp_rank=pgs.tp_rank, tp_size=pgs.tp_size)
            self.output_layer.weight.is_embedding_or_output = True
        else:
            self.output_layer = None

        for param in self.parameters():
            for attr, default in _DEFAULT_PARAM_ATTRIBUTES.items():
                if not hasattr(param, attr):
                    setattr(param, attr, default)

    def output_weight(self) -> torch.Tensor:
        if self.config.tie_embeddings:
            return self.embedding.word_embeddings.weight
        return self.output_layer.weight

    def forward(self, tokens: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                hidden_states: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embedding(tokens) if self.pre_process else hidden_states
        x = self.decoder(x)
        if not self.post_process:
            return x
        logits = parallel_lm_logits(x, self.output_weight(), self.pgs.tp)
        return vocab_parallel_cross_entropy(logits, labels, self.pgs.tp).mean()

    def qk_clip_targets(self) -> List[QKClipTarget]:
        """This stage's attention layers for ``megatron_opt.qk_clip.clip_qk`` (needs record_max_attention_logit)."""
        if not self.config.record_max_attention_logit:
            raise ValueError("qk_clip_targets() needs GPTConfig(record_max_attention_logit=True)")
        return [layer.self_attention.qk_clip_target() for layer in self.decoder.layers.values()]

    def tied_embedding_weight(self) -> Optional[nn.Parameter]:
        """The word embedding weight this stage shares with another stage, if any."""
        if self.config.tie_embeddings and self.pgs.pp_size > 1 and (self.pre_process or self.post_process):
            return self.embedding.word_embeddings.weight
        return None

    def sync_tied_embedding_grads(self) -> None:
        """Sum the tied word-embedding gradient of the first and last stage (over the ``embd`` group)."""
        weight = self.tied_embedding_weight()
        if weight is None:
            return
        grad = weight.main_grad if hasattr(weight, "main_grad") else weight.grad
        if grad is not None:
            all_reduce(grad, self.pgs.embd)


def full_state_from_shards(shards: Dict[int, Dict[str, torch.Tensor]], model: GPT) -> Dict[str, torch.Tensor]:
    """Concatenate tensor-parallel shards ``{tp_rank: {name: tensor}}`` along each parameter's partition_dim."""
    params = dict(model.named_parameters())
    ranks = sorted(shards)
    out = {}
    for name in shards[ranks[0]]:
        p = params[name]
        if p.tensor_model_parallel:
            out[name] = torch.cat([shards[r][name] for r in ranks], dim=p.partition_dim)
        else:
            out[name] = shards[ranks[0]][name]
    return out
