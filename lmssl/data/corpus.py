"""Corpus files -> documents (strings), through Hugging Face `datasets` (local files only).

Plain text: documents separated by blank lines, one per line, or WikiText-style, where a top-level
` = Title = ` heading starts a document. JSONL and Parquet: one document per row (`text_field`).
"""
from __future__ import annotations

import os
import re
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from lmssl.errors import ConfigError

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never reach for a hub at run time

WIKITEXT_TITLE = re.compile(r"^ ?= [^=].* = ?$")  # ' = Title = ', not ' = = Section = = '
SUFFIX_FORMATS = {".txt": "text", ".raw": "text", ".tokens": "text", ".text": "text",
                  ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


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
                                  f"UTF-8 text, .jsonl or .parquet")
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                line = lines + chunk.count(b"\n", 0, e.start)
                raise ConfigError(f"{path}: not UTF-8 text (byte {offset + e.start}, line {line}: "
                                  f"0x{chunk[e.start]:02x}); convert it, e.g. iconv -f latin1 -t utf-8") from None
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


def _load(path: Path, fmt: str, streaming: bool):
    import datasets

    if fmt in ("text", "jsonl"):
        check_text(path, STREAMING_CHECK_BYTES if streaming else 0)

    datasets.disable_progress_bars()
    builder = {"text": "text", "jsonl": "json", "parquet": "parquet"}[fmt]
    kwargs = {"keep_linebreaks": False} if builder == "text" else {}
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", streaming=streaming, **kwargs)
    except Exception as e:  # datasets wraps parse errors in many types; name the file either way
        raise ConfigError(f"{path}: could not be read as {fmt}: {e}") from None


def detect_doc_split(lines: list[str]) -> str:
    first = next((line for line in lines if line.strip()), "")
    if WIKITEXT_TITLE.match(first.rstrip("\n")):
        return "wikitext"
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


def iter_documents(path: Path, fmt: str = "auto", doc_split: str = "auto", text_field: str = "text",
                   streaming: bool = False) -> Iterator[str]:
    """Documents of one corpus file, in file order; a read error on the way (past the head a streamed corpus
    is checked on) is one ConfigError naming the file."""
    try:
        yield from _documents(path, fmt, doc_split, text_field, streaming)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a block read while "
                          f"streaming); convert it, e.g. iconv -f latin1 -t utf-8") from None


def _documents(path: Path, fmt: str, doc_split: str, text_field: str, streaming: bool) -> Iterator[str]:
    fmt = detect_format(path, fmt)
    ds = _load(path, fmt, streaming)
    if fmt == "text":
        lines = (row["text"] for row in ds)
        if doc_split == "auto":
            head = list(islice(lines, 1000))
            doc_split = detect_doc_split(head)
            lines = _chain(head, lines)
        yield from group_lines(lines, doc_split)
        return
    columns = list(ds.features) if ds.features is not None else None
    if columns is not None and text_field not in columns:
        raise ConfigError(f"{path}: no column '{text_field}' (data.text_field); columns are: {', '.join(columns)}")
    for i, row in enumerate(ds):
        text = row.get(text_field)
        if text is None:
            raise ConfigError(f"{path}: row {i + 1} has no '{text_field}' field (data.text_field)")
        if not isinstance(text, str):
            raise ConfigError(f"{path}: row {i + 1}: '{text_field}' must be a string, got {type(text).__name__}")
        if text.strip():
            yield text


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest
