"""A fifth objective added from this file alone, with one class and one registry call: it trains on WikiText-2.
The evaluators and export refuse it by naming the capability it does not declare, and STS embeds with the
encoder it inherits. Nothing in lmssl/ knows about it."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmssl.cli import main
from lmssl.config import OBJECTIVE_CONFIGS
from lmssl.model.transformer import Transformer
from lmssl.objectives import IGNORE_INDEX, OBJECTIVES, Batch, Objective, ObjectiveSpec, Output, register
from lmssl.objectives.base import stack_examples
from lmssl.training.loop import train
from lmssl.training.prepare import load_run_config


class TokenCopy(Objective):
    """Predict 15% of the tokens from the uncorrupted sequence: a vocabulary head, but no language model."""
    causal = False

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        self.trunk = Transformer(cfg.model)
        self.proj = nn.Linear(cfg.model.hidden_size, cfg.model.vocab_size)

    def packing_ids(self, tokenizer):
        return tokenizer.sep_id, tokenizer.cls_id

    def collate(self, examples, generator):
        ids, spec = stack_examples(examples, self.causal, self.cfg.data.document_mask)
        chosen = torch.rand(ids.shape, generator=generator) < 0.15
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
        return Batch(ids, spec, labels, int(chosen.sum()))

    def forward(self, batch):
        where = batch.labels != IGNORE_INDEX
        logits = self.proj(self.trunk(batch.input_ids, batch.spec)[where]).float()
        loss = F.cross_entropy(logits, batch.labels[where])
        return Output(loss, {"copy_acc": (logits.argmax(-1) == batch.labels[where]).float().mean()})


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    register(ObjectiveSpec("token_copy", TokenCopy))  # the one registry call
    out = tmp_path_factory.mktemp("toy") / "run"
    cfg = load_run_config(None, [
        "objective.name=token_copy", "model.hidden_size=64", "model.num_layers=2", "model.num_heads=4",
        "model.ffn_size=128", "data.seq_len=64", "data.train=wikitext-2/valid.txt", "data.valid=wikitext-2/test.txt",
        f"train.output_dir={out}", "train.batch_size=8", "train.max_steps=40", "train.lr=3e-3", "train.log_every=1",
        "train.tensorboard=false", "train.warmup_steps=5", "eval.max_batches=2", "eval.likelihood_max_words=100"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = train(cfg)
    torch.set_num_threads(threads)
    yield out, result
    OBJECTIVES.pop("token_copy")
    OBJECTIVE_CONFIGS.pop("token_copy")


@pytest.mark.slow
def test_a_registered_objective_trains_on_wikitext(run):
    out, result = run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert "val_copy_acc" in result and "val_pppl" not in result  # no language model: no likelihood evaluation
    assert (out / "checkpoints" / "step-0000040" / "config.yaml").read_text().count("token_copy") == 1


@pytest.mark.parametrize("command", ["ppl", "pppl"])
def test_likelihood_evaluators_refuse_it_naming_the_capability(run, capsys, command):
    code = main(["eval", command, str(run[0]), "wikitext-2/test.txt", "--max-words", "50"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "objective is 'token_copy'" in err and "Objective.language_model() is None" in err


def test_export_refuses_it_naming_the_missing_adapter(run, capsys, tmp_path):
    code = main(["export", str(run[0]), str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "objective 'token_copy': it declares no Hugging Face adapter (ObjectiveSpec.hf is None)" in err
    assert not (tmp_path / "hf").exists()


def test_sts_embeds_with_the_encoder_it_inherits(run, capsys, data_root):
    code = main(["eval", "sts", str(run[0]), "--sets", "stsb_dev", "--data-root", str(data_root)])
    line = json.loads(capsys.readouterr().out)
    assert code == 0 and line["objective"] == "token_copy" and line["pooling"] == "cls"
    assert -100 <= line["stsb_dev"] <= 100


def test_the_built_in_objectives_declare_their_config_section_and_adapter():
    for name in ("mlm", "clm", "electra", "simcse"):
        spec = OBJECTIVES[name]
        assert OBJECTIVE_CONFIGS[name] is spec.config and spec.config().name == name and spec.hf is not None
