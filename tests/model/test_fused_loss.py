"""The fused, chunked linear cross-entropy equals logits-then-F.cross_entropy: loss, accuracy and gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from lmssl.model import fused_loss
from lmssl.model.fused_loss import linear_cross_entropy


def test_hand_computed_value():
    # one row, logits (0, ln 3): P(target 1) = 3 / 4; the argmax is 1, so the accuracy is 1
    hidden = torch.tensor([[1.0]])
    weight = torch.tensor([[0.0], [math.log(3.0)]])
    loss, acc = linear_cross_entropy(hidden, weight, None, torch.tensor([1]))
    assert float(loss) == pytest.approx(-math.log(0.75), rel=1e-6)
    assert float(acc) == 1.0


def reference(hidden, weight, bias, targets):
    logits = F.linear(hidden, weight, bias).float()
    valid = targets != -100
    return F.cross_entropy(logits, targets), ((logits.argmax(-1) == targets) & valid).sum() / valid.sum()


@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_the_reference_with_gradients(monkeypatch, with_bias):
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", {"cpu": 64 * 50})  # 300 rows: 4 chunks of 64 and one of 44
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 16, generator=g, dtype=torch.float64).float()
    weight = torch.randn(50, 16, generator=g)
    bias = torch.randn(50, generator=g) if with_bias else None
    targets = torch.randint(0, 50, (300,), generator=g)
    targets[::7] = -100  # ignored rows: no loss, no gradient
    results = []
    for fn in (reference, linear_cross_entropy):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
        loss, acc = fn(leaves[0], leaves[1], leaves[2] if with_bias else None, targets)
        (3.0 * loss).backward()  # a scale on the loss reaches every gradient
        results.append((loss.detach(), acc, [t.grad for t in leaves]))
    (ref_loss, ref_acc, ref_grads), (loss, acc, grads) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    assert float(acc) == float(ref_acc) and 0 < float(acc) < 1
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert grads[0][::7].abs().max() == 0  # ignored rows get no gradient


def test_bf16_autocast_close_to_fp32_and_no_grad_path():
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(500, 32, generator=g), torch.randn(300, 32, generator=g) * 0.2
    targets = torch.randint(0, 300, (500,), generator=g)
    fp32_loss, _ = reference(hidden, weight, None, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        leaf = hidden.clone().requires_grad_()
        bf16_loss, _ = linear_cross_entropy(leaf, weight, None, targets)
        bf16_loss.backward()
    assert float(bf16_loss) == pytest.approx(float(fp32_loss), rel=1e-2)
    assert leaf.grad.dtype == torch.float32 and torch.isfinite(leaf.grad).all()
    with torch.no_grad():  # evaluation: the loss only
        loss, _ = linear_cross_entropy(hidden, weight, None, targets)
    assert float(loss) == pytest.approx(float(fp32_loss), rel=1e-6)
