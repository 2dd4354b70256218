"""GLUE-style fine-tuning and linear probing: metrics, task cards, inputs and pooling, training, CLI."""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from helpers import FINETUNE_TINY, KINDS, cli, fake_glue, open_finetuned, open_model, tiny_config, write

from lmssl.config import ConfigError, finetune_config
from lmssl.data import load_tokenizer
from lmssl.downstream.encoding import EncodedSet, encode_texts, truncate_pair
from lmssl.downstream.finetune import build_classifier, evaluate, load_source, run_task, selectable, subsample_rows
from lmssl.downstream.probe import fold_standardization
from lmssl.downstream.task_metrics import compute_metric, compute_metrics, glue_average, glue_table, mean_std
from lmssl.downstream.tasks import GLUE_TASKS, card_from_dict, glue_card, load_task_card, read_task_file, resolve_file
from lmssl.engine.rng import seed_everything
from lmssl.model.attention import AttnSpec
from lmssl.model.classifier import SequenceClassifier
from lmssl.objectives import build_objective
from lmssl.storage.lock import RunLock
from lmssl.training.prepare import with_vocab

pytestmark = pytest.mark.usefixtures("one_thread")


# --- metrics ---------------------------------------------------------------------------------------

def test_metrics_against_hand_computed_values():
    pred, gold = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    assert compute_metric("accuracy", pred, gold) == pytest.approx(75.0)
    # tp 2, fp 1, fn 0: precision 2/3, recall 1 -> F1 = 2 * (2/3) / (5/3) = 0.8
    assert compute_metric("f1", pred, gold) == pytest.approx(80.0)
    # tp 2, tn 1, fp 1, fn 0: (2*1 - 1*0) / sqrt(3 * 2 * 2 * 1)
    assert compute_metric("mcc", pred, gold) == pytest.approx(100 * 2 / math.sqrt(12))
    # Pearson of (1,2,3,4) and (1,2,3,5): sum dx dy = 6.5, sum dx^2 = 5, sum dy^2 = 8.75
    assert compute_metric("pearson", np.array([1., 2, 3, 4]), np.array([1., 2, 3, 5])) == pytest.approx(
        100 * 6.5 / math.sqrt(5 * 8.75))
    # Spearman of ranks (1,2,3,4) and (1,3,2,4): 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 12 / 60
    assert compute_metric("spearman", np.array([.1, .2, .3, .4]), np.array([1., 3, 2, 4])) == pytest.approx(80.0)
    assert math.isnan(compute_metric("pearson", np.ones(4), np.array([1., 2, 3, 4])))  # constant predictions
    assert selectable(math.nan) == -math.inf < selectable(-5.0)  # an undefined score never wins a selection
    assert compute_metrics(["accuracy", "f1"], pred, gold) == pytest.approx(
        {"accuracy": 75.0, "f1": 80.0, "score": 77.5})
    assert mean_std([70.0, 74.0]) == pytest.approx((72.0, math.sqrt(8.0)))  # sample std (ddof 1)
    assert mean_std([70.0]) == (70.0, 0.0)


def test_glue_average_by_hand_and_berts_table_1():
    # BERT-base, Table 1 of Devlin et al.: the "Average" 79.6 is the mean of 9 columns, MNLI-m and -mm apart, no WNLI
    bert = {"CoLA": 52.1, "SST-2": 93.5, "MRPC": 88.9, "STS-B": 85.8, "QQP": 71.2, "MNLI-m": 84.6, "MNLI-mm": 83.4,
            "QNLI": 90.5, "RTE": 66.4}
    assert glue_average(bert)["glue_average_no_wnli"] == pytest.approx(79.6)

    def result(metrics: dict, card: dict) -> dict:
        return {"card": card, "metrics": metrics, "std": {k: 0.0 for k in metrics}, "seeds": [{}],
                "train_examples": 10, "train_examples_total": 10, "subsample": None,
                "finetune": {"epochs": 3, "lr_used": 1e-4}, "mode": "finetune"}

    one = {"dev": "dev.tsv"}
    results = {
        "cola": result({"mcc": 50.0, "score": 50.0}, {"metrics": ["mcc"], "dev": one}),
        "mrpc": result({"accuracy": 80.0, "f1": 86.0, "score": 83.0}, {"metrics": ["accuracy", "f1"], "dev": one}),
        "stsb": result({"pearson": 84.0, "spearman": 82.0, "score": 83.0},
                       {"metrics": ["pearson", "spearman"], "dev": one}),
        "mnli": result({"matched_accuracy": 80.0, "matched_score": 80.0, "mismatched_accuracy": 81.0,
                        "mismatched_score": 81.0},
                       {"metrics": ["accuracy"], "dev": {"matched": "m", "mismatched": "mm"}}),
        "wnli": result({"accuracy": 56.0, "score": 56.0}, {"metrics": ["accuracy"], "dev": one}),
    }
    markdown, summary = glue_table(results, {"qqp": "missing"}, "test")
    # per column: CoLA 50, MRPC (80 + 86) / 2, STS-B (84 + 82) / 2, MNLI-m 80, MNLI-mm 81, WNLI 56
    assert summary["glue_average"] == pytest.approx((50 + 83 + 83 + 80 + 81 + 56) / 6)
    assert summary["glue_average_no_wnli"] == pytest.approx((50 + 83 + 83 + 80 + 81) / 5)
    assert summary["columns_present"] == 6 and summary["of_columns"] == 10
    assert "| 50.0 | — | 80.0/86.0 | 84.0/82.0 | — | 80.0 | 81.0 | — | — | 56.0 | 72.2 | 75.4 |" in markdown
    assert "qqp: absent (missing)" in markdown


# --- task cards and files --------------------------------------------------------------------------

def card(tmp_path, **overrides):
    raw = {"train": "train.tsv", "dev": "dev.tsv", "text_columns": ["a", "b"], "label_column": "label",
           "labels": ["no", "yes"], **overrides}
    return card_from_dict(raw, str(tmp_path / "task.yaml"))


def test_task_cards_read_tsv_csv_and_jsonl(tmp_path):
    write(tmp_path / "train.tsv", 'a\tb\tlabel\nsays "hi\tthere\tyes\nx\ty\tno\n\n')  # bare quotes, a blank line
    data = read_task_file(card(tmp_path), tmp_path / "train.tsv")
    assert data.texts == [('says "hi', "there"), ("x", "y")] and data.targets.tolist() == [1, 0]
    write(tmp_path / "t.csv", 'text,score\n"one, two",1.5\n"multi\nline",3\n')
    csv_card = card(tmp_path, train="t.csv", text_columns="text", label_column="score", labels=None, regression=True)
    data = read_task_file(csv_card, tmp_path / "t.csv")
    assert data.texts == [("one, two",), ("multi\nline",)] and data.targets.tolist() == [1.5, 3.0]
    assert csv_card.metrics == ["pearson", "spearman"] and csv_card.num_outputs == 1
    write(tmp_path / "t.jsonl", '{"q": "why", "y": 1}\n{"q": "how", "y": 0}\n')
    json_card = card(tmp_path, text_columns=["q"], label_column="y", labels=[0, 1], metrics=["accuracy", "f1"])
    assert read_task_file(json_card, tmp_path / "t.jsonl").targets.tolist() == [1, 0]
    write(tmp_path / "cards" / "mine.yaml", "train: ../t.csv\ndev: ../t.csv\ntext_columns: text\nlabel_column: score\n"
                                            "regression: true\n")
    loaded = load_task_card(tmp_path / "cards" / "mine.yaml")
    assert (loaded.name == "mine"
            and resolve_file(loaded, loaded.train, tmp_path / "nowhere") == tmp_path / "cards" / "../t.csv")


@pytest.mark.parametrize("content, overrides, message", [
    ("a\tb\tlabel\nx\ty\tyes\nx\ty\tmaybe\n", {},
     "train.tsv:3: label 'maybe' in column 'label' is not one of ['no', 'yes']"),
    ("a\tb\tlabel\nx\t \tyes\n", {}, "train.tsv:2: empty text in column 'b'"),
    ("a\tb\tlabel\nx\ty\tyes\nx\tno\n", {}, "train.tsv:3: 2 fields, expected 3 (as the header; a ragged row)"),
    ("a\tc\tlabel\nx\ty\tyes\n", {}, "train.tsv:2: no column 'b'; the row has 'a', 'c', 'label'"),
    ("x\ty\tyes\n", {"header": False, "text_columns": [0, 5], "label_column": 2},
     "train.tsv:1: column 5 does not exist"),
    ("a\tb\tlabel\nx\ty\thigh\n", {"labels": None, "regression": True},
     "train.tsv:2: label 'high' in column 'label' is not a number"),
    ("a\tb\tlabel\nx\ty\t1.5\nx\ty\t1e39\n", {"labels": None, "regression": True},
     "train.tsv:3: label '1e39' in column 'label' is not a finite number (the task is a regression)"),
    ('{"a": "x", "b": "y", "label": Infinity}\n', {"train": "train.jsonl", "labels": None, "regression": True},
     "train.jsonl:1: label inf in column 'label' is not a finite number"),
    ('{"a": "x", "label": "yes"}\n', {"train": "train.jsonl"}, "train.jsonl:1: no key 'b'"),
    ('{"a": "x", "b": "y", "label": "yes"}\nnot json\n', {"train": "train.jsonl"}, "train.jsonl:2: not valid JSON"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, content, overrides, message):
    c = card(tmp_path, **overrides)
    path = write(tmp_path / c.train, content)
    with pytest.raises(ConfigError) as e:
        read_task_file(c, path)
    assert str(e.value).startswith(str(tmp_path)) and message in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    ({"lable_column": "x"}, "unknown key 'lable_column'; did you mean 'label_column'?"),
    ({"regression": True}, "key 'labels': give either a label list"),
    ({"metrics": ["accuracy", "pearson"]}, "unknown classification metric 'pearson'"),
    ({"labels": ["a", "b", "c"], "metrics": ["f1"]}, "f1 is binary"),
    ({"text_columns": ["a", "b", "c"]}, "key 'text_columns': one column"),
    ({"format": "xlsx"}, "key 'format': invalid value 'xlsx'"),
])
def test_bad_task_cards_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match="task.yaml") as e:
        card(tmp_path, **overrides)
    assert message in str(e.value)


def test_missing_file_names_both_places(tmp_path):
    with pytest.raises(ConfigError, match=r"task 'task': file not found: train.tsv \(looked in .*LMSSL_DATA"):
        resolve_file(card(tmp_path), "train.tsv", tmp_path / "root")


def test_glue_cards_read_the_real_files(data_root):
    counts = {}
    for task in ("cola", "mrpc", "stsb", "rte"):
        c = glue_card(task)
        counts[task] = [len(read_task_file(c, resolve_file(c, f, data_root))) for f in (c.train, *c.dev.values())]
    # the official sizes (../shared/data/README.md): CoLA has no header, MRPC a byte-order mark and bare quotes
    assert counts == {"cola": [8551, 1043], "mrpc": [3668, 408], "stsb": [5749, 1500], "rte": [2490, 277]}
    mrpc = read_task_file(glue_card("mrpc"), data_root / "glue/MRPC/dev.tsv")
    assert int(mrpc.targets.sum()) == 279 and mrpc.texts[0][1].startswith('" The foodservice')
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert glue_card("mnli").dev == {"matched": "glue/MNLI/dev_matched.tsv",
                                     "mismatched": "glue/MNLI/dev_mismatched.tsv"}


# --- inputs and pooling ----------------------------------------------------------------------------

def test_truncate_pair_is_berts():
    assert truncate_pair([1, 2, 3, 4, 5], [6, 7], 4) == ([1, 2], [6, 7])
    assert truncate_pair([1, 2], [3, 4], 3) == ([1, 2], [3])  # ties: the second loses
    assert truncate_pair([1], [2], 5) == ([1], [2])


def test_pair_encoding_for_encoders_and_causal_models(tmp_path):
    wp = load_tokenizer(tiny_config("mlm", tmp_path))
    v = wp.tokenizer.token_to_id
    ids, types = encode_texts(wp, [("The cat", "a dog")], causal=False, max_length=128)  # uncased tokenizer
    assert ids[0].tolist() == [v("[CLS]"), v("the"), v("cat"), v("[SEP]"), v("a"), v("dog"), v("[SEP]")]
    assert types[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    ids, types = encode_texts(wp, [("the cat sat on the mat",)], causal=False, max_length=5)
    assert ids[0].tolist() == [v("[CLS]"), v("the"), v("cat"), v("sat"), v("[SEP]")] and types[0].tolist() == [0] * 5
    bpe = load_tokenizer(tiny_config("clm", tmp_path))
    eos, a, b = bpe.eos_id, bpe.encode_batch(["the cat"])[0], bpe.encode_batch(["a dog"])[0]
    ids, types = encode_texts(bpe, [("the cat", "a dog")], causal=True, max_length=128)
    assert ids[0].tolist() == [eos, *a, eos, *b, eos] and types[0].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def tiny_classifier(tmp_path, objective: str, *extra) -> tuple[SequenceClassifier, object, object]:
    cfg = tiny_config(objective, tmp_path, *extra)
    tok = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tok.vocab_size)
    causal = build_objective(cfg, tok).causal
    return SequenceClassifier(cfg.model, causal, 2, False, use_pooler=not causal).eval(), tok, cfg


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_pooled_state_is_the_last_real_token_or_cls_whatever_the_padding(tmp_path, objective):
    model, tok, _ = tiny_classifier(tmp_path, objective)
    causal = objective == "clm"
    texts = [("a short one", "b"), ("a much longer sentence with many more words in it", "and a second part too")]
    ids, types = encode_texts(tok, texts, causal, 64)
    targets = np.zeros(2, dtype=np.int64)
    padded = EncodedSet(ids, types, targets, 0, causal, model.use_types).batch(np.array([0, 1]))
    alone = EncodedSet(ids, types, targets, 0, causal, model.use_types).batch(np.array([0]))
    assert padded.input_ids.shape[1] > alone.input_ids.shape[1] == len(ids[0])  # right padding of row 0
    with torch.no_grad():
        feats = model.features(padded)
        full = model.encoder(torch.from_numpy(ids[0])[None], AttnSpec.dense(causal),
                             torch.from_numpy(types[0])[None] if model.use_types else None)[0]
        position = len(ids[0]) - 1 if causal else 0  # the last real token (GPT) or [CLS]
        assert torch.allclose(feats[0], full[position], atol=1e-5)
        assert torch.allclose(model.features(alone)[0], feats[0], atol=1e-5)
        assert padded.pool_index.tolist() == ([len(ids[0]) - 1, len(ids[1]) - 1] if causal else [0, 0])
        assert model.logits(padded).shape == (2, 2)


# --- training --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_every_objective_fine_tunes(checkpoints, toy_task, tmp_path, kind):
    source = load_source(checkpoints[kind])
    fcfg = finetune_config([*FINETUNE_TINY, "finetune.epochs=1", "finetune.batch_size=16"])
    c = load_task_card(toy_task)
    seed_everything(0)
    model = build_classifier(source, c, fcfg)
    _, _, objective = open_model(checkpoints[kind])
    assert all(torch.equal(v, objective.encoder().state_dict()[k]) for k, v in model.encoder.state_dict().items())
    if kind == "mlm_nsp":  # the pretrained NSP pooler is reused, unless asked not to
        assert torch.equal(model.pooler.dense.weight, objective.pooler.dense.weight)
        fresh = build_classifier(source, c, finetune_config(["finetune.reuse_pooler=false"]))
        assert not torch.equal(fresh.pooler.dense.weight, objective.pooler.dense.weight)
    assert (model.pooler is None) == (kind == "clm")
    results = run_task(source, c, fcfg, tmp_path / kind)
    assert math.isfinite(results["metrics"]["accuracy"]) and results["train_examples"] == 64
    assert results["pooling"] == {"clm": "last token", "mlm_nsp": "[CLS] + pretrained pooler"}.get(
        kind, "[CLS] + fresh pooler")
    scratch = build_classifier(source, c, finetune_config(["finetune.from_scratch=true"]))
    assert not torch.equal(scratch.encoder.embeddings.word.weight, model.encoder.embeddings.word.weight)


def test_fine_tuning_dropout_is_its_own_whatever_pretraining_used(checkpoints, toy_task):
    source = load_source(checkpoints["mlm_nsp"])
    source = dataclasses.replace(source, cfg=dataclasses.replace(
        source.cfg, model=dataclasses.replace(source.cfg.model, dropout=0.0, attention_dropout=0.0)))
    for p in (0.1, 0.0, 0.3):
        model = build_classifier(source, load_task_card(toy_task), finetune_config([f"finetune.dropout={p}"]))
        rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        rates |= {m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")}
        assert rates == {p}
    with pytest.raises(ConfigError, match=r"key 'finetune.dropout': must be in \[0, 1\)"):
        finetune_config(["finetune.dropout=1"])


@pytest.mark.parametrize("solver", ["lbfgs", "adamw"])
def test_probe_leaves_the_encoder_bit_identical_and_trains_the_head(solver, checkpoints, toy_task, tmp_path):
    source = load_source(checkpoints["mlm_nsp"])
    c = load_task_card(toy_task)
    fcfg = finetune_config([*FINETUNE_TINY, "finetune.probe=true", "finetune.epochs=4", "finetune.batch_size=8",
                            f"finetune.probe_solver={solver}"])
    results = run_task(source, c, fcfg, tmp_path / "probe")
    assert results["mode"] == "probe"
    assert results["finetune"]["lr_used"] == (fcfg.probe_lr if solver == "adamw" else None)
    model, _, info = open_finetuned(tmp_path / "probe" / "best")
    assert model.pooler is None and info["mode"] == "probe"
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, source.encoder_state[k]), k  # bit-identical
    seed_everything(0)
    initial = build_classifier(source, c, fcfg)
    assert not torch.equal(model.head.weight, initial.head.weight)
    # the standardisation is folded into the saved head: it reproduces the best epoch on raw features
    dev = read_task_file(c, resolve_file(c, c.dev["dev"], toy_task.parent))
    ids, types = encode_texts(source.tokenizer, dev.texts, False, info["max_length"])
    metrics = evaluate(model, EncodedSet(ids, types, dev.targets, 0, False, True), c, 64, torch.device("cpu"))
    assert metrics["accuracy"] == pytest.approx(results["metrics"]["accuracy"], abs=1e-6)


def test_bf16_fine_tuning_learns_and_evaluates_like_fp32(checkpoints, toy_task, tmp_path):
    source = load_source(checkpoints["mlm"])
    c = load_task_card(toy_task)
    fcfg = finetune_config([*FINETUNE_TINY, "finetune.precision=bf16", "finetune.epochs=20", "finetune.batch_size=8",
                            "finetune.lr=2e-3"])
    results = run_task(source, c, fcfg, tmp_path / "bf16")
    losses = [e["train_loss"] for e in results["seeds"][0]["evaluations"]]
    assert losses[-1] < losses[0] - 0.1, losses
    model, tok, info = open_finetuned(tmp_path / "bf16" / "best")
    dev = read_task_file(c, resolve_file(c, c.dev["dev"], toy_task.parent))
    ids, types = encode_texts(tok, dev.texts, False, info["max_length"])
    data = EncodedSet(ids, types, dev.targets, tok.pad_id, False, True)
    batch = data.batch(np.arange(len(data)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.logits(batch).float()
    assert torch.allclose(low, model.logits(batch), atol=0.1) and low.dtype == torch.float32
    bf16 = evaluate(model, data, c, 64, torch.device("cpu"), "bf16")
    assert bf16["accuracy"] == pytest.approx(results["metrics"]["accuracy"], abs=1e-6)  # selection ran in bf16


def test_folding_the_standardization_into_the_head():
    head, x = torch.nn.Linear(3, 2), torch.randn(5, 3) * 4 + 1
    mean, std = x.mean(0), x.std(0)
    expected = head((x - mean) / std)
    fold_standardization(head, mean, std)
    assert torch.allclose(head(x), expected, atol=1e-5)


@pytest.mark.slow
def test_sst2_subsample_loss_falls_and_seeds_give_mean_and_std(checkpoints, data_root, tmp_path):
    source = load_source(checkpoints["mlm"])
    out = tmp_path / "sst2"
    fcfg = finetune_config([*FINETUNE_TINY, "finetune.max_train_examples=320", "finetune.epochs=10", "finetune.lr=2e-3",
                            "finetune.seeds=2", "finetune.seed=3", "finetune.batch_size=16"])
    results = run_task(source, glue_card("sst2"), fcfg, out)
    saved = json.loads((out / "results.json").read_text())
    assert saved["subsample"] == {"max_train_examples": 320, "max_dev_examples": 0, "data_seed": 0,
                                  "method": saved["subsample"]["method"]}
    assert (saved["train_examples"] == 320 and saved["train_examples_total"] == 67349
            and saved["dev_examples"] == {"dev": 872})
    seeds = saved["seeds"]
    assert [s["seed"] for s in seeds] == [3, 4]
    for s in seeds:
        losses = [e["train_loss"] for e in s["evaluations"]]
        assert losses[-1] < losses[0] - 0.1, losses  # training loss falls
        assert s["metrics"]["accuracy"] == max(e["accuracy"] for e in s["evaluations"])  # best epoch kept
    accs = [s["metrics"]["accuracy"] for s in seeds]
    assert saved["metrics"]["accuracy"] == pytest.approx(np.mean(accs))
    assert saved["std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    # the best checkpoint reproduces its dev score
    model, tok, info = open_finetuned(out / "best")
    best = saved["best"]
    assert info["seed"] == best["seed"] and info["epoch"] == best["epoch"]
    c = glue_card("sst2")
    dev = read_task_file(c, resolve_file(c, c.dev["dev"], data_root))
    ids, types = encode_texts(tok, dev.texts, False, info["max_length"])
    metrics = evaluate(model, EncodedSet(ids, types, dev.targets, tok.pad_id, False, True), c, 64, torch.device("cpu"))
    assert metrics["accuracy"] == pytest.approx(best["score"]) == pytest.approx(max(accs))
    assert results["metrics"] == saved["metrics"]


def test_subsample_is_seeded():
    rows = subsample_rows(1000, 50, data_seed=0)
    assert len(rows) == len(set(rows)) == 50 and rows.tolist() == sorted(rows.tolist())  # file order kept
    assert np.array_equal(rows, subsample_rows(1000, 50, data_seed=0))
    assert not np.array_equal(rows, subsample_rows(1000, 50, data_seed=1))
    assert subsample_rows(40, 50, data_seed=0).tolist() == list(range(40))  # fewer examples than asked: all


# --- command line ----------------------------------------------------------------------------------

def test_cli_prints_json_last_and_writes_results(checkpoints, toy_task, tmp_path, capsys):
    out = tmp_path / "cli"
    code, stdout, _ = cli(capsys, "finetune", str(checkpoints["clm"]), str(toy_task), *FINETUNE_TINY,
                            "finetune.epochs=1", f"finetune.output_dir={out}")
    assert code == 0
    line = json.loads(stdout.strip().splitlines()[-1])
    assert line["task"] == "toy" and set(line) >= {"accuracy", "f1", "score", "seeds", "output_dir"}
    assert (out / "results.json").is_file() and (out / "best" / "model.safetensors").is_file()
    code, _, err = cli(capsys, "finetune", str(checkpoints["clm"]), str(toy_task), f"finetune.output_dir={out}")
    assert code == 2 and "already holds results.json; set finetune.overwrite=true" in err
    # a second fine-tuning into the directory while one runs there stops at once (issue 28: one result vanished)
    before = (out / "results.json").read_bytes()
    with RunLock(out, "finetune.output_dir"):
        code, _, err = cli(capsys, "finetune", str(checkpoints["clm"]), str(toy_task), f"finetune.output_dir={out}",
                           "finetune.overwrite=true")
    assert code == 2 and f"error: key 'finetune.output_dir': {out} is in use by another run (pid {os.getpid()}" in err
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["rte", "finetune.epoch=3"], "unknown key 'finetune.epoch'; did you mean 'finetune.epochs'?"),
    (["rte", "finetune.lr=fast"], "key 'finetune.lr': expected a number"),
    (["rte", "finetune.precision=fp16"],
     "key 'finetune.precision': invalid value 'fp16'; choose one of 'fp32', 'bf16'"),
    (["rte", "train.lr=1e-4"], "takes finetune.* keys, not 'train.*'; did you mean 'finetune.lr'?"),
    (["rte", "epochs=3"], "keys have the form finetune.field"),
    (["qqp"], "GLUE task 'qqp' is not present under the data root"),
    (["qnli"], "glue/QNLI/train.tsv not found"),
    (["sst"], "unknown task 'sst'"),
    (["missing.yaml"], "task card not found: missing.yaml"),
])
def test_cli_errors_are_one_line(checkpoints, data_root, capsys, args, message):
    code, stdout, err = cli(capsys, "finetune", str(checkpoints["mlm"]), *args)
    assert code == 2 and stdout == "" and err.startswith("error: ") and message in err and "Traceback" not in err


def test_cli_glue_runs_the_tasks_present_and_writes_the_table(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LMSSL_DATA", str(fake_glue(tmp_path / "data")))
    out = tmp_path / "glue"
    code, stdout, err = cli(capsys, "finetune", str(checkpoints["electra"]), "glue", *FINETUNE_TINY,
                            "finetune.epochs=1", f"finetune.output_dir={out}")
    assert code == 0, err
    line = json.loads(stdout.strip().splitlines()[-1])
    assert line["task"] == "glue" and line["columns_present"] == 2 and line["absent"] == ["cola", "mnli", "mrpc",
                                                                                          "qnli", "qqp", "stsb", "wnli"]
    table = (out / "glue.md").read_text()
    assert "| CoLA | SST-2 | MRPC |" in table and "mnli: absent" in table
    assert json.loads((out / "glue.json").read_text())["scores"]["RTE"] == pytest.approx(
        json.loads((out / "rte" / "results.json").read_text())["metrics"]["score"])
    # a rerun with the same settings reuses the finished tasks (an interrupted run resumes); other settings refuse
    (out / "rte" / "results.json").write_text(
        (out / "rte" / "results.json").read_text().replace('"task": "rte"', '"task": "RTE*"'))
    code, stdout, err = cli(capsys, "finetune", str(checkpoints["electra"]), "glue", *FINETUNE_TINY,
                            "finetune.epochs=1", f"finetune.output_dir={out}", "finetune.eval_batch_size=16")
    assert code == 0 and "rte: reusing" in err and "sst2: reusing" in err, err
    assert '"task": "RTE*"' in (out / "rte" / "results.json").read_text()
    code, _, err = cli(capsys, "finetune", str(checkpoints["electra"]), "glue", *FINETUNE_TINY, "finetune.epochs=2",
                       f"finetune.output_dir={out}")
    assert code == 2 and "already holds results.json" in err and "finetune.overwrite=true" in err


def test_epoch_batches_group_by_length_covers_every_row_once_with_little_padding():
    from lmssl.downstream.encoding import epoch_batches

    lengths = np.random.default_rng(1).integers(3, 60, 2000)

    def padding(batches):
        return sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches) / lengths.sum()

    plain = epoch_batches(np.random.default_rng(0), 2000, 32)
    grouped = epoch_batches(np.random.default_rng(0), 2000, 32, lengths)
    for batches in (plain, grouped):
        assert sorted(np.concatenate(batches).tolist()) == list(range(2000))  # every row once per epoch
        assert [len(b) for b in batches].count(32) == 62  # 2000 = 62 x 32 + 16
    # batches cut from length-sorted mega-batches of GROUP_BATCHES (50) batches: lengths within a batch are close
    assert padding(grouped) < 0.1 < 0.5 < padding(plain)
    first = epoch_batches(np.random.default_rng(0), 2000, 32, lengths)
    assert all(np.array_equal(a, b) for a, b in zip(first, grouped))  # a pure function of the generator
    assert not all(np.array_equal(a, b) for a, b in zip(grouped, epoch_batches(np.random.default_rng(1), 2000, 32,
                                                                                 lengths)))


@pytest.mark.parametrize("classes", [2, 3])
def test_the_lbfgs_probe_head_is_scikit_learns_logistic_regression(classes):
    from sklearn.linear_model import LogisticRegression

    from lmssl.downstream.probe import FeatureSet, fit_linear_head

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long() * (classes - 2)  # labels 0..classes-1 from the features
    head = torch.nn.Linear(5, classes + 1)  # one more class than the data holds: never predicted
    fit_linear_head(head, FeatureSet(x, y), regression=False, seed=0)
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(x.double().numpy(), y.numpy())
    probs = torch.softmax(head(x).detach().double(), -1)
    assert torch.allclose(probs[:, :classes], torch.from_numpy(reference.predict_proba(x.double().numpy())),
                          atol=1e-5)
    assert float(probs[:, classes].max()) == 0.0
    assert torch.equal(head(x).argmax(-1), torch.from_numpy(reference.predict(x.double().numpy())))


@pytest.mark.parametrize("kind", ["mlm_nsp", "clm"])  # post-LN BERT; pre-LN GPT-2 with a final norm (at the full lr)
def test_layer_wise_lr_decay_scales_each_block_by_its_depth(kind, checkpoints, toy_task):
    from lmssl.downstream.finetune import finetune_engine

    source = load_source(checkpoints[kind])
    model = build_classifier(source, load_task_card(toy_task), finetune_config(["finetune.dropout=0"]))
    depth = len(model.encoder.layers)
    engine = finetune_engine(model, finetune_config(["finetune.lr=1e-3", "finetune.layer_lr_decay=0.5",
                                                     "finetune.warmup_ratio=0"]), 10, 0, torch.device("cpu"))
    optimizer = engine.optimizers["adamw"][0]
    peak = {id(p): group["initial_lr"] for group in optimizer.param_groups for p in group["params"]}
    assert (model.encoder.final_norm is not None) == (kind == "clm")
    expected = {"head": 1e-3, "pooler": 1e-3, "encoder.final_norm": 1e-3,
                "encoder.embeddings": 1e-3 * 0.5 ** (depth + 1),
                **{f"encoder.layers.{i}.": 1e-3 * 0.5 ** (depth - i) for i in range(depth)}}
    for name, p in model.named_parameters():
        want = next(v for prefix, v in expected.items() if name.startswith(prefix))
        assert peak[id(p)] == pytest.approx(want), name
    # decay 1 is the single-lr optimizer: two groups (decayed or not), as before the setting existed
    plain = finetune_engine(model, finetune_config([]), 10, 0, torch.device("cpu")).optimizers["adamw"][0]
    assert [g["weight_decay"] for g in plain.param_groups] == [0.01, 0.0]
    assert {g["initial_lr"] for g in plain.param_groups} == {1e-4}
    with pytest.raises(ConfigError, match=r"key 'finetune.layer_lr_decay': must be in \(0, 1\]"):
        finetune_config(["finetune.layer_lr_decay=0"])
