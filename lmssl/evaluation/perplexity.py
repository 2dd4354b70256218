"""Perplexity of causal LMs with sliding windows ("perplexity of fixed-length models", as in the
Hugging Face guide): a model that reads at most L tokens scores a long text in windows of L tokens
that start every S tokens; each token is scored once, in the first window that predicts it, so it
sees between L - S and L tokens of context (S = L: disjoint windows, the cheapest and the most
pessimistic).

Documents are scored independently (the models are trained with attention stopping at document
edges), each preceded by the separator the model was trained with (`<|endoftext|>`), which serves
as the beginning-of-text token as in GPT-2 and lm-evaluation-harness, so every token of the text is
scored, including the first. (A model trained with `data.document_mask=true` never learnt that first
prediction, since its loss stops at document edges: about one poorly predicted token per document.)
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from lmssl.errors import ConfigError
from lmssl.evaluation.text import summarize
from lmssl.model.attention import AttnSpec

METHOD = ("per-document sliding windows (HF 'perplexity of fixed-length models'): each document scored on its own, "
          "preceded by the separator token as beginning of text; windows of max_length tokens every stride tokens; "
          "each token scored once, with max_length - stride to max_length tokens of context")


def causal_windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a stream of n tokens whose stream[0] starts the text (never a target): (start, stop, first).

    The model reads stream[start:stop]; its position j predicts stream[start + j + 1]; positions j >= first
    are scored. Every target 1..n-1 is scored exactly once (stride <= max_length)."""
    windows, scored, start = [], 0, 0  # scored: last target index scored so far
    while scored < n - 1:
        stop = min(start + max_length, n - 1)
        windows.append((start, stop, scored - start))
        scored, start = stop, start + stride
    return windows



@torch.inference_mode()
def causal_log_likelihood(trunk, head, streams: list[list[int]], max_length: int, stride: int, batch_size: int = 16,
                          progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-likelihood, scored tokens) per stream, float64 and int64 tensors. Each stream is the token ids of
    one document preceded by its beginning-of-text token; windows as `causal_windows`."""
    device = next(trunk.parameters()).device
    jobs = [(d, *w) for d, s in enumerate(streams) for w in causal_windows(len(s), max_length, stride)]
    jobs.sort(key=lambda j: j[2] - j[1], reverse=True)  # longest windows first: fewer padded positions per batch
    totals = torch.zeros(len(streams), dtype=torch.float64)
    counts = torch.zeros(len(streams), dtype=torch.long)
    for i in tqdm(range(0, len(jobs), batch_size), desc="ppl", unit="batch", disable=not progress, leave=False):
        batch = jobs[i:i + batch_size]
        width = max(stop - start for _, start, stop, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)  # right padding: causal attention never reads it
        where = torch.zeros(len(batch), width, dtype=torch.bool)
        targets, docs = [], []
        for row, (d, start, stop, first) in enumerate(batch):
            s = streams[d]
            ids[row, :stop - start] = torch.tensor(s[start:stop])
            where[row, first:stop - start] = True
            targets += s[start + first + 1:stop + 1]
            docs += [d] * (stop - start - first)
        # hidden states of the scored positions only (row-major order): the last block skips the others
        hidden = trunk.forward_at(ids.to(device), AttnSpec.dense(True), where.to(device))
        logits = head(hidden).float()  # (scored, V): only scored positions reach the vocabulary
        targets = torch.tensor(targets, device=device)
        ll = logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(-1)
        docs = torch.tensor(docs)
        totals.index_add_(0, docs, ll.double().cpu())
        counts.index_add_(0, docs, torch.ones_like(docs))
    return totals, counts


def perplexity(objective, tokenizer, documents: list[str], *, max_length: int, stride: int, batch_size: int = 16,
               progress: bool = False) -> dict:
    """Sliding-window perplexity of a causal objective on documents (see the module docstring)."""
    lm = objective.language_model()
    if lm is None or lm.kind != "causal":
        raise ConfigError(f"perplexity needs a causal language model (objective 'clm'); this checkpoint's objective "
                          f"'{objective.cfg.objective.name}' has " + ("a masked one: use `lmssl eval pppl`" if lm else
                                                                      "none (Objective.language_model() is None)"))
    bos = objective.packing_ids(tokenizer)[0]  # the separator every training document ends with
    streams = [[bos, *ids] for ids in tokenizer.encode_batch(documents)]
    t0 = time.perf_counter()
    totals, counts = causal_log_likelihood(lm.trunk, lm.head, streams, max_length, stride, batch_size,
                                           progress)
    seconds = time.perf_counter() - t0
    tokens = int(counts.sum())
    if tokens == 0:
        raise ConfigError("no tokens to score: the text is empty")
    result = summarize(float(totals.sum()), tokens, documents, causal=True)
    return {**result, "max_length": max_length, "stride": stride, "method": METHOD, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1)}
