"""`lmssl study`: the study file, the scaling-law fit, and a miniature study end to end, interrupted and resumed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT, cli, toy_pair_task, write
from scipy.optimize import minimize_scalar

from lmssl.config.study import load_study
from lmssl.errors import ConfigError
from lmssl.study.cells import cells_of
from lmssl.study.runner import config_settings, train_overrides
from lmssl.study.scaling import compute_optimal, fit_scaling_law, fitted_loss

TINY = ("[model.hidden_size=64, model.num_layers=2, model.num_heads=4, model.ffn_size=128, data.seq_len=64, "
        "data.train=wikitext-2/valid.txt, data.valid=wikitext-2/test.txt, train.batch_size=8, train.log_every=5, "
        "train.tensorboard=false, train.warmup_steps=3, eval.max_batches=4, eval.likelihood_max_words=0, "
        "eval.every=5, model.dropout=0.0, model.attention_dropout=0.0]")


def mini_study(tmp_path, **sections) -> str:
    body = {"runs": "  - {name: clm, config: configs/clm.yaml}\n"
                    "  - {name: mlm, config: configs/mlm.yaml, overrides: [objective.sentence_task=none]}\n",
            **sections}
    text = f"name: mini\noutput_dir: {tmp_path / 'study'}\noverrides: {TINY}\nbudgets: [3.0e10]\n" + "".join(
        f"{key}:\n{value}" for key, value in body.items())
    return str(write(tmp_path / "mini.yaml", text))


def test_scaling_fit_recovers_a_known_law():
    true = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28}
    n, d = np.repeat([1e5, 3e5, 1e6, 3e6], 4), np.tile([1e7, 3e7, 1e8, 3e8], 4)
    loss = fitted_loss(true, n, d) * np.exp(np.random.default_rng(0).normal(0, 0.001, len(n)))
    fit = fit_scaling_law(n.tolist(), d.tolist(), loss.tolist(), [1e13, 1e14], k=6.0, bootstrap=20)
    assert fit["alpha"] == pytest.approx(0.34, abs=0.02) and fit["beta"] == pytest.approx(0.28, abs=0.02)
    assert fit["E"] == pytest.approx(1.7, rel=0.1)
    assert fit["intervals"]["alpha"][0] <= fit["alpha"] <= fit["intervals"]["alpha"][1]
    for budget, optimum in zip([1e13, 1e14], fit["compute_optimal"]):
        # the closed form is the minimum of the fitted loss along the iso-FLOP curve D = C / (6 N)
        found = minimize_scalar(lambda log_n: fitted_loss(fit, np.exp(log_n), budget / (6 * np.exp(log_n))),
                                bounds=(np.log(1e3), np.log(1e9)), method="bounded")
        assert optimum["N_opt"] == pytest.approx(np.exp(found.x), rel=1e-3)
        assert optimum["N_opt"] * optimum["D_opt"] * 6 == pytest.approx(budget)
    assert compute_optimal(true, 1e13, 6.0)[0] == pytest.approx(fit["compute_optimal"][0]["N_opt"], rel=0.2)


@pytest.mark.parametrize("text,message", [
    ("runs:\n  - {name: a, config: configs/clm.yaml}\nbudget: [1e10]\n", r"unknown key 'study.budget'; did you mean "
                                                                         r"'study.budgets'"),
    ("runs:\n  - {name: a, config: configs/clm.yaml}\n", r"key 'runs\[0\].budgets': no budget"),
    ("budget_unit: hours\nbudgets: [1]\nruns:\n  - {name: a, config: configs/clm.yaml}\n",
     r"key 'study.budget_unit': invalid value 'hours'; choose one of 'flops', 'minutes'"),
    ("budget_unit: minutes\nscaling:\n  config: configs/clm.yaml\n  budgets: [1, 2]\n  sizes:\n    - {name: s}\n"
     "    - {name: t}\n", r"key 'budget_unit': a scaling fit needs FLOP budgets"),
    ("budgets: [1e10]\nruns:\n  - {name: a, config: configs/clm.yaml}\n  - {name: a, config: configs/mlm.yaml}\n",
     r"key 'runs\[1\].name': 'a' names two runs"),
    ("budgets: [1e10]\nruns:\n  - {name: a, config: configs/clm.yaml}\nevaluate:\n  prob: {tasks: [sst2]}\n",
     r"unknown key 'evaluate.prob'; did you mean 'evaluate.probe'"),
    ("budgets: [1e10]\nruns:\n  - {name: a, config: configs/clm.yaml}\nevaluate:\n  probe: {tasks: sst2}\n",
     r"key 'evaluate.probe.tasks': expected a list"),
    ("scaling:\n  config: configs/clm.yaml\n  budgets: [1e10, 2e10]\n  sizes:\n    - {name: s}\n",
     r"key 'scaling': a scaling fit needs at least 2 sizes and 2 budgets"),
])
def test_bad_study_files_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_study(write(tmp_path / "s.yaml", text))


def test_a_cell_trains_at_its_budget_to_the_last_digit(tmp_path):
    spec = load_study(write(tmp_path / "s.yaml", "budgets: [1.2345678e13, 3e10]\nruns:\n  - {name: a, config: "
                                                 "configs/clm.yaml}\n"))
    budgets = [[o for o in train_overrides(spec, cell, tmp_path) if o.startswith("train.max_flops=")]
               for cell in cells_of(spec)]
    assert budgets == [["train.max_flops=30000000000.0"], ["train.max_flops=12345678000000.0"]]  # not 1.23457e13


@pytest.mark.slow
def test_a_wall_clock_study_trains_each_cell_for_its_minutes(tmp_path, data_root, capsys):
    """budget_unit: minutes: cells named by their minutes, trained with train.max_minutes, the report with the
    minutes each took."""
    text = (f"name: timed\noutput_dir: {tmp_path / 'study'}\noverrides: {TINY}\nbudget_unit: minutes\n"
            f"budgets: [0.05, 0.1]\nruns:\n  - {{name: clm, config: configs/clm.yaml}}\n"
            f"evaluate:\n  probe: {{tasks: [rte], examples: 50}}\n")
    spec = load_study(write(tmp_path / "timed.yaml", text))
    assert [c.name for c in cells_of(spec)] == ["clm-0.05min", "clm-0.1min"]
    assert train_overrides(spec, cells_of(spec)[1], tmp_path)[-1] == "train.max_minutes=0.1"
    code, printed, _ = cli(capsys, "study", str(tmp_path / "timed.yaml"))
    assert code == 0, printed
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    steps = {r["cell"]: r["steps"] for r in results["cells"]}
    assert steps["clm-0.1min"] > steps["clm-0.05min"] >= 9  # twice the minutes, more steps (decided at step 9)
    assert all(r["budget_unit"] == "minutes" for r in results["cells"])
    report = (tmp_path / "study" / "report.md").read_text()
    assert "| cell | run | FLOPs | steps | tokens | train min |" in report
    table = [line for line in report.splitlines() if line.startswith("|")]
    assert len(table) == 6 and len({line.count("|") for line in table}) == 1, table  # reference rows align too
    majority = next(line for line in table if line.startswith("| *majority*"))
    assert majority.split("|")[-2].strip() != ""  # its RTE score sits in the last column, probe_rte


def test_the_shipped_studies_parse():
    for name in ("objectives-cpu", "scaling-cpu"):
        spec = load_study(REPO_ROOT / "configs" / "studies" / f"{name}.yaml")
        assert len(spec.all_runs()) >= 3 and all(len(r.budgets) >= 2 for r in spec.all_runs())
    recipe = load_study(REPO_ROOT / "configs" / "studies" / "recipe-mlm-cpu.yaml")
    assert [c.name for c in cells_of(recipe)][-1] == "p64-m30-muon-10min"  # configs/mlm.yaml's recipe
    clm = load_study(REPO_ROOT / "configs" / "studies" / "recipe-clm-cpu.yaml")
    assert [c.name for c in cells_of(clm)][0] == "clm-10min" and clm.budget_unit == "minutes"
    # the objectives study still trains what its committed report measured (configs/mlm.yaml left NSP behind)
    spec = load_study(REPO_ROOT / "configs" / "studies" / "objectives-cpu.yaml")
    committed = json.loads((REPO_ROOT / "docs" / "studies" / "objectives-cpu" / "results.json").read_text())
    for cell in cells_of(spec):
        record = next(c for c in committed["cells"] if c["cell"] == cell.name)
        settings = config_settings(cell.run.config, train_overrides(spec, cell, Path("study")))
        nsp = settings.get("objective.sentence_task") == "nsp"
        assert nsp == ("val_nsp_acc" in record["final"]), cell.name


@pytest.mark.slow
def test_a_miniature_study_end_to_end_interrupted_and_resumed(tmp_path, data_root, capsys, monkeypatch):
    """2 runs at a tiny budget with every evaluation (probes of task cards given by absolute and relative paths
    too): SIGKILLed once the first run has trained, then run again, it keeps the finished run and evaluations, resumes
    the rest and writes results.json, report.md and the plots; a third invocation trains nothing; an edited
    evaluation setting redoes that evaluation only, an edited model setting is refused."""
    monkeypatch.chdir(REPO_ROOT)
    absolute = toy_pair_task(tmp_path / "cards")
    card_text = absolute.read_text()
    relative = os.path.relpath(write(tmp_path / "cards" / "other.yaml", card_text.replace("name: toy", "name: toy2")))
    study = mini_study(tmp_path, evaluate=(
        "  likelihood: {file: wikitext-2/test.txt, max_words: 200}\n"
        f"  probe: {{tasks: [sst2, {absolute}, {relative}], examples: 100}}\n"
        "  sts: {sets: [stsb_dev]}\n"
        "  pairs: {corpus: wikitext-2/test.txt, per_type: 10}\n"
        "  label_efficiency: {task: sst2, sizes: [40, 80], seeds: 1, overrides: [finetune.epochs=1]}\n"))
    out = tmp_path / "study"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "lmssl", "study", study], cwd=REPO_ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "cells" / "clm-3e10" / "train.json"
    deadline = time.time() + 300
    while not first.is_file() and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert first.is_file() and not (out / "results.json").exists()
    kept = first.read_text()
    code, printed, _ = cli(capsys, "study", study, "--print")
    assert code == 0 and json.loads(printed.strip().splitlines()[-1])["pending"] == ["mlm-3e10"]
    code, printed, err = cli(capsys, "study", study)
    assert code == 0, err
    assert first.read_text() == kept  # the finished run was not trained again
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["cells"] == 2
    results = json.loads((out / "results.json").read_text())
    by_cell = {c["cell"]: c for c in results["cells"]}
    assert set(by_cell) == {"clm-3e10", "mlm-3e10"}
    for cell in by_cell.values():
        assert cell["flops"] >= 3e10 and cell["steps"] > 0 and cell["final"]["val_loss"] > 0
        ev = cell["evaluations"]
        assert {"size", "likelihood", "probe_sst2", "sts", "pairs", "label_efficiency"} <= set(ev)
        assert set(ev["label_efficiency"]["pretrained"]) == {"40", "80"}
        assert ev["label_efficiency"]["scratch"]["40"]["train_examples"] == 40
    assert "bits_per_byte" in by_cell["clm-3e10"]["evaluations"]["likelihood"]
    assert "pseudo_bits_per_byte" in by_cell["mlm-3e10"]["evaluations"]["likelihood"]
    assert by_cell["clm-3e10"]["evaluations"]["pairs"]["pairs"] == 30
    report = (out / "report.md").read_text()
    assert "| clm-3e10 | clm |" in report and "## Label efficiency" in report
    for plot in ("val_loss_vs_flops.png", "scores_vs_flops.png", "label_efficiency.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    import lmssl.study.runner as runner

    monkeypatch.setattr(runner, "train", lambda cfg: pytest.fail("a finished study trained again"))
    assert cli(capsys, "study", study)[0] == 0
    # task cards: named by their own `name`, the card files untouched, no path in a column or directory name
    assert absolute.read_text() == card_text
    assert {"probe_toy", "probe_toy2"} <= set(by_cell["clm-3e10"]["evaluations"])
    assert (out / "cells" / "mlm-3e10" / "probe" / "toy2" / "results.json").is_file()
    assert "| probe_toy | probe_toy2 |" in report
    assert not [line for line in report.splitlines() if line.startswith("|") and ".yaml" in line]
    # an edited evaluation setting redoes that evaluation (and nothing else) ...
    Path(study).write_text(Path(study).read_text().replace("max_words: 200", "max_words: 150"))
    code, _, err = cli(capsys, "study", study)
    assert code == 0, err
    assert err.count("likelihood: made with other settings (max_words 200 -> 150), redoing it") == 2
    assert "probe_sst2" not in err.split("# Study")[0]
    results = json.loads((out / "results.json").read_text())
    assert {c["evaluations"]["likelihood"]["settings"]["max_words"] for c in results["cells"]} == {150}
    # ... and an edited model setting stops the study before anything runs, saying what changed
    Path(study).write_text(Path(study).read_text().replace("model.hidden_size=64", "model.hidden_size=48"))
    code, _, err = cli(capsys, "study", study)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {study}: cell clm-3e10 was trained with other settings (model.hidden_size 64 -> 48) under {out}; "
        f"restore them, or give the study another output_dir"]


@pytest.mark.slow
def test_a_scaling_grid_fits_and_draws_iso_flop_curves(tmp_path, data_root, capsys):
    sizes = "".join(f"    - {{name: w{w}, overrides: [model.hidden_size={w}, model.ffn_size={4 * w}]}}\n"
                    for w in (32, 64, 96))
    study = str(write(tmp_path / "scaling.yaml", (
        f"name: tiny-scaling\noutput_dir: {tmp_path / 'study'}\noverrides: {TINY}\n"
        f"scaling:\n  config: configs/clm.yaml\n  budgets: [1.5e10, 3.0e10]\n  bootstrap: 10\n  sizes:\n{sizes}")))
    code, printed, err = cli(capsys, "study", study)
    assert code == 0, err
    fit = json.loads((tmp_path / "study" / "results.json").read_text())["scaling"]
    assert len(fit["points"]) == 6 and all(np.isfinite([fit[k] for k in ("E", "A", "B", "alpha", "beta")]))
    assert [o["budget"] for o in fit["compute_optimal"]] == [1.5e10, 3.0e10]
    assert 5 < fit["flops_per_param_token"] < 9  # near Kaplan's 6 (attention adds some)
    assert (tmp_path / "study" / "scaling_isoflop.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Scaling law" in (tmp_path / "study" / "report.md").read_text()
