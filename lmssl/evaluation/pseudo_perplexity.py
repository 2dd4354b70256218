"""Exact pseudo-perplexity of masked LMs (Salazar et al. 2020, "Masked Language Model Scoring").

PLL(text) = sum over tokens t of log P(x_t | the text with x_t replaced by [MASK]). Every scored
token gets its own copy of its window with that one position masked, so the value is exactly what
a loop of one forward pass per token computes; it is fast because
  - only the masked position of each copy is projected to the vocabulary (sparse prediction: the
    trunk's last block and the MLM head run on one row per copy, not on every position), and
  - copies from all windows are batched by a token budget, longest first, so batches are full and
    rarely padded.
`word_l2r` is PLL-word-l2r (Kauf & Ivanova 2023): when scoring a token, the rest of its word to
the right is masked too, so a multi-piece word cannot be "spelled out" from its own later pieces.

[CLS] and [SEP] (and any special token in the text, e.g. [UNK]) are context only: never masked,
never counted, as in Salazar et al. Long documents are scored in windows of max_length tokens
([CLS] + up to max_length - 2 text tokens + [SEP]) that start every `stride` tokens, the last one
aligned to the document's end; each token is scored in the window whose centre is nearest, which
gives it at least (max_length - 2 - stride) / 2 tokens of context on each side inside a document.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from lmssl.errors import ConfigError
from lmssl.evaluation.text import capped_exp, count_words, summarize
from lmssl.model.attention import AttnSpec

METHOD = ("exact pseudo-log-likelihood (Salazar et al. 2020): each document scored on its own in windows "
          "[CLS] + up to max_length - 2 tokens + [SEP] every stride tokens; every non-special token masked once, "
          "in the window where it is most central; [CLS]/[SEP] are context only")
METHOD_L2R = "; PLL-word-l2r (Kauf & Ivanova 2023): the rest of the token's word to its right is masked too"

# (input_ids (B, T), spec, where (B, T) bool with one True per row) -> logits (B, V) at those positions, in row order
Predictor = Callable[[torch.Tensor, AttnSpec, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MaskingTokens:
    """The token ids pseudo-PLL needs from a tokenizer."""
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    special: torch.Tensor  # (S,) ids that are context only
    word_start: torch.Tensor  # (V,) bool: the token begins a word (special tokens do)

    @staticmethod
    def of(tokenizer) -> "MaskingTokens":
        missing = [r for r in ("cls", "sep", "mask") if tokenizer.roles.get(r) is None]
        if missing:
            raise ConfigError(f"pseudo-perplexity needs the special tokens {missing}, which the checkpoint's "
                              f"tokenizer lacks")
        return MaskingTokens(tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, tokenizer.pad_id or 0,
                             torch.tensor(tokenizer.special_ids, dtype=torch.long),
                             torch.from_numpy(tokenizer.word_start_table()))


@dataclass
class Window:
    doc: int  # index of the document
    ids: torch.Tensor  # (T,) [CLS] text [SEP]
    positions: torch.Tensor  # (k,) positions scored, one masked copy each
    span_ends: torch.Tensor  # (k,) each copy masks [position, span_end): position + 1, or the word's end (word-l2r)


def masked_windows(n: int, width: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, score_from, score_to) over n tokens: windows of `width` tokens every `stride` (<= width),
    the last one ending at n; tokens [score_from, score_to) are scored in the window, each token in exactly
    one window, the one whose centre is nearest (boundaries halfway between consecutive centres)."""
    if n <= width:
        return [(0, n, 0, n)] if n else []
    starts = [*range(0, n - width, stride), n - width]
    bounds = [0, *[(a + b + width) // 2 for a, b in zip(starts, starts[1:])], n]
    return [(a, a + width, lo, hi) for a, lo, hi in zip(starts, bounds, bounds[1:]) if hi > lo]


def plan_windows(docs: list[list[int]], tokens: MaskingTokens, max_length: int, stride: int,
                 word_l2r: bool = False) -> list[Window]:
    """The windows of every document and the copies each one needs."""
    windows = []
    for d, ids in enumerate(docs):
        ids = torch.tensor(ids, dtype=torch.long)
        for start, stop, lo, hi in masked_windows(len(ids), max_length - 2, stride):
            w = torch.cat([torch.tensor([tokens.cls_id]), ids[start:stop], torch.tensor([tokens.sep_id])])
            scored = torch.arange(lo, hi) - start + 1  # window positions (after [CLS])
            scored = scored[~torch.isin(w[scored], tokens.special)]
            if not len(scored):
                continue
            ends = scored + 1
            if word_l2r:  # the span runs to the next word start ([SEP] is one, so it never leaves the window)
                starts = tokens.word_start[w].nonzero().squeeze(1)
                ends = starts[torch.searchsorted(starts, scored, right=True)]
            windows.append(Window(d, w, scored, ends))
    return windows


def copy_batches(windows: list[Window], batch_tokens: int) -> list[list[tuple[Window, int, int]]]:
    """Batches of copies, as lists of (window, first copy, end copy): longest windows first, each batch at most
    `batch_tokens` tokens (rows x its longest window; at least one row). A window's copies may span batches."""
    batches, batch, rows, capacity = [], [], 0, 0
    for w in sorted(windows, key=lambda w: len(w.ids), reverse=True):
        done = 0
        while done < len(w.positions):
            if not batch:
                capacity = max(1, batch_tokens // len(w.ids))
            take = min(capacity - rows, len(w.positions) - done)
            batch.append((w, done, done + take))
            rows, done = rows + take, done + take
            if rows == capacity:
                batches.append(batch)
                batch, rows = [], 0
    if batch:
        batches.append(batch)
    return batches


def build_copies(batch: list[tuple[Window, int, int]], tokens: MaskingTokens):
    """(input_ids (B, T), spec, where (B, T), targets (B,), docs (B,)) of one batch of masked copies."""
    width = max(len(w.ids) for w, _, _ in batch)
    ids = torch.full((sum(hi - lo for _, lo, hi in batch), width), tokens.pad_id, dtype=torch.long)
    real = torch.zeros(ids.shape, dtype=torch.bool)
    positions, ends, docs, row = [], [], [], 0
    for w, lo, hi in batch:
        ids[row:row + hi - lo, :len(w.ids)] = w.ids
        real[row:row + hi - lo, :len(w.ids)] = True
        positions.append(w.positions[lo:hi])
        ends.append(w.span_ends[lo:hi])
        docs += [w.doc] * (hi - lo)
        row += hi - lo
    positions, ends = torch.cat(positions), torch.cat(ends)
    rows = torch.arange(len(ids))
    targets = ids[rows, positions].clone()
    cols = torch.arange(width)
    ids[(cols >= positions[:, None]) & (cols < ends[:, None])] = tokens.mask_id
    where = torch.zeros(ids.shape, dtype=torch.bool)
    where[rows, positions] = True
    spec = AttnSpec.dense(False) if bool(real.all()) else AttnSpec.padded(False, real)
    return ids, spec, where, targets, torch.tensor(docs)


def sparse_predictor(trunk, head) -> Predictor:
    """Logits at the masked positions only: the trunk's last block and the head run on one row per copy."""
    return lambda ids, spec, where: head(trunk.forward_at(ids, spec, where))


@torch.inference_mode()
def masked_log_likelihood(predict: Predictor, windows: list[Window], num_docs: int, tokens: MaskingTokens,
                          batch_tokens: int = 8192, device: torch.device | str = "cpu",
                          progress: bool = False, dtype: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(pseudo-log-likelihood, scored tokens) per document, float64 and int64 tensors. dtype "bf16": the model runs
    under bf16 autocast (weights stay fp32), the log-softmax in fp32."""
    device = torch.device(device)
    totals = torch.zeros(num_docs, dtype=torch.float64)
    counts = torch.zeros(num_docs, dtype=torch.long)
    batches = copy_batches(windows, batch_tokens)
    for batch in tqdm(batches, desc="pppl", unit="batch", disable=not progress, leave=False):
        ids, spec, where, targets, docs = build_copies(batch, tokens)
        if spec.key_padding_mask is not None:
            spec = AttnSpec.padded(False, spec.key_padding_mask.to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = predict(ids.to(device), spec, where.to(device)).float()  # (B, V)
        targets = targets.to(device)
        ll = logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(-1)
        totals.index_add_(0, docs, ll.double().cpu())
        counts.index_add_(0, docs, torch.ones_like(docs))
    return totals, counts


def masked_lm_modules(objective):
    """(trunk, head) of the objective's masked language model (MLM's own; ELECTRA's generator)."""
    lm = objective.language_model()
    if lm is None or lm.kind != "masked":
        raise ConfigError(f"pseudo-perplexity needs a masked language model (objective 'mlm'); this checkpoint's "
                          f"objective '{objective.cfg.objective.name}' has " + ("a causal one: use `lmssl eval ppl`"
                          if lm else "none (Objective.language_model() is None)"))
    return lm.trunk, lm.head



def nothing_scored(docs: list[list[int]], tokenizer) -> str:
    """Why no token was scored: an empty text, or one whose every token is [UNK] (or another special token, which
    is context only)."""
    total = sum(len(ids) for ids in docs)
    if not total:
        return "no tokens to score: the text is empty"
    unknown = sum(ids.count(tokenizer.roles.get("unk")) for ids in docs)
    what = (f"every one of the text's {total} tokens is unknown to the tokenizer ([UNK])" if unknown == total else
            f"{unknown} of the text's {total} tokens are unknown to the tokenizer ([UNK]), the rest special tokens")
    return (f"no tokens to score: {what}, which pseudo-perplexity does not score; give text in the language and "
            f"script the tokenizer was trained on")


def pseudo_perplexity(objective, tokenizer, documents: list[str], *, max_length: int, stride: int,
                      batch_tokens: int = 8192, word_l2r: bool = False, progress: bool = False,
                      dtype: str = "fp32") -> tuple[dict, list[dict]]:
    """Pseudo-perplexity of a masked objective on documents, and one record per document."""
    trunk, head = masked_lm_modules(objective)
    tokens = MaskingTokens.of(tokenizer)
    docs = tokenizer.encode_batch(documents)
    windows = plan_windows(docs, tokens, max_length, stride, word_l2r)
    t0 = time.perf_counter()
    totals, counts = masked_log_likelihood(sparse_predictor(trunk, head), windows, len(docs), tokens, batch_tokens,
                                           next(trunk.parameters()).device, progress, dtype)
    seconds = time.perf_counter() - t0
    scored = int(counts.sum())
    if scored == 0:
        raise ConfigError(nothing_scored(docs, tokenizer))
    result = summarize(float(totals.sum()), scored, documents, causal=False)
    result.update(max_length=max_length, stride=stride, word_l2r=word_l2r, dtype=dtype,
                  method=METHOD + (METHOD_L2R if word_l2r else ""), seconds=round(seconds, 3),
                  tokens_per_s=round(scored / seconds, 1))
    records = []
    for i, (text, ll, n) in enumerate(zip(documents, totals.tolist(), counts.tolist())):
        words = count_words(text)
        records.append({"index": i, "tokens": n, "words": words, "pll": ll,
                        "pppl": capped_exp(-ll / n) if n else None,
                        "word_pppl": capped_exp(-ll / words) if words else None,
                        "text": text})
    return result, records
