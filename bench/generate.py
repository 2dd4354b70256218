"""Generation throughput: `lmssl generate` with its key/value cache against recomputing the whole prefix for
every new token (`--no-cache`), greedy, the same model and prompt, timed alternately (cached, uncached, uncached,
cached, ...) so that the machine's load drifts hit both. The two must produce the same tokens (checked).

The model is a checkpoint (--checkpoint) or a random initialisation of configs/clm.yaml's shape with enough
learned positions for the prompt and the new tokens (its 128 would stop at 128). Progress on stderr, one JSON
object on stdout.

    python bench/generate.py                      # 256 new tokens after a 16-token prompt
    python bench/generate.py --checkpoint runs/clm --new-tokens 100
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmssl.checkpoint.model_dir import ModelDir
from lmssl.config import load_config
from lmssl.data.tokenizer import TextTokenizer, tokenizer_path
from lmssl.inference.generate import Sampling, generate
from lmssl.objectives import build_objective

PROMPT = "The game 's battle system , the BliTZ system , is carried over directly from Valkyria Chronicles"


def model(args):
    if args.checkpoint:
        source = ModelDir.open(args.checkpoint)
        tokenizer, objective = source.tokenizer, source.objective()
        return tokenizer, objective, "checkpoint " + args.checkpoint
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "clm.yaml")
    tokenizer = TextTokenizer.from_file(tokenizer_path(cfg.data.tokenizer))
    positions = args.prompt_tokens + args.new_tokens + 1
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size,
                                                             max_positions=max(positions, cfg.model.max_positions)))
    torch.manual_seed(0)
    return tokenizer, build_objective(cfg, tokenizer).eval(), "random init, configs/clm.yaml shape"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a causal checkpoint (default: random init of configs/clm.yaml's shape)")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-tokens", type=int, default=16, help="prompt length (cut from a WikiText sentence)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, objective, what = model(args)
    prompt = tokenizer.decode(tokenizer.encode_batch([PROMPT])[0][:args.prompt_tokens])
    sampling = Sampling(max_new_tokens=args.new_tokens, temperature=0, stop_at_eos=False)
    runs = {"cached": [], "uncached": []}
    texts = {}
    for r in range(args.rounds):
        for use_cache in ((True, False) if r % 2 == 0 else (False, True)):
            name = "cached" if use_cache else "uncached"
            start = time.perf_counter()
            sample = generate(objective, tokenizer, prompt, sampling, use_cache=use_cache)[0]
            runs[name].append(sample["tokens"] / (time.perf_counter() - start))
            texts[name] = sample["text"]
            print(f"round {r}: {name} {runs[name][-1]:.1f} tokens/s", file=sys.stderr)
    trunk = objective.language_model().trunk
    print(json.dumps({
        "benchmark": "generate: key/value cache vs recomputing the prefix (greedy)", "model": what,
        "shape": {k: getattr(trunk.cfg, k) for k in ("hidden_size", "num_layers", "num_heads", "vocab_size")},
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "rounds": args.rounds,
        "tokens_per_s": {k: round(statistics.median(v), 1) for k, v in runs.items()},
        "speedup": round(statistics.median(runs["cached"]) / statistics.median(runs["uncached"]), 2),
        "same_tokens": texts["cached"] == texts["uncached"], "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "load_average": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
