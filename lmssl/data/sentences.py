"""Sentence corpora for sentence-embedding objectives (SimCSE): one example per sentence, padded batches.

A corpus is a file with one sentence per line (`line`, as SimCSE's wiki1m file); WikiText, whose lines are
paragraphs (`wikitext`): headings and blank lines are skipped and each paragraph is cut into sentences by
WikiText's own rule; or any other text (`prose`): each document (a blank-line-separated block, a line, a row, as
data.doc_split groups them) cut by a sentence segmenter (lmssl.data.sentence_split). Pieces under MIN_WORDS words
are dropped (`wikitext`, `prose`). `auto` picks `wikitext` for WikiText, else `prose`. Token ids (no special
tokens) are cached on disk like the packed streams of packing.py, keyed by file, tokenizer and split rule, so a
second run memory-maps them.
An example is `[CLS] sentence [SEP]` truncated to `max_len` (ids as a 1-D int64 array).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from lmssl.data.cache import cached_arrays, encode_in_chunks, stream_dtype
from lmssl.data.corpus import Corpus
from lmssl.data.sentence_split import RULES, detect_rule, split_prose, split_wikitext
from lmssl.data.tokenizer import TextTokenizer

MIN_WORDS = 3  # shorter pieces are table cells, list fragments and headings ("<unk> .", "1933", "CHAPTER I")
WIKITEXT_HEADING = re.compile(r"^=( =)* .* =( =)*$")  # '= Title =', '= = Section = =' (lines are stripped)
WIKITEXT_ESCAPE = re.compile(r" @(.)@ ")  # tokenized WikiText writes 'role @-@ playing', '1 @,@ 000', '1 @.@ 5'
SPLITS = ("auto", "line", *RULES)
SENTENCES_VERSION = 2  # part of the cache key: bump when iter_sentences changes (2: prose; auto is wikitext or prose)


def resolve_split(corpus: Corpus, split: str) -> str:
    """`auto` as the rule it stands for (lmssl.data.sentence_split.detect_rule); other values as given."""
    return detect_rule(corpus) if split == "auto" else split


def iter_sentences(corpus: Corpus, split: str = "auto") -> Iterator[str]:
    """Sentences of a corpus, in order (see the module docstring for `split`)."""
    split = resolve_split(corpus, split)
    if split == "prose":
        for document in corpus.documents():
            yield from (s for s in split_prose(document) if len(s.split()) >= MIN_WORDS)
        return
    for line in dataclasses.replace(corpus, doc_split="line").documents():  # non-empty lines (rows), stripped
        if split == "line":
            yield line
        elif not WIKITEXT_HEADING.match(line):
            for sentence in split_wikitext(WIKITEXT_ESCAPE.sub(r"\1", line)):
                if len(sentence.split()) >= MIN_WORDS:
                    yield sentence


def tokenize_sentences(corpus: Corpus, tokenizer: TextTokenizer, cache_root: Path, *,
                       split: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets): sentence i is tokens[offsets[i]:offsets[i+1]], from the cache when possible.
    Sentences that tokenize to nothing are dropped."""

    def build():
        chunks, offsets, total = [], [0], 0
        with tqdm(desc=f"tokenizing sentences of {corpus.label}", unit=" sentences", leave=False) as bar:
            for _, ids in encode_in_chunks(tokenizer, iter_sentences(corpus, split)):
                bar.update()
                if ids:
                    chunks.append(np.asarray(ids, dtype=stream_dtype(tokenizer.vocab_size)))
                    total += len(ids)
                    offsets.append(total)
        if len(offsets) == 1:
            raise ValueError(f"{corpus.location}: no sentences found (is the file empty?)")
        arrays = {"tokens": np.concatenate(chunks), "offsets": np.asarray(offsets, dtype=np.int64)}
        return arrays, {"tokens": total, "sentences": len(offsets) - 1}

    arrays = cached_arrays(corpus, tokenizer, cache_root, "sentences", ("tokens", "offsets"), build, kind="sentences",
                           split=split, version=SENTENCES_VERSION)
    return arrays["tokens"], arrays["offsets"]


def with_specials(ids, cls_id: int, sep_id: int, max_len: int) -> np.ndarray:
    """`[CLS] ids [SEP]`, the sentence truncated so the whole fits in `max_len` tokens."""
    body = np.asarray(ids[:max_len - 2], dtype=np.int64)
    return np.concatenate([[cls_id], body, [sep_id]]).astype(np.int64)


class SentenceDataset:
    """Random-access `[CLS] sentence [SEP]` examples over cached token ids (a map-style dataset)."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, cls_id: int, sep_id: int, max_len: int):
        self.tokens, self.offsets = tokens, offsets
        self.cls_id, self.sep_id, self.max_len = cls_id, sep_id, max_len

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return with_specials(self.tokens[self.offsets[i]:self.offsets[i + 1]], self.cls_id, self.sep_id, self.max_len)


def pad_sentences(examples: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids padded on the right to the longest example, and the (B, T) mask, True at real tokens
    (for `AttnSpec.padded`)."""
    length = max(len(ex) for ex in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(examples), length, dtype=torch.bool)
    for row, ex in enumerate(examples):
        ids[row, :len(ex)] = torch.from_numpy(np.asarray(ex, dtype=np.int64))
        mask[row, :len(ex)] = True
    return ids, mask
