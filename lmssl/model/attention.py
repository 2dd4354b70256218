"""Attention as data: `AttnSpec` says which query may see which key; a backend executes it.

Layouts (the trunk always sees (B, T) token grids):
  dense   every row is one sequence of length T, no padding;
  padded  `key_padding_mask` (B, T), True at real tokens;
  packed  `cu_seqlens` (N+1,) offsets of N documents in the flattened B*T tokens (flash-attn's
          convention); attention never crosses a document edge and positions restart per document.
`causal` is orthogonal to the layout.

Backends (chosen once when the model is built, `model.attention_backend`):
  SdpaAttention    PyTorch SDPA on the (B, T) grid; packed/padded specs become one boolean mask.
  VarlenAttention  a kernel with flash-attn's `flash_attn_varlen_func` signature on the real tokens only:
                   the trunk unpads once at entry ((B, T) -> (N,) tokens, `Varlen`), runs every block on
                   (N, H) and repads at exit (MosaicBERT/ModernBERT). On GPU the kernel is flash-attn's
                   (lmssl.model.flash, the only module that imports flash_attn); `varlen_reference` is the
                   same contract in plain PyTorch, for CPU tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmssl.errors import ConfigError


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

    def prepare(self, spec: AttnSpec, batch: int, length: int, device: torch.device, dtype: torch.dtype | None = None):
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


@dataclass(frozen=True)
class Varlen:
    """The unpadded layout of one forward pass, computed once at trunk entry and shared by all layers:
    the real tokens of the (B, T) grid in row-major order, N of them, cut into sequences by `cu_seqlens`."""

    cu_seqlens: torch.Tensor  # (S+1,) int32 offsets of the S sequences in the N unpadded tokens
    max_seqlen: int  # longest sequence
    causal: bool
    batch: int  # B of the (B, T) grid
    length: int  # T
    indices: torch.Tensor | None = None  # (N,) flat (B*T) rows of the real tokens; None = all B*T are real

    @staticmethod
    def from_spec(spec: AttnSpec, batch: int, length: int, device: torch.device) -> "Varlen":
        """Dense: one sequence per row. Packed: the spec's documents (no gather: every token is real).
        Padded: the real tokens of each row, gathered (the row's order kept, so causality is by position)."""
        if spec.is_packed:
            cu = spec.cu_seqlens.to(device=device, dtype=torch.int32)
            max_seqlen = spec.max_seqlen or int((cu[1:] - cu[:-1]).max())
            return Varlen(cu, max_seqlen, spec.causal, batch, length)
        if spec.key_padding_mask is None:
            cu = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=device)
            return Varlen(cu, length, spec.causal, batch, length)
        mask = spec.key_padding_mask.to(device)  # (B, T), True = real
        seqlens = mask.sum(1, dtype=torch.int32)  # (B,)
        cu = F.pad(seqlens.cumsum(0, dtype=torch.int32), (1, 0))
        indices = mask.reshape(-1).nonzero().squeeze(1)  # (N,) ascending: row-major order
        return Varlen(cu, int(seqlens.max()), spec.causal, batch, length, indices)

    def unpad(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...): the real tokens."""
        flat = t.reshape(self.batch * self.length, *t.shape[2:])
        return flat if self.indices is None else flat.index_select(0, self.indices)

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...), zeros at the padding."""
        if self.indices is not None:
            t = t.new_zeros(self.batch * self.length, *t.shape[1:]).index_copy(0, self.indices, t)
        return t.view(self.batch, self.length, *t.shape[1:])


def varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                     softmax_scale=None, causal=False):
    """flash_attn_varlen_func's contract in plain PyTorch (any device and dtype): q, k, v (N, h, d) hold the
    tokens of consecutive sequences delimited by cu_seqlens (0 ... N); each attends within itself only.
    Self-attention only (cu_seqlens_q == cu_seqlens_k). SDPA per sequence: slow; for tests, and the spec of
    what the kernel computes."""
    assert q.dtype == k.dtype == v.dtype, \
        f"q, k, v must share one dtype, as flash-attn requires: {q.dtype}, {k.dtype}, {v.dtype}"
    assert cu_seqlens_q.dtype == torch.int32 and q.dim() == 3, "cu_seqlens int32, q/k/v (N, heads, head_dim)"
    cu = cu_seqlens_q.tolist()
    assert cu == cu_seqlens_k.tolist(), "varlen_reference does self-attention only"
    assert cu[0] == 0 and cu[-1] == q.shape[0], "cu_seqlens must cover the N tokens"
    parts = []
    for start, end in zip(cu[:-1], cu[1:]):
        if end > start:  # empty sequences (rows of padding only) have no tokens
            qi, ki, vi = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))  # (1, h, n, d)
            y = F.scaled_dot_product_attention(qi, ki, vi, dropout_p=dropout_p, is_causal=causal, scale=softmax_scale)
            parts.append(y[0].transpose(0, 1))  # (n, h, d)
    return torch.cat(parts) if parts else q.new_zeros(0, q.shape[1], v.shape[-1])


class VarlenAttention:
    """Attention on unpadded tokens through `kernel`, a function with flash_attn_varlen_func's signature:
    kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=..., causal=...) on
    q, k, v of shape (N, h, d). Attention dropout happens inside the kernel.

    `check(device, dtype)` says why the kernel cannot run a forward pass with inputs on `device` computing in
    `dtype` (None = it can); such a forward runs on `fallback` (SDPA on the (B, T) grid) when there is one,
    else stops with that reason. `prepare` decides once per forward: a `Varlen` means the unpadded path."""

    def __init__(self, kernel, name: str = "varlen", check=None, fallback: SdpaAttention | None = None,
                 provider: str = ""):
        self.kernel, self.name, self.check, self.fallback = kernel, name, check, fallback
        self.provider = provider  # whose kernel it is (flash: flash_attn or torch)

    def prepare(self, spec: AttnSpec, batch: int, length: int, device: torch.device, dtype: torch.dtype | None = None):
        reason = self.check(device, dtype) if self.check is not None else None
        if reason is None:
            return Varlen.from_spec(spec, batch, length, device)
        if self.fallback is None:
            raise ConfigError(f"key 'model.attention_backend': '{self.name}' cannot run this forward pass: {reason}")
        return self.fallback.prepare(spec, batch, length, device, dtype)

    def __call__(self, q, k, v, spec: AttnSpec, prepared, dropout_p: float) -> torch.Tensor:
        if not isinstance(prepared, Varlen):  # this forward fell back: q, k, v are (B, h, T, d)
            return self.fallback(q, k, v, spec, prepared, dropout_p)
        # q, k, v: (N, h, d) -> (N, h, d)
        return self.kernel(q, k, v, prepared.cu_seqlens, prepared.cu_seqlens, prepared.max_seqlen, prepared.max_seqlen,
                           dropout_p=dropout_p, causal=prepared.causal)


def compute_dtype(device: torch.device, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype attention will compute in: autocast's on `device` when it is on, else the weights'."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except TypeError:  # torch < 2.4: the argument-free, CUDA-only forms
        if device.type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return weight_dtype
