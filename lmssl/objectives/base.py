"""The Objective seam: collate examples into a Batch, compute loss and metrics from it, and declare what the
objective can do for the rest of lmssl (score text, give a downstream encoder, pool a sentence).

An objective owns its trunk(s) and heads and declares whether attention is causal; the trunk never knows which
objective it serves. Code outside lmssl.objectives asks these methods, never the objective's attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from lmssl.config import Config
from lmssl.data import sequences
from lmssl.data.packing import Example
from lmssl.data.tokenizer import TextTokenizer
from lmssl.data.unigram import UnigramBaselines
from lmssl.errors import ConfigError
from lmssl.model.attention import AttnSpec
from lmssl.model.batch import IGNORE_INDEX, Batch, Output
from lmssl.model.transformer import Transformer

__all__ = ["IGNORE_INDEX", "Batch", "LanguageModel", "Objective", "Output", "require_roles", "stack_examples"]


@dataclass(frozen=True)
class LanguageModel:
    """How an objective scores text: a trunk and the head that maps its hidden states to vocabulary logits.
    `causal`: next-token (perplexity); `masked`: a masked position from both sides (pseudo-perplexity)."""
    kind: Literal["causal", "masked"]
    trunk: Transformer
    head: nn.Module


def stack_examples(examples: list[Example], causal: bool, document_mask: bool) -> tuple[torch.Tensor, AttnSpec]:
    """(B, T) ids of equal-length packed examples and their AttnSpec."""
    ids = torch.from_numpy(np.stack([ex.input_ids for ex in examples]))
    if document_mask:
        return ids, AttnSpec.packed(causal, [ex.doc_lengths for ex in examples])
    return ids, AttnSpec.dense(causal)


def require_roles(tokenizer: TextTokenizer, roles: tuple[str, ...], objective: str) -> None:
    missing = [r for r in roles if tokenizer.roles.get(r) is None]
    if missing:
        raise ConfigError(f"key 'data.tokenizer': objective '{objective}' needs the special tokens {missing} "
                          f"but {tokenizer.path} has none; use a wordpiece or unigram tokenizer")


class Objective(nn.Module):
    causal: bool = False
    # a metric the training loop maximises, keeping the best weights in output_dir/best ("" = none)
    selection_metric: str = ""

    def __init__(self, cfg: Config, tokenizer: TextTokenizer):
        super().__init__()
        self.cfg = cfg

    # --- what the objective declares ----------------------------------------------------------------------

    def language_model(self) -> LanguageModel | None:
        """The trunk and vocabulary head that score text (PPL for causal, pseudo-PPL for masked), None when the
        objective has no token distribution (then `lmssl eval ppl|pppl` refuse it)."""
        return None

    def encoder(self) -> Transformer:
        """The downstream encoder: what `model.init_from` copies, fine-tuning trains and STS embeds with."""
        return self.trunk

    def sentence_pooling(self) -> str:
        """How evaluators turn the encoder's hidden states into one sentence vector by default: 'cls' (the [CLS]
        position) or 'mean' (over real tokens). A causal model has no [CLS]."""
        return "mean" if self.causal else "cls"

    def normalizes_embeddings(self) -> bool:
        """Whether the model's sentence embeddings are scaled to unit length (sentence-transformers' Normalize)."""
        return False

    def pretrained_pooler(self) -> nn.Module | None:
        """A pretrained pooler (dense + tanh on [CLS], BERT's) that fine-tuning may start from, or None."""
        return None

    def baselines(self, unigram: UnigramBaselines, valid_data, evaluated: int) -> dict[str, tuple[float | None, str]]:
        """The final validation metrics a model must beat to have learned anything: metric -> (value, what it is),
        from the training corpus's unigram model (lmssl.data.unigram) or the majority class of the `evaluated`
        first examples of `valid_data` (those validation scores); value None where it was not scored."""
        return {}

    def train_flops(self, batch: Batch) -> dict[str, int] | None:
        """The matmul FLOPs of a training step (forward + backward) on this collated micro-batch, part by part
        (lmssl.model.flops), or None when the objective does not count them (then train.max_flops is refused)."""
        return None

    def sts_sets(self) -> tuple[str, ...]:
        """STS sets the training loop scores every eval.every steps and at the end (logged as <set>_spearman)."""
        return ()

    # --- what the training loop calls ---------------------------------------------------------------------

    def dataset(self, split: str, tokenizer: TextTokenizer):
        """The examples of `data.train` / `data.valid` that `collate` understands: packed sequences by default."""
        sep_id, prefix_id = self.packing_ids(tokenizer)
        return sequences(self.cfg, split, tokenizer, sep_id, prefix_id,
                         streaming=self.cfg.data.streaming and split == "train")

    def packing_ids(self, tokenizer: TextTokenizer) -> tuple[int, int | None]:
        """(separator appended to each document, prefix of each sequence or None)."""
        raise NotImplementedError

    def collate(self, examples: list[Example], generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def forward(self, batch: Batch) -> Output:
        raise NotImplementedError
