"""One live process owns an output directory: it holds an exclusive flock on `lmssl.lock` there, which also
names it (pid, host). The OS drops the lock when the process dies, even by SIGKILL, so a crashed run's lock is
taken over (with a notice); a second live run stops in one line naming the owner."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from lmssl.errors import ConfigError

LOCK_NAME = "lmssl.lock"


class RunLock:
    def __init__(self, directory: Path, key: str = "train.output_dir"):
        self.path, self.key = Path(directory) / LOCK_NAME, key  # key: the setting that named the directory
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._owner(fd)
            os.close(fd)
            raise ConfigError(f"key '{self.key}': {self.path.parent} is in use by another run (pid "
                              f"{owner.get('pid', '?')} on {owner.get('host', '?')}, started "
                              f"{owner.get('started', '?')}); wait for it to finish or choose another "
                              f"{self.key}") from None
        previous = self._owner(fd)
        if previous.get("pid"):
            print(f"note: {self.path.parent} was left by process {previous['pid']} ({previous.get('host', '?')}), "
                  f"which stopped without releasing it; taking it over", file=sys.stderr)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    @staticmethod
    def _owner(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        """Clear the owner (so the next run sees a clean release) and drop the lock."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def owning(directory: Path, key: str) -> Iterator[None]:
    """Hold `directory`'s lock for the block; a directory the block created and left holding only the lock (a bad
    input stopped it) is removed again."""
    directory = Path(directory)
    created = not directory.exists()
    lock = RunLock(directory, key).acquire()
    try:
        yield
    finally:
        lock.release()
        if created and all(p.name == LOCK_NAME for p in directory.iterdir()):
            shutil.rmtree(directory, ignore_errors=True)
