"""What every engine shares: one optimizer step over micro-batches on every data-parallel process equals one
large batch. Each micro-batch loss is weighted by its share of the step's targets over ALL processes (so
uneven masking counts weigh as in the large batch); the data-parallel gradient mean (DDP, DeepSpeed) divides
by the world size, which the weight multiplies back."""
from __future__ import annotations

import torch
import torch.distributed as dist

from lmssl.distributed import active, all_reduce_sum
from lmssl.model.batch import Batch


def loss_weights(micro_batches: list[Batch], world_size: int) -> list[float]:
    """The factor of each micro-batch's mean loss before backward (target counts are host numbers: no device sync)."""
    total = all_reduce_sum([float(sum(b.num_targets for b in micro_batches))])[0]
    return [b.num_targets / total * world_size for b in micro_batches]


class MetricSums:
    """Target-weighted means of the loss and metrics over the step's micro-batches on every process, kept on the
    device (float64, as Python floats would sum them) until someone reads them."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, metrics: dict, weight: float) -> None:
        device = next(v.device for v in metrics.values() if isinstance(v, torch.Tensor))  # the loss's, at least
        for k, v in metrics.items():
            value = torch.as_tensor(v, device=device).detach().double() * weight / self.world_size
            self.sums[k] = self.sums[k] + value if k in self.sums else value

    def means(self) -> dict[str, torch.Tensor]:
        keys = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys])
        if active():  # one all-reduce for every metric, on the device the values are on
            dist.all_reduce(stacked)
        return dict(zip(keys, stacked.unbind()))
