"""`lmssl` console script (also `python -m lmssl` and `python train.py`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmssl.config import ConfigError


def _train(args) -> None:
    from lmssl.config import load_config
    from lmssl.train import train

    cfg = load_config(args.config, args.overrides)
    print(json.dumps(train(cfg)))


def _tokenizer_train(args) -> None:
    from lmssl.data.corpus import iter_documents
    from lmssl.data.tokenizer import save_tokenizer, tokenizers_root, train_tokenizer

    files = [Path(f) for f in args.files]
    for f in files:
        if not f.is_file():
            raise ConfigError(f"corpus file not found: {f}")
    out = Path(args.out) if args.out else tokenizers_root() / args.name

    def documents():
        for f in files:
            yield from iter_documents(f, args.format, args.doc_split, args.text_field)

    tok = train_tokenizer(args.type, documents(), args.vocab_size)
    recipe = {"type": args.type, "vocab_size": args.vocab_size, "corpus": [str(f) for f in files]}
    path = save_tokenizer(tok, out, recipe)
    print(json.dumps({"tokenizer": str(path), "type": args.type, "vocab_size": tok.vocab_size}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmssl", description="Pretrain and evaluate transformer language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="pretrain a model from a YAML config")
    p.add_argument("config", help="YAML config, e.g. configs/mlm.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100")
    p.set_defaults(func=_train)

    tok = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="tokenizer_command", required=True)
    p = tok.add_parser("train", help="train a tokenizer into tokenizers/NAME/")
    p.add_argument("files", nargs="+", help="corpus files (text, .jsonl, .parquet)")
    p.add_argument("--type", choices=["wordpiece", "bpe", "unigram"], default="wordpiece")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--name", help="directory name under tokenizers/")
    p.add_argument("--out", help="output directory (instead of tokenizers/NAME)")
    p.add_argument("--format", choices=["auto", "text", "jsonl", "parquet"], default="auto")
    p.add_argument("--doc-split", choices=["auto", "blank_line", "line", "wikitext"], default="auto")
    p.add_argument("--text-field", default="text")
    p.set_defaults(func=_tokenizer_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "tokenizer" and not (args.name or args.out):
        parser.error("tokenizer train: give --name NAME (saved under tokenizers/) or --out DIR")
    try:
        args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with train.resume=true (the latest checkpoint is intact)", file=sys.stderr)
        return 130
    return 0
