"""TrainState (lmssl.training.state): saved and restored whole, it continues the same batches and the same random
draws; the step's counts (FLOPs, tokens, skipped steps) advance together."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers import tiny_config

from lmssl.data import load_tokenizer
from lmssl.data.loader import SequenceLoader
from lmssl.distributed import DistInfo
from lmssl.engine.skip_guard import SkipGuard
from lmssl.objectives import build_objective
from lmssl.training.prepare import with_vocab
from lmssl.training.state import TrainState, masking_generator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def objective_and_data(tmp_path_factory, data_root):
    cfg = tiny_config("mlm", tmp_path_factory.mktemp("state"), "objective.sentence_task=none", "data.seq_len=32")
    tokenizer = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tokenizer.vocab_size)
    objective = build_objective(cfg, tokenizer)
    return cfg, objective, objective.dataset("train", tokenizer)


def fresh(data, seed: int) -> TrainState:
    return TrainState(SequenceLoader(data, 4, seed), SkipGuard(3), DistInfo())


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_a_restored_state_continues_the_same_batches_and_draws(objective_and_data):
    cfg, objective, data = objective_and_data
    state = fresh(data, seed=5)
    for _ in range(3):
        micro = state.micro_batches(objective, 2, cfg.train.seed)
        state.advance(objective, micro, {"loss": torch.tensor(1.0), "skipped": 0.0})
    saved = state.state_dict()
    expected_batches = state.micro_batches(objective, 2, cfg.train.seed)
    expected_draws = draws()
    restored = fresh(data, seed=5)
    restored.load_state_dict(saved)
    assert (restored.step, restored.flops, restored.guard.total) == (3, state.flops, 0)
    got = restored.micro_batches(objective, 2, cfg.train.seed)
    assert all(torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
               for a, b in zip(got, expected_batches))
    assert draws() == expected_draws


def test_advance_counts_flops_tokens_and_skipped_steps(objective_and_data):
    cfg, objective, data = objective_and_data
    state = fresh(data, seed=0)
    micro = state.micro_batches(objective, 2, cfg.train.seed)
    stats = {"loss": torch.tensor(float("nan")), "skipped": 1.0}
    state.advance(objective, micro, stats)
    per_batch = [sum(objective.train_flops(b).values()) for b in micro]
    assert state.flops == sum(per_batch) and stats["flops"] == state.flops
    assert state.tokens == 2 * 4 * 32 and stats["skipped_steps"] == 1 and state.guard.in_a_row == 1
    assert state.flops_metric() == {"flops": state.flops}


def test_micro_batches_use_the_masking_draws_of_their_step(objective_and_data):
    cfg, objective, data = objective_and_data
    state = fresh(data, seed=0)
    state.step = 7
    batch = state.micro_batches(objective, 1, cfg.train.seed)[0]
    again = objective.collate(SequenceLoader(data, 4, 0).next_batch(), masking_generator(cfg.train.seed, 7, 0))
    assert torch.equal(batch.labels, again.labels)
