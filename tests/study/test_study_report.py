"""A study's report and figures, rendered from the committed studies' results.json (no training): validation losses
kept apart by objective, scores beside their majority / TF-IDF references, one legend per panel, FLOP tick labels
that do not overlap."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from helpers import REPO_ROOT

from lmssl.study.plots import compact, figures, log_ticks
from lmssl.study.report import markdown, reference_headline

STUDIES = {name: json.loads((REPO_ROOT / "docs" / "studies" / name / "results.json").read_text())
           for name in ("objectives-cpu", "scaling-cpu")}


def table(report: str) -> list[list[str]]:
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_report_keeps_each_objectives_loss_in_its_own_column_and_shows_the_baselines():
    results = STUDIES["objectives-cpu"]
    rows = table(markdown({**results, "plots": ["scores_vs_flops.png"]}))
    header, body = rows[0], {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}
    losses = [c for c in header if c.startswith("final val loss")]
    assert losses == ["final val loss (MLM + NSP)", "final val loss (MLM)", "final val loss (CLM)",
                      "final val loss (GEN + DISC)"]
    electra = body["electra-1.5e13"]  # ELECTRA's 26.68 (generator + weighted RTD) sits in its own column only
    assert electra["final val loss (GEN + DISC)"] == "26.68" and electra["final val loss (CLM)"] == ""
    assert body["clm-1.5e13"]["final val loss (CLM)"] == "5.62" and body["clm-1.5e13"]["final val loss (MLM)"] == ""
    cell = next(c for c in results["cells"] if c["cell"] == "clm-1.5e13")
    for label, key in (("*majority*", "majority"), ("*TF-IDF*", "bow")):
        expected = {task: cell["evaluations"][task]["baselines"][key]["score"]
                    for task in ("probe_cola", "probe_mrpc", "probe_rte", "probe_sst2")}
        for task, value in expected.items():
            assert body[label][task] == f"{value:.2f}"
        assert body[label]["probe_avg"] == f"{np.mean(list(expected.values())):.2f}"
        assert body[label]["pppl"] == "" and body[label]["sts_stsb_dev"] == ""
    assert body["*majority*"]["probe_sst2"] == "50.92" and body["*TF-IDF*"]["probe_sst2"] == "70.41"


def test_reference_scores_come_from_baselines_and_compare_scratch():
    record = {"evaluations": {
        "finetune_rte": {"metrics": {"score": 60.0}, "baselines": {"majority": {"score": 52.7}, "bow": {"score": 49.1}},
                         "scratch": {"metrics": {"score": 54.0}}},
        "finetune_stsb": {"metrics": {"score": 20.0},
                          "baselines": {"majority": {"score": None}, "bow": {"score": 9.0}}}}}
    assert reference_headline(record, "majority") == {"finetune_rte": 52.7}  # a regression's majority has no score
    assert reference_headline(record, "TF-IDF") == {"finetune_rte": 49.1, "finetune_stsb": 9.0,
                                                    "finetune_avg": pytest.approx(29.05)}
    assert reference_headline(record, "from scratch") == {"finetune_rte": 54.0}


def test_log_ticks_are_few_round_and_compact():
    assert log_ticks(1.5e13, 4.5e13) == [1.5e13, 2e13, 3e13, 4e13]
    assert log_ticks(3e12, 2.7e13) == [5e12, 1e13, 2e13]
    assert log_ticks(1e9, 1e15) == [1e9, 1e11, 1e13, 1e15]
    assert log_ticks(3.01e10, 3.05e10) == [3.01e10, 3.05e10]  # no round value inside: the ends
    assert [compact(v) for v in (1.5e13, 2e9, 300.0, 1e15)] == ["1.5e13", "2e9", "3e2", "1e15"]


@pytest.mark.parametrize("name", STUDIES)
def test_study_figures_have_one_legend_per_panel_references_and_tick_labels_that_do_not_overlap(name):
    import matplotlib.pyplot as plt

    results = STUDIES[name]
    made = figures(results["cells"], results["scaling"])
    try:
        for fig_name in ("val_loss_vs_flops.png", "scores_vs_flops.png"):
            fig = made[fig_name]
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            for ax in (ax for ax in fig.axes if ax.axison):
                assert len([c for c in ax.get_children() if c.__class__.__name__ == "Legend"]) == 1, ax.get_title()
                labels = [t for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True)
                          if t.get_visible() and t.get_text()]
                assert len(labels) >= 2, (fig_name, ax.get_title())
                boxes = [t.get_window_extent(renderer) for t in labels]
                for a, b in itertools.combinations(boxes, 2):
                    assert not a.overlaps(b), (fig_name, ax.get_title(), [t.get_text() for t in labels])
        if name == "objectives-cpu":
            sst2 = next(ax for ax in made["scores_vs_flops.png"].axes if ax.get_title() == "probe_sst2")
            lines = {line.get_label(): line.get_ydata()[0] for line in sst2.lines}
            assert lines["majority"] == pytest.approx(50.917, abs=1e-3)
            assert lines["TF-IDF"] == pytest.approx(70.413, abs=1e-3)
            ppl = next(ax for ax in made["scores_vs_flops.png"].axes if ax.get_title() == "ppl")
            assert "majority" not in [line.get_label() for line in ppl.lines]  # no reference for a likelihood
    finally:
        for fig in made.values():
            plt.close(fig)
