"""The unigram model of a training corpus, scored on held-out tokens: the floor a language model must beat
(the accuracy of always predicting its most frequent token, its cross-entropy)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class Unigram:
    """Add-one smoothed token frequencies of a training corpus, special tokens ([CLS], [SEP], [PAD], ...) left out:
    no loss is taken on them."""

    def __init__(self, train_tokens: np.ndarray, vocab_size: int, special: list[int]):
        self.vocab_size, self.special = vocab_size, special
        counts = self._counts(train_tokens)
        self.most_frequent = int(counts.argmax())
        p = (counts + 1.0) / (counts.sum() + vocab_size - len(special))
        p[special] = 1.0  # never scored; keeps the log finite
        self.log_p = np.log(p)

    def _counts(self, tokens: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=self.vocab_size).astype(np.float64)
        counts[self.special] = 0.0
        return counts

    def top1_accuracy(self, tokens: np.ndarray) -> float:
        """Share of the (non-special) tokens equal to the most frequent training token."""
        counts = self._counts(tokens)
        return float(counts[self.most_frequent] / max(counts.sum(), 1.0))

    def cross_entropy(self, tokens: np.ndarray) -> float:
        """Mean -log p(token) over the (non-special) tokens, in nats."""
        counts = self._counts(tokens)
        return float(-(counts * self.log_p).sum() / max(counts.sum(), 1.0))


@dataclass(frozen=True)
class UnigramBaselines:
    """A training corpus's unigram model scored on the texts a run's final validation scores."""
    top1_accuracy: float  # data.valid tokens equal to the most frequent training token
    cross_entropy: float  # nats per data.valid token
    text_cross_entropy: float | None  # nats per token of the text PPL / pseudo-PPL scores; None when none is scored

    @property
    def perplexity(self) -> float:
        return math.exp(self.cross_entropy)

    @property
    def text_perplexity(self) -> float | None:
        return None if self.text_cross_entropy is None else math.exp(self.text_cross_entropy)

    @staticmethod
    def of(model: Unigram, valid_tokens: np.ndarray, text_tokens: np.ndarray | None) -> "UnigramBaselines":
        return UnigramBaselines(model.top1_accuracy(valid_tokens), model.cross_entropy(valid_tokens),
                                None if text_tokens is None else model.cross_entropy(text_tokens))
