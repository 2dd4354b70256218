"""Masked language modelling (BERT) with sparse prediction: only masked positions reach the vocabulary.

With `sentence_task` BERT's second loss is added: next-sentence prediction (Devlin et al. 2019, §3.1
"Task #2"), or ALBERT's sentence-order prediction (Lan et al. 2020, §4.1), a 2-way classifier on the
pooled [CLS] state of `[CLS] A [SEP] B [SEP]` pairs (lmssl.data.sentence_pairs). loss = MLM + sentence loss,
both means, as BERT's `total_loss`. The pooler and classifier are named as HF BertForPreTraining's
`bert.pooler.dense` and `cls.seq_relationship`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmssl.config import Config, MLMConfig, ModelConfig
from lmssl.data import sentence_pairs
from lmssl.data.packing import Example
from lmssl.data.sentence_pairs import PairExample
from lmssl.data.tokenizer import TextTokenizer
from lmssl.data.unigram import UnigramBaselines
from lmssl.interop.hf.adapter import (
    HFAdapter,
    ImportPart,
    Target,
    check_bert_like,
    check_blocks,
    check_modernbert,
    electra_generator_target,
    refuse,
)
from lmssl.interop.hf.rules import (
    Rule,
    bert_trunk_rules,
    copy_rules,
    masked_lm_head_rules,
    modernbert_head_rules,
    modernbert_trunk_rules,
)
from lmssl.interop.hf.source import HFSource
from lmssl.model import flops
from lmssl.model.attention import AttnSpec
from lmssl.model.heads import MaskedLMHead, Pooler, classifier
from lmssl.model.transformer import Transformer
from lmssl.objectives.base import IGNORE_INDEX, Batch, LanguageModel, Objective, Output, require_roles, stack_examples
from lmssl.objectives.masking import TokenCorruption


@dataclass
class PairBatch(Batch):
    sentence_labels: torch.Tensor | None = None  # (B,) 1 = random next (NSP) / swapped (SOP), 0 = in order


def stack_pairs(examples: list[PairExample],
                document_mask: bool) -> tuple[torch.Tensor, AttnSpec, torch.Tensor, torch.Tensor]:
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
        self.corruption = TokenCorruption(tokenizer, self.ocfg, whole_word=self.ocfg.whole_word)

    def language_model(self) -> LanguageModel:
        return LanguageModel("masked", self.trunk, self.head)

    def pretrained_pooler(self) -> nn.Module | None:
        return self.pooler if self.sentence_task != "none" else None

    def baselines(self, unigram: UnigramBaselines, valid_data, evaluated: int) -> dict[str, tuple[float | None, str]]:
        found = {"val_mlm_acc": (unigram.top1_accuracy, "always the most frequent training token"),
                 "val_mlm_loss": (unigram.cross_entropy, "the training corpus's unigram model"),
                 "val_pppl": (unigram.text_perplexity, "the unigram perplexity of the same text")}
        if self.sentence_task != "none":
            share = float(np.mean(valid_data.labels[:evaluated]))
            found[f"val_{self.sentence_task}_acc"] = (max(share, 1 - share), "always the majority label of the "
                                                      "scored pairs (about half)")
        return found

    def train_flops(self, batch: Batch) -> dict[str, int]:
        m = self.cfg.model
        where = batch.labels != IGNORE_INDEX
        pairs = self.sentence_task != "none"
        rows = where.clone()
        rows[:, 0] |= pairs  # the [CLS] rows for the sentence task
        B, T = where.shape
        n, width = int(where.sum()), self.head.decoder.in_features
        parts = flops.trunk(m, B, T, flops.LastBlockRows.of(rows, m.attention_dropout > 0))
        parts["vocab"] = flops.linear(n, m.hidden_size, width) + flops.linear(n, width, m.vocab_size)
        if pairs:
            parts["pooler"] = flops.linear(B, m.hidden_size, m.hidden_size) + flops.linear(B, m.hidden_size, 2)
        return flops.training(parts)

    def packing_ids(self, tokenizer: TextTokenizer) -> tuple[int, int | None]:
        return tokenizer.sep_id, tokenizer.cls_id

    def dataset(self, split: str, tokenizer: TextTokenizer):
        """Packed sequences, or with a sentence task `[CLS] A [SEP] B [SEP]` pairs (lmssl.data.sentence_pairs)."""
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
        corrupted, labels, masked = self.corruption(ids, generator)  # special tokens and padding are never masked
        if pairs:
            # num_targets (masked tokens) also weights the sentence loss under accumulation and in validation:
            # ~15% of each pair's tokens, so proportional to the pairs up to their lengths
            return PairBatch(corrupted, spec, labels, masked, types, sentence_labels)
        return Batch(corrupted, spec, labels, masked)

    def forward(self, batch: Batch) -> Output:
        where = batch.labels != IGNORE_INDEX
        if self.sentence_task == "none":
            # == trunk(...)[where]; the last block only computes the masked rows
            hidden = self.trunk.forward_at(batch.input_ids, batch.spec, where, batch.token_type_ids)
            return self._mlm(hidden, batch.labels[where])
        cls = torch.zeros_like(where)
        cls[:, 0] = True  # [CLS] is never masked, so the rows below are disjoint
        rows = where | cls
        hidden = self.trunk.forward_at(batch.input_ids, batch.spec, rows, batch.token_type_ids)  # (rows, H), flat
        is_cls = cls[rows]
        out = self._mlm(hidden[~is_cls], batch.labels[where])
        logits = self.seq_relationship(self.pooler(hidden[is_cls])).float()  # (B, 2)
        sentence_loss = F.cross_entropy(logits, batch.sentence_labels)
        acc = (logits.argmax(-1) == batch.sentence_labels).float().mean()
        task = self.sentence_task
        return Output(out.loss + sentence_loss,
                      {**out.metrics, f"{task}_loss": sentence_loss.detach(), f"{task}_acc": acc})

    def _mlm(self, hidden: torch.Tensor, targets: torch.Tensor) -> Output:
        loss, acc = self.head(hidden, targets)  # the masked rows only (sparse prediction), fused with the loss
        return Output(loss, {"mlm_loss": loss.detach(), "mlm_acc": acc})


class MaskedLMAdapter(HFAdapter):
    """BertForMaskedLM, BertForPreTraining with NSP/SOP (SOP's head has NSP's shape and label convention: 1 = not
    in order), ElectraForMaskedLM for factorised embeddings (the shape of an ELECTRA generator), and
    ModernBertForMaskedLM for the modernbert preset."""
    exports = ("BertForMaskedLM", "BertForPreTraining", "ElectraForMaskedLM", "ModernBertForMaskedLM")
    imports = exports

    def export_targets(self, cfg: Config) -> list[Target]:
        m, task = cfg.model, cfg.objective.sentence_task
        if m.preset == "modernbert":
            arch = "ModernBertForMaskedLM"
            refuse(task == "none", "objective.sentence_task", task, f"{arch} has no sentence head")
            check_modernbert(m, arch)
            return [Target("", arch, "modernbert", m, self._modernbert_rules(m, "model."))]
        if m.embedding_size not in (0, m.hidden_size):  # factorised: the ELECTRA generator's shape
            refuse(task == "none", "objective.sentence_task", task, "ElectraForMaskedLM (the only masked LM with "
                   "factorised embeddings) has no sentence head; set model.embedding_size=0 for BertForPreTraining")
            return [electra_generator_target(m, "", "")]
        arch = "BertForMaskedLM" if task == "none" else "BertForPreTraining"
        check_bert_like(m, arch)
        rules = bert_trunk_rules(m, "trunk.", "bert.") + masked_lm_head_rules(
            m, "head.", "cls.predictions", "cls.predictions.bias", "cls.predictions.decoder.weight",
            "bert.embeddings.word_embeddings.weight")
        if task != "none":
            check_blocks(m, arch, pooler="tanh")
            rules += copy_rules("pooler.dense", "bert.pooler.dense") + copy_rules("seq_relationship",
                                                                                   "cls.seq_relationship")
        return [Target("", arch, "bert", m, rules)]

    def recognise(self, sources: dict[str, HFSource]) -> dict | None:
        src = sources.get("")
        if src is None:
            return None
        if src.model_type == "bert" and src.has("cls.predictions.transform.dense.weight"):
            return {"name": "mlm", "sentence_task": "nsp" if src.has("cls.seq_relationship.weight") else "none"}
        if src.model_type == "electra" and src.has("generator_predictions.dense.weight"):
            return {"name": "mlm", "sentence_task": "none"}
        if src.model_type == "modernbert" and src.has("head.dense.weight"):
            return {"name": "mlm", "sentence_task": "none"}
        return None

    def import_parts(self, cfg: Config, sources: dict[str, HFSource]) -> list[ImportPart]:
        src = sources[""]
        if src.model_type == "electra":
            return [ImportPart(src, electra_generator_target(cfg.model, "", "").rules, "mlm")]
        if src.model_type == "modernbert":
            return [ImportPart(src, self._modernbert_rules(cfg.model, src.prefix), "mlm")]
        return [ImportPart(src, self.export_targets(cfg)[0].rules, "mlm")]

    @staticmethod
    def _modernbert_rules(m: ModelConfig, prefix: str) -> list[Rule]:
        return modernbert_trunk_rules(m, "trunk.", prefix) + modernbert_head_rules(m, "head.", prefix)
