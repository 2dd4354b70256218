"""Masked language modelling (BERT) with sparse prediction: only masked positions reach the vocabulary.

With `sentence_task` BERT's second loss is added: next-sentence prediction (Devlin et al. 2019, §3.1
"Task #2"), or ALBERT's sentence-order prediction (Lan et al. 2020, §4.1), a 2-way classifier on the
pooled [CLS] state of `[CLS] A [SEP] B [SEP]` pairs (lmssl.data.pairs). loss = MLM + sentence loss,
both means, as BERT's `total_loss`. The pooler and classifier are named as HF BertForPreTraining's
`bert.pooler.dense` and `cls.seq_relationship`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from lmssl.config import Config, ConfigError, ObjectiveConfig
from lmssl.data import sentence_pairs
from lmssl.data.packing import Example
from lmssl.data.pairs import PairExample
from lmssl.data.tokenizer import TextTokenizer
from lmssl.model.attention import AttnSpec
from lmssl.model.heads import MaskedLMHead, Pooler, classifier
from lmssl.model.transformer import Transformer
from lmssl.objectives.base import IGNORE_INDEX, Batch, Objective, Output, stack_examples
from lmssl.objectives.masking import corrupt, select_positions


@dataclass
class MLMConfig(ObjectiveConfig):
    name: str = "mlm"  # masked language modelling
    mask_rate: float = 0.15  # fraction of maskable tokens chosen for prediction
    mask_token_prob: float = 0.8  # chosen tokens replaced by [MASK]
    random_token_prob: float = 0.1  # chosen tokens replaced by a random token; the rest stay unchanged
    whole_word: bool = False  # choose all sub-word pieces of a word together
    sentence_task: Literal["none", "nsp", "sop"] = "none"  # second loss on [CLS] pairs: next-sentence (BERT) or sentence-order (ALBERT) prediction
    short_seq_prob: float = 0.1  # with a sentence task: share of documents whose pairs aim at a random shorter length (BERT)

    def check(self, cfg: Config, check) -> None:
        check(0.0 < self.mask_rate < 1.0, "objective.mask_rate", "must be in (0, 1)")
        check(self.mask_token_prob >= 0 and self.random_token_prob >= 0, "objective.mask_token_prob", "must be >= 0")
        check(self.mask_token_prob + self.random_token_prob <= 1.0, "objective.random_token_prob",
              "mask_token_prob + random_token_prob must be <= 1")
        check(0.0 <= self.short_seq_prob <= 1.0, "objective.short_seq_prob", "must be in [0, 1]")
        if self.sentence_task != "none":
            task = f"objective.sentence_task={self.sentence_task}"
            check(cfg.model.type_vocab_size >= 2, "model.type_vocab_size",
                  f"{task} needs 2 token types (segments A and B), got {cfg.model.type_vocab_size}")
            check(not cfg.data.streaming, "data.streaming", f"{task} builds its pairs from the cached corpus; set "
                                                            f"data.streaming=false or objective.sentence_task=none")
            check(cfg.data.seq_len >= 5, "data.seq_len", f"{task} needs at least 5 tokens: [CLS] A [SEP] B [SEP]")


def require_roles(tokenizer: TextTokenizer, roles: tuple[str, ...], objective: str) -> None:
    missing = [r for r in roles if tokenizer.roles.get(r) is None]
    if missing:
        raise ConfigError(f"key 'data.tokenizer': objective '{objective}' needs the special tokens {missing} "
                          f"but {tokenizer.path} has none; use a wordpiece or unigram tokenizer")


@dataclass
class PairBatch(Batch):
    sentence_labels: torch.Tensor | None = None  # (B,) 1 = random next (NSP) / swapped (SOP), 0 = in order


def stack_pairs(examples: list[PairExample], document_mask: bool) -> tuple[torch.Tensor, AttnSpec, torch.Tensor, torch.Tensor]:
    """(B, T) ids, AttnSpec, (B, T) token types and (B,) labels of padded sentence pairs. The padding is
    kept out of attention by a key-padding mask, or with data.document_mask by the packed layout (each
    example's padding is a document of its own): the two give the real tokens the same outputs."""
    ids = torch.from_numpy(np.stack([ex.input_ids for ex in examples]))
    types = torch.from_numpy(np.stack([ex.token_type_ids for ex in examples]))
    labels = torch.tensor([ex.label for ex in examples], dtype=torch.long)
    real = torch.tensor([ex.doc_lengths[0] for ex in examples])
    if document_mask:
        spec = AttnSpec.packed(False, [ex.doc_lengths for ex in examples])
    elif bool((real == ids.shape[1]).all()):
        spec = AttnSpec.dense(False)
    else:
        spec = AttnSpec.padded(False, torch.arange(ids.shape[1]) < real[:, None])
    return ids, spec, types, labels


class MaskedLM(Objective):
    causal = False

    def __init__(self, cfg: Config, tokenizer: TextTokenizer):
        super().__init__(cfg, tokenizer)
        self.ocfg: MLMConfig = cfg.objective
        self.sentence_task = self.ocfg.sentence_task
        pairs = self.sentence_task != "none"
        require_roles(tokenizer, ("cls", "sep", "mask") + (("pad",) if pairs else ()), "mlm")
        self.trunk = Transformer(cfg.model)
        self.head = MaskedLMHead(cfg.model, self.trunk.word_embeddings)
        if pairs:  # BERT's pooler and NSP classifier (HF BertForPreTraining: bert.pooler, cls.seq_relationship)
            self.pooler = Pooler(cfg.model)
            self.seq_relationship = classifier(cfg.model, 2)
        self.mask_id = tokenizer.mask_id
        special = torch.tensor(tokenizer.special_ids, dtype=torch.long)
        self.register_buffer("special_ids", special, persistent=False)
        self.register_buffer("random_ids", torch.tensor(
            [i for i in range(tokenizer.vocab_size) if i not in set(tokenizer.special_ids)]), persistent=False)
        self.register_buffer("word_start", torch.from_numpy(tokenizer.word_start_table()), persistent=False)

    def packing_ids(self, tokenizer: TextTokenizer) -> tuple[int, int | None]:
        return tokenizer.sep_id, tokenizer.cls_id

    def dataset(self, split: str, tokenizer: TextTokenizer):
        """Packed sequences, or with a sentence task `[CLS] A [SEP] B [SEP]` pairs (lmssl.data.pairs)."""
        if self.sentence_task == "none":
            return super().dataset(split, tokenizer)
        return sentence_pairs(self.cfg, split, tokenizer, self.sentence_task, self.ocfg.short_seq_prob)

    def collate(self, examples: list[Example], generator: torch.Generator) -> Batch:
        pairs = self.sentence_task != "none"
        if pairs:
            if not all(isinstance(ex, PairExample) for ex in examples):
                raise TypeError(f"objective.sentence_task={self.sentence_task} needs sentence-pair examples "
                                f"(MaskedLM.dataset), not packed sequences")
            ids, spec, types, sentence_labels = stack_pairs(examples, self.cfg.data.document_mask)
        else:
            ids, spec = stack_examples(examples, self.causal, self.cfg.data.document_mask)
        maskable = ~torch.isin(ids, self.special_ids)  # special tokens and padding are never masked
        word_start = self.word_start[ids] if self.ocfg.whole_word else None
        selected = select_positions(maskable, word_start, self.ocfg.mask_rate, generator)
        corrupted, labels = corrupt(ids, selected, mask_id=self.mask_id, random_ids=self.random_ids,
                                    mask_prob=self.ocfg.mask_token_prob, random_prob=self.ocfg.random_token_prob,
                                    generator=generator)
        if pairs:
            # num_targets (masked tokens) also weights the sentence loss under accumulation and in validation:
            # ~15% of each pair's tokens, so proportional to the pairs up to their lengths
            return PairBatch(corrupted, spec, labels, int(selected.sum()), types, sentence_labels)
        return Batch(corrupted, spec, labels, int(selected.sum()))

    def forward(self, batch: Batch) -> Output:
        where = batch.labels != IGNORE_INDEX
        if self.sentence_task == "none":
            # == trunk(...)[where]; the last block only computes the masked rows
            hidden = self.trunk.forward_at(batch.input_ids, batch.spec, where, batch.token_type_ids)
            return self._mlm(hidden, batch.labels[where])
        cls = torch.zeros_like(where)
        cls[:, 0] = True  # [CLS] is never masked, so the rows below are disjoint
        rows = where | cls
        hidden = self.trunk.forward_at(batch.input_ids, batch.spec, rows, batch.token_type_ids)  # (rows, H), flat order
        is_cls = cls[rows]
        out = self._mlm(hidden[~is_cls], batch.labels[where])
        logits = self.seq_relationship(self.pooler(hidden[is_cls])).float()  # (B, 2)
        sentence_loss = F.cross_entropy(logits, batch.sentence_labels)
        acc = (logits.argmax(-1) == batch.sentence_labels).float().mean()
        task = self.sentence_task
        return Output(out.loss + sentence_loss,
                      {**out.metrics, f"{task}_loss": sentence_loss.detach(), f"{task}_acc": acc})

    def _mlm(self, hidden: torch.Tensor, targets: torch.Tensor) -> Output:
        logits = self.head(hidden).float()  # (num_masked, V): sparse prediction
        loss = F.cross_entropy(logits, targets)
        acc = (logits.argmax(-1) == targets).float().mean()
        return Output(loss, {"mlm_loss": loss.detach(), "mlm_acc": acc})
