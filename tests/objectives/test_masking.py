import pytest
import torch

from lmssl.objectives.base import IGNORE_INDEX
from lmssl.objectives.masking import corrupt, num_to_mask, select_positions

SPECIAL = {0, 1, 2, 3, 4}  # pad unk cls sep mask
MASK_ID = 4


def test_num_to_mask_is_bert_rounding():
    assert [num_to_mask(n, 0.15) for n in (0, 1, 3, 4, 10, 126, 127)] == [0, 1, 1, 1, 2, 19, 19]
    assert num_to_mask(100, 0.15) == 15 and num_to_mask(110, 0.15) == 17  # 16.5 rounds up


def test_exact_count_per_row_and_specials_never_selected():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (64, 40), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    ids[:8, 30:] = 0  # padding
    maskable = ~torch.isin(ids, torch.tensor(sorted(SPECIAL)))
    selected = select_positions(maskable, None, 0.15, g)
    for row in range(64):
        assert int(selected[row].sum()) == num_to_mask(int(maskable[row].sum()), 0.15)
    assert not selected[~maskable].any()


def test_80_10_10_proportions_over_many_draws():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (2000, 100), generator=g)
    selected = select_positions(torch.ones_like(ids, dtype=torch.bool), None, 0.15, g)
    random_ids = torch.arange(5, 1000)
    corrupted, labels = corrupt(ids, selected, mask_id=MASK_ID, random_ids=random_ids, mask_prob=0.8,
                                random_prob=0.1, generator=g)
    n = int(selected.sum())
    assert n == 2000 * 15
    masked = (corrupted[selected] == MASK_ID).float().mean().item()
    kept = (corrupted[selected] == ids[selected]).float().mean().item()
    replaced = 1 - masked - kept
    # n = 30,000 draws: the standard error of a proportion near 0.1 is 0.0017; allow ~4 sigma
    assert masked == pytest.approx(0.8, abs=0.01)
    assert replaced == pytest.approx(0.1 * (1 - 1 / 995), abs=0.008)  # a random draw equal to the original looks kept
    assert kept == pytest.approx(0.1 + 0.1 / 995, abs=0.008)
    assert not torch.isin(corrupted[selected & (corrupted != MASK_ID)], torch.tensor(sorted(SPECIAL))).any()
    # labels: the original token at chosen positions, ignored elsewhere; unchosen tokens untouched
    assert torch.equal(labels[selected], ids[selected]) and (labels[~selected] == IGNORE_INDEX).all()
    assert torch.equal(corrupted[~selected], ids[~selected])


def test_whole_word_groups_are_chosen_together():
    # words (1-based): 1=[5 6 7] 2=[8] 3=[9 10] 4=[11 12 13 14] 5=[15] ... marked by word_start
    starts = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1]
    ids = torch.arange(5, 25).repeat(500, 1)
    word_start = torch.tensor(starts, dtype=torch.bool).repeat(500, 1)
    g = torch.Generator().manual_seed(2)
    selected = select_positions(torch.ones_like(ids, dtype=torch.bool), word_start, 0.15, g)
    word_of = torch.cumsum(word_start.long(), 1)
    for row in range(500):
        chosen_words = set(word_of[row][selected[row]].tolist())
        for w in chosen_words:  # every piece of a chosen word is chosen
            assert selected[row][word_of[row] == w].all()
        assert int(selected[row].sum()) <= num_to_mask(20, 0.15)  # budget 3 never exceeded
        assert int(selected[row].sum()) >= 1
    # over many rows every word, long or short, gets chosen sometimes
    assert set(word_of[selected].tolist()) == set(range(1, 12)) - {4}  # word 4 has 4 pieces > budget of 3
