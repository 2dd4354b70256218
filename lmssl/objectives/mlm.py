"""Masked language modelling (BERT) with sparse prediction: only masked positions reach the vocabulary."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmssl.config import Config, ConfigError, ObjectiveConfig
from lmssl.data.packing import Example
from lmssl.data.tokenizer import TextTokenizer
from lmssl.model.heads import MaskedLMHead
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

    def check(self, cfg: Config, check) -> None:
        check(0.0 < self.mask_rate < 1.0, "objective.mask_rate", "must be in (0, 1)")
        check(self.mask_token_prob >= 0 and self.random_token_prob >= 0, "objective.mask_token_prob", "must be >= 0")
        check(self.mask_token_prob + self.random_token_prob <= 1.0, "objective.random_token_prob",
              "mask_token_prob + random_token_prob must be <= 1")


def require_roles(tokenizer: TextTokenizer, roles: tuple[str, ...], objective: str) -> None:
    missing = [r for r in roles if tokenizer.roles.get(r) is None]
    if missing:
        raise ConfigError(f"key 'data.tokenizer': objective '{objective}' needs the special tokens {missing} "
                          f"but {tokenizer.path} has none; use a wordpiece or unigram tokenizer")


class MaskedLM(Objective):
    causal = False

    def __init__(self, cfg: Config, tokenizer: TextTokenizer):
        super().__init__(cfg, tokenizer)
        require_roles(tokenizer, ("cls", "sep", "mask"), "mlm")
        self.ocfg: MLMConfig = cfg.objective
        self.trunk = Transformer(cfg.model)
        self.head = MaskedLMHead(cfg.model, self.trunk.word_embeddings)
        self.mask_id = tokenizer.mask_id
        special = torch.tensor(tokenizer.special_ids, dtype=torch.long)
        self.register_buffer("special_ids", special, persistent=False)
        self.register_buffer("random_ids", torch.tensor(
            [i for i in range(tokenizer.vocab_size) if i not in set(tokenizer.special_ids)]), persistent=False)
        self.register_buffer("word_start", torch.from_numpy(tokenizer.word_start_table()), persistent=False)

    def packing_ids(self, tokenizer: TextTokenizer) -> tuple[int, int | None]:
        return tokenizer.sep_id, tokenizer.cls_id

    def collate(self, examples: list[Example], generator: torch.Generator) -> Batch:
        ids, spec = stack_examples(examples, self.causal, self.cfg.data.document_mask)
        maskable = ~torch.isin(ids, self.special_ids)  # special tokens and padding are never masked
        word_start = self.word_start[ids] if self.ocfg.whole_word else None
        selected = select_positions(maskable, word_start, self.ocfg.mask_rate, generator)
        corrupted, labels = corrupt(ids, selected, mask_id=self.mask_id, random_ids=self.random_ids,
                                    mask_prob=self.ocfg.mask_token_prob, random_prob=self.ocfg.random_token_prob,
                                    generator=generator)
        return Batch(corrupted, spec, labels, int(selected.sum()))

    def forward(self, batch: Batch) -> Output:
        where = batch.labels != IGNORE_INDEX
        # == trunk(...)[where]; the last block only computes the masked rows
        hidden = self.trunk.forward_at(batch.input_ids, batch.spec, where, batch.token_type_ids)
        logits = self.head(hidden).float()  # (num_masked, V): sparse prediction
        targets = batch.labels[where]
        loss = F.cross_entropy(logits, targets)
        acc = (logits.argmax(-1) == targets).float().mean()
        return Output(loss, {"mlm_loss": loss.detach(), "mlm_acc": acc})
