"""Output heads. Objectives own them; the trunk never sees labels."""
from __future__ import annotations

import torch
import torch.nn as nn

from lmssl.config import ModelConfig
from lmssl.model.fused_loss import projected_cross_entropy
from lmssl.model.layers import activation_fn, norm_layer


class MaskedLMHead(nn.Module):
    """BERT's (and ModernBERT's) prediction head: dense -> activation -> norm -> (tied) decoder + bias.
    Works at `embedding_size` so factorised embeddings (ELECTRA generator) tie too."""

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        width = word_embeddings.embedding_dim
        self.dense = nn.Linear(cfg.hidden_size, width, bias=cfg.bias)
        self.act = activation_fn(cfg.activation)
        self.norm = norm_layer(cfg, width)
        self.decoder = nn.Linear(width, cfg.vocab_size)  # a bias whatever model.bias says, as BERT and ModernBERT
        if cfg.tie_embeddings:
            self.decoder.weight = word_embeddings.weight
        else:
            nn.init.normal_(self.decoder.weight, std=cfg.init_std)
        nn.init.normal_(self.dense.weight, std=cfg.init_std)
        if self.dense.bias is not None:
            nn.init.zeros_(self.dense.bias)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None):
        """hidden (..., H) -> logits (..., V). Call it on the gathered masked positions only. With targets (N,) for
        hidden (N, H): (mean cross-entropy, accuracy), fused (lmssl.model.fused_loss: no (N, V) logits)."""
        x = self.norm(self.act(self.dense(hidden)))
        return self.decoder(x) if targets is None else projected_cross_entropy(self.decoder, x, targets)


class CausalLMHead(nn.Module):
    """GPT-2's head: a bias-free projection, tied to the input embeddings."""

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.proj = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.proj.weight = word_embeddings.weight
        else:
            nn.init.normal_(self.proj.weight, std=cfg.init_std)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None):
        """hidden (..., H) -> logits (..., V); with targets (N,) for hidden (N, H): (mean cross-entropy over the
        targets that are not IGNORE_INDEX, accuracy), fused (lmssl.model.fused_loss: no (N, V) logits)."""
        return self.proj(hidden) if targets is None else projected_cross_entropy(self.proj, hidden, targets)


class Pooler(nn.Module):
    """The pooler of the [CLS] hidden state, as model.pooler says: BERT's (Devlin et al. 2019, §3) dense + tanh,
    named as HF's BertPooler (`bert.pooler.dense`), or ModernBERT's ModernBertPredictionHead, dense + activation +
    norm (`head.dense`, `head.norm`), so an export is a rename."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias or cfg.pooler == "tanh")
        self.act = torch.tanh if cfg.pooler == "tanh" else activation_fn(cfg.activation)
        self.norm = norm_layer(cfg, cfg.hidden_size) if cfg.pooler == "head" else None
        nn.init.normal_(self.dense.weight, std=cfg.init_std)
        if self.dense.bias is not None:
            nn.init.zeros_(self.dense.bias)

    def forward(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        """(B, H) [CLS] states -> (B, H) pooled."""
        pooled = self.act(self.dense(cls_hidden))
        return self.norm(pooled) if self.norm is not None else pooled


def classifier(cfg: ModelConfig, num_outputs: int, bias: bool = True) -> nn.Linear:
    """A linear layer from the hidden size, initialised as BERT's (normal(init_std) weights, zero bias):
    BERT's `cls.seq_relationship` (2 outputs for NSP/SOP)."""
    layer = nn.Linear(cfg.hidden_size, num_outputs, bias=bias)
    nn.init.normal_(layer.weight, std=cfg.init_std)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class ReplacedTokenHead(nn.Module):
    """ELECTRA's discriminator head (Clark et al. 2020, §2): dense -> activation -> dense to one logit per
    token, "was this token replaced?". Named as HF's ElectraDiscriminatorPredictions."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation_fn(cfg.activation)
        self.dense_prediction = classifier(cfg, 1)
        nn.init.normal_(self.dense.weight, std=cfg.init_std)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., H) -> logits (...)."""
        return self.dense_prediction(self.act(self.dense(hidden))).squeeze(-1)
