"""What each `lmssl` command does with its parsed arguments (lmssl.cli builds the parser and runs them)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from lmssl.errors import ConfigError


def train(args) -> int:
    import shlex
    import signal

    from lmssl.resolve import load_run_config
    from lmssl.train import train

    cfg = load_run_config(args.config, args.overrides)
    result = train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun / deepspeed every process trains; one reports
        print(json.dumps(result))
        if "stopped" in result:
            again = [a for a in args.overrides if not a.startswith("train.resume=")] + ["train.resume=true"]
            print(f"stopped by {signal.Signals(result['stopped']).name} at step {result['step']}; checkpoint "
                  f"{result['checkpoint']}; resume with: lmssl train {shlex.join([args.config, *again])}",
                  file=sys.stderr)
    return 128 + result["stopped"] if "stopped" in result else 0


def tokenizer_train(args) -> None:
    from lmssl.data.corpus import iter_documents
    from lmssl.data.tokenizer import save_tokenizer, tokenizers_root, train_tokenizer

    files = [Path(f) for f in args.files]
    for f in files:
        if not f.is_file():
            raise ConfigError(f"corpus file not found: {f}")
    if args.vocab_size < 100:
        raise ConfigError(f"--vocab-size: must be at least 100, got {args.vocab_size}")
    out = Path(args.out) if args.out else tokenizers_root() / args.name
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a directory")
    if (out / "tokenizer.json").exists() and not args.overwrite:
        raise ConfigError(f"{out / 'tokenizer.json'} exists; checkpoints trained with it would no longer match: "
                          f"choose another --name/--out, or pass --overwrite")

    def documents():
        for f in files:
            yield from iter_documents(f, args.format, args.doc_split, args.text_field)

    tok = train_tokenizer(args.type, documents(), args.vocab_size)
    recipe = {"type": args.type, "vocab_size": args.vocab_size, "corpus": [str(f) for f in files]}
    path = save_tokenizer(tok, out, recipe)
    print(json.dumps({"tokenizer": str(path), "type": args.type, "vocab_size": tok.vocab_size}))


def _load(value: str, device: str):
    """(model directory, config, tokenizer, objective in eval mode) of any path lmssl.pretrained reads."""
    from lmssl.pretrained import load_pretrained, locate, resolve_device

    path = locate(value)
    return (path, *load_pretrained(path, resolve_device(device)))


def _eval_text(args, causal: bool):
    """The checkpoint and the documents to score, after checking the checkpoint is of the right kind."""
    from lmssl.data.corpus import Corpus
    from lmssl.evaluation.likelihood import likelihood_kind
    from lmssl.evaluation.text import read_documents, resolve_text_file

    path, cfg, tokenizer, objective = _load(args.checkpoint, args.device)
    wanted, kind = ("ppl" if causal else "pppl"), likelihood_kind(objective)
    if kind != wanted:
        raise ConfigError(f"{path}: `lmssl eval {wanted}` needs a {'causal' if causal else 'masked'} language model; "
                          f"this checkpoint's objective is '{cfg.objective.name}'"
                          + (f": use `lmssl eval {kind}`" if kind else
                             ", which declares none (Objective.language_model() is None)"))
    file = resolve_text_file(args.file, cfg)
    documents = read_documents(Corpus(str(file), text_field=args.text_field), args.max_words)
    head = {"checkpoint": str(path), "file": str(file), "max_words": args.max_words}
    return head, cfg, tokenizer, objective, documents


def eval_ppl(args) -> None:
    from lmssl.evaluation.perplexity import default_window, perplexity

    head, cfg, tokenizer, objective, documents = _eval_text(args, causal=True)
    max_length, stride = default_window(cfg, args.max_length, args.stride)
    result = perplexity(objective, tokenizer, documents, max_length=max_length, stride=stride,
                        batch_size=args.batch_size, progress=True)
    print(json.dumps({**head, "objective": cfg.objective.name, **result}))


def eval_pppl(args) -> None:
    from lmssl.evaluation.pseudo_perplexity import default_window, pseudo_perplexity

    head, cfg, tokenizer, objective, documents = _eval_text(args, causal=False)
    max_length, stride = default_window(cfg, args.max_length, args.stride)
    result, records = pseudo_perplexity(objective, tokenizer, documents, max_length=max_length, stride=stride,
                                        batch_tokens=args.batch_tokens, word_l2r=args.word_l2r, progress=True,
                                        dtype=args.dtype)
    if args.per_sentence:
        from lmssl.atomic import write_text

        out = write_text(args.per_sentence, "".join(json.dumps(r) + "\n" for r in records))
        head["per_sentence"] = str(out)
    print(json.dumps({**head, "objective": cfg.objective.name, **result}))


def eval_pairs(args) -> None:
    from lmssl.atomic import write_text
    from lmssl.evaluation.minimal_pairs import pairs_table, read_pairs, score_pairs

    pairs = read_pairs(Path(args.file))  # before the weights load
    path, cfg, tokenizer, objective = _load(args.checkpoint, args.device)
    summary, records = score_pairs(objective, tokenizer, pairs, word_l2r=args.word_l2r, batch_size=args.batch_size,
                                   batch_tokens=args.batch_tokens)
    head = {"checkpoint": str(path), "file": args.file, "objective": cfg.objective.name}
    if args.per_pair:
        head["per_pair"] = str(write_text(args.per_pair, "".join(json.dumps(r) + "\n" for r in records)))
    print(pairs_table(summary), end="", file=sys.stderr)
    print(json.dumps({**head, **summary}))


def pairs_make(args) -> None:
    from collections import Counter

    from lmssl.config import Config
    from lmssl.data.corpus import Corpus
    from lmssl.data.minimal_pairs import write_pairs
    from lmssl.evaluation.text import resolve_text_file

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"OUT: {out} exists; pass --overwrite to replace it")
    if args.min_words > args.max_words:
        raise ConfigError(f"--min-words: {args.min_words} exceeds --max-words {args.max_words}")
    corpus = Corpus(str(resolve_text_file(args.corpus, Config())), text_field=args.text_field)
    records = write_pairs(corpus, out, args.per_type, args.seed, args.min_words, args.max_words, args.split)
    counts = Counter(r["UID"] for r in records)
    print(json.dumps({"out": str(out), "corpus": corpus.location, "pairs": len(records), "by_uid": counts,
                      "seed": args.seed}))


def study(args) -> None:
    from lmssl.config.study import load_study
    from lmssl.study.runner import run_study

    print(json.dumps(run_study(load_study(args.study), args.print_only)))


def eval_compare(args) -> None:
    from lmssl.evaluation.report import compare

    print(json.dumps(compare(args.checkpoints, args.data, Path(args.out), max_words=args.max_words,
                             text_field=args.text_field, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
                             device=args.device, progress=True)))


def eval_sts(args) -> None:
    from lmssl.data.paths import data_root
    from lmssl.downstream.sts import AGGREGATION, STS_SETS, evaluate_sts

    unknown = [name for name in args.sets if name not in STS_SETS]
    if unknown:
        raise ConfigError(f"--sets: unknown STS set {unknown[0]!r}; choose from {', '.join(STS_SETS)}")
    path, cfg, tokenizer, objective = _load(args.checkpoint, args.device)
    root = Path(args.data_root) if args.data_root else data_root(cfg)
    pooling = objective.sentence_pooling() if args.pooling == "auto" else args.pooling
    scores = evaluate_sts(objective, tokenizer, root, tuple(args.sets), pooling=pooling, batch_size=args.batch_size,
                          progress=True)
    print(json.dumps({"checkpoint": str(path), "objective": cfg.objective.name, "pooling": pooling,
                      "aggregation": AGGREGATION, **{k: round(v, 2) for k, v in scores.items()}}))


def export(args) -> None:
    from lmssl.interop.hf.export import export

    print(json.dumps(export(args.checkpoint, args.out_dir, overwrite=args.overwrite)))


def import_hf(args) -> None:
    from lmssl.interop.hf.importer import import_model
    from lmssl.interop.hf.source import is_hf_dir

    if not is_hf_dir(Path(args.hf_dir)):
        raise ConfigError(f"{args.hf_dir}: not a Hugging Face model directory (no config.json)")
    print(json.dumps(import_model(args.hf_dir, args.out_dir, overwrite=args.overwrite)))


def _prompts(args) -> list[str]:
    if args.unconditional:
        return [""]
    if args.prompt:
        return [args.prompt]
    lines = [] if sys.stdin is None or sys.stdin.isatty() else [line.rstrip("\n") for line in sys.stdin]
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise ConfigError("PROMPT: no prompt; give one, pipe prompts on stdin (one per line), or pass "
                          "--unconditional to start from the end-of-text token alone")
    return prompts


def generate(args) -> None:
    from lmssl.inference import Sampling, generate

    if not 0.0 < args.top_p <= 1.0:
        raise ConfigError(f"--top-p: must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        raise ConfigError(f"--temperature: must be >= 0 (0 = greedy), got {args.temperature}")
    prompts = _prompts(args)
    _, _, tokenizer, objective = _load(args.checkpoint, args.device)
    for n, prompt in enumerate(prompts):  # prompt n samples with seed + n: the same draws never repeat across prompts
        sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed + n)
        for i, sample in enumerate(generate(objective, tokenizer, prompt, sampling, args.num_samples,
                                            use_cache=not args.no_cache)):
            print(json.dumps({"prompt": prompt, "sample": i, **sample}), flush=True)


def fill_mask(args) -> None:
    from lmssl.inference import fill_mask

    _, _, tokenizer, objective = _load(args.checkpoint, args.device)
    for result in fill_mask(objective, tokenizer, args.text, args.top_k):
        print(json.dumps({"text": args.text, **result}))


def predict(args) -> None:
    from lmssl.downstream.predict import predict

    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--out: {args.out} is a directory; give a file for the predictions (.jsonl)")
    records = predict(args.finetuned, args.file, args.batch_size, args.device)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if args.out:
        from lmssl.atomic import write_text

        write_text(args.out, lines)
        print(json.dumps({"predictions": str(args.out), "examples": len(records)}))
    else:
        sys.stdout.write(lines)


def finetune(args) -> None:
    from lmssl.downstream.glue import finetune

    print(json.dumps(finetune(args.checkpoint, args.task, args.overrides)))


def config_show(args) -> None:
    from lmssl.config.describe import describe
    from lmssl.resolve import load_run_config

    print(describe(load_run_config(args.config, args.overrides)), end="")
