"""Cross-entropy of a linear projection to the vocabulary, fused and chunked: the (N, V) logits never exist.

Rows are projected a chunk at a time (CHUNK_LOGITS; on CPU a chunk's logits stay in the caches), and since the
loss is a scalar, each chunk's gradients with respect to the hidden states and the weight are computed right
there, in the forward pass (as Liger-Kernel's fused linear cross-entropy does); backward only scales them. Under
bf16 autocast the projection runs in bf16 and the softmax in fp32, one chunk at a time, so fp32 logits are never
materialised whole. Without gradients (evaluation) nothing but the loss is computed.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmssl.model.batch import IGNORE_INDEX

# logits per chunk: on CPU 2^21 (8 MB in fp32: 256 rows at vocabulary 8192, measured fastest of 256/512/1024 rows
# on a 2-core CPU, in its caches); on GPUs 2^27 (a few large matmuls, little Python per step)
CHUNK_LOGITS = {"cpu": 1 << 21, "cuda": 1 << 27}


def projected_cross_entropy(layer: nn.Linear, hidden: torch.Tensor,
                            targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`linear_cross_entropy` through `layer`. A weight ZeRO-3 has partitioned (gathered only while the layer's own
    forward runs) takes the plain path: logits from the layer, then cross-entropy."""
    if layer.weight.dim() == 2:
        return linear_cross_entropy(hidden, layer.weight, layer.bias, targets)
    logits = layer(hidden).float()
    valid = targets != IGNORE_INDEX
    return (F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX),
            ((logits.argmax(-1) == targets) & valid).sum() / valid.sum())


@torch.compiler.disable  # eager inside a compiled objective: the chunk loop is the point
def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over the targets that are not IGNORE_INDEX, fraction of them predicted right (argmax)),
    for logits = hidden @ weight.T + bias; hidden (N, H), weight (V, H), targets (N,)."""
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss_sum, correct = _LinearCrossEntropy.apply(hidden, weight, bias, targets, with_grads)
    count = (targets != IGNORE_INDEX).sum()
    return loss_sum / count, correct / count


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, with_grads: bool):
        device = hidden.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else weight.dtype
        loss = torch.zeros((), dtype=torch.float32, device=device)
        correct = torch.zeros((), dtype=torch.float32, device=device)
        grads = None
        with torch.autocast(device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            if with_grads:  # (grad mode is always off inside forward: the caller decided)
                grads = (torch.empty_like(h), torch.zeros(weight.shape, dtype=torch.float32, device=device),
                         torch.zeros(weight.shape[0], dtype=torch.float32, device=device) if b is not None else None)
            chunk = max(1, CHUNK_LOGITS["cpu" if device.type == "cpu" else "cuda"] // weight.shape[0])
            for start in range(0, h.shape[0], chunk):
                rows = slice(start, start + chunk)
                loss_c, correct_c = _chunk(h[rows], w, b, targets[rows], grads, rows)
                loss += loss_c
                correct += correct_c
        ctx.mark_non_differentiable(correct)
        if grads is not None:  # else no backward will come (no_grad, or nothing requires a gradient)
            grad_h, grad_w, grad_b = grads
            ctx.save_for_backward(grad_h.to(hidden.dtype), grad_w.to(weight.dtype),
                                  *([grad_b.to(bias.dtype)] if b is not None else []))
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, grad_correct):
        grad_h, grad_w, *grad_b = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, (grad_b[0] * grad_loss if grad_b else None), None, None


def _chunk(h, w, b, targets, grads, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and correct predictions of one chunk; its gradients of the summed loss into `grads`."""
    logits = (h @ w.t() if b is None else torch.addmm(b, h, w.t())).float()
    valid = targets != IGNORE_INDEX
    safe = targets.clamp(min=0)
    correct = ((logits.argmax(-1) == targets) & valid).sum()
    lse = logits.logsumexp(-1)
    loss = ((lse - logits.gather(1, safe[:, None]).squeeze(1)) * valid).sum()
    if grads is not None:
        probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
        probs[torch.arange(len(safe), device=probs.device), safe] -= 1.0
        g = probs.mul_(valid[:, None]).to(h.dtype)  # d(summed loss) / d(logits); ignored rows contribute nothing
        grad_h, grad_w, grad_b = grads
        grad_h[rows] = g @ w
        if g.dtype == torch.float32:
            grad_w.addmm_(g.t(), h)
        else:  # bf16 product per chunk, summed in fp32
            grad_w += (g.t() @ h).float()
        if grad_b is not None:
            grad_b += g.sum(0).float()
    return loss, correct.float()
