"""Sentence corpora for sentence-embedding objectives (SimCSE): one example per sentence, padded batches.

A corpus is a file with one sentence per line (`line`, as SimCSE's wiki1m file), or WikiText, whose
lines are paragraphs (`wikitext`): headings and blank lines are skipped and each paragraph is cut
into sentences by a rule (`split_sentences`). `auto` picks `wikitext` when the first line is a
WikiText title. Token ids (no special tokens) are cached on disk like the packed streams of
packing.py, keyed by file, tokenizer and split rule, so a second run memory-maps them.
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
from lmssl.data.corpus import WIKITEXT_TITLE, Corpus
from lmssl.data.tokenizer import TextTokenizer

TERMINALS = {".", "!", "?"}
QUOTE = '"'
MIN_WORDS = 3  # shorter WikiText pieces are table cells and list fragments ("<unk> .", "1933"), not sentences
WIKITEXT_HEADING = re.compile(r"^=( =)* .* =( =)*$")  # '= Title =', '= = Section = =' (lines are stripped)
WIKITEXT_ESCAPE = re.compile(r" @(.)@ ")  # tokenized WikiText writes 'role @-@ playing', '1 @,@ 000', '1 @.@ 5'


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of a tokenized WikiText paragraph (words separated by spaces).

    A sentence ends at a space-separated '.', '!' or '?': in tokenized WikiText abbreviations and
    decimals stay glued ('U.S.', '1 @.@ 5'), so this rule rarely cuts inside a sentence. A '"' right
    after the terminal closes the sentence when it closes an open quotation (odd count so far);
    otherwise it opens the next one."""
    words = paragraph.split()
    sentences, current, quotes = [], [], 0
    for i, word in enumerate(words):
        current.append(word)
        quotes += word == QUOTE
        closes_quote = word == QUOTE and quotes % 2 == 0 and len(current) > 1 and current[-2] in TERMINALS
        ends = word in TERMINALS or closes_quote
        closing_quote_next = i + 1 < len(words) and words[i + 1] == QUOTE and quotes % 2 == 1
        if ends and not closing_quote_next:
            sentences.append(" ".join(current))
            current, quotes = [], 0
    if current:
        sentences.append(" ".join(current))
    return sentences


def detect_sentence_split(first_line: str) -> str:
    return "wikitext" if WIKITEXT_TITLE.match(first_line) else "line"


def iter_sentences(corpus: Corpus, split: str = "auto") -> Iterator[str]:
    """Sentences of a corpus, in order (see the module docstring for `split`)."""
    lines = dataclasses.replace(corpus, doc_split="line").documents()  # non-empty lines (rows), stripped
    first = next(lines, None)
    if first is None:
        return
    if split == "auto":
        split = detect_sentence_split(first)
    for line in _chain([first], lines):
        if split == "line":
            yield line
        elif not WIKITEXT_HEADING.match(line):
            for sentence in split_sentences(WIKITEXT_ESCAPE.sub(r"\1", line)):
                if len(sentence.split()) >= MIN_WORDS:
                    yield sentence


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest


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
                           split=split)
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
