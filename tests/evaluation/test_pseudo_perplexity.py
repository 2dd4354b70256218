"""Exact pseudo-perplexity: window plans and equality with a naive one-mask-per-forward loop."""
from __future__ import annotations

import math
import random

import pytest
import torch

from lmssl.config import MODEL_PRESETS, ModelConfig
from lmssl.data.tokenizer import TextTokenizer, tokenizer_path
from lmssl.evaluation.pseudo_perplexity import (
    MaskingTokens,
    copy_batches,
    masked_log_likelihood,
    masked_windows,
    plan_windows,
    sparse_predictor,
)
from lmssl.model.attention import AttnSpec
from lmssl.model.heads import MaskedLMHead
from lmssl.model.transformer import Transformer

TEXTS = [
    "The quick brown fox jumps over the lazy dog , unbelievably .",
    "Hi",
    "Antidisestablishmentarianism and photosynthesis were discussed at length by the committee , "
    "whose chairman 你 found the hyperparameterisation of the proceedings incomprehensible . " * 2,
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models (see test_perplexity.py)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.from_file(tokenizer_path("wikitext2-wordpiece"))


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**MODEL_PRESETS["bert"], "vocab_size": tokenizer.vocab_size, "hidden_size": 32,
                         "num_layers": 2, "num_heads": 4, "ffn_size": 64, "max_positions": 64, "init_std": 0.2})
    trunk = Transformer(cfg)
    return trunk.eval(), MaskedLMHead(cfg, trunk.word_embeddings).eval()


def test_windows_hand_computed():
    assert masked_windows(3, 4, 2) == [(0, 3, 0, 3)]  # fits: one window, all scored
    assert masked_windows(0, 4, 2) == []
    # 10 tokens, width 4: windows at 0 and 4, the last aligned to the end (6); boundaries halfway between centres
    assert masked_windows(10, 4, 4) == [(0, 4, 0, 4), (4, 8, 4, 7), (6, 10, 7, 10)]
    assert masked_windows(10, 6, 2) == [(0, 6, 0, 4), (2, 8, 4, 6), (4, 10, 6, 10)]


def test_windows_score_every_token_once_inside_its_window():
    rng = random.Random(0)
    for _ in range(300):
        n, width = rng.randint(1, 80), rng.randint(1, 20)
        stride = rng.randint(1, width)
        scored = []
        for start, stop, lo, hi in masked_windows(n, width, stride):
            assert stop - start == min(width, n) and start <= lo < hi <= stop
            if n > width:  # context on both sides, except at the document's edges
                margin = (width - stride) // 2
                assert lo == 0 or lo - start >= margin
                assert hi == n or stop - hi >= margin
            scored += range(lo, hi)
        assert scored == list(range(n)), (n, width, stride)


def naive_pll(trunk, head, tokenizer, docs, max_length, stride, word_l2r) -> list[float]:
    """One forward pass per scored token, full-vocabulary logits at every position, then the masked one picked.
    Word pieces for word-l2r come from the token strings ('##' continues a word), not from our tables."""
    special = set(tokenizer.special_ids)
    total = []
    for ids in docs:
        ll = 0.0
        for start, stop, lo, hi in masked_windows(len(ids), max_length - 2, stride):
            window = [tokenizer.cls_id, *ids[start:stop], tokenizer.sep_id]
            for t in range(lo, hi):
                p = t - start + 1
                if window[p] in special:
                    continue  # context only
                copy = list(window)
                copy[p] = tokenizer.mask_id
                q = p + 1
                while word_l2r and tokenizer.tokenizer.id_to_token(window[q]).startswith("##"):
                    copy[q] = tokenizer.mask_id
                    q += 1
                logits = head(trunk(torch.tensor([copy]), AttnSpec.dense(False)))[0]  # (T, V)
                ll += float(torch.log_softmax(logits[p].double(), -1)[window[p]])
        total.append(ll)
    return total


@pytest.mark.parametrize("word_l2r", [False, True])
@pytest.mark.parametrize("max_length, stride", [(64, 62), (16, 5), (16, 14)])
def test_pseudo_perplexity_equals_a_naive_loop(model, tokenizer, word_l2r, max_length, stride):
    trunk, head = model
    docs = tokenizer.encode_batch(TEXTS)
    assert tokenizer.roles["unk"] in docs[2]  # a special token inside the text: context, never scored
    assert any(tokenizer.tokenizer.id_to_token(i).startswith("##") for i in docs[2])  # multi-piece words
    with torch.no_grad():
        expected = naive_pll(trunk, head, tokenizer, docs, max_length, stride, word_l2r)
    tokens = MaskingTokens.of(tokenizer)
    windows = plan_windows(docs, tokens, max_length, stride, word_l2r)
    scorable = [sum(i not in tokenizer.special_ids for i in d) for d in docs]
    for budget in (1, 50, 100_000):  # one copy per batch, windows split across padded batches, everything at once
        totals, counts = masked_log_likelihood(sparse_predictor(trunk, head), windows, len(docs), tokens, budget)
        assert counts.tolist() == scorable
        assert totals.tolist() == pytest.approx(expected, rel=1e-5)
    pppl, naive_pppl = (math.exp(-sum(v) / sum(scorable)) for v in (totals.tolist(), expected))
    assert pppl == pytest.approx(naive_pppl, rel=1e-5)


def test_word_l2r_masks_more_and_changes_only_multi_piece_words(model, tokenizer):
    trunk, head = model
    docs = tokenizer.encode_batch(["the cat sat on the mat", "antidisestablishmentarianism"])
    tokens = MaskingTokens.of(tokenizer)
    plain = masked_log_likelihood(sparse_predictor(trunk, head), plan_windows(docs, tokens, 64, 31), 2, tokens)[0]
    l2r = masked_log_likelihood(sparse_predictor(trunk, head), plan_windows(docs, tokens, 64, 31, True), 2, tokens)[0]
    assert l2r[0] == plain[0]  # whole words of one piece: nothing else to mask
    assert l2r[1] != plain[1]


def test_copy_batches_respect_the_token_budget(tokenizer):
    tokens = MaskingTokens.of(tokenizer)
    windows = plan_windows(tokenizer.encode_batch(TEXTS), tokens, 16, 7)
    batches = copy_batches(windows, 100)
    copies = [(id(w), c) for batch in batches for w, lo, hi in batch for c in range(lo, hi)]
    assert len(copies) == len(set(copies)) == sum(len(w.positions) for w in windows)
    for batch in batches:
        assert sum(hi - lo for _, lo, hi in batch) * max(len(w.ids) for w, _, _ in batch) <= 100


@pytest.mark.parametrize("name, kind", [("mlm", "pppl"), ("electra", "pppl"), ("clm", "ppl"), ("simcse", None)])
def test_each_objective_gets_its_evaluator(tokenizer, name, kind):
    """PPL for causal LMs, pseudo-PPL for masked LMs (ELECTRA: its generator), nothing for SimCSE."""
    from lmssl.config import load_config
    from lmssl.evaluation.likelihood import ValidationLikelihood, likelihood_kind
    from lmssl.evaluation.pseudo_perplexity import masked_lm_modules, pseudo_perplexity
    from lmssl.objectives import OBJECTIVES, build_objective

    if name not in OBJECTIVES:
        pytest.skip(f"objective {name} not registered")
    tok = TextTokenizer.from_file(tokenizer_path("wikitext2-bpe")) if name == "clm" else tokenizer
    small = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=64",
             f"model.vocab_size={tok.vocab_size}", "data.seq_len=16", "data.valid=''"]
    cfg = load_config(None, [f"objective.name={name}", *small] + (["model.preset=gpt2"] if name == "clm" else []))
    objective = build_objective(cfg, tok).eval()
    assert likelihood_kind(objective) == kind
    assert ValidationLikelihood.create(cfg, tok, objective) is None  # no data.valid: nothing to score
    if name == "electra":
        trunk, head = masked_lm_modules(objective)
        assert trunk is objective.generator.trunk and head is objective.generator.head
        result, _ = pseudo_perplexity(objective, tok, ["a short text to score"], max_length=16, stride=7)
        docs = tok.encode_batch(["a short text to score"])
        windows = plan_windows(docs, MaskingTokens.of(tok), 16, 7)
        totals, _ = masked_log_likelihood(sparse_predictor(trunk, head), windows, 1, MaskingTokens.of(tok))
        assert result["pll"] == pytest.approx(float(totals.sum()))


def test_bf16_mode_runs_in_bf16_and_stays_close_to_fp32(model, tokenizer):
    trunk, head = model
    docs = tokenizer.encode_batch(TEXTS)
    tokens = MaskingTokens.of(tokenizer)
    windows = plan_windows(docs, tokens, 64, 62)
    fp32, counts = masked_log_likelihood(sparse_predictor(trunk, head), windows, len(docs), tokens)
    bf16, bf16_counts = masked_log_likelihood(sparse_predictor(trunk, head), windows, len(docs), tokens, dtype="bf16")
    assert torch.equal(counts, bf16_counts)
    assert float(bf16.sum()) != float(fp32.sum())  # bf16 matmuls really ran
    assert bf16.tolist() == pytest.approx(fp32.tolist(), rel=2e-2)
