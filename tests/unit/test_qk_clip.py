"""QK-clip (megatron_opt/qk_clip.py) with the GPT's recorded attention maxima (training/model.py).

The oracle for the logits is computed here from the weights (layernorm → fused QKV → per-head
q·k/sqrt(d), causal), independently of the model's recording.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megatron_opt.config import OptimizerConfig
from megatron_opt.distributed import DDPConfig, DistributedDataParallel
from megatron_opt.errors import ConfigError
from megatron_opt.factory import get_megatron_optimizer
from megatron_opt.qk_clip import clip_qk, qk_clip_factors, qkv_row_scales
from training.model import GPT, GPTConfig

SEQ = 16
TOKENS = torch.randint(0, 256, (2, SEQ), generator=torch.Generator().manual_seed(3))


def gpt(**kw) -> GPT:
    return GPT(GPTConfig(hidden_size=32, num_layers=1, num_attention_heads=4, seq_length=SEQ, record_max_attention_logit=True, **kw))


def oracle_max_logits(model: GPT) -> torch.Tensor:
    """[heads] max over batch and causal (i, j) of q_i·k_j/sqrt(d), in float64 from the weights."""
    c = model.config
    attn = model.decoder.layers["0"].self_attention
    with torch.no_grad():
        x = model.embedding(TOKENS)
        x = model.decoder.layers["0"].input_layernorm(x).double()
        qkv = F.linear(x, attn.linear_qkv.weight.double(), attn.linear_qkv.bias.double())
        qkv = qkv.view(2, SEQ, c.num_query_groups, c.heads_per_group + 2, c.kv_channels)
        q = qkv[:, :, :, : c.heads_per_group].reshape(2, SEQ, -1, c.kv_channels)
        k = qkv[:, :, :, c.heads_per_group].repeat_interleave(c.heads_per_group, dim=2)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(c.kv_channels)
        causal = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
        return scores.masked_fill(~causal, -math.inf).amax(dim=(0, 2, 3))


def rows_of(model: GPT, group: int, part: str) -> slice:
    """Rows of query group ``group``'s q heads / k / v in the fused QKV weight."""
    c = model.config
    base = group * (c.heads_per_group + 2) * c.kv_channels
    start, n = {"q": (0, c.heads_per_group), "k": (c.heads_per_group, 1), "v": (c.heads_per_group + 1, 1)}[part]
    return slice(base + start * c.kv_channels, base + (start + n) * c.kv_channels)


def blow_up(model: GPT, group: int, factor: float, q_head: int = None) -> None:
    """Multiply group ``group``'s k rows and its q rows (or one q head's) by ``factor``."""
    c = model.config
    w = model.decoder.layers["0"].self_attention.linear_qkv.weight
    q = rows_of(model, group, "q")
    if q_head is not None:
        q = slice(q.start + q_head * c.kv_channels, q.start + (q_head + 1) * c.kv_channels)
    with torch.no_grad():
        w[q] *= factor
        w[rows_of(model, group, "k")] *= factor


def recorded(model: GPT) -> torch.Tensor:
    model.train()
    model(TOKENS, TOKENS)
    return model.qk_clip_targets()[0].max_logits.clone()


def test_multi_head_clip_bounds_the_hot_heads_and_leaves_the_others_bitwise():
    torch.manual_seed(0)
    model = gpt()
    blow_up(model, 0, 30.0)
    blow_up(model, 2, 20.0)
    before = recorded(model)
    assert torch.allclose(before.double(), oracle_max_logits(model), rtol=1e-5)
    tau = 0.5 * float(before[[0, 2]].min())
    assert before[0] > tau and before[2] > tau and before[1] < tau and before[3] < tau
    weight = model.decoder.layers["0"].self_attention.linear_qkv.weight
    w0 = weight.detach().clone()

    result = clip_qk(model.qk_clip_targets(), tau)

    assert result.clipped_heads == 2 and result.max_logit == float(before.max())
    after = oracle_max_logits(model)
    for h in (0, 2):
        assert tau * (1 - 1e-5) <= after[h] <= tau * (1 + 1e-5), (h, float(after[h]), tau)
    for g in (1, 3):  # heads under tau: q, k and v rows bitwise unchanged
        assert torch.equal(weight[rows_of(model, g, "q")], w0[rows_of(model, g, "q")])
        assert torch.equal(weight[rows_of(model, g, "k")], w0[rows_of(model, g, "k")])
    for g in range(4):
        assert torch.equal(weight[rows_of(model, g, "v")], w0[rows_of(model, g, "v")])
    # q and k of a clipped head each got sqrt(tau / max) (alpha = 0.5)
    expected = math.sqrt(tau / float(before[0]))
    assert torch.allclose(weight[rows_of(model, 0, "q")], w0[rows_of(model, 0, "q")] * expected, rtol=1e-6)
    assert torch.all(model.qk_clip_targets()[0].max_logits == -math.inf)  # reset for the next step


def test_recording_in_head_chunks_equals_the_oracle(monkeypatch):
    import training.model

    model = gpt()
    blow_up(model, 1, 10.0)
    whole = recorded(model)
    model.qk_clip_targets()[0].max_logits.fill_(-math.inf)
    monkeypatch.setattr(training.model, "MAX_LOGIT_SCORES_PER_CHUNK", 2 * SEQ * SEQ)  # one head per chunk
    chunked = recorded(model)
    assert torch.equal(chunked, whole)
    assert torch.allclose(chunked.double(), oracle_max_logits(model), rtol=1e-5)


def test_gqa_scales_k_with_the_group_max_and_q_per_head():
    model = gpt(num_query_groups=2)  # 2 query heads per key head
    blow_up(model, 0, 25.0, q_head=0)  # only head 0 of group 0 (and the shared k) gets hot
    before = recorded(model)
    assert torch.allclose(before.double(), oracle_max_logits(model), rtol=1e-5)
    tau = 0.5 * float(before[0])
    assert before[0] > tau and before[1:].max() < tau
    weight = model.decoder.layers["0"].self_attention.linear_qkv.weight
    w0 = weight.detach().clone()
    q1 = slice(rows_of(model, 0, "q").start + 8, rows_of(model, 0, "q").stop)

    assert clip_qk(model.qk_clip_targets(), tau).clipped_heads == 1

    after = oracle_max_logits(model)
    assert float(after.max()) <= tau * (1 + 1e-5) and float(after[0]) >= tau * (1 - 1e-5)
    assert torch.equal(weight[q1], w0[q1])  # head 1's own q rows: untouched
    assert not torch.equal(weight[rows_of(model, 0, "k")], w0[rows_of(model, 0, "k")])  # shared k: scaled
    assert torch.equal(weight[rows_of(model, 1, "q")], w0[rows_of(model, 1, "q")])  # group 1: untouched
    assert torch.equal(weight[rows_of(model, 1, "k")], w0[rows_of(model, 1, "k")])


def test_factors_split_by_alpha_and_group_minimum():
    q, k = qk_clip_factors(torch.tensor([200.0, 50.0, 400.0, 10.0]), 100.0, 0.3, heads_per_group=2)
    assert torch.allclose(q, torch.tensor([0.5 ** 0.3, 1.0, 0.25 ** 0.3, 1.0]))
    assert torch.allclose(k, torch.tensor([0.5 ** 0.7, 0.25 ** 0.7]))
    assert q[1] == 1.0 and q[3] == 1.0  # exactly one: no change for heads under tau
    rows = qkv_row_scales(q, k, heads_per_group=2, head_dim=3)
    assert rows.shape == (2 * 4 * 3,)
    assert torch.equal(rows[:12], torch.tensor([q[0]] * 3 + [q[1]] * 3 + [k[0]] * 3 + [1.0] * 3))


def test_bias_rows_follow_the_weight_so_the_bound_holds_with_a_bias():
    model = gpt()
    with torch.no_grad():
        model.decoder.layers["0"].self_attention.linear_qkv.bias.normal_(0, 2.0)
    blow_up(model, 1, 30.0)
    before = recorded(model)
    tau = 0.5 * float(before[1])
    clip_qk(model.qk_clip_targets(), tau)
    after = oracle_max_logits(model)
    assert float(after[1]) == pytest.approx(tau, rel=1e-5)


def _train(model, optimizer, steps: int, tau=None):
    for step in range(steps):
        g = torch.Generator().manual_seed(100 + step)
        tokens = torch.randint(0, 256, (2, SEQ), generator=g)
        if hasattr(model, "zero_grad_buffer"):
            model.zero_grad_buffer()
        optimizer.zero_grad()
        model(tokens, tokens).backward()
        assert optimizer.step()[0]
        if tau is not None:
            gpt_model = model.module if hasattr(model, "module") else model
            clip_qk(gpt_model.qk_clip_targets(), tau, optimizer=optimizer)


def test_off_or_never_triggered_changes_nothing():
    config = OptimizerConfig(optimizer="adam", lr=1e-2, clip_grad=0.0)
    plain = GPT(GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, seq_length=SEQ))
    assert plain.decoder.layers["0"].self_attention.max_attention_logits is None
    with pytest.raises(ValueError, match="record_max_attention_logit"):
        plain.qk_clip_targets()
    _train(plain, get_megatron_optimizer(config, [plain]), 3)
    watched = GPT(GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, seq_length=SEQ, record_max_attention_logit=True))
    _train(watched, get_megatron_optimizer(config, [watched]), 3, tau=1e9)
    for (name, p), (_, q) in zip(plain.named_parameters(), watched.named_parameters()):
        assert torch.equal(p, q), name


def _qkv_pairs(optimizer, weight):
    return [(m, main) for m, main in optimizer._model_main_pairs() if m is weight]


def test_bf16_main_params_are_scaled_with_the_model_params():
    model = GPT(GPTConfig(hidden_size=32, num_layers=1, num_attention_heads=4, seq_length=SEQ,
                          params_dtype=torch.bfloat16, record_max_attention_logit=True))
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, bf16=True, clip_grad=0.0), [model])
    _train(model, optimizer, 1)
    target = model.qk_clip_targets()[0]
    [(weight, main)] = _qkv_pairs(optimizer, target.weight)
    main0, model0 = main.detach().clone(), weight.detach().clone()
    target.max_logits.copy_(torch.tensor([300.0, 1.0, 1.0, 150.0]))
    clip_qk([target], 100.0, optimizer=optimizer)
    q, k = qk_clip_factors(torch.tensor([300.0, 1.0, 1.0, 150.0]), 100.0, 0.5, 1)
    rows = qkv_row_scales(q, k, 1, 8).view(-1, 1)
    assert torch.equal(main, main0 * rows)
    assert torch.equal(weight, (model0 * rows).to(torch.bfloat16))
    assert not torch.equal(main, main0)


def test_zero1_main_shards_are_scaled_at_their_flat_offsets():
    model = DistributedDataParallel(
        GPT(GPTConfig(hidden_size=32, num_layers=1, num_attention_heads=4, seq_length=SEQ, params_dtype=torch.bfloat16,
                      record_max_attention_logit=True)),
        DDPConfig(use_distributed_optimizer=True, bucket_size=1000))
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, bf16=True, clip_grad=0.0,
                                                       use_distributed_optimizer=True), [model])
    _train(model, optimizer, 1)
    target = model.module.qk_clip_targets()[0]
    pieces = [piece for piece in optimizer.pieces if piece.model_param is target.weight]
    assert pieces and not pieces[0].is_view
    before = [piece.shard.detach().clone() for piece in pieces]
    maxima = torch.tensor([1.0, 400.0, 1.0, 1.0])
    target.max_logits.copy_(maxima)
    clip_qk([target], 100.0, optimizer=optimizer)
    q, k = qk_clip_factors(maxima, 100.0, 0.5, 1)
    flat_scale = qkv_row_scales(q, k, 1, 8).repeat_interleave(32)
    for piece, b in zip(pieces, before):
        start, end = piece.range.param_range
        assert torch.equal(piece.shard, b * flat_scale[start:end])


def test_invalid_threshold_and_alpha_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^qk_clip_threshold=0.0 is not allowed"):
        OptimizerConfig(qk_clip_threshold=0.0)
    with pytest.raises(ConfigError, match=r"^qk_clip_alpha=1.5 is not allowed"):
        OptimizerConfig(qk_clip_alpha=1.5)
    with pytest.raises(ConfigError, match="qk_clip_alpha=0.0"):
        clip_qk([], 10.0, alpha=0.0)


def test_log_only_measures_and_resets_but_never_scales():
    """--log-max-attention-logit without --qk-clip: the max is reported, the weights stay bitwise."""
    torch.manual_seed(0)
    model = gpt()
    blow_up(model, 1, 30.0)
    before = recorded(model)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = clip_qk(model.qk_clip_targets(), 0.1 * float(before.max()), log_only=True)
    assert result.max_logit == float(before.max()) and result.clipped_heads >= 1  # heads that would be clipped
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
    assert torch.all(model.qk_clip_targets()[0].max_logits == -math.inf)
