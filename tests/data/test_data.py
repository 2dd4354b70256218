import json

import numpy as np
import pytest

from lmssl.config import ConfigError
from lmssl.data import load_tokenizer, sequences
from lmssl.data.corpus import Corpus, detect_doc_split, group_lines, iter_documents
from lmssl.data.loader import SequenceLoader
from lmssl.data.packing import PackedSequences, StreamingSequences, tokenize_corpus
from lmssl.data.tokenizer import TextTokenizer, tokenizer_path


def test_group_lines_by_each_rule():
    lines = [" = A = ", " ", " text a1 ", " = = Sub = = ", " text a2 ", " ", " = B = ", " text b "]
    assert list(group_lines(lines, "wikitext")) == ["= A =\ntext a1\n= = Sub = =\ntext a2", "= B =\ntext b"]
    assert list(group_lines(["a", "b", "", "c", "  ", "", "d"], "blank_line")) == ["a\nb", "c", "d"]
    assert list(group_lines(["a", "", "b "], "line")) == ["a", "b"]
    assert detect_doc_split(lines) == "wikitext"
    assert detect_doc_split(["x", "", "y"]) == "blank_line" and detect_doc_split(["x", "y"]) == "line"


def test_wikitext_articles_become_documents(data_root):
    path = data_root / "wikitext-2" / "valid.txt"
    titles = sum(1 for line in path.read_text().splitlines() if line.startswith(" = ") and not line.startswith(" = = "))
    docs = list(iter_documents(path))
    assert len(docs) == titles == 60
    assert docs[0].startswith("= Homarus gammarus =")


def test_jsonl_and_parquet_corpora(tmp_path):
    rows = [{"text": "first doc", "id": 1}, {"text": "", "id": 2}, {"text": "second doc", "id": 3}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert list(iter_documents(tmp_path / "c.jsonl")) == ["first doc", "second doc"]
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"body": ["p one", "p two"]}), tmp_path / "c.parquet")
    assert list(iter_documents(tmp_path / "c.parquet", text_field="body")) == ["p one", "p two"]
    with pytest.raises(ConfigError, match=r"c.parquet: no column 'text' \(data.text_field\); columns are: body"):
        list(iter_documents(tmp_path / "c.parquet"))


def test_packed_sequences_keep_document_boundaries():
    tokens = np.arange(100, 114)  # documents end after offsets 3, 9, 14
    doc_ends = np.array([3, 9, 14])
    plain = PackedSequences(tokens, doc_ends, seq_len=5, prefix_id=None)
    assert len(plain) == 2
    assert plain[0].input_ids.tolist() == [100, 101, 102, 103, 104] and plain[0].doc_lengths == [3, 2]
    assert plain[1].input_ids.tolist() == [105, 106, 107, 108, 109] and plain[1].doc_lengths == [4, 1]
    cls = PackedSequences(tokens, doc_ends, seq_len=5, prefix_id=2)  # [CLS] + 4 stream tokens
    assert len(cls) == 3
    assert cls[0].input_ids.tolist() == [2, 100, 101, 102, 103] and cls[0].doc_lengths == [4, 1]
    assert cls[2].input_ids.tolist() == [2, 108, 109, 110, 111] and cls[2].doc_lengths == [2, 3]


@pytest.fixture(scope="module")
def wordpiece():
    return TextTokenizer.from_file(tokenizer_path("wikitext2-wordpiece"))


def test_tokenization_is_cached(data_root, tmp_path, wordpiece, monkeypatch):
    path = data_root / "wikitext-2" / "valid.txt"
    tokens, ends = tokenize_corpus(Corpus(str(path)), wordpiece, wordpiece.sep_id, tmp_path)
    assert ends[-1] == len(tokens) and (np.asarray(tokens)[ends - 1] == wordpiece.sep_id).all()
    monkeypatch.setattr(Corpus, "documents", lambda *a, **k: pytest.fail("re-tokenized a cached corpus"))
    again, again_ends = tokenize_corpus(Corpus(str(path)), wordpiece, wordpiece.sep_id, tmp_path)
    assert np.array_equal(tokens, again) and np.array_equal(ends, again_ends)


def test_streaming_equals_cached_packing_and_resumes(data_root, tmp_path, wordpiece):
    path = data_root / "wikitext-2" / "valid.txt"
    tokens, ends = tokenize_corpus(Corpus(str(path)), wordpiece, wordpiece.sep_id, tmp_path)
    packed = PackedSequences(tokens, ends, 64, wordpiece.cls_id)
    stream = StreamingSequences(Corpus(str(path)), wordpiece, wordpiece.sep_id, 64, wordpiece.cls_id)
    streamed = list(stream.iterate(seed=0))
    assert len(streamed) == len(packed)
    for i in (0, 1, len(packed) // 2, len(packed) - 1):
        assert streamed[i].input_ids.tolist() == packed[i].input_ids.tolist()
        assert streamed[i].doc_lengths == packed[i].doc_lengths
    shuffled = StreamingSequences(Corpus(str(path)), wordpiece, wordpiece.sep_id, 64, wordpiece.cls_id,
                                  shuffle_buffer=50)
    first = SequenceLoader(shuffled, 4, seed=3)
    for _ in range(5):
        first.next_batch()
    state = first.state_dict()
    expected = [first.next_batch() for _ in range(3)]
    resumed = SequenceLoader(shuffled, 4, seed=3)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next_batch()
        assert [g.input_ids.tolist() for g in got] == [w.input_ids.tolist() for w in want]


def test_loader_resumes_mid_epoch_and_reshuffles_per_epoch():
    data = PackedSequences(np.arange(1000), np.array([1000]), seq_len=10, prefix_id=None)  # 100 sequences
    loader = SequenceLoader(data, 8, seed=1)
    seen = [ex.input_ids[0] for _ in range(12) for ex in loader.next_batch()]
    assert len(set(seen[:96])) == 96  # no repeats within an epoch (the last 4 are dropped)
    assert loader.state_dict() == {"epoch": 0, "position": 96, "data": loader.fingerprint()}
    # the fingerprint is the data's: the same sequences give it, the same tokens in another order do not
    assert SequenceLoader(PackedSequences(np.arange(1000), np.array([1000]), 10, None), 4, 7).fingerprint() == \
        loader.fingerprint()
    assert SequenceLoader(PackedSequences(np.arange(1000)[::-1], np.array([1000]), 10, None), 8, 1).fingerprint() != \
        loader.fingerprint()
    state = loader.state_dict()
    nxt = [ex.input_ids[0] for ex in loader.next_batch()]
    assert loader.state_dict()["epoch"] == 1
    again = SequenceLoader(data, 8, seed=1)
    again.load_state_dict(state)
    assert [ex.input_ids[0] for ex in again.next_batch()] == nxt
    epoch0 = SequenceLoader(data, 8, seed=1)
    assert [ex.input_ids[0] for ex in epoch0.next_batch()] != nxt  # a new permutation each epoch


def test_sequences_from_config_and_missing_tokenizer_is_trained_once(data_root, tmp_path, monkeypatch):
    from conftest import tiny_config
    monkeypatch.setenv("LMSSL_TOKENIZERS", str(tmp_path / "toks"))
    cfg = tiny_config("clm", tmp_path / "run", "data.tokenizer=fresh-bpe", "data.tokenizer_vocab_size=500",
                      "data.train=wikitext-2-raw/valid.txt")
    tok = load_tokenizer(cfg)
    assert (tmp_path / "toks" / "fresh-bpe" / "tokenizer.json").is_file() and tok.vocab_size == 500
    import lmssl.data.build as data_mod
    monkeypatch.setattr(data_mod, "train_tokenizer", lambda *a, **k: pytest.fail("trained twice"))
    assert load_tokenizer(cfg).vocab_size == 500
    seqs = sequences(cfg, "train", tok, tok.eos_id, None)
    assert len(seqs[0].input_ids) == 64 and sum(seqs[0].doc_lengths) == 64
