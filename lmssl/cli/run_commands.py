"""Commands that make things: pretraining runs, their configs, tokenizers, studies, minimal-pair sets."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lmssl.cli.registry import CONFIG, arg, command, non_negative, positive
from lmssl.errors import ConfigError


def train_keys() -> str:
    from lmssl.config import Config
    from lmssl.config.describe import key_list

    return ("config keys (section.key, the default, what it does; a config file's values, its preset and objective "
            "change the defaults: `lmssl config show CONFIG` prints them):\n" + key_list(Config()))


def train_interrupted(args) -> str:
    """The line after a Ctrl-C that reached the command: the training loop checkpoints on SIGINT itself, so this one
    came before it (tokenizing, building) or between; there is something to resume only if a checkpoint exists."""
    from lmssl.checkpoint.format import latest_checkpoint
    from lmssl.config import TrainConfig, read_config

    try:
        out = read_config(args.config, args.overrides).sections.get("train", {}).get("output_dir")
        checkpoint = latest_checkpoint(Path(str(out or TrainConfig.output_dir)))
    except (ConfigError, OSError):
        checkpoint = None
    if checkpoint is None:
        return "interrupted before the run wrote a checkpoint: there is nothing to resume; the same command starts it"
    return f"interrupted; resume with train.resume=true (the latest checkpoint, {checkpoint}, is intact)"


@command("train", "pretrain a model from a YAML config", *CONFIG, epilog=train_keys, interrupted=train_interrupted)
def train(args) -> int:
    import shlex
    import signal

    from lmssl import distributed
    from lmssl.config import read_config
    from lmssl.training.loop import train

    result = train(read_config(args.config, args.overrides))
    if distributed.info().is_main:  # under torchrun / deepspeed every process trains; one reports
        print(json.dumps(result))
        if "stopped" in result:
            again = [a for a in args.overrides if not a.startswith("train.resume=")] + ["train.resume=true"]
            print(f"stopped by {signal.Signals(result['stopped']).name} at step {result['step']}; checkpoint "
                  f"{result['checkpoint']}; resume with: lmssl train {shlex.join([args.config, *again])}",
                  file=sys.stderr)
    return 128 + result["stopped"] if "stopped" in result else 0


@command("config show", "print the config a run would use, every key with its comment", *CONFIG)
def config_show(args) -> None:
    from lmssl.config.describe import describe
    from lmssl.training.prepare import load_run_config

    print(describe(load_run_config(args.config, args.overrides)), end="")


@command("tokenizer train", "train a tokenizer into tokenizers/NAME/",
         arg("files", nargs="+", help="corpus files (text, .jsonl, .csv, .tsv, .parquet, .arrow)"),
         arg("--type", choices=["wordpiece", "bpe", "unigram"], default="wordpiece",
             help="WordPiece (BERT, lower-cased), byte-level BPE (GPT-2) or SentencePiece unigram"),
         arg("--vocab-size", type=int, default=8192, help="tokens in the vocabulary, special ones included"),
         arg("--name", help="directory name under tokenizers/ (or $LMSSL_TOKENIZERS)"),
         arg("--out", help="output directory (instead of tokenizers/NAME)"),
         arg("--format", choices=["auto", "text", "jsonl", "csv", "tsv", "parquet", "arrow"], default="auto",
             help="corpus format; auto = from the file suffix"),
         arg("--doc-split", choices=["auto", "blank_line", "line", "wikitext"], default="auto",
             help="how plain text splits into documents; auto = detected"),
         arg("--text-field", default="text", help="field holding the text in .jsonl / .parquet"),
         arg("--overwrite", action="store_true", help="replace an existing tokenizer there"))
def tokenizer_train(args) -> None:
    from lmssl.config.validate import PLAIN_NAME_RULE, is_plain_name
    from lmssl.data.corpus import iter_documents
    from lmssl.data.tokenizer import save_tokenizer, tokenizers_root, train_tokenizer

    if not (args.name or args.out):
        raise ConfigError("tokenizer train: give --name NAME (saved under tokenizers/) or --out DIR")
    files = [Path(f) for f in args.files]
    for f in files:
        if not f.is_file():
            raise ConfigError(f"corpus file not found: {f}")
    if args.vocab_size < 100:
        raise ConfigError(f"--vocab-size: must be at least 100, got {args.vocab_size}")
    if args.name and not args.out and not is_plain_name(args.name):
        raise ConfigError(f"--name: {args.name!r} is not {PLAIN_NAME_RULE}; give a path with --out instead")
    out = Path(args.out) if args.out else tokenizers_root() / args.name
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a directory")
    if (out / "tokenizer.json").exists() and not args.overwrite:
        raise ConfigError(f"{out / 'tokenizer.json'} exists; checkpoints trained with it would no longer match: "
                          f"choose another --name/--out, or pass --overwrite")
    documents = (doc for f in files for doc in iter_documents(f, args.format, args.doc_split, args.text_field))
    tok = train_tokenizer(args.type, documents, args.vocab_size)
    recipe = {"type": args.type, "vocab_size": args.vocab_size, "corpus": [str(f) for f in files]}
    path = save_tokenizer(tok, out, recipe)
    print(json.dumps({"tokenizer": str(path), "type": args.type, "vocab_size": tok.vocab_size}))


@command("study", "compare objectives or sizes at FLOP budgets: train, evaluate, report",
         arg("study", help="study file, e.g. configs/studies/objectives-cpu.yaml"),
         arg("--print", action="store_true", dest="print_only",
             help="print the training commands of the unfinished runs instead of running them"),
         interrupted="interrupted; the same command again reuses the finished runs and evaluations and resumes the "
                     "interrupted run from its latest checkpoint")
def study(args) -> None:
    from lmssl.config.study import load_study
    from lmssl.study.runner import run_study

    print(json.dumps(run_study(load_study(args.study), args.print_only)))


@command("pairs make", "minimal pairs from a held-out corpus's sentences (adjacent-word swaps, determiner-noun number "
                       "flips, shuffled function words), BLiMP's JSONL format",
         arg("corpus", help="held-out text (not trained on): a path, or relative to the data root, e.g. "
                            "wikitext-2/test.txt"),
         arg("out", help="the JSONL file to write"),
         arg("--per-type", type=positive, default=500, help="pairs of each perturbation (UID)"),
         arg("--seed", type=non_negative, default=0, help="seeds the sentence order and the edits"),
         arg("--min-words", type=positive, default=5, help="shortest sentence used, in words"),
         arg("--max-words", type=positive, default=30, help="longest sentence used, in words"),
         arg("--split", choices=["auto", "line", "wikitext", "prose"], default="auto",
             help="one sentence per line, WikiText paragraphs cut by WikiText's rule, or any text cut by a sentence "
                  "segmenter; auto = wikitext for WikiText, else prose"),
         arg("--text-field", default="text", help="field holding the text in .jsonl / .parquet"),
         arg("--overwrite", action="store_true", help="replace an existing OUT"))
def pairs_make(args) -> None:
    from collections import Counter

    from lmssl.config import Config
    from lmssl.data.corpus import Corpus
    from lmssl.data.minimal_pair_maker import write_pairs
    from lmssl.evaluation.text import resolve_text_file
    from lmssl.storage.atomic import check_output_file

    if args.min_words > args.max_words:
        raise ConfigError(f"--min-words: {args.min_words} exceeds --max-words {args.max_words}")
    source = resolve_text_file(args.corpus, Config())
    out = check_output_file(args.out, "OUT", inputs=(source,), overwrite=args.overwrite)
    corpus = Corpus(str(source), text_field=args.text_field)
    records, shortfall = write_pairs(corpus, out, args.per_type, args.seed, args.min_words, args.max_words,
                                     args.split)
    if shortfall:
        print(shortfall, file=sys.stderr)
    counts = Counter(r["UID"] for r in records)
    print(json.dumps({"out": str(out), "corpus": corpus.location, "pairs": len(records), "by_uid": counts,
                      "seed": args.seed}))
