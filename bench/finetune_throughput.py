"""Fine-tuning throughput: `lmssl finetune`'s training steps against a plain transformers loop, on SST-2 and MRPC.

Both train the same shape (the checkpoint's: configs/mlm.yaml's mini BERT for the main job's runs/mlm) on the same
tokenized examples (our tokenizer, `finetune.max_length`), batch size, dropout 0.1, AdamW, linear warmup/decay
and gradient clipping at 1, in fp32 (or bf16 autocast, --dtype), train mode:
  ours  lmssl.downstream.finetune: the checkpoint's encoder + pooler + linear head (SequenceClassifier), the
        TorchEngine of `lmssl finetune` (finetune_engine), its epoch batches (EncodedSet.epoch_batches: with
        finetune.group_by_length, the default, batches of similar lengths; --no-group-by-length: random).
  HF    AutoModelForSequenceClassification (BertForSequenceClassification, attn_implementation="sdpa") of the
        same shape, random init (speed does not depend on the values), the examples shuffled every epoch and
        padded per batch to its longest by transformers' DataCollatorWithPadding, as the plain loop of HF's
        course and run_glue_no_trainer.py do; loss = model(**batch, labels=...).loss.
A step = forward + backward + clipping + AdamW + schedule. The two are timed alternately (ours, HF, HF, ours, ...)
for --rounds rounds of --steps steps each after a warm-up; examples/s are medians over rounds and the ratio is the
median of the per-round ratios. Padding share: padded positions / all positions over the timed batches. Each side's
peak resident memory is measured alone in a child process. Progress on stderr, one JSON object on stdout.

    python bench/finetune_throughput.py                       # runs/mlm, sst2 and mrpc, fp32
    python bench/finetune_throughput.py --checkpoint runs/mlm --tasks mrpc --rounds 8
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import log, machine, own_peak_rss_mb, peak_rss_mb  # noqa: E402

from lmssl.config import FinetuneConfig  # noqa: E402
from lmssl.data.paths import root_dir  # noqa: E402
from lmssl.downstream.finetune import (  # noqa: E402
    build_classifier,
    encode_task,
    finetune_engine,
    load_source,
    schedule,
)
from lmssl.downstream.tasks import glue_card, infer_labels  # noqa: E402
from lmssl.engine.rng import seed_everything  # noqa: E402

TARGET = 1.5  # ours / HF examples-per-second ratio the issue asks for


class Side:
    """One training loop: a step function over an endless stream of batches."""

    def __init__(self, name: str, step, batches, autocast):
        self.name, self.step_fn, self.batches, self.autocast = name, step, batches, autocast
        self.rates: list[float] = []
        self.positions = self.padding = 0

    def run(self, steps: int, record: bool = True) -> float:
        examples, start = 0, time.perf_counter()
        for _ in range(steps):
            batch, rows, padded = next(self.batches)
            with self.autocast():
                self.step_fn(batch)
            examples += rows
            if record:
                self.positions, self.padding = self.positions + padded[0], self.padding + padded[1]
        rate = examples / (time.perf_counter() - start)
        if record:
            self.rates.append(rate)
        return rate


def ours_side(source, card, fcfg, data, args, autocast) -> Side:
    seed_everything(args.seed)
    model = build_classifier(source, card, fcfg)
    engine = finetune_engine(model, fcfg, schedule(len(data.train), fcfg)[2], args.seed, torch.device("cpu"))
    rng = np.random.default_rng(args.seed)

    def stream():
        while True:
            for rows in data.train.epoch_batches(rng, fcfg.batch_size, fcfg.group_by_length):
                batch = data.train.batch(rows)
                mask = batch.spec.key_padding_mask
                yield batch, len(rows), (mask.numel(), int((~mask).sum()))

    # the engine autocasts itself (finetune.precision), as in `lmssl finetune`
    return Side("ours", lambda batch: engine.train_step([batch]), stream(), contextlib.nullcontext)


def hf_side(source, card, fcfg, data, args, autocast) -> Side:
    import transformers

    m = source.cfg.model
    config = transformers.BertConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads, intermediate_size=m.ffn_size, max_position_embeddings=m.max_positions,
        type_vocab_size=m.type_vocab_size, hidden_act="gelu", hidden_dropout_prob=fcfg.dropout,
        attention_probs_dropout_prob=fcfg.dropout, layer_norm_eps=m.norm_eps, num_labels=card.num_outputs,
        attn_implementation="sdpa")
    torch.manual_seed(args.seed)
    model = transformers.AutoModelForSequenceClassification.from_config(config).train()
    total = schedule(len(data.train), fcfg)[2]
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n or "embeddings" in n]
    decay = [p for p in model.parameters() if all(p is not q for q in no_decay)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": fcfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=fcfg.lr, eps=1e-6)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, round(fcfg.warmup_ratio * total), total)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=source.tokenizer.tokenizer, pad_token="[PAD]")
    collator = transformers.DataCollatorWithPadding(tokenizer)
    train = data.train
    examples = [{"input_ids": train.ids[i].tolist(), "token_type_ids": train.types[i].tolist(),
                 "labels": train.targets[i].item()} for i in range(len(train))]
    rng = np.random.default_rng(args.seed)

    def stream():
        while True:
            order = rng.permutation(len(examples))
            for start in range(0, len(order), fcfg.batch_size):
                rows = order[start:start + fcfg.batch_size]
                batch = collator([examples[i] for i in rows])
                mask = batch["attention_mask"]
                yield batch, len(rows), (mask.numel(), int((mask == 0).sum()))

    def step(batch):
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return Side("hf", step, stream(), autocast)


def task_setup(task: str, args):
    source = load_source(args.checkpoint)
    card = infer_labels(glue_card(task), root_dir(""))
    fcfg = FinetuneConfig(max_train_examples=args.max_train_examples, group_by_length=args.group_by_length,
                          precision=args.dtype)
    data = encode_task(source, card, fcfg)
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.dtype == "bf16"
                else contextlib.nullcontext)
    return source, card, fcfg, data, autocast


def bench(task: str, args) -> dict:
    t0 = time.perf_counter()
    source, card, fcfg, data, autocast = task_setup(task, args)
    sides = [ours_side(source, card, fcfg, data, args, autocast), hf_side(source, card, fcfg, data, args, autocast)]
    lengths = [len(x) for x in data.train.ids]
    log(f"[{task}] {len(data.train)} training examples, {statistics.mean(lengths):.1f} tokens on average "
        f"(max {max(lengths)}); setup {time.perf_counter() - t0:.1f}s")
    for side in sides:
        side.run(args.warmup, record=False)
    ratios = []
    for rnd in range(args.rounds):
        for side in (sides if rnd % 2 == 0 else sides[::-1]):
            side.run(args.steps)
        ratios.append(sides[0].rates[-1] / sides[1].rates[-1])
        log(f"[{task}] round {rnd + 1}/{args.rounds}: ours {sides[0].rates[-1]:.0f} ex/s, "
            f"HF {sides[1].rates[-1]:.0f} ex/s, ratio {ratios[-1]:.3f}")
    memory = {side.name: peak_rss_mb(child_argv(task, side.name, args)) for side in sides} if args.memory else {}
    ratio = statistics.median(ratios)
    return {
        "train_examples": len(data.train), "mean_tokens": round(statistics.mean(lengths), 1),
        "max_length": data.max_length,
        **{side.name: {"examples_per_s": round(statistics.median(side.rates), 1),
                       "examples_per_s_rounds": [round(x, 1) for x in side.rates],
                       "padding_share": round(side.padding / side.positions, 3),
                       "peak_rss_mb": memory.get(side.name)} for side in sides},
        "ratio_ours_over_hf": round(ratio, 3), "ratio_rounds": [round(x, 3) for x in ratios],
        "target": TARGET, "meets_target": ratio >= TARGET, "seconds": round(time.perf_counter() - t0, 1),
    }


def child_argv(task: str, side: str, args) -> list[str]:
    argv = [__file__, "--side", side, "--tasks", task, "--checkpoint", args.checkpoint, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--max-train-examples", str(args.max_train_examples), "--dtype", args.dtype,
            "--seed", str(args.seed)]
    return argv + ([] if args.group_by_length else ["--no-group-by-length"])


def run_one_side(args) -> None:
    source, card, fcfg, data, autocast = task_setup(args.tasks[0], args)
    build = ours_side if args.side == "ours" else hf_side
    build(source, card, fcfg, data, args, autocast).run(args.warmup + args.steps)
    print(own_peak_rss_mb())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "runs" / "mlm"),
                   help="a pretrained checkpoint or run directory (default: the main job's runs/mlm)")
    p.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"])
    p.add_argument("--max-train-examples", type=int, default=0, help="0 = the whole training file")
    p.add_argument("--steps", type=int, default=20, help="timed steps per side per round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                   help="ours in random batches (finetune.group_by_length=false)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory children")
    p.add_argument("--side", choices=["ours", "hf"], help=argparse.SUPPRESS)  # a peak-memory child
    args = p.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    if args.side:
        run_one_side(args)
        return 0
    result = {"benchmark": "fine-tuning steps: lmssl finetune vs a plain transformers loop",
              "checkpoint": args.checkpoint, "dtype": args.dtype, "batch_size": FinetuneConfig.batch_size,
              "group_by_length": args.group_by_length, "steps": args.steps, "rounds": args.rounds,
              "transformers": transformers.__version__, **machine()}
    for task in args.tasks:
        result[task] = bench(task, args)
    result["summary"] = {task: {k: result[task][k] for k in ("ratio_ours_over_hf", "target", "meets_target")}
                         | {"ours_examples_per_s": result[task]["ours"]["examples_per_s"],
                            "hf_examples_per_s": result[task]["hf"]["examples_per_s"],
                            "padding_share": {s: result[task][s]["padding_share"] for s in ("ours", "hf")},
                            "peak_rss_mb": {s: result[task][s]["peak_rss_mb"] for s in ("ours", "hf")}}
                         for task in args.tasks}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
