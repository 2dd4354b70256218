"""One vector per sequence from the trunk's hidden states: the [CLS] state or the mean over real tokens."""
from __future__ import annotations

import torch

POOLINGS = ("cls", "mean")


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, H) hidden states and (B, T) real-token mask -> (B, H)."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1)
