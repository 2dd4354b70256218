"""TrainState: everything a run has done besides its weights and optimizer (the engine's): the step, the loader's
position, the skipped steps, the FLOPs counted, train.max_minutes' decision and every process's random generators;
saved in trainer_state.pt and restored whole, so a resumed run continues the same sample order and the same draws."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmssl.distributed import DistInfo, gather_objects
from lmssl.engine.rng import rng_state, set_rng_state
from lmssl.engine.skip_guard import SkipGuard


def masking_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """Data corruption draws depend only on (seed, step, micro-batch): a resumed run redraws them exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 64 + micro)


def step_flops(objective, micro_batches: list) -> int | None:
    """Training FLOPs of the micro-batches of a step (Objective.train_flops), None if the objective counts none."""
    counts = [objective.train_flops(batch) for batch in micro_batches]
    return None if None in counts else sum(sum(c.values()) for c in counts)


@dataclass
class TrainState:
    loader: object  # lmssl.data.loader.SequenceLoader of global micro-batches (every process's share of each)
    guard: SkipGuard  # skipped (non-finite) steps
    dist: DistInfo
    step: int = 0  # optimizer steps done
    flops: int = 0  # training FLOPs of every process so far (0 for an objective that counts none)
    tokens: int = field(default=0, repr=False)  # tokens of every process since the last log line (throughput)
    time_budget: dict | None = None  # train.max_minutes' decision (lmssl.training.time_budget), once taken

    def micro_batches(self, objective, grad_accum: int, seed: int) -> list:
        """This process's share of the step's micro-batches, collated with the step's masking draws."""
        per_rank = self.loader.batch_size // self.dist.world_size
        share = slice(self.dist.rank * per_rank, (self.dist.rank + 1) * per_rank)
        return [objective.collate(self.loader.next_batch()[share], masking_generator(seed, self.step, i))
                for i in range(grad_accum)]

    def advance(self, objective, micro_batches: list, stats: dict) -> None:
        """Count the step the engine just took: its FLOPs (this process's micro-batches stand for every
        process's), tokens and whether it was skipped; stats gets the running `flops` and `skipped_steps`."""
        self.step += 1
        counted = step_flops(objective, micro_batches)
        if counted is not None:
            self.flops += counted * self.dist.world_size
            stats["flops"] = self.flops
        self.guard.update(self.step, stats)
        self.tokens += sum(b.num_tokens for b in micro_batches) * self.dist.world_size

    def flops_metric(self) -> dict:
        return {"flops": self.flops} if self.flops else {}

    def state_dict(self) -> dict:
        """Collective: every process's RNG states are gathered (trainer_state.pt's keys since the first release)."""
        rngs = gather_objects(rng_state())
        state = {"loader": self.loader.state_dict(), "skipped_steps": self.guard.total, "flops": self.flops,
                 "step": self.step, "rng": rngs[0], "rng_ranks": rngs}
        return {**state, "time_budget": self.time_budget} if self.time_budget is not None else state

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        rngs = state.get("rng_ranks") or [state["rng"]]  # a checkpoint of fewer processes: rank 0's for the rest
        set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        self.step, self.guard.total, self.flops = state["step"], state.get("skipped_steps", 0), state.get("flops", 0)
        self.time_budget = state.get("time_budget")
