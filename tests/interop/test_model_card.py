"""The model card (README.md) every export writes: the config, the data, the run's metrics up to the exported step
(metrics.jsonl), a fine-tuned model's dev metrics and baselines (results.json), and a loading snippet that runs."""
from __future__ import annotations

import json
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import save_model  # noqa: E402
from hf_parity import tiny_objective  # noqa: E402

from lmssl.checkpoint.format import save_finetuned  # noqa: E402
from lmssl.interop.hf.export import export  # noqa: E402
from lmssl.model.classifier import SequenceClassifier  # noqa: E402


def run_snippet(card: str) -> dict:
    """Run the card's first ```python block; its variables."""
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    scope: dict = {}
    exec(code, scope)  # our own generated text, in a test
    return scope


def test_a_pretraining_export_card_holds_config_data_metrics_and_loads(tmp_path):
    cfg, tok, obj = tiny_objective({"name": "clm"})
    run = tmp_path / "run"
    save_model(run / "checkpoints" / "step-0000004", obj, cfg, tok)
    rows = [{"step": 2, "loss": 7.5}, {"step": 4, "loss": 6.25}, {"step": 4, "val_loss": 6.5, "val_ppl": 665.1416,
                                                                   "flops": 1200},
            {"step": 6, "loss": 5.0}, {"step": 6, "val_loss": 5.5, "val_ppl": 244.69}]  # after the checkpoint
    # ... and a last line a kill cut short (the README says a killed run can leave one): left out, as resume does
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "lo')
    export(run, tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\ntags:\n- lmssl\n- clm\n---\n\n# hf\n")
    source = run / "checkpoints" / "step-0000004"
    assert f"exported by `lmssl export` from `{source}` as GPT2LMHeadModel" in card
    assert "| `model.hidden_size` | 32 |" in card and "| `model.num_layers` | 2 |" in card
    assert "| `data.seq_len` | 32 |" in card and f"| `data.tokenizer` | {cfg.data.tokenizer} |" in card
    assert "Validation on `data.valid` at step 4" in card
    assert "| `val_ppl` | 665.1 |" in card and "| `val_loss` | 6.5 |" in card and "| `flops` | 1200 |" in card
    assert "244.7" not in card and "Last logged training step 4: loss 6.25." in card
    scope = run_snippet(card)
    assert type(scope["model"]).__name__ == "GPT2LMHeadModel" and scope["tokenizer"].eos_token_id == tok.eos_id
    save_model(run / "best", obj, cfg, tok)  # the run's best/ (SimCSE's selection): its step from best.json
    (run / "best" / "best.json").write_text(json.dumps({"step": 2, "val_loss": 7.0}))
    export(run / "best", tmp_path / "best-hf")
    card = (tmp_path / "best-hf" / "README.md").read_text()
    assert "Last logged training step 2: loss 7.5." in card and "Validation on" not in card


def test_a_checkpoint_outside_a_run_and_electra_say_what_they_lack(tmp_path):
    cfg, tok, obj = tiny_objective({"name": "electra", "generator_size": 0.5})
    export(save_model(tmp_path / "ckpt", obj, cfg, tok), tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"No metrics.jsonl beside `{tmp_path / 'ckpt'}` (not inside a run directory)." in card
    assert "ElectraForPreTraining (`discriminator`), ElectraForMaskedLM (`generator`)" in card
    scope = run_snippet(card)
    assert type(scope["discriminator"]).__name__ == "ElectraForPreTraining"
    assert type(scope["generator"]).__name__ == "ElectraForMaskedLM"
    # its two model directories and card are a model directory: --overwrite replaces it (and nothing else)
    assert export(tmp_path / "ckpt", tmp_path / "hf", overwrite=True)["out"] == str(tmp_path / "hf")


def test_a_finetuned_export_card_holds_its_dev_metrics_and_baselines(tmp_path):
    cfg, tok, obj = tiny_objective({"name": "mlm"})
    torch.manual_seed(0)
    model = SequenceClassifier(cfg.model, False, 2, False, True)
    card = {"name": "toy", "train": "train.csv", "dev": {"dev": "dev.csv"}, "labels": ["no", "yes"]}
    save_finetuned(tmp_path / "ft" / "best", model, cfg, tok, {
        "card": card, "causal": False, "use_pooler": True, "max_length": 32, "mode": "finetune",
        "checkpoint": "runs/mlm/checkpoints/step-0000002", "seed": 1, "epoch": 2, "metrics": {"accuracy": 0.75}})
    results = {"task": "toy", "metrics": {"accuracy": 0.8125}, "seeds": [{}, {}], "train_examples": 64,
               "baselines": {"majority": {"accuracy": 0.5}, "bow": {"accuracy": 0.6875}}}
    (tmp_path / "ft" / "results.json").write_text(json.dumps(results))
    export(tmp_path / "ft" / "best", tmp_path / "hf")
    text = (tmp_path / "hf" / "README.md").read_text()
    assert "A toy classifier exported by `lmssl export`" in text and "BertForSequenceClassification" in text
    assert "task `toy` (train: `train.csv`" in text and "`runs/mlm/checkpoints/step-0000002`" in text
    assert "mean over 2 seed(s) (results.json, 64 training examples)" in text and "| `accuracy` | 0.8125 |" in text
    assert "| `accuracy` | 0.5 | 0.6875 |" in text  # majority, bag of words
    (tmp_path / "ft" / "results.json").unlink()  # without results.json: the exported evaluation's own metrics
    export(tmp_path / "ft" / "best", tmp_path / "hf", overwrite=True)
    text = (tmp_path / "hf" / "README.md").read_text()
    assert "(finetune.json)" in text and "| `accuracy` | 0.75 |" in text and "majority" not in text
    scope = run_snippet(text)
    assert type(scope["model"]).__name__ == "BertForSequenceClassification"
