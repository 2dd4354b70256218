"""`lmssl` console script (also `python -m lmssl` and `python train.py`)."""
from __future__ import annotations

import argparse
import sys

from lmssl import commands
from lmssl.errors import ConfigError, RunError


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_eval_parsers(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate checkpoints (likelihood, STS)").add_subparsers(dest="eval_command",
                                                                                           required=True)
    text_help = "text to score: a path, or relative to the data root ($LMSSL_DATA), e.g. wikitext-2/test.txt"

    def common(p, windows: bool = True):
        if windows:
            p.add_argument("--max-length", type=_non_negative, default=0,
                           help="tokens per window (default: the model's training sequence length)")
            p.add_argument("--stride", type=_non_negative, default=0,
                           help="tokens between window starts (default: half a window)")
        p.add_argument("--max-words", type=_non_negative, default=0,
                       help="score only the first N whitespace words of the text (0 = all)")
        p.add_argument("--text-field", default="text", help="field holding the text in .jsonl/.parquet files")
        p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")

    p = ev.add_parser("ppl", help="sliding-window perplexity of a causal checkpoint")
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument("file", help=text_help)
    common(p)
    p.add_argument("--batch-size", type=_positive, default=16, help="windows per forward pass")
    p.set_defaults(func=commands.eval_ppl)

    p = ev.add_parser("pppl", help="exact pseudo-perplexity of a masked checkpoint (Salazar et al. 2020)")
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument("file", help=text_help)
    common(p)
    p.add_argument("--word-l2r", action="store_true",
                   help="also mask the rest of the token's word to its right (PLL-word-l2r, Kauf & Ivanova 2023)")
    p.add_argument("--batch-tokens", type=_positive, default=8192, help="token budget of a batch of masked copies")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast (weights stay fp32), faster where bf16 matmuls are; the PLL moved by 6e-5 "
                        "relative on the main job's model (bench/pppl.py --dtype bf16 measures it)")
    p.add_argument("--per-sentence", metavar="OUT.jsonl",
                   help="also write one JSON line per scored document / sentence")
    p.set_defaults(func=commands.eval_pppl)

    p = ev.add_parser("compare", help="PPL / pseudo-PPL of several checkpoints on one text: Markdown table + PNG")
    p.add_argument("checkpoints", nargs="+", help="checkpoint or run directories (causal and/or masked)")
    p.add_argument("--data", required=True, help=text_help)
    p.add_argument("--out", required=True, help="output directory for report.md, report.png, results.json")
    common(p, windows=False)
    p.add_argument("--batch-size", type=_positive, default=16, help="windows per forward pass (PPL)")
    p.add_argument("--batch-tokens", type=_positive, default=8192, help="token budget per batch (pseudo-PPL)")
    p.set_defaults(func=commands.eval_compare)

    p = ev.add_parser("pairs", help="minimal pairs (BLiMP format): accuracy of preferring each good sentence")
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument("file", help="JSONL with sentence_good, sentence_bad, optional UID and field (BLiMP's format; "
                                "`lmssl pairs make` builds one from a corpus)")
    p.add_argument("--word-l2r", action="store_true", help="masked models: PLL-word-l2r (Kauf & Ivanova 2023)")
    p.add_argument("--batch-size", type=_positive, default=16, help="windows per forward pass (causal)")
    p.add_argument("--batch-tokens", type=_positive, default=8192, help="token budget per batch (masked)")
    p.add_argument("--per-pair", metavar="OUT.jsonl", help="also write each pair's two log-likelihoods")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.set_defaults(func=commands.eval_pairs)

    p = ev.add_parser("sts", help="STS: Spearman x 100 of embedding cosines vs gold (SentEval/SimCSE protocol)")
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument("--pooling", choices=["auto", "cls", "mean"], default="auto",
                   help="sentence vector: the encoder's [CLS] state (SimCSE's cls_before_pooler) or the mean over "
                        "tokens; auto = the checkpoint's own (SimCSE: its pooling; causal: mean; else cls)")
    p.add_argument("--sets", nargs="+", default=["stsb_dev", "stsb_test", "sts12", "sts13", "sts14", "sts15", "sts16",
                                                 "sickr"],
                   help="STS sets to score (default: all; avg needs the 7 test sets)")
    p.add_argument("--data-root", help="data root holding glue/STS-B and sts/ (default: $LMSSL_DATA)")
    p.add_argument("--batch-size", type=_positive, default=64, help="sentences per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.set_defaults(func=commands.eval_sts)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help (flags and unset options excepted); epilogs kept as written."""

    def _get_help_string(self, action):
        if action.default in (None, False) or isinstance(action.default, list):
            return action.help
        return super()._get_help_string(action)


def _formatted(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every parser and subparser shows option defaults."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _formatted(child)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from lmssl import __version__
    from lmssl.config import Config
    from lmssl.config.describe import key_list

    parser = argparse.ArgumentParser(prog="lmssl", description="Pretrain and evaluate transformer language models.")
    parser.add_argument("--version", action="version", version=f"lmssl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="pretrain a model from a YAML config",
                       epilog="config keys (section.key, the default, what it does; a config file's values, its "
                              "preset and objective change the defaults: `lmssl config show CONFIG` prints them):\n"
                              + key_list(Config()))
    p.add_argument("config", help="YAML config, e.g. configs/mlm.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100")
    p.set_defaults(func=commands.train)

    cfg = sub.add_parser("config", help="config tools").add_subparsers(dest="config_command", required=True)
    p = cfg.add_parser("show", help="print the config a run would use, every key with its comment")
    p.add_argument("config", help="YAML config, e.g. configs/mlm.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100")
    p.set_defaults(func=commands.config_show)

    tok = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="tokenizer_command", required=True)
    p = tok.add_parser("train", help="train a tokenizer into tokenizers/NAME/")
    p.add_argument("files", nargs="+", help="corpus files (text, .jsonl, .csv, .tsv, .parquet, .arrow)")
    p.add_argument("--type", choices=["wordpiece", "bpe", "unigram"], default="wordpiece",
                   help="WordPiece (BERT, lower-cased), byte-level BPE (GPT-2) or SentencePiece unigram")
    p.add_argument("--vocab-size", type=int, default=8192, help="tokens in the vocabulary, special ones included")
    p.add_argument("--name", help="directory name under tokenizers/ (or $LMSSL_TOKENIZERS)")
    p.add_argument("--out", help="output directory (instead of tokenizers/NAME)")
    p.add_argument("--format", choices=["auto", "text", "jsonl", "csv", "tsv", "parquet", "arrow"], default="auto",
                   help="corpus format; auto = from the file suffix")
    p.add_argument("--doc-split", choices=["auto", "blank_line", "line", "wikitext"], default="auto",
                   help="how plain text splits into documents; auto = detected")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl / .parquet")
    p.add_argument("--overwrite", action="store_true", help="replace an existing tokenizer there")
    p.set_defaults(func=commands.tokenizer_train)

    _add_eval_parsers(sub)

    p = sub.add_parser("study", help="compare objectives or sizes at FLOP budgets: train, evaluate, report")
    p.add_argument("study", help="study file, e.g. configs/studies/objectives-cpu.yaml")
    p.add_argument("--print", action="store_true", dest="print_only",
                   help="print the training commands of the unfinished runs instead of running them")
    p.set_defaults(func=commands.study)

    pairs = sub.add_parser("pairs", help="minimal-pair sets").add_subparsers(dest="pairs_command", required=True)
    p = pairs.add_parser("make", help="minimal pairs from a held-out corpus's sentences (adjacent-word swaps, "
                                      "determiner-noun number flips, shuffled function words), BLiMP's JSONL format")
    p.add_argument("corpus", help="held-out text (not trained on): a path, or relative to the data root, e.g. "
                                  "wikitext-2/test.txt")
    p.add_argument("out", help="the JSONL file to write")
    p.add_argument("--per-type", type=_positive, default=500, help="pairs of each perturbation (UID)")
    p.add_argument("--seed", type=_non_negative, default=0, help="seeds the sentence order and the edits")
    p.add_argument("--min-words", type=_positive, default=5, help="shortest sentence used, in words")
    p.add_argument("--max-words", type=_positive, default=30, help="longest sentence used, in words")
    p.add_argument("--split", choices=["auto", "line", "wikitext"], default="auto",
                   help="one sentence per line, or WikiText paragraphs cut into sentences; auto = detected")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl / .parquet")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=commands.pairs_make)

    p = sub.add_parser("export", help="write a Hugging Face transformers model directory from a checkpoint")
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument("out_dir", help="output directory (config.json, model.safetensors, tokenizer files; ELECTRA: "
                                   "discriminator/ and generator/)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    p.set_defaults(func=commands.export)

    p = sub.add_parser("import",
                       help="convert a Hugging Face BERT / GPT-2 / ELECTRA directory into an lmssl checkpoint")
    p.add_argument("hf_dir", help="transformers model directory (config.json, weights, tokenizer files)")
    p.add_argument("out_dir", help="output checkpoint directory (model.safetensors, config.yaml, tokenizer.json)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    p.set_defaults(func=commands.import_hf)

    p = sub.add_parser("generate", help="continue a prompt with a causal checkpoint (JSON line per sample)")
    p.add_argument("checkpoint", help="causal checkpoint, run directory (its latest checkpoint) or Hugging Face dir")
    p.add_argument("prompt", nargs="?", help="text to continue (default: one prompt per line of stdin)")
    p.add_argument("--max-new-tokens", type=_positive, default=50, help="tokens to add")
    p.add_argument("--temperature", type=float, default=1.0, help="divides the logits; 0 = greedy")
    p.add_argument("--top-k", type=_non_negative, default=0, help="sample among the k most likely (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: probability mass kept")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed gives the same samples")
    p.add_argument("--num-samples", type=_positive, default=1, help="samples per prompt")
    p.add_argument("--unconditional", action="store_true", help="no prompt: start from the end-of-text token")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every token (for timing)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.set_defaults(func=commands.generate)

    p = sub.add_parser("fill-mask", help="the likeliest tokens for each [MASK] of a text (masked checkpoints)")
    p.add_argument("checkpoint", help="masked checkpoint (MLM, ELECTRA: its generator), run or Hugging Face dir")
    p.add_argument("text", help='text with one or more [MASK], e.g. "the capital of france is [MASK] ."')
    p.add_argument("--top-k", type=_positive, default=5, help="predictions per mask")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.set_defaults(func=commands.fill_mask)

    p = sub.add_parser("predict", help="labels / scores of a fine-tuned model for a CSV, TSV or JSONL file")
    p.add_argument("finetuned", help="a fine-tuned model directory (lmssl finetune's OUTPUT/best)")
    p.add_argument("file", help="examples with the task card's text columns (a label column is not needed)")
    p.add_argument("--out", help="write the JSON lines here instead of stdout")
    p.add_argument("--batch-size", type=_positive, default=64, help="examples per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.set_defaults(func=commands.predict)

    p = sub.add_parser("finetune", help="fine-tune (or linearly probe) a checkpoint on a GLUE task or a task card")
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument("task", help="a GLUE task (cola sst2 mrpc stsb qqp mnli qnli rte wnli), glue (every task under "
                                "the data root: a GLUE table), or the path of a task card (.yaml)")
    p.add_argument("overrides", nargs="*", help="finetune.key=value, e.g. finetune.epochs=3 finetune.seeds=3 "
                                                "finetune.max_train_examples=8000 finetune.probe=true")
    p.set_defaults(func=commands.finetune)
    return _formatted(parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "tokenizer" and not (args.name or args.out):
        parser.error("tokenizer train: give --name NAME (saved under tokenizers/) or --out DIR")
    try:
        return args.func(args) or 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "train":
            print("interrupted; resume with train.resume=true (the latest checkpoint is intact)", file=sys.stderr)
        elif args.command == "finetune":
            print("interrupted; the same command again reuses the finished tasks and grid cells", file=sys.stderr)
        elif args.command == "study":
            print("interrupted; the same command again reuses the finished runs and evaluations and resumes the "
                  "interrupted run from its latest checkpoint", file=sys.stderr)
        return 130
