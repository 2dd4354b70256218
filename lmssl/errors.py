"""User-facing errors: the CLI prints them in one line, without a traceback. ConfigError (exit 2) is bad
input: a key, a file, a path. RunError (exit 1) is a run that cannot go on: it diverged, the disk is full."""
from __future__ import annotations

import difflib
import errno
import shutil
from pathlib import Path


class ConfigError(ValueError):
    """A problem with what the user gave (a key, a file, a path); the message says which and what is valid."""


class RunError(RuntimeError):
    """A run that stopped on a fault it cannot get past; the message says what happened and what to try."""


STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EIO: "input/output error"}
# what to do about each: only a full disk or quota is helped by freeing space
FREE_SPACE = "Free some space and run it again"
STORAGE_ADVICE = {errno.EROFS: "Remount it read-write or choose a directory on a writable file system, then run it "
                               "again",
                  errno.EACCES: "Make the directory writable for this user or choose another one, then run it again",
                  errno.EIO: "Check the device (dmesg, the file system's health) or choose another directory, then "
                             "run it again"}


# how torch's zip writer and safetensors report a failed write (they raise RuntimeError / their own error types),
# and numpy's np.save / tofile (an OSError without errno: "273659 requested and 73664 written")
WRITER_MESSAGES = ("file write failed", "iostream error", "unexpected pos", "No space left", "StorageFull",
                   "code: 28", " requested and ")
RESUME_HINT = " (a training run: with train.resume=true, from its last checkpoint)"
RUN_ADVICE = FREE_SPACE + RESUME_HINT


def _messages(error: BaseException) -> list[str]:
    """The messages of an exception and of those it was raised from or while handling."""
    found = []
    while error is not None and len(found) < 8:
        found.append(str(error))
        error = error.__cause__ or error.__context__
    return found


def _nearly_full(path: Path) -> bool:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < 64 << 20
    except OSError:
        return False


def did_you_mean(word: str, valid: list[str], list_valid: bool = True) -> str:
    """'; did you mean X?' for the closest valid word, else the list of valid words (or nothing)."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; valid keys: {', '.join(sorted(valid))}" if list_valid else ""


def free_space(path: Path) -> str:
    """'1.2 GB free on /mount', for messages about writes that failed."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "free space unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if free < 1024 or unit == "TB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1024
    return ""


def storage_error(error: BaseException, path: Path, advice: str = RUN_ADVICE) -> RunError | None:
    """A one-line RunError for a write that failed on storage (disk full, quota, read-only, I/O error), naming the
    path and the free space, then what to do: for a full disk or quota `advice`, for the other causes their own
    (STORAGE_ADVICE). torch's zip writer reports ENOSPC as a RuntimeError, numpy's writer as an OSError without
    errno."""
    reason = None
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        reason = STORAGE_ERRNOS[error.errno]
        if error.errno in STORAGE_ADVICE:
            advice = STORAGE_ADVICE[error.errno] + RESUME_HINT
    elif isinstance(error, Exception) and any(m in text for m in WRITER_MESSAGES for text in _messages(error)):
        reason = "no space left on device" if _nearly_full(path) else "write failed"
    if reason is None:
        return None
    return RunError(f"{reason} while writing {path} ({free_space(path)}); nothing was left half-written. {advice}")
