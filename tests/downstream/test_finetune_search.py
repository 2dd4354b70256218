"""Fine-tuning beside its baselines, with a budget that fits the data, a dev-set grid and from-scratch comparisons."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import FINETUNE_TINY, cli, fake_glue
from scipy.stats import pearsonr
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score

import lmssl.downstream.finetune as finetune_module
import lmssl.downstream.search as search_module
from lmssl.config import ConfigError, Grid, finetune_config, finetune_grid
from lmssl.downstream.finetune import load_source, run_task
from lmssl.downstream.task_baselines import task_baselines
from lmssl.downstream.task_metrics import glue_table
from lmssl.downstream.tasks import card_from_dict, glue_card, load_task_card, read_task_file, resolve_file
from lmssl.errors import RunError

pytestmark = pytest.mark.usefixtures("one_thread")


# --- baselines -------------------------------------------------------------------------------------

def test_baselines_equal_a_direct_scikit_learn_computation(toy_task):
    card = load_task_card(toy_task)
    train = read_task_file(card, toy_task.parent / "train.tsv")
    dev = read_task_file(card, toy_task.parent / "dev.tsv")
    got = task_baselines(card, {"train": train.texts, "dev": dev.texts}, {"train": train.targets, "dev": dev.targets})
    # by hand: the majority label of the 64 training rows, then a TF-IDF + logistic regression fitted directly
    majority = int(np.bincount(train.targets).argmax())
    assert got["majority"]["accuracy"] == pytest.approx(100 * np.mean(dev.targets == majority))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vectorizer.fit_transform([f"{a} {b}" for a, b in train.texts])
    predicted = LogisticRegression(C=1.0, max_iter=2000).fit(x, train.targets).predict(
        vectorizer.transform([f"{a} {b}" for a, b in dev.texts]))
    assert got["bow"]["accuracy"] == pytest.approx(100 * accuracy_score(dev.targets, predicted))
    assert got["bow"]["f1"] == pytest.approx(100 * f1_score(dev.targets, predicted))
    assert got["bow"]["score"] == pytest.approx((got["bow"]["accuracy"] + got["bow"]["f1"]) / 2)


def test_regression_baselines_on_real_sts_b(data_root):
    card = glue_card("stsb")
    train = read_task_file(card, resolve_file(card, card.train, data_root))
    dev = read_task_file(card, resolve_file(card, card.dev["dev"], data_root))
    rows = slice(0, 600)
    got = task_baselines(card, {"train": train.texts[rows], "dev": dev.texts},
                         {"train": train.targets[rows], "dev": dev.targets})
    assert math.isnan(got["majority"]["pearson"])  # the training mean is a constant: no correlation
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vectorizer.fit_transform([" ".join(t) for t in train.texts[rows]])
    ridge = Ridge(alpha=1.0).fit(x, train.targets[rows])
    predicted = ridge.predict(vectorizer.transform([" ".join(t) for t in dev.texts]))
    assert got["bow"]["pearson"] == pytest.approx(100 * pearsonr(predicted, dev.targets)[0], rel=1e-5)
    assert 0 < got["bow"]["pearson"] < 60  # words alone say little about similarity


def test_baselines_reach_results_stdout_and_the_table(checkpoints, toy_task, tmp_path, capsys):
    out = tmp_path / "with"
    code, stdout, err = cli(capsys, "finetune", str(checkpoints["mlm"]), str(toy_task), *FINETUNE_TINY,
                            "finetune.epochs=1", f"finetune.output_dir={out}")
    assert code == 0, err
    line = json.loads(stdout.strip().splitlines()[-1])
    saved = json.loads((out / "results.json").read_text())
    assert line["majority_score"] == round(saved["baselines"]["majority"]["score"], 2)
    assert line["bow_score"] == round(saved["baselines"]["bow"]["score"], 2)
    markdown, summary = glue_table({"rte": saved}, {}, "t")
    assert "| majority class / train mean |" in markdown and "| TF-IDF + logistic / ridge |" in markdown
    assert summary["rows"]["TF-IDF + logistic / ridge"]["scores"]["RTE"] == saved["baselines"]["bow"]["score"]
    off = tmp_path / "without"
    code, stdout, _ = cli(capsys, "finetune", str(checkpoints["mlm"]), str(toy_task), *FINETUNE_TINY,
                            "finetune.epochs=1", "finetune.baselines=false", f"finetune.output_dir={off}")
    assert code == 0 and "bow_score" not in stdout and "baselines" not in json.loads((off / "results.json").read_text())


# --- the training budget ---------------------------------------------------------------------------

def scripted_scores(monkeypatch, scores: list[float]) -> list[int]:
    """Make the dev evaluations return `scores` in turn; returns the list of the steps at which they happened."""
    seen = []

    def fake(model, dataset, card, batch_size, device, precision="fp32"):
        seen.append(1)
        value = scores[len(seen) - 1]
        return {"accuracy": value, "f1": value, "score": value}

    monkeypatch.setattr(finetune_module, "evaluate", fake)
    return seen


def test_early_stopping_stops_after_patience_evaluations_without_a_better_score(checkpoints, toy_task, tmp_path,
                                                                                monkeypatch):
    source, card = load_source(checkpoints["mlm"]), load_task_card(toy_task)
    seen = scripted_scores(monkeypatch, [50.0, 60.0, 55.0, 58.0, 59.0, 70.0])
    fcfg = finetune_config([*FINETUNE_TINY, "finetune.epochs=6", "finetune.batch_size=16", "finetune.patience=2"])
    results = run_task(source, card, fcfg, tmp_path / "stop", extra=None)
    seed = results["seeds"][0]
    # 64 examples / 16 = 4 steps per epoch; epochs 3 and 4 do not beat epoch 2's 60: stop after epoch 4
    assert len(seen) == 4 and [e["epoch"] for e in seed["evaluations"]] == [1, 2, 3, 4]
    assert seed["stopped_early_at_step"] == 16 and seed["best_epoch"] == 2 and seed["best_step"] == 8
    assert results["metrics"] == {"accuracy": 60.0, "f1": 60.0, "score": 60.0} and results["epochs_planned"] == 6
    seen = scripted_scores(monkeypatch, [50.0, 60.0, 55.0, 58.0, 59.0, 70.0])
    results = run_task(source, card, finetune_config([*FINETUNE_TINY, "finetune.epochs=6", "finetune.batch_size=16",
                                                      "finetune.overwrite=true"]), tmp_path / "stop")
    assert len(seen) == 6 and results["seeds"][0]["best_epoch"] == 6 and results["metrics"]["score"] == 70.0
    assert results["seeds"][0]["stopped_early_at_step"] is None


def test_min_steps_adds_epochs_and_eval_every_counts_steps(checkpoints, toy_task, tmp_path, monkeypatch):
    source, card = load_source(checkpoints["mlm"]), load_task_card(toy_task)
    scripted_scores(monkeypatch, [1.0, 2.0, 3.0, 4.0, 5.0])
    fcfg = finetune_config([*FINETUNE_TINY, "finetune.epochs=1", "finetune.batch_size=16", "finetune.min_steps=10",
                            "finetune.eval_every=3"])
    seed = run_task(source, card, fcfg, tmp_path / "steps")["seeds"][0]
    # 4 steps per epoch: at least 10 steps -> 3 epochs, 12 steps; evaluations every 3 steps (the last one is 12)
    assert [(e["step"], e["epoch"]) for e in seed["evaluations"]] == [(3, 0.75), (6, 1.5), (9, 2.25), (12, 3)]
    assert seed["best_step"] == 12


def test_a_diverging_fine_tune_stops_in_one_line_and_saves_nothing(checkpoints, toy_task, tmp_path, capsys):
    # lr 1e30 passes validation (finite): step 1 moves every weight by ~1e30, so steps 2-4 have a non-finite loss
    code, out, err = cli(capsys, "finetune", checkpoints["mlm"], toy_task, *FINETUNE_TINY, "finetune.lr=1e30",
                         "finetune.batch_size=16", "finetune.warmup_ratio=0", f"finetune.output_dir={tmp_path}/ft")
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        "error: fine-tuning diverged (seed 0): steps 2-4 (3 in a row, finetune.max_skipped_steps=3) had a non-finite "
        "loss or gradient norm and were skipped; the last finite loss was ")
    assert "Try a lower finetune.lr (now 1e+30)" in err
    assert not (tmp_path / "ft" / "best").exists() and not (tmp_path / "ft" / "results.json").exists()


def test_non_finite_weights_are_never_selected_as_best(checkpoints, toy_task, tmp_path, monkeypatch):
    """A fault injected after step 1 (a NaN weight) meets the first dev evaluation: the seed stops, no best/."""
    real_step = finetune_module.TorchEngine.train_step

    def poisoned(engine, batches):
        stats = real_step(engine, batches)
        with torch.no_grad():
            next(engine.model.parameters()).fill_(float("nan"))
        return stats

    monkeypatch.setattr(finetune_module.TorchEngine, "train_step", poisoned)
    fcfg = finetune_config([*FINETUNE_TINY, "finetune.batch_size=16", "finetune.eval_every=1"])
    with pytest.raises(RunError, match=r"^fine-tuning diverged \(seed 0\): after step 1, encoder\.\S+ holds "
                                       r"non-finite values\. Try a lower finetune\.lr \(now 0\.0001\)"):
        run_task(load_source(checkpoints["mlm"]), load_task_card(toy_task), fcfg, tmp_path / "ft")
    assert not (tmp_path / "ft").exists()


# --- the grid --------------------------------------------------------------------------------------

def test_grid_cells_from_lists_and_the_cards_grid():
    cfg, grid = finetune_grid(["finetune.lr=[1e-4, 3e-4]", "finetune.epochs=[2, 4]", "finetune.batch_size=16"])
    assert grid == Grid({"lr": [1e-4, 3e-4], "epochs": [2, 4]}, ("batch_size",)) and cfg.lr == 1e-4
    cells = grid.cells(cfg, {"batch_size": [8, 32]})  # search is off: the card's grid is not used
    assert [(c.lr, c.epochs, c.batch_size) for c in cells] == [(1e-4, 2, 16), (1e-4, 4, 16), (3e-4, 2, 16),
                                                               (3e-4, 4, 16)]
    cfg, grid = finetune_grid(["finetune.search=true", "finetune.epochs=5"])
    cells = grid.cells(cfg, {"lr": [1e-4, 3e-4], "epochs": [3, 10]})  # epochs was set: the card's list yields
    assert [(c.lr, c.epochs) for c in cells] == [(1e-4, 5), (3e-4, 5)]
    assert glue_card("rte").grid == {"lr": [1e-4, 3e-4]}


@pytest.mark.parametrize("override, message", [
    ("finetune.seed=[0, 1]", "key 'finetune.seed': expected one value; lists make a grid only for finetune.lr"),
    ("finetune.lr=[1e-4, 1e-4]", "a grid needs distinct values"),
    ("finetune.lr=[1e-4, -1]", "key 'finetune.lr': must be positive"),
    ("finetune.epochs=[3, fast]", "key 'finetune.epochs': expected an integer, got 'fast'"),
])
def test_bad_grids_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        finetune_grid([override])
    with pytest.raises(ConfigError):
        finetune_config(["finetune.lr=[1e-4, 3e-4]"])  # the one-setting reader takes no list


def test_bad_card_grid_names_the_key(tmp_path):
    raw = {"train": "t.tsv", "dev": "d.tsv", "text_columns": ["a"], "label_column": "label"}
    with pytest.raises(ConfigError, match=r"task.yaml: key 'grid': unknown key 'lrs'; did you mean 'lr'\?"):
        card_from_dict({**raw, "grid": {"lrs": [1e-4]}}, str(tmp_path / "task.yaml"))
    with pytest.raises(ConfigError, match="key 'grid': epochs: a list of positive integers"):
        card_from_dict({**raw, "grid": {"epochs": [3, 0.5]}}, str(tmp_path / "task.yaml"))


def test_grid_picks_the_best_dev_mean_and_resumes_without_rerunning_finished_cells(checkpoints, toy_task, tmp_path,
                                                                                  capsys, monkeypatch):
    out = tmp_path / "grid"
    args = ["finetune", str(checkpoints["mlm_nsp"]), str(toy_task), *FINETUNE_TINY, "finetune.lr=[1e-5, 3e-3]",
            "finetune.epochs=[1, 3]", "finetune.seeds=2", "finetune.batch_size=16", f"finetune.output_dir={out}"]
    runs, real = [], search_module.run_task

    def interrupted(source, card, fcfg, cell_out, *rest):
        if len(runs) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C during the third cell
        runs.append(cell_out.name)
        return real(source, card, fcfg, cell_out, *rest)

    monkeypatch.setattr(search_module, "run_task", interrupted)
    code, _, err = cli(capsys, *args)
    assert code == 130 and "the same command again reuses the finished tasks and grid cells" in err
    assert runs == ["lr1e-05-ep1-bs16", "lr1e-05-ep3-bs16"] and not (out / "results.json").exists()
    cell = out / "grid" / runs[0] / "results.json"
    older = json.loads(cell.read_text())  # as an lmssl before finetune.layer_lr_decay wrote it: still reused
    del older["finetune"]["layer_lr_decay"]
    cell.write_text(json.dumps(older))
    first = cell.stat().st_mtime_ns
    runs.clear()
    monkeypatch.setattr(search_module, "run_task", lambda *a: runs.append(a[3].name) or real(*a))
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert runs == ["lr0.003-ep1-bs16", "lr0.003-ep3-bs16"] and "reusing cell" in err  # only the unfinished cells
    assert (out / "grid" / "lr1e-05-ep1-bs16" / "results.json").stat().st_mtime_ns == first
    saved = json.loads((out / "results.json").read_text())
    cells = {c: json.loads((out / "grid" / c / "results.json").read_text()) for c in
             ["lr1e-05-ep1-bs16", "lr1e-05-ep3-bs16", "lr0.003-ep1-bs16", "lr0.003-ep3-bs16"]}
    means = {c: np.mean([s["metrics"]["score"] for s in r["seeds"]]) for c, r in cells.items()}
    best = max(means, key=means.get)
    assert means[best] > min(means.values()), means  # the cells differ: the choice is not a tie
    assert [c["cell"] for c in saved["grid"] if c["chosen"]] == [best]
    assert saved["metrics"] == cells[best]["metrics"] and saved["best"]["dir"] == str(out / "grid" / best / "best")
    assert json.loads(stdout.strip().splitlines()[-1])["chosen"] == saved["chosen"]
    assert "| yes |" in (out / "grid.md").read_text()
    # a different grid refuses the directory
    code, _, err = cli(capsys, *args[:-1], "finetune.lr=[1e-5, 1e-3]", f"finetune.output_dir={out}")
    assert code == 2 and "already holds results.json" in err


def test_compare_scratch_runs_both_with_the_same_seeds_and_reports_the_paired_difference(checkpoints, toy_task,
                                                                                        tmp_path, capsys):
    out = tmp_path / "compare"
    code, stdout, err = cli(capsys, "finetune", str(checkpoints["mlm_nsp"]), str(toy_task), *FINETUNE_TINY,
                            "finetune.epochs=2", "finetune.seeds=2", "finetune.compare_scratch=true",
                            f"finetune.output_dir={out}")
    assert code == 0, err
    saved = json.loads((out / "results.json").read_text())
    pretrained = json.loads((out / "pretrained" / "results.json").read_text())
    scratch = json.loads((out / "scratch" / "results.json").read_text())
    assert not pretrained["from_scratch"] and scratch["from_scratch"] and saved["metrics"] == pretrained["metrics"]
    assert [s["seed"] for s in pretrained["seeds"]] == [s["seed"] for s in scratch["seeds"]] == [0, 1]
    diffs = [p["metrics"]["score"] - s["metrics"]["score"] for p, s in zip(pretrained["seeds"], scratch["seeds"])]
    assert saved["scratch_difference"]["per_seed"] == pytest.approx(diffs)
    assert saved["scratch_difference"]["mean"] == pytest.approx(np.mean(diffs))
    assert saved["scratch_difference"]["std"] == pytest.approx(np.std(diffs, ddof=1))
    line = json.loads(stdout.strip().splitlines()[-1])
    assert line["scratch_score"] == round(scratch["metrics"]["score"], 2) and "bow_score" in line
    markdown, _ = glue_table({"rte": saved}, {}, "t")
    assert "| from scratch (same grid and seeds) |" in markdown
    code, _, err = cli(capsys, "finetune", str(checkpoints["mlm_nsp"]), str(toy_task), "finetune.from_scratch=true",
                       "finetune.compare_scratch=true")
    assert code == 2 and "key 'finetune.compare_scratch'" in err


def test_glue_with_the_cards_grid_and_scratch_writes_every_row_and_resumes(checkpoints, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setenv("LMSSL_DATA", str(fake_glue(tmp_path / "data")))
    out = tmp_path / "glue"
    args = ["finetune", str(checkpoints["mlm_nsp"]), "glue", *FINETUNE_TINY, "finetune.epochs=1",
            "finetune.search=true",
            "finetune.compare_scratch=true", f"finetune.output_dir={out}"]
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    rows = ["fine-tuned (grid: cell chosen on dev)", "cell lr 0.0001, 1 ep, batch 32", "cell lr 0.0003, 1 ep, batch 32",
            "from scratch (same grid and seeds)", "majority class / train mean", "TF-IDF + logistic / ridge"]
    table = (out / "glue.md").read_text()
    assert all(f"| {row} |" in table for row in rows), table
    saved = json.loads((out / "glue.json").read_text())
    assert list(saved["rows"]) == rows and saved["scores"] == saved["rows"][rows[0]]["scores"]
    rte = json.loads((out / "rte" / "results.json").read_text())
    assert saved["rows"][rows[3]]["scores"]["RTE"] == rte["scratch"]["metrics"]["score"]
    assert [c["cell"] for c in rte["grid"]] == ["lr0.0001-ep1-bs32", "lr0.0003-ep1-bs32"]
    assert (out / "rte" / "scratch" / "grid" / "lr0.0003-ep1-bs32" / "best").is_dir()
    code, _, err = cli(capsys, *args)
    assert code == 0 and "rte: reusing" in err and "sst2: reusing" in err
