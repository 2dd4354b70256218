"""`lmssl` console script (also `python -m lmssl` and `python train.py`): the parser is built from the commands'
declarations (lmssl.cli.registry; the handlers in run_commands and model_commands)."""
from __future__ import annotations

import argparse
import sys

from lmssl.cli import model_commands, run_commands  # noqa: F401  (their @command declarations fill COMMANDS)
from lmssl.cli.registry import COMMANDS, GROUPS, Command
from lmssl.errors import ConfigError, RunError

ORDER = ("train", "config", "tokenizer", "study", "pairs", "eval", "generate", "fill-mask", "finetune", "predict",
         "export", "import")  # of `lmssl --help`: making things, then using a trained model


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help (flags and unset options excepted); epilogs kept as written."""

    def _get_help_string(self, action):
        if action.default in (None, False) or isinstance(action.default, list):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from lmssl import __version__

    parser = argparse.ArgumentParser(prog="lmssl", description="Pretrain and evaluate transformer language models.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"lmssl {__version__}")
    top = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for c in sorted(COMMANDS, key=lambda c: ORDER.index(c.words[0])):
        sub = top
        if len(c.words) == 2:  # `lmssl eval ppl`: the group's parser once, its subcommand here
            if c.words[0] not in groups:
                group = top.add_parser(c.words[0], help=GROUPS[c.words[0]], formatter_class=HelpFormatter)
                groups[c.words[0]] = group.add_subparsers(dest=f"{c.words[0]}_command", required=True)
            sub = groups[c.words[0]]
        p = sub.add_parser(c.words[-1], help=c.help, epilog=c.epilog() if c.epilog else None,
                           formatter_class=HelpFormatter)
        for a in c.args:
            a.add_to(p)
        p.set_defaults(command_spec=c)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec: Command = args.command_spec
    try:
        return spec.handler(args) or 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        line = spec.interrupted(args) if callable(spec.interrupted) else spec.interrupted
        if line:
            print(line, file=sys.stderr)
        return 130
