import math

import numpy as np
import pytest

from lmssl.data.unigram import Unigram, UnigramBaselines
from lmssl.training.evaluator import baseline_table


def test_unigram_by_hand():
    # vocabulary of 8, ids 0 and 1 special; training counts 5:2, 6:1, 7:1 -> add-one over the 6 ordinary ids
    model = Unigram(np.array([0, 5, 5, 6, 7, 1]), vocab_size=8, special=[0, 1])
    p5, p6, p7 = 3 / 10, 2 / 10, 2 / 10
    valid, text = np.array([0, 5, 6, 6, 1]), np.array([7, 1])
    assert model.top1_accuracy(valid) == pytest.approx(1 / 3)  # 5 is the most frequent; 1 of the 3 ordinary tokens
    assert model.cross_entropy(valid) == pytest.approx(-(math.log(p5) + 2 * math.log(p6)) / 3)
    stats = UnigramBaselines.of(model, valid, text)
    assert stats.perplexity == pytest.approx(math.exp(model.cross_entropy(valid)))
    assert stats.text_perplexity == pytest.approx(1 / p7)  # the special 1 is not scored
    assert UnigramBaselines.of(model, valid, None).text_perplexity is None


def test_unigram_gives_unseen_tokens_their_smoothed_share():
    model = Unigram(np.array([2, 2, 2]), vocab_size=4, special=[0])
    assert model.top1_accuracy(np.array([3])) == 0.0
    assert model.cross_entropy(np.array([3])) == pytest.approx(math.log(6))  # p(3) = (0 + 1) / (3 + 3)


def test_baseline_table_says_which_metrics_beat_their_baseline():
    table = baseline_table({"val_mlm_acc": 0.2, "val_pppl": 900.0, "val_mlm_loss": 5.0},
                           {"val_mlm_acc": (0.05, "always the most frequent training token"),
                            "val_pppl": (600.0, "the unigram perplexity"),
                            "val_mlm_loss": (6.4, "the training corpus's unigram model"),
                            "val_nsp_acc": (0.5, "chance")}, step=300)
    lines = table.splitlines()
    assert lines[0].startswith("final validation at step 300")
    assert len(lines) == 4  # val_nsp_acc was not measured: no line
    assert "val_mlm_acc" in lines[1] and "better than always the most frequent" in lines[1]
    assert "NOT better than the unigram perplexity" in lines[2]  # perplexity: lower is better
    assert "better than the training corpus" in lines[3] and "NOT" not in lines[3]
