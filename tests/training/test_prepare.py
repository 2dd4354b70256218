"""The one resolve step (lmssl.training.prepare): model.init_from opened once per run, the keys it fills, the FLOP
budget turned into steps, a finished run left untouched."""
from __future__ import annotations

import json
import math

import pytest
from helpers import cli, count_model_dir_opens, file_reads, metrics_rows, tiny_config, write

from lmssl.checkpoint.model_dir import ModelDir
from lmssl.config import RawConfig, read_config
from lmssl.errors import ConfigError
from lmssl.training.prepare import complete_config, fills_from_init, prepare_run

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = "train:\n  max_steps: 2\n  batch_size: 4\n  tensorboard: false\n  warmup_steps: 1\n  log_every: 1\n" \
      "eval:\n  max_batches: 1\n  likelihood_max_words: 0\n"


def test_init_from_is_opened_once_per_run(checkpoints, tmp_path, monkeypatch, capsys, data_root):
    source = checkpoints["mlm"]
    config = write(tmp_path / "cont.yaml", f"model:\n  init_from: {source}\nobjective:\n  name: mlm\n  sentence_task: "
                                          f"none\ndata:\n  train: wikitext-2/valid.txt\n  valid: wikitext-2/test.txt\n"
                                          f"  seq_len: 32\n" + RUN)
    opens = count_model_dir_opens(monkeypatch)
    with file_reads(source) as reads:
        code, out, err = cli(capsys, "train", config, f"train.output_dir={tmp_path / 'run'}")
    assert code == 0, err
    assert opens == [source]  # its model keys, its tokenizer and its weights from one opening
    assert reads["config.yaml"] == 1
    assert f"encoder initialised from {source}" in err
    saved = ModelDir.open(json.loads(out)["checkpoint"]).config.model
    assert saved.hidden_size == 32 and saved.init_from == str(source)  # the source's shape


def test_init_from_fills_only_the_model_keys_left_out(checkpoints):
    source = ModelDir.open(checkpoints["mlm"])
    raw = RawConfig({"model": {"init_from": str(checkpoints["mlm"]), "dropout": 0.3}, "objective": {"name": "mlm"},
                     "data": {"seq_len": 32}}, "test")
    assert fills_from_init(raw) and not fills_from_init(read_config(None, ["model.hidden_size=8"]))
    cfg = complete_config(raw, source)
    assert cfg.model.hidden_size == source.config.model.hidden_size == 32 and cfg.model.dropout == 0.3


def test_a_flop_budget_sets_the_steps_from_the_first_steps_mean(tmp_path, data_root):
    cfg = tiny_config("clm", tmp_path / "run", "train.max_flops=5e10", "train.max_steps=1000")
    with prepare_run(cfg) as run:
        per_step = run.objective.train_flops(run.state.micro_batches(run.objective, 1, cfg.train.seed)[0])
        # a causal step's FLOPs do not depend on its batch (every position is predicted): the mean is any step's
        assert run.cfg.train.max_steps == math.ceil(5e10 / sum(per_step.values())) == 27
        assert run.state.step == 0 and run.log is not None


def test_resuming_a_finished_run_touches_nothing(tmp_path, data_root, capsys):
    cfg = tiny_config("clm", tmp_path / "run", "train.max_steps=2", "train.save_every=2", "eval.max_batches=1",
                      "eval.likelihood_max_words=0")
    from lmssl.training.loop import train

    first = train(cfg)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != "lmssl.lock"}
    again = tiny_config("clm", tmp_path / "run", "train.max_steps=2", "train.resume=true", "eval.max_batches=1",
                        "eval.likelihood_max_words=0")
    assert train(again) == {"step": 2, "checkpoint": first["checkpoint"]}
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != "lmssl.lock"}
    assert after == before and "nothing to do" in capsys.readouterr().err
    assert [r["step"] for r in metrics_rows(tmp_path / "run") if "loss" in r] == [1, 2]


def test_prepare_gives_the_output_directory_back_after_a_bad_input(tmp_path, data_root):
    cfg = tiny_config("clm", tmp_path / "run", "train.batch_size=100000")
    with pytest.raises(ConfigError, match="key 'train.batch_size': only .* sequences, fewer than one batch"):
        prepare_run(cfg)
    assert not (tmp_path / "run").exists()  # a bad input leaves nothing behind
