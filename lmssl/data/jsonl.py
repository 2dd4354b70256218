"""A user's JSONL file (task examples, minimal pairs): one JSON object per line, blank lines skipped, a bad line named
by its number."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from lmssl.data.utf8 import utf8_problem
from lmssl.errors import ConfigError


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line; a byte-order mark is dropped."""
    try:
        yield from _objects(path)
    except UnicodeDecodeError as e:
        raise (utf8_problem(Path(path)) or e) from None


def _objects(path: Path) -> Iterator[tuple[int, dict]]:
    with Path(path).open(encoding="utf-8-sig") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{line}: not valid JSON: {e}") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{line}: expected a JSON object per line")
            yield line, row
