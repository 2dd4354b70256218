"""Corpora through `datasets`: every file format, save_to_disk directories and Hub names read offline from a
(fake) local cache give the same documents; data.valid=auto holds out a deterministic share of data.train."""
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets.arrow_writer import ArrowWriter
from helpers import DATA_ROOT, REPO_ROOT

from lmssl.cli import main
from lmssl.config import ConfigError, load_config
from lmssl.data.corpus import Corpus, held_out, iter_documents
from lmssl.data.paths import corpus_of

DOCS = ["The first document , with a comma .", 'A second one, "quoted" ; and a tab-free line .',
        "Third : the last of them ."]


def write_formats(tmp_path: Path) -> dict[str, Path]:
    """DOCS in every format `datasets` reads, one document per row (blank-line-separated in plain text)."""
    table = pa.table({"id": list(range(len(DOCS))), "text": DOCS})
    paths = {fmt: tmp_path / f"corpus.{fmt}" for fmt in ("txt", "jsonl", "csv", "tsv", "parquet", "arrow")}
    paths["txt"].write_text("\n\n".join(DOCS) + "\n")
    paths["jsonl"].write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCS)))
    datasets.Dataset(table).to_csv(str(paths["csv"]), index=False)
    datasets.Dataset(table).to_csv(str(paths["tsv"]), index=False, sep="\t")
    pq.write_table(table, paths["parquet"])
    with pa.ipc.new_stream(str(paths["arrow"]), table.schema) as writer:
        writer.write_table(table)
    paths["disk"] = tmp_path / "saved"
    datasets.Dataset(table).save_to_disk(str(paths["disk"]))
    return paths


def fake_hub_cache(cache: Path, name: str, config: str, splits: dict[str, list[str]]) -> None:
    """What `datasets.load_dataset(name, config)` leaves in HF_DATASETS_CACHE after a download: one Arrow file per
    split and dataset_info.json, under <name>/<config>/<version>/<hash>/."""
    short = name.split("/")[-1]
    target = cache / name.replace("/", "___") / config / "0.0.0" / "0123456789abcdef"
    target.mkdir(parents=True)
    features = datasets.Features({"text": datasets.Value("string")})
    split_dict = datasets.SplitDict(dataset_name=short)
    for split, rows in splits.items():
        with ArrowWriter(features=features, path=str(target / f"{short}-{split}.arrow")) as writer:
            for row in rows:
                writer.write({"text": row})
            count, size = writer.finalize()
        split_dict.add(datasets.SplitInfo(name=split, num_examples=count, num_bytes=size, dataset_name=short))
    datasets.DatasetInfo(features=features, config_name=config, dataset_name=short,
                         splits=split_dict).write_to_directory(str(target))


# WikiText as the Hub has it: one row per line of the file, headings and blank lines included
WIKI_ROWS = ["", " = Alpha = \n", "", " Alpha is a letter . \n", " = = Use = = \n", " It starts words . \n", "",
             " = Beta = \n", "", " Beta follows alpha . \n"]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    fake_hub_cache(cache, "wikitext", "wikitext-2-raw-v1", {"train": WIKI_ROWS, "validation": WIKI_ROWS[7:]})
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache


def test_every_format_and_a_save_to_disk_directory_give_the_same_documents(tmp_path):
    for kind, path in write_formats(tmp_path).items():
        assert list(iter_documents(path)) == DOCS, kind
    assert Corpus(str(tmp_path / "saved")).kind == "disk"


def test_hub_names_read_offline_from_the_local_cache_like_the_text_file(hub_cache, tmp_path):
    text = tmp_path / "wiki.txt"
    text.write_text("".join(row if row.endswith("\n") else row + "\n" for row in WIKI_ROWS))
    expected = ["= Alpha =\nAlpha is a letter .\n= = Use = =\nIt starts words .", "= Beta =\nBeta follows alpha ."]
    assert list(iter_documents(text)) == expected
    hub = Corpus("wikitext:wikitext-2-raw-v1:train")
    assert hub.kind == "hub"
    assert list(hub.documents()) == expected  # rows that are WikiText lines group as the file's lines do
    assert list(iter_documents("wikitext:wikitext-2-raw-v1:validation")) == expected[1:]
    assert hub.identity()["files"][0][0].endswith("wikitext-train.arrow")


def test_a_hub_name_missing_from_the_cache_says_so_in_one_line(hub_cache):
    with pytest.raises(ConfigError) as e:
        list(iter_documents("wikitext:wikitext-103-raw-v1:train"))
    message = str(e.value)
    assert message.startswith("wikitext:wikitext-103-raw-v1:train: the Hub dataset is not in the local datasets "
                              f"cache ({hub_cache}), and lmssl reads the Hub offline only")
    assert "datasets.load_dataset('wikitext', 'wikitext-103-raw-v1', split='train')" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="the Hub dataset is not in the local datasets cache"):
        Corpus("nobody/nothing::train").check()


def test_train_on_an_uncached_hub_name_stops_before_any_work(hub_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "run"
    code = main(["train", "configs/mlm.yaml", "data.train=nobody/nothing::train", f"train.output_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("error: nobody/nothing::train: the Hub dataset is not in the local datasets cache")
    assert not out.exists()


def test_directories_that_are_not_one_dataset_are_refused_with_what_to_do(tmp_path):
    table = pa.table({"text": DOCS})
    datasets.DatasetDict({"train": datasets.Dataset(table), "test": datasets.Dataset(table)}).save_to_disk(
        str(tmp_path / "dict"))
    with pytest.raises(ConfigError, match=r"a DatasetDict saved with save_to_disk; point at one of its splits: "
                                          r".*dict/test, .*dict/train$"):
        list(iter_documents(tmp_path / "dict"))
    assert list(iter_documents(tmp_path / "dict" / "train")) == DOCS
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="a directory, but not one written by Dataset.save_to_disk"):
        list(iter_documents(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="no column 'body' \\(data.text_field\\); columns are: text"):
        list(Corpus(str(tmp_path / "dict" / "train"), text_field="body").documents())


def test_a_file_rewritten_with_its_old_size_and_time_gets_another_cache_key(tmp_path):
    """The tokenization cache is keyed by size, modification time and sampled blocks of the contents: a corpus
    reshuffled and given back its old mtime (cp -p, rsync -t) is re-tokenized, not read from the stale entry."""
    path = tmp_path / "corpus.txt"
    lines = [f"line {i} of a corpus long enough to span several sampled blocks .\n" for i in range(20000)]
    path.write_text("".join(lines))
    before, stat = Corpus(str(path)).identity(), path.stat()
    path.write_text("".join(reversed(lines)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = Corpus(str(path)).identity()
    assert after["files"][0][1:3] == before["files"][0][1:3]  # the same size and time ...
    assert after != before  # ... yet another key
    path.write_text("".join(reversed(lines)))  # the same contents again: the same key but for the time
    assert Corpus(str(path)).identity()["files"][0][3] == after["files"][0][3]


def test_holdout_partitions_the_documents_deterministically(tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("".join(f"document number {i}\n" for i in range(2000)))
    everything = list(iter_documents(corpus))
    held = list(Corpus(str(corpus), holdout=0.05, part="valid").documents())
    kept = list(Corpus(str(corpus), holdout=0.05, part="train").documents())
    assert sorted(held + kept) == sorted(everything) and not set(held) & set(kept)
    assert 0.035 < len(held) / len(everything) < 0.065
    assert held == [d for i, d in enumerate(everything) if held_out(i, 0.05)]  # by index, the same every time
    assert held == list(Corpus(str(corpus), holdout=0.05, part="valid").documents())
    assert set(held) < set(Corpus(str(corpus), holdout=0.10, part="valid").documents())  # nested as it grows
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("one\ntwo\n")
    with pytest.raises(ConfigError, match=r"data.valid=auto held out none of the 2 documents of .*tiny.txt "
                                          r"\(data.valid_fraction=0.01\); data.valid_fraction=(\S+) holds out 1 of "
                                          r"them, or set data.valid") as e:
        list(Corpus(str(tiny), holdout=0.01, part="valid").documents())
    suggested = float(str(e.value).split("data.valid_fraction=")[2].split()[0])  # the advice works as it says
    assert len(list(Corpus(str(tiny), holdout=suggested, part="valid").documents())) == 1
    assert len(list(Corpus(str(tiny), holdout=suggested, part="train").documents())) == 1


def test_valid_defaults_to_auto_when_only_train_is_overridden(tmp_path):
    shipped = load_config(REPO_ROOT / "configs" / "mlm.yaml")
    assert shipped.data.valid == "wikitext-2/valid.txt"
    assert load_config(REPO_ROOT / "configs" / "mlm.yaml", ["data.train=mine.txt"]).data.valid == "auto"
    both = load_config(REPO_ROOT / "configs" / "mlm.yaml", ["data.train=mine.txt", "data.valid=theirs.txt"])
    assert both.data.valid == "theirs.txt"
    assert load_config(REPO_ROOT / "configs" / "simcse.yaml", ["data.train=mine.txt"]).data.valid == ""
    config = tmp_path / "mine.yaml"
    config.write_text("data:\n  train: mine.txt\n")  # a user's config that names no validation corpus
    assert load_config(config).data.valid == "auto"
    with pytest.raises(ConfigError, match=r"key 'data.valid_fraction': must be in \(0, 1\)"):
        load_config(config, ["data.valid_fraction=1"])
    cfg = load_config(config, [f"data.train={tmp_path / 'mine.txt'}"])
    (tmp_path / "mine.txt").write_text("x\n")
    assert corpus_of(cfg, "train").part == "train" and corpus_of(cfg, "valid").part == "valid"
    assert corpus_of(cfg, "valid").location == str(tmp_path / "mine.txt")


@pytest.mark.slow
def test_train_on_a_hub_dataset_and_a_csv_with_held_out_validation(hub_cache, tmp_path):
    """`lmssl train` end to end on a Hub name from the cache and on a CSV file, validated on held-out documents."""
    lines = (DATA_ROOT / "wikitext-2" / "valid.txt").read_text().splitlines()[:400]
    fake_hub_cache(hub_cache, "someone/wiki-lines", "default", {"train": lines})
    datasets.Dataset.from_dict({"body": [line for line in lines if line.strip()]}).to_csv(
        str(tmp_path / "lines.csv"), index=False)
    small = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=64",
             "data.seq_len=32", "train.batch_size=4", "train.max_steps=3", "train.save_every=0",
             "eval.max_batches=2", "eval.likelihood_max_words=50", "data.valid_fraction=0.2"]
    env = {**os.environ, "HF_DATASETS_CACHE": str(hub_cache), "LMSSL_CACHE": str(tmp_path / "cache")}
    for name, data in (("hub", ["data.train=someone/wiki-lines:default:train"]),
                       ("csv", [f"data.train={tmp_path / 'lines.csv'}", "data.text_field=body"])):
        out = tmp_path / name
        run = subprocess.run([sys.executable, "-m", "lmssl", "train", str(REPO_ROOT / "configs" / "clm.yaml"), *small,
                              *data, f"train.output_dir={out}"], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["val_loss"] > 0 and result["val_likelihood_tokens"] > 0, name
        config = (out / "checkpoints" / "step-0000003" / "config.yaml").read_text()
        assert "valid: auto" in config
