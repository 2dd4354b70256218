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

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lmssl.config import Config, SimCSEConfig
from lmssl.data.paths import cache_dir, corpus_of
from lmssl.data.sentences import SentenceDataset, pad_sentences, tokenize_sentences
from lmssl.data.tokenizer import TextTokenizer
from lmssl.errors import ConfigError
from lmssl.interop.hf.adapter import (
    NORMALIZE_MODULE,
    HFAdapter,
    ImportPart,
    Target,
    check_bert_like,
    check_blocks,
    sentence_transformers_files,
)
from lmssl.interop.hf.rules import Rule, bert_trunk_rules, copy_rules
from lmssl.interop.hf.source import HFSource, read_json
from lmssl.model import flops
from lmssl.model.attention import AttnSpec
from lmssl.model.heads import Pooler
from lmssl.model.pooling import pool
from lmssl.model.transformer import Transformer
from lmssl.objectives.base import Batch, Objective, Output, require_roles


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


def contrastive_loss(z1: torch.Tensor, z2: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self.trunk = Transformer(cfg.model)
        # SimCSE's MLPLayer on [CLS]: dense + tanh, BERT's pooler shape, freshly initialised (not a pretrained pooler);
        # with keep_pooler an imported pooler, kept frozen and unused so that an export writes it back
        self.mlp = Pooler(cfg.model) if self.ocfg.pooling == "cls" or self.ocfg.keep_pooler else None
        if self.mlp is not None and self.ocfg.pooling != "cls":
            self.mlp.requires_grad_(False)
        self.selection_metric = f"{self.ocfg.sts_eval}_spearman" if self.ocfg.sts_eval else ""

    def sentence_pooling(self) -> str:
        return "mean" if self.ocfg.pooling == "mean" else "cls"  # the MLP is for training only

    def normalizes_embeddings(self) -> bool:
        return self.ocfg.normalize

    def sts_sets(self) -> tuple[str, ...]:
        """SimCSE selects checkpoints on STS-B dev Spearman (objective.sts_eval)."""
        return (self.ocfg.sts_eval,) if self.ocfg.sts_eval else ()

    def train_flops(self, batch: Batch) -> dict[str, int]:
        m, H = self.cfg.model, self.cfg.model.hidden_size
        B, T = batch.input_ids.shape
        parts = flops.trunk(m, 2 * B, T)  # both views
        if self.ocfg.pooling == "cls":
            parts["pooler"] = flops.linear(2 * B, H, H)
        parts["similarity"] = flops.linear(B, H, B)  # in-batch cosine similarities (this process's negatives)
        return flops.training(parts)

    def dataset(self, split: str, tokenizer: TextTokenizer) -> SentenceDataset:
        try:
            tokens, offsets = tokenize_sentences(corpus_of(self.cfg, split), tokenizer, cache_dir(self.cfg),
                                                 split=self.ocfg.sentence_split)
        except ValueError as e:
            raise ConfigError(f"key 'data.{split}': {e}") from None
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
        if self.ocfg.pooling == "cls":
            z = self.mlp(z)
        z1, z2 = z.float().chunk(2)  # (B, H) each
        if self.training:
            z1, z2 = gather_from_all_ranks(z1), gather_from_all_ranks(z2)
        loss, metrics = contrastive_loss(z1, z2, self.ocfg.temperature)
        return Output(loss, metrics)


class SimCSEAdapter(HFAdapter):
    """BertModel, with the training MLP stored as BERT's pooler (as SimCSE's released checkpoints) and
    sentence-transformers pooling files; imports any BERT/ELECTRA encoder (heads it has are ignored)."""
    exports = ("BertModel",)
    imports = ("BertModel", "ElectraModel", "any BERT/ELECTRA encoder")
    fallback = True
    import_data = {"valid": ""}  # validated on STS, not on a text split

    def export_targets(self, cfg: Config) -> list[Target]:
        check_bert_like(cfg.model, "BertModel")
        if cfg.objective.pooling == "cls" or cfg.objective.keep_pooler:  # becomes BERT's dense + tanh pooler
            check_blocks(cfg.model, "BertModel", pooler="tanh")
        return [Target("", "BertModel", "bert", cfg.model, self._rules(cfg, ""))]

    def extra_files(self, cfg: Config, target: Target) -> dict[str, str]:
        return sentence_transformers_files(cfg.objective.pooling, target.model, cfg.data.seq_len,
                                           cfg.objective.normalize)

    def recognise(self, sources: dict[str, HFSource]) -> dict | None:
        src = sources.get("")
        if src is None or src.model_type not in ("bert", "electra"):
            return None
        pooling_file = src.directory / "1_Pooling" / "config.json"
        mean = pooling_file.is_file() and read_json(pooling_file).get("pooling_mode_mean_tokens", False)
        has_pooler = src.has(f"{src.prefix}pooler.dense.weight")
        pooling = "mean" if mean else ("cls" if has_pooler and src.model_type == "bert" else "cls_before_pooler")
        modules_file = src.directory / "modules.json"
        modules = read_json(modules_file, list) if modules_file.is_file() else []
        normalize = any(isinstance(m, dict) and m.get("type") == NORMALIZE_MODULE for m in modules)
        keep_pooler = has_pooler and src.model_type == "bert" and pooling != "cls"  # nothing of it lost
        return {"name": "simcse", "pooling": pooling, "keep_pooler": keep_pooler, "normalize": normalize}

    def import_parts(self, cfg: Config, sources: dict[str, HFSource]) -> list[ImportPart]:
        src = sources[""]
        return [ImportPart(src, self._rules(cfg, src.prefix), "simcse")]

    @staticmethod
    def _rules(cfg: Config, prefix: str) -> list[Rule]:
        rules = bert_trunk_rules(cfg.model, "trunk.", prefix)
        if cfg.objective.pooling == "cls" or cfg.objective.keep_pooler:  # the training MLP / kept pooler <-> BERT's
            rules += copy_rules("mlp.dense", f"{prefix}pooler.dense")
        return rules

