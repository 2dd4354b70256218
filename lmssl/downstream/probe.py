"""Linear probing (`finetune.probe=true`): the encoder frozen, a linear head trained on its features.

The features are the encoder's final hidden state at the pooled position ([CLS] for encoders, the last
real token for causal models) without any pooler, for every kind of checkpoint: the representation
itself, comparable across objectives (a pretrained NSP pooler is a trained non-linear layer, a fresh one
a random projection). The encoder runs once, in eval mode (no dropout), to compute them; the head then
trains on the cached features with the fine-tuning loop, so its epochs cost almost nothing and the
encoder's weights are never touched (no gradient, no optimizer state).

The head is scikit-learn's logistic regression (ridge regression for a regression task) fitted to its optimum with
L-BFGS (`finetune.probe_solver=lbfgs`, the default: SentEval's and CLIP's linear probe), or a linear layer trained by
the fine-tuning loop (`adamw`).

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


PROBE_MAX_ITER = 2000  # L-BFGS iterations: enough to converge on a few thousand standardised features


@torch.no_grad()
def fit_linear_head(head: nn.Linear, train: FeatureSet, regression: bool, seed: int) -> None:
    """Set `head` to scikit-learn's fit on the (standardised) features: LogisticRegression (L2, C=1, L-BFGS) or Ridge
    (alpha=1). A binary fit's single score goes to the second class's logit (the first is 0), so softmax and argmax
    agree with its probabilities and predictions; a class absent from the features is never predicted."""
    from sklearn.linear_model import LogisticRegression, Ridge

    x, y = train.features.double().numpy(), train.targets.numpy()
    weight = torch.zeros(head.weight.shape, dtype=torch.float64)
    bias = torch.zeros(head.bias.shape, dtype=torch.float64)
    if regression:
        fit = Ridge(alpha=1.0).fit(x, y)
        weight[0], bias[0] = torch.from_numpy(fit.coef_), float(fit.intercept_)
    else:
        fit = LogisticRegression(C=1.0, max_iter=PROBE_MAX_ITER, random_state=seed).fit(x, y)
        classes = torch.from_numpy(fit.classes_.astype(np.int64))
        coef, intercept = torch.from_numpy(fit.coef_), torch.from_numpy(fit.intercept_)
        bias.fill_(-1e9)
        if len(classes) == 2:
            bias[classes[0]] = 0.0
            weight[classes[1]], bias[classes[1]] = coef[0], intercept[0]
        else:
            weight[classes], bias[classes] = coef, intercept
    head.weight.copy_(weight)
    head.bias.copy_(bias)


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
