"""train.compile: a compiled objective trains as the eager one does, and a backend that cannot compile falls back
to eager instead of stopping the run."""
import copy
import dataclasses

import pytest
import torch
import torch._dynamo.utils
from helpers import tiny_config

from lmssl.data import load_tokenizer
from lmssl.distributed import DistInfo
from lmssl.engine import build_engine, compile_in_place
from lmssl.objectives import build_objective
from lmssl.training.prepare import with_vocab


def model_and_batches(objective: str, tmp_path, steps: int = 3):
    cfg = tiny_config(objective, tmp_path, "model.dropout=0.0", "model.attention_dropout=0.0")
    tokenizer = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tokenizer.vocab_size)
    torch.manual_seed(0)
    model = build_objective(cfg, tokenizer)
    data = model.dataset("train", tokenizer)
    sizes = [8, 6, 8][:steps]  # a batch of another size: MLM's masked rows change count, the graph goes dynamic
    batches = [model.collate([data[i] for i in range(8 * s, 8 * s + n)], torch.Generator().manual_seed(s))
               for s, n in enumerate(sizes)]
    return cfg, model, batches


@pytest.mark.parametrize("objective", ["mlm", "clm"])  # mlm: with NSP pairs, as configs/mlm-nsp.yaml
def test_compiled_training_equals_eager(data_root, tmp_path, objective):
    cfg, model, batches = model_and_batches(objective, tmp_path)
    eager = build_engine(copy.deepcopy(model), cfg.train, DistInfo())
    torch._dynamo.utils.counters.clear()
    compiled = build_engine(copy.deepcopy(model), dataclasses.replace(cfg.train, compile=True), DistInfo())
    for batch in batches:
        e, c = eager.train_step([batch]), compiled.train_step([batch])
        assert float(c["loss"]) == pytest.approx(float(e["loss"]), rel=1e-5)
        assert float(c["grad_norm"]) == pytest.approx(float(e["grad_norm"]), rel=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # inductor really ran the forward
    for (name, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():  # evaluation (no grad, eval mode) through the compiled module too
        assert float(compiled.eval_forward(batches[0]).loss) == pytest.approx(
            float(eager.eval_forward(batches[0]).loss), rel=1e-5)


def test_a_backend_that_cannot_compile_runs_eagerly(data_root, tmp_path):
    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    cfg, model, batches = model_and_batches("clm", tmp_path, steps=1)
    expected = copy.deepcopy(model)(batches[0]).loss
    compile_in_place(model, backend=no_compiler)
    assert float(model(batches[0]).loss) == float(expected)
    engine = build_engine(model, cfg.train, DistInfo())
    assert engine.train_step(batches)["skipped"] == 0.0
