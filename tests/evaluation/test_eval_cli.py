"""`lmssl eval ppl|pppl|compare` on tiny trained checkpoints, and the likelihood evaluator inside training."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from helpers import cli_result, tiny_config, write

from lmssl.checkpoint.format import latest_checkpoint
from lmssl.data.tokenizer import TextTokenizer
from lmssl.evaluation.likelihood import ValidationLikelihood
from lmssl.training.loop import train

WORDS = "150"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """Tiny CLM and MLM runs of 2 steps, validated (loss and PPL / pseudo-PPL) after each step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models (see test_perplexity.py)
    root = tmp_path_factory.mktemp("eval-runs")
    out = {}
    for objective in ("clm", "mlm"):
        out[objective] = root / objective
        train(tiny_config(objective, out[objective], "train.max_steps=2", "eval.every=1", "eval.max_batches=1",
                          f"eval.likelihood_max_words={WORDS}"))
    yield out
    torch.set_num_threads(threads)



def validation_rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r]


@pytest.mark.parametrize("objective, command, keys", [
    ("clm", "ppl", {"val_sliding_ppl": "ppl", "val_word_ppl": "word_ppl", "val_bits_per_byte": "bits_per_byte"}),
    ("mlm", "pppl", {"val_pppl": "pppl", "val_word_pppl": "word_pppl"}),
])
def test_training_logs_the_evaluator_that_the_cli_runs(runs, capsys, objective, command, keys):
    rows = validation_rows(runs[objective])
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert all(math.isfinite(r[k]) and r[k] > 1 for k in keys), r
    assert rows[0][next(iter(keys))] != rows[1][next(iter(keys))]  # the weights changed in between
    # the same numbers as the command line on the same text (data.valid of the tiny config) with the same weights
    code, result, _ = cli_result(capsys, "eval", command, str(runs[objective]), "wikitext-2/test.txt",
                              "--max-words", WORDS)
    assert code == 0
    assert result["words"] == int(WORDS) and result["tokens"] == rows[-1]["val_likelihood_tokens"]
    for key, field in keys.items():
        assert rows[-1][key] == pytest.approx(result[field], rel=1e-6)
    # the unigram baseline of the final validation scores the same tokens
    cfg = tiny_config(objective, runs[objective], f"eval.likelihood_max_words={WORDS}")
    tokenizer = TextTokenizer.from_file(latest_checkpoint(runs[objective]) / "tokenizer.json")
    assert len(ValidationLikelihood(cfg, tokenizer).tokens()) == rows[-1]["val_likelihood_tokens"]


def test_ppl_and_pppl_print_their_fields(runs, capsys, tmp_path):
    code, ppl, _ = cli_result(capsys, "eval", "ppl", str(runs["clm"]), "wikitext-2-raw/test.txt", "--max-words", "80",
                           "--max-length", "32", "--stride", "8", "--batch-size", "3")
    assert code == 0 and ppl["quantity"] == "perplexity" and ppl["checkpoint"].endswith("step-0000002")
    assert ppl["ppl"] == pytest.approx(math.exp(ppl["nll"]))
    assert ppl["word_ppl"] == pytest.approx(math.exp(ppl["nll"] * ppl["tokens"] / ppl["words"]))
    assert (ppl["max_length"], ppl["stride"], ppl["words"]) == (32, 8, 80) and "method" in ppl

    sentences = tmp_path / "sentences.txt"
    sentences.write_text("The cat sat on the mat .\nA dog barked twice .\nIt rained .\n")
    out = tmp_path / "per-sentence.jsonl"
    code, pppl, _ = cli_result(capsys, "eval", "pppl", str(runs["mlm"]), str(sentences), "--word-l2r",
                            "--batch-tokens", "64", "--per-sentence", str(out))
    assert code == 0 and pppl["quantity"] == "pseudo-perplexity" and pppl["word_l2r"] is True
    assert pppl["pppl"] == pytest.approx(math.exp(-pppl["pll"] / pppl["tokens"]))
    assert pppl["word_pppl"] == pytest.approx(math.exp(-pppl["pll"] / pppl["words"]))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in records] == ["The cat sat on the mat .", "A dog barked twice .", "It rained ."]
    assert sum(r["pll"] for r in records) == pytest.approx(pppl["pll"])
    assert sum(r["tokens"] for r in records) == pppl["tokens"] and sum(r["words"] for r in records) == 15


def test_user_errors_are_one_line_messages(runs, capsys):
    code, _, err = cli_result(capsys, "eval", "pppl", str(runs["clm"]), "wikitext-2/test.txt")
    assert code == 2 and err.startswith("error: ") and "use `lmssl eval ppl`" in err and "Traceback" not in err
    code, _, err = cli_result(capsys, "eval", "ppl", str(runs["clm"]), "no/such/file.txt")
    assert code == 2 and "text file not found: no/such/file.txt" in err
    code, _, err = cli_result(capsys, "eval", "ppl", str(runs["clm"]), "wikitext-2/test.txt", "--max-length", "999")
    assert code == 2 and "--max-length" in err and "128" in err
    code, _, err = cli_result(capsys, "eval", "ppl", str(runs["clm"] / "nothing"), "wikitext-2/test.txt")
    assert code == 2 and "not an lmssl checkpoint" in err


def test_compare_writes_a_table_and_a_plot_that_keep_ppl_and_pseudo_ppl_apart(runs, capsys, tmp_path):
    out, clm = tmp_path / "report", tmp_path / "clm"
    shutil.copytree(runs["clm"], clm)
    complete = len((clm / "metrics.jsonl").read_text().splitlines())
    with open(clm / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 7.')  # a killed run's last line, cut short: left out with a note
    code, summary, err = cli_result(capsys, "eval", "compare", str(runs["mlm"]), str(clm), "--data",
                                    "wikitext-2/test.txt", "--max-words", "60", "--out", str(out))
    assert code == 0
    assert f"note: {clm}/metrics.jsonl: left out 1 unreadable line(s), cut short by a crash; the curves use the " \
           f"{complete} complete one(s)" in err
    assert [m["quantity"] for m in summary["models"]] == ["pseudo-perplexity", "perplexity"]  # given order, no ranking
    assert all(m["words"] == 60 for m in summary["models"])  # the same text for both tokenizers
    report = (out / "report.md").read_text()
    assert "different quantities; this report does not rank one against the other" in report
    table = [line for line in report.splitlines() if line.startswith(("| mlm@2", "| clm@2"))]
    assert len(table) == 2 and "| pseudo-PPL |" in table[0] and "| PPL |" in table[1]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    curves = {m["name"]: m["curves"] for m in results["models"]}
    assert [s for s, _ in curves["mlm@2"]["loss"]] == [1, 2]
    assert [s for s, _ in curves["clm@2"]["val_sliding_ppl"]] == [1, 2]
    # the legend names what each training loss sums
    assert {m["name"]: m["loss_terms"] for m in results["models"]} == {"mlm@2": ["MLM", "NSP"], "clm@2": ["CLM"]}


def test_a_finite_but_terrible_model_scores_inf_without_a_traceback(runs, capsys, tmp_path):
    """Decoder biases of +-3e4 keep every logit finite, but each token's log-likelihood is about -1e4: exp(-pll /
    tokens) overflows math.exp (an OverflowError traceback in eval pppl's records, compare's plot, and a run's
    final validation); the scores are now inf, written as JSON's Infinity."""
    from safetensors.torch import load_file, save_file

    terrible = tmp_path / "terrible"
    shutil.copytree(latest_checkpoint(runs["mlm"]), terrible)
    weights = load_file(terrible / "model.safetensors")
    bias = weights["head.decoder.bias"]
    weights["head.decoder.bias"] = torch.where(torch.arange(len(bias)) % 2 == 0, 3e4, -3e4)
    save_file(weights, terrible / "model.safetensors")
    (terrible / "manifest.json").unlink()  # the edit is ours: no checksum to disagree with
    sentences = write(tmp_path / "sentences.txt", "The cat sat on the mat .\nIt rained .\n")
    code, pppl, err = cli_result(capsys, "eval", "pppl", str(terrible), str(sentences), "--per-sentence",
                                 str(tmp_path / "per.jsonl"))
    assert code == 0 and "Traceback" not in err
    assert math.isfinite(pppl["pll"]) and -pppl["pll"] / pppl["tokens"] > 700 and pppl["pppl"] == math.inf
    records = [json.loads(line) for line in (tmp_path / "per.jsonl").read_text().splitlines()]
    assert [r["pppl"] for r in records] == [math.inf, math.inf] and all(math.isfinite(r["pll"]) for r in records)
    code, summary, err = cli_result(capsys, "eval", "compare", str(runs["mlm"]), str(terrible), "--data",
                                    str(sentences), "--out", str(tmp_path / "report"))
    assert code == 0 and "Traceback" not in err
    assert [math.isfinite(m["per_token"]) for m in summary["models"]] == [True, False]
    assert "| inf |" in (tmp_path / "report" / "report.md").read_text()


def test_report_axes_have_integer_steps_and_plain_labels_on_narrow_log_ranges():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmssl.evaluation.report import loss_label, readable_axes

    # within a decade: wide (x2.25), narrow (no power of ten and no 2..9 x 10^k inside: matplotlib labels nothing)
    fig, (narrow, narrower, tiny, wide) = plt.subplots(1, 4)
    for ax, values in ((narrow, [900, 700, 400]), (narrower, [550, 500, 470]), (tiny, [410.5, 405, 401]),
                       (wide, [9000, 300, 40])):
        ax.plot([1, 2, 3], values)
        ax.set_yscale("log")
        readable_axes(ax, log_y=True)
    fig.canvas.draw()
    steps = [t.get_text() for t in narrow.get_xticklabels() if t.get_visible() and t.get_text()]
    assert steps and all(t.lstrip("−-").isdigit() for t in steps), steps  # no 1.5, 2.5
    for ax, low, high in ((narrow, 400, 900), (narrower, 470, 550), (tiny, 401, 410.5)):
        shown = [t for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if t.get_text()
                 and ax.get_ylim()[0] <= t.get_position()[1] <= ax.get_ylim()[1]]
        assert len(shown) >= 2, [t.get_text() for t in shown]
        for t in shown:  # plain numbers, the tick's own value, inside the data's range give or take the margin
            assert float(t.get_text().replace("−", "-")) == pytest.approx(t.get_position()[1])
            assert low * 0.9 <= t.get_position()[1] <= high * 1.1
    assert any("10^" in t.get_text() for t in wide.get_yticklabels())  # over decades: powers of ten stay
    plt.close(fig)
    assert loss_label({"name": "mlm@300", "loss_terms": ["MLM", "NSP"]}) == "mlm@300: MLM + NSP"
    assert loss_label({"name": "clm@300", "loss_terms": ["CLM"]}) == "clm@300"


def test_likelihood_cap_is_validated():
    from lmssl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="eval.likelihood_max_words"):
        load_config(None, ["eval.likelihood_max_words=-1"])
    assert load_config(None, ["eval.likelihood_max_words=0"]).eval.likelihood_max_words == 0  # 0 = off
