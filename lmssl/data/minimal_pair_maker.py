"""Minimal pairs made from a corpus (`lmssl pairs make`): a grammatical sentence of held-out text and a copy broken
by one small edit, in BLiMP's JSONL format (sentence_good, sentence_bad, UID, field), so that grammatical
preference can be measured on a user's own domain without downloading BLiMP (Warstadt et al. 2020).

Three perturbations, each a BLiMP-like paradigm (UID):
  - adjacent_word_swap (syntax): two neighbouring words trade places ("the cat sat" -> "cat the sat");
  - determiner_noun_number (morphology): a demonstrative changes number before its noun ("this year" ->
    "these year", "those days" -> "that days");
  - function_word_shuffle (syntax): the sentence's function words (articles, prepositions, auxiliaries, ...) are
    permuted among their own positions, the content words staying put.
An edit can produce a sentence that is still grammatical (swapping "and"-joined adjectives, "that" as a
conjunction); such pairs are noise that caps every model's accuracy below 100% equally.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

from lmssl.data.corpus import Corpus
from lmssl.data.sentences import iter_sentences
from lmssl.errors import ConfigError
from lmssl.storage.atomic import write_text

FUNCTION_WORDS = frozenset(
    "the a an of to in on at by for with from into about as and or but if than that this these those which who "
    "whom whose is was are were be been being has have had do does did will would can could should may might must "
    "not it its he she they them his her their we our you your i me my".split())
DETERMINER_NUMBER = {"this": "these", "these": "this", "that": "those", "those": "that"}
MIN_WORDS, MAX_WORDS = 5, 30  # sentences of other lengths are skipped (fragments, run-on list items)


def _is_word(token: str) -> bool:
    return token.isalpha()


def adjacent_word_swap(words: list[str], rng: random.Random) -> list[str] | None:
    """Swap two neighbouring, different words (punctuation and numbers stay put); None if none qualifies."""
    spots = [i for i in range(len(words) - 1) if _is_word(words[i]) and _is_word(words[i + 1])
             and words[i].lower() != words[i + 1].lower()]
    if not spots:
        return None
    i = rng.choice(spots)
    out = list(words)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


def determiner_noun_number(words: list[str], rng: random.Random) -> list[str] | None:
    """this <-> these, that <-> those before a word (the capital kept); None without a demonstrative."""
    spots = [i for i in range(len(words) - 1) if words[i].lower() in DETERMINER_NUMBER and _is_word(words[i + 1])]
    if not spots:
        return None
    i = rng.choice(spots)
    flipped = DETERMINER_NUMBER[words[i].lower()]
    out = list(words)
    out[i] = flipped.capitalize() if words[i][0].isupper() else flipped
    return out


def function_word_shuffle(words: list[str], rng: random.Random) -> list[str] | None:
    """Permute the function words among their positions until the sentence changes; None with fewer than two
    different function words."""
    spots = [i for i, w in enumerate(words) if w.lower() in FUNCTION_WORDS]
    values = [words[i] for i in spots]
    if len({v.lower() for v in values}) < 2:
        return None
    shuffled = list(values)
    while [v.lower() for v in shuffled] == [v.lower() for v in values]:
        rng.shuffle(shuffled)
    out = list(words)
    for i, v in zip(spots, shuffled):
        out[i] = v
    return out


PERTURBATIONS: dict[str, tuple[str, Callable[[list[str], random.Random], list[str] | None]]] = {
    "adjacent_word_swap": ("syntax", adjacent_word_swap),
    "determiner_noun_number": ("morphology", determiner_noun_number),
    "function_word_shuffle": ("syntax", function_word_shuffle),
}


def usable(sentence: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> bool:
    """A sentence worth perturbing: its length in range, no unknown-word placeholder (WikiText's <unk>)."""
    n = len(sentence.split())
    return min_words <= n <= max_words and "<unk>" not in sentence


def make_pairs(sentences: Iterable[str], per_type: int, seed: int = 0, min_words: int = MIN_WORDS,
               max_words: int = MAX_WORDS) -> Iterator[dict]:
    """Up to `per_type` pairs of each perturbation, from the usable sentences in a seeded random order (one pair
    per sentence and perturbation), as BLiMP JSONL records with a pair_id."""
    pool = [s for s in dict.fromkeys(sentences) if usable(s, min_words, max_words)]  # distinct, in order
    rng = random.Random(seed)
    rng.shuffle(pool)
    for uid, (field, perturb) in PERTURBATIONS.items():
        made = 0
        for sentence in pool:
            if made == per_type:
                break
            bad = perturb(sentence.split(), rng)
            if bad is None:
                continue
            yield {"sentence_good": sentence, "sentence_bad": " ".join(bad), "UID": uid, "field": field,
                   "pair_id": made}
            made += 1


def write_pairs(corpus: Corpus, out: Path, per_type: int, seed: int = 0, min_words: int = MIN_WORDS,
                max_words: int = MAX_WORDS, split: str = "auto") -> tuple[list[dict], str | None]:
    """`make_pairs` of the corpus's sentences written to `out` as JSONL: the records, and a warning naming the
    perturbations that made fewer than `per_type` pairs (None when every one made them all)."""
    sentences = [s for s in dict.fromkeys(iter_sentences(corpus, split)) if usable(s, min_words, max_words)]
    records = list(make_pairs(sentences, per_type, seed, min_words, max_words))
    if not records:
        raise ConfigError(f"{corpus.location}: no sentence of {min_words}-{max_words} words to perturb (--split "
                          f"{split}; --min-words, --max-words)")
    write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    made = Counter(r["UID"] for r in records)
    short = [f"{uid} {made[uid]}" for uid in PERTURBATIONS if made[uid] < per_type]
    if not short:
        return records, None
    return records, (f"warning: made fewer pairs than the {per_type} asked per type ({', '.join(short)}): "
                     f"{corpus.location} has {len(sentences)} distinct sentences of {min_words}-{max_words} words "
                     f"(--split {split}); use a larger corpus, or lower --per-type")
