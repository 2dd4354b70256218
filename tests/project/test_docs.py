"""Every `lmssl ...` line of a ```bash block in README.md and docs/*.md runs, so the docs cannot rot.

Each command runs as written, in a fresh working directory that holds what a reader would have at that point: the
repository's configs and tokenizers, tiny trained runs in runs/ (made with the shipped configs), a fine-tuned model,
Hugging Face exports where the docs say path/to/..., and the small files the docs name (corpus.txt, new.tsv, ...).
Only the sizes shrink, by arguments appended after the documented ones: tiny training (a 1-layer trunk, 2 steps, on
the WikiText-2 validation split unless the command names its corpus), fine-tuning on 16 examples, text scores on the
first 200 words, and studies with --print (their plan, no training). The models under path/to/ stand for other
people's (Hugging Face exports of another shape than the tiny runs): a command starting from one gets no shape, so
a config that pins another fails as it would for the reader. The data root holds WikiText-2 and the STS sets, and
GLUE tasks as tiny files (RTE, SST-2) plus the real STS-B."""
from __future__ import annotations

import json
import shlex
import shutil

import pytest
from helpers import DATA_ROOT, REPO_ROOT, fake_glue, toy_pair_task, write

from lmssl.cli import main
from lmssl.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
TRAIN_TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=64",
              "data.seq_len=32", "data.train=wikitext-2/valid.txt", "data.valid_fraction=0.1", "train.max_steps=2",
              "train.batch_size=4", "train.save_every=2", "train.log_every=1", "train.warmup_steps=1",
              "train.tensorboard=false", "train.num_threads=1", "eval.every=0", "eval.max_batches=1",
              "eval.likelihood_max_words=0"]
SHAPE = ("model.hidden_size", "model.num_layers", "model.num_heads", "model.ffn_size")
FINETUNE_TINY = ["finetune.max_train_examples=16", "finetune.max_dev_examples=16", "finetune.epochs=1",
                 "finetune.min_steps=0", "finetune.eval_batch_size=16", "finetune.num_threads=1"]


def documented_commands() -> dict[str, str]:
    """command line -> where it is first shown (file:line)."""
    found: dict[str, str] = {}
    for path in DOCS:
        in_bash = False
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith("```"):
                in_bash = line.strip() == "```bash"
            elif in_bash and line.startswith("lmssl "):
                found.setdefault(line.strip(), f"{path.relative_to(REPO_ROOT)}:{n}")
    return found


COMMANDS = documented_commands()


def shrunk(argv: list[str]) -> list[str]:
    """The command with the sizes of a test appended (see the module docstring)."""
    words = argv[:2]
    if words[0] == "train" and len(argv) > 1 and not argv[1].startswith("-"):
        own_corpus = any(a.startswith("data.train=") for a in argv)
        other_shape = any(a.startswith("model.init_from=path/to/") for a in argv)
        return argv + [a for a in TRAIN_TINY if not (own_corpus and a.startswith("data.train="))
                       and not (other_shape and a.startswith(SHAPE))]
    if words[0] == "finetune":
        return argv + FINETUNE_TINY
    if words in (["eval", "ppl"], ["eval", "pppl"], ["eval", "compare"]) and "--max-words" not in argv:
        return argv + ["--max-words", "200"]
    if words[0] == "study":
        return argv + ["--print"]
    return argv


def lmssl(*argv: str) -> None:
    code = main(list(argv))
    assert code == 0, f"lmssl {shlex.join(argv)} exited {code}"


@pytest.fixture(scope="module")
def reader(tmp_path_factory, data_root):
    """What a reader of the docs has: configs, tokenizers, data, tiny runs and the files the docs name."""
    home = tmp_path_factory.mktemp("reader")
    (home / "configs").symlink_to(REPO_ROOT / "configs")
    (home / "tokenizers").mkdir()
    for tokenizer in (REPO_ROOT / "tokenizers").iterdir():
        (home / "tokenizers" / tokenizer.name).symlink_to(tokenizer)
    data = home / "data"
    for name in ("wikitext-2", "wikitext-2-raw", "sts"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).symlink_to((DATA_ROOT / name).resolve())
    fake_glue(data)
    (data / "glue" / "STS-B").symlink_to((DATA_ROOT / "glue" / "STS-B").resolve())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.setenv("LMSSL_DATA", str(data))
        mp.setenv("LMSSL_TOKENIZERS", str(home / "tokenizers"))
        for config in ("mlm", "clm", "electra", "simcse"):  # simcse starts from runs/mlm, as its config says
            lmssl("train", f"configs/{config}.yaml", *TRAIN_TINY, f"train.output_dir=runs/{config}")
        lmssl("finetune", "runs/mlm", "sst2", *FINETUNE_TINY)
        lmssl("pairs", "make", "wikitext-2/test.txt", "pairs.jsonl", "--per-type", "20")
        other = [a for a in TRAIN_TINY if not a.startswith(SHAPE)] + ["model.hidden_size=48", "model.num_heads=3",
                                                                      "model.ffn_size=96"]
        lmssl("train", "configs/mlm.yaml", *other, "train.output_dir=other/mlm")
        for name in ("hf-model", "bert-dir", "all-MiniLM-L6-v2"):
            lmssl("export", "other/mlm", f"path/to/{name}")
    (home / "runs" / "mlm-6k").symlink_to("mlm")
    lines = (DATA_ROOT / "wikitext-2" / "valid.txt").read_text().splitlines()[:1500]  # about 20 articles
    for name in ("corpus.txt", "my.txt", "my_corpus.txt"):
        write(home / name, "\n".join(lines) + "\n")
    write(home / "my_heldout.txt", "\n".join(lines[:40]) + "\n")  # small: the quick start scores 5,000 words
    # the quick start's (docs/quickstart.md) own task and the runs its later steps start from
    for name in ("mlm", "clm"):
        shutil.copytree(home / "runs" / name, home / "runs" / f"my-{name}", ignore=shutil.ignore_patterns("*.lock"))
    reviews = [f"{'a fine , moving film' if i % 2 else 'a dull , tired story'} number {i} .\t{i % 2}\n"
               for i in range(24)]
    write(home / "my-task" / "train.tsv", "sentence\tlabel\n" + "".join(reviews))
    write(home / "my-task" / "dev.tsv", "sentence\tlabel\n" + "".join(reviews[:12]))
    write(home / "my-task" / "task.yaml", 'name: my-task\ntrain: train.tsv\ndev: dev.tsv\ntext_columns: sentence\n'
                                          'label_column: label\nlabels: ["0", "1"]\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.setenv("LMSSL_DATA", str(data))
        lmssl("finetune", "runs/my-mlm", "my-task/task.yaml", *FINETUNE_TINY)
    write(home / "more.jsonl", "".join(json.dumps({"text": line}) + "\n" for line in lines if line.strip()))
    write(home / "new.tsv", "sentence\nit is a good film .\na dull , tired story .\n")
    shutil.copy(toy_pair_task(home / "path" / "to"), home / "path" / "to" / "my_task.yaml")
    write(home / "blimp" / "anaphor_gender_agreement.jsonl",
          "".join((home / "pairs.jsonl").read_text().splitlines(keepends=True)[:10]))
    study = (REPO_ROOT / "configs" / "studies" / "objectives-cpu.yaml").read_text()
    write(home / "my-study.yaml", study.replace("name: objectives-cpu", "name: my-study"))
    return home


@pytest.mark.parametrize("command", list(COMMANDS), ids=[COMMANDS[c] for c in COMMANDS])
def test_the_documented_command_runs(command, reader, tmp_path, monkeypatch, capsys):
    argv = shrunk(shlex.split(command)[1:])
    work = tmp_path / "work"  # a fresh working directory: the reader's inputs, its own outputs
    shutil.copytree(reader, work, symlinks=True, ignore=shutil.ignore_patterns("lmssl.lock"))
    monkeypatch.chdir(work)
    monkeypatch.setenv("LMSSL_DATA", str(work / "data"))
    monkeypatch.setenv("LMSSL_TOKENIZERS", str(work / "tokenizers"))
    if argv[:2] == ["pairs", "make"]:
        (work / argv[3]).unlink(missing_ok=True)  # the file it makes
    # what the command writes is not there yet (it runs for the first time), unless it continues it
    if argv[0] == "train" and len(argv) > 1 and argv[1].endswith(".yaml") and "train.resume=true" not in argv:
        shutil.rmtree(work / load_config(argv[1], [a for a in argv[2:] if not a.startswith("model.init_from")])
                      .train.output_dir, ignore_errors=True)
    if argv[0] == "finetune":
        shutil.rmtree(work / "runs" / "finetune")
    try:
        code = main(argv)
    except SystemExit as e:  # --help, --version
        code = e.code
    out, err = capsys.readouterr()
    assert code == 0, f"{COMMANDS[command]}: {command}\n{err[-3000:]}"
    if argv[0].startswith("-") or "--help" in argv or argv[:2] == ["config", "show"]:
        assert out.strip()
    else:  # every other command ends its work with a JSON line on stdout
        assert isinstance(json.loads(out.splitlines()[-1]), dict), out[-2000:]


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 30
    assert "lmssl train configs/mlm.yaml" in COMMANDS  # the main job
