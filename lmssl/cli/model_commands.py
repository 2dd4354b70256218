"""Commands that use a trained model: evaluate it, continue or fill in text, fine-tune it, predict with it, convert
it. Every model path goes through lmssl.checkpoint.model_dir.ModelDir, opened once."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lmssl.cli.registry import (
    BATCH_TOKENS,
    CHECKPOINT,
    DEVICE,
    MAX_WORDS,
    OVERWRITE_DIR,
    TEXT_FIELD,
    TEXT_FILE,
    WINDOW,
    WORD_L2R,
    arg,
    command,
    non_negative,
    positive,
)
from lmssl.errors import ConfigError
from lmssl.storage.atomic import check_output_file


def scored_text(args, causal: bool, outputs: tuple[tuple[str, str | None], ...] = ()):
    """The model directory and the documents to score, after checking its objective scores them this way and that
    the `outputs` ((option, path or None), ...) are not the text file."""
    from lmssl.checkpoint.model_dir import ModelDir
    from lmssl.data.corpus import Corpus
    from lmssl.evaluation.likelihood import likelihood_kind
    from lmssl.evaluation.text import read_documents, resolve_text_file

    source = ModelDir.open(args.checkpoint)
    objective = source.objective(args.device)
    wanted, kind, cfg = ("ppl" if causal else "pppl"), likelihood_kind(objective), source.config
    if kind != wanted:
        raise ConfigError(f"{source.path}: `lmssl eval {wanted}` needs a {'causal' if causal else 'masked'} language "
                          f"model; this checkpoint's objective is '{cfg.objective.name}'"
                          + (f": use `lmssl eval {kind}`" if kind else
                             ", which declares none (Objective.language_model() is None)"))
    file = resolve_text_file(args.file, cfg)
    for option, out in outputs:
        if out:
            check_output_file(out, option, inputs=(file,))
    documents = read_documents(Corpus(str(file), text_field=args.text_field), args.max_words)
    head = {"checkpoint": str(source.path), "file": str(file), "max_words": args.max_words}
    return head, source, objective, documents


@command("eval ppl", "sliding-window perplexity of a causal checkpoint", CHECKPOINT, arg("file", help=TEXT_FILE),
         *WINDOW, MAX_WORDS, TEXT_FIELD, DEVICE,
         arg("--batch-size", type=positive, default=16, help="windows per forward pass"))
def eval_ppl(args) -> None:
    from lmssl.evaluation.perplexity import perplexity
    from lmssl.evaluation.text import default_window

    head, source, objective, documents = scored_text(args, causal=True)
    max_length, stride = default_window(source.config, "ppl", args.max_length, args.stride)
    result = perplexity(objective, source.tokenizer, documents, max_length=max_length, stride=stride,
                        batch_size=args.batch_size, progress=True)
    print(json.dumps({**head, "objective": source.config.objective.name, **result}))


@command("eval pppl", "exact pseudo-perplexity of a masked checkpoint (Salazar et al. 2020)", CHECKPOINT,
         arg("file", help=TEXT_FILE), *WINDOW, MAX_WORDS, TEXT_FIELD, DEVICE, WORD_L2R, BATCH_TOKENS,
         arg("--dtype", choices=["fp32", "bf16"], default="fp32",
             help="bf16: autocast (weights stay fp32), faster where bf16 matmuls are; the PLL moved by 6e-5 relative "
                  "on the main job's model (bench/pppl.py --dtype bf16 measures it)"),
         arg("--per-sentence", metavar="OUT.jsonl", help="also write one JSON line per scored document / sentence"))
def eval_pppl(args) -> None:
    from lmssl.evaluation.pseudo_perplexity import pseudo_perplexity
    from lmssl.evaluation.text import default_window
    from lmssl.storage.atomic import write_text

    if args.per_sentence:  # before the model loads; the text file is compared once it is found
        check_output_file(args.per_sentence, "--per-sentence", inputs=(args.file,))
    head, source, objective, documents = scored_text(args, causal=False,
                                                     outputs=(("--per-sentence", args.per_sentence),))
    max_length, stride = default_window(source.config, "pppl", args.max_length, args.stride)
    result, records = pseudo_perplexity(objective, source.tokenizer, documents, max_length=max_length, stride=stride,
                                        batch_tokens=args.batch_tokens, word_l2r=args.word_l2r, progress=True,
                                        dtype=args.dtype)
    if args.per_sentence:
        head["per_sentence"] = str(write_text(args.per_sentence, "".join(json.dumps(r) + "\n" for r in records)))
    print(json.dumps({**head, "objective": source.config.objective.name, **result}))


@command("eval compare", "PPL / pseudo-PPL of several checkpoints on one text: Markdown table + PNG",
         arg("checkpoints", nargs="+", help="checkpoint or run directories (causal and/or masked)"),
         arg("--data", required=True, help=TEXT_FILE),
         arg("--out", required=True, help="output directory for report.md, report.png, results.json"),
         MAX_WORDS, TEXT_FIELD, DEVICE,
         arg("--batch-size", type=positive, default=16, help="windows per forward pass (PPL)"),
         arg("--batch-tokens", type=positive, default=8192, help="token budget per batch (pseudo-PPL)"))
def eval_compare(args) -> None:
    from lmssl.evaluation.report import compare

    print(json.dumps(compare(args.checkpoints, args.data, Path(args.out), max_words=args.max_words,
                             text_field=args.text_field, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
                             device=args.device, progress=True)))


@command("eval pairs", "minimal pairs (BLiMP format): accuracy of preferring each good sentence", CHECKPOINT,
         arg("file", help="JSONL with sentence_good, sentence_bad, optional UID and field (BLiMP's format; "
                          "`lmssl pairs make` builds one from a corpus)"),
         arg("--word-l2r", action="store_true", help="masked models: PLL-word-l2r (Kauf & Ivanova 2023)"),
         arg("--batch-size", type=positive, default=16, help="windows per forward pass (causal)"),
         arg("--batch-tokens", type=positive, default=8192, help="token budget per batch (masked)"),
         arg("--per-pair", metavar="OUT.jsonl", help="also write each pair's two log-likelihoods"), DEVICE)
def eval_pairs(args) -> None:
    from lmssl.checkpoint.model_dir import ModelDir
    from lmssl.evaluation.minimal_pairs import pairs_table, read_pairs, score_pairs
    from lmssl.storage.atomic import write_text

    if args.per_pair:
        check_output_file(args.per_pair, "--per-pair", inputs=(args.file,))
    pairs = read_pairs(Path(args.file))  # before the weights load
    source = ModelDir.open(args.checkpoint)
    summary, records = score_pairs(source.objective(args.device), source.tokenizer, pairs, word_l2r=args.word_l2r,
                                   batch_size=args.batch_size, batch_tokens=args.batch_tokens)
    head = {"checkpoint": str(source.path), "file": args.file, "objective": source.config.objective.name}
    if args.per_pair:
        head["per_pair"] = str(write_text(args.per_pair, "".join(json.dumps(r) + "\n" for r in records)))
    print(pairs_table(summary), end="", file=sys.stderr)
    print(json.dumps({**head, **summary}))


STS_DEFAULT = ["stsb_dev", "stsb_test", "sts12", "sts13", "sts14", "sts15", "sts16", "sickr"]


@command("eval sts", "STS: Spearman x 100 of embedding cosines vs gold (SentEval/SimCSE protocol)", CHECKPOINT,
         arg("--pooling", choices=["auto", "cls", "mean"], default="auto",
             help="sentence vector: the encoder's [CLS] state (SimCSE's cls_before_pooler) or the mean over tokens; "
                  "auto = the checkpoint's own (SimCSE: its pooling; causal: mean; else cls)"),
         arg("--sets", nargs="+", default=STS_DEFAULT,
             help="STS sets to score (default: all; avg needs the 7 test sets)"),
         arg("--data-root", help="data root holding glue/STS-B and sts/ (default: $LMSSL_DATA)"),
         arg("--batch-size", type=positive, default=64, help="sentences per forward pass"), DEVICE)
def eval_sts(args) -> None:
    from lmssl.checkpoint.model_dir import ModelDir
    from lmssl.data.paths import data_root
    from lmssl.downstream.sts import AGGREGATION, STS_SETS, evaluate_sts

    unknown = [name for name in args.sets if name not in STS_SETS]
    if unknown:
        raise ConfigError(f"--sets: unknown STS set {unknown[0]!r}; choose from {', '.join(STS_SETS)}")
    source = ModelDir.open(args.checkpoint)
    objective = source.objective(args.device)
    root = Path(args.data_root) if args.data_root else data_root(source.config)
    pooling = objective.sentence_pooling() if args.pooling == "auto" else args.pooling
    scores = evaluate_sts(objective, source.tokenizer, root, tuple(args.sets), pooling=pooling,
                          batch_size=args.batch_size, progress=True)
    print(json.dumps({"checkpoint": str(source.path), "objective": source.config.objective.name, "pooling": pooling,
                      "aggregation": AGGREGATION, **{k: round(v, 2) for k, v in scores.items()}}))


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed


def prompts(args) -> list[str]:
    if args.unconditional:
        return [""]
    if args.prompt:
        return [args.prompt]
    lines = [] if sys.stdin is None or sys.stdin.isatty() else [line.rstrip("\n") for line in sys.stdin]
    found = [line for line in lines if line.strip()]
    if not found:
        raise ConfigError("PROMPT: no prompt; give one, pipe prompts on stdin (one per line), or pass "
                          "--unconditional to start from the end-of-text token alone")
    return found


@command("generate", "continue a prompt with a causal checkpoint (JSON line per sample)",
         arg("checkpoint", help="causal checkpoint, run directory (its latest checkpoint) or Hugging Face dir"),
         arg("prompt", nargs="?", help="text to continue (default: one prompt per line of stdin)"),
         arg("--max-new-tokens", type=positive, default=50, help="tokens to add"),
         arg("--temperature", type=float, default=1.0, help="divides the logits; 0 = greedy"),
         arg("--top-k", type=non_negative, default=0, help="sample among the k most likely (0 = all)"),
         arg("--top-p", type=float, default=1.0, help="nucleus sampling: probability mass kept"),
         arg("--seed", type=int, default=0, help="sampling seed: the same seed gives the same samples"),
         arg("--repetition-penalty", type=float, default=1.0,
             help="transformers' repetition_penalty: logits of tokens already in the context divided by it (multiplied "
                  "when negative); 1 = none, 1.2 a common choice"),
         arg("--stop", action="append", default=[], metavar="TEXT",
             help="stop a sample when its text contains TEXT, cut before it (repeat for several)"),
         arg("--num-samples", type=positive, default=1, help="samples per prompt"),
         arg("--unconditional", action="store_true", help="no prompt: start from the end-of-text token"),
         arg("--no-cache", action="store_true", help="recompute the whole prefix every token (for timing)"), DEVICE)
def generate(args) -> None:
    from lmssl.checkpoint.model_dir import ModelDir
    from lmssl.inference.generate import Sampling, generate

    if not 0.0 < args.top_p <= 1.0:
        raise ConfigError(f"--top-p: must be in (0, 1], got {args.top_p}")
    if not 0 <= args.temperature:  # NaN fails this too
        raise ConfigError(f"--temperature: must be >= 0 (0 = greedy), got {args.temperature}")
    if args.temperature == float("inf"):
        raise ConfigError("--temperature: must be finite (large values sample nearly uniformly), got inf")
    if args.repetition_penalty <= 0:
        raise ConfigError(f"--repetition-penalty: must be > 0 (1 = none), got {args.repetition_penalty}")
    if "" in args.stop:
        raise ConfigError("--stop: an empty stop string would stop every sample at once; give some text")
    texts = prompts(args)
    if not 0 <= args.seed or args.seed + len(texts) - 1 > SEED_MAX:  # prompt n samples with seed + n
        raise ConfigError(f"--seed: must be in [0, {SEED_MAX - len(texts) + 1}] (a 64-bit generator seed; prompt n "
                          f"uses seed + n), got {args.seed}")
    source = ModelDir.open(args.checkpoint)
    objective = source.objective(args.device)
    for n, prompt in enumerate(texts):  # prompt n samples with seed + n: the same draws never repeat across prompts
        sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed + n, repetition_penalty=args.repetition_penalty,
                            stop=tuple(args.stop))
        for i, sample in enumerate(generate(objective, source.tokenizer, prompt, sampling, args.num_samples,
                                            use_cache=not args.no_cache)):
            print(json.dumps({"prompt": prompt, "sample": i, **sample}), flush=True)


@command("fill-mask", "the likeliest tokens for each [MASK] of a text (masked checkpoints)",
         arg("checkpoint", help="masked checkpoint (MLM, ELECTRA: its generator), run or Hugging Face dir"),
         arg("text", help='text with one or more [MASK], e.g. "the capital of france is [MASK] ."'),
         arg("--top-k", type=positive, default=5, help="predictions per mask"), DEVICE)
def fill_mask(args) -> None:
    from lmssl.checkpoint.model_dir import ModelDir
    from lmssl.inference.fill_mask import fill_mask

    source = ModelDir.open(args.checkpoint)
    for result in fill_mask(source.objective(args.device), source.tokenizer, args.text, args.top_k):
        print(json.dumps({"text": args.text, **result}))


@command("finetune", "fine-tune (or linearly probe) a checkpoint on a GLUE task or a task card", CHECKPOINT,
         arg("task", help="a GLUE task (cola sst2 mrpc stsb qqp mnli qnli rte wnli), glue (every task under the data "
                          "root: a GLUE table), or the path of a task card (.yaml)"),
         arg("overrides", nargs="*", help="finetune.key=value, e.g. finetune.epochs=3 finetune.seeds=3 "
                                          "finetune.max_train_examples=8000 finetune.probe=true"),
         interrupted="interrupted; the same command again reuses the finished tasks and grid cells")
def finetune(args) -> None:
    from lmssl.downstream.finetune_command import finetune

    print(json.dumps(finetune(args.checkpoint, args.task, args.overrides)))


@command("predict", "labels / scores of a fine-tuned model for a CSV, TSV or JSONL file",
         arg("finetuned", help="a fine-tuned model directory (lmssl finetune's OUTPUT/best)"),
         arg("file", help="examples with the task card's text columns (with its label column too, they are scored)"),
         arg("--out", help="write the JSON lines here instead of stdout"),
         arg("--batch-size", type=positive, default=64, help="examples per forward pass"), DEVICE)
def predict(args) -> None:
    from lmssl.downstream.predict import predict
    from lmssl.storage.atomic import write_text

    if args.out:
        check_output_file(args.out, "--out", inputs=(args.file,))
    records, metrics = predict(args.finetuned, args.file, args.batch_size, args.device)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if metrics is not None:  # the file holds labels: how the predictions score (stdout keeps one record a line)
        print("metrics on the file's labels (x 100): " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()),
              file=sys.stderr)
    if args.out:
        write_text(args.out, lines)
        print(json.dumps({"predictions": str(args.out), "examples": len(records),
                          **({"metrics": metrics} if metrics is not None else {})}))
    else:
        sys.stdout.write(lines)


@command("export", "write a Hugging Face transformers model directory from a checkpoint", CHECKPOINT,
         arg("out_dir", help="output directory (config.json, model.safetensors, tokenizer files; ELECTRA: "
                             "discriminator/ and generator/)"), OVERWRITE_DIR)
def export(args) -> None:
    from lmssl.interop.hf.export import export

    print(json.dumps(export(args.checkpoint, args.out_dir, overwrite=args.overwrite)))


@command("import", "convert a Hugging Face BERT / GPT-2 / ELECTRA directory into an lmssl checkpoint",
         arg("hf_dir", help="transformers model directory (config.json, weights, tokenizer files)"),
         arg("out_dir", help="output checkpoint directory (model.safetensors, config.yaml, tokenizer.json)"),
         OVERWRITE_DIR)
def import_hf(args) -> None:
    from lmssl.interop.hf.importer import import_model
    from lmssl.interop.hf.source import is_hf_dir

    if not is_hf_dir(Path(args.hf_dir)):
        raise ConfigError(f"{args.hf_dir}: not a Hugging Face model directory (no config.json)")
    print(json.dumps(import_model(args.hf_dir, args.out_dir, overwrite=args.overwrite)))
