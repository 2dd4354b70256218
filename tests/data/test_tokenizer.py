import numpy as np
import pytest

from lmssl.data.tokenizer import TextTokenizer, tokenizer_path, train_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog.\nUnbelievable tokenization happens here."] * 50 + \
        ["Another document about tokenizers, vocabularies and pieces of words."] * 50


@pytest.mark.parametrize("kind, roles", [
    ("wordpiece", {"pad", "unk", "cls", "sep", "mask", "eos"}),
    ("bpe", {"sep", "eos"}),
    ("unigram", {"pad", "unk", "cls", "sep", "mask", "eos"}),
])
def test_train_each_recipe(kind, roles, tmp_path):
    tok = train_tokenizer(kind, TEXTS, vocab_size=300)
    assert {r for r, i in tok.roles.items() if i is not None} == roles
    assert 50 < tok.vocab_size <= 300
    ids = tok.encode_batch(["the quick brown fox"])[0]
    assert ids and not set(ids) & set(tok.special_ids)
    assert "quick" in tok.decode(ids).lower()
    tok.save(tmp_path)
    again = TextTokenizer.from_file(tmp_path / "tokenizer.json")
    assert again.encode_batch(["the quick brown fox"])[0] == ids and again.roles == tok.roles


def test_word_start_table_marks_word_pieces():
    wp = train_tokenizer("wordpiece", TEXTS, vocab_size=200)
    table = wp.word_start_table()
    ids = wp.encode_batch(["unbelievable tokenization"])[0]
    pieces = [wp.tokenizer.id_to_token(i) for i in ids]
    assert [bool(table[i]) for i in ids] == [not p.startswith("##") for p in pieces]
    assert sum(table[i] for i in ids) == 2  # two words
    bpe = train_tokenizer("bpe", TEXTS, vocab_size=300)
    ids = bpe.encode_batch(["the unbelievable tokenization"])[0]
    # ' unbelievable', ' tokenization' start words; 'the' has no space
    assert sum(bpe.word_start_table()[i] for i in ids) == 2


def test_shipped_wikitext_tokenizers():
    wp = TextTokenizer.from_file(tokenizer_path("wikitext2-wordpiece"))
    bpe = TextTokenizer.from_file(tokenizer_path("wikitext2-bpe"))
    assert wp.vocab_size == bpe.vocab_size == 8192
    assert [wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id, wp.mask_id] == [0, 1, 2, 3, 4]
    assert bpe.eos_id == 0 and bpe.mask_id is None
    text = "The game 's battle system was praised by critics ."
    words = "the battle system was praised by critics"  # WordPiece decoding re-spaces punctuation, so plain words
    assert wp.decode(wp.encode_batch([words.title()])[0]) == words
    assert bpe.decode(bpe.encode_batch([text])[0]) == text
    assert np.all(wp.word_start_table()[wp.special_ids])
