"""The evaluator that fits an objective: PPL for a causal language model, pseudo-PPL for a masked one (as the
objective declares with `Objective.language_model()`), on texts, and on data.valid during training."""
from __future__ import annotations

import numpy as np

from lmssl.config import Config
from lmssl.data.paths import corpus_of
from lmssl.errors import ConfigError
from lmssl.evaluation import perplexity, pseudo_perplexity
from lmssl.evaluation.text import NonFiniteScore, default_window, read_documents

KINDS = {"causal": "ppl", "masked": "pppl"}


def likelihood_kind(objective) -> str | None:
    """'ppl' for a causal LM, 'pppl' for a masked LM, None for objectives without a token distribution."""
    lm = objective.language_model()
    return None if lm is None else KINDS[lm.kind]


def evaluate_text(objective, tokenizer, cfg: Config, documents: list[str], *, max_length: int = 0, stride: int = 0,
                  batch_size: int = 16, batch_tokens: int = 8192, word_l2r: bool = False,
                  progress: bool = False) -> dict:
    """PPL of a causal objective or pseudo-PPL of a masked one, with default windows (training length, half stride)."""
    kind = likelihood_kind(objective)
    if kind is None:
        raise ConfigError(f"objective '{cfg.objective.name}' has no language model (Objective.language_model() is "
                          f"None): neither PPL nor pseudo-PPL applies (checkpoints of 'clm' and 'mlm' do)")
    if kind == "ppl":
        max_length, stride = default_window(cfg, "ppl", max_length, stride)
        return perplexity.perplexity(objective, tokenizer, documents, max_length=max_length, stride=stride,
                                     batch_size=batch_size, progress=progress)
    max_length, stride = default_window(cfg, "pppl", max_length, stride)
    return pseudo_perplexity.pseudo_perplexity(objective, tokenizer, documents, max_length=max_length, stride=stride,
                                               batch_tokens=batch_tokens, word_l2r=word_l2r, progress=progress)[0]


# keys logged to metrics.jsonl by training (`val_ppl` there is exp(val_loss) on packed sequences, a different thing)
VALIDATION_KEYS = {"ppl": "val_sliding_ppl", "word_ppl": "val_word_ppl", "bits_per_byte": "val_bits_per_byte",
                   "pppl": "val_pppl", "word_pppl": "val_word_pppl", "tokens": "val_likelihood_tokens"}


class ValidationLikelihood:
    """During training: PPL (causal) or pseudo-PPL (masked) on the first `eval.likelihood_max_words` words of
    data.valid, read once; each call scores the objective's current weights (in eval mode, fp32)."""

    @classmethod
    def create(cls, cfg: Config, tokenizer, objective) -> "ValidationLikelihood | None":
        """None when it is off (eval.likelihood_max_words=0), there is no data.valid, or the objective has no
        language model."""
        if not (cfg.data.valid and cfg.eval.likelihood_max_words and likelihood_kind(objective)):
            return None
        return cls(cfg, tokenizer)

    def __init__(self, cfg: Config, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.documents = read_documents(corpus_of(cfg, "valid"), cfg.eval.likelihood_max_words)

    def tokens(self) -> np.ndarray:
        """The token ids it scores (for the unigram baseline of the same text)."""
        return np.concatenate([np.asarray(ids, dtype=np.int64) for ids in self.tokenizer.encode_batch(self.documents)])

    def __call__(self, objective) -> dict[str, float]:
        was_training = objective.training
        try:
            result = evaluate_text(objective.eval(), self.tokenizer, self.cfg, self.documents)
        except NonFiniteScore:  # a diverging run logs NaN here; its loss guard decides whether it goes on
            result = {k: float("nan") for k in VALIDATION_KEYS}
        finally:
            objective.train(was_training)
        return {VALIDATION_KEYS[k]: v for k, v in result.items() if k in VALIDATION_KEYS}
