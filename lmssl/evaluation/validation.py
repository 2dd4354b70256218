"""Validation of a pretraining objective: its loss and metrics over a held-out split, target-weighted."""
from __future__ import annotations

import math

import torch

from lmssl.data.loader import iterate_in_order
from lmssl.data.packing import PackedSequences

EVAL_SEED = 1234  # fixed masking draws, so successive evaluations score the same corruption


def evaluate(engine, data: PackedSequences, batch_size: int, max_batches: int = 0) -> dict[str, float]:
    """Target-weighted means of the objective's loss and metrics, keys prefixed with `val_`."""
    objective = engine.model
    generator = torch.Generator().manual_seed(EVAL_SEED)
    sums: dict[str, float] = {}
    total = 0
    for examples in iterate_in_order(data, batch_size, max_batches):
        batch = objective.collate(examples, generator)
        out = engine.eval_forward(batch)
        for k, v in {"loss": out.loss, **out.metrics}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * batch.num_targets
        total += batch.num_targets
    result = {f"val_{k}": v / total for k, v in sums.items()}
    result["val_targets"] = total
    if objective.causal:
        loss = result["val_loss"]
        result["val_ppl"] = math.exp(loss) if loss < 700 else math.inf  # a diverging run: inf, not OverflowError
    return result
