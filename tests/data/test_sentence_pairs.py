"""Sentence pairs for NSP/SOP (lmssl.data.sentence_pairs): segments, BERT's truncation, pair plans, examples,
caching."""
import numpy as np
import pytest

from lmssl.config import ConfigError
from lmssl.data.corpus import Corpus
from lmssl.data.sentence_pairs import (
    PairExample,
    SegmentedCorpus,
    SentencePairs,
    plan_pairs,
    split_segments,
    tokenize_segments,
    truncated_lengths,
)
from lmssl.data.tokenizer import TextTokenizer, tokenizer_path


def corpus(*docs: list[int]) -> SegmentedCorpus:
    """Documents given as segment lengths; token ids are 100 + the token's offset, so ranges are easy to read."""
    lengths = [n for doc in docs for n in doc]
    total = sum(lengths)
    return SegmentedCorpus(np.arange(100, 100 + total), np.cumsum(lengths), np.cumsum([len(d) for d in docs]))


def doc_of(c: SegmentedCorpus, start: int, stop: int) -> int:
    """The document holding token range [start, stop) (asserting it does not straddle two)."""
    token_doc_ends = c.segment_ends[c.doc_ends - 1]
    d = int(np.searchsorted(token_doc_ends, start, side="right"))
    assert stop <= token_doc_ends[d], (start, stop)
    return d


def test_segments_are_lines_cut_into_sentences():
    doc = "= Title =\nThe first one . A second one !\nNo terminal here"
    assert split_segments(doc) == ["= Title =", "The first one .", "A second one !", "No terminal here"]
    assert split_segments("Raw text, no spaced terminals. It stays whole.") == [
        "Raw text, no spaced terminals. It stays whole."]  # WikiText's rule
    assert split_segments("Raw text, no spaced\nterminals. It is cut.\nAnd then? Yes.", "prose") == [
        "Raw text, no spaced terminals.", "It is cut.", "And then?", "Yes."]


def bert_truncate_loop(a: int, b: int, max_total: int) -> tuple[int, int]:
    """BERT's truncate_seq_pair, token by token."""
    while a + b > max_total:
        if a > b:
            a -= 1
        else:
            b -= 1
    return a, b


def test_truncated_lengths_equal_berts_loop():
    assert truncated_lengths(10, 3, 8) == (5, 3)  # only the longer shrinks while it stays longer
    assert truncated_lengths(5, 5, 7) == (4, 3)  # tie: B first, then they alternate
    assert truncated_lengths(2, 9, 20) == (2, 9)
    for a in range(1, 13):
        for b in range(1, 13):
            for m in range(2, 26):
                assert truncated_lengths(a, b, m) == bert_truncate_loop(a, b, m), (a, b, m)


def test_sop_pairs_of_two_segment_documents_hand_computed():
    c = corpus([3, 4], [2, 2])  # tokens 100-102 | 103-106 || 107-108 | 109-110
    for seed in range(20):
        rows = {tuple(r) for r in plan_pairs(c, 20, "sop", 0.0, np.random.default_rng(seed)).tolist()}
        assert len(rows) == 2
        assert rows <= {(0, 3, 3, 7, 0), (3, 7, 0, 3, 1), (7, 9, 9, 11, 0), (9, 11, 7, 9, 1)}
    labels = [r[4] for s in range(200) for r in plan_pairs(c, 20, "sop", 0.0, np.random.default_rng(s))]
    assert 0.4 < np.mean(labels) < 0.6  # swapped half of the time


def test_a_lone_last_segment_joins_the_chunk_before_it():
    c = corpus([10, 10, 1], [5, 5])  # target 12 is reached after two segments; one would be left alone
    for seed in range(20):
        rows = plan_pairs(c, 12, "sop", 0.0, np.random.default_rng(seed))
        assert len(rows) == 2  # one pair per document, none lost, no lone-segment pair
        first = rows[0]
        assert (first[1] - first[0]) + (first[3] - first[2]) <= 12
        spans = sorted([(first[0], first[1]), (first[2], first[3])])
        assert spans[0][0] >= 0 and spans[1][1] <= 21 and spans[0][1] <= spans[1][0]


def test_single_segment_documents_make_no_pairs():
    with pytest.raises(ValueError, match="every document is a single segment"):
        plan_pairs(corpus([5], [7], [3]), 20, "nsp", 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least two documents"):
        plan_pairs(corpus([5, 6]), 20, "nsp", 0.0, np.random.default_rng(0))
    c = corpus([5, 6], [9])
    rows = plan_pairs(c, 20, "nsp", 0.0, np.random.default_rng(0))
    assert len(rows) >= 1 and all(doc_of(c, r[0], r[1]) == 0 for r in rows)  # a lone segment is never A


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_pair_invariants_over_many_documents(task):
    rng = np.random.default_rng(7)
    c = corpus(*[list(rng.integers(1, 30, size=rng.integers(1, 12))) for _ in range(300)])
    rows = plan_pairs(c, 61, task, 0.1, np.random.default_rng(1))
    assert len(rows) > 400
    for a0, a1, b0, b1, label in rows.tolist():
        assert 0 < a1 - a0 and 0 < b1 - b0 and (a1 - a0) + (b1 - b0) <= 61
        da, db = doc_of(c, a0, a1), doc_of(c, b0, b1)
        if label == 0:  # B comes after A in the same document (truncation may drop tokens between them)
            assert da == db and a1 <= b0
        elif task == "nsp":  # B is from another document
            assert da != db
        else:  # SOP: the same two segments, swapped
            assert da == db and b1 <= a0
    assert 0.42 < rows[:, 4].mean() < 0.58
    again = plan_pairs(c, 61, task, 0.1, np.random.default_rng(1))
    assert np.array_equal(rows, again)  # a pure function of the seed: resumes see the same pairs


def test_example_layout_hand_computed():
    pairs = SentencePairs(corpus([3, 4], [2, 2]), seq_len=12, cls_id=2, sep_id=3, pad_id=0, task="sop", seed=0)
    assert len(pairs) == 2
    pairs.plans[0] = (0, 3, 3, 7, 0)
    ex = pairs[0]
    assert isinstance(ex, PairExample) and ex.label == 0
    assert ex.input_ids.tolist() == [2, 100, 101, 102, 3, 103, 104, 105, 106, 3, 0, 0]
    assert ex.token_type_ids.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    assert ex.doc_lengths == [10, 2]  # real tokens, then the padding as a "document" of its own
    full = SentencePairs(corpus([3, 4], [2, 2]), seq_len=7, cls_id=2, sep_id=3, pad_id=0, task="sop", seed=0)
    full.plans[0] = (9, 11, 7, 9, 1)
    assert full[0].input_ids.tolist() == [2, 109, 110, 3, 107, 108, 3] and full[0].doc_lengths == [7]


@pytest.fixture(scope="module")
def wordpiece():
    return TextTokenizer.from_file(tokenizer_path("wikitext2-wordpiece"))


def test_wikitext_pairs_are_well_formed(data_root, tmp_path, wordpiece, monkeypatch):
    path = data_root / "wikitext-2" / "valid.txt"
    c = tokenize_segments(Corpus(str(path)), wordpiece, tmp_path)
    assert len(c.doc_ends) == 60 and c.segment_ends[-1] == len(c.tokens)
    monkeypatch.setattr(Corpus, "documents", lambda *a, **k: pytest.fail("re-tokenized a cached corpus"))
    again = tokenize_segments(Corpus(str(path)), wordpiece, tmp_path)
    assert np.array_equal(c.tokens, again.tokens) and np.array_equal(c.segment_ends, again.segment_ends)

    pairs = SentencePairs(c, 64, wordpiece.cls_id, wordpiece.sep_id, wordpiece.pad_id, "nsp", seed=3)
    assert len(pairs) > 1000
    for i in range(len(pairs)):
        ex = pairs[i]
        real = ex.doc_lengths[0]
        ids, types = ex.input_ids, ex.token_type_ids
        assert len(ids) == 64 and sum(ex.doc_lengths) == 64 and ids[0] == wordpiece.cls_id
        seps = np.flatnonzero(ids[:real] == wordpiece.sep_id)
        # [CLS] A [SEP] B [SEP], A and B non-empty
        assert seps.tolist() == [seps[0], real - 1] and 1 < seps[0] < real - 2
        assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:real] == 1).all() and (types[real:] == 0).all()
        assert (ids[real:] == wordpiece.pad_id).all()
        a0, a1, b0, b1, label = pairs.plans[i].tolist()
        assert (doc_of(c, a0, a1) == doc_of(c, b0, b1)) == (label == 0)
    assert 0.46 < pairs.plans[:, 4].mean() < 0.54  # random next half of the time (N > 4000)


def test_a_corpus_of_one_sentence_documents_is_a_config_error(data_root, tmp_path):
    from conftest import tiny_config

    from lmssl.data import load_tokenizer
    from lmssl.objectives import build_objective
    from lmssl.training.prepare import with_vocab

    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"Sentence number {i} stands alone .\n" for i in range(50)))
    cfg = tiny_config("mlm", tmp_path / "run", f"data.train={lines}", "data.doc_split=line")
    assert cfg.objective.sentence_task == "nsp"
    tok = load_tokenizer(cfg)
    objective = build_objective(with_vocab(cfg, tok.vocab_size), tok)
    with pytest.raises(ConfigError, match="every document is a single segment") as err:
        objective.dataset("train", tok)
    assert "key 'data.train'" in str(err.value) and "objective.sentence_task=none" in str(err.value)
