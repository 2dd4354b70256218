"""A sequence classifier / regressor over any pretrained encoder: inputs, pooling and head.

Inputs (padded on the right, so positions are arange(T) as in pretraining):
  encoders   [CLS] A [SEP]  or  [CLS] A [SEP] B [SEP]  with token types 0 for [CLS] A [SEP], 1 for B [SEP]
             (BERT §3, Figure 2; ELECTRA and SimCSE fine-tune the same way);
  causal     <eos> A <eos>  or  <eos> A <sep> B <eos>  (GPT, Radford et al. 2018, §3.3: start token, delimiter,
             extract token; here the end-of-text token plays start and extract, as it separates documents in
             pretraining; <sep> is [SEP] where the tokenizer has one, else <eos> again).
A pair too long for `max_length` loses tokens from the end of its longer text, one at a time (BERT's
`_truncate_seq_pair`); a single text is cut at the end.

Pooling: encoders take the [CLS] state through a pooler (dense + tanh, BERT's): the pretrained one when
the checkpoint has it (MLM with next-sentence / sentence-order prediction), else a fresh one (ELECTRA's
classification head is the same shape on [CLS]). Causal models take the last real token's state (GPT's
extract token), no pooler. Then dropout and a linear layer: class logits (cross-entropy) or one score (MSE).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmssl.config import ModelConfig
from lmssl.data.tokenizer import TextTokenizer
from lmssl.model.attention import AttnSpec
from lmssl.model.heads import Pooler, classifier
from lmssl.model.transformer import Transformer
from lmssl.objectives.base import Batch, Output


def truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer list (the second on ties) until len(a) + len(b) <= budget."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b


def encode_texts(tokenizer: TextTokenizer, texts: list[tuple[str, ...]], causal: bool,
                 max_length: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token ids and token types of each example (see the module docstring for the layouts)."""
    if causal:
        start = end = tokenizer.eos_id
        middle = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    else:
        start, middle, end = tokenizer.cls_id, tokenizer.sep_id, tokenizer.sep_id
    columns = [tokenizer.encode_batch([t[i] for t in texts]) for i in range(len(texts[0]))]
    ids, types = [], []
    for row in range(len(texts)):
        if len(columns) == 1:
            a = columns[0][row][:max_length - 2]
            seq, first = [start, *a, end], len(a) + 2
        else:
            a, b = truncate_pair(columns[0][row], columns[1][row], max_length - 3)
            seq, first = [start, *a, middle, *b, end], len(a) + 2
        ids.append(np.asarray(seq, dtype=np.int64))
        types.append(np.asarray([0] * first + [1] * (len(seq) - first), dtype=np.int64))
    return ids, types


@dataclass
class TaskBatch(Batch):
    """`labels` holds the (B,) targets: class indices (long) or scores (float); num_targets = B."""
    pool_index: torch.Tensor | None = None  # (B,) position of the pooled token ([CLS] = 0, causal: the last real one)


def collate(ids: list[np.ndarray], types: list[np.ndarray], targets: torch.Tensor, pad_id: int, causal: bool,
            use_types: bool) -> TaskBatch:
    """Pad on the right to the longest example; mask the padding out of attention."""
    length = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
    type_ids = torch.zeros((len(ids), length), dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.bool)
    for row, (x, t) in enumerate(zip(ids, types)):
        input_ids[row, :len(x)] = torch.from_numpy(x)
        type_ids[row, :len(t)] = torch.from_numpy(t)
        mask[row, :len(x)] = True
    lengths = mask.sum(1)
    pool_index = lengths - 1 if causal else torch.zeros_like(lengths)
    return TaskBatch(input_ids, AttnSpec.padded(causal, mask), targets, len(ids), type_ids if use_types else None,
                     pool_index=pool_index)


def task_loss(logits: torch.Tensor, targets: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy over classes, or mean squared error of the score (BERT's STS-B head)."""
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), targets.float())
    return F.cross_entropy(logits.float(), targets)


def predictions(logits: torch.Tensor, regression: bool) -> torch.Tensor:
    return logits.squeeze(-1).float() if regression else logits.argmax(-1)


class SequenceClassifier(nn.Module):
    """encoder (the pretrained trunk) -> pooled state -> [pooler] -> dropout -> linear head."""

    def __init__(self, model_cfg: ModelConfig, causal: bool, num_outputs: int, regression: bool, use_pooler: bool):
        super().__init__()
        self.causal, self.regression = causal, regression
        self.encoder = Transformer(model_cfg)
        self.pooler = Pooler(model_cfg) if use_pooler else None
        self.dropout = nn.Dropout(model_cfg.dropout)  # BERT: hidden dropout on the pooled output
        self.head = classifier(model_cfg, num_outputs)
        self.use_types = model_cfg.type_vocab_size >= 2

    def features(self, batch: TaskBatch) -> torch.Tensor:
        """(B, H) final hidden state at each row's pooled position. Only that position goes through the last
        block's feed-forward (Transformer.forward_at; one position per row, so the rows keep their order)."""
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
