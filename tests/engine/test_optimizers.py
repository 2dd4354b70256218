"""train.optimizer (AdamW, or Muon for the blocks' matrices + AdamW for the rest) and train.schedule=wsd: which
tensor each optimizer steps, the schedule's hand-computed values, the optimizer state as plain data."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import built, tiny_config

from lmssl.config import TrainConfig
from lmssl.engine.torch_engine import TorchEngine, build_optimizers, lr_multiplier, parameter_groups
from lmssl.model.weights import load_plain_data

BLOCK_MATRICES = ["attn.out.weight", "attn.qkv.weight", "ffn.fc_in.weight", "ffn.fc_out.weight"]
BLOCK_VECTORS = ["attn.out.bias", "attn.qkv.bias", "attn_norm.bias", "attn_norm.weight", "ffn.fc_in.bias",
                 "ffn.fc_out.bias", "ffn_norm.bias", "ffn_norm.weight"]


def groups_by_name(objective: str, tmp_path) -> dict[str, list[str]]:
    """{"muon": names, "adamw": decayed names, "adamw_no_decay": names} of a one-layer tiny model with muon."""
    cfg, model, _ = built(tiny_config(objective, tmp_path, "train.optimizer=muon", "model.num_layers=1"))
    names = {id(p): n for n, p in model.named_parameters()}
    optimizers = build_optimizers(model, cfg.train)
    assert list(optimizers) == ["adamw", "muon"]
    (muon,) = optimizers["muon"][0].param_groups
    decay, no_decay = optimizers["adamw"][0].param_groups
    assert muon["lr"] == cfg.train.muon_lr * lr_multiplier(0, cfg.train) and muon["momentum"] == 0.95
    assert decay["lr"] == cfg.train.lr * lr_multiplier(0, cfg.train)
    assert muon["weight_decay"] == decay["weight_decay"] == cfg.train.weight_decay and no_decay["weight_decay"] == 0
    grouped = {"muon": muon, "adamw": decay, "adamw_no_decay": no_decay}
    found = {key: sorted(names[id(p)] for p in group["params"]) for key, group in grouped.items()}
    every = [n for group in found.values() for n in group]
    assert sorted(every) == sorted(names.values())  # each parameter in exactly one group (a tied one once)
    return found


def test_muon_steps_the_block_matrices_and_adamw_the_rest_mlm(data_root, tmp_path):
    got = groups_by_name("mlm", tmp_path)
    assert got["muon"] == [f"trunk.layers.0.{n}" for n in BLOCK_MATRICES]
    # the MLM head's transform, BERT's pooler and the NSP classifier are heads: AdamW, decayed
    assert got["adamw"] == ["head.dense.weight", "pooler.dense.weight", "seq_relationship.weight"]
    assert got["adamw_no_decay"] == sorted(
        ["head.decoder.bias", "head.dense.bias", "head.norm.bias", "head.norm.weight", "pooler.dense.bias",
         "seq_relationship.bias", "trunk.embeddings.norm.bias", "trunk.embeddings.norm.weight",
         "trunk.embeddings.position.weight", "trunk.embeddings.token_type.weight", "trunk.embeddings.word.weight",
         *[f"trunk.layers.0.{n}" for n in BLOCK_VECTORS]])


def test_muon_steps_the_block_matrices_and_adamw_the_rest_clm(data_root, tmp_path):
    got = groups_by_name("clm", tmp_path)
    assert got["muon"] == [f"trunk.layers.0.{n}" for n in BLOCK_MATRICES]
    assert got["adamw"] == []  # GPT-2's output projection is the (tied, undecayed) word embedding
    assert got["adamw_no_decay"] == sorted(
        ["trunk.embeddings.position.weight", "trunk.embeddings.word.weight", "trunk.final_norm.bias",
         "trunk.final_norm.weight", *[f"trunk.layers.0.{n}" for n in BLOCK_VECTORS]])


def test_muon_steps_both_trunks_of_electra_but_not_the_generator_projection(data_root, tmp_path):
    got = groups_by_name("electra", tmp_path)
    assert got["muon"] == sorted(f"{trunk}.layers.0.{n}" for trunk in ("trunk", "generator.trunk")
                                 for n in BLOCK_MATRICES)
    assert got["adamw"] == ["generator.head.dense.weight", "generator.trunk.embed_proj.weight", "head.dense.weight",
                            "head.dense_prediction.weight"]


def test_rmsnorm_is_a_norm_without_decay():
    model = nn.ModuleDict({"lin": nn.Linear(4, 4, bias=False), "norm": nn.RMSNorm(4)})
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["params"] == [model["lin"].weight] and no_decay["params"] == [model["norm"].weight]


def test_wsd_schedule_hand_computed():
    # max_steps 20, warmup 4, decay over the last 0.25 x 20 = 5 steps (15-19) from 1 to final_lr_ratio 0.1
    cfg = TrainConfig(max_steps=20, warmup_steps=4, schedule="wsd", decay_fraction=0.25, final_lr_ratio=0.1)
    got = [lr_multiplier(s, cfg) for s in range(21)]
    assert got[:4] == [0.25, 0.5, 0.75, 1.0]  # warmup
    assert got[4:16] == [1.0] * 12  # stable, decay step 15 included (progress 0)
    assert got[16:] == pytest.approx([0.1 + 0.9 * (1 - k / 5) for k in range(1, 6)])  # 0.82, 0.64, 0.46, 0.28, 0.1
    assert got[20] == pytest.approx(0.1)  # the lr after the last step: final_lr_ratio
    # decay_fraction 0: constant to the end; 1: the decay starts after warmup, as the linear schedule
    flat = TrainConfig(max_steps=20, warmup_steps=4, schedule="wsd", decay_fraction=0.0)
    assert [lr_multiplier(s, flat) for s in range(4, 21)] == [1.0] * 17
    whole = TrainConfig(max_steps=20, warmup_steps=4, schedule="wsd", decay_fraction=1.0, final_lr_ratio=0.1)
    linear = TrainConfig(max_steps=20, warmup_steps=4, schedule="linear", final_lr_ratio=0.1)
    assert [lr_multiplier(s, whole) for s in range(21)] == [lr_multiplier(s, linear) for s in range(21)]
    # a decay longer than what follows warmup starts after warmup
    short = TrainConfig(max_steps=10, warmup_steps=8, schedule="wsd", decay_fraction=0.5)
    assert [lr_multiplier(s, short) for s in (7, 8, 9, 10)] == [1.0, 1.0, 0.5, 0.0]


def test_the_schedule_reads_max_steps_when_called():
    """train.max_minutes sets max_steps after the first steps: the schedule then follows the new length."""
    cfg = TrainConfig(max_steps=1000, warmup_steps=2, schedule="linear")
    assert lr_multiplier(6, cfg) == pytest.approx(1 - 4 / 998)
    cfg.max_steps = 10
    assert lr_multiplier(6, cfg) == pytest.approx(0.5)


def test_muon_state_saves_and_loads_as_plain_data(data_root, tmp_path):
    """Both optimizers and schedules go into trainer_state.pt and load back with weights_only=True."""
    cfg, model, _ = built(tiny_config("clm", tmp_path, "train.optimizer=muon", "model.num_layers=1"))
    engine = TorchEngine(model, cfg.train)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    for optimizer, schedule in engine.optimizers.values():
        optimizer.step()
        schedule.step()
    state = engine.save_state(tmp_path)["engine"]
    assert set(state) == {"optimizer", "scheduler", "muon_optimizer", "muon_scheduler"}
    torch.save(state, tmp_path / "state.pt")
    loaded = load_plain_data(tmp_path / "state.pt")
    assert loaded["muon_scheduler"]["last_epoch"] == 1
    momentum = [s["momentum_buffer"] for s in loaded["muon_optimizer"]["state"].values()]
    assert len(momentum) == 4 and all(torch.equal(m, torch.full_like(m, 0.05)) for m in momentum)
