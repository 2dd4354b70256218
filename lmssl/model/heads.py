"""Output heads. Objectives own them; the trunk never sees labels."""
from __future__ import annotations

import torch
import torch.nn as nn

from lmssl.config import ModelConfig
from lmssl.model.transformer import activation_fn


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense -> activation -> LayerNorm -> (tied) decoder + bias.
    Works at `embedding_size` so factorised embeddings (ELECTRA generator) tie too."""

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        width = word_embeddings.embedding_dim
        self.dense = nn.Linear(cfg.hidden_size, width)
        self.act = activation_fn(cfg.activation)
        self.norm = nn.LayerNorm(width, eps=cfg.norm_eps)
        self.decoder = nn.Linear(width, cfg.vocab_size)
        if cfg.tie_embeddings:
            self.decoder.weight = word_embeddings.weight
        else:
            nn.init.normal_(self.decoder.weight, std=cfg.init_std)
        nn.init.normal_(self.dense.weight, std=cfg.init_std)
        nn.init.zeros_(self.dense.bias)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., H) -> logits (..., V). Call it on the gathered masked positions only."""
        return self.decoder(self.norm(self.act(self.dense(hidden))))


class CausalLMHead(nn.Module):
    """GPT-2's head: a bias-free projection, tied to the input embeddings."""

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.proj = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.proj.weight = word_embeddings.weight
        else:
            nn.init.normal_(self.proj.weight, std=cfg.init_std)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)
