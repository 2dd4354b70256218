import copy

import pytest
import torch
import torch.nn as nn

from lmssl.config import TrainConfig
from lmssl.engine.torch_engine import TorchEngine, lr_multiplier, parameter_groups


def test_lr_schedule_hand_computed():
    cfg = TrainConfig(max_steps=10, warmup_steps=4, schedule="linear", final_lr_ratio=0.0)
    assert [lr_multiplier(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert (lr_multiplier(4, cfg) == 1.0 and lr_multiplier(7, cfg) == pytest.approx(0.5)
            and lr_multiplier(10, cfg) == 0.0)
    cos = TrainConfig(max_steps=10, warmup_steps=0, schedule="cosine", final_lr_ratio=0.1)
    assert lr_multiplier(0, cos) == pytest.approx(1.0)
    assert lr_multiplier(5, cos) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(10, cos) == pytest.approx(0.1)
    assert lr_multiplier(6, TrainConfig(max_steps=10, warmup_steps=2, schedule="constant")) == 1.0


def test_no_weight_decay_on_norms_biases_embeddings():
    model = nn.ModuleDict({"emb": nn.Embedding(10, 4), "lin": nn.Linear(4, 4), "norm": nn.LayerNorm(4),
                           "out": nn.Linear(4, 10, bias=False)})
    model["out"].weight = model["emb"].weight  # tied
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert [p is model["lin"].weight for p in decay["params"]] == [True]
    assert {id(p) for p in no_decay["params"]} == {id(model["emb"].weight), id(model["lin"].bias),
                                                   id(model["norm"].weight), id(model["norm"].bias)}


def test_gradient_accumulation_equals_one_large_batch(data_root, tmp_path):
    from conftest import tiny_config

    from lmssl.data import load_tokenizer, sequences
    from lmssl.objectives import build_objective
    from lmssl.training.prepare import with_vocab

    # packed MLM batches: the split below copies input_ids and labels only (no pair labels or padding mask)
    cfg = tiny_config("mlm", tmp_path, "model.dropout=0.0", "model.attention_dropout=0.0",
                      "objective.sentence_task=none")
    tok = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tok.vocab_size)
    torch.manual_seed(0)
    model = build_objective(cfg, tok)
    data = sequences(cfg, "train", tok, *model.packing_ids(tok))
    examples = [data[i] for i in range(8)]
    one = model.collate(examples, torch.Generator().manual_seed(0))
    # the same corruption split in two micro-batches with different numbers of masked targets
    halves = [copy.copy(one) for _ in range(2)]
    for h, rows in zip(halves, (slice(0, 3), slice(3, 8))):
        h.input_ids, h.labels = one.input_ids[rows], one.labels[rows]
        h.num_targets = int((h.labels != -100).sum())
    engines = [TorchEngine(copy.deepcopy(model), cfg.train) for _ in range(2)]
    big = engines[0].train_step([one])
    acc = engines[1].train_step(halves)
    assert float(acc["loss"]) == pytest.approx(float(big["loss"]), rel=1e-5)
    assert float(acc["grad_norm"]) == pytest.approx(float(big["grad_norm"]), rel=1e-4)
    for p, q in zip(engines[0].model.parameters(), engines[1].model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
