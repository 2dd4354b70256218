"""Model FLOPs utilisation (MFU) of a training step on one GPU: ours vs Hugging Face `transformers`.

Three shapes, from the GPU configs (random weights, random token ids; nothing is downloaded or tokenized):

  gpt2  configs/gpu/gpt2-124m-clm.yaml: GPT-2 124M, sequence 1024, vocabulary 50304, dropout 0
        ours: lmssl CausalLM, dense causal rows     HF: GPT2LMHeadModel(attn_implementation="sdpa"), labels = ids
  bert  configs/gpu/bert-base-mlm.yaml: BERT-base, sequence 512, vocabulary 30522, dropout 0.1, MLM only
        ours: lmssl MaskedLM (sparse prediction)    HF: BertForMaskedLM(attn_implementation="sdpa")
        both get the same corrupted ids and labels: 15% of each row, [MASK] shown, -100 elsewhere.
  llama configs/gpu/llama-162m-clm.yaml: a Llama at GPT-2 small's width and depth, sequence 1024, as gpt2
        ours: lmssl CausalLM, llama preset              HF: LlamaForCausalLM(attn_implementation="sdpa")
The HF side is built from the config.json our export writes (lmssl.interop.hf.export.hf_config).

One step = forward + backward + AdamW step (fused on CUDA) + zero_grad, under bf16 autocast (`--dtype`), in
train mode. Ours uses model.attention_backend=auto: flash-attn's varlen kernel when CUDA and flash_attn are
there (`pip install -e .[gpu]`), else SDPA. The two models are timed alternately for --rounds rounds of
--steps steps after --warmup steps each; tokens/s is the median over rounds.

FLOPs convention (PaLM, Chowdhery et al. 2022, appendix B): model FLOPs per token = 6 N + 12 L H T, where
N = the matmul parameters the task needs per token: every non-embedding parameter of the trunk, plus the
output head's matmuls (the LM head tied to the word embeddings is counted, since it is a matmul) times the
fraction of positions the loss projects (1 for CLM; the mask rate, 15%, for MLM: the loss needs logits at
masked positions only); 12 L H T is attention's QK^T and AV (L layers, H hidden size, T sequence length),
counted for the full T x T score matrix also when causal, as PaLM does. The same FLOPs per token are used for
both implementations, so MFU compares useful work: work a model does beyond it (HF's logits at unmasked
positions) counts as waste. MFU = tokens/s x FLOPs per token / peak, the peak being the GPU's dense bf16
tensor-core throughput (--peak-tflops, default 989: H100 SXM; H100 PCIe 756, A100 312).

    python bench/mfu.py                      # gpt2 and bert on cuda, defaults from the configs
    python bench/mfu.py --which all          # + llama
    python bench/mfu.py --which gpt2 --batch-size 32 --compile
    python bench/mfu.py --small --device cpu # tiny shapes: a smoke test of the script (< 1 min on CPU)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch
import yaml
from common import hf_model, model_flops_per_token

from lmssl.config import config_from_dict
from lmssl.data.tokenizer import TextTokenizer
from lmssl.model.attention import AttnSpec
from lmssl.objectives import build_objective
from lmssl.objectives.base import IGNORE_INDEX, Batch
from lmssl.objectives.clm import next_token_labels

TARGET_MFU = {"gpt2": 0.50, "bert": 0.45}  # the targets for ours, one GPU
SHAPES = {  # config, stand-in tokenizer (special-token ids only), default batch, default sequence length
    "gpt2": ("gpt2-124m-clm.yaml", "wikitext2-bpe", 16, 1024),
    "bert": ("bert-base-mlm.yaml", "wikitext2-wordpiece", 32, 512),
    "llama": ("llama-162m-clm.yaml", "wikitext2-bpe", 16, 1024),
}
SMALL = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "ffn_size": 256, "vocab_size": 8192}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def model_config(kind: str, seq_len: int, small: bool):
    """The GPU config's model and objective sections (its train section is not needed here)."""
    raw = yaml.safe_load((REPO / "configs" / "gpu" / SHAPES[kind][0]).read_text())
    raw = {k: dict(raw.get(k, {})) for k in ("model", "objective", "data")}
    raw["model"]["max_positions"] = max(raw["model"]["max_positions"], seq_len)
    raw["data"]["seq_len"] = seq_len
    if raw["objective"]["name"] == "clm":
        raw["data"]["document_mask"] = False  # dense causal rows: the attention work HF's models do
    else:
        raw["objective"]["sentence_task"] = "none"  # MLM only, as BertForMaskedLM
    if small:
        raw["model"].update(SMALL)
    return config_from_dict(raw, f"configs/gpu/{SHAPES[kind][0]}")


def make_batches(kind: str, cfg, objective, batch_size: int, seq_len: int, count: int, device) -> list[Batch]:
    """Random ids; MLM: exactly round(mask_rate x T) positions per row shown as [MASK] and predicted."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, cfg.model.vocab_size, (batch_size, seq_len), generator=g)
        if cfg.objective.name == "clm":
            labels = next_token_labels(ids, None)
            batch = Batch(ids, AttnSpec.dense(True), labels, int((labels != IGNORE_INDEX).sum()))
        else:
            k = round(cfg.objective.mask_rate * seq_len)
            chosen = torch.rand(batch_size, seq_len, generator=g).argsort(1)[:, :k]
            selected = torch.zeros(batch_size, seq_len, dtype=torch.bool).scatter_(1, chosen, True)
            labels = torch.where(selected, ids, IGNORE_INDEX)
            batch = Batch(ids.masked_fill(selected, objective.corruption.mask_id), AttnSpec.dense(False), labels,
                          int(selected.sum()))
        batches.append(batch.to(device))
    return batches


def flops_per_token(kind: str, cfg, objective) -> dict:
    """PaLM appendix B: 6 N + 12 L H T (see the module docstring for what N counts)."""
    seq_len = cfg.data.seq_len
    fraction = 1.0 if cfg.objective.name == "clm" else round(cfg.objective.mask_rate * seq_len) / seq_len
    return model_flops_per_token(objective, cfg, fraction)


class Runner:
    def __init__(self, name: str, model, loss_fn, batches, device, dtype: str):
        self.name, self.model, self.loss_fn, self.batches, self.device = name, model, loss_fn, batches, device
        fused = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=fused)
        self.autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bf16"
                         else contextlib.nullcontext)
        self.tokens_per_step = batches[0].input_ids.numel()
        self.rates: list[float] = []
        self.i = 0
        self.loss = float("nan")
        self.peak_memory: int | None = None

    def step(self) -> None:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        with self.autocast():
            loss = self.loss_fn(self.model, batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss = loss.detach()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, steps: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        rate = steps * self.tokens_per_step / (time.perf_counter() - start)
        self.rates.append(rate)
        return rate


def ours_loss(model, batch):
    return model(batch).loss


def hf_loss(model, batch):
    if batch.spec.causal:  # HF shifts internally: labels = ids gives our next-token targets
        return model(input_ids=batch.input_ids, labels=batch.input_ids).loss
    return model(input_ids=batch.input_ids, labels=batch.labels).loss


def bench(kind: str, args, device) -> dict:
    t0 = time.perf_counter()
    batch_size = args.batch_size or (4 if args.small else SHAPES[kind][2])
    seq_len = args.seq_len or (64 if args.small else SHAPES[kind][3])
    cfg = model_config(kind, seq_len, args.small)
    tokenizer = TextTokenizer.from_file(REPO / "tokenizers" / SHAPES[kind][1] / "tokenizer.json")
    torch.manual_seed(args.seed)
    ours = build_objective(cfg, tokenizer).to(device).train()
    flops = flops_per_token(kind, cfg, ours)
    batches = make_batches(kind, cfg, ours, batch_size, seq_len, args.pool, device)
    runners = [Runner("ours", torch.compile(ours) if args.compile else ours, ours_loss, batches, device, args.dtype)]
    backend = ours.trunk.backend.name
    if not args.no_hf:
        torch.manual_seed(args.seed)
        hf = hf_model(cfg, tokenizer).to(device).train()
        runners.append(Runner("hf", torch.compile(hf) if args.compile else hf, hf_loss, batches, device, args.dtype))
    params = {"ours": sum(p.numel() for p in ours.parameters())}
    if not args.no_hf:
        params["hf"] = sum(p.numel() for p in runners[1].model.parameters())
    log(f"[{kind}] {batch_size} x {seq_len}, params {params}, ours' attention backend: {backend}, "
        f"{flops['flops_per_token'] / 1e6:.1f} MFLOPs per token")
    for r in runners:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        for _ in range(args.warmup):
            r.step()
        r.sync()
        if device.type == "cuda":  # both models' weights and optimizer states, this one's activations
            r.peak_memory = torch.cuda.max_memory_allocated(device)
        log(f"[{kind}] warmup {r.name}: {args.warmup} steps in {time.perf_counter() - t:.1f}s, "
            f"loss {float(r.loss):.3f}")
    for rnd in range(args.rounds):
        for r in (runners if rnd % 2 == 0 else runners[::-1]):
            r.run(args.steps)
        log(f"[{kind}] round {rnd + 1}/{args.rounds}: "
            + ", ".join(f"{r.name} {r.rates[-1]:,.0f} tok/s" for r in runners))
    peak = args.peak_tflops * 1e12
    result = {"batch_size": batch_size, "seq_len": seq_len, "tokens_per_step": batch_size * seq_len,
              "shape": {k: getattr(cfg.model, k) for k in ("preset", "vocab_size", "hidden_size", "num_layers",
                                                              "num_heads", "ffn_size", "dropout", "attention_dropout")},
              **flops}
    for r in runners:
        rate = statistics.median(r.rates)
        result[r.name] = {"tokens_per_s": round(rate, 1), "mfu": float(f"{rate * flops['flops_per_token'] / peak:.4g}"),
                          "model_tflops": float(f"{rate * flops['flops_per_token'] / 1e12:.4g}"),
                          "step_ms": round(1000 * r.tokens_per_step / rate, 2),
                          "tokens_per_s_rounds": [round(x, 1) for x in r.rates], "params": params[r.name],
                          "final_loss": round(float(r.loss), 4)}
        if r.peak_memory is not None:
            result[r.name]["peak_memory_gib"] = round(r.peak_memory / 2**30, 2)
    result["ours"]["attention_backend"] = backend
    if not args.no_hf:
        result["ratio_ours_over_hf"] = round(result["ours"]["tokens_per_s"] / result["hf"]["tokens_per_s"], 3)
    result["target_mfu"] = TARGET_MFU.get(kind)
    result["meets_target"] = result["ours"]["mfu"] >= TARGET_MFU[kind] if kind in TARGET_MFU else None
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--which", choices=[*SHAPES, "both", "all"], default="both", help="both = gpt2 and bert")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model per round (default 10; --small 2)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; --small 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model first (default 5; --small 1)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: gpt2 16, bert 32)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: gpt2 1024, bert 512)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="bf16 = autocast, fp32 weights")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--small", action="store_true", help="tiny shapes (a smoke test; runs on CPU in seconds)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--no-hf", action="store_true", help="ours only (no transformers needed)")
    p.add_argument("--pool", type=int, default=4, help="distinct random batches cycled through")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.steps = args.steps or (2 if args.small else 10)
    args.rounds = args.rounds or (1 if args.small else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.small else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast (both sides alike)
        torch.backends.cudnn.allow_tf32 = True
    versions = {"torch": torch.__version__}
    if not args.no_hf:
        import transformers

        transformers.logging.set_verbosity_error()
        versions["transformers"] = transformers.__version__
    try:
        import flash_attn

        versions["flash_attn"] = flash_attn.__version__
    except Exception:
        versions["flash_attn"] = None
    kinds = {"both": ["gpt2", "bert"], "all": list(SHAPES)}.get(args.which, [args.which])
    result = {
        "benchmark": "mfu (training step: forward + backward + AdamW step)",
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.machine()}, {os.cpu_count()} cores)"),
        "dtype": args.dtype, "peak_tflops": args.peak_tflops, "small": args.small, "compile": args.compile,
        "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup, **versions,
        "flops_convention": "PaLM appendix B: 6N + 12*L*H*T per token; N = trunk non-embedding parameters + output "
                            "head (tied LM head counted) x fraction of positions the loss projects (CLM 1, MLM mask "
                            "rate); attention counted for the full TxT scores also when causal; same FLOPs for both",
    }
    if device.type != "cuda":
        result["note"] = "not a GPU: MFU against --peak-tflops is meaningless here (a smoke test of the script)"
    for kind in kinds:
        result[kind] = bench(kind, args, device)
    result["summary"] = {kind: {"ours_tokens_per_s": result[kind]["ours"]["tokens_per_s"],
                                "ours_mfu": result[kind]["ours"]["mfu"],
                                "hf_tokens_per_s": result[kind].get("hf", {}).get("tokens_per_s"),
                                "hf_mfu": result[kind].get("hf", {}).get("mfu"),
                                "target_mfu": result[kind]["target_mfu"], "meets_target": result[kind]["meets_target"]}
                         for kind in kinds}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
