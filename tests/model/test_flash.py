"""The varlen (flash-attn) path of the trunk: unpad once at entry, repad at exit, cu_seqlens from AttnSpec.

On CPU the kernel is `varlen_reference` (flash_attn_varlen_func's signature, SDPA per sequence), so every
piece around the kernel (unpadding, positions, RoPE tables, sparse last block, repadding, gradients) is
checked against the SDPA backend. The `gpu` tests run flash-attn's own kernel against SDPA in bf16.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import types

import pytest
import torch
from helpers import (
    BLOCKS,
    CAUSAL_PRESETS,
    REPO_ROOT,
    assert_forward_at_is_the_full_forward,
    block_config,
    spread_weights,
    tiny_model_config,
)

from lmssl.config import ConfigError, load_config
from lmssl.model.attention import AttnSpec, SdpaAttention, Varlen, VarlenAttention, varlen_reference
from lmssl.model.backends import build_attention_backend
from lmssl.model.transformer import Transformer

ATOL = 1e-5
VOCAB = 100
VARIANTS = list(BLOCKS)  # every block kind (tests/helpers.py)
B, T = 3, 9
LENGTHS = [9, 4, 1]  # padded layout: real tokens per row
DOCS = [[3, 2, 4], [6, 3], [1, 7, 1]]  # packed layout: documents per row




def trunk_pair(variant: str, seed: int = 0, **overrides) -> tuple[Transformer, Transformer]:
    """The same weights behind the SDPA backend and behind the varlen path with the reference kernel. Large
    random weights make attention far from uniform, so a leak across sequences would show."""
    torch.manual_seed(seed)
    cfg = block_config(variant, **{"attention_backend": "sdpa", **overrides})
    sdpa = spread_weights(Transformer(cfg))
    varlen = Transformer(cfg, backend=VarlenAttention(varlen_reference))
    varlen.load_state_dict(sdpa.state_dict())
    return sdpa.eval(), varlen.eval()


def right_padding(lengths: list[int], length: int) -> torch.Tensor:
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def layouts(causal: bool) -> dict[str, tuple[AttnSpec, torch.Tensor]]:
    """Each layout's spec and its (B, T) mask of real tokens."""
    real = right_padding(LENGTHS, T)
    left = real.flip(1)  # left padding: the real tokens need not start a row
    every = torch.ones(B, T, dtype=torch.bool)
    return {
        "dense": (AttnSpec.dense(causal), every),
        "packed": (AttnSpec.packed(causal, DOCS), every),
        "padded": (AttnSpec.padded(causal, real), real),
        "left-padded": (AttnSpec.padded(causal, left), left),
    }


# ---------------------------------------------------------------------------------------------
# the unpadded layout, by hand
# ---------------------------------------------------------------------------------------------

def test_varlen_layout_hand_computed():
    cpu = torch.device("cpu")
    dense = Varlen.from_spec(AttnSpec.dense(True), 2, 4, cpu)
    assert dense.cu_seqlens.tolist() == [0, 4, 8] and dense.cu_seqlens.dtype == torch.int32
    assert dense.max_seqlen == 4 and dense.causal and dense.indices is None
    packed = Varlen.from_spec(AttnSpec.packed(False, [[3, 1], [2, 2]]), 2, 4, cpu)
    assert packed.cu_seqlens.tolist() == [0, 3, 4, 6, 8] and packed.max_seqlen == 3 and packed.indices is None
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    padded = Varlen.from_spec(AttnSpec.padded(False, mask), 3, 4, cpu)
    assert padded.cu_seqlens.tolist() == [0, 3, 5, 5] and padded.cu_seqlens.dtype == torch.int32
    assert padded.max_seqlen == 3 and padded.indices.tolist() == [0, 1, 2, 5, 6]
    grid = torch.arange(12).view(3, 4)
    assert padded.unpad(grid).tolist() == [0, 1, 2, 5, 6]
    assert padded.pad(padded.unpad(grid)).tolist() == [[0, 1, 2, 0], [0, 5, 6, 0], [0, 0, 0, 0]]
    feats = torch.randn(3, 4, 5)
    assert torch.equal(padded.pad(padded.unpad(feats)), feats * mask[..., None])
    assert torch.equal(dense.pad(dense.unpad(feats[:2])), feats[:2])


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_reference_kernel_is_block_diagonal_sdpa(causal):
    """varlen_reference == SDPA with a block-diagonal (and causal) mask over the concatenated sequences."""
    torch.manual_seed(0)
    lengths = [3, 0, 5, 1]  # an empty sequence too (a row of padding only)
    cu = torch.tensor([0, 3, 3, 8, 9], dtype=torch.int32)
    q, k, v = (torch.randn(9, 2, 4) for _ in range(3))
    out = varlen_reference(q, k, v, cu, cu, 5, 5, causal=causal)
    seg = torch.repeat_interleave(torch.arange(4), torch.tensor(lengths))
    mask = seg[:, None] == seg[None, :]
    if causal:
        mask &= torch.ones(9, 9, dtype=torch.bool).tril()
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask).transpose(0, 1)
    assert out.shape == (9, 2, 4)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# varlen path == SDPA backend
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_varlen_path_equals_sdpa(variant, causal):
    sdpa, varlen = trunk_pair(variant)
    torch.manual_seed(1)
    ids = torch.randint(1, VOCAB, (B, T))
    types = torch.randint(0, 2, (B, T)) if sdpa.cfg.type_vocab_size else None
    for layout, (spec, real) in layouts(causal).items():
        with torch.no_grad():
            expected, out = sdpa(ids, spec, types), varlen(ids, spec, types)
        assert out.shape == (B, T, 32)
        torch.testing.assert_close(out[real], expected[real], atol=ATOL, rtol=0, msg=layout)
        assert not out[~real].any(), f"{layout}: padding is repadded with zeros"


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_varlen_forward_at_equals_forward_gathered(variant, causal):
    """The sparse last block (MLM's masked rows) on unpadded tokens: == forward(...)[where], row-major order,
    also when `where` selects padding (forward's zeros there), and == the SDPA backend's rows."""
    sdpa, varlen = trunk_pair(variant)
    torch.manual_seed(2)
    ids = torch.randint(1, VOCAB, (B, T))
    for layout, (spec, real) in layouts(causal).items():
        where = torch.rand(B, T) < 0.4
        where[0, 0] = where[1, 5] = True  # at least one real token and, when padded, one padding position
        with torch.no_grad():
            full = varlen(ids, spec)
            sparse = varlen.forward_at(ids, spec, where)
            sparse_real = varlen.forward_at(ids, spec, where & real)
            expected = sdpa.forward_at(ids, spec, where & real)
        torch.testing.assert_close(sparse, full[where], atol=ATOL, rtol=0, msg=layout)
        torch.testing.assert_close(sparse_real, expected, atol=ATOL, rtol=0, msg=layout)


@pytest.mark.parametrize("variant", VARIANTS)
def test_varlen_gradients_equal_sdpa(variant):
    causal = BLOCKS[variant][0] in CAUSAL_PRESETS
    sdpa, varlen = trunk_pair(variant)
    torch.manual_seed(3)
    ids = torch.randint(1, VOCAB, (B, T))
    for layout, (spec, real) in layouts(causal).items():
        weights = torch.randn(B, T, 32)
        where = (torch.rand(B, T) < 0.5) & real
        grads = []
        for model in (sdpa, varlen):
            model.zero_grad()
            # a loss on every real output and one through the sparse last block, as MLM's
            loss = (model(ids, spec)[real] * weights[real]).sum() + model.forward_at(ids, spec, where).square().sum()
            loss.backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert grads[0].keys() == grads[1].keys()
        for name, g in grads[0].items():
            scale = max(1.0, float(g.abs().max()))
            torch.testing.assert_close(grads[1][name], g, atol=ATOL * scale, rtol=0, msg=f"{layout}: {name}")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_varlen_padding_length_invariance(causal):
    """Padding is removed before the embeddings: the real tokens' outputs do not depend on how much padding
    there is or what it holds (bit for bit), and equal each row run alone."""
    _, varlen = trunk_pair("bert-rope")
    torch.manual_seed(4)
    ids = torch.randint(1, VOCAB, (B, T))
    real = right_padding(LENGTHS, T)
    with torch.no_grad():
        base = varlen(ids, AttnSpec.padded(causal, real))
        for extra in (1, 7):
            garbage = torch.randint(1, VOCAB, (B, extra))
            longer = torch.cat([torch.where(real, ids, torch.randint(1, VOCAB, (B, T))), garbage], 1)
            out = varlen(longer, AttnSpec.padded(causal, right_padding(LENGTHS, T + extra)))
            assert torch.equal(out[:, :T][real], base[real]) and not out[:, T:].any()
        for b, n in enumerate(LENGTHS):
            alone = varlen(ids[b:b + 1, :n], AttnSpec.dense(causal))[0]
            torch.testing.assert_close(base[b, :n], alone, atol=ATOL, rtol=0)


def test_varlen_dropout_forward_at_draws_as_forward():
    """In training (attention dropout inside the kernel, residual dropout unchanged) forward_at still gives
    forward's rows with the same random draws."""
    cfg = tiny_model_config("bert", dropout=0.2, attention_dropout=0.1, attention_backend="sdpa")
    model = Transformer(cfg, backend=VarlenAttention(varlen_reference)).train()
    ids = torch.randint(0, VOCAB, (B, T))
    spec = AttnSpec.padded(False, right_padding(LENGTHS, T))
    where = (torch.rand(B, T) < 0.5) & spec.key_padding_mask
    assert_forward_at_is_the_full_forward(model, ids, spec, where)
    torch.manual_seed(7)
    full = model(ids, spec)[where]
    torch.manual_seed(8)
    assert not torch.allclose(model(ids, spec)[where], full)  # dropout is really on


@pytest.mark.parametrize("variant", VARIANTS)
def test_varlen_path_under_bf16_autocast(variant):
    """Under autocast the kernel gets q, k, v in one half-precision dtype, as flash-attn requires (RoPE's fp32
    tables must not promote q and k; the reference kernel asserts it), and the result stays within bf16
    tolerance of the SDPA path under the same autocast."""
    sdpa, varlen = trunk_pair(variant)
    seen = []

    def recording_kernel(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return varlen_reference(q, k, v, *args, **kwargs)

    varlen = Transformer(sdpa.cfg, backend=VarlenAttention(recording_kernel))
    varlen.load_state_dict(sdpa.state_dict())
    torch.manual_seed(6)
    ids = torch.randint(1, VOCAB, (B, T))
    for layout, (spec, real) in layouts(BLOCKS[variant][0] in CAUSAL_PRESETS).items():
        seen.clear()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out, expected = varlen(ids, spec), sdpa(ids, spec)
        assert seen and set(seen) == {(torch.bfloat16,) * 3}, layout
        # post-LN outputs are O(1), pre-LN residual streams larger: compare relative to their scale
        scale = float(expected[real].abs().max())
        torch.testing.assert_close(out[real].float(), expected[real].float(), atol=2e-2 * scale, rtol=0, msg=layout)


# ---------------------------------------------------------------------------------------------
# choosing the backend
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def cuda_without_a_gpu(monkeypatch):
    """Pretend CUDA (an Ampere GPU) is there, so build_attention_backend goes on to import flash_attn."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


def test_config_accepts_the_three_backends():
    for name in ("auto", "sdpa", "flash"):
        assert load_config(REPO_ROOT / "configs" / "mlm.yaml",
                           [f"model.attention_backend={name}"]).model.attention_backend == name
    with pytest.raises(ConfigError, match="key 'model.attention_backend': invalid value 'flsh'"):
        load_config(REPO_ROOT / "configs" / "mlm.yaml", ["model.attention_backend=flsh"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_backend_selection_without_cuda():
    assert isinstance(build_attention_backend("sdpa"), SdpaAttention)
    assert isinstance(build_attention_backend("auto"), SdpaAttention)
    with pytest.raises(ConfigError) as err:
        build_attention_backend("flash")
    message = str(err.value)
    assert "model.attention_backend" in message and "CUDA is not available" in message
    assert "pip install -e .[gpu]" in message and "'auto'" in message
    with pytest.raises(ConfigError, match="model.attention_backend"):
        Transformer(tiny_model_config(attention_backend="flash"))
    with pytest.raises(ValueError, match="unknown attention backend 'flex'"):
        build_attention_backend("flex")


def fake_torch_varlen(monkeypatch, signature: str):
    """PyTorch's varlen_attn, computed by the reference kernel, in the call style of a PyTorch version: 2.9-2.10
    take `is_causal`, later ones `window_size` ((-1, 0) = causal)."""
    calls = []

    def is_causal_style(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        calls.append(is_causal)
        return varlen_reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal=is_causal)

    def window_style(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1)):
        calls.append(window_size == (-1, 0))
        assert window_size in ((-1, -1), (-1, 0))
        return varlen_reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal=window_size == (-1, 0))

    module = types.SimpleNamespace(varlen_attn=is_causal_style if signature == "is_causal" else window_style)
    monkeypatch.setitem(sys.modules, "torch.nn.attention.varlen", module)
    return calls


def test_flash_requested_but_no_kernel_importable(cuda_without_a_gpu, monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # `import flash_attn` raises ImportError
    monkeypatch.setitem(sys.modules, "torch.nn.attention.varlen", None)  # a PyTorch older than 2.9
    with pytest.raises(ConfigError) as err:
        build_attention_backend("flash")
    message = str(err.value)
    assert "model.attention_backend" in message and "flash_attn cannot be imported" in message
    assert "has no torch.nn.attention.varlen (2.9 or newer does)" in message
    assert isinstance(build_attention_backend("auto"), SdpaAttention)


@pytest.mark.parametrize("signature", ["is_causal", "window_size"])
def test_without_flash_attn_the_kernel_is_pytorchs_own(cuda_without_a_gpu, monkeypatch, signature):
    """No flash_attn: `flash` and `auto` take torch.nn.attention.varlen.varlen_attn, called as its PyTorch version
    wants, with causal masking passed through; it equals the reference kernel."""
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    calls = fake_torch_varlen(monkeypatch, signature)
    for name in ("flash", "auto"):
        backend = build_attention_backend(name)
        assert isinstance(backend, VarlenAttention) and backend.provider == "torch"
    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 7, 12], dtype=torch.int32)
    q, k, v = (torch.randn(12, 2, 8) for _ in range(3))
    for causal in (False, True):
        got = backend.kernel(q, k, v, cu, cu, 5, 5, dropout_p=0.0, causal=causal)
        torch.testing.assert_close(got, varlen_reference(q, k, v, cu, cu, 5, 5, causal=causal), atol=0, rtol=0)
    assert calls == [False, True]


@pytest.mark.skipif(importlib.util.find_spec("torch.nn.attention.varlen") is None,
                    reason="this PyTorch has no torch.nn.attention.varlen")
def test_the_adapter_speaks_the_installed_pytorchs_call_style():
    """The real varlen_attn of the installed PyTorch accepts the adapter's call (its kernel is CUDA-only, so on CPU
    tensors the call gets as far as the dispatcher: NotImplementedError, not a TypeError about the arguments)."""
    from lmssl.model.flash import torch_varlen_kernel

    kernel = torch_varlen_kernel()
    assert callable(kernel), kernel
    q = torch.randn(12, 2, 8, dtype=torch.bfloat16)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    for causal in (False, True):
        with pytest.raises(NotImplementedError, match="_flash_attention_forward|CPU"):
            kernel(q, q, q, cu, cu, 7, 7, dropout_p=0.0, causal=causal)


def test_pytorchs_kernel_has_no_attention_dropout(cuda_without_a_gpu, monkeypatch):
    """A model trained with attention dropout: `auto` uses SDPA (which has dropout) rather than PyTorch's varlen
    kernel, `flash` says why it cannot; flash-attn itself has dropout and is taken either way."""
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    fake_torch_varlen(monkeypatch, "window_size")
    assert isinstance(build_attention_backend("auto", attention_dropout=0.1), SdpaAttention)
    with pytest.raises(ConfigError, match=r"no attention dropout and model.attention_dropout is 0.1: set it to 0, or "
                                          r"install flash-attn"):
        build_attention_backend("flash", attention_dropout=0.1)
    model = Transformer(tiny_model_config(attention_backend="auto", attention_dropout=0.1))
    assert isinstance(model.backend, SdpaAttention)
    assert Transformer(tiny_model_config(attention_backend="auto", attention_dropout=0.0)).backend.provider == "torch"
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=varlen_reference))
    backend = build_attention_backend("auto", attention_dropout=0.1)
    assert backend.provider == "flash_attn" and backend.kernel is varlen_reference


def test_flash_head_size_and_gpu_generation_limits(cuda_without_a_gpu, monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=varlen_reference))
    with pytest.raises(ConfigError, match="head sizes up to 256"):
        build_attention_backend("flash", head_dim=512)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(ConfigError, match="compute capability 8.0"):
        build_attention_backend("flash")
    assert isinstance(build_attention_backend("auto"), SdpaAttention)


def test_auto_picks_flash_and_falls_back_per_forward(cuda_without_a_gpu, monkeypatch):
    """With CUDA and flash_attn importable, auto is the flash backend; a forward it cannot run (CPU tensors,
    fp32) uses SDPA on the grid, while `flash` itself refuses with the reason."""
    fake = types.SimpleNamespace(flash_attn_varlen_func=varlen_reference)
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    auto = build_attention_backend("auto")
    assert isinstance(auto, VarlenAttention) and auto.name == "flash" and auto.kernel is varlen_reference
    assert isinstance(auto.fallback, SdpaAttention)
    strict = build_attention_backend("flash")
    assert isinstance(strict, VarlenAttention) and strict.fallback is None
    spec = AttnSpec.padded(False, right_padding(LENGTHS, T))
    prepared = auto.prepare(spec, B, T, torch.device("cpu"), torch.bfloat16)
    assert not isinstance(prepared, Varlen) and prepared.shape == (B, 1, 1, T)  # SDPA's mask
    for dtype in (torch.bfloat16, torch.float16):
        assert auto.check(torch.device("cuda"), dtype) is None
    for device, dtype, why in ((torch.device("cpu"), torch.bfloat16, "CUDA tensors only"),
                               (torch.device("cuda"), torch.float32, "fp16/bf16 only")):
        assert why in auto.check(device, dtype)
        with pytest.raises(ConfigError, match=f"'flash' cannot run this forward pass: .*{why}"):
            strict.prepare(spec, B, T, device, dtype)
    torch.manual_seed(0)
    cfg = tiny_model_config(attention_backend="auto")
    model = Transformer(cfg).eval()
    assert model.backend.name == "flash"
    reference = Transformer(cfg, backend=SdpaAttention()).eval()
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(1, VOCAB, (B, T))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, spec), reference(ids, spec), atol=0, rtol=0)


def test_importing_lmssl_and_building_models_never_imports_flash_attn():
    code = ("import sys, torch; from lmssl.config import ModelConfig; from lmssl.model import Transformer; "
            "import lmssl.objectives, lmssl.training.loop; "
            "Transformer(ModelConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, ffn_size=32)); "
            "assert torch.cuda.is_available() or 'flash_attn' not in sys.modules, 'flash_attn imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------
# GPU: flash-attn's kernel vs SDPA (bf16)
# ---------------------------------------------------------------------------------------------

BF16_ATOL = 2e-2


def _gpu_pair(preset: str, **overrides) -> tuple[Transformer, Transformer]:
    torch.manual_seed(0)
    cfg = tiny_model_config(preset, vocab_size=512, hidden_size=256, num_layers=3, num_heads=4, ffn_size=1024,
                            max_positions=1024, attention_backend="flash", **overrides)
    flash = Transformer(cfg).cuda()
    assert flash.backend.name == "flash"
    sdpa = Transformer(cfg, backend=SdpaAttention()).cuda()
    sdpa.load_state_dict(flash.state_dict())
    return flash, sdpa


def _bf16_step(model: Transformer, ids, spec, where, weights):
    """Outputs (all of them, and the sparse last block's rows) and parameter gradients under bf16 autocast."""
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(ids, spec)
        rows = model.forward_at(ids, spec, where)
    loss = (out.float() * weights).sum() / weights.numel() + rows.float().square().mean()
    loss.backward()
    return out.float(), rows.float(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


def _assert_bf16_close(flash_result, sdpa_result, real):
    (out_f, rows_f, grads_f), (out_s, rows_s, grads_s) = flash_result, sdpa_result
    torch.testing.assert_close(out_f[real], out_s[real], atol=BF16_ATOL, rtol=BF16_ATOL)
    torch.testing.assert_close(rows_f, rows_s, atol=BF16_ATOL, rtol=BF16_ATOL)
    assert grads_f.keys() == grads_s.keys()
    for name, g in grads_s.items():
        error = float((grads_f[name] - g).norm() / g.norm().clamp_min(1e-12))
        assert error < BF16_ATOL, f"{name}: relative gradient error {error:.4f}"


@pytest.mark.gpu
@pytest.mark.parametrize("preset, position", [("gpt2", "learned"), ("gpt2", "rope"), ("llama", "rope")])
def test_gpu_flash_packed_document_clm_matches_sdpa(preset, position):
    """GPT-2 / Llama style causal LM on packed documents (data.document_mask): 4 x 1024 tokens, documents of
    uneven lengths, positions restarting per document."""
    flash, sdpa = _gpu_pair(preset, position=position)
    g = torch.Generator().manual_seed(1)
    docs = []
    for _ in range(4):
        row, left = [], 1024
        while left:
            n = min(left, int(torch.randint(1, 400, (1,), generator=g)))
            row.append(n)
            left -= n
        docs.append(row)
    spec = AttnSpec.packed(True, docs)
    ids = torch.randint(0, 512, (4, 1024), generator=g).cuda()
    where = (torch.rand(4, 1024, generator=g) < 0.15).cuda()
    weights = torch.randn(4, 1024, 256, generator=g).cuda()
    real = torch.ones(4, 1024, dtype=torch.bool, device="cuda")
    _assert_bf16_close(_bf16_step(flash, ids, spec, where, weights), _bf16_step(sdpa, ids, spec, where, weights), real)


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["bert", "modernbert"])
def test_gpu_flash_padded_mlm_matches_sdpa(preset):
    """BERT / ModernBERT style bidirectional MLM on right-padded rows (sentence pairs, SimCSE): 8 x 512, lengths
    1..512."""
    flash, sdpa = _gpu_pair(preset)
    g = torch.Generator().manual_seed(2)
    lengths = [512, 1, 37, 128, 300, 511, 64, 200]
    real = right_padding(lengths, 512).cuda()
    spec = AttnSpec.padded(False, real)
    ids = torch.randint(0, 512, (8, 512), generator=g).cuda()
    where = (torch.rand(8, 512, generator=g) < 0.15).cuda() & real
    weights = torch.randn(8, 512, 256, generator=g).cuda() * real[..., None]
    flash_result = _bf16_step(flash, ids, spec, where, weights)
    assert not flash_result[0][~real].any()  # repadded with zeros
    _assert_bf16_close(flash_result, _bf16_step(sdpa, ids, spec, where, weights), real)


@pytest.mark.gpu
def test_gpu_flash_dropout_and_fallbacks():
    """Training mode: forward_at draws as forward (flash-attn's in-kernel dropout included; PyTorch's own kernel
    has none, so without flash_attn only hidden dropout). fp32: `flash` refuses, `auto` falls back to SDPA."""
    attention_dropout = 0.1 if importlib.util.find_spec("flash_attn") is not None else 0.0
    flash, _ = _gpu_pair("bert", dropout=0.1, attention_dropout=attention_dropout)
    flash.train()
    real = right_padding([512, 100, 7, 300], 512).cuda()
    spec = AttnSpec.padded(False, real)
    ids = torch.randint(0, 512, (4, 512), device="cuda")
    where = (torch.rand(4, 512, device="cuda") < 0.15) & real
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.manual_seed(5)
        full = flash(ids, spec)[where].float()
        torch.manual_seed(5)
        sparse = flash.forward_at(ids, spec, where).float()
    torch.testing.assert_close(sparse, full, atol=BF16_ATOL, rtol=BF16_ATOL)
    with pytest.raises(ConfigError, match="fp16/bf16 only"):
        flash(ids, spec)  # fp32
    auto = Transformer(tiny_model_config("bert", attention_backend="auto")).cuda().eval()
    reference = Transformer(auto.cfg, backend=SdpaAttention()).cuda().eval()
    reference.load_state_dict(auto.state_dict())
    small = ids[:, :64] % VOCAB
    small_spec = AttnSpec.padded(False, real[:, :64])
    with torch.no_grad():
        torch.testing.assert_close(auto(small, small_spec), reference(small, small_spec), atol=0, rtol=0)
