"""Unsupervised SimCSE (Gao et al. 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings").

Each sentence is encoded twice; dropout is the only augmentation (§3), so the two views differ only
by their dropout masks. The loss is InfoNCE with in-batch negatives (eq. 1):
    l_i = -log exp(cos(h_i, h_i+) / t) / sum_j exp(cos(h_i, h_j+) / t),   t = 0.05.
Pooling follows the released code (`--pooler_type cls --mlp_only_train` for unsupervised SimCSE):
`cls` trains through an MLP (dense + tanh) on [CLS] and evaluates the raw [CLS] state;
`cls_before_pooler` uses the raw [CLS] state in both; `mean` averages the real tokens.
The model usually starts from a pretrained encoder (`model.init_from`: MLM or ELECTRA discriminator).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lmssl.config import Config, ConfigError, ObjectiveConfig, cache_dir, data_root, resolve_data_path
from lmssl.data.sentences import SentenceDataset, pad_sentences, tokenize_sentences
from lmssl.data.tokenizer import TextTokenizer
from lmssl.evaluation.sts import STS_SETS, evaluate_sts, pool
from lmssl.model.attention import AttnSpec
from lmssl.model.heads import Pooler
from lmssl.model.transformer import Transformer
from lmssl.objectives.base import Batch, Objective, Output
from lmssl.objectives.mlm import require_roles


@dataclass
class SimCSEConfig(ObjectiveConfig):
    name: str = "simcse"  # unsupervised SimCSE: contrastive sentence embeddings, dropout as augmentation
    temperature: float = 0.05  # t dividing the cosine similarities (SimCSE §3, Table D.1: 0.05)
    pooling: Literal["cls", "cls_before_pooler", "mean"] = "cls"  # cls: MLP on [CLS] while training only
    sentence_split: Literal["auto", "line", "wikitext"] = "auto"  # data.train: one sentence per line, or WikiText paragraphs cut into sentences; auto = wikitext when it starts with a WikiText title
    sts_eval: str = "stsb_dev"  # STS set scored every eval.every steps and at the end; best weights kept in output_dir/best ("" = none)

    def check(self, cfg: Config, check) -> None:
        check(self.temperature > 0, "objective.temperature", "must be positive")
        check(self.sts_eval in ("", *STS_SETS), "objective.sts_eval", f"choose one of {', '.join(STS_SETS)} or ''")
        check(cfg.model.dropout > 0 or cfg.model.attention_dropout > 0, "model.dropout",
              "must be > 0: dropout is SimCSE's only augmentation (with none, both views are identical)")
        check(not cfg.data.streaming, "data.streaming", "simcse holds its sentences in memory; set data.streaming=false")
        check(not cfg.data.valid, "data.valid", "simcse is validated on STS (objective.sts_eval), not on a text "
                                                "split; set data.valid to ''")


def gather_from_all_ranks(z: torch.Tensor) -> torch.Tensor:
    """(world * B, H): the embeddings of every rank, in rank order, so each rank's anchors see all
    ranks' sentences as negatives. `all_gather` outputs carry no gradient; the local slice is replaced
    by `z` itself so gradients flow through it (as in SimCSE's released code). Each rank then holds the
    gradient of the global loss w.r.t. its own embeddings; DDP's mean all-reduce divides the sum by the
    world size, as in the released code. Needs the same batch size on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, z.contiguous())
    parts[dist.get_rank()] = z
    return torch.cat(parts)


def contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InfoNCE over (N, H) view pairs: anchor z1[i], positive z2[i], negatives z2[j != i] (SimCSE eq. 1)."""
    sim = F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T  # (N, N) cosine similarities
    labels = torch.arange(len(z1), device=z1.device)
    loss = F.cross_entropy(sim / temperature, labels)
    positive = sim.diagonal()
    n = len(z1)
    negative = (sim.sum() - positive.sum()) / max(1, n * n - n)
    metrics = {"simcse_loss": loss.detach(), "simcse_acc": (sim.argmax(-1) == labels).float().mean(),
               "pos_cos": positive.mean().detach(), "neg_cos": negative.detach()}
    return loss, metrics


class SimCSE(Objective):
    causal = False

    def __init__(self, cfg: Config, tokenizer: TextTokenizer):
        super().__init__(cfg, tokenizer)
        require_roles(tokenizer, ("cls", "sep"), "simcse")
        self.ocfg: SimCSEConfig = cfg.objective
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self.trunk = Transformer(cfg.model)
        # SimCSE's MLPLayer on [CLS]: dense + tanh, BERT's pooler shape, freshly initialised (not a pretrained pooler)
        self.mlp = Pooler(cfg.model) if self.ocfg.pooling == "cls" else None
        self.selection_metric = f"{self.ocfg.sts_eval}_spearman" if self.ocfg.sts_eval else ""

    def sentence_pooling(self) -> str:
        return "mean" if self.ocfg.pooling == "mean" else "cls"  # the MLP is for training only

    def dataset(self, split: str, tokenizer: TextTokenizer) -> SentenceDataset:
        key = f"data.{split}"
        path = resolve_data_path(self.cfg, getattr(self.cfg.data, split), key)
        try:
            tokens, offsets = tokenize_sentences(path, tokenizer, cache_dir(self.cfg), split=self.ocfg.sentence_split,
                                                 fmt=self.cfg.data.format, text_field=self.cfg.data.text_field)
        except ValueError as e:
            raise ConfigError(f"key '{key}': {e}") from None
        return SentenceDataset(tokens, offsets, tokenizer.cls_id, tokenizer.sep_id, self.cfg.data.seq_len)

    def collate(self, examples: list[np.ndarray], generator: torch.Generator) -> Batch:
        """`[CLS] s [SEP]` examples padded into one batch; no corruption (the generator is unused)."""
        ids, mask = pad_sentences(examples, self.pad_id)
        labels = torch.arange(len(examples))  # each anchor's positive is its own second view
        return Batch(ids, AttnSpec.padded(False, mask), labels, len(examples))

    def forward(self, batch: Batch) -> Output:
        # both views in one pass: rows i and B + i are the same sentence under independent dropout masks
        mask = batch.spec.key_padding_mask.repeat(2, 1)  # (2B, T)
        hidden = self.trunk(batch.input_ids.repeat(2, 1), AttnSpec.padded(False, mask))  # (2B, T, H)
        z = pool(hidden, mask, self.sentence_pooling())  # (2B, H)
        if self.mlp is not None:
            z = self.mlp(z)
        z1, z2 = z.float().chunk(2)  # (B, H) each
        if self.training:
            z1, z2 = gather_from_all_ranks(z1), gather_from_all_ranks(z2)
        loss, metrics = contrastive_loss(z1, z2, self.ocfg.temperature)
        return Output(loss, metrics)

    def extra_eval(self) -> dict[str, float]:
        """Spearman x 100 on `objective.sts_eval` (STS-B dev by default), as SimCSE selects checkpoints."""
        if not self.ocfg.sts_eval:
            return {}
        scores = evaluate_sts(self, self.tokenizer, data_root(self.cfg), (self.ocfg.sts_eval,),
                              batch_size=self.cfg.eval.batch_size)
        return {f"{name}_spearman": value for name, value in scores.items()}
