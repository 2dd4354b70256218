"""AttnSpec layouts and what the trunk does with them: causality, packing and padding invariances."""
from __future__ import annotations

import pytest
import torch
from helpers import BLOCKS, block_config, spread_weights

from lmssl.model.attention import AttnSpec, SdpaAttention
from lmssl.model.transformer import Transformer

ATOL = 1e-5
VOCAB = 100

VARIANTS = list(BLOCKS)  # both norm placements and types, learned positions and RoPE, each feed-forward, QK-norm




def tiny_trunk(variant: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(block_config(variant)).eval()
    return spread_weights(model)


# ---------------------------------------------------------------------------------------------
# AttnSpec itself
# ---------------------------------------------------------------------------------------------

def test_packed_spec_hand_computed():
    spec = AttnSpec.packed(causal=True, doc_lengths=[[3, 2], [5]])
    assert spec.is_packed and spec.causal and spec.key_padding_mask is None
    assert spec.cu_seqlens.dtype == torch.int32
    assert spec.cu_seqlens.tolist() == [0, 3, 5, 10]
    assert spec.max_seqlen == 5
    assert spec.segment_ids(2, 5).tolist() == [[0, 0, 0, 1, 1], [2, 2, 2, 2, 2]]
    assert spec.position_ids(2, 5, torch.device("cpu")).tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]


def test_packed_spec_many_documents_per_row():
    spec = AttnSpec.packed(causal=False, doc_lengths=[[1, 1, 3], [2, 2, 1]])
    assert spec.cu_seqlens.tolist() == [0, 1, 2, 5, 7, 9, 10]
    assert spec.max_seqlen == 3
    assert spec.segment_ids(2, 5).tolist() == [[0, 1, 2, 2, 2], [3, 3, 4, 4, 5]]
    assert spec.position_ids(2, 5, torch.device("cpu")).tolist() == [[0, 0, 0, 1, 2], [0, 1, 0, 1, 0]]


def test_dense_and_padded_positions_are_plain_ranges():
    assert AttnSpec.dense(True).position_ids(2, 4, torch.device("cpu")).tolist() == [[0, 1, 2, 3]] * 2
    spec = AttnSpec.padded(False, torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]))
    assert spec.key_padding_mask.dtype == torch.bool and not spec.is_packed
    assert spec.position_ids(2, 4, torch.device("cpu")).tolist() == [[0, 1, 2, 3]] * 2


def test_sdpa_packed_mask_is_block_diagonal_and_causal():
    spec = AttnSpec.packed(causal=True, doc_lengths=[[3, 2], [5]])
    mask = SdpaAttention().prepare(spec, 2, 5, torch.device("cpu"))
    assert mask.shape == (2, 1, 5, 5)
    expected_row0 = torch.tensor([[1, 0, 0, 0, 0],
                                  [1, 1, 0, 0, 0],
                                  [1, 1, 1, 0, 0],
                                  [0, 0, 0, 1, 0],
                                  [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected_row0)
    assert torch.equal(mask[1, 0], torch.ones(5, 5, dtype=torch.bool).tril())
    bidir = SdpaAttention().prepare(AttnSpec.packed(causal=False, doc_lengths=[[3, 2], [5]]), 2, 5, torch.device("cpu"))
    assert torch.equal(bidir[0, 0], torch.block_diag(torch.ones(3, 3), torch.ones(2, 2)).bool())
    assert SdpaAttention().prepare(AttnSpec.dense(True), 2, 5, torch.device("cpu")) is None


# ---------------------------------------------------------------------------------------------
# causality
# ---------------------------------------------------------------------------------------------

def _specs(causal: bool, B: int, T: int):
    """The same attention pattern in all three layouts (one document per row, no padding)."""
    return {
        "dense": AttnSpec.dense(causal),
        "padded": AttnSpec.padded(causal, torch.ones(B, T, dtype=torch.bool)),
        "packed": AttnSpec.packed(causal, [[T]] * B),
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_trunk_never_sees_the_future(variant):
    model = tiny_trunk(variant)
    B, T = 2, 12
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (B, T))
    for layout, spec in _specs(True, B, T).items():
        with torch.no_grad():
            base = model(ids, spec)
            for t in (0, 3, 7, T - 2):
                changed = ids.clone()
                changed[:, t + 1:] = torch.randint(0, VOCAB, (B, T - t - 1))
                changed[:, t + 1:] = torch.where(changed[:, t + 1:] == ids[:, t + 1:], (ids[:, t + 1:] + 1) % VOCAB,
                                                 changed[:, t + 1:])  # really different
                out = model(changed, spec)
                torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], atol=ATOL, rtol=0,
                                           msg=f"{layout}: positions <= {t} saw tokens after {t}")
                # ...and the change itself is visible afterwards (the check above is not vacuous)
                assert (out[:, t + 1:] - base[:, t + 1:]).abs().max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_bidirectional_trunk_sees_the_future(variant):
    model = tiny_trunk(variant)
    B, T = 2, 12
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (B, T))
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % VOCAB  # only the last token changes
    for layout, spec in _specs(False, B, T).items():
        with torch.no_grad():
            diff = (model(changed, spec) - model(ids, spec)).abs().amax(dim=-1)  # (B, T)
        assert (diff > 1e-4).all(), f"{layout}: some position did not see the last token: {diff}"


# ---------------------------------------------------------------------------------------------
# packing == running the documents separately
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_documents_equal_separate_documents(variant, causal):
    model = tiny_trunk(variant)
    doc_lengths = [[3, 2, 4], [6, 3], [1, 7, 1]]
    B, T = len(doc_lengths), 9
    torch.manual_seed(2)
    ids = torch.randint(0, VOCAB, (B, T))
    with torch.no_grad():
        packed = model(ids, AttnSpec.packed(causal, doc_lengths))
        for b, row in enumerate(doc_lengths):
            start = 0
            for n in row:
                alone = model(ids[b:b + 1, start:start + n], AttnSpec.dense(causal))[0]
                torch.testing.assert_close(packed[b, start:start + n], alone, atol=ATOL, rtol=0,
                                           msg=f"row {b}, document at {start}:{start + n}")
                start += n
        # the documents really interact when run unpacked (so the equality above is meaningful)
        unpacked = model(ids, AttnSpec.dense(causal))
    assert (unpacked - packed).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# padding never changes real tokens
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_never_changes_real_tokens(variant, causal):
    model = tiny_trunk(variant)
    lengths = [8, 5, 1, 3]
    B, T = len(lengths), max(lengths)
    torch.manual_seed(3)
    ids = torch.randint(1, VOCAB, (B, T))
    real = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # right padding
    ids = ids.masked_fill(~real, 0)
    spec = AttnSpec.padded(causal, real)
    with torch.no_grad():
        padded = model(ids, spec)
        for b, n in enumerate(lengths):
            alone = model(ids[b:b + 1, :n], AttnSpec.dense(causal))[0]
            torch.testing.assert_close(padded[b, :n], alone, atol=ATOL, rtol=0, msg=f"row {b} (length {n})")
        # garbage at the padded positions changes nothing at the real ones
        garbage = torch.where(real, ids, torch.randint(1, VOCAB, (B, T)))
        assert not torch.equal(garbage, ids)
        out = model(garbage, spec)
    assert torch.isfinite(padded).all() and torch.isfinite(out).all()
    torch.testing.assert_close(out[real], padded[real], atol=ATOL, rtol=0)
