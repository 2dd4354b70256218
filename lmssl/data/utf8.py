"""Files lmssl reads as text are UTF-8: a file that is not is named with the offset, line and value of its first
bad byte (what a user needs to find and convert it), never shown as a UnicodeDecodeError."""
from __future__ import annotations

import codecs
from pathlib import Path

from lmssl.errors import ConfigError

CHUNK = 1 << 20


def not_utf8(path: Path, offset: int, line: int, byte: int) -> ConfigError:
    return ConfigError(f"{path}: not UTF-8 text (byte {offset}, line {line}: 0x{byte:02x}); convert it, e.g. "
                       f"iconv -f latin1 -t utf-8")


def utf8_problem(path: Path) -> ConfigError | None:
    """The ConfigError for the first byte of `path` that is not UTF-8 (None when the whole file decodes); called
    after a reader met a UnicodeDecodeError, whose offset counts from its own buffer, not from the file's start."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                return not_utf8(path, offset + e.start, lines + chunk.count(b"\n", 0, e.start), chunk[e.start])
            offset, lines = offset + len(chunk), lines + chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return ConfigError(f"{path}: not UTF-8 text (it ends inside a character, byte {offset})")
    return None
