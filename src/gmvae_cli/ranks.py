"""Where this process stands under torchrun, from its environment alone (no torch import:
the CLI asks before it loads anything heavy)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this node

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def context() -> Context:
    """Where this process stands, from torchrun's environment (one process without it)."""
    env = os.environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return Context()
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    return Context(rank=rank, world=world, local_rank=local,
                   local_world=int(env.get("LOCAL_WORLD_SIZE", world)))


def is_main() -> bool:
    return context().main
