"""`lmssl` console script (also `python -m lmssl` and `python train.py`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lmssl.errors import ConfigError, RunError


def _train(args) -> int:
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


def _tokenizer_train(args) -> None:
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
    documents = read_documents(file, args.max_words, text_field=args.text_field)
    head = {"checkpoint": str(path), "file": str(file), "max_words": args.max_words}
    return head, cfg, tokenizer, objective, documents


def _eval_ppl(args) -> None:
    from lmssl.evaluation.perplexity import default_window, perplexity

    head, cfg, tokenizer, objective, documents = _eval_text(args, causal=True)
    max_length, stride = default_window(cfg, args.max_length, args.stride)
    result = perplexity(objective, tokenizer, documents, max_length=max_length, stride=stride,
                        batch_size=args.batch_size, progress=True)
    print(json.dumps({**head, "objective": cfg.objective.name, **result}))


def _eval_pppl(args) -> None:
    from lmssl.evaluation.pseudo_perplexity import default_window, pseudo_perplexity

    head, cfg, tokenizer, objective, documents = _eval_text(args, causal=False)
    max_length, stride = default_window(cfg, args.max_length, args.stride)
    result, records = pseudo_perplexity(objective, tokenizer, documents, max_length=max_length, stride=stride,
                                        batch_tokens=args.batch_tokens, word_l2r=args.word_l2r, progress=True)
    if args.per_sentence:
        from lmssl.atomic import write_text

        out = write_text(args.per_sentence, "".join(json.dumps(r) + "\n" for r in records))
        head["per_sentence"] = str(out)
    print(json.dumps({**head, "objective": cfg.objective.name, **result}))


def _eval_compare(args) -> None:
    from lmssl.evaluation.report import compare

    print(json.dumps(compare(args.checkpoints, args.data, Path(args.out), max_words=args.max_words,
                             text_field=args.text_field, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
                             device=args.device, progress=True)))


def _eval_sts(args) -> None:
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


def _export(args) -> None:
    from lmssl.interop.hf.export import export

    print(json.dumps(export(args.checkpoint, args.out_dir, overwrite=args.overwrite)))


def _import(args) -> None:
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


def _generate(args) -> None:
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


def _fill_mask(args) -> None:
    from lmssl.inference import fill_mask

    _, _, tokenizer, objective = _load(args.checkpoint, args.device)
    for result in fill_mask(objective, tokenizer, args.text, args.top_k):
        print(json.dumps({"text": args.text, **result}))


def _predict(args) -> None:
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


def _finetune(args) -> None:
    from lmssl.downstream.glue import finetune

    print(json.dumps(finetune(args.checkpoint, args.task, args.overrides)))


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
    p.set_defaults(func=_eval_ppl)

    p = ev.add_parser("pppl", help="exact pseudo-perplexity of a masked checkpoint (Salazar et al. 2020)")
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument("file", help=text_help)
    common(p)
    p.add_argument("--word-l2r", action="store_true",
                   help="also mask the rest of the token's word to its right (PLL-word-l2r, Kauf & Ivanova 2023)")
    p.add_argument("--batch-tokens", type=_positive, default=8192, help="token budget of a batch of masked copies")
    p.add_argument("--per-sentence", metavar="OUT.jsonl",
                   help="also write one JSON line per scored document / sentence")
    p.set_defaults(func=_eval_pppl)

    p = ev.add_parser("compare", help="PPL / pseudo-PPL of several checkpoints on one text: Markdown table + PNG")
    p.add_argument("checkpoints", nargs="+", help="checkpoint or run directories (causal and/or masked)")
    p.add_argument("--data", required=True, help=text_help)
    p.add_argument("--out", required=True, help="output directory for report.md, report.png, results.json")
    common(p, windows=False)
    p.add_argument("--batch-size", type=_positive, default=16, help="windows per forward pass (PPL)")
    p.add_argument("--batch-tokens", type=_positive, default=8192, help="token budget per batch (pseudo-PPL)")
    p.set_defaults(func=_eval_compare)

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
    p.set_defaults(func=_eval_sts)


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


def _config_show(args) -> None:
    from lmssl.config.describe import describe
    from lmssl.resolve import load_run_config

    print(describe(load_run_config(args.config, args.overrides)), end="")


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
    p.set_defaults(func=_train)

    cfg = sub.add_parser("config", help="config tools").add_subparsers(dest="config_command", required=True)
    p = cfg.add_parser("show", help="print the config a run would use, every key with its comment")
    p.add_argument("config", help="YAML config, e.g. configs/mlm.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100")
    p.set_defaults(func=_config_show)

    tok = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="tokenizer_command", required=True)
    p = tok.add_parser("train", help="train a tokenizer into tokenizers/NAME/")
    p.add_argument("files", nargs="+", help="corpus files (text, .jsonl, .parquet)")
    p.add_argument("--type", choices=["wordpiece", "bpe", "unigram"], default="wordpiece",
                   help="WordPiece (BERT, lower-cased), byte-level BPE (GPT-2) or SentencePiece unigram")
    p.add_argument("--vocab-size", type=int, default=8192, help="tokens in the vocabulary, special ones included")
    p.add_argument("--name", help="directory name under tokenizers/ (or $LMSSL_TOKENIZERS)")
    p.add_argument("--out", help="output directory (instead of tokenizers/NAME)")
    p.add_argument("--format", choices=["auto", "text", "jsonl", "parquet"], default="auto",
                   help="corpus format; auto = from the file suffix")
    p.add_argument("--doc-split", choices=["auto", "blank_line", "line", "wikitext"], default="auto",
                   help="how plain text splits into documents; auto = detected")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl / .parquet")
    p.add_argument("--overwrite", action="store_true", help="replace an existing tokenizer there")
    p.set_defaults(func=_tokenizer_train)

    _add_eval_parsers(sub)

    p = sub.add_parser("export", help="write a Hugging Face transformers model directory from a checkpoint")
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument("out_dir", help="output directory (config.json, model.safetensors, tokenizer files; ELECTRA: "
                                   "discriminator/ and generator/)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    p.set_defaults(func=_export)

    p = sub.add_parser("import",
                       help="convert a Hugging Face BERT / GPT-2 / ELECTRA directory into an lmssl checkpoint")
    p.add_argument("hf_dir", help="transformers model directory (config.json, weights, tokenizer files)")
    p.add_argument("out_dir", help="output checkpoint directory (model.safetensors, config.yaml, tokenizer.json)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    p.set_defaults(func=_import)

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
    p.set_defaults(func=_generate)

    p = sub.add_parser("fill-mask", help="the likeliest tokens for each [MASK] of a text (masked checkpoints)")
    p.add_argument("checkpoint", help="masked checkpoint (MLM, ELECTRA: its generator), run or Hugging Face dir")
    p.add_argument("text", help='text with one or more [MASK], e.g. "the capital of france is [MASK] ."')
    p.add_argument("--top-k", type=_positive, default=5, help="predictions per mask")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.set_defaults(func=_fill_mask)

    p = sub.add_parser("predict", help="labels / scores of a fine-tuned model for a CSV, TSV or JSONL file")
    p.add_argument("finetuned", help="a fine-tuned model directory (lmssl finetune's OUTPUT/best)")
    p.add_argument("file", help="examples with the task card's text columns (a label column is not needed)")
    p.add_argument("--out", help="write the JSON lines here instead of stdout")
    p.add_argument("--batch-size", type=_positive, default=64, help="examples per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("finetune", help="fine-tune (or linearly probe) a checkpoint on a GLUE task or a task card")
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument("task", help="a GLUE task (cola sst2 mrpc stsb qqp mnli qnli rte wnli), glue (every task under "
                                "the data root: a GLUE table), or the path of a task card (.yaml)")
    p.add_argument("overrides", nargs="*", help="finetune.key=value, e.g. finetune.epochs=3 finetune.seeds=3 "
                                                "finetune.max_train_examples=8000 finetune.probe=true")
    p.set_defaults(func=_finetune)
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
        return 130
