"""What a user of the command line expects: --version, `config show` with every key's comment, help for every
option (with defaults), JSON only on stdout, TensorBoard tags grouped as train/ and val/, `train.overwrite`
replacing a run only once the new one has a checkpoint, task cards that infer their labels."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from helpers import REPO_ROOT, tiny_config

from lmssl.cli import build_parser, main
from lmssl.config import ConfigError
from lmssl.downstream.tasks import card_from_dict, infer_labels
from lmssl.engine import TorchEngine
from lmssl.evaluation.report import parameter_count
from lmssl.training.logger import tensorboard_tag
from lmssl.training.loop import train

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=64", "data.seq_len=32",
        "train.max_steps=2", "train.save_every=2", "train.num_threads=1", "eval.likelihood_max_words=0"]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == "lmssl 0.1.0\n"


def test_config_show_prints_every_key_with_its_comment(capsys):
    assert main(["config", "show", "configs/clm.yaml", "train.max_steps=7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = [line for line in lines if line.startswith("  ")]
    assert len(keys) > 60 and all("  # " in line for line in keys)
    assert "  max_steps: 7  # optimizer steps" in lines and "  preset: gpt2  # architecture family; sets the " \
        "defaults of the fields below (and names the Hugging Face class an export becomes)" in lines
    assert "  norm: pre  # norm placement: after each residual add (BERT), before each branch (GPT-2)" in lines
    assert "  mlp: gelu  # feed-forward: act(x W1) W2, or gated: (act(x W) * x V) W2" in lines


def parsers(parser: argparse.ArgumentParser, path=("lmssl",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, (*path, name))


def test_every_option_of_every_command_has_help():
    missing = [f"{' '.join(path)} {action.dest}" for path, parser in parsers(build_parser())
               for action in parser._actions if not action.help and not isinstance(action, argparse._SubParsersAction)]
    assert not missing, missing
    train_help = dict(parsers(build_parser()))[("lmssl", "train")].format_help()
    assert "model.hidden_size (256): width of the residual stream" in train_help
    assert "objective.mask_rate (mlm: 0.15): fraction of maskable tokens chosen for prediction" in train_help
    generate_help = dict(parsers(build_parser()))[("lmssl", "generate")].format_help()
    assert "(default: 50)" in generate_help and "(default: False)" not in generate_help


def test_tokenizer_training_prints_only_json_on_stdout(tmp_path, data_root):
    done = subprocess.run([sys.executable, "-m", "lmssl", "tokenizer", "train", str(data_root / "wikitext-2" /
                                                                                      "valid.txt"),
                           "--type", "bpe", "--vocab-size", "300", "--out", str(tmp_path / "tok")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and json.loads(done.stdout)["vocab_size"] == 300  # one JSON document, nothing else
    assert done.stdout.count("\n") == 1 and done.stderr == ""  # no blank lines of a bar drawn into a pipe


def test_tensorboard_tags_are_grouped(tmp_path, data_root):
    assert [tensorboard_tag(k) for k in ("loss", "val_loss", "val_mlm_acc", "stsb_dev_spearman")] == [
        "train/loss", "val/loss", "val/mlm_acc", "val/stsb_dev_spearman"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_config("clm", tmp_path / "run", *TINY, "train.tensorboard=true"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "val/loss", "val/clm_acc"} <= set(tags)
    assert not [t for t in tags if "/" not in t]


def test_overwrite_replaces_a_run_only_once_the_new_one_has_a_checkpoint(tmp_path, data_root, monkeypatch, capsys):
    out = tmp_path / "run"
    first = train(tiny_config("clm", out, *TINY))
    old_metrics = (out / "metrics.jsonl").read_text()
    real_step = TorchEngine.train_step

    def crash(self, batches):
        raise RuntimeError("the new run dies before its first checkpoint")

    monkeypatch.setattr(TorchEngine, "train_step", crash)
    with pytest.raises(RuntimeError, match="dies before"):
        train(tiny_config("clm", out, *TINY, "train.overwrite=true", "train.seed=5"))
    assert (out / "metrics.jsonl").read_text() == old_metrics and first["checkpoint"].endswith("step-0000002")
    monkeypatch.setattr(TorchEngine, "train_step", real_step)
    capsys.readouterr()
    second = train(tiny_config("clm", out, *TINY, "train.overwrite=true", "train.seed=5", "train.max_steps=4",
                               "train.tensorboard=true"))
    assert second["checkpoint"] == str(out / "checkpoints" / "step-0000004")
    assert (out / "metrics.jsonl").read_text() != old_metrics  # the new run's own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging or old directory left
    # TensorBoard went on in the run's new place after the swap at step 2 (issue 29: it kept the staging path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val/loss")] == [4] and "TensorBoard" not in capsys.readouterr().err
    with pytest.raises(ConfigError, match="train.overwrite': and train.resume=true contradict each other"):
        tiny_config("clm", out, *TINY, "train.overwrite=true", "train.resume=true")


def test_task_cards_infer_their_labels_from_the_training_file(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,pos\nb,neg\nc,neu\nd,pos\n")
    raw = {"train": "train.csv", "dev": "train.csv", "text_columns": "text", "label_column": "label"}
    card = card_from_dict(raw, str(tmp_path / "task.yaml"))
    assert card.labels == [] and infer_labels(card, tmp_path).labels == ["neg", "neu", "pos"]
    (tmp_path / "train.csv").write_text("text,label\na,10\nb,9\nc,2\n")
    assert infer_labels(card, tmp_path).labels == ["2", "9", "10"]  # numbers sort as numbers
    (tmp_path / "train.csv").write_text("text,label\na,1\nb,1\n")
    with pytest.raises(ConfigError, match="holds 1 distinct value"):
        infer_labels(card, tmp_path)


def test_parameter_counts_keep_three_figures():
    assert [parameter_count(n) for n in (274_000, 1_850_000, 12_345_678, 110_106_428)] == [
        "274K", "1.85M", "12.3M", "110M"]
