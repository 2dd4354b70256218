"""ModelDir (lmssl.checkpoint.model_dir): one opener for every kind of model directory, read once, and what each
kind refuses."""
from __future__ import annotations

import shutil

import pytest
import torch
from helpers import cli_result, count_model_dir_opens, file_reads, save_model

from lmssl.checkpoint.format import save_finetuned
from lmssl.checkpoint.model_dir import ModelDir
from lmssl.errors import ConfigError
from lmssl.interop.hf.export import export
from lmssl.model.classifier import SequenceClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(checkpoints, tmp_path_factory):
    """A run directory whose latest checkpoint is the tiny CLM's (an older one beside it)."""
    root = tmp_path_factory.mktemp("run")
    for step in ("step-0000001", "step-0000003"):
        shutil.copytree(checkpoints["clm"], root / "checkpoints" / step)
    return root


def test_a_run_directory_opens_its_latest_checkpoint(run, checkpoints):
    opened = ModelDir.open(run)
    assert opened.path == run / "checkpoints" / "step-0000003" and opened.kind == "checkpoint"
    assert opened.config.objective.name == "clm" and opened.tokenizer.vocab_size == opened.config.model.vocab_size
    objective = opened.objective()
    assert not objective.training and objective.causal
    reference = ModelDir.open(checkpoints["clm"]).objective()
    assert all(torch.equal(a, b) for a, b in zip(objective.state_dict().values(), reference.state_dict().values()))


def test_a_fine_tuned_directory_gives_its_classifier_and_refuses_pretraining_heads(checkpoints, tmp_path):
    opened = ModelDir.open(checkpoints["mlm"])
    torch.manual_seed(0)
    model = SequenceClassifier(opened.config.model, False, 2, False, True)
    info = {"card": {"name": "toy", "labels": ["0", "1"]}, "causal": False, "use_pooler": True, "max_length": 32,
            "checkpoint": str(checkpoints["mlm"])}
    save_finetuned(tmp_path / "best", model, opened.config, opened.tokenizer, info)
    finetuned = ModelDir.open_finetuned(tmp_path / "best")
    assert finetuned.kind == "finetuned" and finetuned.finetune_info == info
    classifier = finetuned.classifier()
    assert all(torch.equal(a, b) for a, b in zip(classifier.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ConfigError, match=f"is a fine-tuned toy classifier .*give the pretrained checkpoint it came "
                                          f"from \\({checkpoints['mlm']}\\) instead"):
        finetuned.objective()
    with pytest.raises(ConfigError, match="not a fine-tuned model directory \\(no finetune.json\\)"):
        ModelDir.open_finetuned(checkpoints["mlm"])
    with pytest.raises(ConfigError, match="not a fine-tuned model directory"):
        opened.classifier()


def test_a_hugging_face_directory_opens_as_the_objective_that_imports_it(checkpoints, tmp_path):
    export(checkpoints["mlm"], tmp_path / "hf")
    opened = ModelDir.open(tmp_path / "hf")
    assert opened.kind == "hf" and opened.config.objective.name == "mlm"
    ours = ModelDir.open(checkpoints["mlm"]).objective().state_dict()
    theirs = opened.objective().state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_what_is_no_model_directory_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=f"key 'model.init_from': {tmp_path} is neither an lmssl checkpoint"):
        ModelDir.open(tmp_path, "model.init_from")
    with pytest.raises(ConfigError, match=f"^{tmp_path}: not an lmssl checkpoint"):
        ModelDir.open(tmp_path)


def test_a_damaged_checkpoint_is_refused_at_open(checkpoints, tmp_path):
    from lmssl.checkpoint.format import seal

    copy = shutil.copytree(checkpoints["clm"], tmp_path / "ckpt")
    seal(copy)
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text() + "\n")
    with pytest.raises(ConfigError, match="damaged: config.yaml is .* bytes, manifest.json says"):
        ModelDir.open(copy)


def test_lmssl_eval_reads_the_model_directory_once(run, monkeypatch, capsys, data_root):
    opens = count_model_dir_opens(monkeypatch)
    latest = run / "checkpoints" / "step-0000003"
    with file_reads(run) as reads:
        code, result, err = cli_result(capsys, "eval", "ppl", run, "wikitext-2/test.txt", "--max-words", "40")
    assert code == 0, err
    assert result["checkpoint"] == str(latest)
    assert opens == [run]  # one opening serves the check of the objective, the window and the weights
    assert reads["checkpoints/step-0000003/config.yaml"] == 1
    assert not any(name.startswith("checkpoints/step-0000001") for name in reads)


def test_save_model_writes_what_model_dir_reads(checkpoints, tmp_path):
    opened = ModelDir.open(checkpoints["electra"])
    copy = save_model(tmp_path / "copy", opened.objective(), opened.config, opened.tokenizer)
    again = ModelDir.open(copy)
    assert again.config == opened.config and again.tokenizer.fingerprint() == opened.tokenizer.fingerprint()
