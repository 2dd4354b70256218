"""Attention as data: `AttnSpec` says which query may see which key; a backend executes it.

Layouts (the trunk always sees (B, T) token grids):
  dense   every row is one sequence of length T, no padding;
  padded  `key_padding_mask` (B, T), True at real tokens;
  packed  `cu_seqlens` (N+1,) offsets of N documents in the flattened B*T tokens (flash-attn's
          convention); attention never crosses a document edge and positions restart per document.
`causal` is orthogonal to the layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AttnSpec:
    causal: bool
    key_padding_mask: torch.Tensor | None = None  # (B, T) bool, True = real token
    cu_seqlens: torch.Tensor | None = None  # (N+1,) int32 document offsets in the flattened (B*T) grid
    max_seqlen: int = 0  # longest document, for varlen kernels

    @staticmethod
    def dense(causal: bool) -> "AttnSpec":
        return AttnSpec(causal=causal)

    @staticmethod
    def padded(causal: bool, key_padding_mask: torch.Tensor) -> "AttnSpec":
        return AttnSpec(causal=causal, key_padding_mask=key_padding_mask.bool())

    @staticmethod
    def packed(causal: bool, doc_lengths: list[list[int]]) -> "AttnSpec":
        """From per-row document lengths (each row sums to T)."""
        flat = [n for row in doc_lengths for n in row]
        cu = torch.zeros(len(flat) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(flat, dtype=torch.int32), 0)
        return AttnSpec(causal=causal, cu_seqlens=cu, max_seqlen=max(flat))

    @property
    def is_packed(self) -> bool:
        return self.cu_seqlens is not None

    def segment_ids(self, batch: int, length: int) -> torch.Tensor:
        """(B, T) document index of every token (packed layout only)."""
        lengths = self.cu_seqlens[1:] - self.cu_seqlens[:-1]
        seg = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths.long())
        return seg.view(batch, length)

    def position_ids(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """(B, T) positions; they restart at 0 at each packed document so packing changes nothing."""
        if not self.is_packed:
            return torch.arange(length, device=device).expand(batch, length)
        cu = self.cu_seqlens.to(device).long()
        starts = torch.repeat_interleave(cu[:-1], cu[1:] - cu[:-1])
        return (torch.arange(batch * length, device=device) - starts).view(batch, length)


class SdpaAttention:
    """PyTorch scaled_dot_product_attention. Packed/padded specs become a boolean (B, 1, T, T) mask,
    built once per forward and shared by all layers; the dense specs use SDPA's fast paths."""

    name = "sdpa"

    def prepare(self, spec: AttnSpec, batch: int, length: int, device: torch.device):
        if spec.is_packed:
            seg = spec.segment_ids(batch, length).to(device)
            mask = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
            if spec.causal:
                mask &= torch.ones(length, length, dtype=torch.bool, device=device).tril()
            return mask[:, None]
        if spec.key_padding_mask is not None:
            mask = spec.key_padding_mask.to(device)[:, None, None, :]  # (B, 1, 1, T)
            if spec.causal:
                mask = mask & torch.ones(length, length, dtype=torch.bool, device=device).tril()
            return mask
        return None

    def __call__(self, q, k, v, spec: AttnSpec, prepared, dropout_p: float) -> torch.Tensor:
        # q, k, v: (B, H, T, D)
        if prepared is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=spec.causal)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=prepared, dropout_p=dropout_p)


def build_attention_backend(name: str):
    """Chosen once when the model is built. `auto` picks the best backend that is available."""
    if name in ("auto", "sdpa"):
        return SdpaAttention()
    raise ValueError(f"unknown attention backend {name!r}; choose auto or sdpa")
