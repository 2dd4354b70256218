"""Sentences of ordinary text (lmssl.data.sentence_split): the segmenter against hand-split paragraphs, WikiText keeping
its own rule, and NSP, SOP, SimCSE and `lmssl pairs make` on a novelist's blank-line-separated (hard-wrapped)
paragraphs and on one article per line."""
from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import pytest
from helpers import cli, metrics_rows, tiny_config

from lmssl.data.corpus import Corpus
from lmssl.data.sentence_pairs import tokenize_segments
from lmssl.data.sentence_split import detect_rule, split_document, split_prose
from lmssl.data.sentences import iter_sentences
from lmssl.data.tokenizer import TextTokenizer, tokenizer_path
from lmssl.training.loop import train

HAND_SPLIT = Path(__file__).with_name("hand_split_sentences.txt")  # paragraphs, one sentence a line, split by hand
DETOKENIZE = [(re.compile(r" @(.)@ "), r"\1"), (re.compile(r'" ([^"]*?) "'), r'"\1"'),
              (re.compile(r" ([.,;:!?)]|'s\b)"), r"\1"), (re.compile(r"\( "), "("), (re.compile(r" n't\b"), "n't")]


def hand_split() -> list[list[str]]:
    return [block.split("\n") for block in HAND_SPLIT.read_text().strip().split("\n\n")]


def articles(data_root: Path, count: int) -> list[list[str]]:
    """The first `count` articles of WikiText-2's validation split as untokenized prose paragraphs ("U.S.", "3.5",
    "it's"), headings dropped."""
    found: list[list[str]] = []
    for line in (data_root / "wikitext-2" / "valid.txt").read_text().splitlines():
        line = line.strip()
        if re.match(r"^= [^=].* =$", line):
            found.append([])
        elif line and not line.startswith("= ") and found:
            for pattern, replacement in DETOKENIZE:
                line = pattern.sub(replacement, line)
            found[-1].append(line)
    return [paragraphs for paragraphs in found if paragraphs][:count]


@pytest.fixture(scope="module")
def prose(data_root, tmp_path_factory) -> dict[str, Path]:
    """novel.txt: paragraphs hard-wrapped at 70 columns, a blank line between them (a Project Gutenberg novel's
    layout); news.txt: one article a line."""
    root, texts = tmp_path_factory.mktemp("prose"), articles(data_root, 12)
    paragraphs = [p for article in texts for p in article]
    (root / "novel.txt").write_text("\n\n".join(textwrap.fill(p, 70) for p in paragraphs) + "\n")
    (root / "news.txt").write_text("".join(" ".join(article) + "\n" for article in texts))
    return {"novel": root / "novel.txt", "news": root / "news.txt"}


def test_the_segmenter_splits_every_hand_split_paragraph_as_by_hand():
    examples = hand_split()
    assert len(examples) == 31 and sum(map(len, examples)) == 66
    for sentences in examples:
        assert split_prose(" ".join(sentences)) == sentences
        assert split_prose(textwrap.fill(" ".join(sentences), 24)) == sentences  # hard-wrapped lines are joined


def test_wikitext_keeps_its_own_rule_and_other_text_gets_the_segmenter(prose, data_root):
    assert detect_rule(Corpus(str(data_root / "wikitext-2" / "valid.txt"))) == "wikitext"
    assert detect_rule(Corpus(str(prose["novel"]))) == detect_rule(Corpus(str(prose["news"]))) == "prose"
    assert detect_rule(Corpus(str(prose["news"]), doc_split="wikitext")) == "wikitext"
    wiki = " The U.S. won 1 @.@ 5 medals . Dr. Who ? \n"
    assert split_document(wiki, "wikitext") == ["The U.S. won 1 @.@ 5 medals .", "Dr. Who ?"]
    assert split_document("Dr. Watson won 1.5 medals.\nIn the U.S. he did.", "prose") == [
        "Dr. Watson won 1.5 medals.", "In the U.S. he did."]


def test_both_layouts_give_sentences_and_segments(prose):
    """Hard-wrapped paragraphs: sentences that end at a terminal, none run on; one article a line: most of the same
    sentences (sentencex keeps a quotation's sentences together, and WikiText's stray quotation marks join some
    across a whole article: docs/data.md). Segments: several per document."""
    novel, news = (list(iter_sentences(Corpus(str(prose[k])))) for k in ("novel", "news"))
    assert len(novel) > 1000 and max(len(s.split()) for s in novel) < 200
    ended = [s for s in novel if re.search(r"[.!?][\"')]*$", s)]
    assert len(ended) / len(novel) > 0.95, [s for s in novel if s not in ended][:5]
    assert len(set(news) & set(novel)) > 0.6 * len(novel)
    tok = TextTokenizer.from_file(tokenizer_path("wikitext2-wordpiece"))
    for name, documents in (("novel", None), ("news", 12)):
        segmented = tokenize_segments(Corpus(str(prose[name])), tok, prose[name].parent / f"cache-{name}")
        assert len(segmented.segment_ends) > 3 * len(segmented.doc_ends)
        assert documents in (None, len(segmented.doc_ends))


@pytest.mark.parametrize("layout, objective, extra", [
    ("novel", "mlm", ["objective.sentence_task=nsp"]),
    ("news", "mlm", ["objective.sentence_task=sop"]),
    ("novel", "simcse", ["data.valid=", "model.init_from=", "objective.sts_eval=", "data.seq_len=32"]),
])
def test_sentence_objectives_train_on_prose(prose, layout, objective, extra, tmp_path):
    valid = [] if objective == "simcse" else [f"data.valid={prose[layout]}"]
    out = tmp_path / "run"
    train(tiny_config(objective, out, f"data.train={prose[layout]}", *valid, *extra, "train.max_steps=2",
                      "train.save_every=0", "eval.max_batches=1", "eval.likelihood_max_words=0"))
    steps = [r for r in metrics_rows(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss"]) for r in steps)
    task = {"mlm": extra[0].split("=")[1], "simcse": "simcse"}[objective]
    assert all(0 <= r[f"{task}_acc"] <= 1 for r in steps)


def test_pairs_make_on_prose_and_its_shortfall_warning(prose, tmp_path, capsys):
    code, out, err = cli(capsys, "pairs", "make", prose["news"], tmp_path / "pairs.jsonl", "--per-type", "20")
    assert code == 0 and json.loads(out)["pairs"] == 60 and err == ""
    records = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert all(5 <= len(r["sentence_good"].split()) <= 30 for r in records)
    code, out, err = cli(capsys, "pairs", "make", prose["novel"], tmp_path / "many.jsonl", "--per-type", "5000")
    made = json.loads(out)
    assert code == 0 and 0 < made["pairs"] < 15000 and len((tmp_path / "many.jsonl").read_text().splitlines()) == \
        made["pairs"]
    assert err.startswith("warning: made fewer pairs than the 5000 asked per type (adjacent_word_swap ")
    assert err.count("\n") == 1 and f"{prose['novel']} has " in err and "lower --per-type" in err

