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
`generator_predictions` + tied `generator_lm_head`), so an export is a rename. Pseudo-perplexity scores
the generator (lmssl.evaluation.pseudo_perplexity looks for `objective.generator`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmssl.config import Config, ModelConfig, ObjectiveConfig
from lmssl.data.packing import Example
from lmssl.data.tokenizer import TextTokenizer
from lmssl.model.heads import MaskedLMHead, ReplacedTokenHead
from lmssl.model.transformer import Embeddings, Transformer
from lmssl.objectives.base import IGNORE_INDEX, Batch, Objective, Output, stack_examples
from lmssl.objectives.masking import corrupt, select_positions
from lmssl.objectives.mlm import require_roles

GENERATOR_HEAD_SIZE = 64  # ELECTRA's get_generator_config: num_heads = max(1, hidden // 64)


@dataclass
class ElectraConfig(ObjectiveConfig):
    name: str = "electra"  # replaced-token detection with a small MLM generator (Clark et al. 2020)
    mask_rate: float = 0.15  # fraction of maskable tokens the generator predicts and may replace
    mask_token_prob: float = 0.85  # chosen tokens shown to the generator as [MASK] (ELECTRA's code: 85%)
    random_token_prob: float = 0.0  # chosen tokens shown as a random token; the rest stay unchanged
    generator_size: float = 0.25  # generator hidden size as a fraction of the discriminator's (§3.2: 1/4-1/2 best)
    disc_weight: float = 50.0  # lambda in L_MLM + lambda * L_Disc (§2: 50)

    def check(self, cfg: Config, check) -> None:
        check(0.0 < self.mask_rate < 1.0, "objective.mask_rate", "must be in (0, 1)")
        check(self.mask_token_prob >= 0 and self.random_token_prob >= 0, "objective.mask_token_prob", "must be >= 0")
        check(self.mask_token_prob + self.random_token_prob <= 1.0, "objective.random_token_prob",
              "mask_token_prob + random_token_prob must be <= 1")
        check(self.disc_weight > 0, "objective.disc_weight", "must be positive")
        check(0.0 < self.generator_size <= 1.0, "objective.generator_size", "must be in (0, 1]")
        g = generator_config(cfg.model, self.generator_size)
        check(g.hidden_size % g.num_heads == 0, "objective.generator_size",
              f"gives a generator of hidden size {g.hidden_size} (model.hidden_size x generator_size), which its "
              f"{g.num_heads} heads of ~{GENERATOR_HEAD_SIZE} do not divide; choose a size below "
              f"{2 * GENERATOR_HEAD_SIZE} or a multiple of {GENERATOR_HEAD_SIZE}")
        check(cfg.model.position != "rope" or (g.hidden_size // g.num_heads) % 2 == 0, "objective.generator_size",
              f"gives a generator head size of {g.hidden_size // g.num_heads}; rope needs an even one")


def generator_config(model: ModelConfig, ratio: float) -> ModelConfig:
    """The generator's trunk: the discriminator's config narrowed to round(ratio x hidden), same depth, heads
    of 64, FFN in the same proportion to hidden (4x in BERT/ELECTRA, as ELECTRA's 4 x hidden), and the
    discriminator's embedding width (the embeddings are shared)."""
    hidden = max(1, round(model.hidden_size * ratio))
    return dataclasses.replace(model, hidden_size=hidden, num_heads=max(1, hidden // GENERATOR_HEAD_SIZE),
                               ffn_size=max(1, round(model.ffn_size * hidden / model.hidden_size)),
                               embedding_size=model.embedding_size or model.hidden_size)


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
        self.mask_id = tokenizer.mask_id
        self.register_buffer("special_ids", torch.tensor(tokenizer.special_ids, dtype=torch.long), persistent=False)
        self.register_buffer("random_ids", torch.tensor(
            [i for i in range(tokenizer.vocab_size) if i not in set(tokenizer.special_ids)]), persistent=False)

    def packing_ids(self, tokenizer: TextTokenizer) -> tuple[int, int | None]:
        return tokenizer.sep_id, tokenizer.cls_id

    def collate(self, examples: list[Example], generator: torch.Generator) -> ElectraBatch:
        ids, spec = stack_examples(examples, self.causal, self.cfg.data.document_mask)
        maskable = ~torch.isin(ids, self.special_ids)
        selected = select_positions(maskable, None, self.ocfg.mask_rate, generator)
        corrupted, labels = corrupt(ids, selected, mask_id=self.mask_id, random_ids=self.random_ids,
                                    mask_prob=self.ocfg.mask_token_prob, random_prob=self.ocfg.random_token_prob,
                                    generator=generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        # num_targets = masked tokens: a fixed ~15% of the real tokens, so it also weights the
        # token-level discriminator loss and metrics in proportion under accumulation and in validation
        return ElectraBatch(corrupted, spec, labels, int(selected.sum()), sample_seed=seed)

    def forward(self, batch: Batch) -> Output:
        where = batch.labels != IGNORE_INDEX
        gen = self.generator
        gen_logits = gen.head(gen.trunk.forward_at(batch.input_ids, batch.spec, where, batch.token_type_ids)).float()
        targets = batch.labels[where]
        gen_loss = F.cross_entropy(gen_logits, targets)
        with torch.no_grad():  # §2: sampling is not differentiable; no discriminator gradient reaches the generator
            rng = torch.Generator(device=gen_logits.device).manual_seed(batch.sample_seed)
            sampled = torch.multinomial(F.softmax(gen_logits, -1), 1, generator=rng).squeeze(1)  # (num_masked,)
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
