import json
import math

import pytest
import torch
from helpers import tiny_config
from safetensors.torch import load_file

from lmssl.checkpoint.format import latest_checkpoint, list_checkpoints, load_checkpoint_config
from lmssl.config import ConfigError
from lmssl.data import load_tokenizer
from lmssl.engine.torch_engine import TorchEngine
from lmssl.objectives import build_objective
from lmssl.training.loop import train
from lmssl.training.prepare import with_vocab


def read_metrics(output_dir):
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("objective, config, extra", [
    ("mlm", "mlm-nsp", []), ("mlm", "mlm", []), ("clm", "clm", []),
    ("mlm", "mlm-nsp", ["data.document_mask=true", "objective.whole_word=true"])])
def test_training_on_wikitext_lowers_the_loss(objective, config, extra, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_config(objective, out, "train.max_steps=100", "train.lr=3e-3", "train.save_every=50", *extra,
                      config=config)  # mlm: BERT's recipe, and the main job's (packed, 30% masked, Muon)
    result = train(cfg)
    steps, evals = read_metrics(out)
    assert [r["step"] for r in steps] == list(range(1, 101))
    for key in ("loss", "lr", "tokens_per_s", "grad_norm"):
        assert all(math.isfinite(r[key]) for r in steps)
    first = sum(r["loss"] for r in steps[:5]) / 5
    last = sum(r["loss"] for r in steps[-5:]) / 5
    assert last < first - 1.5, (first, last)  # from ln(8192) = 9.0 to unigram statistics (~6.5) and beyond
    acc = "val_mlm_acc" if objective == "mlm" else "val_clm_acc"
    assert evals[-1] == {k: v for k, v in result.items() if k.startswith("val_")} | {"step": 100,
                                                                                      "flops": result["flops"]}
    # the LM loss (configs/mlm-nsp.yaml adds NSP, whose loss is part of val_loss)
    assert result[f"val_{objective}_loss"] < 7.0 and result[acc] > 0.03, result  # chance accuracy is 1/8192
    # each final metric beside its baseline (the unigram model of the training tokens, or chance)
    nsp = getattr(cfg.objective, "sentence_task", "none") == "nsp"
    expected = {"mlm": {"val_mlm_acc", "val_mlm_loss", "val_pppl"} | ({"val_nsp_acc"} if nsp else set()),
                "clm": {"val_clm_acc", "val_clm_loss", "val_ppl", "val_sliding_ppl"}}[objective]
    assert set(result["baselines"]) == expected
    assert 0.01 < result["baselines"][acc] < 0.2 and 5.0 < result["baselines"][f"val_{objective}_loss"] < 8.0
    if nsp:  # the majority label's share among the pairs validation scored (eval.max_batches)
        tokenizer = load_tokenizer(cfg)
        labels = build_objective(with_vocab(cfg, tokenizer.vocab_size), tokenizer).dataset("valid", tokenizer).labels
        scored = labels[:cfg.eval.max_batches * cfg.eval.batch_size or len(labels)]
        assert result["baselines"]["val_nsp_acc"] == pytest.approx(max(scored.mean(), 1 - scored.mean()))
    assert "final validation at step 100" in capsys.readouterr().err
    assert [p.name for p in list_checkpoints(out)] == ["step-0000050", "step-0000100"]
    ckpt = latest_checkpoint(out)
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "config.yaml", "tokenizer.json",
                                                "trainer_state.pt", "manifest.json"}
    assert load_checkpoint_config(ckpt).model.vocab_size == 8192  # the resolved config
    weights = load_file(ckpt / "model.safetensors")
    assert any(k.startswith("trunk.layers.1.") for k in weights)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["train.optimizer=muon"], ["train.schedule=wsd", "train.decay_fraction=0.5"]],
                         ids=["adamw", "muon", "wsd"])
def test_interrupted_and_resumed_run_reproduces_the_losses_exactly(extra, data_root, tmp_path, monkeypatch):
    """With each optimizer, and with wsd (its decay starts at step 7, after the crash), from the step-4 checkpoint."""
    common = ["train.max_steps=12", "train.save_every=4", "train.keep_checkpoints=0", *extra]
    straight = tmp_path / "straight"
    train(tiny_config("mlm", straight, *common))

    interrupted = tmp_path / "interrupted"
    real_step = TorchEngine.train_step
    calls = {"n": 0}

    def crash_after_six(self, batches):
        if calls["n"] == 6:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_step(self, batches)

    monkeypatch.setattr(TorchEngine, "train_step", crash_after_six)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config("mlm", interrupted, *common))
    assert latest_checkpoint(interrupted).name == "step-0000004"
    monkeypatch.setattr(TorchEngine, "train_step", real_step)
    with pytest.raises(ConfigError, match="train.resume=true"):
        train(tiny_config("mlm", interrupted, *common))
    train(tiny_config("mlm", interrupted, *common, "train.resume=true"))

    def trajectory(out):
        return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r.get("muon_lr"), r["mlm_acc"])
                for r in read_metrics(out)[0]]

    assert trajectory(interrupted) == trajectory(straight)  # bit-exact, steps 5-6 logged once
    lrs = [(lr, muon_lr) for _, _, _, lr, muon_lr, _ in trajectory(straight)]
    if extra == ["train.optimizer=muon"]:  # Muon's own peak, on the same schedule
        assert [muon for _, muon in lrs] == pytest.approx([20 * lr for lr, _ in lrs], rel=1e-12)
    if extra and extra[0] == "train.schedule=wsd":  # warmup to step 5, stable to step 7, then the decay
        assert [lr for lr, _ in lrs] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3, 1e-3, 1e-3, 1e-3 * 5 / 6,
                                                       1e-3 * 4 / 6, 1e-3 * 3 / 6, 1e-3 * 2 / 6, 1e-3 * 1 / 6])
    a = load_file(latest_checkpoint(straight) / "model.safetensors")
    b = load_file(latest_checkpoint(interrupted) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_bf16_autocast_and_accumulation_train(data_root, tmp_path):
    result = train(tiny_config("clm", tmp_path / "bf16", "train.max_steps=3", "train.precision=bf16",
                               "train.grad_accum=2"))
    assert math.isfinite(result["val_loss"])


@pytest.mark.slow
def test_streaming_training(data_root, tmp_path):
    out = tmp_path / "stream"
    train(tiny_config("clm", out, "train.max_steps=4", "data.streaming=true", "data.shuffle_buffer=16"))
    assert len(read_metrics(out)[0]) == 4
