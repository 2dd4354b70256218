"""What every engine shares: one optimizer step over micro-batches on every data-parallel process equals one
large batch. Each micro-batch loss is weighted by its share of the step's targets over ALL processes (so
uneven masking counts weigh as in the large batch); the data-parallel gradient mean (DDP, DeepSpeed) divides
by the world size, which the weight multiplies back."""
from __future__ import annotations

from lmssl.distributed import all_reduce_sum
from lmssl.model.batch import Batch


def loss_weights(micro_batches: list[Batch], world_size: int) -> list[float]:
    """The factor of each micro-batch's mean loss before backward."""
    total = all_reduce_sum([float(sum(b.num_targets for b in micro_batches))])[0]
    return [b.num_targets / total * world_size for b in micro_batches]


class MetricSums:
    """Target-weighted means of the loss and metrics over the step's micro-batches on every process."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.sums: dict[str, float] = {}

    def add(self, metrics: dict, weight: float) -> None:
        for k, v in metrics.items():
            value = float(v.detach() if hasattr(v, "detach") else v)
            self.sums[k] = self.sums.get(k, 0.0) + value * weight / self.world_size

    def means(self) -> dict[str, float]:
        keys = sorted(self.sums)
        return dict(zip(keys, all_reduce_sum([self.sums[k] for k in keys])))
