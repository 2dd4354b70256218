"""Bad inputs to every command: each stops with one line on stderr (`error: ...`, the exact text below), exit code
2, no traceback, nothing on stdout, and nothing written or changed on disk (a listing and the SHA-256 of every file
of the case's workspace, the shared fixtures and tokenizers/ are the same before and after).

Paths in the table are str.format templates: {tmp} is the case's own workspace, {data} the data root, {repo} the
repository, {mlm} / {clm} / {simcse} tiny trained runs (their checkpoint: {mlm_ckpt} ...), {ft} a fine-tuned model
directory, {rope} a RoPE checkpoint, {hf} a Hugging Face export of {mlm_ckpt}. Commands run from the repository root,
so that configs/... paths stay relative."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers import DATA_ROOT, REPO_ROOT, open_model, tiny_config

from lmssl.checkpoint.format import save_finetuned, write_model_files
from lmssl.cli import main
from lmssl.config import config_from_dict
from lmssl.data.tokenizer import TextTokenizer
from lmssl.distributed import _free_port
from lmssl.interop.hf.export import export
from lmssl.model.classifier import SequenceClassifier
from lmssl.objectives import build_objective
from lmssl.training.loop import train

WORDPIECE = REPO_ROOT / "tokenizers" / "wikitext2-wordpiece" / "tokenizer.json"
BPE = REPO_ROOT / "tokenizers" / "wikitext2-bpe" / "tokenizer.json"
STEP = "checkpoints/step-0000002"  # the one checkpoint of every tiny run

# every key tests/conftest.py's tiny_config sets, and smaller: the fixtures are trained with exactly these, so a
# command line with them describes the same run (resume cases change one thing)
TINY = ("model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=64", "data.seq_len=32",
        "data.train=wikitext-2/valid.txt", "data.valid=wikitext-2/test.txt", "train.batch_size=8",
        "train.log_every=1", "train.tensorboard=false", "train.warmup_steps=1", "eval.max_batches=1",
        "train.max_steps=2", "train.save_every=2", "train.num_threads=1", "eval.likelihood_max_words=0")
SIMCSE = ("data.valid=", "model.init_from=", "objective.sts_eval=", "data.seq_len=32")


# --- the shared fixtures ---------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("one_thread")


def rope_checkpoint(directory: Path) -> None:
    """A tiny causal model with rotary positions (GPT-2 has learned ones: `lmssl export` cannot express it)."""
    tokenizer = TextTokenizer.from_file(BPE)
    cfg = config_from_dict({"model": {"preset": "gpt2", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                      "ffn_size": 64, "max_positions": 40, "position": "rope",
                                      "vocab_size": tokenizer.vocab_size},
                            "objective": {"name": "clm"}, "data": {"seq_len": 32, "tokenizer": str(BPE.parent)}})
    directory.mkdir()
    write_model_files(directory, build_objective(cfg, tokenizer), cfg, tokenizer)


def finetuned_model(directory: Path, checkpoint: Path, mean_pooling: bool = False) -> None:
    """A fine-tuned classifier directory (finetune.json) on the encoder of `checkpoint`, as `lmssl finetune` saves."""
    cfg, tokenizer, _ = open_model(checkpoint)
    torch.manual_seed(0)
    model = SequenceClassifier(cfg.model, False, 2, False, not mean_pooling, mean_pooling)
    card = {"name": "toy", "train": "train.csv", "dev": {"dev": "train.csv"}, "text_columns": ["text"],
            "label_column": "label", "labels": ["0", "1"]}
    info = {"card": card, "causal": False, "use_pooler": not mean_pooling, "mean_pooling": mean_pooling,
            "max_length": 32, "mode": "finetune", "checkpoint": str(checkpoint)}
    save_finetuned(directory, model, cfg, tokenizer, info)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, data_root) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-inputs")
    paths = {"root": root}
    for name, extra in (("mlm", ()), ("clm", ()), ("simcse", SIMCSE)):
        train(tiny_config(name, root / name, *TINY, *extra, f"train.output_dir={root / name}"))
        paths[name], paths[f"{name}_ckpt"] = root / name, root / name / STEP
    finetuned_model(root / "ft", paths["mlm_ckpt"])
    rope_checkpoint(root / "rope")
    export(paths["mlm_ckpt"], root / "hf")
    return {**paths, "ft": root / "ft", "rope": root / "rope", "hf": root / "hf"}


# --- the table -------------------------------------------------------------------------------------

Setup = Callable[[Path, dict], None]  # (the case's workspace, the format fields)


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expected: str  # the exact first line after "error: "
    setup: Setup | None = None
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def write(name: str, content: str | bytes) -> Setup:
    def setup(tmp: Path, paths: dict) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def write_here(name: str, content: str) -> Setup:
    """write(), with {tmp} in the content replaced by the case's workspace (YAML's own braces left alone)."""
    return lambda tmp, paths: write(name, content.replace("{tmp}", str(tmp)))(tmp, paths)


def mkdir(name: str) -> Setup:
    return lambda tmp, paths: (tmp / name).mkdir(parents=True)


def copy(key: str, name: str) -> Setup:
    """A copy of a shared fixture (a run, a checkpoint) into the case's workspace, so the case may damage it."""
    def setup(tmp: Path, paths: dict) -> None:
        shutil.copytree(paths[key], tmp / name)
    return setup


def edit(name: str, change: Callable[[Path], None]) -> Setup:
    return lambda tmp, paths: change(tmp / name)


def steps(*setups: Setup) -> Setup:
    def setup(tmp: Path, paths: dict) -> None:
        for s in setups:
            s(tmp, paths)
    return setup


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not what it should be\n" * 4)


def no_deepspeed(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSpeed not importable; the private rendezvous `train.engine=deepspeed` sets up alone is undone after."""
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port())), ("RANK", "0"),
                       ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)


def eight_gb_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-only machine with 8 GB of memory available (the memory check's figures do not depend on this one)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("lmssl.training.memory.host_available", lambda: 8 * 10**9)


def reshuffled_data_root(tmp: Path, paths: dict) -> None:
    """{tmp}/root: the tiny runs' corpora under the same names, the training one's lines reversed (the same bytes,
    the same size, other sequences), so data.root={tmp}/root is a resume on another corpus."""
    lines = (DATA_ROOT / "wikitext-2" / "valid.txt").read_text().splitlines(keepends=True)
    (tmp / "root" / "wikitext-2").mkdir(parents=True)
    (tmp / "root" / "wikitext-2" / "valid.txt").write_text("".join(reversed(lines)))
    shutil.copy(DATA_ROOT / "wikitext-2" / "test.txt", tmp / "root" / "wikitext-2" / "test.txt")


def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-only torch build, also on a machine with a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


class RunsAShellCommand:
    """What a malicious pickle holds: unpickling it would run `touch MARKER` (the snapshot would show the file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def pickled_hf_weights(tmp: Path, paths: dict) -> None:
    """A copy of {hf} whose weights are a pytorch_model.bin holding, beside its tensors, a shell command."""
    from safetensors.torch import load_file

    shutil.copytree(paths["hf"], tmp / "hf")
    tensors = load_file(tmp / "hf" / "model.safetensors")
    (tmp / "hf" / "model.safetensors").unlink()
    torch.save({**tensors, "payload": RunsAShellCommand(tmp / "PWNED")}, tmp / "hf" / "pytorch_model.bin")


def mlm(*extra: str) -> tuple[str, ...]:
    """`lmssl train configs/mlm.yaml` with the tiny settings, writing into the case's workspace."""
    return ("train", "configs/mlm.yaml", *TINY, "train.output_dir={tmp}/run", *extra)


def corpus(*extra: str) -> tuple[str, ...]:
    return mlm("objective.sentence_task=none", "data.valid=", *extra)


def resume(*extra: str) -> tuple[str, ...]:
    """Resuming the shared "mlm" run, trained (tiny_config) from configs/mlm-nsp.yaml."""
    return ("train", "configs/mlm-nsp.yaml", *TINY, "train.output_dir={tmp}/run", "train.resume=true", *extra)


LATIN1_TEXT = "A plain first line.\ncaf\xe9 au lait\n".encode("latin-1")
LATIN1 = "not UTF-8 text (byte 23, line 2: 0xe9); convert it, e.g. iconv -f latin1 -t utf-8"
NSP_SENTENCES = "".join(f"Sentence number {i} stands alone on its line .\n" for i in range(40))
CARD = 'name: toy\ntrain: train.csv\ndev: train.csv\ntext_columns: text\nlabel_column: label\nlabels: ["no", "yes"]\n'
FT = "finetune.output_dir={tmp}/ft"
STUDY = "output_dir: {tmp}/study\nbudgets: [1e10]\nruns:\n  - {name: a, config: configs/clm.yaml}\n"
LATIN1_CSV = "text,label\ncaf\xe9 au lait,yes\n".encode("latin-1")  # byte 14, line 2
LATIN1_CSV_LINE = "not UTF-8 text (byte 14, line 2: 0xe9); convert it, e.g. iconv -f latin1 -t utf-8"
LATIN1_JSONL = '{"text": "fine"}\n{"text": "caf\xe9"}\n'.encode("latin-1")  # byte 30, line 2
LATIN1_JSONL_LINE = "not UTF-8 text (byte 30, line 2: 0xe9); convert it, e.g. iconv -f latin1 -t utf-8"
PAIRS = '{"sentence_good": "a b", "sentence_bad": "b a"}\n'
REPLACES_INPUT = "writing there would replace what is being read: choose another file"
PICKLE = ("refused: its pickle holds code or objects (posix.system), not only tensors, and lmssl will not load it; use "
          "the model's model.safetensors (e.g. save_pretrained(..., safe_serialization=True) where you trust the file)")
NO_CUDA = "device 'cuda' (--device / finetune.device): this torch build has no CUDA support; use auto or cpu"
PPPL = ("eval", "pppl", "{mlm}", "wikitext-2/test.txt", "--max-words", "20")
NOT_MANIFEST = ("{tmp}/ckpt: damaged: manifest.json cannot be read (%s, not an object whose \"files\" maps each "
                "file's name to its bytes and sha256); use another checkpoint (a run keeps its earlier ones in "
                "checkpoints/)")
NOT_CKPT = ("not an lmssl checkpoint (no model.safetensors), a run directory with checkpoints, nor a Hugging Face "
            "model directory (config.json)")
RESUME_ONLY = ("only its length, cadence and paths may change (train.max_steps, *.every, ...): put the other keys "
               "back, or start a new run (model.init_from={tmp}/run/" + STEP + " continues from its weights)")
DS_KEY = "is a DeepSpeed option; set train.engine=deepspeed"
SRC = "configs/mlm.yaml + overrides"
OWN_ONLY = "lmssl writes only into a new or empty directory or over an lmssl run it wrote, and deletes nothing else: "
PLAIN = "a plain name (letters, digits and _ . + -, not starting with . or -)"

CASES = [
    # --- config (lmssl train) ---
    Case("config-unknown-key", mlm("train.max_step=3"),
         f"{SRC}: unknown key 'train.max_step'; did you mean 'train.max_steps'?"),
    Case("config-unknown-key-model", mlm("model.hiden_size=3"),
         f"{SRC}: unknown key 'model.hiden_size'; did you mean 'model.hidden_size'?"),
    Case("config-unknown-section", mlm("trian.lr=1"), "override 'trian.lr=1': unknown section 'trian'; did you mean "
                                                      "'train'?"),
    Case("config-int-type", mlm("train.max_steps=many"), f"{SRC}: key 'train.max_steps': expected an integer, got "
                                                         "'many'"),
    Case("config-int-given-float", mlm("train.batch_size=8.5"), f"{SRC}: key 'train.batch_size': expected an integer, "
                                                                "got 8.5"),
    Case("config-bool-type", mlm("train.resume=maybe"), f"{SRC}: key 'train.resume': expected true or false, got "
                                                        "'maybe'"),
    Case("config-float-type", mlm("train.lr=fast"), f"{SRC}: key 'train.lr': expected a number, got 'fast'"),
    Case("config-string-given-list", mlm("data.train=[a, b]"), f"{SRC}: key 'data.train': expected a string, got "
                                                               "['a', 'b']"),
    Case("config-bad-choice", mlm("train.precision=fp64"), f"{SRC}: key 'train.precision': invalid value 'fp64'; "
                                                           "choose one of 'fp32', 'bf16', 'fp16'"),
    Case("config-bad-preset", mlm("model.preset=roberta"), f"{SRC}: key 'model.preset': invalid value 'roberta'; "
                                                           "choose one of 'bert', 'gpt2', 'modernbert', 'llama'"),
    Case("config-unknown-objective", mlm("objective.name=bert"), f"{SRC}: key 'objective.name': unknown objective "
                                                                 "'bert'; choose one of 'mlm', 'clm', 'electra', "
                                                                 "'simcse'"),
    Case("config-num-heads", mlm("model.num_heads=5"), f"{SRC}: key 'model.num_heads': must divide "
                                                       "model.hidden_size=32"),
    Case("config-hidden-size-zero", mlm("model.hidden_size=0"), f"{SRC}: key 'model.hidden_size': must be positive"),
    Case("config-seq-len-beyond-positions", mlm("data.seq_len=256"), f"{SRC}: key 'data.seq_len': 256 exceeds "
                                                                     "model.max_positions=128"),
    Case("config-seq-len-tiny", mlm("data.seq_len=2"), f"{SRC}: key 'data.seq_len': must be at least 4"),
    Case("config-mask-probabilities", mlm("objective.mask_token_prob=0.9", "objective.random_token_prob=0.2"),
         f"{SRC}: key 'objective.random_token_prob': mask_token_prob + random_token_prob must be <= 1"),
    Case("config-mask-rate", mlm("objective.mask_rate=0"), f"{SRC}: key 'objective.mask_rate': must be in (0, 1)"),
    Case("config-dropout-range", mlm("model.dropout=1.5"), f"{SRC}: key 'model.dropout': must be in [0, 1)"),
    Case("config-deepspeed-key-torch-engine", mlm("train.zero_stage=2"), f"{SRC}: key 'train.zero_stage': {DS_KEY}"),
    Case("config-offload-torch-engine", mlm("train.offload_optimizer=true"),
         f"{SRC}: key 'train.offload_optimizer': {DS_KEY}"),
    Case("config-zero-stage-range", mlm("train.engine=deepspeed", "train.zero_stage=5"),
         f"{SRC}: key 'train.zero_stage': must be 0, 1, 2 or 3, got 5"),
    Case("config-fp16-torch-engine", mlm("train.precision=fp16"), f"{SRC}: key 'train.precision': fp16 needs loss "
                                                                  "scaling, which the torch engine does not do: use "
                                                                  "bf16, or train.engine=deepspeed"),
    Case("config-deepspeed-json-torch-engine", mlm("train.deepspeed={tmp}/ds.json"),
         f"{SRC}: key 'train.deepspeed': {DS_KEY}", write("ds.json", "{}\n")),
    Case("config-eval-batch-size-zero", mlm("eval.batch_size=0"), f"{SRC}: key 'eval.batch_size': must be positive"),
    Case("config-lr-zero", mlm("train.lr=0"), f"{SRC}: key 'train.lr': must be positive"),
    Case("config-lr-negative", mlm("train.lr=-1e-3"), f"{SRC}: key 'train.lr': must be positive"),
    Case("config-lr-inf", mlm("train.lr=.inf"), f"{SRC}: key 'train.lr': must be a finite number, got inf"),
    Case("config-lr-nan", mlm("train.lr=.nan"), f"{SRC}: key 'train.lr': must be a finite number, got nan"),
    Case("config-max-flops-inf", mlm("train.max_flops=.inf"),
         f"{SRC}: key 'train.max_flops': must be a finite number, got inf"),
    Case("config-seed-beyond-2-64", mlm("train.seed=18446744073709551617"),
         f"{SRC}: key 'train.seed': must be at most 4294967295 (2**32 - 1), got 18446744073709551617"),
    Case("config-init-std-negative", mlm("model.init_std=-0.02"), f"{SRC}: key 'model.init_std': must be positive"),
    Case("config-init-std-nan", mlm("model.init_std=.nan"),
         f"{SRC}: key 'model.init_std': must be a finite number, got nan"),
    Case("config-eval-max-batches-negative", mlm("eval.max_batches=-1"),
         f"{SRC}: key 'eval.max_batches': must be >= 0 (0 = the whole split)"),
    # 1e8 x 32 tied embeddings + the decoder's 1e8 biases + 13,888 (positions 4096, types 64, embedding norm 64,
    # the block 8544, head transform 1120; no pooler without NSP): 3,300,013,888 x 12 bytes (Muon) = 39.6 GB
    Case("config-vocab-size-beyond-memory", mlm("model.vocab_size=100000000"),
         "key 'model.vocab_size': 100000000 makes a model of 3,300,013,888 parameters, which needs at least 39.6 GB "
         "(weights, gradients and Muon's momentum, 12 bytes per parameter) but 8.0 GB of memory is available; "
         "choose a smaller model", patch=eight_gb_cpu),
    Case("config-max-steps-zero", mlm("train.max_steps=0"), f"{SRC}: key 'train.max_steps': must be positive"),
    Case("config-max-flops-negative", mlm("train.max_flops=-1"),
         f"{SRC}: key 'train.max_flops': must be >= 0 (0 = train.max_steps sets the length)"),
    Case("config-max-minutes-negative", mlm("train.max_minutes=-1"),
         f"{SRC}: key 'train.max_minutes': must be >= 0 (0 = train.max_steps sets the length)"),
    Case("config-max-minutes-and-max-flops", mlm("train.max_minutes=30", "train.max_flops=1e15"),
         f"{SRC}: key 'train.max_minutes': and train.max_flops both set the run's length: set one of them to 0"),
    Case("config-optimizer-unknown", mlm("train.optimizer=sgd"),
         f"{SRC}: key 'train.optimizer': invalid value 'sgd'; choose one of 'adamw', 'muon'"),
    Case("config-muon-deepspeed", mlm("train.engine=deepspeed", "train.optimizer=muon"),
         f"{SRC}: key 'train.optimizer': muon runs with train.engine=torch only; DeepSpeed steps lmssl's AdamW (set "
         f"train.optimizer=adamw)"),
    Case("config-muon-lr-zero", mlm("train.optimizer=muon", "train.muon_lr=0"),
         f"{SRC}: key 'train.muon_lr': must be positive"),
    Case("config-muon-momentum-one", mlm("train.optimizer=muon", "train.muon_momentum=1"),
         f"{SRC}: key 'train.muon_momentum': must be in [0, 1)"),
    Case("config-schedule-unknown", mlm("train.schedule=step"),
         f"{SRC}: key 'train.schedule': invalid value 'step'; choose one of 'linear', 'cosine', 'constant', 'wsd'"),
    Case("config-decay-fraction-above-one", mlm("train.schedule=wsd", "train.decay_fraction=1.5"),
         f"{SRC}: key 'train.decay_fraction': must be in [0, 1]"),
    Case("config-decay-fraction-negative", mlm("train.schedule=wsd", "train.decay_fraction=-0.1"),
         f"{SRC}: key 'train.decay_fraction': must be in [0, 1]"),
    Case("config-probe-examples-zero", mlm("eval.probe_examples=0"), f"{SRC}: key 'eval.probe_examples': must be "
                                                                     f"positive"),
    Case("config-probe-task-unknown", mlm("eval.probe_task=sst3"),
         "key 'eval.probe_task': unknown task 'sst3': choose a GLUE task (cola sst2 mrpc stsb qqp mnli qnli rte wnli), "
         "glue (all of them), or the path of a task card (.yaml); did you mean 'sst2'?"),
    Case("config-data-train-empty", mlm("data.train="), f"{SRC}: key 'data.train': a training corpus is required"),
    Case("config-override-without-section", mlm("max_steps=3"),
         "override 'max_steps=3': keys have the form section.field, e.g. train.max_steps"),
    Case("config-override-without-value", mlm("train.max_steps"),
         "override 'train.max_steps': expected key=value, e.g. train.max_steps=100"),
    Case("config-override-yaml-error", mlm("train.lr=[1"),
         "override 'train.lr=[1': the value is not valid YAML (expected ',' or ']', but got '<stream end>' (line 1, "
         "column 3)); quote it if it is a string, e.g. train.lr='...'"),
    Case("config-file-invalid-yaml", ("train", "{tmp}/bad.yaml"),
         "{tmp}/bad.yaml: not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)",
         write("bad.yaml", "model: [1\n")),
    Case("config-file-missing", ("train", "{tmp}/missing.yaml"), "config file not found: {tmp}/missing.yaml"),
    Case("config-file-empty", ("train", "{tmp}/empty.yaml"),
         "{tmp}/empty.yaml: the config file is empty; write at least one section (model, objective, data, train, "
         "eval), e.g. start from configs/mlm.yaml", write("empty.yaml", "")),
    Case("config-file-not-utf8", ("train", "{tmp}/latin1.yaml"), "{tmp}/latin1.yaml: not UTF-8 text (byte 20)",
         write("latin1.yaml", "train:\n  lr: 1 # caf\xe9\n".encode("latin-1"))),
    Case("config-file-not-a-mapping", ("train", "{tmp}/list.yaml"),
         "{tmp}/list.yaml: expected a mapping of sections (model, objective, data, train, eval)",
         write("list.yaml", "- model\n- train\n")),
    Case("config-file-unknown-section", ("train", "{tmp}/c.yaml"),
         "{tmp}/c.yaml: unknown section 'trian'; did you mean 'train'?", write("c.yaml", "trian:\n  lr: 1\n")),
    Case("config-file-section-not-mapping", ("train", "{tmp}/c.yaml"),
         "{tmp}/c.yaml: section 'train' must be a mapping of keys", write("c.yaml", "train: 5\n")),
    Case("config-data-train-missing", mlm("data.train={tmp}/nowhere.txt"),
         "key 'data.train': file not found: {tmp}/nowhere.txt (looked in the working directory and the data root "
         "{data}; set LMSSL_DATA or data.root; a Hub dataset is written name:config:split)"),
    Case("config-data-valid-missing", mlm("data.valid=wikitext-2/nowhere.txt"),
         "key 'data.valid': file not found: wikitext-2/nowhere.txt (looked in the working directory and the data root "
         "{data}; set LMSSL_DATA or data.root; a Hub dataset is written name:config:split)"),
    Case("config-tokenizer-file-missing", mlm("data.tokenizer={tmp}/nowhere/tokenizer.json"),
         "key 'data.tokenizer': tokenizer file not found: {tmp}/nowhere/tokenizer.json"),
    Case("config-output-dir-is-a-file", mlm("train.output_dir={tmp}/file.txt/run"),
         "key 'train.output_dir': {tmp}/file.txt is a file, not a directory", write("file.txt", "a file\n")),
    Case("config-output-dir-holds-checkpoints", mlm("train.output_dir={tmp}/run"),
         "key 'train.output_dir': {tmp}/run already holds checkpoints; set train.resume=true to continue it, "
         "train.overwrite=true to replace it, or choose another train.output_dir", copy("mlm", "run")),
    Case("config-output-checkpoints-is-a-file", mlm(),
         "key 'train.output_dir': {tmp}/run/checkpoints is a file, where a run keeps its checkpoints (a directory); "
         "move it aside or choose another train.output_dir", write("run/checkpoints", "a file\n")),
    Case("config-output-metrics-is-a-directory", mlm(),
         "key 'train.output_dir': {tmp}/run/metrics.jsonl is a directory, where a run keeps its log (a file); move it "
         "aside or choose another train.output_dir", mkdir("run/metrics.jsonl")),
    Case("config-output-lock-is-a-directory", mlm(),
         "key 'train.output_dir': {tmp}/run/lmssl.lock is a directory, where a run keeps its lock (a file); move it "
         "aside or choose another train.output_dir", mkdir("run/lmssl.lock")),
    Case("config-vocab-size-too-small", mlm("model.vocab_size=100"),
         "key 'model.vocab_size': 100 is smaller than the tokenizer's 8192"),
    Case("config-simcse-with-valid", ("train", "configs/simcse.yaml", *TINY, *SIMCSE, "data.valid=wikitext-2/test.txt",
                                      "train.output_dir={tmp}/run"),
         "configs/simcse.yaml + overrides: key 'data.valid': simcse is validated on STS (objective.sts_eval), not on a "
         "text split; set data.valid to ''"),
    Case("config-simcse-keep-pooler-with-cls", ("train", "configs/simcse.yaml", *TINY, *SIMCSE, "objective.pooling=cls",
                                               "objective.keep_pooler=true", "train.output_dir={tmp}/run"),
         "configs/simcse.yaml + overrides: key 'objective.keep_pooler': must be false with objective.pooling=cls (its "
         "training MLP is the pooler already)"),
    Case("config-init-from-nowhere", mlm("model.init_from={tmp}/nowhere"),
         "key 'model.init_from': {tmp}/nowhere is neither an lmssl checkpoint (no model.safetensors), a run directory "
         "with checkpoints, nor a Hugging Face model directory (config.json)"),
    Case("config-init-from-other-shape", mlm("model.init_from={mlm}", "model.hidden_size=64", "model.ffn_size=64"),
         "key 'model.hidden_size': 64 here but 32 in the model.init_from checkpoint {mlm_ckpt}; the trunk must match "
         "it (set model.hidden_size=32)"),

    # --- resume (train.resume=true on a copy of a tiny run) ---
    Case("resume-other-model-shape", resume("model.ffn_size=48"),
         "cannot resume {tmp}/run/" + STEP + " with a different config (model.ffn_size: 64 in the checkpoint, 48 now); "
         + RESUME_ONLY, copy("mlm", "run")),
    Case("resume-other-objective", ("train", "configs/clm.yaml", *TINY, "train.output_dir={tmp}/run",
                                    "train.resume=true"),
         "key 'data.tokenizer': {repo}/tokenizers/wikitext2-bpe/tokenizer.json is not the tokenizer {tmp}/run/" + STEP
         + " was trained with (its tokenizer.json differs); restore that tokenizer or start a new run",
         copy("mlm", "run")),
    Case("resume-other-optimizer", resume("train.optimizer=muon"),
         "cannot resume {tmp}/run/" + STEP + " with a different config (train.optimizer: 'adamw' in the checkpoint, "
         "'muon' now); " + RESUME_ONLY, copy("mlm", "run")),
    Case("resume-trainer-state-missing", resume(),
         "{tmp}/run/checkpoints: no intact checkpoint to resume from (step-0000002: trainer_state.pt is missing)",
         steps(copy("mlm", "run"), edit(f"run/{STEP}/trainer_state.pt", Path.unlink))),
    Case("resume-trainer-state-garbage", resume(),
         "{tmp}/run/checkpoints: no intact checkpoint to resume from (step-0000002: trainer_state.pt is 120 bytes, "
         "manifest.json says {state_bytes})",
         steps(copy("mlm", "run"), edit(f"run/{STEP}/trainer_state.pt", garbage))),
    Case("resume-corpus-reshuffled", resume("data.root={tmp}/root"),
         "key 'data.train': {tmp}/root/wikitext-2/valid.txt is not the corpus {tmp}/run/" + STEP + " was trained on "
         "(its tokenized sequences differ: reordered, edited or replaced), so the saved position in it means nothing; "
         "restore that corpus, or start a new run (model.init_from={tmp}/run/" + STEP + " continues from its weights)",
         steps(copy("mlm", "run"), reshuffled_data_root)),
    Case("resume-deepspeed-not-installed", resume("train.engine=deepspeed"),
         "key 'train.engine': deepspeed is not installed here; install it with `pip install deepspeed` (or the gpu "
         "extra: pip install -e .[gpu]), or set train.engine=torch", copy("mlm", "run"), patch=no_deepspeed),

    # --- corpus files (data.train, a text to score, a tokenizer corpus) ---
    Case("corpus-empty", ("eval", "ppl", "{clm}", "{tmp}/empty.txt"), "{tmp}/empty.txt: the file is empty",
         write("empty.txt", "")),
    Case("corpus-only-whitespace", ("eval", "pppl", "{mlm}", "{tmp}/blank.txt"),
         "{tmp}/blank.txt: the file holds only whitespace", write("blank.txt", "  \n\t\n\n   \n")),
    Case("corpus-binary", ("eval", "ppl", "{clm}", "{tmp}/binary.txt"),
         "{tmp}/binary.txt: not text (a NUL byte at byte 11, line 2); corpora are UTF-8 text, .jsonl, .csv/.tsv, "
         ".parquet or .arrow",
         write("binary.txt", b"first line\n\x00\x01\x02binary\n")),
    Case("corpus-latin1", ("eval", "ppl", "{clm}", "{tmp}/latin1.txt"), "{tmp}/latin1.txt: " + LATIN1,
         write("latin1.txt", LATIN1_TEXT)),
    Case("corpus-jsonl-no-text-field", ("eval", "ppl", "{clm}", "{tmp}/docs.jsonl"),
         "{tmp}/docs.jsonl: no column 'text' (data.text_field); columns are: body",
         write("docs.jsonl", '{"body": "one document"}\n{"body": "another one"}\n')),
    Case("corpus-jsonl-other-text-field", ("eval", "ppl", "{clm}", "{tmp}/docs.jsonl", "--text-field", "content"),
         "{tmp}/docs.jsonl: no column 'content' (data.text_field); columns are: text",
         write("docs.jsonl", '{"text": "one document"}\n')),
    Case("corpus-jsonl-text-not-string", ("eval", "ppl", "{clm}", "{tmp}/docs.jsonl"),
         "{tmp}/docs.jsonl: row 1: 'text' must be a string, got int", write("docs.jsonl", '{"text": 12}\n')),
    Case("corpus-train-empty", corpus("data.train={tmp}/empty.txt"), "{tmp}/empty.txt: the file is empty",
         write("empty.txt", "")),
    Case("corpus-train-only-whitespace", corpus("data.train={tmp}/blank.txt"),
         "{tmp}/blank.txt: the file holds only whitespace", write("blank.txt", "  \n\t\n\n   \n")),
    Case("corpus-train-binary", corpus("data.train={tmp}/binary.txt"),
         "{tmp}/binary.txt: not text (a NUL byte at byte 11, line 2); corpora are UTF-8 text, .jsonl, .csv/.tsv, "
         ".parquet or .arrow",
         write("binary.txt", b"first line\n\x00\x01\x02binary\n")),
    Case("corpus-train-latin1", corpus("data.train={tmp}/latin1.txt"), "{tmp}/latin1.txt: " + LATIN1,
         write("latin1.txt", LATIN1_TEXT)),
    Case("corpus-train-latin1-streaming", corpus("data.train={tmp}/latin1.txt", "data.streaming=true"),
         "{tmp}/latin1.txt: " + LATIN1, write("latin1.txt", LATIN1_TEXT)),
    Case("corpus-train-jsonl-no-text-field", corpus("data.train={tmp}/docs.jsonl"),
         "{tmp}/docs.jsonl: no column 'text' (data.text_field); columns are: body",
         write("docs.jsonl", '{"body": "one document"}\n{"body": "another one"}\n')),
    Case("corpus-train-jsonl-text-not-string", corpus("data.train={tmp}/docs.jsonl"),
         "{tmp}/docs.jsonl: row 1: 'text' must be a string, got int", write("docs.jsonl", '{"text": 12}\n')),
    Case("corpus-tokenizer-latin1", ("tokenizer", "train", "{tmp}/latin1.txt", "--out", "{tmp}/tok"),
         "{tmp}/latin1.txt: " + LATIN1, write("latin1.txt", LATIN1_TEXT)),
    Case("corpus-tokenizer-binary", ("tokenizer", "train", "{tmp}/binary.txt", "--out", "{tmp}/tok"),
         "{tmp}/binary.txt: not text (a NUL byte at byte 11, line 2); corpora are UTF-8 text, .jsonl, .csv/.tsv, "
         ".parquet or .arrow",
         write("binary.txt", b"first line\n\x00\x01\x02binary\n")),
    Case("corpus-train-shorter-than-a-sequence", corpus("data.train={tmp}/short.txt"),
         "key 'data.train' ({tmp}/short.txt): the corpus has 5 tokens, fewer than one sequence of 32",
         write("short.txt", "hello world .\n")),
    Case("corpus-train-nsp-one-sentence-per-line", mlm("data.train={tmp}/sentences.txt", "data.valid=",
                                                       "objective.sentence_task=nsp"),
         "key 'data.train' ({tmp}/sentences.txt): objective.sentence_task=nsp cannot build sentence pairs: every "
         "document is a single segment (sentence or line), so no document has a continuation to pair with. Use a "
         "corpus whose documents hold several sentences or paragraphs (data.doc_split=auto; blank_line or wikitext "
         "group lines into documents), or set objective.sentence_task=none", write("sentences.txt", NSP_SENTENCES)),

    # --- tokenizers ---
    Case("tokenizer-garbage-json", mlm("data.tokenizer={tmp}/tokenizer.json"),
         "{tmp}/tokenizer.json: not a tokenizers JSON file (it does not parse as one)",
         write("tokenizer.json", '{"version": "1.0", "model": 7}\n')),
    Case("tokenizer-bpe-for-mlm", mlm("data.tokenizer=wikitext2-bpe"),
         "key 'data.tokenizer': objective 'mlm' needs the special tokens ['cls', 'mask'] but "
         "{repo}/tokenizers/wikitext2-bpe/tokenizer.json has none; use a wordpiece or unigram tokenizer"),
    Case("tokenizer-train-negative-vocab", ("tokenizer", "train", "{data}/wikitext-2/valid.txt", "--out", "{tmp}/tok",
                                            "--vocab-size", "-5"),
         "--vocab-size: must be at least 100, got -5"),
    Case("tokenizer-train-zero-vocab", ("tokenizer", "train", "{data}/wikitext-2/valid.txt", "--out", "{tmp}/tok",
                                        "--vocab-size", "0"),
         "--vocab-size: must be at least 100, got 0"),
    Case("tokenizer-train-missing-corpus", ("tokenizer", "train", "{tmp}/nowhere.txt", "--out", "{tmp}/tok"),
         "corpus file not found: {tmp}/nowhere.txt"),
    Case("tokenizer-train-exists", ("tokenizer", "train", "{data}/wikitext-2/valid.txt", "--out", "{tmp}/tok"),
         "{tmp}/tok/tokenizer.json exists; checkpoints trained with it would no longer match: choose another "
         "--name/--out, or pass --overwrite", write("tok/tokenizer.json", WORDPIECE.read_text())),
    Case("tokenizer-train-out-is-a-file", ("tokenizer", "train", "{data}/wikitext-2/valid.txt", "--out",
                                           "{tmp}/tok"),
         "--out: {tmp}/tok is a file, not a directory", write("tok", "a file\n")),

    # --- checkpoints in lmssl eval ---
    Case("eval-not-a-checkpoint", ("eval", "ppl", "{tmp}/empty", "wikitext-2/test.txt"),
         "{tmp}/empty: " + NOT_CKPT, mkdir("empty")),
    Case("eval-unknown-device", ("eval", "ppl", "{clm}", "wikitext-2/test.txt", "--device", "nonsense"),
         "unknown device 'nonsense' (--device / finetune.device); use auto, cpu, cuda or cuda:N"),
    Case("eval-device-cuda-on-a-cpu-build", ("eval", "ppl", "{clm}", "wikitext-2/test.txt", "--device", "cuda"),
         NO_CUDA, patch=no_cuda),
    Case("eval-manifest-a-list", ("eval", "pppl", "{tmp}/ckpt", "wikitext-2/test.txt"), NOT_MANIFEST % "a JSON list",
         steps(copy("mlm_ckpt", "ckpt"), write("ckpt/manifest.json", '["model.safetensors"]\n'))),
    Case("eval-manifest-no-files", ("eval", "pppl", "{tmp}/ckpt", "wikitext-2/test.txt"), NOT_MANIFEST % "files: []",
         steps(copy("mlm_ckpt", "ckpt"), write("ckpt/manifest.json", '{"files": []}\n'))),
    Case("eval-hf-config-a-list", ("eval", "pppl", "{tmp}/hf", "wikitext-2/test.txt"),
         "{tmp}/hf/config.json: expected a JSON object of settings, found a JSON list",
         steps(copy("hf", "hf"), write("hf/config.json", '[{"model_type": "bert"}]\n'))),
    Case("eval-hf-pickled-weights", ("eval", "pppl", "{tmp}/hf", "wikitext-2/test.txt"),
         "{tmp}/hf/pytorch_model.bin: " + PICKLE, pickled_hf_weights),
    Case("eval-pppl-per-sentence-a-directory", (*PPPL, "--per-sentence", "{tmp}/out"),
         "--per-sentence: {tmp}/out is a directory; give a file to write", mkdir("out")),
    Case("eval-pppl-per-sentence-is-the-input", ("eval", "pppl", "{mlm}", "{tmp}/text.txt", "--per-sentence",
                                                 "{tmp}/text.txt"),
         "--per-sentence: {tmp}/text.txt is the input file {tmp}/text.txt; " + REPLACES_INPUT,
         write("text.txt", "A short text to score .\n")),
    # the same file by another name (a symlink), inside the case's workspace: a regression must not write elsewhere
    Case("eval-pppl-per-sentence-is-the-input-by-another-name", ("eval", "pppl", "{mlm}", "{tmp}/text.txt",
                                                                 "--per-sentence", "{tmp}/link.txt"),
         "--per-sentence: {tmp}/link.txt is the input file {tmp}/text.txt; " + REPLACES_INPUT,
         steps(write("text.txt", "A short text to score .\n"),
               lambda tmp, paths: (tmp / "link.txt").symlink_to(tmp / "text.txt"))),
    Case("eval-pppl-per-sentence-unwritable", (*PPPL, "--per-sentence", "/proc/scores.jsonl"),
         "--per-sentence: cannot write in /proc (No such file or directory); choose another place"),
    Case("eval-compare-metrics-holds-a-list", ("eval", "compare", "{tmp}/run", "--data", "wikitext-2/test.txt",
                                               "--max-words", "20", "--out", "{tmp}/report"),
         "{tmp}/run/metrics.jsonl:1: not a logged step (a JSON list; each line of metrics.jsonl is an object with an "
         "integer \"step\", as lmssl train writes it)",
         steps(copy("clm", "run"), write("run/metrics.jsonl", "[1, 2]\n"))),
    Case("eval-ppl-on-mlm", ("eval", "ppl", "{mlm}", "wikitext-2/test.txt"),
         "{mlm_ckpt}: `lmssl eval ppl` needs a causal language model; this checkpoint's objective is 'mlm': use "
         "`lmssl eval pppl`"),
    Case("eval-pppl-on-clm", ("eval", "pppl", "{clm}", "wikitext-2/test.txt"),
         "{clm_ckpt}: `lmssl eval pppl` needs a masked language model; this checkpoint's objective is 'clm': use "
         "`lmssl eval ppl`"),
    Case("eval-pppl-on-simcse", ("eval", "pppl", "{simcse}", "wikitext-2/test.txt"),
         "{simcse_ckpt}: `lmssl eval pppl` needs a masked language model; this checkpoint's objective is 'simcse', "
         "which declares none (Objective.language_model() is None)"),
    Case("eval-text-file-missing", ("eval", "ppl", "{clm}", "{tmp}/nowhere.txt"),
         "FILE: text file not found: {tmp}/nowhere.txt (looked in the working directory and the data root {data}; "
         "set LMSSL_DATA)"),
    Case("eval-text-file-empty", ("eval", "ppl", "{clm}", "{tmp}/empty.txt"), "{tmp}/empty.txt: the file is empty",
         write("empty.txt", "")),
    Case("eval-pppl-every-token-unknown", ("eval", "pppl", "{mlm}", "{tmp}/emoji.txt"),
         "no tokens to score: every one of the text's 5 tokens is unknown to the tokenizer ([UNK]), which "
         "pseudo-perplexity does not score; give text in the language and script the tokenizer was trained on",
         write("emoji.txt", "\U0001F600 \U0001F643 \U0001F600\n\ua66e\ua66e \ua66e\n")),
    Case("eval-max-length-beyond-positions", ("eval", "ppl", "{clm}", "wikitext-2/test.txt", "--max-words", "20",
                                              "--max-length", "1000"),
         "--max-length: 1000 exceeds the model's 128 learned positions (model.max_positions); use at most 128"),
    Case("eval-stride-too-large", ("eval", "ppl", "{clm}", "wikitext-2/test.txt", "--max-words", "20",
                                   "--max-length", "16", "--stride", "17"),
         "--stride: must be between 1 and 16 (--max-length 16), got 17"),
    Case("eval-pppl-stride-too-large", ("eval", "pppl", "{mlm}", "wikitext-2/test.txt", "--max-words", "20",
                                        "--max-length", "16", "--stride", "15"),
         "--stride: must be between 1 and 14 (--max-length 16 minus 2 special tokens), got 15"),
    Case("eval-pppl-max-length-too-small", ("eval", "pppl", "{mlm}", "wikitext-2/test.txt", "--max-words", "20",
                                            "--max-length", "2"),
         "--max-length: must be greater than 2, got 2"),
    Case("eval-sts-cls-pooling-causal", ("eval", "sts", "{clm}", "--sets", "stsb_dev", "--pooling", "cls"),
         "pooling 'cls' needs a bidirectional model whose tokenizer has [CLS]; use pooling 'mean'"),
    Case("eval-truncated-weights", ("eval", "pppl", "{tmp}/ckpt", "wikitext-2/test.txt"),
         "{tmp}/ckpt: damaged: model.safetensors is 100 bytes, manifest.json says {weights_bytes}; use another "
         "checkpoint (a run keeps its earlier ones in checkpoints/)",
         steps(copy("mlm_ckpt", "ckpt"), edit("ckpt/model.safetensors", truncate))),
    Case("eval-garbage-weights-no-manifest", ("eval", "pppl", "{tmp}/ckpt", "wikitext-2/test.txt"),
         "{tmp}/ckpt/model.safetensors: cannot be read as safetensors (Error while deserializing header: header too "
         "large); it is damaged or truncated",
         steps(copy("mlm_ckpt", "ckpt"), edit("ckpt/model.safetensors", garbage),
               edit("ckpt/manifest.json", Path.unlink))),
    Case("eval-garbage-tokenizer-no-manifest", ("eval", "pppl", "{tmp}/ckpt", "wikitext-2/test.txt"),
         "{tmp}/ckpt/tokenizer.json: not a tokenizers JSON file (it does not parse as one)",
         steps(copy("mlm_ckpt", "ckpt"), edit("ckpt/tokenizer.json", garbage),
               edit("ckpt/manifest.json", Path.unlink))),
    Case("eval-sts-unknown-set", ("eval", "sts", "{simcse}", "--sets", "stsb_dev", "sts99"),
         "--sets: unknown STS set 'sts99'; choose from stsb_dev, sts12, sts13, sts14, sts15, sts16, stsb_test, sickr"),
    Case("eval-sts-missing-data", ("eval", "sts", "{simcse}", "--sets", "stsb_dev", "--data-root", "{tmp}/empty"),
         "STS file not found: {tmp}/empty/glue/STS-B/dev.tsv (the data root is set with LMSSL_DATA or --data-root)",
         mkdir("empty")),
    Case("eval-compare-out-is-a-file", ("eval", "compare", "{mlm}", "{clm}", "--data", "wikitext-2/test.txt", "--out",
                                        "{tmp}/report.md"),
         "--out: {tmp}/report.md is a file; give a directory for report.md, report.png and results.json",
         write("report.md", "# an earlier report\n")),
    Case("eval-compare-simcse", ("eval", "compare", "{mlm}", "{simcse}", "--data", "wikitext-2/test.txt",
                                 "--max-words", "20", "--out", "{tmp}/report"),
         "{simcse_ckpt}: objective 'simcse' has no language model (Objective.language_model() is None); compare takes "
         "causal (PPL) and masked (pseudo-PPL) checkpoints"),
    Case("eval-finetuned-model", ("eval", "pppl", "{ft}", "wikitext-2/test.txt"),
         "{ft} is a fine-tuned toy classifier (finetune.json): it keeps the encoder but no pretraining heads; give the "
         "pretrained checkpoint it came from ({mlm_ckpt}) instead"),

    # --- generate ---
    Case("generate-repetition-penalty-zero", ("generate", "{clm}", "hi", "--repetition-penalty", "0"),
         "--repetition-penalty: must be > 0 (1 = none), got 0.0"),
    Case("generate-empty-stop", ("generate", "{clm}", "hi", "--stop", ""),
         "--stop: an empty stop string would stop every sample at once; give some text"),

    # --- export / import ---
    Case("export-to-a-file", ("export", "{mlm}", "{tmp}/file.txt"),
         "OUT_DIR: {tmp}/file.txt is a file; give a directory to write into", write("file.txt", "a file\n")),
    Case("export-run-into-itself", ("export", "{tmp}/run", "{tmp}/run", "--overwrite"),
         "OUT_DIR: {tmp}/run holds the model being read ({tmp}/run/" + STEP + "); writing there would replace it: "
         "choose a directory outside it", copy("mlm", "run")),
    Case("export-non-empty-dir", ("export", "{mlm}", "{tmp}/out"),
         "{tmp}/out exists and is not empty; choose another output directory or pass --overwrite",
         write("out/notes.txt", "keep me\n")),
    Case("export-rope", ("export", "{rope}", "{tmp}/out"),
         "cannot export: key 'model.position' is 'rope' but GPT2LMHeadModel has learned absolute positions only"),
    Case("export-mean-pooled-classifier", ("export", "{tmp}/ft", "{tmp}/out"),
         "cannot export: this classifier reads the mean of the tokens' states (finetune.pooling), and transformers' "
         "*ForSequenceClassification read [CLS] (or the last token); fine-tune with finetune.pooling=cls to export",
         lambda tmp, paths: finetuned_model(tmp / "ft", paths["mlm_ckpt"], mean_pooling=True)),
    Case("export-not-a-checkpoint", ("export", "{tmp}/empty", "{tmp}/out"), "{tmp}/empty: " + NOT_CKPT,
         mkdir("empty")),
    Case("import-not-hf", ("import", "{mlm_ckpt}", "{tmp}/out"),
         "{mlm_ckpt}: not a Hugging Face model directory (no config.json)"),
    Case("import-roberta", ("import", "{tmp}/hf", "{tmp}/out"),
         "{tmp}/hf/config.json: model_type 'roberta' is not supported; lmssl imports bert, electra, gpt2, modernbert "
         "and llama models",
         write("hf/config.json", json.dumps({"model_type": "roberta", "hidden_size": 32}))),
    Case("import-config-not-json", ("import", "{tmp}/hf", "{tmp}/out"),
         "{tmp}/hf/config.json: cannot read it as JSON (Expecting property name enclosed in double quotes: line 1 "
         "column 2 (char 1))", write("hf/config.json", "{model_type: bert\n")),
    Case("import-into-source", ("import", "{hf}", "{hf}", "--overwrite"),
         "OUT_DIR: {hf} holds the model being read ({hf}); writing there would replace it: choose a directory outside "
         "it"),
    Case("import-non-empty-dir", ("import", "{hf}", "{tmp}/out"),
         "{tmp}/out exists and is not empty; choose another output directory or pass --overwrite",
         write("out/notes.txt", "keep me\n")),
    Case("import-to-a-file", ("import", "{hf}", "{tmp}/file.txt"),
         "OUT_DIR: {tmp}/file.txt is a file; give a directory to write into", write("file.txt", "a file\n")),
    Case("import-config-a-list", ("import", "{tmp}/hf", "{tmp}/out"),
         "{tmp}/hf/config.json: expected a JSON object of settings, found a JSON list",
         write("hf/config.json", '[{"model_type": "bert"}]\n')),
    Case("import-pickled-weights", ("import", "{tmp}/hf", "{tmp}/out"), "{tmp}/hf/pytorch_model.bin: " + PICKLE,
         pickled_hf_weights),
    Case("import-no-weights", ("import", "{tmp}/hf", "{tmp}/out"),
         "{tmp}/hf: no weights (model.safetensors or pytorch_model.bin)",
         lambda tmp, paths: (tmp / "hf").mkdir() or shutil.copy(paths["hf"] / "config.json", tmp / "hf")),

    # --- what lmssl writes over: only its own runs, model directories and studies (issues 28 and 29) ---
    Case("train-overwrite-parent-of-runs", mlm("train.overwrite=true"),
         "key 'train.output_dir': {tmp}/run is not an lmssl run (it holds child-run/, notes.txt); " + OWN_ONLY
         + "choose another train.output_dir", steps(copy("mlm", "run/child-run"), write("run/notes.txt", "keep\n"))),
    Case("train-into-a-data-root", mlm(),
         "key 'train.output_dir': {tmp}/run is not an lmssl run (it holds thesis.tex, wikitext-2/); " + OWN_ONLY
         + "choose another train.output_dir",
         steps(write("run/wikitext-2/train.txt", NSP_SENTENCES), write("run/thesis.tex", "chapter 1\n"))),
    Case("export-overwrite-not-a-model-dir", ("export", "{mlm}", "{tmp}/out", "--overwrite"),
         "OUT_DIR: {tmp}/out is not a model directory (it holds notes.txt); " + OWN_ONLY.replace("an lmssl run",
                                                                                              "a model directory")
         + "choose a new or empty OUT_DIR", write("out/notes.txt", "keep me\n")),
    Case("import-overwrite-parent-of-exports", ("import", "{hf}", "{tmp}/out", "--overwrite"),
         "OUT_DIR: {tmp}/out is not a model directory (it holds hf/, notes.txt); " + OWN_ONLY.replace(
             "an lmssl run", "a model directory") + "choose a new or empty OUT_DIR",
         steps(copy("hf", "out/hf"), write("out/notes.txt", "keep me\n"))),
    Case("study-output-not-a-study", ("study", "{tmp}/s.yaml"),
         "{tmp}/s.yaml: key 'output_dir': {tmp}/thesis is not a study directory (it holds thesis.tex); "
         + OWN_ONLY.replace("an lmssl run", "a study directory") + "choose another output_dir",
         lambda tmp, paths: write("s.yaml", f"budgets: [1e10]\nruns:\n  - {{name: a, config: configs/clm.yaml}}\n"
                                            f"output_dir: {tmp}/thesis\n")(tmp, paths)
         or write("thesis/thesis.tex", "chapter 1\n")(tmp, paths)),
    Case("finetune-card-name-escapes", ("finetune", "{mlm}", "{tmp}/toy.yaml", FT),
         "{tmp}/toy.yaml: key 'name': '../../victim' is not " + PLAIN,
         write("toy.yaml", CARD.replace("name: toy", "name: ../../victim"))),
    Case("finetune-output-is-a-file", ("finetune", "{mlm}", "rte", FT),
         "key 'finetune.output_dir': {tmp}/ft is a file, not a directory", write("ft", "a file\n")),
    Case("config-tokenizer-parent-dir", mlm("data.tokenizer=.."),
         f"{SRC}: key 'data.tokenizer': '..' is neither a tokenizer.json path nor {PLAIN} for tokenizers/NAME/"),
    Case("config-tokenizer-boolean", mlm("data.tokenizer=true"),
         f"{SRC}: key 'data.tokenizer': expected a string, got True (quote it to mean the word)"),
    Case("tokenizer-train-name-escapes", ("tokenizer", "train", "{data}/wikitext-2/valid.txt", "--name", "../x"),
         f"--name: '../x' is not {PLAIN}; give a path with --out instead"),

    # --- finetune and task cards ---
    Case("finetune-probe-solver-unknown", ("finetune", "{mlm}", "rte", "finetune.probe_solver=sgd", FT),
         "overrides: key 'finetune.probe_solver': invalid value 'sgd'; choose one of 'lbfgs', 'adamw'"),
    Case("finetune-pooling-unknown", ("finetune", "{mlm}", "rte", "finetune.pooling=max", FT),
         "overrides: key 'finetune.pooling': invalid value 'max'; choose one of 'cls', 'mean', 'model'"),
    Case("eval-pairs-missing-key", ("eval", "pairs", "{clm}", "{tmp}/pairs.jsonl"),
         "{tmp}/pairs.jsonl:2: key 'sentence_bad' must be a non-empty string (BLiMP format: sentence_good, "
         "sentence_bad, optional UID and field)",
         write("pairs.jsonl", '{"sentence_good": "a b", "sentence_bad": "b a"}\n{"sentence_good": "c d"}\n')),
    Case("eval-pairs-latin1", ("eval", "pairs", "{clm}", "{tmp}/pairs.jsonl"),
         "{tmp}/pairs.jsonl: not UTF-8 text (byte 70, line 2: 0xe9); convert it, e.g. iconv -f latin1 -t utf-8",
         write("pairs.jsonl", (PAIRS + '{"sentence_good": "caf\xe9 a", "sentence_bad": "a b"}\n').encode("latin-1"))),
    Case("eval-pairs-per-pair-a-directory", ("eval", "pairs", "{clm}", "{tmp}/pairs.jsonl", "--per-pair", "{tmp}/out"),
         "--per-pair: {tmp}/out is a directory; give a file to write",
         steps(write("pairs.jsonl", PAIRS), mkdir("out"))),
    Case("eval-pairs-per-pair-is-the-input", ("eval", "pairs", "{clm}", "{tmp}/pairs.jsonl", "--per-pair",
                                              "{tmp}/pairs.jsonl"),
         "--per-pair: {tmp}/pairs.jsonl is the input file {tmp}/pairs.jsonl; " + REPLACES_INPUT,
         write("pairs.jsonl", PAIRS)),
    Case("eval-pairs-on-simcse", ("eval", "pairs", "{simcse}", "{tmp}/pairs.jsonl"),
         "minimal pairs need a language model; objective 'simcse' declares none (Objective.language_model() is None)",
         write("pairs.jsonl", '{"sentence_good": "a b", "sentence_bad": "b a"}\n')),
    Case("pairs-make-exists", ("pairs", "make", "wikitext-2/test.txt", "{tmp}/out.jsonl"),
         "OUT: {tmp}/out.jsonl exists; pass --overwrite to replace it", write("out.jsonl", "keep me\n")),
    Case("pairs-make-no-usable-sentence", ("pairs", "make", "{tmp}/short.txt", "{tmp}/out.jsonl"),
         "{tmp}/short.txt: no sentence of 5-30 words to perturb (--split auto; --min-words, --max-words)",
         write("short.txt", "It rained. We ran home, fast.\n\nThe end.\n")),
    Case("pairs-make-out-a-directory", ("pairs", "make", "wikitext-2/test.txt", "{tmp}/out", "--overwrite"),
         "OUT: {tmp}/out is a directory; give a file to write", mkdir("out")),
    Case("pairs-make-out-is-the-corpus", ("pairs", "make", "{tmp}/corpus.txt", "{tmp}/corpus.txt", "--overwrite"),
         "OUT: {tmp}/corpus.txt is the input file {tmp}/corpus.txt; " + REPLACES_INPUT,
         write("corpus.txt", "The cat sat on the mat and looked at the door .\n")),
    Case("generate-temperature-nan", ("generate", "{clm}", "hello", "--temperature", "nan"),
         "--temperature: must be >= 0 (0 = greedy), got nan"),
    Case("generate-temperature-inf", ("generate", "{clm}", "hello", "--temperature", "inf"),
         "--temperature: must be finite (large values sample nearly uniformly), got inf"),
    Case("generate-seed-beyond-64-bits", ("generate", "{clm}", "hello", "--seed", str(2**64)),
         f"--seed: must be in [0, {2**64 - 1}] (a 64-bit generator seed; prompt n uses seed + n), got {2**64}"),
    Case("predict-latin1-csv", ("predict", "{ft}", "{tmp}/new.csv"), "{tmp}/new.csv: " + LATIN1_CSV_LINE,
         write("new.csv", LATIN1_CSV)),
    Case("predict-latin1-jsonl", ("predict", "{ft}", "{tmp}/new.jsonl"), "{tmp}/new.jsonl: " + LATIN1_JSONL_LINE,
         write("new.jsonl", LATIN1_JSONL)),
    Case("predict-out-is-the-input", ("predict", "{ft}", "{tmp}/new.csv", "--out", "{tmp}/new.csv"),
         "--out: {tmp}/new.csv is the input file {tmp}/new.csv; " + REPLACES_INPUT,
         write("new.csv", "text\na fine film\n")),
    Case("predict-out-unwritable", ("predict", "{ft}", "{tmp}/new.csv", "--out", "/proc/x"),
         "--out: cannot write in /proc (No such file or directory); choose another place",
         write("new.csv", "text\na fine film\n")),
    Case("predict-device-cuda-on-a-cpu-build", ("predict", "{ft}", "{tmp}/new.csv", "--device", "cuda"), NO_CUDA,
         write("new.csv", "text\na fine film\n"), patch=no_cuda),
    Case("study-unknown-key", ("study", "{tmp}/s.yaml"),
         "{tmp}/s.yaml: unknown key 'study.budget'; did you mean 'study.budgets'?",
         write("s.yaml", "budget: [1e10]\nruns:\n  - {name: a, config: configs/clm.yaml}\n")),
    Case("study-budgets-alike", ("study", "{tmp}/s.yaml"),
         "{tmp}/s.yaml: key 'runs[0].budgets': 2e+09 and 2.004e+09 both make the cell 'a-2e09' (cells are named by 3 "
         "significant digits); make them differ within those",
         write("s.yaml", "budgets: [2.0e9, 2.004e9]\nruns:\n  - {name: a, config: configs/clm.yaml}\n")),
    Case("study-cell-json-damaged", ("study", "{tmp}/s.yaml"),
         "{tmp}/study/cells/a-1e10/probe_sst2.json: not valid JSON (Expecting property name enclosed in double quotes, "
         "line 1 column 2); delete it and run the study again to redo that step",
         steps(write_here("s.yaml", STUDY), write("study/cells/a-1e10/probe_sst2.json", "{"))),
    Case("study-cell-trained-otherwise", ("study", "{tmp}/s.yaml"),
         "{tmp}/s.yaml: cell a-1e10 was trained with other settings (model.hidden_size 64 -> 256) under {tmp}/study; "
         "restore them, or give the study another output_dir",
         steps(write_here("s.yaml", STUDY), write("study/cells/a-1e10/train.json", json.dumps(
             {"cell": "a-1e10", "config": "configs/clm.yaml", "settings": {"model.hidden_size": 64}})))),
    Case("study-cards-named-alike", ("study", "{tmp}/s.yaml"),
         "{tmp}/s.yaml: key 'evaluate.probe.tasks[1]': {tmp}/b.yaml and {tmp}/a.yaml are both named 'toy'; give the "
         "cards distinct names",
         steps(write_here("s.yaml", STUDY + "evaluate:\n  probe: {tasks: [{tmp}/a.yaml, {tmp}/b.yaml]}\n"),
               write("a.yaml", CARD), write("b.yaml", CARD))),
    Case("finetune-unknown-task", ("finetune", "{mlm}", "sst", FT),
         "unknown task 'sst': choose a GLUE task (cola sst2 mrpc stsb qqp mnli qnli rte wnli), glue (all of them), or "
         "the path of a task card (.yaml); did you mean 'sst2'?"),
    Case("finetune-unknown-key", ("finetune", "{mlm}", "rte", "finetune.epoch=3", FT),
         "overrides: unknown key 'finetune.epoch'; did you mean 'finetune.epochs'?"),
    Case("finetune-non-finetune-key", ("finetune", "{mlm}", "rte", "train.lr=1e-4", FT),
         "override 'train.lr=1e-4': `lmssl finetune` takes finetune.* keys, not 'train.*'; did you mean "
         "'finetune.lr'?"),
    Case("finetune-key-without-section", ("finetune", "{mlm}", "rte", "epochs=3", FT),
         "override 'epochs=3': keys have the form finetune.field, e.g. finetune.epochs=3"),
    Case("finetune-wrong-type", ("finetune", "{mlm}", "rte", "finetune.lr=fast", FT),
         "overrides: key 'finetune.lr': expected a number, got 'fast'"),
    Case("finetune-lr-inf", ("finetune", "{mlm}", "rte", "finetune.lr=.inf", FT),
         "overrides: key 'finetune.lr': must be a finite number, got inf"),
    Case("finetune-seed-beyond-2-32", ("finetune", "{mlm}", "rte", "finetune.seed=4294967295", "finetune.seeds=2",
                                       FT),
         "overrides: key 'finetune.seed': seed + seeds - 1 must be at most 4294967295 (2**32 - 1), got 4294967296"),
    Case("finetune-max-length-4", ("finetune", "{mlm}", "rte", "finetune.max_length=4", FT),
         "overrides: key 'finetune.max_length': must be at least 8"),
    Case("finetune-glue-task-absent", ("finetune", "{mlm}", "rte", "finetune.data_root={tmp}/root", FT),
         "GLUE task 'rte' is not present under the data root {tmp}/root: glue/RTE/train.tsv, glue/RTE/dev.tsv not "
         "found (standard GLUE layout glue/<TASK>/train.tsv, dev.tsv; set LMSSL_DATA or finetune.data_root)",
         mkdir("root")),
    Case("finetune-glue-none-present", ("finetune", "{mlm}", "glue", "finetune.data_root={tmp}/root", FT),
         "no GLUE task under the data root {tmp}/root (expected glue/<TASK>/train.tsv and dev.tsv); set LMSSL_DATA or "
         "finetune.data_root", mkdir("root")),
    Case("finetune-card-missing", ("finetune", "{mlm}", "{tmp}/missing.yaml", FT),
         "task card not found: {tmp}/missing.yaml"),
    Case("finetune-card-invalid-yaml", ("finetune", "{mlm}", "{tmp}/toy.yaml", FT),
         "{tmp}/toy.yaml: not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)",
         write("toy.yaml", "train: [a\n")),
    Case("finetune-card-unknown-key", ("finetune", "{mlm}", "{tmp}/toy.yaml", FT),
         "{tmp}/toy.yaml: unknown key 'lable_column'; did you mean 'label_column'?",
         write("toy.yaml", CARD.replace("label_column", "lable_column"))),
    Case("finetune-card-not-a-mapping", ("finetune", "{mlm}", "{tmp}/toy.yaml", FT),
         "{tmp}/toy.yaml: a task card is a mapping with the keys name, train, dev, format, header, quoting, "
         "text_columns, label_column, labels, regression, metrics, grid", write("toy.yaml", "- train.csv\n")),
    Case("finetune-card-bad-format", ("finetune", "{mlm}", "{tmp}/toy.yaml", FT),
         "{tmp}/toy.yaml: key 'format': invalid value 'xlsx'; choose one of auto, tsv, csv, jsonl",
         write("toy.yaml", CARD + "format: xlsx\n")),
    Case("finetune-card-train-missing", ("finetune", "{mlm}", "{tmp}/toy.yaml", FT),
         "task 'toy': file not found: train.csv (looked in {tmp} and {data}; the data root is set with LMSSL_DATA or "
         "finetune.data_root)", write("toy.yaml", CARD)),
    Case("finetune-card-bad-label", ("finetune", "{mlm}", "{tmp}/toy.yaml", FT),
         "{tmp}/train.csv:3: label 'maybe' in column 'label' is not one of ['no', 'yes'] (the task card's labels)",
         steps(write("toy.yaml", CARD), write("train.csv", "text,label\ngood film,yes\nso so,maybe\n"))),
    Case("finetune-card-nan-regression-label", ("finetune", "{mlm}", "{tmp}/toy.yaml", FT),
         "{tmp}/train.csv:3: label 'nan' in column 'label' is not a finite number (the task is a regression)",
         steps(write("toy.yaml", CARD.replace('labels: ["no", "yes"]', "regression: true")),
               write("train.csv", "text,label\ngood film,4.5\nso so,nan\n"))),
    Case("finetune-card-data-latin1", ("finetune", "{mlm}", "{tmp}/toy.yaml", FT),
         "{tmp}/train.csv: " + LATIN1_CSV_LINE,
         steps(write("toy.yaml", CARD), write("train.csv", LATIN1_CSV))),
    Case("finetune-card-latin1", ("finetune", "{mlm}", "{tmp}/toy.yaml", FT),
         f"{{tmp}}/toy.yaml: not UTF-8 text (byte {len(CARD) + 5}, line 7: 0xe9); convert it, e.g. iconv -f latin1 -t "
         f"utf-8", write("toy.yaml", (CARD + "# caf\xe9\n").encode("latin-1"))),
    Case("finetune-device-cuda-on-a-cpu-build", ("finetune", "{mlm}", "{tmp}/toy.yaml", "finetune.device=cuda", FT),
         NO_CUDA, steps(write("toy.yaml", CARD), write("train.csv", "text,label\ngood film,yes\nbad film,no\n")),
         patch=no_cuda),
    Case("finetune-output-holds-results", ("finetune", "{mlm}", "{tmp}/toy.yaml", FT),
         "key 'finetune.output_dir': {tmp}/ft already holds results.json; set finetune.overwrite=true or choose "
         "another finetune.output_dir",
         steps(write("toy.yaml", CARD), write("ft/results.json", '{"task": "toy"}\n'))),
    Case("finetune-finetuned-model", ("finetune", "{ft}", "{tmp}/toy.yaml", FT),
         "{ft} is a fine-tuned toy classifier (finetune.json): it keeps the encoder but no pretraining heads; give the "
         "pretrained checkpoint it came from ({mlm_ckpt}) instead",
         steps(write("toy.yaml", CARD), write("train.csv", "text,label\ngood film,yes\nbad film,no\n"))),
]


# --- the test --------------------------------------------------------------------------------------

def snapshot(roots: list[Path]) -> dict[str, str]:
    """Every path under `roots` (directories as such) with the SHA-256 of each file's contents."""
    listing = {}
    for root in roots:
        listing[str(root)] = "dir" if root.is_dir() else "absent"
        for p in sorted(root.rglob("*")):
            listing[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return listing


def stamps(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time: cheap enough for the 40 MB data root."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(root).rglob("*")) if p.is_file()}


def shown(text: str) -> list[str]:
    """The lines a terminal shows for `text`: a carriage return goes back to the start of the line, and what follows
    overwrites it (a progress bar draws and clears itself this way); trailing blank lines dropped."""
    lines = []
    for raw in text.split("\n"):
        line = ""
        for part in raw.split("\r"):
            line = part + line[len(part):]
        lines.append(line.rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return lines


def fields(fixtures: dict[str, Path], tmp: Path) -> dict[str, object]:
    sizes = {"state_bytes": fixtures["mlm_ckpt"] / "trainer_state.pt",
             "weights_bytes": fixtures["mlm_ckpt"] / "model.safetensors"}
    return {**fixtures, "tmp": tmp, "data": DATA_ROOT, "repo": REPO_ROOT,
            **{k: p.stat().st_size for k, p in sizes.items()}}


def test_the_table_covers_every_command():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {c.argv[0] if c.argv[0] not in ("eval", "tokenizer") else " ".join(c.argv[:2]) for c in CASES}
    assert commands >= {"train", "tokenizer train", "eval ppl", "eval pppl", "eval sts", "eval compare", "export",
                        "import", "finetune", "eval pairs", "pairs", "study"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, fixtures, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    values = fields(fixtures, tmp_path)
    if case.setup is not None:
        case.setup(tmp_path, values)
    if case.patch is not None:
        case.patch(monkeypatch)
    roots = [tmp_path, fixtures["root"], REPO_ROOT / "tokenizers"]
    before, data_before = snapshot(roots), stamps(DATA_ROOT)
    capsys.readouterr()
    try:
        code = main([a.format(**values) for a in case.argv])
    finally:
        if torch.distributed.is_initialized():  # train.engine=deepspeed sets up a process group first
            torch.distributed.destroy_process_group()
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    assert code == 2, err
    assert shown(err) == ["error: " + case.expected.format(**values)]
    assert out == ""
    assert snapshot(roots) == before
    assert stamps(DATA_ROOT) == data_before  # the shared data too (a case once wrote over wikitext-2/test.txt)
