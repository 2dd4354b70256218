"""A sequence classifier / regressor over a pretrained encoder (fine-tuning, probing, fine-tuned models).

Encoders pool the [CLS] state through a pooler (model.pooler: BERT's dense + tanh, or ModernBERT's dense +
activation + norm): the pretrained one when the checkpoint has it (MLM with next-sentence / sentence-order
prediction), else a fresh one (ELECTRA's classification head is the same shape on [CLS]). Causal models take
the last real token's state (GPT's extract token), no pooler. `mean_pooling` instead averages the real tokens'
final states, no pooler (sentence-transformers' and mean-pooled SimCSE's sentence vector). Then dropout and a
linear layer: class logits (cross-entropy) or one score (MSE).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmssl.config import ModelConfig
from lmssl.model.batch import Batch, Output
from lmssl.model.heads import Pooler, classifier
from lmssl.model.pooling import pool
from lmssl.model.transformer import Transformer


@dataclass
class TaskBatch(Batch):
    """`labels` holds the (B,) targets: class indices (long) or scores (float); num_targets = B."""
    pool_index: torch.Tensor | None = None  # (B,) position of the pooled token ([CLS] = 0, causal: the last real one)


def task_loss(logits: torch.Tensor, targets: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy over classes, or mean squared error of the score (BERT's STS-B head)."""
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), targets.float())
    return F.cross_entropy(logits.float(), targets)


def predictions(logits: torch.Tensor, regression: bool) -> torch.Tensor:
    return logits.squeeze(-1).float() if regression else logits.argmax(-1)


class SequenceClassifier(nn.Module):
    """encoder (the pretrained trunk) -> pooled state -> [pooler] -> dropout -> linear head."""

    def __init__(self, model_cfg: ModelConfig, causal: bool, num_outputs: int, regression: bool, use_pooler: bool,
                 mean_pooling: bool = False):
        super().__init__()
        if mean_pooling and use_pooler:
            raise ValueError("a mean-pooled classifier has no pooler")
        self.causal, self.regression, self.mean_pooling = causal, regression, mean_pooling
        self.encoder = Transformer(model_cfg)
        self.pooler = Pooler(model_cfg) if use_pooler else None
        self.dropout = nn.Dropout(model_cfg.dropout)  # BERT: hidden dropout on the pooled output
        # a causal model without biases has a bias-free head (Llama's score layer); GPT-2's bias is folded on export
        self.head = classifier(model_cfg, num_outputs, bias=model_cfg.bias or not causal)
        self.use_types = model_cfg.type_vocab_size >= 2

    def features(self, batch: TaskBatch) -> torch.Tensor:
        """(B, H) final hidden state at each row's pooled position. Only that position goes through the last
        block's feed-forward (Transformer.forward_at; one position per row, so the rows keep their order). With
        mean pooling: the mean of every real token's final state."""
        if self.mean_pooling:
            hidden = self.encoder(batch.input_ids, batch.spec, batch.token_type_ids)  # (B, T, H)
            return pool(hidden, batch.spec.key_padding_mask, "mean")
        where = torch.zeros_like(batch.input_ids, dtype=torch.bool)
        where[torch.arange(len(where), device=where.device), batch.pool_index] = True
        return self.encoder.forward_at(batch.input_ids, batch.spec, where, batch.token_type_ids)

    def pooled(self, batch: TaskBatch) -> torch.Tensor:
        features = self.features(batch)
        return self.pooler(features) if self.pooler is not None else features

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        """(B, classes) logits, or (B, 1) scores."""
        return self.head(self.dropout(self.pooled(batch)))

    def forward(self, batch: TaskBatch) -> Output:
        return Output(task_loss(self.logits(batch), batch.labels, self.regression))
