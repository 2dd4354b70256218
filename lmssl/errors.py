"""User-facing errors: the CLI prints them in one line and exits 2, without a traceback."""
from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A problem with what the user gave (a key, a file, a path); the message says which and what is valid."""


def did_you_mean(word: str, valid: list[str], list_valid: bool = True) -> str:
    """'; did you mean X?' for the closest valid word, else the list of valid words (or nothing)."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; valid keys: {', '.join(sorted(valid))}" if list_valid else ""
