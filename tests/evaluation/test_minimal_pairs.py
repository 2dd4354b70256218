"""Minimal pairs: the corpus-derived set (`lmssl pairs make`) and its scoring (`lmssl eval pairs`)."""
from __future__ import annotations

import json
import random

import pytest
from helpers import cli, open_model, tiny_config, write

from lmssl.data.minimal_pair_maker import adjacent_word_swap, determiner_noun_number, function_word_shuffle, make_pairs
from lmssl.errors import ConfigError
from lmssl.evaluation.minimal_pairs import MinimalPair, read_pairs, score_pairs, sentence_log_likelihoods
from lmssl.evaluation.perplexity import perplexity
from lmssl.evaluation.pseudo_perplexity import pseudo_perplexity
from lmssl.training.loop import train


def test_perturbations_by_hand():
    rng = random.Random(0)
    words = "The cat sat on the mat .".split()
    swapped = adjacent_word_swap(words, rng)
    i = next(i for i, (a, b) in enumerate(zip(words, swapped)) if a != b)
    assert swapped[i:i + 2] == words[i:i + 2][::-1] and swapped[:i] + swapped[i + 2:] == words[:i] + words[i + 2:]
    assert adjacent_word_swap(["1999", ",", "2000"], rng) is None  # numbers and punctuation never move
    assert determiner_noun_number("These days are long".split(), rng) == "This days are long".split()
    assert determiner_noun_number("I saw that film".split(), rng) == "I saw those film".split()
    assert determiner_noun_number("No demonstrative here".split(), rng) is None
    shuffled = function_word_shuffle(words, rng)  # function words: The, on, the
    assert shuffled != words and [w for w in shuffled if w in ("cat", "sat", "mat", ".")] == ["cat", "sat", "mat", "."]
    assert [shuffled[k] for k in (1, 2, 5, 6)] == [words[k] for k in (1, 2, 5, 6)]  # content words stay put
    assert sorted(w.lower() for w in shuffled) == sorted(w.lower() for w in words)
    assert function_word_shuffle("the big the dog".split(), rng) is None  # one distinct function word


def test_make_pairs_caps_each_type_and_is_seeded():
    sentences = [f"This is the sentence number {w} of this corpus ." for w in ("one", "two", "three", "four")]
    pairs = list(make_pairs(sentences * 2, per_type=3, seed=1))  # duplicates count once
    by_uid = {uid: [p for p in pairs if p["UID"] == uid] for uid in {p["UID"] for p in pairs}}
    assert {uid: len(v) for uid, v in by_uid.items()} == {"adjacent_word_swap": 3, "determiner_noun_number": 3,
                                                          "function_word_shuffle": 3}
    assert all(p["sentence_good"] in sentences and p["sentence_bad"] != p["sentence_good"] for p in pairs)
    assert len({p["sentence_good"] for p in by_uid["adjacent_word_swap"]}) == 3
    assert pairs == list(make_pairs(sentences, per_type=3, seed=1))
    assert pairs != list(make_pairs(sentences, per_type=3, seed=2))
    assert list(make_pairs(["Too short ."], per_type=3)) == []


def test_read_pairs_names_the_line_and_key(tmp_path):
    good = write(tmp_path / "ok.jsonl", '{"sentence_good": "a b", "sentence_bad": "b a", "UID": "x"}\n\n'
                                        '{"sentence_good": "c d", "sentence_bad": "d c"}\n')
    assert read_pairs(good) == [MinimalPair("a b", "b a", "x", ""), MinimalPair("c d", "d c", "", "")]
    bad = write(tmp_path / "bad.jsonl", '{"sentence_good": "a b", "sentence_bad": "b a"}\n{"sentence_good": "a"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: key 'sentence_bad' must be a non-empty string"):
        read_pairs(bad)
    with pytest.raises(ConfigError, match=r"broken.jsonl:1: not valid JSON"):
        read_pairs(write(tmp_path / "broken.jsonl", "{nope\n"))


@pytest.mark.parametrize("kind,word_l2r", [("clm", False), ("mlm", False), ("mlm", True), ("electra", False)])
def test_pair_scores_are_the_likelihood_evaluators_per_sentence_values(kind, word_l2r, checkpoints):
    """A causal model's sentence score is the perplexity evaluator's log-likelihood of that sentence as a document;
    a masked model's is the pseudo-perplexity evaluator's PLL (ELECTRA: its generator's)."""
    cfg, tokenizer, objective = open_model(checkpoints[kind])
    sentences = ["The tower is 324 metres tall .", "Tall metres the is tower 324 .", "A word-piece-heavy sentence !"]
    ll, measure = sentence_log_likelihoods(objective, tokenizer, sentences, word_l2r=word_l2r)
    if kind == "clm":
        for sentence, value in zip(sentences, ll.tolist()):
            result = perplexity(objective, tokenizer, [sentence], max_length=cfg.data.seq_len,
                                stride=cfg.data.seq_len // 2)
            # scored alone here, beside the other sentences (padded) there: equal to float32 rounding
            assert value == pytest.approx(-result["nll"] * result["tokens"], rel=1e-6)
        assert measure.startswith("summed log-probability")
    else:
        _, records = pseudo_perplexity(objective, tokenizer, sentences, max_length=cfg.data.seq_len,
                                       stride=(cfg.data.seq_len - 2) // 2, word_l2r=word_l2r)
        assert ll.tolist() == [r["pll"] for r in records]
        assert measure.startswith("pseudo-log-likelihood")


@pytest.mark.slow
def test_a_model_trained_on_the_tiny_corpus_prefers_its_good_sentences(tmp_path, data_root, capsys):
    """A tiny CLM trained on WikiText-2's validation split, scored on pairs made from held-out test sentences:
    well above the 50% of a model without preferences (300 pairs: 3 standard deviations are 8.7 points)."""
    code, out, _ = cli(capsys, "pairs", "make", "wikitext-2/test.txt", str(tmp_path / "pairs.jsonl"),
                       "--per-type", "100")
    assert code == 0 and json.loads(out)["pairs"] == 300
    code, _, err = cli(capsys, "pairs", "make", "wikitext-2/test.txt", str(tmp_path / "pairs.jsonl"))
    assert code == 2 and "exists; pass --overwrite" in err
    result = train(tiny_config("clm", tmp_path / "run", "train.max_steps=150", "train.lr=3e-3",
                               "eval.likelihood_max_words=0", "train.log_every=50"))
    code, out, err = cli(capsys, "eval", "pairs", result["checkpoint"], str(tmp_path / "pairs.jsonl"),
                         "--per-pair", str(tmp_path / "scores.jsonl"))
    assert code == 0
    summary = json.loads(out)
    assert summary["pairs"] == 300 and summary["accuracy"] > 60, summary
    assert set(summary["by_uid"]) == {"adjacent_word_swap", "determiner_noun_number", "function_word_shuffle"}
    assert "adjacent_word_swap" in err  # the per-UID table
    records = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert sum(r["right"] for r in records) / 3 == pytest.approx(summary["accuracy"])


def test_score_pairs_counts_ties_as_wrong(checkpoints):
    cfg, tokenizer, objective = open_model(checkpoints["clm"])
    summary, records = score_pairs(objective, tokenizer, [MinimalPair("same text", "same text", "u", "f")])
    assert summary["accuracy"] == 0.0 and summary["ties"] == 1 and summary["by_field"] == {
        "f": {"accuracy": 0.0, "pairs": 1}}
