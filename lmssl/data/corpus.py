"""Corpora -> documents (strings), read through Hugging Face `datasets`, which never reaches for a hub here.

A corpus is a local file (text, JSONL, CSV/TSV, Parquet, Arrow), a `Dataset.save_to_disk` directory, or a Hub
dataset `name:config:split` read from the user's local `datasets` cache. Plain text: documents separated by
blank lines, one per line, or WikiText-style, where a top-level ` = Title = ` heading starts a document. Rows
(every other kind): one document per row of `text_field`, unless the rows are WikiText lines (the Hub's
`wikitext`), which are grouped as the text file is. `holdout` splits the documents deterministically into a
training part and a held-out part (data.valid=auto).
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Literal

from lmssl.data.utf8 import not_utf8
from lmssl.errors import ConfigError

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never reach for a hub at run time

WIKITEXT_TITLE = re.compile(r"^ ?= [^=].* = ?$")  # ' = Title = ', not ' = = Section = = '
SUFFIX_FORMATS = {".txt": "text", ".raw": "text", ".tokens": "text", ".text": "text", ".jsonl": "jsonl",
                  ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".arrow": "arrow"}
BUILDERS = {"text": "text", "jsonl": "json", "csv": "csv", "tsv": "csv", "parquet": "parquet", "arrow": "arrow"}
TEXT_FORMATS = ("text", "jsonl", "csv", "tsv")  # checked for encoding before `datasets` reads them
HUB_NAME = re.compile(r"^(?P<name>[\w.-]+(?:/[\w.-]+)?):(?P<config>[\w.-]*):(?P<split>[\w.%\[\]:+-]+)$")


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return SUFFIX_FORMATS.get(path.suffix.lower(), "text")


CHECK_CHUNK = 1 << 20
STREAMING_CHECK_BYTES = 16 << 20  # a streamed corpus may be huge: its head is checked, the rest while reading


def check_text(path: Path, limit: int = 0) -> None:
    """ConfigError naming the file when it is empty, binary or not UTF-8 (with the byte offset and line), checked
    on its first `limit` bytes (0 = all) before `datasets` reads it (whose errors say none of this)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines, seen_text = 0, 1, False
    with open(path, "rb") as f:
        while chunk := f.read(CHECK_CHUNK):
            nul = chunk.find(b"\0")
            if nul >= 0:
                line = lines + chunk.count(b"\n", 0, nul)
                raise ConfigError(f"{path}: not text (a NUL byte at byte {offset + nul}, line {line}); corpora are "
                                  f"UTF-8 text, .jsonl, .csv/.tsv, .parquet or .arrow")
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                line = lines + chunk.count(b"\n", 0, e.start)
                raise not_utf8(path, offset + e.start, line, chunk[e.start]) from None
            seen_text = seen_text or bool(chunk.strip())
            offset, lines = offset + len(chunk), lines + chunk.count(b"\n")
            if limit and offset >= limit:
                return
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (it ends inside a character, byte {offset})") from None
    if offset == 0:
        raise ConfigError(f"{path}: the file is empty")
    if not seen_text:
        raise ConfigError(f"{path}: the file holds only whitespace")


def index_hash(index: int) -> float:
    """Document `index`'s place in [0, 1): the held-out part is every document placed below data.valid_fraction."""
    digest = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2 ** 64


def held_out(index: int, fraction: float) -> bool:
    """Whether document `index` belongs to the held-out part: a hash of the index below `fraction`, so the split
    is the same in every run and process, needs no document count and works while streaming."""
    return index_hash(index) < fraction


def fraction_holding_out(total: int, wanted: int) -> float:
    """The smallest data.valid_fraction, at two significant digits, that holds out `wanted` of `total` documents."""
    place = sorted(index_hash(i) for i in range(total))[wanted - 1]
    digits = 10 ** (1 - math.floor(math.log10(place)))
    return math.floor(place * digits + 1) / digits


SAMPLED_BLOCKS, BLOCK_BYTES = 64, 4096  # a file's sampled hash reads at most 256 KiB, spread over it


def sampled_hash(path: Path) -> str:
    """SHA-1 of SAMPLED_BLOCKS blocks of BLOCK_BYTES spread evenly over the file (all of a small one)."""
    size, digest = path.stat().st_size, hashlib.sha1()
    with open(path, "rb") as f:
        for k in range(SAMPLED_BLOCKS):
            f.seek(k * max(0, size - BLOCK_BYTES) // max(1, SAMPLED_BLOCKS - 1))
            digest.update(f.read(BLOCK_BYTES))
    return digest.hexdigest()[:20]


@dataclass(frozen=True)
class Corpus:
    """Where a corpus's documents come from and how they are read."""
    location: str  # a file, a save_to_disk directory, or a Hub dataset 'name:config:split'
    fmt: str = "auto"  # file format (see SUFFIX_FORMATS); auto = from the file suffix
    doc_split: str = "auto"  # how text lines (or rows) group into documents; see group_lines
    text_field: str = "text"  # the column holding the text, for everything but plain text files
    holdout: float = 0.0  # share of the documents held out (data.valid=auto's data.valid_fraction)
    part: Literal["all", "train", "valid"] = "all"  # every document, those not held out, or the held-out ones

    @property
    def kind(self) -> Literal["file", "disk", "hub"]:
        path = Path(self.location)
        if path.is_dir():
            return "disk"
        return "hub" if not path.exists() and HUB_NAME.match(self.location) else "file"

    @property
    def label(self) -> str:
        """A short name for progress bars and cache entries ('train.txt', 'train.txt-valid')."""
        base = self.location if self.kind == "hub" else Path(self.location).name
        return base if self.part == "all" else f"{base}-{self.part}"

    def identity(self) -> dict:
        """What its tokenization cache entries are keyed by: the source's contents (by size, modification time and
        a hash of sampled blocks of its files: a file rewritten with its old size and time is re-tokenized) and
        every reading option."""
        if self.kind == "hub":
            files = [Path(f["filename"]) for f in self._rows().cache_files]
        elif self.kind == "disk":
            files = sorted(p for p in Path(self.location).rglob("*") if p.is_file())
        else:
            files = [Path(self.location)]
        stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns, sampled_hash(f)) for f in files]
        location = self.location if self.kind == "hub" else str(Path(self.location).resolve())
        return {**asdict(self), "location": location, "files": stats}  # the same entry from any working directory

    def file_format(self) -> str:
        """The format a file corpus is read in: data.format, else from the suffix."""
        return detect_format(Path(self.location), self.fmt)

    def check(self) -> None:
        """Fail now, in one line, on a source that cannot be read (missing from the cache, empty, not UTF-8)."""
        if self.kind == "file" and self.file_format() in TEXT_FORMATS:
            check_text(Path(self.location), limit=STREAMING_CHECK_BYTES)
        elif self.kind != "file":
            self._rows()

    def documents(self, streaming: bool = False) -> Iterator[str]:
        """Its documents in order (only the part it names); a read error on the way (past the head a streamed
        corpus is checked on) is one ConfigError naming the source."""
        try:
            docs = self._documents(streaming)
            yield from (docs if self.part == "all" else self._part(docs))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{self.location}: not UTF-8 text ({e.reason} at byte {e.start} of a block read "
                              f"while streaming); convert it, e.g. iconv -f latin1 -t utf-8") from None

    def _part(self, docs: Iterable[str]) -> Iterator[str]:
        wanted = self.part == "valid"
        counts = {True: 0, False: 0}
        for i, doc in enumerate(docs):
            side = held_out(i, self.holdout)
            counts[side] += 1
            if side == wanted:
                yield doc
        if not counts[wanted]:
            total = counts[True] + counts[False]
            what = "held out none" if wanted else "held out all"
            fix = "change data.valid_fraction"
            if wanted and total >= 2:  # a small corpus: name the fraction that holds out a few of its documents
                fraction = fraction_holding_out(total, max(1, min(total // 10, 3)))
                fix = (f"data.valid_fraction={fraction:g} holds out "
                       f"{sum(held_out(i, fraction) for i in range(total))} of them")
            raise ConfigError(f"data.valid=auto {what} of the {total} documents of {self.location} (data."
                              f"valid_fraction={self.holdout}); {fix}, or set data.valid to a corpus of its own")

    def _documents(self, streaming: bool) -> Iterator[str]:
        rows = self._rows(streaming)
        text_file = self.kind == "file" and self.file_format() == "text"
        lines = (row["text"] for row in rows) if text_file else self._texts(rows)
        doc_split = self.doc_split
        if doc_split == "auto":
            head = list(islice(lines, 1000))
            doc_split = detect_doc_split(head, rows_are_documents=not text_file)
            lines = _chain(head, lines)
        yield from group_lines(lines, doc_split)

    def _texts(self, rows) -> Iterator[str]:
        columns = list(rows.features) if rows.features is not None else None
        if columns is not None and self.text_field not in columns:
            raise ConfigError(f"{self.location}: no column '{self.text_field}' (data.text_field); columns are: "
                              f"{', '.join(columns)}")
        for i, row in enumerate(rows):
            text = row.get(self.text_field)
            if text is None:
                raise ConfigError(f"{self.location}: row {i + 1} has no '{self.text_field}' field (data.text_field)")
            if not isinstance(text, str):
                raise ConfigError(f"{self.location}: row {i + 1}: '{self.text_field}' must be a string, got "
                                  f"{type(text).__name__}")
            yield text

    def _rows(self, streaming: bool = False):
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()  # not "Using the latest cached version ..." on every read
        if self.kind == "disk":
            return _load_from_disk(Path(self.location))
        if self.kind == "hub":
            return _load_hub(self.location)
        path = Path(self.location)
        fmt = self.file_format()
        if fmt in TEXT_FORMATS:
            check_text(path, STREAMING_CHECK_BYTES if streaming else 0)
        kwargs = {"text": {"keep_linebreaks": False}, "tsv": {"sep": "\t"}}.get(fmt, {})
        try:
            return datasets.load_dataset(BUILDERS[fmt], data_files=str(path), split="train", streaming=streaming,
                                         **kwargs)
        except Exception as e:  # datasets wraps parse errors in many types; name the file either way
            raise ConfigError(f"{path}: could not be read as {fmt}: {_first_line(e)}") from None


def _load_from_disk(path: Path):
    import datasets

    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        raise ConfigError(f"{path}: a DatasetDict saved with save_to_disk; point at one of its splits: "
                          + ", ".join(str(path / s) for s in splits))
    if not (path / "state.json").is_file():
        raise ConfigError(f"{path}: a directory, but not one written by Dataset.save_to_disk (no state.json); "
                          f"point at a corpus file in it, or save the dataset with save_to_disk")
    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:
        raise ConfigError(f"{path}: could not be read as a save_to_disk dataset: {_first_line(e)}") from None


def _load_hub(location: str):
    import datasets

    name, config, split = HUB_NAME.match(location).group("name", "config", "split")
    try:
        return datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # offline: ConnectionError for a dataset not in the cache, ValueError for a config
        cache = datasets.config.HF_DATASETS_CACHE
        fetch = f"datasets.load_dataset({name!r}, {config or None!r}, split={split!r})"
        raise ConfigError(f"{location}: the Hub dataset is not in the local datasets cache ({cache}), and lmssl "
                          f"reads the Hub offline only ({_first_line(e)}). On a machine with internet run "
                          f"`python -c \"import datasets; {fetch}\"` with the same HF_DATASETS_CACHE, or save it "
                          f"with save_to_disk and point at that directory") from None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def iter_documents(path: Path | str, fmt: str = "auto", doc_split: str = "auto", text_field: str = "text",
                   streaming: bool = False) -> Iterator[str]:
    """Documents of one corpus (a file, a save_to_disk directory or a Hub name), in order."""
    return Corpus(str(path), fmt, doc_split, text_field).documents(streaming)


def detect_doc_split(lines: list[str], rows_are_documents: bool = False) -> str:
    """WikiText when the first line is a WikiText title; else one document per row (row formats), or per
    blank-line-separated block of a text file (per line when it has no blank lines)."""
    first = next((line for line in lines if line.strip()), "")
    if WIKITEXT_TITLE.match(first.rstrip("\n")):
        return "wikitext"
    if rows_are_documents:
        return "line"
    return "blank_line" if any(not line.strip() for line in lines) else "line"


def group_lines(lines: Iterable[str], doc_split: str) -> Iterator[str]:
    """Group text lines into documents."""
    if doc_split == "line":
        yield from (line.strip() for line in lines if line.strip())
        return
    doc: list[str] = []
    for line in lines:
        line = line.rstrip("\n")
        if doc_split == "wikitext":
            if WIKITEXT_TITLE.match(line) and doc:
                yield "\n".join(doc)
                doc = []
            if line.strip():
                doc.append(line.strip())
        elif line.strip():
            doc.append(line.strip())
        elif doc:
            yield "\n".join(doc)
            doc = []
    if doc:
        yield "\n".join(doc)


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest
