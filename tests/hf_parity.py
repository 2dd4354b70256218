"""Hugging Face parity helpers: the transformers models with our shapes, their weights renamed into ours, random
values in every tensor (HF's init would hide a misplaced bias or norm), tiny objectives on the shipped tokenizers."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import REPO_ROOT

from lmssl.config import ModelConfig, config_from_dict
from lmssl.data.tokenizer import TextTokenizer
from lmssl.model.heads import CausalLMHead, MaskedLMHead
from lmssl.model.transformer import Transformer
from lmssl.objectives import build_objective

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

WORDPIECE = REPO_ROOT / "tokenizers" / "wikitext2-wordpiece" / "tokenizer.json"
BPE = REPO_ROOT / "tokenizers" / "wikitext2-bpe" / "tokenizer.json"
TEXTS = ["Valkyria Chronicles III is a tactical role @-@ playing video game developed by Sega .",
         "The game 's battle system , the BliTZ system , is carried over directly from Valkyria Chronicles ."]
ATOL = 1e-5


def assert_greedy_decoding_is_generates(objective, tokenizer, hf_dir: Path, prompt: str, tokens: int = 20,
                                        repetition_penalty: float = 1.0) -> str:
    """`lmssl generate` at temperature 0 continues `prompt` with the tokens of transformers' greedy `generate` (with
    the same repetition_penalty) on the export in `hf_dir`, and `pipeline("text-generation")` there writes the same
    text: the exported tokenizer puts the end-of-text token lmssl starts from before the prompt, as transformers
    users call it. Returns the continuation."""
    from lmssl.inference.generate import Sampling, generate

    sampling = Sampling(max_new_tokens=tokens, temperature=0, stop_at_eos=False, repetition_penalty=repetition_penalty)
    ours = generate(objective, tokenizer, prompt, sampling)[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    context = hf_tokenizer(prompt, return_tensors="pt").input_ids
    assert context[0].tolist() == [tokenizer.eos_id, *tokenizer.encode_batch([prompt])[0]]
    with torch.no_grad():
        theirs = hf.generate(context, max_new_tokens=tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=tokenizer.eos_id, attention_mask=torch.ones_like(context),
                             repetition_penalty=repetition_penalty)
    assert ours["tokens"] == tokens and ours["text"] == tokenizer.decode(theirs[0, context.shape[1]:].tolist())
    pipe = transformers.pipeline("text-generation", model=hf, tokenizer=hf_tokenizer)
    written = pipe(prompt, max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=tokenizer.eos_id,
                   return_full_text=False, repetition_penalty=repetition_penalty)
    assert written[0]["generated_text"] == ours["text"], (written, ours)
    return ours["text"]


def tiny_objective(objective: dict, **model) -> tuple:
    """A tiny objective on the shipped WikiText-2 tokenizer, every tensor randomised (LayerNorms and biases
    included, so that a misplaced tensor cannot hide behind HF's default init)."""
    causal = objective["name"] == "clm"
    tokenizer = TextTokenizer.from_file(BPE if causal else WORDPIECE)
    fields = {"preset": "gpt2" if causal else "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
              "ffn_size": 64, "max_positions": 40, "vocab_size": tokenizer.vocab_size, **model}
    data = {"seq_len": 32, "tokenizer": str((BPE if causal else WORDPIECE).parent)}
    if objective["name"] == "simcse":
        data["valid"] = ""
    cfg = config_from_dict({"model": fields, "objective": objective, "data": data})
    torch.manual_seed(0)
    obj = build_objective(cfg, tokenizer).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in obj.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_((0.1 if p.dim() > 1 else 0.05) * torch.randn(p.shape, generator=g))
    return cfg, tokenizer, obj


class LM(nn.Module):
    """Trunk + head, as the MLM / CLM objectives assemble them."""

    def __init__(self, cfg: ModelConfig, head_cls):
        super().__init__()
        self.trunk = Transformer(cfg)
        self.head = head_cls(cfg, self.trunk.word_embeddings)

    def forward(self, ids, spec, token_type_ids=None):
        return self.head(self.trunk(ids, spec, token_type_ids))

def hf_bert(cfg: ModelConfig):
    assert cfg.activation == "gelu" and cfg.norm == "post"
    config = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.ffn_size, max_position_embeddings=cfg.max_positions,
        type_vocab_size=cfg.type_vocab_size, hidden_act="gelu", layer_norm_eps=cfg.norm_eps,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, tie_word_embeddings=cfg.tie_embeddings,
        attn_implementation="eager")
    return transformers.BertForMaskedLM(config).eval()

def hf_gpt2(cfg: ModelConfig):
    assert cfg.activation == "gelu_tanh" and cfg.norm == "pre"
    config = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads,
        n_inner=cfg.ffn_size, n_positions=cfg.max_positions, activation_function="gelu_new",
        layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return transformers.GPT2LMHeadModel(config).eval()

def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once

def hf_bert_shapes_with_fused_qkv(hf) -> Counter:
    """HF BertForMaskedLM's parameter shapes, with each layer's query/key/value ((H,H) weight + (H,) bias,
    three times) replaced by one fused (3H,H) weight + (3H,) bias, as our `qkv` Linear stores them."""
    shapes = Counter()
    fused = Counter()
    for name, p in hf.named_parameters():  # tied decoder weight / bias are yielded once
        if ".attention.self." in name:
            assert name.rsplit(".", 2)[-2] in ("query", "key", "value"), name
            fused[name.rsplit(".", 2)[0] + "." + name.rsplit(".", 1)[-1]] += 1  # ...attention.self.{weight,bias}
            continue
        shapes[tuple(p.shape)] += 1
    assert len(fused) == 2 * hf.config.num_hidden_layers and set(fused.values()) == {3}
    H = hf.config.hidden_size
    shapes[(3 * H, H)] += hf.config.num_hidden_layers
    shapes[(3 * H,)] += hf.config.num_hidden_layers
    return shapes

def hf_gpt2_shapes_in_torch_layout(hf) -> Counter:
    """HF GPT2LMHeadModel's parameter shapes with Conv1D weights, stored (in, out), transposed to nn.Linear's
    (out, in). c_attn is already fused [q|k|v] along `out`, so it maps to our (3H, H) qkv weight as is."""
    conv_weights = {id(m.weight) for m in hf.modules() if isinstance(m, Conv1D)}
    assert len(conv_weights) == 4 * hf.config.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    return Counter(tuple(p.shape)[::-1] if id(p) in conv_weights else tuple(p.shape) for p in hf.parameters())

def copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    assert dst.shape == src.shape, (dst.shape, src.shape)
    dst.copy_(src)

@torch.no_grad()
def load_from_hf_bert(ours: LM, hf) -> None:
    """Rename HF BertForMaskedLM's weights into our Transformer + MaskedLMHead (q,k,v concatenated into qkv)."""
    t, e, b = ours.trunk, ours.trunk.embeddings, hf.bert
    copy_into(e.word.weight, b.embeddings.word_embeddings.weight)
    copy_into(e.position.weight, b.embeddings.position_embeddings.weight)
    copy_into(e.token_type.weight, b.embeddings.token_type_embeddings.weight)
    copy_into(e.norm.weight, b.embeddings.LayerNorm.weight)
    copy_into(e.norm.bias, b.embeddings.LayerNorm.bias)
    for ours_layer, hf_layer in zip(t.layers, b.encoder.layer, strict=True):
        s = hf_layer.attention.self
        copy_into(ours_layer.attn.qkv.weight, torch.cat([s.query.weight, s.key.weight, s.value.weight], 0))
        copy_into(ours_layer.attn.qkv.bias, torch.cat([s.query.bias, s.key.bias, s.value.bias], 0))
        copy_into(ours_layer.attn.out.weight, hf_layer.attention.output.dense.weight)
        copy_into(ours_layer.attn.out.bias, hf_layer.attention.output.dense.bias)
        copy_into(ours_layer.attn_norm.weight, hf_layer.attention.output.LayerNorm.weight)
        copy_into(ours_layer.attn_norm.bias, hf_layer.attention.output.LayerNorm.bias)
        copy_into(ours_layer.ffn.fc_in.weight, hf_layer.intermediate.dense.weight)
        copy_into(ours_layer.ffn.fc_in.bias, hf_layer.intermediate.dense.bias)
        copy_into(ours_layer.ffn.fc_out.weight, hf_layer.output.dense.weight)
        copy_into(ours_layer.ffn.fc_out.bias, hf_layer.output.dense.bias)
        copy_into(ours_layer.ffn_norm.weight, hf_layer.output.LayerNorm.weight)
        copy_into(ours_layer.ffn_norm.bias, hf_layer.output.LayerNorm.bias)
    p = hf.cls.predictions
    copy_into(ours.head.dense.weight, p.transform.dense.weight)
    copy_into(ours.head.dense.bias, p.transform.dense.bias)
    copy_into(ours.head.norm.weight, p.transform.LayerNorm.weight)
    copy_into(ours.head.norm.bias, p.transform.LayerNorm.bias)
    copy_into(ours.head.decoder.bias, p.decoder.bias)
    assert ours.head.decoder.weight is e.word.weight  # tied: already copied with the word embeddings

@torch.no_grad()
def load_from_hf_gpt2(ours: LM, hf) -> None:
    """Rename HF GPT2LMHeadModel's weights into our Transformer + CausalLMHead (Conv1D weights transposed)."""
    t, g = ours.trunk, hf.transformer
    copy_into(t.embeddings.word.weight, g.wte.weight)
    copy_into(t.embeddings.position.weight, g.wpe.weight)
    for ours_layer, hf_layer in zip(t.layers, g.h, strict=True):
        copy_into(ours_layer.attn_norm.weight, hf_layer.ln_1.weight)
        copy_into(ours_layer.attn_norm.bias, hf_layer.ln_1.bias)
        copy_into(ours_layer.attn.qkv.weight, hf_layer.attn.c_attn.weight.T)  # (H, 3H) [q|k|v] -> (3H, H)
        copy_into(ours_layer.attn.qkv.bias, hf_layer.attn.c_attn.bias)
        copy_into(ours_layer.attn.out.weight, hf_layer.attn.c_proj.weight.T)
        copy_into(ours_layer.attn.out.bias, hf_layer.attn.c_proj.bias)
        copy_into(ours_layer.ffn_norm.weight, hf_layer.ln_2.weight)
        copy_into(ours_layer.ffn_norm.bias, hf_layer.ln_2.bias)
        copy_into(ours_layer.ffn.fc_in.weight, hf_layer.mlp.c_fc.weight.T)
        copy_into(ours_layer.ffn.fc_in.bias, hf_layer.mlp.c_fc.bias)
        copy_into(ours_layer.ffn.fc_out.weight, hf_layer.mlp.c_proj.weight.T)
        copy_into(ours_layer.ffn.fc_out.bias, hf_layer.mlp.c_proj.bias)
    copy_into(t.final_norm.weight, g.ln_f.weight)
    copy_into(t.final_norm.bias, g.ln_f.bias)
    assert ours.head.proj.weight is t.embeddings.word.weight  # tied

@torch.no_grad()
def randomise_hf(hf) -> None:
    """HF's init (zero biases, unit LayerNorms, std 0.02) hides mistakes such as a swapped bias or norm;
    give every tensor distinct random values so that every one of them must land in the right place."""
    g = torch.Generator().manual_seed(0)
    for name, p in hf.named_parameters():
        if "LayerNorm" in name or ".ln_" in name:
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                    else 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_((0.1 if p.dim() >= 2 else 0.05) * torch.randn(p.shape, generator=g))


def copied_from_hf(cfg: ModelConfig) -> tuple:
    """(the Hugging Face BertForMaskedLM / GPT2LMHeadModel of `cfg` with random values in every tensor, our trunk and
    head holding its weights), both in eval mode."""
    torch.manual_seed(0)
    causal = cfg.preset == "gpt2"
    hf = hf_gpt2(cfg) if causal else hf_bert(cfg)
    randomise_hf(hf)
    ours = LM(cfg, CausalLMHead if causal else MaskedLMHead).eval()
    (load_from_hf_gpt2 if causal else load_from_hf_bert)(ours, hf)
    return hf, ours
