"""The online linear probe (eval.probe_task): logged during pretraining, equal to `lmssl finetune ... probe=true` on
the same checkpoint and examples."""
from __future__ import annotations

import json

import pytest
from helpers import KINDS, cli, tiny_config

from lmssl.errors import ConfigError
from lmssl.training.loop import train


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlm_nsp", "clm"])  # [CLS] features, last-token features
def test_online_probe_equals_lmssl_finetune_probe(kind, tmp_path, data_root, capsys):
    objective, *extra = KINDS[kind]
    cfg = tiny_config(objective, tmp_path / "run", *extra, "train.max_steps=6", "eval.every=3",
                      "eval.likelihood_max_words=0", "eval.probe_task=sst2", "eval.probe_examples=120",
                      "eval.batch_size=16")
    result = train(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    probed = [line for line in lines if "val_probe_accuracy" in line]
    assert [line["step"] for line in probed] == [3, 6] and all("flops" in line for line in probed)
    assert result["val_probe_accuracy"] == probed[-1]["val_probe_accuracy"]
    code, out, _ = cli(capsys, "finetune", result["checkpoint"], "sst2", "finetune.probe=true",
                       "finetune.max_train_examples=120", "finetune.max_dev_examples=120",
                       "finetune.eval_batch_size=16", f"finetune.output_dir={tmp_path / 'probe'}")
    assert code == 0
    offline = json.loads(out.strip().splitlines()[-1])
    assert offline["train_examples"] == 120 and offline["mode"] == "probe"
    assert result["val_probe_accuracy"] == pytest.approx(offline["accuracy"], abs=0.005)  # rounded to 2 decimals
    saved = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert saved["dev_examples"] == {"dev": 120}
    assert result["val_probe_accuracy"] == saved["metrics"]["accuracy"]  # exactly


def test_a_bad_probe_task_stops_before_training(tmp_path, data_root):
    cfg = tiny_config("clm", tmp_path / "run", "eval.probe_task=sst3")
    with pytest.raises(ConfigError, match=r"key 'eval.probe_task': unknown task 'sst3'.*sst2"):
        train(cfg)
    assert not (tmp_path / "run").exists()
