"""Tokenize once, memory-map afterwards: the one cache every tokenized corpus (packed streams, sentence pairs'
segments, SimCSE's sentences) goes through, keyed by the corpus's contents, the tokenizer's and the options."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from lmssl.data.corpus import Corpus
from lmssl.data.tokenizer import TextTokenizer
from lmssl.storage.atomic import atomic_directory

ENCODE_CHUNK = 1000  # texts per encode_batch call
CACHE_ADVICE = ("This is the tokenization cache: free some space there, or point LMSSL_CACHE (or data.cache_dir) at a "
                "disk with room, and run it again")
T = TypeVar("T")


def stream_dtype(vocab_size: int):
    """The narrowest integer type that holds every token id (uint16 up to 65,536 tokens)."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def encode_in_chunks(tokenizer: TextTokenizer, items: Iterable[T],
                     text: Callable[[T], str] = lambda x: x) -> Iterator[tuple[T, list[int]]]:
    """(item, token ids of text(item)) for each item, in order, encoded ENCODE_CHUNK at a time."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == ENCODE_CHUNK:
            yield from zip(batch, tokenizer.encode_batch([text(x) for x in batch]))
            batch = []
    if batch:
        yield from zip(batch, tokenizer.encode_batch([text(x) for x in batch]))


def cache_key(corpus: Corpus, tokenizer: TextTokenizer, **options) -> str:
    ident = json.dumps({**corpus.identity(), "tokenizer": tokenizer.fingerprint(), **options}, sort_keys=True)
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def save_cache(target: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """`NAME.npy` for each array plus meta.json, as one directory renamed into place (meta.json marks a complete
    entry); when another process finished the same entry first, ours is dropped (both are identical). A full disk is
    one line naming the entry and where the cache can go instead."""
    with atomic_directory(target, exists="keep", advice=CACHE_ADVICE) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "meta.json").write_text(json.dumps(meta))


def cached_arrays(corpus: Corpus, tokenizer: TextTokenizer, cache_root: Path, label: str, names: tuple[str, ...],
                  build: Callable[[], tuple[dict[str, np.ndarray], dict]], **options) -> dict[str, np.ndarray]:
    """The arrays `names` tokenized from `corpus`: built by `build()` (arrays and meta) the first time, then read
    from `cache_root/<corpus label>-<label>-<key>`; `tokens` is memory-mapped."""
    key = cache_key(corpus, tokenizer, **options)
    stem = re.sub(r"[^\w.-]+", "_", corpus.label)
    target = Path(cache_root) / f"{stem}-{label + '-' if label else ''}{key}"
    if not (target / "meta.json").exists():
        arrays, meta = build()
        save_cache(target, arrays, {"source": corpus.location, "part": corpus.part, **meta})
    return {name: np.load(target / f"{name}.npy", mmap_mode="r" if name == "tokens" else None) for name in names}
