"""The prepared GPU check: every step in its own process with its own time budget, in order; a step that fails or
runs out is recorded and the next one still runs. One JSON file (--out) says what each step found.

    python bench/gpu/check.py --out gpu_check.json             # on the GPU machine (bench/gpu/run.sh calls it)
    python bench/gpu/check.py --out dry.json --dry-run         # every step on CPU at tiny shapes, in about a minute

Steps: the environment (versions, GPU, the flash provider `auto` picks, DeepSpeed); the `gpu` tests (flash vs
SDPA in bf16, forward and backward); bench/mfu.py (GPT-2 124M at 1024, BERT-base MLM at 512, the Llama at
GPT-2 small's shape at 1024, ours vs transformers' SDPA); a DeepSpeed ZeRO-2 bf16 run of
configs/gpu/gpt2-124m-clm.yaml with the flash backend (loss falls, a checkpoint is written, a resume from it
continues); bench/pppl.py at the BERT-base shape in bf16 (ours vs
the mlm-scoring-style baseline); `lmssl finetune` on SST-2 (4,000 examples, one epoch, bf16) from a randomly
initialised BERT-base checkpoint (examples/s). The dry run keeps the steps' plumbing alive on CPU: the gpu tests
skip, the benchmarks run at tiny shapes, and the training step uses the torch engine (DeepSpeed's first start
compiles for minutes) with a tiny model and the shipped 8k tokenizer.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from lmssl.storage.atomic import write_text  # noqa: E402

# seconds: 8 minutes in all
BUDGETS = {"environment": 30, "gpu_tests": 80, "mfu": 150, "zero2": 120, "pppl": 40, "finetune": 60}

ENVIRONMENT = """
import json, torch
from lmssl.model.backends import build_attention_backend
found = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    found["gpu"] = torch.cuda.get_device_name()
    found["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
backend = build_attention_backend("auto", head_dim=64, attention_dropout=0.0)
found["auto_backend"] = getattr(backend, "provider", "") or "sdpa"
with_dropout = build_attention_backend("auto", head_dim=64, attention_dropout=0.1)
found["auto_backend_with_attention_dropout"] = getattr(with_dropout, "provider", "") or "sdpa"
try:
    import deepspeed
    found["deepspeed"] = deepspeed.__version__
except Exception as e:
    found["deepspeed"] = f"not importable: {type(e).__name__}: {e}"
print(json.dumps(found))
"""


def run(name: str, command: list[str], budget: float, env: dict) -> dict:
    """One step: its command under its budget; the last JSON object it prints, its exit code and time."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=budget)
        status, stdout, stderr = ("ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
                                  proc.stdout, proc.stderr)
    except subprocess.TimeoutExpired as e:
        status = f"ran out of its {budget:.0f} s"
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    result = {"status": status, "seconds": round(time.perf_counter() - start, 1)}
    parsed = last_json(stdout)
    if parsed is not None:
        result["result"] = parsed
    else:
        result["stdout_tail"] = stdout[-1000:]
    if status != "ok":
        result["stderr_tail"] = stderr[-2000:]
    print(f"{name}: {status} in {result['seconds']} s", file=sys.stderr)
    return result


def last_json(text: str):
    """The JSON document a command printed: the whole output, else its last line that parses."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def pytest_counts(result: dict, expect_runs: bool) -> dict:
    """The gpu tests' step with pytest's counts (passed, failed, skipped, ...) from its summary line."""
    counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", result.get("stdout_tail", ""))
    result["result"] = {word: int(n) for n, word in counts}
    if expect_runs and not result["result"].get("passed") and result["status"] == "ok":
        result["status"] = "nothing ran"
    return result


def zero2_commands(out: Path, dry: bool) -> list[list[str]]:
    """Train 30 steps (checkpoint at 20 and 30), then resume to 40 from the checkpoint."""
    lmssl = [sys.executable, "-m", "lmssl", "train", "configs/gpu/gpt2-124m-clm.yaml"]
    common = [f"train.output_dir={out}", "train.save_every=20", "train.log_every=1", "eval.every=0",
              "eval.max_batches=4", "eval.likelihood_max_words=0", "train.warmup_steps=5", "train.tensorboard=false"]
    if dry:
        common += ["train.engine=torch", "train.zero_stage=0", "train.precision=fp32", "model.attention_backend=sdpa",
                   "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.ffn_size=128",
                   "model.vocab_size=0", "data.tokenizer=wikitext2-bpe", "data.seq_len=64", "train.batch_size=4",
                   "train.grad_accum=1", "eval.batch_size=4", "train.lr=3e-3"]
    else:
        common += ["model.attention_backend=flash", "train.batch_size=8", "train.grad_accum=1", "eval.batch_size=8"]
    return [lmssl + common + ["train.max_steps=30"], lmssl + common + ["train.max_steps=40", "train.resume=true"]]


def zero2(out: Path, budget: float, env: dict, dry: bool) -> dict:
    first, again = zero2_commands(out, dry)
    result = run("zero2 (30 steps)", first, budget * 0.7, env)
    resumed = run("zero2 (resume to 40)", again, budget * 0.3, env)
    rows = []
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() else []
    early = [loss for step, loss in losses if step <= 5]
    late = [loss for step, loss in losses if step > 25]
    summary = {"first_run": result["status"], "resume": resumed["status"], "checkpoints": checkpoints,
               "losses": losses, "steps_after_resume": sorted({s for s, _ in losses if s > 30}),
               "loss_falls": bool(early and late and sum(late) / len(late) < sum(early) / len(early))}
    status = "ok" if result["status"] == resumed["status"] == "ok" and summary["loss_falls"] else "failed"
    stderr = {k: r["stderr_tail"] for k, r in (("first", result), ("resume", resumed)) if "stderr_tail" in r}
    return {"status": status, "seconds": round(result["seconds"] + resumed["seconds"], 1), "result": summary,
            **({"stderr_tail": stderr} if stderr else {})}


def pppl_command(dry: bool) -> list[str]:
    shape = ["--vocab", "8192", "--rounds", "1", "--max-words", "30"] if dry else \
        ["--shape", "bert-base", "--vocab", "30522", "--device", "cuda", "--dtype", "bf16", "--rounds", "2"]
    return [sys.executable, "bench/pppl.py", *shape]


# a randomly initialised BERT-base (MLM + NSP) checkpoint for the fine-tuning step: its tokenizer is trained on
# WikiText-2 the first time (configs/gpu/bert-base-mlm.yaml)
MAKE_CHECKPOINT = """
import sys
from pathlib import Path
from lmssl.checkpoint.format import write_model_files
from lmssl.config import load_config
from lmssl.data import load_tokenizer
from lmssl.objectives import build_objective
from lmssl.training.prepare import with_vocab
config, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
cfg = load_config(config, overrides)
tokenizer = load_tokenizer(cfg)
cfg = with_vocab(cfg, tokenizer.vocab_size)
out.mkdir(parents=True)
write_model_files(out, build_objective(cfg, tokenizer), cfg, tokenizer)
"""


def finetune(work: Path, budget: float, env: dict, dry: bool) -> dict:
    ckpt = work / "bert"
    shape = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.ffn_size=128",
             "model.vocab_size=0", "data.tokenizer=wikitext2-wordpiece", "data.seq_len=128"] if dry else []
    made = run("finetune (checkpoint)", [sys.executable, "-c", MAKE_CHECKPOINT, "configs/gpu/bert-base-mlm.yaml",
                                         str(ckpt), *shape], budget * 0.4, env)
    if made["status"] != "ok":
        return made
    options = ["finetune.max_train_examples=64", "finetune.device=cpu"] if dry else \
        ["finetune.max_train_examples=4000", "finetune.device=cuda", "finetune.precision=bf16"]
    command = [sys.executable, "-m", "lmssl", "finetune", str(ckpt), "sst2", "finetune.epochs=1",
               f"finetune.output_dir={work / 'sst2'}", *options]
    result = run("finetune", command, budget * 0.6, env)
    written = work / "sst2" / "results.json"
    found = json.loads(written.read_text()) if written.is_file() else {}
    result["result"] = {k: found.get(k) for k in ("train_examples_per_s", "train_examples", "max_length", "metrics",
                                                  "elapsed_s")}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--dry-run", action="store_true", help="every step on CPU at tiny shapes (CI)")
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    report = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "budgets_s": BUDGETS,
              "steps": {}}
    steps = report["steps"]
    steps["environment"] = run("environment", [sys.executable, "-c", ENVIRONMENT], BUDGETS["environment"], env)
    tests = run("gpu_tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                              "tests/model/test_flash.py"], BUDGETS["gpu_tests"], env)
    steps["gpu_tests"] = pytest_counts(tests, expect_runs=not args.dry_run)  # on CPU the gpu tests skip
    mfu = [sys.executable, "bench/mfu.py", "--which", "all"] + (["--small", "--device", "cpu"] if args.dry_run else [])
    steps["mfu"] = run("mfu", mfu, BUDGETS["mfu"], env)
    with tempfile.TemporaryDirectory() as tmp:
        steps["zero2"] = zero2(Path(tmp) / "gpt2", BUDGETS["zero2"], env, args.dry_run)
        steps["pppl"] = run("pppl", pppl_command(args.dry_run), BUDGETS["pppl"], env)
        steps["finetune"] = finetune(Path(tmp), BUDGETS["finetune"], env, args.dry_run)
    report["ok"] = all(s["status"] == "ok" for s in steps.values())
    write_text(Path(args.out), json.dumps(report, indent=1) + "\n")
    print(json.dumps({name: s["status"] for name, s in steps.items()}))


if __name__ == "__main__":
    main()
