"""Config -> tokenizer and datasets (packed sequences; sentence pairs for NSP/SOP)."""
from __future__ import annotations

import sys
from pathlib import Path

from lmssl.config import Config
from lmssl.data.packing import PackedSequences, StreamingSequences, tokenize_corpus
from lmssl.data.paths import cache_dir, corpus_of
from lmssl.data.sentence_pairs import SentencePairs, tokenize_segments
from lmssl.data.tokenizer import TextTokenizer, save_tokenizer, tokenizer_path, train_tokenizer
from lmssl.errors import ConfigError

VALID_PAIRS_SEED = 0  # validation pairs do not depend on train.seed, so runs with different seeds score the same pairs


def load_tokenizer(cfg: Config) -> TextTokenizer:
    """The config's tokenizer; a missing named one is trained once from data.train and saved for reuse."""
    path = tokenizer_path(cfg.data.tokenizer)
    if path.is_file():
        return TextTokenizer.from_file(path)
    if Path(cfg.data.tokenizer).suffix == ".json" or "/" in cfg.data.tokenizer:
        raise ConfigError(f"key 'data.tokenizer': tokenizer file not found: {cfg.data.tokenizer}")
    corpus = corpus_of(cfg, "train")  # with data.valid=auto, without the held-out documents
    print(f"tokenizer '{cfg.data.tokenizer}' not found; training a {cfg.data.tokenizer_type} tokenizer "
          f"(vocab {cfg.data.tokenizer_vocab_size}) on {corpus.location} -> {path.parent}", file=sys.stderr)
    tok = train_tokenizer(cfg.data.tokenizer_type, corpus.documents(), cfg.data.tokenizer_vocab_size)
    recipe = {"type": cfg.data.tokenizer_type, "vocab_size": cfg.data.tokenizer_vocab_size,
              "corpus": str(cfg.data.train)}
    return TextTokenizer.from_file(save_tokenizer(tok, path.parent, recipe))


def sequences(cfg: Config, split: str, tokenizer: TextTokenizer, sep_id: int, prefix_id: int | None,
              streaming: bool = False) -> PackedSequences | StreamingSequences:
    """Packed sequences of `data.train` or `data.valid`."""
    corpus = corpus_of(cfg, split)
    if streaming:
        return StreamingSequences(corpus, tokenizer, sep_id, cfg.data.seq_len, prefix_id,
                                  shuffle_buffer=cfg.data.shuffle_buffer)
    tokens, doc_ends = tokenize_corpus(corpus, tokenizer, sep_id, cache_dir(cfg))
    try:
        return PackedSequences(tokens, doc_ends, cfg.data.seq_len, prefix_id)
    except ValueError as e:
        raise ConfigError(f"key 'data.{split}' ({corpus.location}): {e}") from None


def sentence_pairs(cfg: Config, split: str, tokenizer: TextTokenizer, task: str,
                   short_seq_prob: float) -> SentencePairs:
    """`[CLS] A [SEP] B [SEP]` pairs of `data.train` or `data.valid` for NSP/SOP (see lmssl.data.sentence_pairs)."""
    corpus = corpus_of(cfg, split)
    segments = tokenize_segments(corpus, tokenizer, cache_dir(cfg))
    seed = cfg.train.seed if split == "train" else VALID_PAIRS_SEED
    try:
        return SentencePairs(segments, cfg.data.seq_len, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, task,
                             short_seq_prob, seed)
    except ValueError as e:
        raise ConfigError(f"key 'data.{split}' ({corpus.location}): objective.sentence_task={task} cannot build "
                          f"sentence pairs: {e}. "
                          f"Use a corpus whose documents hold several sentences or paragraphs (data.doc_split="
                          f"{cfg.data.doc_split}; blank_line or wikitext group lines into documents), or set "
                          f"objective.sentence_task=none") from None
