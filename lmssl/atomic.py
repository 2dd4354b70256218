"""The one way a file or directory lands on disk: written under a temporary name beside its target, then
renamed into place, so a reader never sees a half-written one and a failure leaves nothing behind."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Literal


class AtomicDirectory:
    """A temporary directory beside `final` that `commit()` renames to `final`. `exists` says what happens to a
    directory already there: `replace` it (moved aside, then deleted, so `final` is never missing a moment
    longer than one rename), `keep` it (ours is discarded: another process wrote the same thing first), or
    `merge` ours into it file by file (each file renamed into place; other files there stay)."""

    def __init__(self, final: str | os.PathLike, exists: Literal["replace", "keep", "merge"] = "replace",
                 tmp_name: str | None = None):
        self.final, self.exists = Path(final), exists
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if tmp_name is None:
            self.path = Path(tempfile.mkdtemp(prefix=f".tmp-{self.final.name}-", dir=self.final.parent))
        else:  # a name every process of a job agrees on (collective checkpoints)
            self.path = self.final.parent / tmp_name
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir()
        self.path.chmod(0o755)  # mkdtemp makes it private

    def commit(self) -> Path:
        if self.exists == "merge" and self.final.is_dir():
            for f in self.path.iterdir():
                os.replace(f, self.final / f.name)
            self.path.rmdir()
        elif self.final.exists():
            if self.exists == "keep":
                shutil.rmtree(self.path, ignore_errors=True)
                return self.final
            old = Path(tempfile.mkdtemp(prefix=f".old-{self.final.name}-", dir=self.final.parent))
            os.replace(self.final, old / self.final.name)
            os.replace(self.path, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(self.path, self.final)
            except OSError:  # another process created it in the meantime
                if self.exists != "keep":
                    raise
                shutil.rmtree(self.path, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, exists: Literal["replace", "keep", "merge"] = "replace",
                     tmp_name: str | None = None) -> Iterator[Path]:
    """`with atomic_directory(out) as tmp:` write into tmp; on success it becomes `out`, on any failure
    (KeyboardInterrupt included) it is removed."""
    target = AtomicDirectory(final, exists, tmp_name)
    try:
        yield target.path
    except BaseException:
        target.abort()
        raise
    target.commit()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a file under a temporary name in its directory and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))
