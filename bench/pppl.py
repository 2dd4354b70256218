"""Pseudo-perplexity throughput: our exact pseudo-PPL against an mlm-scoring-style baseline.

Both score the same text with the same weights, the same windows, the same masked copies (one per
scored token) and the same batches (a token budget, longest windows first); they differ only in
what reaches the vocabulary:
  ours      lmssl.evaluation.pseudo_perplexity: the trunk's last block and the MLM head run on the
            masked position of each copy only (sparse prediction);
  baseline  what mlm-scoring / Hugging Face BertForMaskedLM do: the full trunk, then the MLM head on
            every position of every copy (B x T x V logits), then the masked position is picked.
Both run in inference mode, fp32 by default (--dtype bf16: autocast); their total PLLs agree to float
rounding in fp32 (reported).

What bounds the ratio: exact PLL needs one forward pass per scored token, and every block but the
last must run on every position of every copy (a copy differs from its window in one input row,
but after the first attention every row differs). Sparse prediction removes the vocabulary
projection of all other positions and most of the last block, so the ratio is about
(trunk + head on every position) / (trunk - most of the last block + head on one row):
`macs_per_copy` reports it, and the floor of any exact method (first block's q/k/v shared across
copies, last block reduced to k/v). With the mini BERT's shape (4 x 256, FFN 1024, windows of 128)
that is ~2x at vocabulary 8192 (floor 2.3x) and ~3.9x at 30522 (floor 4.5x): the speed-up grows
with vocabulary / width, as the head's share of the baseline does.

The model is a checkpoint (--checkpoint) or a random initialisation of configs/mlm.yaml's shape
with the vocabulary size(s) of --vocab (the wordpiece tokenizer's 8192 ids are used; a larger
vocabulary only widens the output layer, as BERT's 30522 would). Timing alternates ours and the
baseline (ours, baseline, baseline, ours, ...) for --rounds rounds, each scoring the whole text, so
the machine's load drifts hit both; tokens/s are medians over rounds and the ratio is the median of
the per-round ratios. Progress on stderr, one JSON object on stdout.

    python bench/pppl.py                                  # random init, vocab 8192 and 30522
    python bench/pppl.py --checkpoint runs/mlm            # a trained mini BERT (its own vocabulary)
    python bench/pppl.py --shape bert-base --vocab 30522 --device cuda --dtype bf16   # BERT-base on a GPU
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmssl.config import load_config  # noqa: E402
from lmssl.data.corpus import Corpus  # noqa: E402
from lmssl.data.tokenizer import TextTokenizer, tokenizer_path  # noqa: E402
from lmssl.evaluation.pseudo_perplexity import (  # noqa: E402
    MaskingTokens,
    copy_batches,
    masked_lm_modules,
    masked_log_likelihood,
    plan_windows,
    sparse_predictor,
)
from lmssl.evaluation.text import read_documents, resolve_text_file  # noqa: E402
from lmssl.objectives import build_objective  # noqa: E402
from lmssl.pretrained import load_pretrained  # noqa: E402

SHAPES = {"mini": {},  # configs/mlm.yaml's
          "bert-base": dict(hidden_size=768, num_layers=12, num_heads=12, ffn_size=3072, max_positions=512)}


def full_vocabulary_predictor(trunk, head):
    """mlm-scoring style: logits for every position of every copy, then the masked one is picked."""
    return lambda ids, spec, where: head(trunk(ids, spec))[where]


def build_model(args, vocab: int):
    if args.checkpoint:
        cfg, tokenizer, objective = load_pretrained(Path(args.checkpoint))
        return cfg, tokenizer, objective
    cfg = load_config(REPO / "configs" / "mlm.yaml")
    tokenizer = TextTokenizer.from_file(tokenizer_path(cfg.data.tokenizer))
    shape = SHAPES[args.shape]
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=max(vocab, tokenizer.vocab_size),
                                                             **shape))
    torch.manual_seed(0)
    return cfg, tokenizer, build_objective(cfg, tokenizer).eval()


def flops_per_copy(cfg, width: int) -> dict:
    """Multiply-accumulates of one masked copy of `width` tokens (matmuls only): what each method computes, and
    the floor of any exact method. A copy differs from its window in one input row, so only the first block's
    q/k/v projections could be shared across the copies of a window; from the first attention on, every
    position of every copy differs, so all blocks but the last must run in full per copy; the last needs k/v
    of every position, everything else at the masked row only; the head runs on that row."""
    m = cfg.model
    H, F, V, L, heads = m.hidden_size, m.ffn_size, m.vocab_size, m.num_layers, m.num_heads
    attention = 2 * width * width * H  # scores and weighted values, all queries
    block = width * (4 * H * H + 2 * H * F) + attention  # qkv + out projections, feed-forward, attention
    row = H * H + 2 * H * F  # output projection + feed-forward of one row
    head_row = H * H + H * V  # MLM head of one row
    baseline = L * block + width * head_row
    ours = (L - 1) * block + width * 3 * H * H + attention + row + head_row  # forward_at: last block sparse
    first_shared = attention + width * 2 * H * F + width * heads * H  # q/k/v shared, out-projection as a rank-1 update
    floor = first_shared + (L - 2) * block + width * 2 * H * H + 2 * width * H + H * H + row + head_row
    return {"baseline": baseline, "ours": ours, "ratio": round(baseline / ours, 3),
            "exact_floor": floor, "ratio_at_exact_floor": round(baseline / floor, 3)}


def bench(args, vocab: int, documents: list[str]) -> dict:
    cfg, tokenizer, objective = build_model(args, vocab)
    device = torch.device(args.device)
    objective.to(device)
    trunk, head = masked_lm_modules(objective)
    tokens = MaskingTokens.of(tokenizer)
    docs = tokenizer.encode_batch(documents)
    windows = plan_windows(docs, tokens, args.max_length, args.stride)
    copies = sum(len(w.positions) for w in windows)
    methods = {"ours": sparse_predictor(trunk, head), "baseline": full_vocabulary_predictor(trunk, head)}

    def run(name):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            totals, counts = masked_log_likelihood(methods[name], windows, len(docs), tokens, args.batch_tokens,
                                                   device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, float(totals.sum()), int(counts.sum())

    times = {"ours": [], "baseline": []}
    plls = {}
    for name in methods:  # warm-up (allocator, kernels)
        run(name)
    for r in range(args.rounds):
        order = ["ours", "baseline"] if r % 2 == 0 else ["baseline", "ours"]
        for name in order:
            seconds, pll, scored = run(name)
            times[name].append(seconds)
            plls[name] = pll
            print(f"vocab {cfg.model.vocab_size} round {r + 1}/{args.rounds} {name}: {scored / seconds:.0f} tokens/s",
                  file=sys.stderr)
    ratios = [b / o for o, b in zip(times["ours"], times["baseline"])]
    diff = abs(plls["ours"] - plls["baseline"])
    m = cfg.model
    return {
        "model": {"vocab_size": m.vocab_size, "hidden_size": m.hidden_size, "num_layers": m.num_layers,
                  "ffn_size": m.ffn_size, "parameters": sum(p.numel() for p in objective.parameters()),
                  "weights": args.checkpoint or f"random init ({args.shape} shape, seed 0)"},
        "scored_tokens": scored, "copies": copies, "windows": len(windows),
        "batches": len(copy_batches(windows, args.batch_tokens)),
        "ours": {"tokens_per_s": round(scored / statistics.median(times["ours"]), 1), "pll": plls["ours"],
                 "pppl": math.exp(-plls["ours"] / scored)},
        "baseline": {"tokens_per_s": round(scored / statistics.median(times["baseline"]), 1), "pll": plls["baseline"],
                     "pppl": math.exp(-plls["baseline"] / scored)},
        "ratio_ours_over_baseline": round(statistics.median(ratios), 3),
        "ratio_per_round": [round(x, 3) for x in ratios],
        "pll_max_abs_diff": diff, "pll_rel_diff": diff / abs(plls["baseline"]),
        "equal_to_1e-4": diff / abs(plls["baseline"]) <= 1e-4,
        "macs_per_copy": flops_per_copy(cfg, args.max_length),
        "target": 4.0, "meets_target": statistics.median(ratios) >= 4.0,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="an MLM checkpoint (or run directory); default: random init")
    p.add_argument("--vocab", type=int, nargs="+", default=[8192, 30522],
                   help="vocabulary sizes for the random init (ignored with --checkpoint)")
    p.add_argument("--data", default="wikitext-2/test.txt", help="text to score (path, or relative to the data root)")
    p.add_argument("--max-words", type=int, default=300, help="score the first N words of --data")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--stride", type=int, default=63)
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--shape", choices=list(SHAPES), default="mini", help="random init: configs/mlm.yaml or BERT-base")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast, fp32 weights")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(REPO / "configs" / "mlm.yaml")
    path = resolve_text_file(args.data, cfg)
    documents = read_documents(Corpus(str(path)), args.max_words)
    vocabs = [0] if args.checkpoint else args.vocab
    result = {
        "benchmark": "pseudo-perplexity throughput: exact sparse prediction vs full-vocabulary (mlm-scoring style)",
        "text": {"file": str(path), "words": args.max_words, "documents": len(documents)},
        "max_length": args.max_length, "stride": args.stride, "batch_tokens": args.batch_tokens, "rounds": args.rounds,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "device": args.device, "dtype": args.dtype, "shape": args.shape,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "runs": [bench(args, v, documents) for v in vocabs],
    }
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["summary"] = [{"vocab_size": r["model"]["vocab_size"], "ours_tokens_per_s": r["ours"]["tokens_per_s"],
                          "baseline_tokens_per_s": r["baseline"]["tokens_per_s"],
                          "ratio_ours_over_baseline": r["ratio_ours_over_baseline"],
                          "pll_max_abs_diff": r["pll_max_abs_diff"], "meets_target": r["meets_target"]}
                         for r in result["runs"]]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
