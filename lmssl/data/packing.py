"""Tokenized corpora packed into fixed-length sequences with document boundaries kept.

The corpus is one token stream, each document followed by a separator (`[SEP]` / `<|endoftext|>`),
plus the offsets where documents end. A sequence is `prefix + stream[i*L:(i+1)*L]` (the prefix is
`[CLS]` for encoders, nothing for causal models) and carries `doc_lengths`, the lengths of the
document pieces it contains, so attention can stop at document edges.

`tokenize_corpus` caches the stream on disk, keyed by the file and tokenizer contents: a second run
memory-maps it instead of re-tokenizing. `StreamingSequences` does the same packing on the fly for
corpora larger than memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from lmssl.data.cache import cached_arrays, encode_in_chunks, stream_dtype
from lmssl.data.corpus import Corpus
from lmssl.data.tokenizer import TextTokenizer


@dataclass
class Example:
    input_ids: np.ndarray  # (T,) token ids
    doc_lengths: list[int]  # lengths of the document pieces, summing to T


def _pieces(length: int, ends: np.ndarray) -> list[int]:
    """Lengths of the pieces of [0, length) cut after each relative end offset in `ends`."""
    cuts = [0, *[int(e) for e in ends if 0 < e < length], length]
    return [b - a for a, b in zip(cuts, cuts[1:])]


def make_example(chunk: np.ndarray, ends: np.ndarray, prefix_id: int | None) -> Example:
    pieces = _pieces(len(chunk), ends)
    if prefix_id is None:
        return Example(chunk.astype(np.int64), pieces)
    pieces[0] += 1
    return Example(np.concatenate([[prefix_id], chunk]).astype(np.int64), pieces)


class PackedSequences:
    """Random-access packed sequences over a cached token stream."""

    def __init__(self, tokens: np.ndarray, doc_ends: np.ndarray, seq_len: int, prefix_id: int | None):
        self.tokens, self.doc_ends, self.prefix_id = tokens, doc_ends, prefix_id
        self.chunk = seq_len - (prefix_id is not None)
        if len(tokens) < self.chunk:
            raise ValueError(f"the corpus has {len(tokens)} tokens, fewer than one sequence of {seq_len}")

    def __len__(self) -> int:
        return len(self.tokens) // self.chunk  # the incomplete tail is dropped

    def __getitem__(self, i: int) -> Example:
        start, stop = i * self.chunk, (i + 1) * self.chunk
        lo, hi = np.searchsorted(self.doc_ends, [start, stop], side="right")
        return make_example(np.asarray(self.tokens[start:stop]), self.doc_ends[lo:hi] - start, self.prefix_id)


def separated(tokenizer: TextTokenizer, docs, sep_id: int) -> Iterator[list[int]]:
    """Token ids of each document followed by the separator."""
    return (ids + [sep_id] for _, ids in encode_in_chunks(tokenizer, docs))


def tokenize_corpus(corpus: Corpus, tokenizer: TextTokenizer, sep_id: int,
                    cache_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, doc_ends) of a corpus, from the cache when the same corpus was tokenized the same way."""

    def build():
        chunks, ends, total = [], [], 0
        with tqdm(desc=f"tokenizing {corpus.label}", unit=" docs", leave=False) as bar:
            for ids in separated(tokenizer, corpus.documents(), sep_id):
                chunks.append(np.asarray(ids, dtype=stream_dtype(tokenizer.vocab_size)))
                total += len(ids)
                ends.append(total)
                bar.update()
        if not chunks:
            raise ValueError(f"{corpus.location}: no documents found (is the file empty?)")
        arrays = {"tokens": np.concatenate(chunks), "doc_ends": np.asarray(ends, dtype=np.int64)}
        return arrays, {"tokens": total, "documents": len(ends)}

    arrays = cached_arrays(corpus, tokenizer, cache_root, "", ("tokens", "doc_ends"), build, sep=sep_id)
    return arrays["tokens"], arrays["doc_ends"]


class StreamingSequences:
    """Packed sequences read, tokenized and shuffled on the fly (bounded memory).

    With shuffle_buffer=0 the order equals PackedSequences over the same corpus."""

    def __init__(self, corpus: Corpus, tokenizer: TextTokenizer, sep_id: int, seq_len: int, prefix_id: int | None,
                 *, shuffle_buffer: int = 0):
        self.corpus, self.tokenizer, self.sep_id, self.prefix_id = corpus, tokenizer, sep_id, prefix_id
        self.chunk = seq_len - (prefix_id is not None)
        self.shuffle_buffer = shuffle_buffer

    def _in_order(self) -> Iterator[Example]:
        docs = self.corpus.documents(streaming=True)
        buf: list[int] = []
        ends: list[int] = []  # document end offsets relative to the start of buf
        for ids in separated(self.tokenizer, docs, self.sep_id):
            buf.extend(ids)
            ends.append(len(buf))
            while len(buf) >= self.chunk:
                yield make_example(np.asarray(buf[:self.chunk]), np.asarray(ends), self.prefix_id)
                del buf[:self.chunk]
                ends = [e - self.chunk for e in ends if e > self.chunk]

    def iterate(self, seed: int) -> Iterator[Example]:
        if self.shuffle_buffer <= 1:
            yield from self._in_order()
            return
        rng = np.random.default_rng(seed)
        pool: list[Example] = []
        for ex in self._in_order():
            if len(pool) < self.shuffle_buffer:
                pool.append(ex)
                continue
            j = int(rng.integers(len(pool)))
            pool[j], ex = ex, pool[j]
            yield ex
        rng.shuffle(pool)
        yield from pool
