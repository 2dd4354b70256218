"""train.activation_checkpointing: each block recomputed in backward gives the gradients of the plain run (dropout
on: the recomputation draws the same masks), and a few steps of training the same losses."""
import copy
import json

import torch
from helpers import tiny_config

import lmssl.model.transformer
from lmssl.data import load_tokenizer
from lmssl.model.attention import AttnSpec
from lmssl.model.transformer import Transformer
from lmssl.objectives import build_objective
from lmssl.training.loop import train
from lmssl.training.prepare import with_vocab


def counted_checkpoint(monkeypatch) -> list:
    """The blocks (or Block.forward_at) lmssl.model.transformer hands to torch.utils.checkpoint, in call order."""
    handed = []

    def counting(run, *args, **kwargs):
        handed.append(run)
        return torch.utils.checkpoint.checkpoint(run, *args, **kwargs)

    monkeypatch.setattr(lmssl.model.transformer, "checkpoint", counting)
    return handed


def test_a_checkpointed_step_has_the_plain_gradients_with_dropout(data_root, tmp_path, monkeypatch):
    cfg = tiny_config("mlm", tmp_path, "model.dropout=0.2", "model.attention_dropout=0.2")
    tokenizer = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tokenizer.vocab_size)
    torch.manual_seed(0)
    plain = build_objective(cfg, tokenizer).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.trunk.activation_checkpointing = True
    data = plain.dataset("train", tokenizer)
    batch = plain.collate([data[i] for i in range(8)], torch.Generator().manual_seed(0))
    handed = counted_checkpoint(monkeypatch)
    calls = []  # a pre-hook: backward's recomputation stops early, once it has what it needs
    checkpointed.trunk.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    losses = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout draws in both
        loss = model(batch).loss
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    assert len(handed) == cfg.model.num_layers  # each block (MLM's last one at the masked rows only) checkpointed
    assert len(calls) == 2  # the first block ran twice: forward, then again in backward
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-7, msg=name)
    dropped = copy.deepcopy(plain)  # without the same draws the gradients differ: the check above can fail
    dropped.zero_grad()
    torch.manual_seed(2)
    dropped(batch).loss.backward()
    first = (m.trunk.layers[0].ffn.fc_in.weight.grad for m in (dropped, plain))
    assert not torch.allclose(*first)


def test_training_with_activation_checkpointing_gives_the_same_losses(data_root, tmp_path, monkeypatch):
    handed = counted_checkpoint(monkeypatch)
    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        train(tiny_config("electra", out, "train.max_steps=3", "eval.max_batches=1", "eval.likelihood_max_words=0",
                          "data.seq_len=32", "model.hidden_size=32", "model.ffn_size=64", "train.num_threads=1",
                          "model.dropout=0.1", f"train.activation_checkpointing={flag}"))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[flag] = [r["loss"] for r in rows if "loss" in r]
    assert len(runs["true"]) == 3 and runs["true"] == runs["false"]
    blocks = {id(getattr(run, "__self__", run)) for run in handed}
    assert len(blocks) == 4  # ELECTRA's generator and discriminator blocks, 2 each


def test_checkpointing_is_off_outside_training(data_root, tmp_path):
    cfg = tiny_config("clm", tmp_path)
    trunk = Transformer(with_vocab(cfg, 100).model).eval()
    trunk.activation_checkpointing = True
    ids = torch.randint(0, 100, (2, 8))
    calls = []
    trunk.layers[0].register_forward_hook(lambda *_: calls.append(1))
    trunk(ids, AttnSpec.dense(True)).sum().backward()
    assert len(calls) == 1  # eval mode: a plain forward, nothing recomputed
