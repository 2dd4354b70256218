"""Causal language modelling (GPT): next-token loss, the shift done here, not in the data."""
from __future__ import annotations

import torch

from lmssl.config import Config
from lmssl.data.packing import Example
from lmssl.data.tokenizer import TextTokenizer
from lmssl.data.unigram import UnigramBaselines
from lmssl.interop.hf.adapter import HFAdapter, ImportPart, Target, check_gpt2_like, check_llama
from lmssl.interop.hf.rules import Rule, gpt2_trunk_rules, llama_trunk_rules
from lmssl.interop.hf.source import HFSource
from lmssl.model import flops
from lmssl.model.heads import CausalLMHead
from lmssl.model.transformer import Transformer
from lmssl.objectives.base import IGNORE_INDEX, Batch, LanguageModel, Objective, Output, require_roles, stack_examples


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

    def language_model(self) -> LanguageModel:
        return LanguageModel("causal", self.trunk, self.head)

    def baselines(self, unigram: UnigramBaselines, valid_data, evaluated: int) -> dict[str, tuple[float | None, str]]:
        return {"val_clm_acc": (unigram.top1_accuracy, "always the most frequent training token"),
                "val_clm_loss": (unigram.cross_entropy, "the training corpus's unigram model"),
                "val_ppl": (unigram.perplexity, "the unigram perplexity"),
                "val_sliding_ppl": (unigram.text_perplexity, "the unigram perplexity of the same text")}

    def train_flops(self, batch: Batch) -> dict[str, int]:
        m = self.cfg.model
        B, T = batch.input_ids.shape
        parts = flops.trunk(m, B, T)
        parts["vocab"] = flops.linear(B * T, m.hidden_size, m.vocab_size)  # every position (see forward)
        return flops.training(parts)

    def packing_ids(self, tokenizer: TextTokenizer) -> tuple[int, int | None]:
        return tokenizer.eos_id, None

    def collate(self, examples: list[Example], generator: torch.Generator) -> Batch:
        document_mask = self.cfg.data.document_mask
        ids, spec = stack_examples(examples, self.causal, document_mask)
        labels = next_token_labels(ids, [ex.doc_lengths for ex in examples] if document_mask else None)
        return Batch(ids, spec, labels, int((labels != IGNORE_INDEX).sum()))

    def forward(self, batch: Batch) -> Output:
        hidden = self.trunk(batch.input_ids, batch.spec, batch.token_type_ids)
        # every position through the fused head + loss, those without a target (a row's or a document's last) too:
        # 1 / T more work, no gather and no data-dependent shape
        loss, acc = self.head(hidden.flatten(0, 1), batch.labels.reshape(-1))
        return Output(loss, {"clm_loss": loss.detach(), "clm_acc": acc})


class CausalLMAdapter(HFAdapter):
    """GPT2LMHeadModel, or LlamaForCausalLM for the llama preset (a tied head is read from and written as the word
    embeddings); imports their base models (GPT2Model, LlamaModel) too."""
    exports = ("GPT2LMHeadModel", "LlamaForCausalLM")
    imports = ("GPT2LMHeadModel", "GPT2Model", "LlamaForCausalLM", "LlamaModel")

    def export_targets(self, cfg: Config) -> list[Target]:
        m = cfg.model
        if m.preset == "llama":
            check_llama(m, "LlamaForCausalLM")
            return [Target("", "LlamaForCausalLM", "llama", m, self._rules(cfg, "llama", "model."))]
        check_gpt2_like(m, "GPT2LMHeadModel")
        return [Target("", "GPT2LMHeadModel", "gpt2", m, self._rules(cfg, "gpt2", "transformer."))]

    def recognise(self, sources: dict[str, HFSource]) -> dict | None:
        src = sources.get("")
        return {"name": "clm"} if src is not None and src.model_type in ("gpt2", "llama") else None

    def import_parts(self, cfg: Config, sources: dict[str, HFSource]) -> list[ImportPart]:
        src = sources[""]
        return [ImportPart(src, self._rules(cfg, src.model_type, src.prefix), "clm")]

    @staticmethod
    def _rules(cfg: Config, family: str, prefix: str) -> list[Rule]:
        if family == "llama":
            word, trunk = f"{prefix}embed_tokens.weight", llama_trunk_rules(cfg.model, "trunk.", prefix)
        else:
            word, trunk = f"{prefix}wte.weight", gpt2_trunk_rules(cfg.model, "trunk.", prefix)
        return trunk + [Rule("head.proj.weight", (word if cfg.model.tie_embeddings else "lm_head.weight",))]
