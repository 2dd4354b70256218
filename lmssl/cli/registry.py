"""The command line as data: each command is declared once, where its handler is written (`@command(...)`), with
its arguments; options several commands share are declared once here. lmssl.cli builds the parser from them."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Arg:
    """One argparse argument: its names and add_argument's keywords."""
    names: tuple[str, ...]
    options: dict

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.names, **self.options)


def arg(*names: str, **options) -> Arg:
    return Arg(names, options)


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]  # ("eval", "ppl") for `lmssl eval ppl`
    help: str
    args: tuple[Arg, ...]
    handler: Callable  # (argparse.Namespace) -> exit code or None (0)
    interrupted: str | Callable[[argparse.Namespace], str] = ""  # the line after Ctrl-C: how to go on
    epilog: Callable[[], str] | None = None  # built when the parser is (the train command lists every key)


COMMANDS: list[Command] = []
GROUPS = {"config": "config tools", "tokenizer": "tokenizer tools", "eval": "evaluate checkpoints (likelihood, STS)",
          "pairs": "minimal-pair sets"}


def command(words: str, help: str, *args: Arg, interrupted: str | Callable[[argparse.Namespace], str] = "",
            epilog: Callable[[], str] | None = None):
    """Declare the decorated function as the handler of `lmssl WORDS`."""
    def register(handler: Callable) -> Callable:
        COMMANDS.append(Command(tuple(words.split()), help, args, handler, interrupted, epilog))
        return handler
    return register


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


# options several commands share
DEVICE = arg("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
CHECKPOINT = arg("checkpoint", help="checkpoint directory, or a run directory (its latest checkpoint)")
TEXT_FILE = "text to score: a path, or relative to the data root ($LMSSL_DATA), e.g. wikitext-2/test.txt"
TEXT_FIELD = arg("--text-field", default="text", help="field holding the text in .jsonl/.parquet files")
MAX_WORDS = arg("--max-words", type=non_negative, default=0,
                help="score only the first N whitespace words of the text (0 = all)")
WINDOW = (arg("--max-length", type=non_negative, default=0,
              help="tokens per window (default: the model's training sequence length)"),
          arg("--stride", type=non_negative, default=0, help="tokens between window starts (default: half a window)"))
BATCH_TOKENS = arg("--batch-tokens", type=positive, default=8192, help="token budget of a batch of masked copies")
WORD_L2R = arg("--word-l2r", action="store_true",
               help="also mask the rest of the token's word to its right (PLL-word-l2r, Kauf & Ivanova 2023)")
CONFIG = (arg("config", help="YAML config, e.g. configs/mlm.yaml"),
          arg("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100"))
OVERWRITE_DIR = arg("--overwrite", action="store_true", help="replace out_dir if it exists")
