"""Semantic textual similarity (STS): Spearman correlation x 100 between the cosine similarity of two
sentence embeddings and the human score, the unsupervised protocol of SentEval as used by SimCSE
(Gao et al. 2021, §5.1 and Appendix B).

Sets (paths relative to the data root, see ../shared/data/README.md):
  stsb_dev    glue/STS-B/dev.tsv (header; sentence1, sentence2, score columns)
  stsb_test   sts/STSBenchmark/sts-test.csv (GLUE's STS-B test.tsv is unlabeled): fields [4] score, [5], [6]
              sentences; some rows carry 2 extra source columns, ignored
  sts12..16   sts/STS1x-en-test/STS.input.<subset>.txt + STS.gs.<subset>.txt, SentEval's subsets; pairs whose
              gold line is empty (STS15/16) are unscored and skipped, as SentEval does
  sickr       sts/SICK/SICK_test_annotated.txt (header, CRLF): sentences columns 1-2, relatedness column 3
Files are split on tabs only (sentences contain quotes). The raw, cased text is used; an uncased
tokenizer lower-cases it itself.

Aggregation: SimCSE's "all" setting for STS12-16 (its Table 5): the subsets of a year are concatenated
and one Spearman correlation is computed over all of their pairs. `avg` is the mean over the seven test
sets (STS12-16, STS-B test, SICK-R), as SimCSE's "Avg."; STS-B dev is for model selection only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from lmssl.config import STS_SETS, STS_TEST_SETS
from lmssl.data.sentences import pad_sentences
from lmssl.data.tokenizer import TextTokenizer
from lmssl.errors import ConfigError
from lmssl.model.attention import AttnSpec
from lmssl.model.pooling import POOLINGS, pool

AGGREGATION = "all"
STS_SUBSETS = {  # SentEval's subsets per year (STS13 without the licensed SMT subset)
    "sts12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "sts13": ("FNWN", "headlines", "OnWN"),
    "sts14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "sts15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "sts16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
TEST_SETS = STS_TEST_SETS  # averaged into `avg`
__all__ = ["AGGREGATION", "POOLINGS", "STS_SETS", "STS_SUBSETS", "TEST_SETS", "embed", "evaluate_sts", "load_sts",
           "spearman_x100"]


@dataclass
class StsPairs:
    first: list[str]  # first sentence of each scored pair
    second: list[str]  # second sentence
    gold: np.ndarray  # (N,) human similarity scores

    def __len__(self) -> int:
        return len(self.gold)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"STS file not found: {path} (the data root is set with LMSSL_DATA or --data-root)")
    return path.read_text(encoding="utf-8").splitlines()  # also strips SICK's CRLF


def _columns(path: Path, header: bool, score: int, first: int, second: int) -> StsPairs:
    rows = [line.split("\t") for line in _read_lines(path)[1 if header else 0:] if line]
    return StsPairs([r[first] for r in rows], [r[second] for r in rows], np.array([float(r[score]) for r in rows]))


def _senteval_year(root: Path, name: str) -> StsPairs:
    folder = root / "sts" / f"STS{name[3:]}-en-test"
    first, second, gold = [], [], []
    for subset in STS_SUBSETS[name]:
        pairs = [line.split("\t") for line in _read_lines(folder / f"STS.input.{subset}.txt")]
        scores = _read_lines(folder / f"STS.gs.{subset}.txt")
        if len(scores) != len(pairs):
            raise ConfigError(f"{folder}: STS.gs.{subset}.txt has {len(scores)} lines for {len(pairs)} sentence pairs")
        for (a, b, *_), score in zip(pairs, scores):
            if score.strip():  # STS15/16: an empty gold line marks an unscored pair
                first.append(a)
                second.append(b)
                gold.append(float(score))
    return StsPairs(first, second, np.array(gold))


def load_sts(root: Path, name: str) -> StsPairs:
    """The scored sentence pairs of one STS set (see the module docstring for the layouts)."""
    root = Path(root)
    if name == "stsb_dev":
        return _columns(root / "glue" / "STS-B" / "dev.tsv", header=True, score=9, first=7, second=8)
    if name == "stsb_test":
        return _columns(root / "sts" / "STSBenchmark" / "sts-test.csv", header=False, score=4, first=5, second=6)
    if name == "sickr":
        return _columns(root / "sts" / "SICK" / "SICK_test_annotated.txt", header=True, score=3, first=1, second=2)
    if name in STS_SUBSETS:
        return _senteval_year(root, name)
    raise ConfigError(f"unknown STS set {name!r}; choose from {', '.join(STS_SETS)}")


def spearman_x100(predicted: np.ndarray, gold: np.ndarray) -> float:
    return float(spearmanr(predicted, gold).statistic * 100)


@torch.no_grad()
def embed(encoder: torch.nn.Module, tokenizer: TextTokenizer, sentences: list[str], pooling: str, *,
          causal: bool = False, max_len: int = 512, batch_size: int = 64) -> torch.Tensor:
    """(N, H) sentence embeddings, in the order of `sentences`: the encoder's last hidden state at [CLS]
    (`cls`; SimCSE's `cls_before_pooler`) or its mean over the real tokens (`mean`). Inputs are
    `[CLS] s [SEP]` when the tokenizer has these tokens, else `s`; sentences are batched by length."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling: invalid value {pooling!r}; choose one of {', '.join(POOLINGS)}")
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    bert_style = cls_id is not None and sep_id is not None and not causal
    if pooling == "cls" and not bert_style:
        raise ConfigError("pooling 'cls' needs a bidirectional model whose tokenizer has [CLS]; use pooling 'mean'")
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    encoded = tokenizer.encode_batch(sentences)
    if bert_style:
        encoded = [[cls_id, *ids[:max_len - 2], sep_id] for ids in encoded]
    else:
        encoded = [(ids or [pad_id])[:max_len] for ids in encoded]  # an empty sentence still needs one position
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    device = next(encoder.parameters()).device
    out: torch.Tensor | None = None
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = pad_sentences([np.asarray(encoded[i]) for i in rows], pad_id)
        mask = mask.to(device)
        hidden = encoder(ids.to(device), AttnSpec.padded(causal, mask)).float()  # (B, T, H)
        pooled = pool(hidden, mask, pooling)
        if out is None:
            out = torch.empty(len(sentences), pooled.shape[-1])
        out[torch.from_numpy(rows)] = pooled.cpu()
    return out


def evaluate_sts(objective, tokenizer: TextTokenizer, root: Path, sets: tuple[str, ...] = STS_SETS, *,
                 pooling: str = "auto", batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    """Spearman x 100 per set (plus `avg` when all seven test sets are scored), with the objective's
    encoder in eval mode (no dropout). Sentences shared between sets are encoded once."""
    pooling = objective.sentence_pooling() if pooling == "auto" else pooling
    encoder, cfg = objective.encoder(), objective.cfg
    was_training = objective.training
    objective.eval()
    cache: dict[str, torch.Tensor] = {}
    scores: dict[str, float] = {}
    try:
        with tqdm(sets, desc="sts", unit="set", disable=not progress, leave=False) as bar:
            for name in bar:
                pairs = load_sts(root, name)
                new = sorted({*pairs.first, *pairs.second} - cache.keys())
                if new:
                    vectors = embed(encoder, tokenizer, new, pooling, causal=objective.causal,
                                    max_len=cfg.model.max_positions, batch_size=batch_size)
                    cache.update(zip(new, vectors))
                first = torch.stack([cache[s] for s in pairs.first])
                second = torch.stack([cache[s] for s in pairs.second])
                scores[name] = spearman_x100(F.cosine_similarity(first, second, dim=-1).numpy(), pairs.gold)
    finally:
        objective.train(was_training)
    if all(name in scores for name in TEST_SETS):
        scores["avg"] = float(np.mean([scores[name] for name in TEST_SETS]))
    return scores
