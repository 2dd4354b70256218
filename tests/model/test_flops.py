"""FLOP accounting (lmssl.model.flops, Objective.train_flops) against PyTorch's FlopCounterMode on a real
training step of each objective, and train.max_flops / the cumulative `flops` of a run."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import KINDS, tiny_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmssl.config import ModelConfig
from lmssl.data import load_tokenizer
from lmssl.data.loader import SequenceLoader
from lmssl.engine import TorchEngine
from lmssl.model import flops
from lmssl.objectives import build_objective
from lmssl.training.loop import train
from lmssl.training.prepare import with_vocab
from lmssl.training.state import masking_generator


def test_trunk_flops_by_hand():
    m = ModelConfig(hidden_size=4, num_layers=2, num_heads=2, ffn_size=8, vocab_size=10)
    # per block, 2 x 3 tokens: qkv 2*6*4*12 = 576, out 2*6*4*4 = 192, ffn 2 * 2*6*4*8 = 768; attention 4*6*3*4 = 288
    assert flops.trunk(m, 2, 3) == {"dense": 2 * (576 + 192 + 768), "attention": 2 * 288}
    # last block on 1 row with 1 query in a slot of 1 per sequence: kv 2*6*4*8 = 384, q/out 2*1*4*4 = 32 each,
    # ffn 2 * 2*1*4*8 = 128; attention 4*2*3*4 = 96 (two sequences, one slot each)
    where = torch.tensor([[False, True, False], [False, False, False]])
    last = flops.LastBlockRows.of(where, every_query=False)
    assert last == flops.LastBlockRows(out=1, queries=1, slots=2)
    assert flops.trunk(m, 2, 3, last) == {"dense": 1536 + 384 + 32 + 32 + 128, "attention": 288 + 96}
    assert flops.LastBlockRows.of(where, every_query=True) == flops.LastBlockRows(1, 6, 6)
    factorised = ModelConfig(hidden_size=4, num_layers=1, num_heads=2, ffn_size=8, vocab_size=10, embedding_size=2)
    assert flops.trunk(factorised, 1, 3)["dense"] == 1536 // 2 + 2 * 3 * 2 * 4  # + the embedding projection
    assert flops.training({"a": 5}) == {"a": 15}


def addmm_inplace_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


# block kinds beyond the presets' defaults: the modern presets (ModernBERT for encoders, Llama for the CLM), and
# QK-norm with RMSNorm, SwiGLU and no biases
BLOCK_KINDS = {"classic": (), "modern": ("model.preset={modern}",),
               "qknorm-swiglu": ("model.qk_norm=true", "model.norm_type=rmsnorm", "model.mlp=swiglu",
                                 "model.bias=false")}


@pytest.mark.parametrize("blocks, attention_dropout", [("classic", 0.0), ("classic", 0.1), ("modern", 0.0),
                                                       ("qknorm-swiglu", 0.1)])
@pytest.mark.parametrize("kind", list(KINDS))
def test_train_flops_match_flop_counter(kind, blocks, attention_dropout, tmp_path, data_root):
    """A real step (forward, backward, optimizer) of each objective on WikiText-2, with each block kind: the
    accounting equals what FlopCounterMode counts (attention through SDPA's math kernel, whose matmuls it sees on
    CPU), to the FLOP. Attention dropout 0.1: MLM's last block computes every query, else only the masked ones."""
    objective_name, *extra = KINDS[kind]
    modern = "llama" if objective_name == "clm" else "modernbert"
    if blocks == "modern" and kind == "mlm_nsp":
        extra.append("model.type_vocab_size=2")  # NSP's segments need token types
    cfg = tiny_config(objective_name, tmp_path, *extra, "model.hidden_size=128", "model.ffn_size=512",
                      "train.batch_size=16", f"model.attention_dropout={attention_dropout}",
                      *(o.format(modern=modern) for o in BLOCK_KINDS[blocks]))
    tokenizer = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tokenizer.vocab_size)
    torch.manual_seed(0)
    objective = build_objective(cfg, tokenizer)
    loader = SequenceLoader(objective.dataset("train", tokenizer), cfg.train.batch_size, 0)
    batch = objective.collate(loader.next_batch(), masking_generator(0, 0, 0))
    engine = TorchEngine(objective, cfg.train)
    # the fused cross-entropy accumulates the weight's gradient with the in-place addmm_, which the counter's
    # table lacks: counted as addmm is
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_inplace_flops})
    with sdpa_kernel(SDPBackend.MATH), counter:
        engine.train_step([batch])
    counted, ours = counter.get_total_flops(), sum(objective.train_flops(batch).values())
    assert counted > 0
    assert ours == counted, (ours / counted - 1, objective.train_flops(batch))


@pytest.mark.slow
def test_max_flops_sets_the_steps_and_metrics_count_flops(tmp_path, data_root):
    """train.max_flops gives ceil(budget / step) steps; metrics.jsonl's training and validation lines carry the
    cumulative FLOPs, which a resumed run (a larger budget) continues from its checkpoint."""
    cfg = tiny_config("clm", tmp_path / "run", "train.max_flops=2e10", "eval.every=2", "eval.likelihood_max_words=0",
                      "train.save_every=2")
    tokenizer = load_tokenizer(cfg)
    objective = build_objective(with_vocab(cfg, tokenizer.vocab_size), tokenizer)
    step_flops = sum(objective.train_flops(objective.collate(
        SequenceLoader(objective.dataset("train", tokenizer), 8, 0).next_batch(), None)).values())
    result = train(cfg)
    expected_steps = -(-int(2e10) // step_flops)  # every CLM step has the same shape: ceil(budget / step)
    assert result["step"] == expected_steps and result["flops"] == expected_steps * step_flops
    resumed = train(tiny_config("clm", tmp_path / "run", "train.max_flops=4e10", "eval.every=2", "train.resume=true",
                                "eval.likelihood_max_words=0", "train.save_every=2"))
    expected_steps = -(-int(4e10) // step_flops)
    assert resumed["step"] == expected_steps > result["step"]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "loss" in line]
    assert [line["flops"] for line in train_lines] == [line["step"] * step_flops for line in train_lines]
    assert all(line["flops"] == line["step"] * step_flops for line in lines if "val_loss" in line)
    assert any("val_loss" in line for line in lines[:-1])  # an intermediate validation carries flops too
    assert resumed["flops"] == expected_steps * step_flops
