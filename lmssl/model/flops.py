"""Training FLOPs by arithmetic: the matrix multiplications of a step, forward and backward, counted as PaLM's MFU
and PyTorch's FlopCounterMode count them (2 FLOPs per multiply-add; norms, softmax, element-wise work and
embedding lookups are left out). Attention counts every key of the (B, T) grid, causal or not, as the dense kernel
computes it and FlopCounterMode counts it. Objectives compose these into `Objective.train_flops`."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmssl.config import ModelConfig

TRAIN_FACTOR = 3  # forward + backward: a matmul's backward computes the input's and the weight's gradients


def linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def attention(queries: int, keys: int, width: int) -> int:
    """Scores (q . k) and mixing (probabilities @ v) for `queries` rows, each over `keys` keys."""
    return 4 * queries * keys * width


@dataclass(frozen=True)
class LastBlockRows:
    """What `Transformer.forward_at` computes in its last block: `out` rows of output projection and feed-forward,
    `queries` rows projected to queries, `slots` query rows of attention (grouped per sequence, padded)."""
    out: int
    queries: int
    slots: int

    @staticmethod
    def of(where: torch.Tensor, every_query: bool) -> "LastBlockRows":
        """The rows for the (B, T) bool `where`, as `SelfAttention.context_at` chooses them: every query when
        `every_query` (attention dropout in training) or when one sequence selects more than half its rows."""
        B, T = where.shape
        n = int(where.sum())
        width = int(where.sum(1).max()) if n else 0
        if every_query or not 0 < 2 * width <= T:
            return LastBlockRows(n, B * T, B * T)
        return LastBlockRows(n, n, B * width)


def trunk(m: ModelConfig, batch: int, length: int, last: LastBlockRows | None = None) -> dict[str, int]:
    """Forward FLOPs of a trunk on `batch` sequences of `length` tokens: {"dense": its projections, "attention":
    scores and mixing}; `last`: the last block computes only these rows (`forward_at`), else every row."""
    H, F, E = m.hidden_size, m.ffn_size, m.embedding_size or m.hidden_size
    gates = 2 if m.mlp != "gelu" else 1  # a gated feed-forward projects to F twice (GeGLU, SwiGLU)
    tokens = batch * length

    def block(rows: LastBlockRows) -> tuple[int, int]:
        dense = (linear(tokens, H, 2 * H) + linear(rows.queries, H, H) + linear(rows.out, H, H)
                 + linear(rows.out, H, gates * F) + linear(rows.out, F, H))
        return dense, attention(rows.slots, length, H)

    full = LastBlockRows(tokens, tokens, tokens)
    dense, scores = block(full)
    last_dense, last_scores = block(last or full)
    return {"dense": (m.num_layers - 1) * dense + last_dense + (linear(tokens, E, H) if E != H else 0),
            "attention": (m.num_layers - 1) * scores + last_scores}


def training(forward: dict[str, int]) -> dict[str, int]:
    """Forward FLOPs -> forward + backward FLOPs, part by part."""
    return {k: TRAIN_FACTOR * v for k, v in forward.items()}
