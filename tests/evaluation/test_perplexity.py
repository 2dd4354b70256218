"""Sliding-window perplexity: window plans, a brute-force per-token check, strides, text normalisers."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from lmssl.config import MODEL_PRESETS, ModelConfig
from lmssl.evaluation.perplexity import causal_log_likelihood, causal_windows
from lmssl.evaluation.text import first_words
from lmssl.model.attention import AttnSpec
from lmssl.model.heads import CausalLMHead
from lmssl.model.transformer import Transformer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: thread hand-offs cost more than they save, and hurt badly on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_lm(vocab: int = 50, init_std: float = 0.02, layers: int = 2) -> tuple[Transformer, CausalLMHead]:
    cfg = ModelConfig(**{**MODEL_PRESETS["gpt2"], "vocab_size": vocab, "hidden_size": 32, "num_layers": layers,
                         "num_heads": 4, "ffn_size": 64, "max_positions": 64, "dropout": 0.0,
                         "attention_dropout": 0.0, "init_std": init_std})
    trunk = Transformer(cfg)
    return trunk.eval(), CausalLMHead(cfg, trunk.word_embeddings).eval()


def test_windows_hand_computed():
    # a stream of 10 tokens: stream[0] begins the text, targets are 1..9
    assert causal_windows(10, 4, 4) == [(0, 4, 0), (4, 8, 0), (8, 9, 0)]  # disjoint: targets 1-4, 5-8, 9
    assert causal_windows(10, 4, 2) == [(0, 4, 0), (2, 6, 2), (4, 8, 2), (6, 9, 2)]  # then 2 new targets each
    assert causal_windows(3, 8, 4) == [(0, 2, 0)]  # one short window: reads 2 tokens, predicts 2
    assert causal_windows(1, 8, 4) == []  # an empty document: nothing to score


def test_windows_score_every_target_once_with_enough_context():
    rng = random.Random(0)
    for _ in range(300):
        n, length = rng.randint(1, 60), rng.randint(1, 12)
        stride = rng.randint(1, length)
        scored = []
        for start, stop, first in causal_windows(n, length, stride):
            assert 0 <= first < stop - start <= length
            targets = list(range(start + first + 1, stop + 1))
            scored += targets
            assert all(t - start >= min(t, length - stride + 1) for t in targets)  # context >= L - S + 1 (or all)
        assert scored == list(range(1, n)), (n, length, stride)


def brute_force(trunk, head, stream: list[int], length: int, stride: int) -> float:
    """Log-likelihood of stream[1:], one forward pass per token over exactly the context the method promises:
    target t is scored in the first window (starting at a multiple of the stride) that predicts it."""
    total = 0.0
    for t in range(1, len(stream)):
        start = max(0, math.ceil((t - length) / stride)) * stride
        context = torch.tensor([stream[start:t]])
        logits = head(trunk(context, AttnSpec.dense(True)))[0, -1]  # full vocabulary, last position
        total += float(F.log_softmax(logits.double(), -1)[stream[t]])
    return total


@pytest.mark.parametrize("length, stride", [(8, 8), (8, 3), (8, 1), (64, 64)])
def test_perplexity_equals_a_brute_force_per_token_computation(length, stride):
    torch.manual_seed(0)
    trunk, head = tiny_lm(init_std=0.3)  # a large init: predictions depend strongly on the context
    g = torch.Generator().manual_seed(1)
    streams = [[0, *torch.randint(1, 50, (n,), generator=g).tolist()] for n in (1, 5, 30, 47)]
    with torch.no_grad():
        expected = [brute_force(trunk, head, s, length, stride) for s in streams]
    for batch_size in (1, 3, 16):  # padded batches of windows of different lengths give the same values
        totals, counts = causal_log_likelihood(trunk, head, streams, length, stride, batch_size)
        assert counts.tolist() == [len(s) - 1 for s in streams]
        assert totals.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    ppl = math.exp(-totals.sum() / counts.sum())
    assert ppl == pytest.approx(math.exp(-sum(expected) / counts.sum()), rel=1e-5)


def test_shorter_strides_never_give_a_higher_perplexity_than_disjoint_windows():
    """A model that needs context: each document draws its tokens from its own 4 of 47 symbols, so the more of
    the document a token sees, the better it is predicted. Disjoint windows give the first tokens of each
    window little context; overlapping windows give every token at least L - S."""
    torch.manual_seed(0)
    vocab, length = 48, 16
    trunk, head = tiny_lm(vocab, layers=1)
    g = torch.Generator().manual_seed(0)

    def documents(n: int, size: int) -> torch.Tensor:
        subsets = torch.stack([torch.randperm(vocab - 1, generator=g)[:4] + 1 for _ in range(n)])
        return subsets.gather(1, torch.randint(4, (n, size), generator=g))

    model = torch.nn.ModuleDict({"trunk": trunk, "head": head}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(120):
        x = documents(16, 32)
        logits = head(trunk(x, AttnSpec.dense(True)))
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    streams = [[0, *d.tolist()] for d in documents(8, 63)]

    def ppl(stride: int) -> float:
        totals, counts = causal_log_likelihood(trunk, head, streams, length, stride)
        assert int(counts.sum()) == 8 * 63
        return math.exp(-float(totals.sum()) / int(counts.sum()))

    disjoint = ppl(length)
    strided = {s: ppl(s) for s in (12, 8, 4, 2, 1)}
    assert all(v <= disjoint for v in strided.values()), (disjoint, strided)
    assert strided[1] < 0.95 * disjoint, (disjoint, strided)  # the effect is real, not rounding


def test_first_words_cuts_at_a_word_boundary():
    docs = ["one two three", "four  five\nsix seven", "eight"]
    assert first_words(docs, 0) == docs
    assert first_words(docs, 3) == ["one two three"]
    assert first_words(docs, 5) == ["one two three", "four  five"]
    assert first_words(docs, 100) == docs


def test_text_perplexity_normalisers(data_root, tmp_path):
    """tokens, bytes, words and the three normalisations agree with their definitions."""
    from conftest import tiny_config

    from lmssl.data import load_tokenizer
    from lmssl.evaluation.perplexity import perplexity
    from lmssl.objectives import build_objective
    from lmssl.training.prepare import with_vocab

    cfg = tiny_config("clm", tmp_path)
    tokenizer = load_tokenizer(cfg)
    objective = build_objective(with_vocab(cfg, tokenizer.vocab_size), tokenizer).eval()
    documents = ["The café opened in 1998 .", "A second document\nwith two lines"]
    r = perplexity(objective, tokenizer, documents, max_length=16, stride=8)
    nll_total = r["nll"] * r["tokens"]
    assert r["tokens"] == sum(len(ids) for ids in tokenizer.encode_batch(documents))  # every token, the first too
    assert r["bytes"] == 26 + 32  # UTF-8: 'é' is two bytes
    assert r["words"] == 6 + 6 and r["documents"] == 2
    assert r["ppl"] == pytest.approx(math.exp(r["nll"]))
    assert r["bits_per_byte"] == pytest.approx(nll_total / math.log(2) / 58)
    assert r["word_ppl"] == pytest.approx(math.exp(nll_total / 12))
    assert 5.0 < r["nll"] < 12.0  # a random 8192-way model: about ln(8192) = 9.0 nats per token
