"""The Objective seam: collate examples into a Batch, compute loss and metrics from it.

An objective owns its trunk(s) and heads and declares whether attention is causal; the trunk
never knows which objective it serves.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn as nn

from lmssl.config import Config
from lmssl.data import sequences
from lmssl.data.packing import Example
from lmssl.data.tokenizer import TextTokenizer
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
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        spec = self.spec
        spec = replace(spec, **{k: getattr(spec, k).to(device) for k in ("key_padding_mask", "cu_seqlens") if getattr(spec, k) is not None})
        return replace(self, spec=spec, **moved)


@dataclass
class Output:
    loss: torch.Tensor  # scalar, mean over num_targets
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # scalar means over the same targets


def stack_examples(examples: list[Example], causal: bool, document_mask: bool) -> tuple[torch.Tensor, AttnSpec]:
    """(B, T) ids of equal-length packed examples and their AttnSpec."""
    ids = torch.from_numpy(np.stack([ex.input_ids for ex in examples]))
    if document_mask:
        return ids, AttnSpec.packed(causal, [ex.doc_lengths for ex in examples])
    return ids, AttnSpec.dense(causal)


class Objective(nn.Module):
    causal: bool = False
    # a key of `extra_eval()` to maximise: the training loop keeps the best weights in output_dir/best ("" = none)
    selection_metric: str = ""

    def __init__(self, cfg: Config, tokenizer: TextTokenizer):
        super().__init__()
        self.cfg = cfg

    def encoder(self) -> nn.Module:
        """The downstream encoder: the trunk that `model.init_from` copies from a checkpoint of this
        objective (into the encoder of the objective being trained) and that evaluators (STS, fine-tuning)
        read. ELECTRA's is its discriminator."""
        return self.trunk

    def sentence_pooling(self) -> str:
        """How evaluators turn the encoder's hidden states into one sentence vector by default:
        'cls' (the [CLS] position) or 'mean' (over real tokens). A causal model has no [CLS]."""
        return "mean" if self.causal else "cls"

    def dataset(self, split: str, tokenizer: TextTokenizer):
        """The examples of `data.train` / `data.valid` that `collate` understands: packed sequences by default."""
        sep_id, prefix_id = self.packing_ids(tokenizer)
        return sequences(self.cfg, split, tokenizer, sep_id, prefix_id, streaming=self.cfg.data.streaming and split == "train")

    def extra_eval(self) -> dict[str, float]:
        """Evaluations beyond the loss on data.valid, run every eval.every steps and at the end
        (SimCSE: STS-B dev Spearman). Must not draw from the global RNG, so training stays reproducible."""
        return {}

    def packing_ids(self, tokenizer: TextTokenizer) -> tuple[int, int | None]:
        """(separator appended to each document, prefix of each sequence or None)."""
        raise NotImplementedError

    def collate(self, examples: list[Example], generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def forward(self, batch: Batch) -> Output:
        raise NotImplementedError
