"""lmssl's metrics as `evaluate` modules, loaded offline from the package with `evaluate.load`, give the
hand-computed, scikit-learn / scipy values, and what lmssl's own evaluators give."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, save_model
from hf_parity import tiny_objective
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from lmssl.evaluate_modules import MODULES, NAMES, load_metric
from lmssl.evaluation.perplexity import perplexity
from lmssl.evaluation.pseudo_perplexity import pseudo_perplexity
from lmssl.model.attention import AttnSpec

TEXTS = ["The game 's battle system is carried over directly .", "Valkyria Chronicles III is a tactical game ."]


def test_every_module_loads_with_evaluate_load_offline():
    code = ("import os; os.environ['HF_EVALUATE_OFFLINE'] = '1'; import evaluate; "
            "from lmssl.evaluate_modules import MODULES;"
            "m = evaluate.load(str(MODULES / 'lmssl_glue'), 'classification', keep_in_memory=True);"
            "print(m.compute(predictions=[1, 0, 1, 1], references=[1, 1, 1, 0], metrics=['accuracy'])['accuracy'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and float(done.stdout.split()[-1]) == 50.0, done.stderr[-2000:]
    for name in NAMES:
        assert (MODULES / name / f"{name}.py").is_file()


def test_glue_metrics_equal_hand_computed_and_scikit_learn_values():
    pred, gold = [1, 0, 1, 1, 0, 1], [1, 1, 1, 0, 0, 1]
    got = load_metric("lmssl_glue", "classification").compute(predictions=pred, references=gold,
                                                               metrics=["accuracy", "f1", "mcc"])
    assert got["accuracy"] == pytest.approx(100 * 4 / 6)
    assert got["f1"] == pytest.approx(100 * 2 * 3 / (2 * 3 + 1 + 1))  # tp 3, fp 1, fn 1
    assert got["f1"] == pytest.approx(100 * f1_score(gold, pred))
    assert got["mcc"] == pytest.approx(100 * matthews_corrcoef(gold, pred))
    assert got["score"] == pytest.approx((got["accuracy"] + got["f1"] + got["mcc"]) / 3)
    scores, targets = [0.1, 2.5, 3.0, 4.2, 1.0], [0.0, 2.0, 3.5, 5.0, 1.5]
    got = load_metric("lmssl_glue", "regression").compute(predictions=scores, references=targets)
    assert got["pearson"] == pytest.approx(100 * pearsonr(scores, targets)[0], abs=1e-4)
    assert got["spearman"] == pytest.approx(100 * spearmanr(scores, targets)[0], abs=1e-4)


def test_sts_spearman():
    sims, gold = [0.9, 0.1, 0.5, 0.7], [5.0, 0.5, 3.0, 2.0]
    got = load_metric("lmssl_sts").compute(predictions=sims, references=gold)
    assert got["spearman"] == pytest.approx(100 * 0.8)  # ranks 4 1 2 3 vs 4 1 3 2: 1 - 6*2/(4*15)


def test_perplexity_from_logits_by_hand():
    logits = [[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [1.0, 1.0]]]  # p(1) = 3/4, p(0) = 4/5, ignored
    got = load_metric("lmssl_perplexity", "logits").compute(predictions=logits, references=[[1, 0, -100]])
    assert got["tokens"] == 2 and got["ppl"] == pytest.approx(math.exp(-(math.log(0.75) + math.log(0.8)) / 2))


def test_perplexity_from_a_checkpoint_is_the_evaluators(tmp_path):
    cfg, tok, obj = tiny_objective({"name": "clm"})
    path = save_model(tmp_path / "ckpt", obj, cfg, tok)
    got = load_metric("lmssl_perplexity", "checkpoint").compute(predictions=TEXTS, model_id=str(path),
                                                               max_length=16, stride=8)
    assert got["ppl"] == pytest.approx(perplexity(obj, tok, TEXTS, max_length=16, stride=8)["ppl"], rel=1e-9)
    ids = torch.tensor([[tok.eos_id, *tok.encode_batch(TEXTS[:1])[0]]])
    with torch.no_grad():
        logits = obj.head(obj.trunk(ids, AttnSpec.dense(True)))[0, :-1]
    targets = ids[0, 1:]
    by_logits = load_metric("lmssl_perplexity", "logits").compute(predictions=[logits.tolist()],
                                                                 references=[targets.tolist()])
    one = perplexity(obj, tok, TEXTS[:1], max_length=ids.shape[1], stride=ids.shape[1])
    assert by_logits["ppl"] == pytest.approx(one["ppl"], rel=1e-5) and by_logits["tokens"] == one["tokens"]


def test_pseudo_perplexity_from_a_checkpoint_is_the_evaluators(tmp_path):
    cfg, tok, obj = tiny_objective({"name": "mlm"})
    path = save_model(tmp_path / "ckpt", obj, cfg, tok)
    got = load_metric("lmssl_pseudo_perplexity").compute(predictions=TEXTS, model_id=str(path), max_length=16,
                                                         stride=7)
    want, _ = pseudo_perplexity(obj, tok, TEXTS, max_length=16, stride=7)
    assert got["pppl"] == pytest.approx(want["pppl"], rel=1e-9) and got["tokens"] == want["tokens"]


def test_finetune_reports_what_the_module_computes():
    from lmssl.downstream.task_metrics import compute_metrics

    pred, gold = np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1])
    module = load_metric("lmssl_glue", "classification").compute(predictions=pred, references=gold,
                                                                  metrics=["accuracy", "f1"])
    assert module == pytest.approx(compute_metrics(["accuracy", "f1"], pred, gold))
