"""configs/gpu/*.yaml load as written and give the documented shapes (built on the meta device: no memory, no GPU)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import REPO_ROOT

from lmssl.config import load_config
from lmssl.data.tokenizer import TextTokenizer
from lmssl.interop.hf.export import export_config
from lmssl.objectives import build_objective

GPU_CONFIGS = REPO_ROOT / "configs" / "gpu"
def load_gpu_config(name: str):
    cfg = load_config(GPU_CONFIGS / f"{name}.yaml")
    assert (cfg.train.engine, cfg.train.zero_stage, cfg.train.precision) == ("deepspeed", 2, "bf16")
    return cfg


def count(objective: torch.nn.Module, *parts: str) -> int:
    """Parameters of the named submodules (all when none), tied tensors once."""
    modules = [objective.get_submodule(p) for p in parts] if parts else [objective]
    unique = {id(p): p for m in modules for p in m.parameters()}
    return sum(p.numel() for p in unique.values())


def build_on_meta(cfg, tokenizer_name: str):
    """The objective with the config's shapes. The tokenizer only supplies special-token ids (its 8192 tokens fit
    in model.vocab_size, which the configs fix); parameters live on the meta device (nothing allocated)."""
    tokenizer = TextTokenizer.from_file(REPO_ROOT / "tokenizers" / tokenizer_name / "tokenizer.json")
    assert cfg.model.vocab_size >= tokenizer.vocab_size
    with torch.device("meta"):
        return build_objective(cfg, tokenizer)


def within(value: int, documented: float, tolerance: float = 0.01) -> bool:
    return abs(value - documented) <= tolerance * documented


def test_all_gpu_configs_are_covered():
    assert sorted(p.stem for p in GPU_CONFIGS.glob("*.yaml")) == [
        "bert-base-mlm", "electra-small", "gpt2-124m-clm", "llama-162m-clm", "modernbert-base-mlm", "simcse-bert-base"]


def test_bert_base_mlm():
    cfg = load_gpu_config("bert-base-mlm")
    m = cfg.model
    assert (m.preset, m.hidden_size, m.num_layers, m.num_heads, m.ffn_size, m.vocab_size) == (
        "bert", 768, 12, 12, 3072, 30522)
    assert (cfg.objective.name, cfg.objective.sentence_task, cfg.data.seq_len) == ("mlm", "nsp", 512)
    assert (cfg.data.tokenizer_type, cfg.data.tokenizer_vocab_size) == ("wordpiece", 30522)
    assert m.attention_backend == "auto" and cfg.train.precision == "bf16"
    objective = build_on_meta(cfg, "wikitext2-wordpiece")
    total = count(objective)
    assert total == 110_106_428  # Hugging Face BertForPreTraining (bert-base-uncased's shape)
    assert within(total, 110e6)  # BERT-base: 110M (Devlin et al. 2019, §3)
    assert count(objective, "trunk") == 108_891_648  # BertModel without its pooler


def test_gpt2_124m_clm():
    cfg = load_gpu_config("gpt2-124m-clm")
    m = cfg.model
    assert (m.preset, m.hidden_size, m.num_layers, m.num_heads, m.ffn_size, m.max_positions) == (
        "gpt2", 768, 12, 12, 3072, 1024)
    assert (cfg.objective.name, cfg.data.seq_len, cfg.data.document_mask) == ("clm", 1024, True)
    assert (cfg.data.tokenizer_type, cfg.data.tokenizer_vocab_size) == ("bpe", 50257)
    assert m.vocab_size == 50304 and m.vocab_size % 64 == 0  # 50257 padded for the tensor cores
    objective = build_on_meta(cfg, "wikitext2-bpe")
    total = count(objective)
    assert total == 124_439_808 + (50304 - 50257) * 768  # GPT2LMHeadModel (tied head) at the padded vocabulary
    assert within(total, 124_439_808)  # GPT-2 small, 124M at 50257 tokens


def test_electra_small():
    cfg = load_gpu_config("electra-small")
    m = cfg.model
    assert (m.hidden_size, m.embedding_size, m.num_layers, m.num_heads, m.ffn_size, m.vocab_size) == (
        256, 128, 12, 4, 1024, 30522)
    assert (cfg.objective.name, cfg.objective.generator_size, cfg.data.seq_len) == ("electra", 0.25, 128)
    objective = build_on_meta(cfg, "wikitext2-wordpiece")
    gen = objective.generator.trunk.cfg
    assert (gen.hidden_size, gen.num_heads, gen.ffn_size, gen.num_layers) == (64, 1, 256, 12)
    assert objective.generator.trunk.embeddings is objective.trunk.embeddings
    discriminator = count(objective, "trunk", "head")
    assert discriminator == 13_549_057  # Hugging Face ElectraForPreTraining at ELECTRA-Small's shape
    assert within(discriminator, 13.5e6)  # ELECTRA-Small: 14M (Clark et al. 2020, Table 1), 13.5M exactly


def test_simcse_bert_base():
    cfg = load_gpu_config("simcse-bert-base")
    bert = load_gpu_config("bert-base-mlm")
    assert cfg.model.init_from == bert.train.output_dir  # starts from the BERT-base run
    shape = {f.name for f in dataclasses.fields(cfg.model)} - {"init_from", "dropout", "attention_dropout"}
    assert {k: getattr(cfg.model, k) for k in shape} == {k: getattr(bert.model, k) for k in shape}
    assert (cfg.objective.name, cfg.objective.temperature, cfg.data.seq_len, cfg.train.batch_size) == (
        "simcse", 0.05, 32, 64)
    objective = build_on_meta(cfg, "wikitext2-wordpiece")
    assert count(objective, "trunk") == 108_891_648


def hf_count(cfg, tokenizer_name: str) -> int:
    """Parameters of the Hugging Face model our export of `cfg` becomes (its config.json), built on meta."""
    transformers = pytest.importorskip("transformers")
    tokenizer = TextTokenizer.from_file(REPO_ROOT / "tokenizers" / tokenizer_name / "tokenizer.json")
    config = export_config(cfg, tokenizer)
    auto = transformers.AutoModelForCausalLM if cfg.objective.name == "clm" else transformers.AutoModelForMaskedLM
    with torch.device("meta"):
        return sum(p.numel() for p in auto.from_config(transformers.AutoConfig.for_model(**config)).parameters())


def test_modernbert_base_mlm():
    cfg = load_gpu_config("modernbert-base-mlm")
    m = cfg.model
    assert (m.preset, m.hidden_size, m.num_layers, m.num_heads, m.ffn_size, m.vocab_size, m.max_positions) == (
        "modernbert", 768, 22, 12, 1152, 50368, 1024)
    assert (m.norm, m.mlp, m.position, m.bias, m.rope_theta) == ("pre", "geglu", "rope", False, 160000.0)
    assert (cfg.objective.name, cfg.objective.sentence_task, cfg.objective.mask_rate) == ("mlm", "none", 0.3)
    total = count(build_on_meta(cfg, "wikitext2-wordpiece"))
    assert total == hf_count(cfg, "wikitext2-wordpiece") == 149_655_232  # ModernBertForMaskedLM at this shape
    assert within(total, 149e6)  # ModernBERT-base: 149M (Warner et al. 2024, Table 1)


def test_llama_162m_clm():
    cfg = load_gpu_config("llama-162m-clm")
    m = cfg.model
    gpt2 = load_gpu_config("gpt2-124m-clm").model
    assert (m.preset, m.hidden_size, m.num_layers, m.num_heads, m.vocab_size, m.max_positions) == (
        "llama", gpt2.hidden_size, gpt2.num_layers, gpt2.num_heads, gpt2.vocab_size, gpt2.max_positions)
    assert 3 * m.ffn_size == 2 * gpt2.ffn_size  # SwiGLU's three matrices cost GPT-2's two
    assert (m.norm_type, m.mlp, m.bias, m.tie_embeddings) == ("rmsnorm", "swiglu", False, False)
    objective = build_on_meta(cfg, "wikitext2-bpe")
    assert count(objective) == hf_count(cfg, "wikitext2-bpe") == 162_220_800  # LlamaForCausalLM at this shape
    assert count(objective, "trunk") == 123_587_328
