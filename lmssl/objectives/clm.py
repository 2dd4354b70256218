"""Causal language modelling (GPT): next-token loss, the shift done here, not in the data."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmssl.config import Config, ObjectiveConfig
from lmssl.data.packing import Example
from lmssl.data.tokenizer import TextTokenizer
from lmssl.model.heads import CausalLMHead
from lmssl.model.transformer import Transformer
from lmssl.objectives.base import IGNORE_INDEX, Batch, Objective, Output, stack_examples
from lmssl.objectives.mlm import require_roles


@dataclass
class CLMConfig(ObjectiveConfig):
    name: str = "clm"  # causal (next-token) language modelling

    def check(self, cfg: Config, check) -> None:
        check(not cfg.model.tie_embeddings or cfg.model.embedding_size in (0, cfg.model.hidden_size),
              "model.embedding_size", "a tied causal LM head needs embedding_size == hidden_size (or 0)")


def next_token_labels(ids: torch.Tensor, doc_lengths: list[list[int]] | None) -> torch.Tensor:
    """labels[t] = ids[t+1]. With document lengths, the last token of a document does not predict
    the first token of the next one (it cannot see that document anyway)."""
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    if doc_lengths is not None:
        for row, lengths in enumerate(doc_lengths):
            ends = torch.cumsum(torch.tensor(lengths), 0) - 1
            labels[row, ends] = IGNORE_INDEX
    return labels


class CausalLM(Objective):
    causal = True

    def __init__(self, cfg: Config, tokenizer: TextTokenizer):
        super().__init__(cfg, tokenizer)
        require_roles(tokenizer, ("eos",), "clm")
        self.trunk = Transformer(cfg.model)
        self.head = CausalLMHead(cfg.model, self.trunk.word_embeddings)

    def packing_ids(self, tokenizer: TextTokenizer) -> tuple[int, int | None]:
        return tokenizer.eos_id, None

    def collate(self, examples: list[Example], generator: torch.Generator) -> Batch:
        document_mask = self.cfg.data.document_mask
        ids, spec = stack_examples(examples, self.causal, document_mask)
        labels = next_token_labels(ids, [ex.doc_lengths for ex in examples] if document_mask else None)
        return Batch(ids, spec, labels, int((labels != IGNORE_INDEX).sum()))

    def forward(self, batch: Batch) -> Output:
        hidden = self.trunk(batch.input_ids, batch.spec, batch.token_type_ids)
        where = batch.labels != IGNORE_INDEX
        logits = self.head(hidden[where]).float()  # (targets, V)
        targets = batch.labels[where]
        loss = F.cross_entropy(logits, targets)
        acc = (logits.argmax(-1) == targets).float().mean()
        return Output(loss, {"clm_loss": loss.detach(), "clm_acc": acc})
