"""What a forward pass takes and returns, whatever the model: a Batch on a (B, T) token grid, an Output."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from lmssl.model.attention import AttnSpec

IGNORE_INDEX = -100  # label value that no loss counts


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    spec: AttnSpec  # attention layout and causality
    labels: torch.Tensor  # (B, T), IGNORE_INDEX where no loss is taken
    num_targets: int  # labels != IGNORE_INDEX; weights micro-batches under gradient accumulation
    token_type_ids: torch.Tensor | None = None  # (B, T) segment ids, None = all zeros

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device: torch.device) -> "Batch":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        spec = self.spec
        spec = replace(spec, **{k: getattr(spec, k).to(device) for k in ("key_padding_mask", "cu_seqlens")
                                if getattr(spec, k) is not None})
        return replace(self, spec=spec, **moved)


@dataclass
class Output:
    loss: torch.Tensor  # scalar, mean over num_targets
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # scalar means over the same targets
