"""Data-parallel processes: env:// rendezvous as torchrun and the deepspeed launcher set it up.

One process per device; RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT) come from the launcher.
A plain `lmssl train` is rank 0 of 1 and initialises no process group unless DeepSpeed needs one.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def info() -> DistInfo:
    """The process's place in the job, as the launcher set it (RANK, WORLD_SIZE, LOCAL_RANK); rank 0 of 1 alone."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def setup(require_group: bool = False) -> DistInfo:
    """The process's place in the job; initialises the process group (NCCL on GPUs, gloo on CPU) when there is
    more than one process or `require_group` (DeepSpeed needs one even alone)."""
    place = info()
    if (place.world_size > 1 or require_group) and not dist.is_initialized():
        if place.world_size == 1:  # alone, without a launcher: a private rendezvous
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("LOCAL_RANK", "0")
        if torch.cuda.is_available():
            torch.cuda.set_device(place.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return place


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sums over all processes (float64), the values themselves in a single process."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)  # NCCL reduces only GPU tensors
    return t.tolist()


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any of them (a signal that reached only some ranks)."""
    return bool(all_reduce_sum([float(flag)])[0]) if active() else flag


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process ([obj] alone)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

