"""Rename rules between our parameters and Hugging Face tensors, per architecture family.

With the `bert`, `gpt2`, `modernbert` and `llama` presets our parameters are exactly HF's under other names (q/k/v
fused into one projection, so are Llama's gate and up projections; GPT-2's Conv1D weights stored transposed), so
both directions are one table of `Rule`s read
forwards (export) or backwards (import). `transformers` is never imported: the tests load the exports with
its Auto classes and compare logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmssl.config import ModelConfig


@dataclass(frozen=True)
class Rule:
    """One of our parameters and the HF tensor(s) it is made of: `copy`, `transpose` (GPT-2 Conv1D), or
    `fuse` (ours = cat(theirs, dim 0): BERT's query, key, value in one projection)."""
    ours: str
    theirs: tuple[str, ...]
    op: str = "copy"

    def to_ours(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [tensors[k] for k in self.theirs]
        if self.op == "fuse":
            return torch.cat(parts, 0)
        return parts[0].T if self.op == "transpose" else parts[0]

    def to_theirs(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.op == "fuse":
            return dict(zip(self.theirs, value.chunk(len(self.theirs), 0)))
        return {self.theirs[0]: value.T if self.op == "transpose" else value}


def copy_rules(ours: str, theirs: str, op: str = "copy", bias: bool = True) -> list[Rule]:
    """Rules for a module's weight and bias (`ours`/`theirs` are module paths)."""
    return [Rule(f"{ours}.weight", (f"{theirs}.weight",), op)] + ([Rule(f"{ours}.bias", (f"{theirs}.bias",))]
                                                                  if bias else [])


def fuse_rules(ours: str, theirs: list[str], bias: bool) -> list[Rule]:
    """Our one projection <-> HF's several (concatenated along the outputs), weights and biases."""
    return [Rule(f"{ours}.weight", tuple(f"{t}.weight" for t in theirs), "fuse")] + (
        [Rule(f"{ours}.bias", tuple(f"{t}.bias" for t in theirs), "fuse")] if bias else [])


def norm_rules(m: ModelConfig, ours: str, theirs: str) -> list[Rule]:
    """A norm: weight, and a bias when it is a LayerNorm of a model with biases (RMSNorm has none)."""
    return copy_rules(ours, theirs, bias=m.norm_type == "layernorm" and m.bias)


def bert_trunk_rules(m: ModelConfig, ours: str, theirs: str) -> list[Rule]:
    """Our Transformer (post-LN) at prefix `ours` <-> HF BertModel / ElectraModel at prefix `theirs`."""
    rules = [Rule(f"{ours}embeddings.word.weight", (f"{theirs}embeddings.word_embeddings.weight",)),
             Rule(f"{ours}embeddings.position.weight", (f"{theirs}embeddings.position_embeddings.weight",))]
    if m.type_vocab_size:
        rules.append(Rule(f"{ours}embeddings.token_type.weight", (f"{theirs}embeddings.token_type_embeddings.weight",)))
    rules += copy_rules(f"{ours}embeddings.norm", f"{theirs}embeddings.LayerNorm")
    if (m.embedding_size or m.hidden_size) != m.hidden_size:
        rules += copy_rules(f"{ours}embed_proj", f"{theirs}embeddings_project")  # ELECTRA only
    for i in range(m.num_layers):
        o, t = f"{ours}layers.{i}.", f"{theirs}encoder.layer.{i}."
        qkv = [f"{t}attention.self.{n}" for n in ("query", "key", "value")]
        rules += [Rule(f"{o}attn.qkv.weight", tuple(f"{n}.weight" for n in qkv), "fuse"),
                  Rule(f"{o}attn.qkv.bias", tuple(f"{n}.bias" for n in qkv), "fuse")]
        rules += copy_rules(f"{o}attn.out", f"{t}attention.output.dense")
        rules += copy_rules(f"{o}attn_norm", f"{t}attention.output.LayerNorm")
        rules += copy_rules(f"{o}ffn.fc_in", f"{t}intermediate.dense")
        rules += copy_rules(f"{o}ffn.fc_out", f"{t}output.dense")
        rules += copy_rules(f"{o}ffn_norm", f"{t}output.LayerNorm")
    return rules


def gpt2_trunk_rules(m: ModelConfig, ours: str, theirs: str) -> list[Rule]:
    """Our Transformer (pre-LN) at prefix `ours` <-> HF GPT2Model at prefix `theirs` (Conv1D = transposed Linear)."""
    rules = [Rule(f"{ours}embeddings.word.weight", (f"{theirs}wte.weight",)),
             Rule(f"{ours}embeddings.position.weight", (f"{theirs}wpe.weight",))]
    for i in range(m.num_layers):
        o, t = f"{ours}layers.{i}.", f"{theirs}h.{i}."
        rules += copy_rules(f"{o}attn_norm", f"{t}ln_1")
        rules += copy_rules(f"{o}attn.qkv", f"{t}attn.c_attn", "transpose")  # (H, 3H) [q|k|v] -> (3H, H)
        rules += copy_rules(f"{o}attn.out", f"{t}attn.c_proj", "transpose")
        rules += copy_rules(f"{o}ffn_norm", f"{t}ln_2")
        rules += copy_rules(f"{o}ffn.fc_in", f"{t}mlp.c_fc", "transpose")
        rules += copy_rules(f"{o}ffn.fc_out", f"{t}mlp.c_proj", "transpose")
    return rules + copy_rules(f"{ours}final_norm", f"{theirs}ln_f")


def masked_lm_head_rules(m: ModelConfig, ours: str, transform: str, bias: str, decoder: str, word: str) -> list[Rule]:
    """Our MaskedLMHead at `ours` <-> BERT's cls.predictions / ELECTRA's generator_predictions + lm head. A tied
    decoder is read from (and written as) the word embeddings, as HF stores it."""
    electra = transform.startswith("generator")
    norm = "LayerNorm" if electra else "transform.LayerNorm"
    dense = "dense" if electra else "transform.dense"
    return (copy_rules(f"{ours}dense", f"{transform}.{dense}") + copy_rules(f"{ours}norm", f"{transform}.{norm}")
            + [Rule(f"{ours}decoder.bias", (bias,)),
               Rule(f"{ours}decoder.weight", (word if m.tie_embeddings else decoder,))])


def modernbert_trunk_rules(m: ModelConfig, ours: str, theirs: str) -> list[Rule]:
    """Our Transformer (ModernBERT blocks) at prefix `ours` <-> HF ModernBertModel at prefix `theirs` (the first
    layer has no attention norm in both)."""
    rules = [Rule(f"{ours}embeddings.word.weight", (f"{theirs}embeddings.tok_embeddings.weight",))]
    rules += norm_rules(m, f"{ours}embeddings.norm", f"{theirs}embeddings.norm")
    for i in range(m.num_layers):
        o, t = f"{ours}layers.{i}.", f"{theirs}layers.{i}."
        if i > 0:
            rules += norm_rules(m, f"{o}attn_norm", f"{t}attn_norm")
        rules += copy_rules(f"{o}attn.qkv", f"{t}attn.Wqkv", bias=m.bias)  # one (3H, H) projection, q|k|v, as ours
        rules += copy_rules(f"{o}attn.out", f"{t}attn.Wo", bias=m.bias)
        rules += norm_rules(m, f"{o}ffn_norm", f"{t}mlp_norm")
        rules += copy_rules(f"{o}ffn.fc_in", f"{t}mlp.Wi", bias=m.bias)  # [input | gate], as ours
        rules += copy_rules(f"{o}ffn.fc_out", f"{t}mlp.Wo", bias=m.bias)
    return rules + norm_rules(m, f"{ours}final_norm", f"{theirs}final_norm")


def llama_trunk_rules(m: ModelConfig, ours: str, theirs: str) -> list[Rule]:
    """Our Transformer (Llama blocks) at prefix `ours` <-> HF LlamaModel at prefix `theirs`."""
    rules = [Rule(f"{ours}embeddings.word.weight", (f"{theirs}embed_tokens.weight",))]
    for i in range(m.num_layers):
        o, t = f"{ours}layers.{i}.", f"{theirs}layers.{i}."
        rules += norm_rules(m, f"{o}attn_norm", f"{t}input_layernorm")
        rules += fuse_rules(f"{o}attn.qkv", [f"{t}self_attn.{n}_proj" for n in "qkv"], m.bias)
        rules += copy_rules(f"{o}attn.out", f"{t}self_attn.o_proj", bias=m.bias)
        rules += norm_rules(m, f"{o}ffn_norm", f"{t}post_attention_layernorm")
        rules += fuse_rules(f"{o}ffn.fc_in", [f"{t}mlp.gate_proj", f"{t}mlp.up_proj"], m.bias)  # act(gate) * up
        rules += copy_rules(f"{o}ffn.fc_out", f"{t}mlp.down_proj", bias=m.bias)
    return rules + norm_rules(m, f"{ours}final_norm", f"{theirs}norm")


def modernbert_head_rules(m: ModelConfig, ours: str, theirs: str) -> list[Rule]:
    """Our MaskedLMHead at `ours` <-> ModernBertForMaskedLM's head + decoder (`theirs`: the base model's prefix,
    whose tied word embeddings are the decoder's weight)."""
    decoder = f"{theirs}embeddings.tok_embeddings.weight" if m.tie_embeddings else "decoder.weight"
    return (copy_rules(f"{ours}dense", "head.dense", bias=m.bias) + norm_rules(m, f"{ours}norm", "head.norm")
            + [Rule(f"{ours}decoder.bias", ("decoder.bias",)), Rule(f"{ours}decoder.weight", (decoder,))])
