import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import save_model, tiny_config

from lmssl.cli import main
from lmssl.config import ConfigError
from lmssl.data import load_tokenizer
from lmssl.downstream.sts import STS_SUBSETS, TEST_SETS, embed, evaluate_sts, load_sts, spearman_x100
from lmssl.model.attention import AttnSpec
from lmssl.objectives import build_objective
from lmssl.training.prepare import with_vocab

SENTENCES = ["A man is playing a guitar.", "A woman is slicing an onion.", "The cat sleeps.",
             "Stocks fell sharply today.", "A dog runs in the park.", "Two children are playing football."]


def test_real_sts_sets_have_the_standard_pair_counts(data_root):
    counts = {name: len(load_sts(data_root, name)) for name in ("stsb_dev", *TEST_SETS)}
    # SentEval / SimCSE counts (see ../shared/data/README.md)
    assert counts == {"stsb_dev": 1500, "sts12": 3108, "sts13": 1500, "sts14": 3750, "sts15": 3000, "sts16": 1186,
                      "stsb_test": 1379, "sickr": 4927}
    test = load_sts(data_root, "stsb_test")
    assert (test.first[0], test.second[0], test.gold[0]) == (
        "A girl is styling her hair.", "A girl is brushing her hair.", 2.5)
    sick = load_sts(data_root, "sickr")
    assert sick.gold[0] == 3.3 and not any(s.endswith("\r") for s in sick.second)
    assert 1.0 <= sick.gold.min() and sick.gold.max() <= 5.0


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    """Every layout with its quirks, three pairs per file (gold 1, 2, 3)."""
    root = tmp_path_factory.mktemp("sts-root")
    a, b = SENTENCES[:3], SENTENCES[3:]
    (root / "glue" / "STS-B").mkdir(parents=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = "".join(f"{i}\tg\tf\ty\t{i}\tnone\tnone\t{a[i]}\t{b[i]}\t{i + 1}.000\n" for i in range(3))
    (root / "glue" / "STS-B" / "dev.tsv").write_text(header + rows)
    (root / "sts" / "STSBenchmark").mkdir(parents=True)
    extra = ["", "\tsrc-a\tsrc-b", ""]  # some rows carry two extra source columns
    (root / "sts" / "STSBenchmark" / "sts-test.csv").write_text(
        "".join(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{i + 1}.000\t{a[i]}\t{b[i]}{extra[i]}\n" for i in range(3)))
    (root / "sts" / "SICK").mkdir(parents=True)
    (root / "sts" / "SICK" / "SICK_test_annotated.txt").write_bytes(
        ("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\r\n"
         + "".join(f"{i}\t{a[i]}\t{b[i]}\t{i + 1}.5\tNEUTRAL\r\n" for i in range(3))).encode())
    for name, subsets in STS_SUBSETS.items():
        folder = root / "sts" / f"STS{name[3:]}-en-test"
        folder.mkdir(parents=True)
        for subset in subsets:
            (folder / f"STS.input.{subset}.txt").write_text(
                "".join(f"{SENTENCES[i]}\t{SENTENCES[5 - i]}\n" for i in range(4)))
            (folder / f"STS.gs.{subset}.txt").write_text("1\n2\n\n3\n")  # an unscored pair (empty gold line)
    return root


def test_layouts_and_quirks_are_parsed(fake_root):
    dev = load_sts(fake_root, "stsb_dev")
    assert dev.first == SENTENCES[:3] and dev.second == SENTENCES[3:] and dev.gold.tolist() == [1, 2, 3]
    test = load_sts(fake_root, "stsb_test")
    assert test.second == SENTENCES[3:] and test.gold.tolist() == [1, 2, 3]  # extra columns ignored
    sick = load_sts(fake_root, "sickr")
    assert sick.second == SENTENCES[3:] and sick.gold.tolist() == [1.5, 2.5, 3.5]  # header skipped, CRLF stripped
    sts12 = load_sts(fake_root, "sts12")  # "all": the five subsets concatenated, the empty gold line skipped
    assert len(sts12) == 5 * 3 and sts12.gold.tolist() == [1, 2, 3] * 5
    assert sts12.first[:4] == [SENTENCES[0], SENTENCES[1], SENTENCES[3], SENTENCES[0]]  # pair 2 (unscored) dropped


def test_spearman_of_hand_made_cosines():
    first = torch.tensor([[1.0, 0.0]] * 3)
    angles = torch.tensor([math.pi / 2, math.pi / 3, 0.0])  # cosines 0, 0.5, 1
    second = torch.stack([angles.cos(), angles.sin()], dim=1)
    cos = F.cosine_similarity(first, second, dim=-1).numpy()
    assert math.isclose(spearman_x100(cos, np.array([1, 2, 3])), 100.0)
    assert math.isclose(spearman_x100(cos, np.array([3, 2, 1])), -100.0)
    assert math.isclose(spearman_x100(cos, np.array([1, 3, 2])), 50.0)  # 1 - 6 * (0 + 1 + 1) / (3 * 8)


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    cfg = tiny_config("mlm", tmp_path_factory.mktemp("ckpt") / "run")
    tok = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tok.vocab_size)
    torch.manual_seed(0)
    return cfg, tok, build_objective(cfg, tok).eval()


def test_pooling_ignores_padding(tiny_mlm):
    cfg, tok, objective = tiny_mlm
    trunk = objective.encoder()
    for pooling in ("cls", "mean"):
        together = embed(trunk, tok, SENTENCES, pooling, batch_size=len(SENTENCES))
        for i, sentence in enumerate(SENTENCES):
            ids = torch.tensor([[tok.cls_id, *tok.encode_batch([sentence])[0], tok.sep_id]])
            with torch.no_grad():
                hidden = trunk(ids, AttnSpec.dense(False))[0]  # (T, H), no padding at all
            alone = hidden[0] if pooling == "cls" else hidden.mean(0)
            torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=1e-4)


def test_evaluate_sts_scores_every_set_and_averages_the_tests(tiny_mlm, fake_root):
    _, tok, objective = tiny_mlm
    objective.train()
    scores = evaluate_sts(objective, tok, fake_root)
    assert objective.training  # the mode is restored
    assert set(scores) == {"stsb_dev", *TEST_SETS, "avg"}
    assert all(-100 <= v <= 100 for v in scores.values())
    assert math.isclose(scores["avg"], np.mean([scores[name] for name in TEST_SETS]))
    assert "avg" not in evaluate_sts(objective, tok, fake_root, ("stsb_dev", "sts12"))


def test_eval_sts_command_prints_one_json_line(tiny_mlm, fake_root, tmp_path, capsys):
    cfg, tok, objective = tiny_mlm
    ckpt = save_model(tmp_path / "run" / "checkpoints" / "step-0000001", objective, cfg, tok)
    assert main(["eval", "sts", str(tmp_path / "run"), "--sets", "stsb_dev", "sickr",
                 "--data-root", str(fake_root)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert {k: result[k] for k in ("checkpoint", "objective", "pooling", "aggregation")} == {
        "checkpoint": str(ckpt), "objective": "mlm", "pooling": "cls", "aggregation": "all"}
    assert set(result) == {"checkpoint", "objective", "pooling", "aggregation", "stsb_dev", "sickr"}
    assert main(["eval", "sts", str(ckpt), "--sets", "sts17"]) == 2
    assert "unknown STS set 'sts17'; choose from stsb_dev" in capsys.readouterr().err
    assert main(["eval", "sts", str(ckpt), "--data-root", str(tmp_path / "empty")]) == 2
    assert "STS file not found" in capsys.readouterr().err


def test_causal_models_are_mean_pooled_without_cls(fake_root, tmp_path):
    cfg = tiny_config("clm", tmp_path / "clm")
    tok = load_tokenizer(cfg)  # byte-level BPE: no [CLS]
    objective = build_objective(with_vocab(cfg, tok.vocab_size), tok)
    assert objective.sentence_pooling() == "mean"
    assert set(evaluate_sts(objective, tok, fake_root, ("stsb_dev",))) == {"stsb_dev"}
    with pytest.raises(ConfigError, match="pooling 'cls' needs a bidirectional model"):
        evaluate_sts(objective, tok, fake_root, ("stsb_dev",), pooling="cls")
