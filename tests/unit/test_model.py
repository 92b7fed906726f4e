"""The GPT's initialisation, naming and layers, checked in one process.

Shards for tp_rank r of tp_size t are built with a ProcessGroupCollection that only carries the
coordinate (no group), which is exactly what the layers use to slice the full initial weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megatron_opt.errors import ConfigError
from megatron_opt.parallel import ProcessGroupCollection
from training.model import GPT, GPTConfig, SelfAttention, full_state_from_shards
from training.pipeline import stage_layer_range
from training.tensor_parallel import vocab_parallel_cross_entropy


def coordinate(tp_size=1, tp_rank=0, pp_size=1, pp_rank=0) -> ProcessGroupCollection:
    return ProcessGroupCollection(tp_size=tp_size, tp_rank=tp_rank, pp_size=pp_size, pp_rank=pp_rank,
                                  pp_ranks=list(range(pp_size)))


def small_config(**kw) -> GPTConfig:
    base = dict(hidden_size=32, num_layers=2, num_attention_heads=4, num_query_groups=2, seq_length=16)
    base.update(kw)
    return GPTConfig(**base)


@pytest.mark.parametrize("tp_size", [2, 4])
@pytest.mark.parametrize("tie", [True, False])
def test_tp_shards_reassemble_to_the_tp1_weights(tp_size, tie):
    config = small_config(num_attention_heads=8, num_query_groups=4, tie_embeddings=tie)
    full = {n: p.detach() for n, p in GPT(config).named_parameters()}
    shards = {r: {n: p.detach() for n, p in GPT(config, coordinate(tp_size, r)).named_parameters()} for r in range(tp_size)}
    rebuilt = full_state_from_shards(shards, GPT(config, coordinate(tp_size, 0)))
    assert set(rebuilt) == set(full)
    for name, value in full.items():
        assert torch.equal(rebuilt[name], value), name
    sharded = GPT(config, coordinate(tp_size, 1))
    qkv = sharded.decoder.layers["0"].self_attention.linear_qkv.weight
    assert qkv.shape == (config.num_query_groups // tp_size * 16, 32)  # whole groups of (2 q + k + v) × 4 channels
    assert (qkv.tensor_model_parallel, qkv.partition_dim, qkv.is_qkv, qkv.qkv_split_shapes) == (True, 0, True, (8, 4, 4))
    proj = sharded.decoder.layers["0"].self_attention.linear_proj
    assert (proj.weight.partition_dim, proj.bias.tensor_model_parallel) == (1, False)


def test_pipeline_stages_use_global_layer_names_and_share_the_embedding():
    config = small_config(num_layers=4)
    single = dict(GPT(config).named_parameters())
    first = dict(GPT(config, coordinate(pp_size=2, pp_rank=0)).named_parameters())
    last = dict(GPT(config, coordinate(pp_size=2, pp_rank=1)).named_parameters())
    assert "decoder.layers.1.self_attention.linear_qkv.weight" in first
    assert "decoder.layers.2.self_attention.linear_qkv.weight" in last
    assert "decoder.layers.2.self_attention.linear_qkv.weight" not in first
    owned = {n for n, p in last.items() if not p.shared}
    assert set(first) | owned == set(single) and not (set(first) & owned)
    tied = "embedding.word_embeddings.weight"
    assert last[tied].shared and not first[tied].shared and last[tied].is_embedding_or_output
    assert torch.equal(last[tied], first[tied]) and torch.equal(first[tied], single[tied])
    for name in first:
        assert torch.equal(first[name], single[name]), name


def test_init_statistics_and_seed():
    config = small_config(num_layers=4)
    params = dict(GPT(config).named_parameters())
    assert params["decoder.layers.0.mlp.linear_fc1.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert params["decoder.layers.0.mlp.linear_fc2.weight"].std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert not torch.equal(params["decoder.layers.0.mlp.linear_fc1.weight"], params["decoder.layers.1.mlp.linear_fc1.weight"])
    other = dict(GPT(small_config(num_layers=4, seed=5)).named_parameters())
    assert not torch.equal(other["decoder.layers.0.mlp.linear_fc1.weight"], params["decoder.layers.0.mlp.linear_fc1.weight"])


def naive_grouped_attention(x, weight, bias, proj_w, proj_b, heads, groups, kv):
    """Loops over heads: head h uses the K/V of its query group h // (heads/groups)."""
    per_group = heads // groups
    rows = (x @ weight.T + bias).view(*x.shape[:2], groups, per_group + 2, kv)
    seq = x.shape[1]
    mask = torch.ones(seq, seq).tril().bool()
    outs = []
    for h in range(heads):
        g, i = divmod(h, per_group)
        q, k, v = rows[:, :, g, i], rows[:, :, g, per_group], rows[:, :, g, per_group + 1]
        scores = (q @ k.transpose(1, 2) / math.sqrt(kv)).masked_fill(~mask, float("-inf"))
        outs.append(scores.softmax(-1) @ v)
    return torch.cat(outs, dim=-1) @ proj_w.T + proj_b


def test_grouped_query_attention_matches_a_naive_loop():
    config = small_config(num_attention_heads=8, num_query_groups=2)
    attn = SelfAttention(config, coordinate(), "decoder.layers.0.self_attention.")
    with torch.no_grad():
        attn.linear_qkv.bias.normal_()
        attn.linear_proj.bias.normal_()
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(0))
    expected = naive_grouped_attention(x, attn.linear_qkv.weight, attn.linear_qkv.bias, attn.linear_proj.weight,
                                       attn.linear_proj.bias, 8, 2, 4)
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_vocab_parallel_cross_entropy_equals_torch_on_one_rank():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, requires_grad=True)
    target = torch.randint(0, 11, (3, 5), generator=g)
    ours = vocab_parallel_cross_entropy(logits, target, None)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_logits.view(-1, 11), target.view(-1), reduction="none").view(3, 5)
    torch.testing.assert_close(ours, ref)
    weights = torch.rand(3, 5, generator=g)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_initial_loss_is_near_uniform_and_rmsnorm_untied_runs():
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    for config in (small_config(), small_config(normalization="RMSNorm", tie_embeddings=False)):
        loss = GPT(config)(tokens=tokens, labels=tokens.flip(0))
        assert loss.item() == pytest.approx(math.log(256), abs=0.15)


def test_layout_errors_name_the_field():
    with pytest.raises(ConfigError, match="num_layers=3"):
        stage_layer_range(3, 2, 0)
    with pytest.raises(ConfigError, match="num_query_groups=2"):
        GPT(small_config(), coordinate(tp_size=4))
    with pytest.raises(ConfigError, match="normalization='BatchNorm'"):
        small_config(normalization="BatchNorm")
    assert list(stage_layer_range(6, 3, 2)) == [4, 5]
