import torch

from lmssl.objectives.base import IGNORE_INDEX as I
from lmssl.objectives.clm import next_token_labels


def test_next_token_labels_shift_inside_the_objective():
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    assert next_token_labels(ids, None).tolist() == [[11, 12, 13, 14, I]]


def test_document_ends_do_not_predict_the_next_document():
    ids = torch.tensor([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25]])
    labels = next_token_labels(ids, [[2, 3, 1], [6]])
    assert labels.tolist() == [[11, I, 13, 14, I, I], [21, 22, 23, 24, 25, I]]
