"""Linear probing (`finetune.probe=true`): the encoder frozen, a linear head trained on its features.

The features are the encoder's final hidden state at the pooled position ([CLS] for encoders, the last
real token for causal models) without any pooler, for every kind of checkpoint: the representation
itself, comparable across objectives (a pretrained NSP pooler is a trained non-linear layer, a fresh one
a random projection). The encoder runs once, in eval mode (no dropout), to compute them; the head then
trains on the cached features with the fine-tuning loop, so its epochs cost almost nothing and the
encoder's weights are never touched (no gradient, no optimizer state).

The features are standardised with the training set's per-dimension mean and std before the head sees
them (as a StandardScaler before a logistic regression): [CLS] states of small models are nearly
parallel (cosine ~0.9-0.999 between different sentences), so the signal lies in small deviations that
an unscaled probe learns very slowly. The scaling is folded into the head afterwards (W/std, b - W mean/std),
so the saved classifier applies to raw features and is still one linear layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from lmssl.downstream.encoding import epoch_batches
from lmssl.engine.torch_engine import autocast
from lmssl.model.batch import Output
from lmssl.model.classifier import SequenceClassifier, task_loss


@dataclass
class FeatureBatch:
    features: torch.Tensor  # (B, H) frozen encoder features
    labels: torch.Tensor  # (B,) class indices or scores
    num_targets: int  # B (the engine weights micro-batches by it)

    def to(self, device: torch.device) -> "FeatureBatch":
        return FeatureBatch(self.features.to(device), self.labels.to(device), self.num_targets)


class FeatureSet:
    """Cached features and targets; `batch(rows)` as EncodedSet's."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor):
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.targets)

    def eval_order(self) -> np.ndarray:
        return np.arange(len(self))

    def epoch_batches(self, rng: np.random.Generator, batch_size: int, group_by_length: bool) -> list[np.ndarray]:
        return epoch_batches(rng, len(self), batch_size)  # features have one size: nothing to group

    def batch(self, rows: np.ndarray) -> FeatureBatch:
        index = torch.from_numpy(np.asarray(rows))
        return FeatureBatch(self.features[index], self.targets[index], len(index))


class LinearProbe(nn.Module):
    """The classifier's linear head, trained on features (it is the same module: training it trains the
    classifier's head, which is then saved with the frozen encoder)."""

    def __init__(self, head: nn.Linear, regression: bool):
        super().__init__()
        self.head, self.regression = head, regression

    def logits(self, batch: FeatureBatch) -> torch.Tensor:
        return self.head(batch.features)

    def forward(self, batch: FeatureBatch) -> Output:
        return Output(task_loss(self.logits(batch), batch.labels, self.regression))


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def standardize(train: FeatureSet, others: list[FeatureSet]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale every set's features in place with the training set's mean and std; returns (mean, std)."""
    mean, std = train.features.mean(0), train.features.std(0).clamp(min=1e-6)
    for s in (train, *others):
        s.features = (s.features - mean) / std
    return mean, std


@torch.no_grad()
def fold_standardization(head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """head((x - mean) / std) == head'(x): W' = W / std, b' = b - W' mean."""
    weight = head.weight / std.to(head.weight.device)
    head.bias -= weight @ mean.to(head.weight.device)
    head.weight.copy_(weight)


@torch.no_grad()
def compute_features(model: SequenceClassifier, dataset, batch_size: int, device: torch.device,
                     precision: str = "fp32") -> FeatureSet:
    """The frozen encoder's features of every example of an EncodedSet, in its order (fp32 either way)."""
    model.eval()
    order = dataset.eval_order()
    features = None
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        with autocast(device, precision):
            out = model.features(dataset.batch(rows).to(device)).float().cpu()
        if features is None:
            features = torch.empty(len(dataset), out.shape[-1])
        features[torch.from_numpy(rows)] = out
    return FeatureSet(features, dataset.targets)
