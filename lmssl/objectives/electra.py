"""ELECTRA: replaced-token detection (Clark et al. 2020, "ELECTRA: Pre-training Text Encoders as
Discriminators Rather Than Generators").

A small generator (a masked LM) fills masked positions with tokens sampled from its own distribution;
the discriminator, the model kept for downstream tasks, labels every token original or replaced:
    loss = L_MLM(generator) + disc_weight * L_Disc,   disc_weight = 50 (§2).
  - masking as ELECTRA's code (pretrain_helpers.mask): 15% of the non-special tokens, 85% of them
    shown as [MASK] and 15% unchanged; the generator predicts all of them (sparse prediction);
  - the replacements are sampled without gradient (§2: the discriminator loss is not back-propagated
    into the generator); a sampled token equal to the original counts as original (§2);
  - the generator is the discriminator's trunk made narrower (§3.2: 1/4 to 1/2 of its width works
    best): hidden = generator_size x hidden, same depth, heads of 64 (at least one), the FFN scaled as
    the hidden size; it shares the discriminator's embeddings (§3.1: token and position embeddings;
    here the whole Embeddings module, token types and LayerNorm too, as the released code), and its
    embed_proj maps the shared embedding width to its own hidden size;
  - the discriminator loss is a mean over every real token, [CLS]/[SEP] included, as in the code.
Parameter names follow HF: `trunk` + `head` ~ ElectraForPreTraining (`electra`,
`discriminator_predictions`), `generator.trunk` + `generator.head` ~ ElectraForMaskedLM (`electra`,
`generator_predictions` + tied `generator_lm_head`), so an export is a rename. The generator is the
objective's language model (pseudo-perplexity scores it); the discriminator is its downstream encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmssl.config import Config, ElectraConfig, ModelConfig, generator_config
from lmssl.data.packing import Example
from lmssl.data.tokenizer import TextTokenizer
from lmssl.data.unigram import UnigramBaselines
from lmssl.errors import ConfigError
from lmssl.interop.hf.adapter import HFAdapter, ImportPart, Target, check_bert_like, electra_generator_target
from lmssl.interop.hf.rules import Rule, bert_trunk_rules, copy_rules
from lmssl.interop.hf.source import HFSource
from lmssl.model import flops
from lmssl.model.heads import MaskedLMHead, ReplacedTokenHead
from lmssl.model.transformer import Embeddings, Transformer
from lmssl.objectives.base import IGNORE_INDEX, Batch, LanguageModel, Objective, Output, require_roles, stack_examples
from lmssl.objectives.masking import TokenCorruption


def replaced_token_inputs(input_ids: torch.Tensor, labels: torch.Tensor,
                          sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(discriminator input, is_replaced) from the generator's masked input, the MLM labels (original token at
    masked positions, IGNORE_INDEX elsewhere) and the tokens sampled there (in flat order of the masked
    positions). ELECTRA §2: a sampled token equal to the original counts as original."""
    where = labels != IGNORE_INDEX
    original = torch.where(where, labels, input_ids)
    disc_ids = original.clone()
    disc_ids[where] = sampled
    return disc_ids, disc_ids != original


def binary_auc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """ROC AUC of `scores` for the bool labels `positive`, by the Mann-Whitney U statistic: the chance that a
    random positive outscores a random negative, ties counting half (tied scores share their average rank).
    0.5 when a class is absent. ELECTRA's code logs it as disc_auc: unlike precision/recall at p = 0.5 it shows
    a discriminator ranking replaced tokens higher long before any of them crosses the threshold."""
    n_pos = positive.sum().double()
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.tensor(0.5, device=scores.device)
    _, inverse, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # 1-based rank of the last copy of each distinct score
    ranks = (last - (counts - 1) / 2.0)[inverse]  # average rank of each score
    return ((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).float()


@dataclass
class ElectraBatch(Batch):
    sample_seed: int = 0  # seeds the generator's sampling, drawn in collate: a batch is redrawn exactly on resume


class Generator(nn.Module):
    """ELECTRA's generator: a narrow masked LM on the shared embeddings, its decoder tied to them."""

    def __init__(self, cfg: ModelConfig, embeddings: Embeddings):
        super().__init__()
        self.trunk = Transformer(cfg, embeddings=embeddings)
        self.head = MaskedLMHead(cfg, self.trunk.word_embeddings)


class Electra(Objective):
    causal = False

    def __init__(self, cfg: Config, tokenizer: TextTokenizer):
        super().__init__(cfg, tokenizer)
        require_roles(tokenizer, ("cls", "sep", "mask"), "electra")
        self.ocfg: ElectraConfig = cfg.objective
        self.trunk = Transformer(cfg.model)  # the discriminator: the downstream model (Objective.encoder)
        self.head = ReplacedTokenHead(cfg.model)
        # built second: Transformer's init redraws the shared embeddings, from the same distribution
        self.generator = Generator(generator_config(cfg.model, self.ocfg.generator_size), self.trunk.embeddings)
        self.corruption = TokenCorruption(tokenizer, self.ocfg)

    def language_model(self) -> LanguageModel:
        return LanguageModel("masked", self.generator.trunk, self.generator.head)  # the discriminator has no LM

    def baselines(self, unigram: UnigramBaselines, valid_data, evaluated: int) -> dict[str, tuple[float | None, str]]:
        return {"val_gen_acc": (unigram.top1_accuracy, "always the most frequent training token"),
                "val_gen_loss": (unigram.cross_entropy, "the training corpus's unigram model"),
                "val_disc_auc": (0.5, "chance (logits that do not rank replaced tokens higher)")}

    def train_flops(self, batch: Batch) -> dict[str, int]:
        m, g = self.cfg.model, self.generator.trunk.cfg
        where = batch.labels != IGNORE_INDEX
        B, T = where.shape
        n, width = int(where.sum()), self.generator.head.decoder.in_features
        gen = flops.trunk(g, B, T, flops.LastBlockRows.of(where, g.attention_dropout > 0))
        gen["vocab"] = flops.linear(n, g.hidden_size, width) + flops.linear(n, width, m.vocab_size)
        disc = flops.trunk(m, B, T)
        disc["head"] = flops.linear(B * T, m.hidden_size, m.hidden_size) + flops.linear(B * T, m.hidden_size, 1)
        return flops.training({**{f"generator.{k}": v for k, v in gen.items()},
                               **{f"discriminator.{k}": v for k, v in disc.items()}})

    def packing_ids(self, tokenizer: TextTokenizer) -> tuple[int, int | None]:
        return tokenizer.sep_id, tokenizer.cls_id

    def collate(self, examples: list[Example], generator: torch.Generator) -> ElectraBatch:
        ids, spec = stack_examples(examples, self.causal, self.cfg.data.document_mask)
        corrupted, labels, masked = self.corruption(ids, generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        # num_targets = masked tokens: a fixed ~15% of the real tokens, so it also weights the
        # token-level discriminator loss and metrics in proportion under accumulation and in validation
        return ElectraBatch(corrupted, spec, labels, masked, sample_seed=seed)

    def forward(self, batch: Batch) -> Output:
        where = batch.labels != IGNORE_INDEX
        gen = self.generator
        gen_logits = gen.head(gen.trunk.forward_at(batch.input_ids, batch.spec, where, batch.token_type_ids)).float()
        targets = batch.labels[where]
        gen_loss = F.cross_entropy(gen_logits, targets)
        with torch.no_grad():  # §2: sampling is not differentiable; no discriminator gradient reaches the generator
            rng = torch.Generator(device=gen_logits.device).manual_seed(batch.sample_seed)
            probs = F.softmax(gen_logits, -1)
            # a diverged generator's non-finite rows sample uniformly: its NaN loss then reaches the skip guard
            probs = torch.where(torch.isfinite(probs).all(-1, keepdim=True), probs, torch.ones_like(probs))
            sampled = torch.multinomial(probs, 1, generator=rng).squeeze(1)  # (num_masked,)
            disc_ids, replaced = replaced_token_inputs(batch.input_ids, batch.labels, sampled)
        logits = self.head(self.trunk(disc_ids, batch.spec, batch.token_type_ids)).float()  # (B, T)
        real = batch.spec.key_padding_mask if batch.spec.key_padding_mask is not None else torch.ones_like(where)
        logits, replaced = logits[real], replaced[real].float()
        disc_loss = F.binary_cross_entropy_with_logits(logits, replaced)
        with torch.no_grad():
            predicted = (logits > 0).float()
            hits = (predicted * replaced).sum()
            metrics = {
                "gen_loss": gen_loss.detach(),
                "gen_acc": (gen_logits.argmax(-1) == targets).float().mean(),
                "gen_sampled_acc": (sampled == targets).float().mean(),  # ELECTRA's sampled_masked_lm_accuracy
                "disc_loss": disc_loss.detach(),
                "disc_acc": (predicted == replaced).float().mean(),
                # on replaced tokens; an empty denominator counts as 0 (nothing predicted / nothing replaced)
                "disc_precision": hits / predicted.sum().clamp(min=1),
                "disc_recall": hits / replaced.sum().clamp(min=1),
                "disc_auc": binary_auc(logits, replaced.bool()),  # a mean over batches in validation
            }
        return Output(gen_loss + self.ocfg.disc_weight * disc_loss, metrics)


class ElectraAdapter(HFAdapter):
    """discriminator/ (ElectraForPreTraining) + generator/ (ElectraForMaskedLM); imports the pair, or a
    discriminator alone (the generator then stays freshly initialised)."""
    exports = ("ElectraForPreTraining", "ElectraForMaskedLM")
    imports = exports

    def export_targets(self, cfg: Config) -> list[Target]:
        m = cfg.model
        check_bert_like(m, "ElectraForPreTraining", factorised_ok=True)
        generator = generator_config(m, cfg.objective.generator_size)
        return [Target("discriminator", "ElectraForPreTraining", "electra", m, self._discriminator(m, "electra.")),
                electra_generator_target(generator, "generator.", "generator")]

    def recognise(self, sources: dict[str, HFSource]) -> dict | None:
        if set(sources) == {"discriminator", "generator"}:
            disc, gen = sources["discriminator"], sources["generator"]
            return {"name": "electra", "generator_size": generator_size(disc, gen)}
        src = sources.get("")
        if src is not None and src.model_type == "electra" and src.has("discriminator_predictions.dense.weight"):
            return {"name": "electra"}
        return None

    def trunk_source(self, sources: dict[str, HFSource]) -> HFSource:
        return sources.get("", sources.get("discriminator"))

    def import_parts(self, cfg: Config, sources: dict[str, HFSource]) -> list[ImportPart]:
        disc = self.trunk_source(sources)
        parts = [ImportPart(disc, self._discriminator(cfg.model, disc.prefix), "electra")]
        if "generator" in sources:
            gen = sources["generator"]
            check_shared_embeddings(disc, gen)  # lmssl's ELECTRA shares one embedding module
            g = generator_config(cfg.model, cfg.objective.generator_size)
            parts.append(ImportPart(gen, electra_generator_target(g, "generator.", "generator").rules,
                                    "ElectraForMaskedLM"))
        return parts

    def import_notes(self, cfg: Config, sources: dict[str, HFSource]) -> list[str]:
        if "generator" in sources:
            return []
        return [f"{sources[''].directory} holds the ELECTRA discriminator only; the generator is freshly initialised"]

    @staticmethod
    def _discriminator(m: ModelConfig, prefix: str) -> list[Rule]:
        return (bert_trunk_rules(m, "trunk.", prefix) + copy_rules("head.dense", "discriminator_predictions.dense")
                + copy_rules("head.dense_prediction", "discriminator_predictions.dense_prediction"))


def generator_size(disc: HFSource, gen: HFSource) -> float:
    """objective.generator_size of an imported pair; the generator must have the shape lmssl derives from it."""
    ratio = gen.model["hidden_size"] / disc.model["hidden_size"]
    derived = generator_config(ModelConfig(**disc.model), ratio)
    for key in ("hidden_size", "num_heads", "ffn_size", "num_layers", "embedding_size"):
        want = gen.model[key] if key != "embedding_size" else (gen.model[key] or gen.model["hidden_size"])
        if getattr(derived, key) != want:
            raise ConfigError(f"{gen.directory}: the generator's {key} is {want}, but lmssl derives "
                              f"{getattr(derived, key)} from the discriminator (objective.generator_size={ratio:g}: "
                              f"same depth, heads of 64, FFN in proportion); import the discriminator directory "
                              f"alone instead")
    return ratio


def check_shared_embeddings(disc: HFSource, gen: HFSource) -> None:
    for key in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        for suffix in ("weight", "bias"):
            k = f"{disc.prefix}embeddings.{key}.{suffix}"
            kg = f"{gen.prefix}embeddings.{key}.{suffix}"
            if k in disc.tensors and kg in gen.tensors and not torch.equal(disc.tensors[k], gen.tensors[kg]):
                raise ConfigError(f"{gen.directory}: {kg} differs from the discriminator's; lmssl's ELECTRA shares "
                                  f"one embedding module, so the pair cannot be imported together")
