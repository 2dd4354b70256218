"""A run's output directory: owned by one live process (lmssl.storage.lock), and with `train.overwrite=true` written
in a staging directory beside it that replaces the previous run only once the new run has written its first
checkpoint (before that, a failure leaves the previous run as it was). Only a directory holding nothing but what a
run writes is trained into or replaced (lmssl.storage.ownership)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from lmssl.checkpoint.format import latest_checkpoint
from lmssl.distributed import barrier
from lmssl.errors import ConfigError
from lmssl.storage.atomic import TMP_PREFIX, replace_directory
from lmssl.storage.lock import LOCK_NAME, RunLock
from lmssl.storage.metrics_log import METRICS_FILE
from lmssl.storage.ownership import foreign_entries, refuse_foreign

# all a run writes at the top of its directory: (what it is, whether it is a directory)
RUN_ENTRIES = {"checkpoints": ("checkpoints", True), "best": ("best weights", True),
               "tensorboard": ("TensorBoard events", True), METRICS_FILE: ("log", False), LOCK_NAME: ("lock", False)}


def check_run_directory(out: Path, resume: bool) -> None:
    """Before any work, and before the lock file is made: `out` is new, empty or an lmssl run (a resumed run may
    hold a user's notes beside its checkpoints: resuming deletes nothing), and a run's names there are of its kind."""
    for name, (role, is_dir) in RUN_ENTRIES.items():  # another kind of entry there would stop the run half-way
        entry = out / name
        if entry.exists() and entry.is_dir() != is_dir:
            raise ConfigError(f"key 'train.output_dir': {entry} is a {'directory' if entry.is_dir() else 'file'}, "
                              f"where a run keeps its {role} ({'a directory' if is_dir else 'a file'}); move it aside "
                              f"or choose another train.output_dir")
    if not (resume and latest_checkpoint(out) is not None):
        refuse_foreign("key 'train.output_dir'", out, foreign_entries(out, RUN_ENTRIES), "an lmssl run",
                       "choose another train.output_dir")


class RunDirectory:
    def __init__(self, out: Path, overwrite: bool, main: bool):
        self.out, self.main = Path(out), main
        self.created = not self.out.exists()
        has_run = not self.created and any(p.name != LOCK_NAME for p in self.out.iterdir())
        self.staging = self.out.parent / f"{TMP_PREFIX}{self.out.name}-overwrite" if overwrite and has_run else None
        self.locks: list[RunLock] = []

    @property
    def replacing(self) -> bool:
        """train.overwrite=true over a previous run, until the new run's first checkpoint takes its place."""
        return self.staging is not None

    @property
    def path(self) -> Path:
        """Where the run writes now: the staging directory until the first checkpoint replaced the old run."""
        return self.staging if self.staging is not None else self.out

    def open(self) -> "RunDirectory":
        if self.main:
            self.locks.append(RunLock(self.out).acquire())  # nobody else uses the old run meanwhile
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)  # an overwrite that stopped before its checkpoint
                self.locks.append(RunLock(self.staging).acquire())
        return self

    def commit(self) -> None:
        """After an overwrite's first checkpoint (every process): the staging directory takes the old run's place."""
        if self.main:
            self.locks.pop(0).release()  # the old run's lock goes with it
            replace_directory(self.staging, self.out)  # the new run's lock moves with its directory
            print(f"note: train.overwrite=true: the previous run in {self.out} is replaced", file=sys.stderr)
        barrier()
        self.staging = None

    def discard_if_new(self) -> None:
        """After a bad input: remove what this run created (nothing of a previous run)."""
        if not self.main:
            return
        target = self.staging if self.staging is not None else (self.out if self.created else None)
        if target is not None and target.is_dir() and not any(p.name != LOCK_NAME for p in target.iterdir()):
            self.close()
            shutil.rmtree(target, ignore_errors=True)

    def close(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks = []
