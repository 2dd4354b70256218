"""The trunk's architecture: Hugging Face parity (parameter layout and logits), LN placement,
factorised embeddings, token types and RoPE."""
from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
import torch.nn as nn
from helpers import assert_forward_at_is_the_full_forward, tiny_model_config
from hf_parity import (
    LM,
    copied_from_hf,
    hf_bert,
    hf_bert_shapes_with_fused_qkv,
    hf_gpt2,
    hf_gpt2_shapes_in_torch_layout,
    n_params,
)

from lmssl.model.attention import AttnSpec
from lmssl.model.heads import CausalLMHead, MaskedLMHead
from lmssl.model.layers import apply_rope, rope_tables
from lmssl.model.transformer import Transformer

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN, LAYERS, HEADS, FFN, MAXPOS = 100, 32, 2, 4, 64, 64


def _shared_ids(model: nn.Module) -> int:
    return len({id(p) for p in model.parameters()})


# ---------------------------------------------------------------------------------------------
# parameter layout == Hugging Face
# ---------------------------------------------------------------------------------------------


def test_bert_parameter_layout_matches_hf_bert_for_masked_lm():
    cfg = tiny_model_config("bert")
    assert cfg.type_vocab_size == 2 and cfg.tie_embeddings
    ours, hf = LM(cfg, MaskedLMHead), hf_bert(cfg)
    # tied weights are counted once on both sides
    assert ours.head.decoder.weight is ours.trunk.word_embeddings.weight
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight
    assert n_params(ours) == n_params(hf)
    ours_shapes = Counter(tuple(p.shape) for p in ours.parameters())
    assert ours_shapes == hf_bert_shapes_with_fused_qkv(hf)
    # fusing only regroups tensors: HF has 4 more tensors per layer (q,k,v weight+bias = 6 vs our 2)
    assert _shared_ids(hf) == _shared_ids(ours) + 4 * cfg.num_layers


def test_gpt2_parameter_layout_matches_hf_gpt2_lm_head_model():
    cfg = tiny_model_config("gpt2")
    assert cfg.type_vocab_size == 0 and cfg.tie_embeddings
    ours, hf = LM(cfg, CausalLMHead), hf_gpt2(cfg)
    assert ours.head.proj.weight is ours.trunk.word_embeddings.weight
    assert hf.lm_head.weight is hf.transformer.wte.weight
    assert n_params(ours) == n_params(hf)
    ours_shapes = Counter(tuple(p.shape) for p in ours.parameters())
    assert ours_shapes == hf_gpt2_shapes_in_torch_layout(hf)
    assert _shared_ids(hf) == _shared_ids(ours)  # one-to-one tensors


def test_bert_layout_at_realistic_width():
    """The same check with BERT-base-like ratios (no forward pass, so it stays cheap)."""
    cfg = tiny_model_config("bert", hidden_size=96, num_heads=12, ffn_size=384, num_layers=3, max_positions=128,
                            vocab_size=500)
    ours, hf = LM(cfg, MaskedLMHead), hf_bert(cfg)
    assert n_params(ours) == n_params(hf)
    assert Counter(tuple(p.shape) for p in ours.parameters()) == hf_bert_shapes_with_fused_qkv(hf)


# ---------------------------------------------------------------------------------------------
# copying HF weights gives the same logits
# ---------------------------------------------------------------------------------------------


def test_bert_logits_match_hf_after_copying_weights():
    hf, ours = copied_from_hf(tiny_model_config("bert"))
    ids = torch.randint(0, VOCAB, (3, 17))
    with torch.no_grad():
        expected = hf(input_ids=ids, token_type_ids=torch.zeros_like(ids)).logits
        expected_no_mask = hf(input_ids=ids).logits
        got = ours(ids, AttnSpec.dense(causal=False))
        got_padded = ours(ids, AttnSpec.padded(False, torch.ones_like(ids)))  # a mask of ones changes nothing
    torch.testing.assert_close(expected_no_mask, expected, atol=0, rtol=0)
    assert expected.std() > 0.1  # non-trivial logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_padded, expected, atol=1e-5, rtol=0)


def test_bert_token_types_and_padding_match_hf():
    hf, ours = copied_from_hf(tiny_model_config("bert"))
    ids = torch.randint(0, VOCAB, (2, 11))
    types = (torch.arange(11) >= 6).long().expand(2, 11)
    mask = torch.tensor([[1] * 11, [1] * 7 + [0] * 4])
    with torch.no_grad():
        expected = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        got = ours(ids, AttnSpec.padded(False, mask), token_type_ids=types)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


def test_gpt2_logits_match_hf_after_copying_weights():
    hf, ours = copied_from_hf(tiny_model_config("gpt2"))
    ids = torch.randint(0, VOCAB, (3, 17))
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        got = ours(ids, AttnSpec.dense(causal=True))
        got_packed = ours(ids, AttnSpec.packed(True, [[17]] * 3))  # the masked path agrees too
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_packed, expected, atol=1e-5, rtol=0)


def test_hf_gelu_variants_are_ours():
    """The activations the parity tests rely on: BERT 'gelu' is exact, GPT-2 'gelu_new' is the tanh form."""
    from transformers.activations import ACT2FN

    from lmssl.model.layers import activation_fn

    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(activation_fn("gelu")(x), ACT2FN["gelu"](x), atol=0, rtol=0)
    torch.testing.assert_close(activation_fn("gelu_tanh")(x), ACT2FN["gelu_new"](x), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# structure: LayerNorm placement, factorised embeddings, token types
# ---------------------------------------------------------------------------------------------

def _names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def test_pre_ln_gpt2_has_final_norm_and_no_embedding_norm():
    t = Transformer(tiny_model_config("gpt2"))
    assert isinstance(t.final_norm, nn.LayerNorm) and t.final_norm.eps == 1e-5
    assert t.embeddings.norm is None and t.embeddings.token_type is None
    assert all(layer.pre_norm for layer in t.layers)
    assert not any(n.startswith("embeddings.norm") for n in _names(t))
    assert {"final_norm.weight", "final_norm.bias"} <= _names(t)


def test_post_ln_bert_has_embedding_norm_and_no_final_norm():
    t = Transformer(tiny_model_config("bert"))
    assert t.final_norm is None
    assert isinstance(t.embeddings.norm, nn.LayerNorm) and t.embeddings.norm.eps == 1e-12
    assert t.embeddings.token_type.weight.shape == (2, HIDDEN)
    assert not any(layer.pre_norm for layer in t.layers)
    assert not any(n.startswith("final_norm") for n in _names(t))


def test_post_ln_output_is_normalised_and_pre_ln_residual_is_not():
    """Behavioural check of the placement: post-LN ends in a LayerNorm with unit weight / zero bias at init,
    so every output vector has mean 0 and variance ~1 (var / (var + eps)); pre-LN's last op is final_norm,
    same property; but pre-LN blocks themselves return an un-normalised residual stream."""
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 9))
    for preset in ("bert", "gpt2"):
        t = Transformer(tiny_model_config(preset)).eval()
        with torch.no_grad():
            h = t(ids, AttnSpec.dense(preset == "gpt2"))
        torch.testing.assert_close(h.mean(-1), torch.zeros(2, 9), atol=1e-5, rtol=0)
        torch.testing.assert_close(h.var(-1, unbiased=False), torch.ones(2, 9), atol=0.05, rtol=0)
    t = Transformer(tiny_model_config("gpt2")).eval()
    t.final_norm = None
    with torch.no_grad():
        h = t(ids, AttnSpec.dense(True))
    assert (h.var(-1, unbiased=False) < 0.1).all()  # the raw residual stream (std ~0.02 embeddings)


@pytest.mark.parametrize("preset", ["bert", "gpt2"])
def test_factorised_embeddings_project_and_mlm_head_ties_at_embedding_width(preset):
    E = 16
    cfg = tiny_model_config(preset, embedding_size=E)
    lm = LM(cfg, MaskedLMHead).eval()
    t = lm.trunk
    assert t.embeddings.word.weight.shape == (VOCAB, E)
    assert t.embeddings.position.weight.shape == (MAXPOS, E)
    if t.embeddings.norm is not None:
        assert t.embeddings.norm.weight.shape == (E,)
    assert isinstance(t.embed_proj, nn.Linear) and t.embed_proj.weight.shape == (HIDDEN, E)
    assert lm.head.dense.weight.shape == (E, HIDDEN)
    assert lm.head.norm.weight.shape == (E,)
    assert lm.head.decoder.weight is t.embeddings.word.weight and lm.head.decoder.bias.shape == (VOCAB,)
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        hidden = t(ids, AttnSpec.dense(False))
        logits = lm.head(hidden)
    assert hidden.shape == (2, 7, HIDDEN) and logits.shape == (2, 7, VOCAB)
    # without factorisation there is no projection
    assert Transformer(tiny_model_config(preset)).embed_proj is None
    # parameter count: the embedding tables shrink to width E, plus the (H,E)+(H,) projection; the
    # head's dense/norm/decoder move to width E too
    full = LM(tiny_model_config(preset), MaskedLMHead)
    n_tables = VOCAB + MAXPOS + cfg.type_vocab_size
    norm = 2 if cfg.norm == "post" else 0
    expected_delta = (n_tables * (HIDDEN - E) + norm * (HIDDEN - E)  # embeddings (+ embedding LayerNorm)
                      - (HIDDEN * E + HIDDEN)  # embed_proj
                      + HIDDEN * (HIDDEN - E) + (HIDDEN - E) + 2 * (HIDDEN - E))  # head dense, dense bias, head norm
    assert n_params(full) - n_params(lm) == expected_delta


def test_type_vocab_size_zero_creates_no_token_type_table():
    t = Transformer(tiny_model_config("bert", type_vocab_size=0))
    assert t.embeddings.token_type is None
    assert not any("token_type" in n for n in _names(t))
    with_types = Transformer(tiny_model_config("bert", type_vocab_size=2))
    assert n_params(with_types) - n_params(t) == 2 * HIDDEN
    ids = torch.randint(0, VOCAB, (2, 5))
    assert t.eval()(ids, AttnSpec.dense(False)).shape == (2, 5, HIDDEN)


def test_token_type_ids_default_to_zero():
    torch.manual_seed(0)
    t = Transformer(tiny_model_config("bert")).eval()
    ids = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        default = t(ids, AttnSpec.dense(False))
        zeros = t(ids, AttnSpec.dense(False), token_type_ids=torch.zeros_like(ids))
        ones = t(ids, AttnSpec.dense(False), token_type_ids=torch.ones_like(ids))
    torch.testing.assert_close(default, zeros, atol=0, rtol=0)
    assert (ones - zeros).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["bert", "gpt2"])
def test_rope_has_no_position_table(preset):
    t = Transformer(tiny_model_config(preset, position="rope"))
    assert t.embeddings.position is None
    assert not any("position" in n for n in _names(t))
    learned = Transformer(tiny_model_config(preset))
    assert n_params(learned) - n_params(t) == MAXPOS * HIDDEN


def _rope_at(x: torch.Tensor, pos: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotate (..., D) vectors as if they sat at position `pos`."""
    cos, sin = rope_tables(torch.tensor([[pos]]), x.shape[-1], theta, x.dtype)  # (1, 1, 1, D)
    return apply_rope(x, cos[0, 0, 0], sin[0, 0, 0])


def test_apply_rope_dot_products_depend_only_on_relative_offset():
    torch.manual_seed(0)
    D = 16
    q, k = torch.randn(5, D, dtype=torch.float64), torch.randn(5, D, dtype=torch.float64)
    for m, n, s in [(0, 0, 7), (3, 1, 5), (1, 9, 20), (12, 4, 31), (0, 30, 100)]:
        a = (_rope_at(q, m) * _rope_at(k, n)).sum(-1)
        b = (_rope_at(q, m + s) * _rope_at(k, n + s)).sum(-1)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # ...while a different offset gives different scores (the rotation is not the identity)
    a = (_rope_at(q, 3) * _rope_at(k, 1)).sum(-1)
    c = (_rope_at(q, 3) * _rope_at(k, 2)).sum(-1)
    assert (a - c).abs().max() > 1e-2
    # a rotation preserves norms, and position 0 is the identity
    torch.testing.assert_close(_rope_at(q, 13).norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(_rope_at(q, 0), q)


def test_rope_tables_match_the_batched_path():
    """rope_tables over a (B, T) grid equals rotating each position on its own (as the trunk uses it)."""
    torch.manual_seed(0)
    B, h, T, D = 2, 3, 6, 8
    x = torch.randn(B, h, T, D)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2], [5, 6, 7, 8, 9, 10]])
    cos, sin = rope_tables(pos, D, 10000.0, x.dtype)
    assert cos.shape == (B, 1, T, D)
    y = apply_rope(x, cos, sin)
    for b in range(B):
        for t in range(T):
            torch.testing.assert_close(y[b, :, t], _rope_at(x[b, :, t], int(pos[b, t])), atol=1e-6, rtol=0)


class _ShiftedSpec(AttnSpec):
    """A dense spec whose positions start at `shift` instead of 0."""

    shift: int = 0

    def position_ids(self, batch, length, device):
        return super().position_ids(batch, length, device) + self.shift


def _shifted(causal: bool, shift: int) -> AttnSpec:
    spec = _ShiftedSpec(causal=causal)
    object.__setattr__(spec, "shift", shift)
    return spec


@pytest.mark.parametrize("preset", ["bert", "gpt2"])
def test_rope_trunk_is_translation_invariant_learned_is_not(preset):
    """With RoPE attention scores depend only on relative offsets, so starting the positions at s instead of 0
    changes nothing; with a learned absolute table it does."""
    causal = preset == "gpt2"
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 10))
    rope = Transformer(tiny_model_config(preset, position="rope")).eval()
    with torch.no_grad():
        for p in rope.parameters():  # large random weights: make the attention pattern far from uniform
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
        base = rope(ids, AttnSpec.dense(causal))
        for s in (1, 7, 40):
            torch.testing.assert_close(rope(ids, _shifted(causal, s)), base, atol=1e-4, rtol=0)
    learned = Transformer(tiny_model_config(preset)).eval()
    with torch.no_grad():
        diff = (learned(ids, _shifted(causal, 7)) - learned(ids, AttnSpec.dense(causal))).abs().max()
    assert diff > 1e-3


def test_rope_changes_outputs_versus_no_positions():
    """RoPE is actually applied: with no position information a bidirectional trunk is permutation-equivariant;
    with RoPE, permuting the input does not merely permute the output."""
    torch.manual_seed(0)
    t = Transformer(tiny_model_config("bert", position="rope")).eval()
    ids = torch.randint(0, VOCAB, (1, 8))
    perm = torch.randperm(8)
    with torch.no_grad():
        for p in t.parameters():  # large random weights: make the attention pattern far from uniform
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
        out = t(ids, AttnSpec.dense(False))
        out_perm = t(ids[:, perm], AttnSpec.dense(False))
        t.cfg = dataclasses.replace(t.cfg, position="learned")  # same weights, rotary switched off: no positions
        plain, plain_perm = t(ids, AttnSpec.dense(False)), t(ids[:, perm], AttnSpec.dense(False))
    torch.testing.assert_close(plain_perm, plain[:, perm], atol=1e-5, rtol=0)
    assert (out_perm - out[:, perm]).abs().max() > 1e-3


@pytest.mark.parametrize("preset, position, packed", [("bert", "learned", False), ("gpt2", "rope", True)])
def test_forward_at_equals_forward_gathered_with_the_same_dropout(preset, position, packed):
    """MLM's sparse path computes the last block only at the masked rows: same values, same random draws."""
    cfg = tiny_model_config(preset, position=position, dropout=0.2, attention_dropout=0.1)
    model = Transformer(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (3, 12))
    spec = AttnSpec.packed(preset == "gpt2", [[5, 7], [12], [1, 11]]) if packed else AttnSpec.dense(False)
    where = torch.rand(3, 12) < 0.3
    assert_forward_at_is_the_full_forward(model, ids, spec, where)
    model.eval()
    torch.testing.assert_close(model.forward_at(ids, spec, where), model(ids, spec)[where], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset, position, layout", [("bert", "learned", "dense"), ("bert", "rope", "padded"),
                                                      ("gpt2", "learned", "padded"), ("gpt2", "rope", "packed"),
                                                      ("gpt2", "learned", "dense")])
@pytest.mark.parametrize("rows_per_sequence", ["one", "several"])
def test_forward_at_computes_only_the_selected_queries(preset, position, layout, rows_per_sequence):
    """Pseudo-PPL's copies and a classifier's [CLS] (one row per sequence), MLM's masked rows (several): the last
    block computes the queries of those rows only (SelfAttention.context_at) and still equals forward(...)[where];
    also in train mode when only the residual dropout is on (its draws are those of forward)."""
    cfg = tiny_model_config(preset, position=position, dropout=0.2, attention_dropout=0.0)
    model = Transformer(cfg)
    causal = preset == "gpt2"
    ids = torch.randint(0, cfg.vocab_size, (3, 12))
    spec = {"dense": AttnSpec.dense(causal),
            "padded": AttnSpec.padded(causal, torch.arange(12)[None] < torch.tensor([[12], [7], [9]])),
            "packed": AttnSpec.packed(causal, [[5, 7], [12], [1, 11]])}[layout]
    where = torch.zeros(3, 12, dtype=torch.bool)
    where[0, 3], where[1, 6], where[2, 8] = True, True, True  # row 1's is its last real token when padded
    if rows_per_sequence == "several":
        where[0, 0], where[0, 11], where[2, 1], where[2, 4], where[2, 5] = True, True, True, True, True
    attn = model.layers[-1].attn
    for train in (False, True):
        model.train(train)
        torch.manual_seed(3)
        full = model(ids, spec)[where]
        torch.manual_seed(3)
        attn.context = None  # shadows the method: the last block's every-query path must not run
        try:
            sparse = model.forward_at(ids, spec, where)
        finally:
            del attn.context
        torch.testing.assert_close(sparse, full, rtol=1e-5, atol=1e-6)


def test_cpu_inference_feed_forward_in_chunks_equals_one_pass(monkeypatch):
    from lmssl.model import layers

    cfg = tiny_model_config("bert")
    monkeypatch.setattr(layers, "CPU_INFERENCE_ELEMENTS", 5 * cfg.ffn_size)  # chunks of 5 rows; 36 rows
    ffn = layers.FeedForward(cfg)
    x = torch.randn(3, 12, cfg.hidden_size)
    calls = []
    ffn.fc_in.register_forward_hook(lambda *args: calls.append(args[1][0].shape[0]))
    one_pass = ffn(x)  # with autograd: never chunked
    with torch.no_grad():
        chunked = ffn(x)
    assert calls == [3, 5, 5, 5, 5, 5, 5, 5, 1]  # one (3, 12, H) pass, then 36 rows five at a time
    torch.testing.assert_close(chunked, one_pass.detach(), rtol=1e-5, atol=1e-6)


def test_block_kinds_build_what_they_say():
    modern = Transformer(tiny_model_config("modernbert"))
    assert isinstance(modern.layers[0].attn_norm, torch.nn.Identity)  # the embedding norm already normalised it
    assert isinstance(modern.layers[1].attn_norm, torch.nn.LayerNorm) and modern.layers[1].attn_norm.bias is None
    assert modern.embeddings.norm is not None and modern.final_norm is not None
    assert modern.layers[0].ffn.fc_in.out_features == 2 * 64 and modern.layers[0].attn.qkv.bias is None
    llama = Transformer(tiny_model_config("llama", qk_norm=True))
    assert isinstance(llama.layers[0].attn_norm, torch.nn.RMSNorm) and llama.embeddings.norm is None
    q_norm = llama.layers[0].attn.q_norm
    assert isinstance(q_norm, torch.nn.RMSNorm) and q_norm.weight.shape == (8,)  # per head: 32 / 4 heads
    # SwiGLU by hand: (silu(x W) * x V) W2, W and V the two halves of fc_in
    ffn = llama.layers[0].ffn
    x = torch.randn(3, 32)
    w, v = ffn.fc_in.weight.chunk(2)
    torch.testing.assert_close(ffn(x), torch.nn.functional.silu(x @ w.T) * (x @ v.T) @ ffn.fc_out.weight.T)
