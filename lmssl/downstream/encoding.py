"""Task examples as model inputs (padded on the right, so positions are arange(T) as in pretraining):
  encoders   [CLS] A [SEP]  or  [CLS] A [SEP] B [SEP]  with token types 0 for [CLS] A [SEP], 1 for B [SEP]
             (BERT §3, Figure 2; ELECTRA and SimCSE fine-tune the same way);
  causal     <eos> A <eos>  or  <eos> A <sep> B <eos>  (GPT, Radford et al. 2018, §3.3: start token, delimiter,
             extract token; here the end-of-text token plays start and extract, as it separates documents in
             pretraining; <sep> is [SEP] where the tokenizer has one, else <eos> again).
A pair too long for `max_length` loses tokens from the end of its longer text, one at a time (BERT's
`_truncate_seq_pair`); a single text is cut at the end. The model they feed is lmssl.model.classifier.
"""
from __future__ import annotations

import numpy as np
import torch

from lmssl.data.tokenizer import TextTokenizer
from lmssl.model.attention import AttnSpec
from lmssl.model.classifier import TaskBatch


def truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer list (the second on ties) until len(a) + len(b) <= budget."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b


def encode_texts(tokenizer: TextTokenizer, texts: list[tuple[str, ...]], causal: bool,
                 max_length: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token ids and token types of each example (see the module docstring for the layouts)."""
    if causal:
        start = end = tokenizer.eos_id
        middle = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    else:
        start, middle, end = tokenizer.cls_id, tokenizer.sep_id, tokenizer.sep_id
    columns = [tokenizer.encode_batch([t[i] for t in texts]) for i in range(len(texts[0]))]
    ids, types = [], []
    for row in range(len(texts)):
        if len(columns) == 1:
            a = columns[0][row][:max_length - 2]
            seq, first = [start, *a, end], len(a) + 2
        else:
            a, b = truncate_pair(columns[0][row], columns[1][row], max_length - 3)
            seq, first = [start, *a, middle, *b, end], len(a) + 2
        ids.append(np.asarray(seq, dtype=np.int64))
        types.append(np.asarray([0] * first + [1] * (len(seq) - first), dtype=np.int64))
    return ids, types


def collate(ids: list[np.ndarray], types: list[np.ndarray], targets: torch.Tensor, pad_id: int, causal: bool,
            use_types: bool) -> TaskBatch:
    """Pad on the right to the longest example; mask the padding out of attention."""
    length = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
    type_ids = torch.zeros((len(ids), length), dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.bool)
    for row, (x, t) in enumerate(zip(ids, types)):
        input_ids[row, :len(x)] = torch.from_numpy(x)
        type_ids[row, :len(t)] = torch.from_numpy(t)
        mask[row, :len(x)] = True
    lengths = mask.sum(1)
    pool_index = lengths - 1 if causal else torch.zeros_like(lengths)
    return TaskBatch(input_ids, AttnSpec.padded(causal, mask), targets, len(ids), type_ids if use_types else None,
                     pool_index=pool_index)


GROUP_BATCHES = 50  # batches per length-sorted mega-batch (HF's LengthGroupedSampler uses 50)


def epoch_batches(rng: np.random.Generator, count: int, batch_size: int,
                  lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """One training epoch's batches of the rows 0..count-1, in a random order. With `lengths` (group by length) the
    random order is cut into mega-batches of GROUP_BATCHES batches, each sorted by length, and the batches are
    shuffled (the scheme of HF's LengthGroupedSampler): a batch holds similar lengths and is padded little."""
    order = rng.permutation(count)
    if lengths is not None:
        mega = batch_size * GROUP_BATCHES
        order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                                for chunk in np.split(order, range(mega, count, mega))])
    batches = [order[start:start + batch_size] for start in range(0, count, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] if lengths is not None else batches


class EncodedSet:
    """Tokenized examples; `batch(rows)` pads them into a TaskBatch."""

    def __init__(self, ids, types, targets: np.ndarray, pad_id: int, causal: bool, use_types: bool):
        self.ids, self.types, self.pad_id, self.causal, self.use_types = ids, types, pad_id, causal, use_types
        self.targets = torch.from_numpy(targets)

    def __len__(self) -> int:
        return len(self.ids)

    def eval_order(self) -> np.ndarray:
        """Longest first, so evaluation batches hold similar lengths (less padding)."""
        return np.argsort([-len(x) for x in self.ids], kind="stable")

    def epoch_batches(self, rng: np.random.Generator, batch_size: int, group_by_length: bool) -> list[np.ndarray]:
        return epoch_batches(rng, len(self), batch_size, np.array([len(x) for x in self.ids]) if group_by_length
                             else None)

    def batch(self, rows: np.ndarray) -> TaskBatch:
        return collate([self.ids[i] for i in rows], [self.types[i] for i in rows],
                       self.targets[torch.from_numpy(np.asarray(rows))], self.pad_id, self.causal, self.use_types)
