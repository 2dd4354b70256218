"""The modernbert and llama presets are Hugging Face's ModernBertForMaskedLM and LlamaForCausalLM: exports load
with the Auto classes and give our logits (1e-5, fp32), greedy generation equals `generate`, fill-mask equals the
HF model's top-k, models made by transformers import with their logits, and what they cannot express is refused
naming the field."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import open_model, save_model
from hf_parity import ATOL, BPE, TEXTS, WORDPIECE, assert_greedy_decoding_is_generates, tiny_objective, transformers

from lmssl.config import ConfigError
from lmssl.data.tokenizer import TextTokenizer
from lmssl.inference.fill_mask import fill_mask
from lmssl.interop.hf.export import export
from lmssl.interop.hf.importer import import_model
from lmssl.model.attention import AttnSpec


def loaded(cls, directory):
    model, info = cls.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def padded_batch(tok):
    """[CLS] text [SEP] rows, right-padded, and their attention mask."""
    rows = [[tok.cls_id, *ids, tok.sep_id] for ids in tok.encode_batch(TEXTS)]
    rows[1] = rows[1][:12]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows])
    return ids, torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])


def assert_close(ours, theirs):
    assert theirs.std() > 0.05  # non-trivial outputs
    assert (ours - theirs).abs().max().item() <= ATOL


@pytest.fixture(scope="module")
def modernbert(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modernbert")
    cfg, tok, obj = tiny_objective({"name": "mlm"}, preset="modernbert")
    assert export(save_model(tmp / "ckpt", obj, cfg, tok), tmp / "hf")["architectures"] == {
        ".": "ModernBertForMaskedLM"}
    return loaded(transformers.AutoModelForMaskedLM, tmp / "hf"), cfg, tok, obj, tmp


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama")
    cfg, tok, obj = tiny_objective({"name": "clm"}, preset="llama")
    assert export(save_model(tmp / "ckpt", obj, cfg, tok), tmp / "hf")["architectures"] == {".": "LlamaForCausalLM"}
    return loaded(transformers.AutoModelForCausalLM, tmp / "hf"), cfg, tok, obj, tmp


def test_modernbert_export_gives_our_logits(modernbert):
    hf, cfg, tok, obj, _ = modernbert
    assert type(hf).__name__ == "ModernBertForMaskedLM"
    assert hf.decoder.weight is hf.model.embeddings.tok_embeddings.weight  # tied, as ours
    assert set(hf.config.layer_types) == {"full_attention"}
    ids, mask = padded_batch(tok)
    with torch.no_grad():
        ours = obj.head(obj.trunk(ids, AttnSpec.padded(False, mask)))
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close(ours[real], theirs[real])


def test_the_exported_tokenizers_feed_the_models(modernbert, llama):
    """AutoTokenizer on each export gives what its model takes (ModernBERT and Llama have no token types) and
    the ids lmssl encodes."""
    for hf, cfg, tok, obj, tmp in (modernbert, llama):
        enc = transformers.AutoTokenizer.from_pretrained(tmp / "hf")([TEXTS[0]], return_tensors="pt")
        assert set(enc) == {"input_ids", "attention_mask"}
        expected = tok.encode_batch(TEXTS[:1])[0]
        expected = [tok.eos_id, *expected] if obj.causal else [tok.cls_id, *expected, tok.sep_id]
        assert enc.input_ids[0].tolist() == expected
        with torch.no_grad():
            hf(**enc)


def test_modernbert_fill_mask_is_hfs_top_k(modernbert):
    hf, cfg, tok, obj, _ = modernbert
    text = "the game 's battle [MASK] is carried over [MASK] ."
    results = fill_mask(obj, tok, text, top_k=5)
    ids = torch.tensor([[tok.cls_id, *tok.encode_batch([text])[0], tok.sep_id]])
    with torch.no_grad():
        probs = hf(input_ids=ids).logits[0].softmax(-1)
    for r in results:
        scores, tokens = probs[r["position"]].topk(5)
        assert [p["token"] for p in r["predictions"]] == [tok.tokenizer.id_to_token(t) for t in tokens.tolist()]
        assert [p["score"] for p in r["predictions"]] == pytest.approx(scores.tolist(), abs=1e-5)


def test_llama_export_gives_our_logits_and_generation(llama):
    hf, cfg, tok, obj, tmp = llama
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.lm_head.weight is not hf.model.embed_tokens.weight
    ids = torch.tensor(tok.encode_batch(TEXTS[:1]))
    with torch.no_grad():
        assert_close(obj.head(obj.trunk(ids, AttnSpec.dense(True))), hf(input_ids=ids).logits)
    assert_greedy_decoding_is_generates(obj, tok, tmp / "hf", "Valkyria Chronicles III is a tactical")


@pytest.mark.parametrize("family", ["modernbert", "llama"])
def test_export_then_import_is_lossless(family, modernbert, llama):
    _, cfg, tok, obj, tmp = modernbert if family == "modernbert" else llama
    cfg2, tok2, obj2 = open_model(tmp / "hf")
    assert dataclasses.replace(cfg2.model, init_from="") == cfg.model
    assert tok2.tokenizer.to_str() == tok.tokenizer.to_str()
    ours, theirs = obj.state_dict(), obj2.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def hf_made(family: str):
    """A model built and randomly initialised by transformers itself (its own init, tied or not as its default)."""
    tok = TextTokenizer.from_file(WORDPIECE if family == "modernbert" else BPE)
    shape = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                 intermediate_size=48, max_position_embeddings=64)
    torch.manual_seed(0)
    if family == "modernbert":
        config = transformers.ModernBertConfig(**shape, global_attn_every_n_layers=1, pad_token_id=tok.pad_id,
                                               norm_bias=True, attention_bias=True, mlp_bias=True,
                                               classifier_bias=True)
        return transformers.ModernBertForMaskedLM(config).eval(), tok
    config = transformers.LlamaConfig(**shape, num_key_value_heads=2, rms_norm_eps=1e-5,
                                      rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
                                      bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    return transformers.LlamaForCausalLM(config).eval(), tok


@pytest.mark.parametrize("family", ["modernbert", "llama"])
def test_a_model_made_by_transformers_imports_with_its_logits(family, tmp_path):
    hf, tok = hf_made(family)
    with torch.no_grad():
        for p in hf.parameters():  # HF's init leaves norms at one and biases at zero: randomise every tensor
            p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf")
    import_model(tmp_path / "hf", tmp_path / "ckpt")
    cfg, _, obj = open_model(tmp_path / "ckpt")
    assert cfg.model.preset == family and cfg.model.bias == (family == "modernbert")
    ids = torch.tensor(tok.encode_batch(TEXTS[:1]))
    with torch.no_grad():
        ours = obj.head(obj.trunk(ids, AttnSpec.dense(family == "llama")))
        assert_close(ours, hf(input_ids=ids).logits)


def test_sliding_window_and_grouped_query_models_are_refused(tmp_path):
    hf, tok = hf_made("modernbert")
    hf.config.layer_types = ["full_attention", "sliding_attention", "sliding_attention"]
    hf.save_pretrained(tmp_path / "mb")
    with pytest.raises(ConfigError, match="sliding-window layers"):
        import_model(tmp_path / "mb", tmp_path / "out")
    hf, tok = hf_made("llama")
    hf.config.num_key_value_heads = 1
    hf.save_pretrained(tmp_path / "ll")
    with pytest.raises(ConfigError, match="no grouped-query attention"):
        import_model(tmp_path / "ll", tmp_path / "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("objective, model, key", [
    ({"name": "clm"}, {"preset": "llama", "qk_norm": True}, "model.qk_norm"),
    ({"name": "clm"}, {"preset": "llama", "mlp": "geglu"}, "model.mlp"),
    ({"name": "clm"}, {"preset": "llama", "norm_type": "layernorm"}, "model.norm_type"),
    ({"name": "clm"}, {"norm_type": "rmsnorm"}, "model.norm_type"),
    ({"name": "clm"}, {"bias": False}, "model.bias"),
    ({"name": "mlm"}, {"preset": "modernbert", "position": "learned"}, "model.position"),
    ({"name": "mlm"}, {"preset": "modernbert", "embedding_norm": False}, "model.embedding_norm"),
    ({"name": "mlm", "sentence_task": "nsp"}, {"preset": "modernbert", "type_vocab_size": 2},
     "objective.sentence_task"),
    ({"name": "mlm"}, {"mlp": "swiglu"}, "model.mlp"),
    ({"name": "simcse"}, {"qk_norm": True}, "model.qk_norm"),
    ({"name": "simcse", "pooling": "cls"}, {"pooler": "head"}, "model.pooler"),
    ({"name": "mlm", "sentence_task": "nsp"}, {"pooler": "head"}, "model.pooler"),
])
def test_export_refuses_a_block_the_architecture_lacks(tmp_path, objective, model, key):
    cfg, tok, obj = tiny_objective(objective, **model)
    out = tmp_path / "hf"
    with pytest.raises(ConfigError, match=f"cannot export: key '{key}'"):
        export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)
    assert not out.exists()
