"""BERT's masked-LM corruption (Devlin et al. 2019, §3.1 and appendix A.1), shared by MLM and ELECTRA."""
from __future__ import annotations

import torch

from lmssl.data.tokenizer import TextTokenizer
from lmssl.model.batch import IGNORE_INDEX


def num_to_mask(num_candidates: int, rate: float) -> int:
    """BERT's create_pretraining_data: round(n * rate), at least one when anything can be masked."""
    return 0 if num_candidates == 0 else max(1, int(num_candidates * rate + 0.5))


def select_positions(maskable: torch.Tensor, word_start: torch.Tensor | None, rate: float,
                     generator: torch.Generator) -> torch.Tensor:
    """(B, T) bool of positions chosen for prediction: exactly num_to_mask(maskable count) per row.

    With `word_start`, whole words are chosen together: words are visited in random order and a
    word is taken only if it still fits the row's budget (BERT's whole-word masking)."""
    selected = torch.zeros_like(maskable)
    for row in range(maskable.shape[0]):
        candidates = maskable[row].nonzero().squeeze(1)
        k = num_to_mask(len(candidates), rate)
        if k == 0:
            continue
        if word_start is None:
            selected[row, candidates[torch.randperm(len(candidates), generator=generator)[:k]]] = True
            continue
        word_of = torch.cumsum(word_start[row].long(), 0)[candidates]  # word index of each candidate
        words, sizes = torch.unique_consecutive(word_of, return_counts=True)
        starts = torch.cumsum(sizes, 0) - sizes
        taken = 0
        for w in torch.randperm(len(words), generator=generator).tolist():
            if taken + sizes[w] > k:
                continue
            selected[row, candidates[starts[w]:starts[w] + sizes[w]]] = True
            taken += int(sizes[w])
            if taken == k:
                break
    return selected


def corrupt(input_ids: torch.Tensor, selected: torch.Tensor, *, mask_id: int, random_ids: torch.Tensor,
            mask_prob: float, random_prob: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace selected tokens by [MASK] (mask_prob), a random token (random_prob) or keep them.
    Returns (corrupted ids, labels with IGNORE_INDEX except at selected positions)."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[selected] = input_ids[selected]
    corrupted = input_ids.clone()
    r = torch.rand(int(selected.sum()), generator=generator)
    values = corrupted[selected]
    values[r < mask_prob] = mask_id
    use_random = (r >= mask_prob) & (r < mask_prob + random_prob)
    values[use_random] = random_ids[torch.randint(len(random_ids), (int(use_random.sum()),), generator=generator)]
    corrupted[selected] = values
    return corrupted, labels


class TokenCorruption:
    """The corruption of one objective's config (mask_rate, mask_token_prob, random_token_prob) over a tokenizer:
    special tokens and padding are never chosen, random replacements are never special. Runs in collate, on CPU."""

    def __init__(self, tokenizer: TextTokenizer, ocfg, whole_word: bool = False):
        self.rate, self.mask_prob, self.random_prob = ocfg.mask_rate, ocfg.mask_token_prob, ocfg.random_token_prob
        self.mask_id = tokenizer.mask_id
        special = set(tokenizer.special_ids)
        self.special_ids = torch.tensor(sorted(special), dtype=torch.long)
        self.random_ids = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in special], dtype=torch.long)
        self.word_start = torch.from_numpy(tokenizer.word_start_table()) if whole_word else None

    def __call__(self, ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(corrupted ids, labels, number of chosen positions) for a (B, T) batch."""
        maskable = ~torch.isin(ids, self.special_ids)
        word_start = self.word_start[ids] if self.word_start is not None else None
        selected = select_positions(maskable, word_start, self.rate, generator)
        corrupted, labels = corrupt(ids, selected, mask_id=self.mask_id, random_ids=self.random_ids,
                                    mask_prob=self.mask_prob, random_prob=self.random_prob, generator=generator)
        return corrupted, labels, int(selected.sum())
