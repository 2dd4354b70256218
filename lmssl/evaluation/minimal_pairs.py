"""Minimal pairs (`lmssl eval pairs`): does the model give the grammatical sentence of each pair the higher
likelihood? BLiMP's protocol (Warstadt et al. 2020): a causal model compares summed log-probabilities (the
perplexity evaluator's, each sentence a document after the beginning-of-text token); a masked model compares
pseudo-log-likelihoods (Salazar et al. 2020; optionally PLL-word-l2r, Kauf & Ivanova 2023), as the pseudo-perplexity
evaluator computes them. A pair counts as right when good > bad strictly; accuracy is x 100, overall, per UID and per
field."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmssl.data.jsonl import jsonl_objects
from lmssl.errors import ConfigError
from lmssl.evaluation import perplexity, pseudo_perplexity
from lmssl.evaluation.text import default_window


@dataclass(frozen=True)
class MinimalPair:
    good: str
    bad: str
    uid: str  # BLiMP's paradigm name ("" when the file has none)
    field: str  # BLiMP's linguistic field ("" when the file has none)


def read_pairs(path: Path) -> list[MinimalPair]:
    """The pairs of a BLiMP-format JSONL file; a ConfigError names the line and the key that is wrong."""
    if not path.is_file():
        raise ConfigError(f"FILE: minimal pairs file not found: {path}")
    pairs = []
    for number, row in jsonl_objects(path):
        for key in ("sentence_good", "sentence_bad"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ConfigError(f"{path}:{number}: key '{key}' must be a non-empty string (BLiMP format: "
                                  f"sentence_good, sentence_bad, optional UID and field)")
        pairs.append(MinimalPair(row["sentence_good"].strip(), row["sentence_bad"].strip(), str(row.get("UID", "")),
                                 str(row.get("field", ""))))
    if not pairs:
        raise ConfigError(f"{path}: no minimal pairs in it")
    return pairs


def sentence_log_likelihoods(objective, tokenizer, sentences: list[str], *, word_l2r: bool = False,
                             batch_size: int = 16, batch_tokens: int = 8192) -> tuple[torch.Tensor, str]:
    """(log-likelihood of each sentence, float64; what it is): the summed log-probability of a causal model, the
    pseudo-log-likelihood of a masked one, each sentence scored on its own."""
    lm = objective.language_model()
    if lm is None:
        raise ConfigError(f"minimal pairs need a language model; objective '{objective.cfg.objective.name}' declares "
                          f"none (Objective.language_model() is None)")
    ids = tokenizer.encode_batch(sentences)
    if lm.kind == "causal":
        max_length, stride = default_window(objective.cfg, "ppl")
        bos = objective.packing_ids(tokenizer)[0]
        totals, _ = perplexity.causal_log_likelihood(lm.trunk, lm.head, [[bos, *s] for s in ids], max_length, stride,
                                                     batch_size, progress=True)
        return totals, "summed log-probability (causal)"
    max_length, stride = default_window(objective.cfg, "pppl")
    tokens = pseudo_perplexity.MaskingTokens.of(tokenizer)
    windows = pseudo_perplexity.plan_windows(ids, tokens, max_length, stride, word_l2r)
    totals, _ = pseudo_perplexity.masked_log_likelihood(
        pseudo_perplexity.sparse_predictor(lm.trunk, lm.head), windows, len(ids), tokens, batch_tokens,
        next(lm.trunk.parameters()).device, progress=True)
    return totals, "pseudo-log-likelihood (masked" + (", word-l2r)" if word_l2r else ")")


def _accuracy(right: list[bool]) -> dict:
    return {"accuracy": 100.0 * sum(right) / len(right), "pairs": len(right)}


def score_pairs(objective, tokenizer, pairs: list[MinimalPair], **options) -> tuple[dict, list[dict]]:
    """(summary: accuracy overall, by UID and by field, ties; one record per pair)."""
    n = len(pairs)
    ll, measure = sentence_log_likelihoods(objective, tokenizer, [p.good for p in pairs] + [p.bad for p in pairs],
                                           **options)
    records = [{"UID": p.uid, "field": p.field, "good_ll": g, "bad_ll": b, "right": g > b,
                "sentence_good": p.good, "sentence_bad": p.bad}
               for p, g, b in zip(pairs, ll[:n].tolist(), ll[n:].tolist())]
    right = [r["right"] for r in records]
    summary = {"measure": measure, **_accuracy(right), "ties": sum(r["good_ll"] == r["bad_ll"] for r in records)}
    for key, name in (("UID", "by_uid"), ("field", "by_field")):
        groups: dict[str, list[bool]] = {}
        for r in records:
            if r[key]:
                groups.setdefault(r[key], []).append(r["right"])
        if groups:
            summary[name] = {k: _accuracy(v) for k, v in sorted(groups.items())}
    return summary, records


def pairs_table(summary: dict) -> str:
    """The per-UID accuracies as a plain-text table (stderr)."""
    rows = [("all", summary["accuracy"], summary["pairs"]),
            *((uid, v["accuracy"], v["pairs"]) for uid, v in summary.get("by_uid", {}).items())]
    width = max(len(name) for name, _, _ in rows)
    return "".join(f"  {name:<{width}}  {acc:6.2f}  ({count} pairs)\n" for name, acc, count in rows)
