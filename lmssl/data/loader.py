"""A resumable sequence loader: its position is a small dict saved in every checkpoint.

Map-style data (anything with __len__ and __getitem__: packed sequences, sentences): each epoch is
a permutation seeded by (seed, epoch); the position is (epoch, examples consumed). Streaming data: the
position is the count consumed in the epoch, and resuming fast-forwards the stream to it. Either way a
resumed run sees the same sequences.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterator, Sequence

import numpy as np

from lmssl.data.packing import Example, PackedSequences, StreamingSequences

FINGERPRINT_SAMPLES = 64  # sequences hashed into the data's fingerprint


def example_bytes(example) -> bytes:
    """The contents of one sequence (an array, or a dataclass of arrays and numbers) as bytes, for hashing."""
    if isinstance(example, np.ndarray):
        return np.ascontiguousarray(example, dtype=np.int64).tobytes()
    if dataclasses.is_dataclass(example):
        return b"|".join(example_bytes(getattr(example, f.name)) for f in dataclasses.fields(example))
    return repr(example).encode()


class SequenceLoader:
    def __init__(self, data: PackedSequences | StreamingSequences | Sequence, batch_size: int, seed: int,
                 shuffle: bool = True):
        self.data, self.batch_size, self.seed, self.shuffle = data, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None
        self._stream: Iterator[Example] | None = None
        self._fingerprint: str | None = None
        if not isinstance(data, StreamingSequences) and len(data) < batch_size:
            raise ValueError(f"only {len(data)} sequences, fewer than one batch of {batch_size}")

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "position": self.position}
        return {**state, "data": self.fingerprint()} if self.fingerprint() is not None else state

    def fingerprint(self) -> str | None:
        """A hash of the number of sequences and of FINGERPRINT_SAMPLES of them spread over the data: a resume on
        another corpus (reshuffled, edited, of the same size or not) would otherwise go on silently from the saved
        position. None for streaming data (reading it to hash would cost a pass over the shuffle buffer)."""
        if isinstance(self.data, StreamingSequences):
            return None
        if self._fingerprint is None:
            n = len(self.data)
            digest = hashlib.sha1(str(n).encode())
            for i in np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_SAMPLES)).astype(np.int64)):
                digest.update(example_bytes(self.data[int(i)]))
            self._fingerprint = digest.hexdigest()[:20]
        return self._fingerprint

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order, self._stream = None, None

    def _epoch_seed(self) -> int:
        return self.seed * 1_000_003 + self.epoch

    def next_batch(self) -> list[Example]:
        if isinstance(self.data, StreamingSequences):
            return self._next_streaming()
        if self.position + self.batch_size > len(self.data):
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self._order is None:
            n = len(self.data)
            self._order = np.random.default_rng(self._epoch_seed()).permutation(n) if self.shuffle else np.arange(n)
        idx = self._order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return [self.data[int(i)] for i in idx]

    def _next_streaming(self) -> list[Example]:
        batch: list[Example] = []
        while len(batch) < self.batch_size:
            if self._stream is None:
                self._stream = self.data.iterate(self._epoch_seed())
                for _ in range(self.position):  # fast-forward to the saved position
                    next(self._stream)
            try:
                batch.append(next(self._stream))
                self.position += 1
            except StopIteration:
                if self.position == 0:
                    raise ValueError(f"{self.data.path}: the stream holds no complete sequence") from None
                self.epoch, self.position, self._stream = self.epoch + 1, 0, None
        return batch


def iterate_in_order(data: PackedSequences, batch_size: int, max_batches: int = 0) -> Iterator[list[Example]]:
    """Validation batches: every sequence once, in order (the last batch may be smaller)."""
    n = len(data)
    if max_batches:
        n = min(n, max_batches * batch_size)
    for start in range(0, n, batch_size):
        yield [data[i] for i in range(start, min(n, start + batch_size))]
