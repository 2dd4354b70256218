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

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from lmssl.data.corpus import iter_documents
from lmssl.data.tokenizer import TextTokenizer

ENCODE_CHUNK = 1000  # documents per encode_batch call


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


def _stream_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def encode_documents(docs, tokenizer: TextTokenizer, sep_id: int) -> Iterator[list[int]]:
    """Token ids of each document followed by the separator, encoded in chunks."""
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == ENCODE_CHUNK:
            yield from (ids + [sep_id] for ids in tokenizer.encode_batch(batch))
            batch = []
    if batch:
        yield from (ids + [sep_id] for ids in tokenizer.encode_batch(batch))


def cache_key(path: Path, tokenizer: TextTokenizer, **options) -> str:
    st = path.stat()
    ident = json.dumps({"path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns,
                        "tokenizer": tokenizer.fingerprint(), **options}, sort_keys=True)
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def tokenize_corpus(path: Path, tokenizer: TextTokenizer, sep_id: int, cache_root: Path, *, fmt: str = "auto",
                    doc_split: str = "auto", text_field: str = "text") -> tuple[np.ndarray, np.ndarray]:
    """(tokens, doc_ends) of a corpus, from the cache when the same file was tokenized the same way."""
    key = cache_key(path, tokenizer, sep=sep_id, fmt=fmt, doc_split=doc_split, text_field=text_field)
    target = cache_root / f"{path.stem}-{key}"
    if not (target / "meta.json").exists():
        chunks, ends, total = [], [], 0
        docs = iter_documents(path, fmt, doc_split, text_field)
        bar = tqdm(desc=f"tokenizing {path.name}", unit=" docs", leave=False)
        for ids in encode_documents(docs, tokenizer, sep_id):
            chunks.append(np.asarray(ids, dtype=_stream_dtype(tokenizer.vocab_size)))
            total += len(ids)
            ends.append(total)
            bar.update()
        bar.close()
        if not chunks:
            raise ValueError(f"{path}: no documents found (is the file empty?)")
        save_cache(target, {"tokens": np.concatenate(chunks), "doc_ends": np.asarray(ends, dtype=np.int64)},
                   {"source": str(path), "tokens": total, "documents": len(ends)})
    return np.load(target / "tokens.npy", mmap_mode="r"), np.load(target / "doc_ends.npy")


def save_cache(target: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write `NAME.npy` for each array plus meta.json into a temporary directory renamed to `target`,
    so a reader never sees a half-written cache entry (meta.json marks a complete one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", array)
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)


class StreamingSequences:
    """Packed sequences read, tokenized and shuffled on the fly (bounded memory).

    With shuffle_buffer=0 the order equals PackedSequences over the same corpus."""

    def __init__(self, path: Path, tokenizer: TextTokenizer, sep_id: int, seq_len: int, prefix_id: int | None, *,
                 fmt: str = "auto", doc_split: str = "auto", text_field: str = "text", shuffle_buffer: int = 0):
        self.path, self.tokenizer, self.sep_id, self.prefix_id = path, tokenizer, sep_id, prefix_id
        self.chunk = seq_len - (prefix_id is not None)
        self.options = dict(fmt=fmt, doc_split=doc_split, text_field=text_field)
        self.shuffle_buffer = shuffle_buffer

    def _in_order(self) -> Iterator[Example]:
        docs = iter_documents(self.path, streaming=True, **self.options)
        buf: list[int] = []
        ends: list[int] = []  # document end offsets relative to the start of buf
        for ids in encode_documents(docs, self.tokenizer, self.sep_id):
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
