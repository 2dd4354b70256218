"""Training-step throughput of our MLM / CLM objectives vs Hugging Face BertForMaskedLM / GPT2LMHeadModel, and of
the modernbert / llama presets vs ModernBertForMaskedLM / LlamaForCausalLM.

One training step = forward + backward + AdamW step (+ zero_grad), on real WikiText-2 batches built by
the repo's data pipeline. Both sides get the same shape, batch, dtype, optimizer and data:

  MLM  ours: lmssl MaskedLM (bert preset, configs/mlm.yaml)       HF: BertForMaskedLM (attn sdpa)
       HF is fed exactly our collate's corrupted input_ids and labels (-100 at unmasked positions),
       so both take the mean cross-entropy over the same masked tokens; HF projects every position
       to the vocabulary, we project only the masked ones (sparse prediction; our last block also
       computes its output projection, feed-forward and norms at the masked positions only).
  CLM  ours: lmssl CausalLM (gpt2 preset, configs/clm.yaml, dense layout: data.document_mask=false)
       HF: GPT2LMHeadModel (attn sdpa) with labels=input_ids (HF shifts internally): same targets,
       same mean next-token cross-entropy.
  modernbert / llama: the MLM / CLM above with model.preset=modernbert / llama (the configs' sizes), against
       ModernBertForMaskedLM / LlamaForCausalLM (attn sdpa). The HF side of every kind is built from the
       config.json our export writes (lmssl.interop.hf.export.hf_config), so the shapes cannot drift apart.

Both are in train mode with the configs' dropout (MLM 0, configs/mlm.yaml; CLM 0.1 on embeddings, residual
branches and attention probabilities), fp32 by default or bf16 autocast (`--dtype bf16`) for both, the same
AdamW parameter groups (no decay on norms/biases/embeddings), lr and betas; no gradient clipping on either side
(TorchEngine clips; the cost is the same for both and is left out). Our initial weights are copied into the HF
model through lmssl's export rules and both losses are computed on one batch without dropout (reported: they
must agree to float rounding); both then train from the same weights. `--compile` compiles ours as
`train.compile=true` does (lmssl.engine.compile_in_place, inductor); HF stays eager, as a plain transformers
loop runs; compilation happens in the untimed warm-up.

The models are measured alternately in one process (ours, HF, then HF, ours, ... for --rounds rounds
of --steps steps each, after --warmup steps per model), so drifts of the machine (other processes on a
small CPU, thermal state) hit both sides alike; the reported ratio is the median of the per-round
ratios ours/HF (plus the ratio of medians). Absolute tokens/s depend on the machine's load at the
time; the ratio is the meaningful figure. The JSON also gives the machine's matmul peak, measured in the same
run (bench/common.py), and the share of it our step achieves: model FLOPs per token (6 N + 12 L H T, the
vocabulary projection counted only where computed: MLM's masked positions, CLM's every position) x tokens/s.
Peak resident memory of each side is measured in a child process of its own (same batches, a few steps).
Progress goes to stderr; one JSON object on stdout.

    python bench/train_throughput.py                    # both objectives, fp32, 32 x 128
    python bench/train_throughput.py --which mlm --dtype bf16 --compile --rounds 8
    python bench/train_throughput.py --which all --dtype bf16         # + the modernbert and llama presets
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch
from common import hf_model, log, machine, matmul_peak_gflops, model_flops_per_token, own_peak_rss_mb, peak_rss_mb

from lmssl.config import load_config
from lmssl.data import load_tokenizer, sequences
from lmssl.data.loader import SequenceLoader
from lmssl.engine import compile_in_place
from lmssl.engine.torch_engine import parameter_groups
from lmssl.interop.hf.export import hf_state_dict
from lmssl.objectives import build_objective
from lmssl.objectives.base import IGNORE_INDEX
from lmssl.objectives.registry import hf_adapter
from lmssl.training.prepare import with_vocab
from lmssl.training.state import masking_generator

TARGETS = {"mlm": 2.0, "clm": 1.5}  # ours/HF tokens-per-second ratio the issue asks for (fp32 and bf16)
KINDS = {"mlm": ("mlm", None), "clm": ("clm", None), "modernbert": ("mlm", "modernbert"), "llama": ("clm", "llama")}
TARGET_BF16_SHARE = {"mlm": 0.55}  # share of the measured bf16 matmul peak the issue asks of ours


def build_ours(kind: str, args) -> tuple[torch.nn.Module, list, dict]:
    """Our objective and a pool of collated batches (real WikiText-2 data through the repo's pipeline)."""
    objective_name, preset = KINDS[kind]
    overrides = [f"data.seq_len={args.seq_len}", f"train.batch_size={args.batch_size}",
                 f"model.max_positions={max(args.seq_len, 128)}"] + ([f"model.preset={preset}"] if preset else [])
    if objective_name == "clm":
        overrides.append("data.document_mask=false")  # dense layout: the same attention work as HF's
    if objective_name == "mlm":
        # packed MLM only, as HF's *ForMaskedLM; BERT's 15% masking, as the recorded figures (the main job masks 30%)
        overrides += ["objective.sentence_task=none", "objective.mask_rate=0.15"]
    cfg = load_config(REPO / "configs" / f"{objective_name}.yaml", overrides)
    tokenizer = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tokenizer.vocab_size)
    torch.manual_seed(args.seed)
    objective = build_objective(cfg, tokenizer)
    sep_id, prefix_id = objective.packing_ids(tokenizer)
    data = sequences(cfg, "train", tokenizer, sep_id, prefix_id)
    loader = SequenceLoader(data, cfg.train.batch_size, cfg.train.seed)
    pool = [objective.collate(loader.next_batch(), masking_generator(cfg.train.seed, step, 0))
            for step in range(args.pool)]
    m = cfg.model
    shape = {"preset": m.preset, "vocab_size": m.vocab_size, "hidden_size": m.hidden_size, "num_layers": m.num_layers,
             "num_heads": m.num_heads, "ffn_size": m.ffn_size, "max_positions": m.max_positions, "dropout": m.dropout,
             "attention_dropout": m.attention_dropout, "tokenizer": cfg.data.tokenizer,
             "document_mask": cfg.data.document_mask}
    return objective, pool, {"cfg": cfg, "shape": shape, "tokenizer": tokenizer}


def hf_inputs(kind: str, batch) -> dict:
    if not batch.spec.causal:
        # the very corrupted ids and labels our collate produced: -100 everywhere but the masked positions
        return {"input_ids": batch.input_ids, "labels": batch.labels}
    # dense causal layout: HF shifts labels internally, so labels = input_ids gives our next-token targets
    return {"input_ids": batch.input_ids, "labels": batch.input_ids}


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    t = cfg.train
    return torch.optim.AdamW(parameter_groups(model, t.weight_decay), lr=t.lr,
                             betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)


class Runner:
    """One model, its optimizer and its step function."""

    def __init__(self, name: str, model, step_loss, optimizer, pool, autocast):
        self.name, self.model, self.step_loss, self.optimizer, self.pool, self.autocast = (
            name, model, step_loss, optimizer, pool, autocast)
        self.i = 0
        self.tokens_per_step = pool[0].input_ids.numel()
        self.rates: list[float] = []
        self.last_loss = float("nan")

    def step(self) -> None:
        batch = self.pool[self.i % len(self.pool)]
        self.i += 1
        with self.autocast():
            loss = self.step_loss(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = loss.detach()

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        elapsed = time.perf_counter() - start
        return steps * self.tokens_per_step / elapsed


def copy_weights_and_compare(kind: str, cfg, ours, hf, batch) -> dict:
    """Our weights into the HF model (lmssl's export rules), then both losses on one batch without dropout, in fp32:
    the same work must give the same loss. HF then trains from these weights too."""
    rules = hf_adapter(cfg.objective.name).export_targets(cfg)[0].rules
    missing, unexpected = hf.load_state_dict(hf_state_dict(ours.state_dict(), rules), strict=False)
    tied_or_buffers = ("position_ids", "decoder.weight", "decoder.bias", "lm_head.weight")  # tied: copied anyway
    if unexpected or not all(k.endswith(tied_or_buffers) for k in missing):
        raise RuntimeError(f"weight copy into HF: missing {missing}, unexpected {unexpected}")
    ours.eval(), hf.eval()
    with torch.no_grad():  # ours.forward: the eager module, not its compiled call
        a, b = float(ours.forward(batch).loss), float(hf(**hf_inputs(kind, batch)).loss)
    ours.train(), hf.train()
    return {"ours": a, "hf": b, "rel_diff": abs(a - b) / abs(b)}


def autocast_for(dtype: str):
    if dtype == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def runners(kind: str, args, sides=("ours", "hf")) -> tuple[dict, list, dict]:
    ours, pool, info = build_ours(kind, args)  # the batches come from our pipeline, whichever side runs
    cfg = info["cfg"]
    built = {}
    if "ours" in sides:
        ours.train()
        if args.compile:
            compile_in_place(ours)
        built["ours"] = Runner("ours", ours, lambda b: ours(b).loss, make_optimizer(ours, cfg), pool,
                               autocast_for(args.dtype))
    if "hf" in sides:
        torch.manual_seed(args.seed)
        hf = hf_model(cfg, info["tokenizer"]).train()
        built["hf"] = Runner("hf", hf, lambda b: hf(**hf_inputs(kind, b)).loss, make_optimizer(hf, cfg), pool,
                             autocast_for(args.dtype))
    return built, pool, {**info, "objective": ours if "ours" in sides else None}


def bench(kind: str, args) -> dict:
    t0 = time.perf_counter()
    built, pool, info = runners(kind, args)
    cfg, r_ours, r_hf = info["cfg"], built["ours"], built["hf"]
    n_ours = sum(p.numel() for p in r_ours.model.parameters())
    n_hf = sum(p.numel() for p in r_hf.model.parameters())
    masked = statistics.mean(int((b.labels != IGNORE_INDEX).sum()) for b in pool)
    same_loss = copy_weights_and_compare(kind, cfg, r_ours.model, r_hf.model, pool[0])
    log(f"[{kind}] with our weights copied into HF, no dropout: loss ours {same_loss['ours']:.6f}, "
        f"HF {same_loss['hf']:.6f}")
    log(f"[{kind}] setup {time.perf_counter() - t0:.1f}s; params ours {n_ours:,} / HF {n_hf:,}; "
        f"{len(pool)} batches of {tuple(pool[0].input_ids.shape)}, {masked:.0f} targets/batch")

    for r in (r_ours, r_hf):
        t = time.perf_counter()
        for _ in range(args.warmup):
            r.step()
        log(f"[{kind}] warmup {r.name}: {args.warmup} steps in {time.perf_counter() - t:.1f}s, "
            f"loss {float(r.last_loss):.3f}")
    ratios = []
    for rnd in range(args.rounds):
        a, b = (r_ours, r_hf) if rnd % 2 == 0 else (r_hf, r_ours)  # alternate who goes first, too
        ra, rb = a.run(args.steps), b.run(args.steps)
        a.rates.append(ra)
        b.rates.append(rb)
        ratios.append(r_ours.rates[-1] / r_hf.rates[-1])
        log(f"[{kind}] round {rnd + 1}/{args.rounds}: ours {r_ours.rates[-1]:,.0f} tok/s, "
            f"HF {r_hf.rates[-1]:,.0f} tok/s, ratio {ratios[-1]:.3f}")
    peak = matmul_peak_gflops(args.dtype)
    head_fraction = 1.0 if cfg.objective.name == "clm" else masked / pool[0].input_ids.numel()
    flops = model_flops_per_token(info["objective"], cfg, head_fraction)["flops_per_token"]
    memory = {side: peak_rss_mb(child_argv(kind, side, args)) for side in ("ours", "hf")} if args.memory else {}

    def summary(r: Runner, n_params: int) -> dict:
        rate = statistics.median(r.rates)
        return {"tokens_per_s": round(rate, 1), "tokens_per_s_rounds": [round(x, 1) for x in r.rates],
                "step_ms": round(1000 * r.tokens_per_step / rate, 1), "params": n_params,
                "final_loss": round(float(r.last_loss), 4), "peak_rss_mb": memory.get(r.name),
                "share_of_matmul_peak": round(rate * flops / 1e9 / peak, 3)}

    ratio = statistics.median(ratios)
    ours_summary = summary(r_ours, n_ours)
    share_target = TARGET_BF16_SHARE.get(kind) if args.dtype == "bf16" else None
    return {
        "ours": ours_summary,
        "hf": summary(r_hf, n_hf),
        "ratio_ours_over_hf": round(ratio, 3),
        "ratio_of_medians": round(statistics.median(r_ours.rates) / statistics.median(r_hf.rates), 3),
        "ratio_rounds": [round(x, 3) for x in ratios],
        "target": TARGETS.get(kind),
        "meets_target": ratio >= TARGETS[kind] if kind in TARGETS else None,
        "matmul_peak_gflops": round(peak, 1),
        "model_flops_per_token": round(flops),
        "head_fraction": round(head_fraction, 4),
        "share_target": share_target,
        "meets_share_target": None if share_target is None else ours_summary["share_of_matmul_peak"] >= share_target,
        "loss_after_copying_weights": same_loss,
        "compiled": args.compile,
        "shape": info["shape"],
        "targets_per_batch": masked,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def child_argv(kind: str, side: str, args) -> list[str]:
    """This script measuring one side alone (for its peak memory): the same shapes, dtype and compile setting."""
    argv = [__file__, "--which", kind, "--side", side, "--batch-size", str(args.batch_size), "--seq-len",
            str(args.seq_len), "--dtype", args.dtype, "--pool", str(args.pool), "--seed", str(args.seed),
            "--warmup", str(args.warmup), "--steps", str(args.steps)]
    return argv + (["--threads", str(args.threads)] if args.threads else []) + (["--compile"] if args.compile else [])


def run_one_side(kind: str, args) -> None:
    built, _, _ = runners(kind, args, sides=(args.side,))
    built[args.side].run(args.warmup + args.steps)
    print(own_peak_rss_mb())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--which", choices=[*KINDS, "both", "all"], default="both",
                   help="both = mlm and clm; all = the four kinds")
    p.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=8, help="alternating rounds (ours, HF) per objective")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model before the rounds")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile ours (train.compile=true)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default")
    p.add_argument("--pool", type=int, default=8, help="distinct real batches, cycled through by both models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory children")
    p.add_argument("--side", choices=["ours", "hf"], help=argparse.SUPPRESS)  # a peak-memory child
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    kinds = {"both": ["mlm", "clm"], "all": list(KINDS)}.get(args.which, [args.which])
    if args.side:
        run_one_side(kinds[0], args)
        return 0
    result = {
        "benchmark": "train_step_throughput (forward + backward + AdamW step)",
        "batch_size": args.batch_size, "seq_len": args.seq_len, "tokens_per_step": args.batch_size * args.seq_len,
        "dtype": args.dtype, "compile": args.compile, "steps": args.steps, "rounds": args.rounds,
        "warmup": args.warmup, "transformers": transformers.__version__, **machine(), "device": "cpu",
        "method": "alternating rounds in one process (ours, HF, HF, ours, ...); tokens_per_s = median over rounds; "
                  "ratio_ours_over_hf = median of the per-round ratios; peak_rss_mb: each side alone in a child",
    }
    for kind in kinds:
        result[kind] = bench(kind, args)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["summary"] = {kind: {"ours_tokens_per_s": result[kind]["ours"]["tokens_per_s"],
                                "hf_tokens_per_s": result[kind]["hf"]["tokens_per_s"],
                                "ratio_ours_over_hf": result[kind]["ratio_ours_over_hf"],
                                "target": result[kind]["target"], "meets_target": result[kind]["meets_target"],
                                "share_of_matmul_peak": result[kind]["ours"]["share_of_matmul_peak"],
                                "share_target": result[kind]["share_target"],
                                "loss_rel_diff_same_weights": result[kind]["loss_after_copying_weights"]["rel_diff"],
                                "peak_rss_mb": {s: result[kind][s]["peak_rss_mb"] for s in ("ours", "hf")}}
                         for kind in kinds}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
