"""What the likelihood evaluators share: the text to score, its size, the summary of a score, and
the evaluator that fits an objective (PPL for causal models, pseudo-PPL for masked ones).

Texts are read as documents (`lmssl.data.corpus.iter_documents`: WikiText headings, blank lines,
one per line, JSONL/Parquet rows) and every document is scored on its own, as the models were
trained with document boundaries. Normalisers that make scores comparable across tokenizers are
computed on the scored text itself: UTF-8 bytes, and whitespace-separated words.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

from lmssl.config import Config, ConfigError, data_root, resolve_data_path

WORD = re.compile(r"\S+")


def resolve_text_file(value: str, cfg: Config) -> Path:
    """The file to score: absolute, relative to the working directory if it exists there, else to the data root."""
    p = Path(value).expanduser()
    candidate = p if p.is_absolute() or p.exists() else data_root(cfg) / p
    if not candidate.is_file():
        raise ConfigError(f"FILE: text file not found: {value} (looked in the working directory and the data root "
                          f"{data_root(cfg)}; set LMSSL_DATA)")
    return candidate


def resolve_checkpoint(value: str) -> Path:
    """A checkpoint directory, a run directory's latest checkpoint, or a Hugging Face model directory."""
    from lmssl.checkpoint import latest_checkpoint
    from lmssl.interop.hf import is_hf_dir

    path = Path(value).expanduser()
    if not (path / "model.safetensors").is_file() and not is_hf_dir(path):
        path = latest_checkpoint(path) or path  # load_pretrained names the problem if there is none
    return path


def load_checkpoint(value: str, device: str = "auto"):
    """(checkpoint directory, config, tokenizer, objective in eval mode) of a checkpoint, a run directory
    (its latest checkpoint) or a Hugging Face model directory."""
    import torch

    from lmssl.checkpoint import load_pretrained

    path = resolve_checkpoint(value)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, tokenizer, objective = load_pretrained(path, device)
    return path, cfg, tokenizer, objective


def read_documents(path: Path, max_words: int = 0, fmt: str = "auto", doc_split: str = "auto",
                   text_field: str = "text") -> list[str]:
    """The documents of a corpus file (`iter_documents`), cut after `max_words` words (0 = all)."""
    from lmssl.data.corpus import iter_documents

    documents = first_words(iter_documents(path, fmt, doc_split, text_field), max_words)
    if not documents:
        raise ConfigError(f"{path}: no text to score")
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
    words = sum(count_words(d) for d in documents)
    nbytes = sum(count_bytes(d) for d in documents)
    nll = -log_likelihood
    if causal:
        return {"quantity": "perplexity", "ppl": _exp(nll / tokens), "nll": nll / tokens, "tokens": tokens,
                "bits_per_byte": nll / math.log(2) / nbytes, "bytes": nbytes, "words": words,
                "word_ppl": _exp(nll / words), "documents": len(documents)}
    return {"quantity": "pseudo-perplexity", "pppl": _exp(nll / tokens), "pll": log_likelihood, "tokens": tokens,
            "words": words, "word_pppl": _exp(nll / words), "bytes": nbytes, "documents": len(documents)}


def _exp(x: float) -> float:
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


def likelihood_kind(objective) -> str | None:
    """'ppl' for a causal LM, 'pppl' for a masked LM (or an objective whose `generator` is one, as ELECTRA's),
    None for objectives without a token distribution (SimCSE)."""
    from lmssl.model.heads import CausalLMHead, MaskedLMHead

    if objective.causal:
        return "ppl" if isinstance(getattr(objective, "head", None), CausalLMHead) else None
    source = getattr(objective, "generator", objective)
    return "pppl" if isinstance(getattr(source, "head", None), MaskedLMHead) else None


def evaluate_text(objective, tokenizer, cfg: Config, documents: list[str], *, max_length: int = 0, stride: int = 0,
                  batch_size: int = 16, batch_tokens: int = 8192, word_l2r: bool = False,
                  progress: bool = False) -> dict:
    """PPL of a causal objective or pseudo-PPL of a masked one, with default windows (training length, half stride)."""
    kind = likelihood_kind(objective)
    if kind is None:
        raise ConfigError(f"objective '{cfg.objective.name}' has no language-model head: neither PPL nor pseudo-PPL "
                          f"applies (checkpoints of 'clm' and 'mlm' do)")
    if kind == "ppl":
        from lmssl.evaluation.perplexity import default_window, perplexity

        max_length, stride = default_window(cfg, max_length, stride)
        return perplexity(objective, tokenizer, documents, max_length=max_length, stride=stride,
                          batch_size=batch_size, progress=progress)
    from lmssl.evaluation.pseudo_perplexity import default_window, pseudo_perplexity

    max_length, stride = default_window(cfg, max_length, stride)
    return pseudo_perplexity(objective, tokenizer, documents, max_length=max_length, stride=stride,
                             batch_tokens=batch_tokens, word_l2r=word_l2r, progress=progress)[0]


# keys logged to metrics.jsonl by training (`val_ppl` there is exp(val_loss) on packed sequences, a different thing)
VALIDATION_KEYS = {"ppl": "val_sliding_ppl", "word_ppl": "val_word_ppl", "bits_per_byte": "val_bits_per_byte",
                   "pppl": "val_pppl", "word_pppl": "val_word_pppl", "tokens": "val_likelihood_tokens"}


class ValidationLikelihood:
    """During training: PPL (causal) or pseudo-PPL (masked) on the first `eval.likelihood_max_words` words of
    data.valid, read once; each call scores the objective's current weights (in eval mode, fp32)."""

    @classmethod
    def create(cls, cfg: Config, tokenizer, objective) -> "ValidationLikelihood | None":
        """None when it is off (eval.likelihood_max_words=0), there is no data.valid, or the objective has no
        language-model head."""
        if not (cfg.data.valid and cfg.eval.likelihood_max_words and likelihood_kind(objective)):
            return None
        return cls(cfg, tokenizer)

    def __init__(self, cfg: Config, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        path = resolve_data_path(cfg, cfg.data.valid, "data.valid")
        self.documents = read_documents(path, cfg.eval.likelihood_max_words, cfg.data.format, cfg.data.doc_split,
                                        cfg.data.text_field)

    def __call__(self, objective) -> dict[str, float]:
        was_training = objective.training
        result = evaluate_text(objective.eval(), self.tokenizer, self.cfg, self.documents)
        objective.train(was_training)
        return {VALIDATION_KEYS[k]: v for k, v in result.items() if k in VALIDATION_KEYS}
