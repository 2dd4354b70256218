"""Text cut into sentences, by one of two rules:

  wikitext  tokenized WikiText's own convention (`split_wikitext`): words are separated by spaces, so a sentence ends
            at a space-separated '.', '!' or '?' while abbreviations and decimals stay glued ('U.S.', '1 @.@ 5');
  prose     ordinary text, by the `sentencex` segmenter (Wikimedia's, maintained; English abbreviations, initials,
            decimals, quotes and ellipses), the lines of a document joined first (hard-wrapped paragraphs), and a
            bare list number ("1.") joined to the sentence it numbers.

`detect_rule` picks `wikitext` for a WikiText corpus (its first line is a WikiText title, or data.doc_split=wikitext)
and `prose` for anything else. docs/data.md compares sentencex with pysbd, syntok and blingfire on
tests/data/hand_split_sentences.txt and on WikiText-2 (accuracy, speed, size).
"""
from __future__ import annotations

import dataclasses
import re
from itertools import islice

from sentencex import segment

from lmssl.data.corpus import WIKITEXT_TITLE, Corpus

RULES = ("wikitext", "prose")
TERMINALS = {".", "!", "?"}
QUOTE = '"'
LANGUAGE = "en"  # sentencex's abbreviation list for English (it falls back along a language chain for others)
LIST_NUMBER = re.compile(r"^\(?(\d{1,3}|[A-Za-z])[.)]$")  # "1." "a)" "(2)": sentencex cuts them off their item


def split_wikitext(paragraph: str) -> list[str]:
    """Sentences of a tokenized WikiText paragraph (words separated by spaces).

    A sentence ends at a space-separated '.', '!' or '?': in tokenized WikiText abbreviations and
    decimals stay glued ('U.S.', '1 @.@ 5'), so this rule rarely cuts inside a sentence. A '"' right
    after the terminal closes the sentence when it closes an open quotation (odd count so far);
    otherwise it opens the next one."""
    words = paragraph.split()
    sentences, current, quotes = [], [], 0
    for i, word in enumerate(words):
        current.append(word)
        quotes += word == QUOTE
        closes_quote = word == QUOTE and quotes % 2 == 0 and len(current) > 1 and current[-2] in TERMINALS
        ends = word in TERMINALS or closes_quote
        closing_quote_next = i + 1 < len(words) and words[i + 1] == QUOTE and quotes % 2 == 1
        if ends and not closing_quote_next:
            sentences.append(" ".join(current))
            current, quotes = [], 0
    if current:
        sentences.append(" ".join(current))
    return sentences


def split_prose(text: str) -> list[str]:
    """Sentences of ordinary text (its lines joined by spaces first), by sentencex; a bare list number ("1.")
    joins the sentence after it."""
    pieces = [p.strip() for p in segment(LANGUAGE, " ".join(text.split())) if p.strip()]
    sentences: list[str] = []
    for piece in pieces:
        if sentences and LIST_NUMBER.match(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def split_document(document: str, rule: str) -> list[str]:
    """The sentences of a document (lines joined by newlines): each line by the WikiText rule (its lines are
    paragraphs and headings), or the whole document as prose."""
    if rule == "wikitext":
        return [s for line in document.split("\n") if line.strip() for s in split_wikitext(line)]
    return split_prose(document) if document.strip() else []


def detect_rule(corpus: Corpus) -> str:
    """`wikitext` for a WikiText corpus (data.doc_split=wikitext, or a WikiText title on its first non-empty line),
    else `prose`."""
    if corpus.doc_split == "wikitext":
        return "wikitext"
    lines = dataclasses.replace(corpus, doc_split="line", part="all").documents()  # non-empty lines, stripped
    first = next(islice(lines, 1), "")
    return "wikitext" if WIKITEXT_TITLE.match(first) else "prose"
