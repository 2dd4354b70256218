"""The one way a file or directory lands on disk: written under a temporary name beside its target, flushed to
the device (fsync of the files and the directory), then renamed into place. A reader never sees a half-written
one, a crash leaves at most a `.lmssl-tmp-*` beside it (removed by `remove_stale`), and a full disk is one line
(lmssl.errors.storage_error) with nothing half-written left behind."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Literal

from lmssl.errors import RUN_ADVICE, ConfigError, storage_error

# the names of lmssl's temporaries carry its own marker, so that cleaning them never touches a user's .tmp-* file
TMP_PREFIX, OLD_PREFIX = ".lmssl-tmp-", ".lmssl-old-"


def process_umask() -> int:
    """The process umask, read without changing it where the system says it (Linux), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode open() gives a new file (0644 under the usual umask 022)."""
    return 0o666 & ~process_umask()


def dir_mode() -> int:
    """The mode mkdir() gives a new directory (0755 under the usual umask 022)."""
    return 0o777 & ~process_umask()


def normal_modes(directory: Path) -> None:
    """Give every file and directory in `directory` the modes open() and mkdir() would: temporaries (mkstemp,
    mkdtemp, the safetensors writer's own) are private (0600/0700), and a rename keeps that mode."""
    files, dirs = file_mode(), dir_mode()
    os.chmod(directory, dirs)
    for root, subdirs, names in os.walk(directory):
        for name in subdirs:
            os.chmod(Path(root) / name, dirs)
        for name in names:
            os.chmod(Path(root) / name, files)


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory entry, to the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


class AtomicDirectory:
    """A temporary directory beside `final` that `commit()` renames to `final`. `exists` says what happens to a
    directory already there: `replace` it (moved aside, then deleted, so `final` is never missing a moment
    longer than one rename), `keep` it (ours is discarded: another process wrote the same thing first), or
    `merge` ours into it file by file (each file renamed into place; other files there stay)."""

    def __init__(self, final: str | os.PathLike, exists: Literal["replace", "keep", "merge"] = "replace",
                 tmp_name: str | None = None, advice: str = RUN_ADVICE):
        self.final, self.exists, self.advice = Path(final), exists, advice
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            if tmp_name is None:
                self.path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{self.final.name}-", dir=self.final.parent))
            else:  # a name every process of a job agrees on (collective checkpoints)
                self.path = self.final.parent / tmp_name
                if self.path.exists():
                    shutil.rmtree(self.path)
                self.path.mkdir()
            self.path.chmod(dir_mode())  # mkdtemp makes it private
        except OSError as e:
            raise storage_error(e, self.final, self.advice) or e

    def commit(self) -> Path:
        try:
            normal_modes(self.path)
            fsync_tree(self.path)
            self._rename()
            fsync_path(self.final.parent)
        except OSError as e:
            self.abort()
            raise storage_error(e, self.final, self.advice) or e
        return self.final

    def _rename(self) -> None:
        if self.exists == "merge" and self.final.is_dir():
            for f in self.path.iterdir():
                os.replace(f, self.final / f.name)
            self.path.rmdir()
        elif self.final.exists():
            if self.exists == "keep":
                shutil.rmtree(self.path, ignore_errors=True)
                return
            replace_directory(self.path, self.final)
        else:
            try:
                os.replace(self.path, self.final)
            except OSError:  # another process created it in the meantime
                if self.exists != "keep":
                    raise
                shutil.rmtree(self.path, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def replace_directory(source: Path, final: Path) -> None:
    """Put the complete directory `source` in place of the existing `final`: the old one is moved aside, then
    deleted, so `final` is missing for no longer than one rename."""
    old = Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{final.name}-", dir=final.parent))
    os.replace(final, old / final.name)
    os.replace(source, final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, exists: Literal["replace", "keep", "merge"] = "replace",
                     tmp_name: str | None = None, advice: str = RUN_ADVICE) -> Iterator[Path]:
    """`with atomic_directory(out) as tmp:` write into tmp; on success it becomes `out`, on any failure
    (KeyboardInterrupt included) it is removed; a storage failure becomes one RunError line ending in `advice`."""
    target = AtomicDirectory(final, exists, tmp_name, advice)
    try:
        yield target.path
    except BaseException as e:
        target.abort()
        error = storage_error(e, Path(final), advice)
        if error is not None:
            raise error from None
        raise
    target.commit()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a file under a temporary name in its directory, fsync it and rename it over `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes it private
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise storage_error(e, path) or e
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def check_output_target(out: Path, source: Path, option: str) -> None:
    """Before any work: `out` (a directory to write, replaced with --overwrite) is not a file, and neither is nor
    contains `source` (replacing it would delete what is being read)."""
    out, source = Path(out), Path(source)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{option}: {out} is a file; give a directory to write into")
    a, b = out.resolve(), source.resolve()
    if a == b or a in b.parents:
        raise ConfigError(f"{option}: {out} holds the model being read ({source}); writing there would replace it: "
                          f"choose a directory outside it")


def check_output_file(out: str | os.PathLike, option: str, inputs: tuple = (), overwrite: bool = True) -> Path:
    """Before any work: a file can be written at `out`: it is not a directory, nor the same file as one of `inputs`
    (even with --overwrite: the input would be gone), nor already there when `overwrite` is False; and its nearest
    existing parent is a directory lmssl can create files in (tried with an empty temporary file, removed at once)."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{option}: {out} is a directory; give a file to write")
    for source in inputs:
        if out.exists() and Path(source).exists() and os.path.samefile(out, source):
            raise ConfigError(f"{option}: {out} is the input file {source}; writing there would replace what is "
                              f"being read: choose another file")
    if out.exists() and not overwrite:
        raise ConfigError(f"{option}: {out} exists; pass --overwrite to replace it")
    parent = next(p for p in (out.parent.absolute(), *out.parent.absolute().parents) if p.exists())
    if not parent.is_dir():
        raise ConfigError(f"{option}: {parent} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{option}: cannot write in {parent} ({e.strerror or e}); choose another place") from None
    return out


def remove_stale(directory: Path) -> list[Path]:
    """Remove the `.lmssl-tmp-*` / `.lmssl-old-*` entries a killed writer of lmssl left in `directory` (call it
    while owning it); other names, a user's `.tmp-*` or `.old-*` included, are never touched."""
    removed = []
    if Path(directory).is_dir():
        for p in sorted(Path(directory).iterdir()):
            if p.name.startswith((TMP_PREFIX, OLD_PREFIX)):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed
