"""Sentence pairs for BERT's next-sentence prediction (NSP) and ALBERT's sentence-order prediction (SOP).

Built as BERT's `create_pretraining_data.py` builds them (Devlin et al. 2019, §3.1 and appendix A.1),
from documents cut into *segments*:
  - segments: the sentences of a document (lmssl.data.sentence_split): WikiText's lines (paragraphs and
    headings) cut by WikiText's own rule (a sentence ends at a space-separated . ! ?), any other text
    (prose paragraphs, one article per line) by a sentence segmenter. Segments are only the places where
    a pair may be cut, so a rare wrong sentence cut costs little;
  - a document's segments are accumulated into a chunk until it reaches a target length
    (seq_len - 3, or with probability `short_seq_prob` per document a random shorter one, as BERT,
    so the model also sees the short inputs of fine-tuning); the chunk is cut at a random segment
    boundary into A and B;
  - NSP: with probability 1/2, B is replaced by segments from a random other document (label 1,
    "random next"); the segments of the chunk it displaced are put back, as BERT does.
    SOP (Lan et al. 2020, ALBERT §4.1): B always follows A, and with probability 1/2 the two are
    swapped (label 1);
  - the longer of A and B is truncated (one token at a time, from the front or back at random) until
    `[CLS] A [SEP] B [SEP]` fits seq_len; shorter pairs are padded with [PAD].
A chunk always holds two segments or more (a document's lone last segment joins the chunk before it),
so both labels are possible for every chunk. Documents of one segment never form a chunk (they can
still be NSP's random B); a corpus where every document is one segment has no pairs at all.

Everything is planned once, when the dataset is built, by one generator seeded with `seed`: an
example is then a pure function of its index, so a resumed run sees exactly the same pairs (the
masking is redrawn every step by the objective, as for packed sequences). Segment token ids are
cached on disk like packing.py's streams; the plans are cheap and rebuilt every run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmssl.data.cache import cached_arrays, encode_in_chunks, stream_dtype
from lmssl.data.corpus import Corpus
from lmssl.data.packing import Example
from lmssl.data.sentence_split import detect_rule, split_document
from lmssl.data.tokenizer import TextTokenizer

SEGMENTS_VERSION = 2  # part of the cache key: bump when split_segments changes (2: prose by a segmenter)
TASKS = ("nsp", "sop")


def split_segments(document: str, rule: str = "wikitext") -> list[str]:
    """The segments of a document: its sentences by `rule` (lmssl.data.sentence_split.RULES)."""
    return split_document(document, rule)


@dataclass
class SegmentedCorpus:
    tokens: np.ndarray  # (N,) token ids of every segment, concatenated in file order (no separators)
    segment_ends: np.ndarray  # (S,) offset in `tokens` where each segment ends
    doc_ends: np.ndarray  # (D,) index in the segments where each document ends (exclusive)


def tokenize_segments(corpus: Corpus, tokenizer: TextTokenizer, cache_root: Path) -> SegmentedCorpus:
    """The segmented corpus, from the cache when the same corpus was tokenized the same way."""

    def segments():  # (document index, segment text)
        rule = detect_rule(corpus)  # from the corpus's contents and options, which key the cache already
        for d, doc in enumerate(corpus.documents()):
            yield from ((d, s) for s in split_segments(doc, rule))

    def build():
        chunks, segment_ends, doc_ends, total, current = [], [], [], 0, None
        with tqdm(desc=f"tokenizing segments of {corpus.label}", unit=" segments", leave=False) as bar:
            for (d, _), ids in encode_in_chunks(tokenizer, segments(), text=lambda item: item[1]):
                bar.update()
                if not ids:
                    continue
                if current is not None and d != current:  # a document ends at its last non-empty segment
                    doc_ends.append(len(segment_ends))
                current = d
                chunks.append(np.asarray(ids, dtype=stream_dtype(tokenizer.vocab_size)))
                total += len(ids)
                segment_ends.append(total)
        if not chunks:
            raise ValueError(f"{corpus.location}: no documents found (is the file empty?)")
        doc_ends.append(len(segment_ends))
        arrays = {"tokens": np.concatenate(chunks), "segment_ends": np.asarray(segment_ends, dtype=np.int64),
                  "doc_ends": np.asarray(doc_ends, dtype=np.int64)}
        return arrays, {"tokens": total, "segments": len(segment_ends), "documents": len(doc_ends)}

    arrays = cached_arrays(corpus, tokenizer, cache_root, "segments", ("tokens", "segment_ends", "doc_ends"), build,
                           kind="segments", version=SEGMENTS_VERSION)
    return SegmentedCorpus(arrays["tokens"], arrays["segment_ends"], arrays["doc_ends"])


def truncated_lengths(len_a: int, len_b: int, max_total: int) -> tuple[int, int]:
    """BERT's truncate_seq_pair, lengths only: while the pair is too long, drop a token from the longer
    segment (from B on a tie). Closed form: the longer shrinks to the shorter, then they alternate."""
    excess = len_a + len_b - max_total
    if excess <= 0:
        return len_a, len_b
    if len_a > len_b:
        gap = len_a - len_b
        if excess <= gap:
            return len_a - excess, len_b
        excess -= gap
        return len_b - excess // 2, len_b - (excess + 1) // 2  # equal now: B loses first
    gap = len_b - len_a
    if excess <= gap:
        return len_a, len_b - excess
    excess -= gap
    return len_a - excess // 2, len_a - (excess + 1) // 2


def _trim(lo: int, hi: int, keep: int, rng: np.random.Generator) -> tuple[int, int]:
    """[lo, hi) cut to `keep` tokens, each dropped token from the front or the back with probability 1/2 (BERT)."""
    drop = hi - lo - keep
    if drop <= 0:
        return lo, hi
    front = int(rng.binomial(drop, 0.5))
    return lo + front, hi - (drop - front)


def plan_pairs(corpus: SegmentedCorpus, max_tokens: int, task: str, short_seq_prob: float,
               rng: np.random.Generator) -> np.ndarray:
    """(P, 5) int64 rows (a_start, a_stop, b_start, b_stop, label): token ranges of A and B in corpus.tokens,
    already truncated so the two hold at most `max_tokens` tokens. Label 1 = B is a random segment (NSP) or
    A and B are swapped (SOP); 0 = B follows A. Raises ValueError when the corpus cannot make pairs."""
    if task not in TASKS:
        raise ValueError(f"unknown sentence task {task!r}; choose one of {', '.join(TASKS)}")
    ends = corpus.segment_ends
    starts = np.concatenate([[0], ends[:-1]])
    lengths = ends - starts
    doc_hi = corpus.doc_ends
    doc_lo = np.concatenate([[0], doc_hi[:-1]])
    num_docs = len(doc_hi)
    if not (doc_hi - doc_lo >= 2).any():
        raise ValueError("every document is a single segment (sentence or line), so no document has a continuation "
                         "to pair with")
    if task == "nsp" and num_docs < 2:
        raise ValueError("next-sentence prediction needs at least two documents (random next segments come from "
                         "another document); this corpus has one")
    rows = []
    for d in range(num_docs):
        lo, hi = int(doc_lo[d]), int(doc_hi[d])
        if hi - lo < 2:
            continue
        target = max_tokens
        if rng.random() < short_seq_prob:  # BERT: once per document
            target = int(rng.integers(2, max_tokens + 1))
        first, i, length = lo, lo, 0
        while i < hi:
            length += int(lengths[i])
            if not (i == hi - 1 or (length >= target and i > first)):
                i += 1
                continue
            if hi - (i + 1) == 1:  # a lone last segment joins this chunk rather than being lost
                i += 1
            n = i + 1 - first
            next_first = i + 1
            if n >= 2:  # a lone segment left at a document's end (after a put-back) makes no pair
                cut = first + int(rng.integers(1, n))  # A = segments [first, cut), B starts at cut
                a = (int(starts[first]), int(ends[cut - 1]))
                if task == "nsp" and rng.random() < 0.5:
                    other = int(rng.integers(num_docs - 1))
                    other += other >= d  # any document but this one
                    j = k = int(rng.integers(doc_lo[other], doc_hi[other]))
                    want, got = max(1, target - (a[1] - a[0])), 0
                    while k < doc_hi[other] and got < want:
                        got += int(lengths[k])
                        k += 1
                    b, label = (int(starts[j]), int(ends[k - 1])), 1
                    next_first = cut  # BERT puts the displaced segments back
                else:
                    b, label = (int(starts[cut]), int(ends[i])), 0
                    if task == "sop" and rng.random() < 0.5:
                        a, b, label = b, a, 1
                keep_a, keep_b = truncated_lengths(a[1] - a[0], b[1] - b[0], max_tokens)
                rows.append((*_trim(*a, keep_a, rng), *_trim(*b, keep_b, rng), label))
            first, i, length = next_first, next_first, 0
    return np.asarray(rows, dtype=np.int64).reshape(-1, 5)


@dataclass
class PairExample(Example):
    token_type_ids: np.ndarray  # (T,) 0 for [CLS] A [SEP] (and padding), 1 for B [SEP]
    label: int  # 1 = B is a random segment (NSP) / A and B are swapped (SOP); 0 = B follows A


class SentencePairs:
    """Random-access `[CLS] A [SEP] B [SEP] [PAD]...` examples of exactly seq_len tokens.

    `doc_lengths` is [real tokens, padding] (or [seq_len]), so `data.document_mask` keeps the padding
    out of attention exactly as a key-padding mask does."""

    def __init__(self, corpus: SegmentedCorpus, seq_len: int, cls_id: int, sep_id: int, pad_id: int, task: str,
                 short_seq_prob: float = 0.1, seed: int = 0):
        self.tokens, self.seq_len = corpus.tokens, seq_len
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.plans = plan_pairs(corpus, seq_len - 3, task, short_seq_prob, np.random.default_rng(seed))

    def __len__(self) -> int:
        return len(self.plans)

    @property
    def labels(self) -> np.ndarray:
        """(N,) every pair's label, in order."""
        return self.plans[:, 4]

    def __getitem__(self, i: int) -> PairExample:
        a_lo, a_hi, b_lo, b_hi, label = (int(v) for v in self.plans[i])
        a, b = np.asarray(self.tokens[a_lo:a_hi]), np.asarray(self.tokens[b_lo:b_hi])
        real = len(a) + len(b) + 3
        ids = np.full(self.seq_len, self.pad_id, dtype=np.int64)
        ids[:real] = np.concatenate([[self.cls_id], a, [self.sep_id], b, [self.sep_id]])
        types = np.zeros(self.seq_len, dtype=np.int64)
        types[len(a) + 2:real] = 1
        lengths = [real, self.seq_len - real] if real < self.seq_len else [real]
        return PairExample(ids, lengths, types, label)
