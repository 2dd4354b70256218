"""What the likelihood evaluators share: the text to score, its size, the summary of a score, the windows.

Texts are read as documents (`lmssl.data.corpus.Corpus`: WikiText headings, blank lines,
one per line, JSONL/Parquet rows) and every document is scored on its own, as the models were
trained with document boundaries. Normalisers that make scores comparable across tokenizers are
computed on the scored text itself: UTF-8 bytes, and whitespace-separated words.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

from lmssl.config import Config
from lmssl.data.corpus import Corpus
from lmssl.data.paths import data_root
from lmssl.errors import ConfigError


class NonFiniteScore(ConfigError):
    """The model gave NaN or inf log-likelihoods: its weights overflow."""


WORD = re.compile(r"\S+")


def resolve_text_file(value: str, cfg: Config) -> Path:
    """The file to score: absolute, relative to the working directory if it exists there, else to the data root."""
    p = Path(value).expanduser()
    candidate = p if p.is_absolute() or p.exists() else data_root(cfg) / p
    if not candidate.is_file():
        raise ConfigError(f"FILE: text file not found: {value} (looked in the working directory and the data root "
                          f"{data_root(cfg)}; set LMSSL_DATA)")
    return candidate


def read_documents(corpus: Corpus, max_words: int = 0) -> list[str]:
    """The documents of a corpus, cut after `max_words` words (0 = all)."""
    documents = first_words(corpus.documents(), max_words)
    if not documents:
        raise ConfigError(f"{corpus.location}: no text to score")
    return documents


def first_words(documents: Iterable[str], max_words: int) -> list[str]:
    """Whole documents while they fit in `max_words` whitespace words, then the first words of the next one
    (cut at a word boundary). Words, unlike tokens, are the same for every tokenizer, so models with
    different vocabularies score exactly the same text. 0 = everything."""
    kept, used = [], 0
    for doc in documents:
        words = count_words(doc)
        if max_words and used + words > max_words:
            room = max_words - used
            if room > 0:
                end = [m.end() for m in WORD.finditer(doc)][room - 1]
                kept.append(doc[:end])
            break
        kept.append(doc)
        used += words
    return kept


def count_words(text: str) -> int:
    return len(WORD.findall(text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def summarize(log_likelihood: float, tokens: int, documents: list[str], causal: bool) -> dict:
    """The JSON fields of a score. `log_likelihood` is the total (natural log) over `tokens` scored tokens.

    Causal: nll = mean negative log-likelihood per token, ppl = exp(nll), bits_per_byte = total NLL / ln 2 /
    UTF-8 bytes, word_ppl = exp(total NLL / whitespace words). Masked: pll = the total pseudo-log-likelihood
    (Salazar et al. 2020), pppl = exp(-pll / tokens), word_pppl = exp(-pll / words)."""
    if not math.isfinite(log_likelihood):
        raise NonFiniteScore(f"the model's log-likelihood is not finite ({log_likelihood}): its weights overflow "
                             f"(a run that diverged); evaluate an earlier checkpoint")
    words = sum(count_words(d) for d in documents)
    nbytes = sum(count_bytes(d) for d in documents)
    nll = -log_likelihood
    if causal:
        return {"quantity": "perplexity", "ppl": capped_exp(nll / tokens), "nll": nll / tokens, "tokens": tokens,
                "bits_per_byte": nll / math.log(2) / nbytes, "bytes": nbytes, "words": words,
                "word_ppl": capped_exp(nll / words), "documents": len(documents)}
    return {"quantity": "pseudo-perplexity", "pppl": capped_exp(nll / tokens), "pll": log_likelihood, "tokens": tokens,
            "words": words, "word_pppl": capped_exp(nll / words), "bytes": nbytes, "documents": len(documents)}


def capped_exp(x: float) -> float:
    """exp(x), or inf where math.exp would raise OverflowError (a finite but terrible model's perplexity)."""
    return math.exp(x) if x < 700 else math.inf


def check_window(max_length: int, stride: int, cfg: Config, reserved: int = 0) -> None:
    """Window options against the model: positions it has embeddings for, and strides that leave no token out."""
    if max_length <= reserved:
        raise ConfigError(f"--max-length: must be greater than {reserved}, got {max_length}")
    if cfg.model.position == "learned" and max_length > cfg.model.max_positions:
        raise ConfigError(f"--max-length: {max_length} exceeds the model's {cfg.model.max_positions} learned positions "
                          f"(model.max_positions); use at most {cfg.model.max_positions}")
    if not 1 <= stride <= max_length - reserved:
        raise ConfigError(f"--stride: must be between 1 and {max_length - reserved} (--max-length {max_length}"
                          + (f" minus {reserved} special tokens" if reserved else "") + f"), got {stride}")


SPECIAL_TOKENS = {"ppl": 0, "pppl": 2}  # a masked model's window holds [CLS] and [SEP] besides the text


def default_window(cfg: Config, kind: str, max_length: int = 0, stride: int = 0) -> tuple[int, int]:
    """(max_length, stride) of PPL ('ppl') or pseudo-PPL ('pppl'): the training sequence length and half of its text
    part unless given; checked against the model."""
    reserved = SPECIAL_TOKENS[kind]
    max_length = max_length or cfg.data.seq_len
    stride = stride or max(1, (max_length - reserved) // 2)
    check_window(max_length, stride, cfg, reserved=reserved)
    return max_length, stride
