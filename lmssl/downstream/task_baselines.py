"""The baselines every fine-tuning result is shown beside (`finetune.baselines`), on the same training
subsample and dev sets, scored with the same metrics:

  majority  the most frequent training label (the first in the card's order on a tie); for regression the
            training mean, whose correlation with anything is undefined (reported as null / "nan")
  bow       a bag of words: scikit-learn TF-IDF of word 1-2-grams (sublinear tf) + logistic regression
            (ridge for regression), fitted on the training texts; a pair is its two texts joined by a space

They take seconds and answer "was the transformer worth it": a fine-tuned model below `bow` has not learnt
more about the task than which words occur in it.
"""
from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline

from lmssl.downstream.tasks import TaskCard
from lmssl.evaluate_modules import load_metric

BOW_DESCRIPTION = ("TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True) + LogisticRegression(C=1, max_iter=2000) "
                   "(Ridge(alpha=1) for regression); pair texts joined by a space")


def bow_model(regression: bool):
    """The unfitted bag-of-words pipeline (texts -> labels or scores)."""
    head = Ridge(alpha=1.0) if regression else LogisticRegression(C=1.0, max_iter=2000)
    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), head)


def joined(examples: list[tuple[str, ...]]) -> list[str]:
    return [" ".join(texts) for texts in examples]


def majority_prediction(card: TaskCard, train_targets: np.ndarray) -> float | int:
    if card.regression:
        return float(np.mean(train_targets))
    return int(np.argmax(np.bincount(train_targets, minlength=card.num_outputs)))  # argmax: first on a tie


def task_baselines(card: TaskCard, texts: dict[str, list[tuple[str, ...]]], targets: dict[str, np.ndarray]) -> dict:
    """{"majority": metrics, "bow": metrics, "bow_model": description}; texts and targets hold "train" and each
    dev set of the card (metrics flattened as the fine-tuning results': `<set>_<metric>` when there are several)."""
    metric = load_metric("lmssl_glue", "regression" if card.regression else "classification")
    model = bow_model(card.regression).fit(joined(texts["train"]), targets["train"])
    constant = majority_prediction(card, targets["train"])
    out = {"majority": {}, "bow": {}}
    for name in card.dev:
        gold = targets[name]
        prefix = "" if len(card.dev) == 1 else f"{name}_"
        guesses = {"majority": np.full(len(gold), constant, dtype=gold.dtype),
                   "bow": model.predict(joined(texts[name])).astype(gold.dtype)}
        for kind, predicted in guesses.items():
            values = metric.compute(predictions=predicted, references=gold, metrics=card.metrics)
            out[kind].update({prefix + k: v for k, v in values.items()})
    return {**out, "bow_model": BOW_DESCRIPTION}
