"""The trunk: token ids + AttnSpec -> hidden states. No heads, no labels, no losses.

The blocks are data (ModelConfig): norm placement (post/pre), norm type (LayerNorm/RMSNorm), biases, plain or
gated feed-forward (GELU, GeGLU, SwiGLU), QK-norm, embedding and final norms, learned or rotary positions. With
the `bert`, `gpt2`, `modernbert` and `llama` presets the parameters are exactly those of Hugging Face's BertModel
(without pooler), GPT2Model, ModernBertModel (global attention) and LlamaModel, so an export is a rename (plus
splitting or fusing projections).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmssl.config import ModelConfig
from lmssl.model.attention import AttnSpec, Varlen, compute_dtype
from lmssl.model.backends import build_attention_backend
from lmssl.model.layers import FeedForward, apply_rope, dropout_rows, norm_layer, rope_tables


class Embeddings(nn.Module):
    """Word + position + token-type embeddings at `embedding_size`, then a norm where model.embedding_norm.
    ELECTRA shares one of these between generator and discriminator."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        width = cfg.embedding_size or cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, width)
        self.position = nn.Embedding(cfg.max_positions, width) if cfg.position == "learned" else None
        self.token_type = nn.Embedding(cfg.type_vocab_size, width) if cfg.type_vocab_size else None
        self.norm = norm_layer(cfg, width) if cfg.embedding_norm else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, position_ids, token_type_ids=None):
        x = self.word(input_ids)
        if self.position is not None:
            x = x + self.position(position_ids)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, backend):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.bias)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        head_dim = cfg.hidden_size // cfg.num_heads
        self.q_norm = norm_layer(cfg, head_dim) if cfg.qk_norm else None
        self.k_norm = norm_layer(cfg, head_dim) if cfg.qk_norm else None
        self.attention_dropout = cfg.attention_dropout
        self.backend = backend

    def _position(self, q: torch.Tensor, k: torch.Tensor, rope, q_rope=None) -> tuple[torch.Tensor, torch.Tensor]:
        """QK-norm, then RoPE, on queries and keys of any layout whose last dimension is the head's (`q_rope`:
        the queries' own tables when they are not the keys')."""
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *(q_rope or rope)), apply_rope(k, *rope)
        return q, k

    def forward(self, x, spec: AttnSpec, prepared, rope):
        return self.out(self.context(x, spec, prepared, rope))

    def context(self, x, spec: AttnSpec, prepared, rope) -> torch.Tensor:
        """The heads' concatenated outputs, before the output projection: (B, T, H), or (N, H) for the unpadded
        tokens of a varlen backend."""
        if x.dim() == 2:
            return self._context_unpadded(x, spec, prepared, rope)
        B, T, H = x.shape
        q, k, v = self._heads(x, rope)
        dropout_p = self.attention_dropout if self.training else 0.0
        y = self.backend(q, k, v, spec, prepared, dropout_p)  # (B, h, T, d)
        return y.transpose(1, 2).reshape(B, T, H)

    def context_at(self, x, spec: AttnSpec, prepared, rope, index: torch.Tensor) -> torch.Tensor:
        """`context(...)` at the flat rows `index` only, (n, H). On the (B, T) grid without attention dropout only
        those rows' queries are computed, grouped by sequence into (B, most rows of one sequence) slots, against
        every key and value of their own sequence (MLM's masked rows, pseudo-PPL's copies, a classifier's [CLS]).
        With attention dropout (its draws must be those of `forward`), a varlen layout, or rows filling more than
        half of some sequence, every query runs, as in `context`."""
        H = x.shape[-1]
        dropout = self.training and self.attention_dropout > 0
        if x.dim() == 3 and not dropout and (prepared is None or prepared.dim() == 4):
            B, T, _ = x.shape
            seq, pos = index // T, index % T
            counts = torch.bincount(seq, minlength=B)
            width = int(counts.max()) if len(index) else 0
            if 0 < 2 * width <= T:
                return self._grouped_queries(x, spec, prepared, rope, seq, pos, counts, width)
        return self.context(x, spec, prepared, rope).reshape(-1, H).index_select(0, index)

    def _grouped_queries(self, x, spec: AttnSpec, prepared, rope, seq, pos, counts, width: int) -> torch.Tensor:
        B, T, H = x.shape
        heads, d = self.num_heads, H // self.num_heads
        slot = torch.arange(len(seq), device=x.device) - (counts.cumsum(0) - counts)[seq]  # rank within its sequence
        w_q, w_kv = self.qkv.weight.split([H, 2 * H])
        b_q, b_kv = self.qkv.bias.split([H, 2 * H]) if self.qkv.bias is not None else (None, None)
        q = F.linear(x[seq, pos], w_q, b_q).view(-1, heads, d)  # (n, h, d)
        k, v = F.linear(x, w_kv, b_kv).view(B, T, 2, heads, d).permute(2, 0, 3, 1, 4)  # 2 x (B, h, T, d)
        q_rope = None
        if rope is not None:
            cos, sin = rope  # (B, 1, T, d)
            q_rope = cos[seq, 0, pos, None], sin[seq, 0, pos, None]
        q, k = self._position(q, k, rope, q_rope)
        grid = q.new_zeros(B, width, heads, d).index_put((seq, slot), q).transpose(1, 2)  # (B, h, width, d)
        mask = None
        if prepared is not None and prepared.shape[2] == 1:  # key padding (B, 1, 1, T): the same for every query
            mask = prepared
        elif prepared is not None or spec.causal:  # each query's own row of the mask; empty slots see every key
            rows = prepared[seq, 0, pos] if prepared is not None else torch.arange(T, device=x.device) <= pos[:, None]
            mask = torch.ones(B, width, T, dtype=torch.bool, device=x.device).index_put((seq, slot), rows)[:, None]
        y = F.scaled_dot_product_attention(grid, k, v, attn_mask=mask)  # (B, h, width, d)
        return y.transpose(1, 2)[seq, slot].reshape(-1, H)

    def _heads(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, H = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, H // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, d)
        q, k = self._position(q, k, rope)
        return q, k, v

    def cached_context(self, x: torch.Tensor, cache: "KVCache", index: int, rope) -> torch.Tensor:
        """`context` for causal decoding: x (B, T, H) holds the T newest positions; their keys and values are
        appended to layer `index` of the cache, and each new query attends to every cached position up to its
        own. Plain SDPA whatever the backend (a decoding step is one query row)."""
        B, T, H = x.shape
        q, k, v = self._heads(x, rope)
        past = cache.layers[index]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, h, past + T, d)
        cache.layers[index] = (k, v)
        mask = None
        if T > 1:  # new positions see the past and the new ones up to themselves
            offset = k.shape[2] - T
            mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=offset)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, T, d)
        return y.transpose(1, 2).reshape(B, T, H)

    def _context_unpadded(self, x, spec: AttnSpec, prepared, rope) -> torch.Tensor:
        N, H = x.shape
        q, k, v = self.qkv(x).view(N, 3, self.num_heads, H // self.num_heads).unbind(1)  # 3 x (N, h, d)
        q, k = self._position(q, k, rope)  # RoPE tables (N, 1, d)
        q, k = q.to(v.dtype), k.to(v.dtype)  # fp32 tables or norms under autocast: back to the kernel's dtype
        dropout_p = self.attention_dropout if self.training else 0.0
        return self.backend(q, k, v, spec, prepared, dropout_p).reshape(N, H)  # (N, h, d) -> (N, H)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, backend, index: int = 0):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = SelfAttention(cfg, backend)
        # pre-norm after an embedding norm: the first block's input is normalised already (ModernBERT)
        first_reads_normed = self.pre_norm and cfg.embedding_norm and index == 0
        self.attn_norm = nn.Identity() if first_reads_normed else norm_layer(cfg, cfg.hidden_size)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = norm_layer(cfg, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, spec, prepared, rope):
        return self._residual(x, lambda h: self.attn(h, spec, prepared, rope))

    def forward_cached(self, x, cache: "KVCache", index: int, rope):
        """`forward` for causal decoding with a key/value cache (see SelfAttention.cached_context)."""
        return self._residual(x, lambda h: self.attn.out(self.attn.cached_context(h, cache, index, rope)))

    def _residual(self, x, attend):
        if self.pre_norm:
            x = x + self.dropout(attend(self.attn_norm(x)))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attn_norm(x + self.dropout(attend(x)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))

    def forward_at(self, x, spec, prepared, rope, index: torch.Tensor) -> torch.Tensor:
        """`forward(...)` at the flat row `index` only: (n, H) == forward(...).reshape(-1, H)[index], x being
        (B, T, H) (flat rows of B*T) or the (N, H) unpadded tokens of a varlen backend.

        Attention still reads every position's keys and values (and every query where attention dropout is on,
        so its draws are those of `forward`: see SelfAttention.context_at), but the output projection,
        feed-forward and norms run on the n rows only. The residual dropout masks are drawn at the full shape
        of x and gathered, so the random stream and the kept units are exactly those of `forward`."""
        H, shape = x.shape[-1], tuple(x.shape)

        def rows(t):
            return t.reshape(-1, H).index_select(0, index)

        def dropout(t):
            return dropout_rows(self.dropout, t, shape, index)

        if self.pre_norm:
            x = rows(x) + dropout(self.attn.out(self.attn.context_at(self.attn_norm(x), spec, prepared, rope, index)))
            return x + dropout(self.ffn(self.ffn_norm(x)))
        x = self.attn_norm(rows(x) + dropout(self.attn.out(self.attn.context_at(x, spec, prepared, rope, index))))
        return self.ffn_norm(x + dropout(self.ffn(x)))


@dataclass
class KVCache:
    """The keys and values of the positions decoded so far: per layer (B, heads, length, head_dim), or None."""
    layers: list[tuple[torch.Tensor, torch.Tensor] | None]
    length: int = 0

    @staticmethod
    def empty(num_layers: int) -> "KVCache":
        return KVCache([None] * num_layers)


class Transformer(nn.Module):
    """With a varlen backend (flash) the trunk unpads once at entry: the real tokens' ids and positions are
    gathered, embeddings and every block run on (N, H) (all but attention are position-wise), and the output is
    repadded at exit (zeros at padding). `backend` overrides model.attention_backend (tests, benchmarks)."""

    def __init__(self, cfg: ModelConfig, embeddings: Embeddings | None = None, backend=None):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (it is filled from the tokenizer)")
        self.cfg = cfg
        self.backend = backend if backend is not None else build_attention_backend(
            cfg.attention_backend, head_dim=cfg.hidden_size // cfg.num_heads, attention_dropout=cfg.attention_dropout)
        self.embeddings = embeddings if embeddings is not None else Embeddings(cfg)
        width = self.embeddings.word.embedding_dim
        self.embed_proj = nn.Linear(width, cfg.hidden_size) if width != cfg.hidden_size else None
        self.layers = nn.ModuleList(Block(cfg, self.backend, i) for i in range(cfg.num_layers))
        self.final_norm = norm_layer(cfg, cfg.hidden_size) if cfg.final_norm else None
        self.activation_checkpointing = False  # train.activation_checkpointing: recompute each block in backward
        self.apply(self._init)
        if cfg.norm == "pre":
            # GPT-2 §2.3: residual projections scaled by 1/sqrt(2 * layers): pre-LN activations do not grow with depth
            for layer in self.layers:
                for proj in (layer.attn.out, layer.ffn.fc_out):
                    nn.init.normal_(proj.weight, std=cfg.init_std / math.sqrt(2 * cfg.num_layers))

    def _init(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def _block(self, run, x, *args):
        """`run(x, *args)` (a Block or its forward_at), its activations recomputed in backward when checkpointing."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            # keep only the block's input; backward reruns it with the RNG state of the first pass (same dropout)
            return checkpoint(run, x, *args, use_reentrant=False, preserve_rng_state=True)
        return run(x, *args)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings.word

    def forward(self, input_ids: torch.Tensor, spec: AttnSpec,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> hidden states (B, T, hidden_size)."""
        x, prepared, rope = self._embed(input_ids, spec, token_type_ids)
        for layer in self.layers:
            x = self._block(layer, x, spec, prepared, rope)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if isinstance(prepared, Varlen):
            x = prepared.pad(x)  # repad once at exit: (N, H) -> (B, T, H)
        return x

    def forward_at(self, input_ids: torch.Tensor, spec: AttnSpec, where: torch.Tensor,
                   token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states at the positions `where` ((B, T) bool) only: (where.sum(), hidden_size), equal to
        forward(...)[where] (same order, same dropout draws). The last block computes its output
        projection, feed-forward and norms at those positions only: sparse prediction (MLM) reaches into
        the trunk, since nothing else of the last block's output is ever read."""
        x, prepared, rope = self._embed(input_ids, spec, token_type_ids)
        for layer in self.layers[:-1]:
            x = self._block(layer, x, spec, prepared, rope)
        selected = where.reshape(-1)
        unpadded = isinstance(prepared, Varlen) and prepared.indices is not None
        if unpadded:  # x holds the real tokens only: select among them (same row-major order)
            selected = selected.index_select(0, prepared.indices)
        index = selected.nonzero().squeeze(1)
        x = self._block(self.layers[-1].forward_at, x, spec, prepared, rope, index)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if unpadded:
            x = _with_padding_rows(x, where.reshape(-1), prepared.indices)
        return x

    def forward_cached(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Causal decoding: hidden states (B, T, hidden_size) of the T newest tokens, which continue the positions
        held in `cache` (empty: a prompt), the cache extended by them. Equal to forward(...) on the whole
        sequence with a causal dense spec, at those positions, without recomputing the past."""
        B, T = input_ids.shape
        positions = torch.arange(cache.length, cache.length + T, device=input_ids.device).expand(B, T)
        x = self.embeddings(input_ids, positions)
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        rope = None
        if self.cfg.position == "rope":
            rope = rope_tables(positions, self.cfg.hidden_size // self.cfg.num_heads, self.cfg.rope_theta, x.dtype)
        for index, layer in enumerate(self.layers):
            x = layer.forward_cached(x, cache, index, rope)
        cache.length += T
        return self.final_norm(x) if self.final_norm is not None else x

    def _embed(self, input_ids: torch.Tensor, spec: AttnSpec, token_type_ids: torch.Tensor | None):
        """Embedded inputs plus what every block shares: the prepared attention layout (SDPA: a mask; varlen:
        the unpadded layout, in which case the inputs are unpadded here) and RoPE tables."""
        B, T = input_ids.shape
        device = input_ids.device
        prepared = self.backend.prepare(spec, B, T, device, compute_dtype(device, self.embeddings.word.weight.dtype))
        position_ids = spec.position_ids(B, T, device)
        unpadded = isinstance(prepared, Varlen)
        if unpadded:  # unpad once at entry: (B, T) -> (N,) real tokens, their own positions kept
            input_ids, position_ids = prepared.unpad(input_ids), prepared.unpad(position_ids)
            if token_type_ids is not None:
                token_type_ids = prepared.unpad(token_type_ids)
        x = self.embeddings(input_ids, position_ids, token_type_ids)
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        rope = None
        if self.cfg.position == "rope":
            head_dim = self.cfg.hidden_size // self.cfg.num_heads
            if unpadded:
                cos, sin = rope_tables(position_ids[None], head_dim, self.cfg.rope_theta, x.dtype)  # (1, 1, N, d)
                rope = cos.view(-1, 1, head_dim), sin.view(-1, 1, head_dim)  # (N, 1, d)
            else:
                rope = rope_tables(position_ids, head_dim, self.cfg.rope_theta, x.dtype)
        return x, prepared, rope


def _with_padding_rows(x: torch.Tensor, selected: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows of the real tokens among `selected` ((B*T,) bool) -> rows of every selected position, in order,
    zeros at selected padding (what the repadded forward holds there)."""
    real = torch.zeros_like(selected).index_fill_(0, indices, True)[selected]  # (n_selected,) bool
    if x.shape[0] == real.shape[0]:  # no padding selected (MLM never selects padding)
        return x
    return x.new_zeros(real.shape[0], x.shape[-1]).index_put((real,), x)


def checkpoint_activations(module: nn.Module, on: bool) -> None:
    """train.activation_checkpointing for every trunk inside `module` (ELECTRA's generator and discriminator alike)."""
    for trunk in module.modules():
        if isinstance(trunk, Transformer):
            trunk.activation_checkpointing = on
