"""Data-parallel plumbing: one object for what a training process shares with the others.

`from_environment()` gives a ProcessGroup when torchrun started this process with
WORLD_SIZE > 1 (DistributedDataParallel over gloo on CPUs, nccl with one GPU per process),
else a SingleProcess whose methods pass their input through. The Trainer calls the same
methods either way. Rank r owns the batch columns [r*B/W, (r+1)*B/W) and the state it
carries; gradients are averaged over the ranks, so they equal one process's over all B
columns; rank 0 alone writes checkpoints, metrics and plots.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .checkpoint import seed_everything, set_rng_state
from .errors import CharRNNError, PeerLostError


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed of its own for each rank (dropout masks must differ between ranks' columns)."""
    return int(hashlib.sha256(f"{seed}/{rank}/{step}".encode()).hexdigest()[:15], 16)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


class SingleProcess:
    """The whole run in this process: every method passes its input through."""

    rank, world = 0, 1

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        """What a training step calls: the model (under DDP, which averages the gradients)."""
        return model

    def shard(self, batches):
        """This process's batch columns."""
        return batches

    def columns(self, state):
        """Carried state [L, B, H] of all columns -> this process's [L, B/W, H]."""
        return state

    def gather_columns(self, state):
        """This process's carried state -> all B columns (for a checkpoint)."""
        return state

    def sum(self, values: list[float]) -> list[float]:
        """Sums over all processes of a few numbers."""
        return values

    def any(self, flags: list[bool]) -> list[bool]:
        """Whether each flag holds in some process (stop at the same step everywhere)."""
        return flags

    def gather_objects(self, obj) -> list:
        return [obj]

    def seed_dropout(self, seed: int, step: int = 0) -> None:
        """Give this process a stream of its own (after the shared model initialisation)."""

    def restore_rng(self, saved: list[dict], seed: int, step: int) -> None:
        """Continue the streams of a checkpoint with one saved state per rank."""
        set_rng_state(saved[0], self.device)

    @contextlib.contextmanager
    def communicating(self):
        """Around code that talks to the other processes: their loss becomes PeerLostError."""
        yield

    def close(self) -> None:
        """After a successful run: leave the process group."""


class ProcessGroup(SingleProcess):
    """One of WORLD_SIZE processes started by torchrun."""

    def __init__(self, device: torch.device, batch_size: int):
        world = int(os.environ["WORLD_SIZE"])
        if not dist.is_available():
            raise CharRNNError("launched with WORLD_SIZE > 1, but this torch has no torch.distributed")
        if batch_size % world:
            raise CharRNNError(f"--batch-size {batch_size} does not split evenly over {world} processes: each "
                               f"process trains whole columns, so use a multiple of {world}")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        super().__init__(device)
        if not dist.is_initialized():
            # A rank that dies is noticed by torchrun, which stops the others; the timeout bounds
            # any collective that still waits on a lost peer (other launchers, a hung rank).
            timeout = timedelta(seconds=float(os.environ.get("CHARRNN_DIST_TIMEOUT", 300)))
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def wrap(self, model):
        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def shard(self, batches):
        return batches.shard(self.rank, self.world)

    def _each_state(self, state, one):
        if state is None:
            return None
        return tuple(map(one, state)) if isinstance(state, tuple) else one(state)

    def columns(self, state):
        def one(s):
            n = s.size(1) // self.world
            return s[:, self.rank * n:(self.rank + 1) * n].contiguous()
        return self._each_state(state, one)

    def gather_columns(self, state):
        def one(s):
            parts = [torch.empty_like(s) for _ in range(self.world)]
            with self.communicating():
                dist.all_gather(parts, s.contiguous())
            return torch.cat(parts, dim=1)
        return self._each_state(state, one)

    def _all_reduce(self, values, op) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        with self.communicating():
            dist.all_reduce(t, op=op)
        return t.tolist()

    def sum(self, values):
        return self._all_reduce(values, dist.ReduceOp.SUM)

    def any(self, flags):
        return [bool(v) for v in self._all_reduce([float(f) for f in flags], dist.ReduceOp.MAX)]

    def gather_objects(self, obj) -> list:
        out = [None] * self.world
        with self.communicating():
            dist.all_gather_object(out, obj)
        return out

    def seed_dropout(self, seed, step=0):
        seed_everything(rank_seed(seed, self.rank, step))

    def restore_rng(self, saved, seed, step):
        # The same world size continues every rank's streams exactly; another one gives rank 0
        # rank 0's streams and the other ranks fresh ones (dropout masks then differ from an
        # unbroken run).
        if len(saved) == self.world:
            set_rng_state(saved[self.rank], self.device)
        else:
            set_rng_state(saved[0], self.device)
            if self.rank:
                self.seed_dropout(seed, step)

    @contextlib.contextmanager
    def communicating(self):
        # A collective whose peer is gone fails with a plain RuntimeError under gloo (DistError
        # under nccl); inside this block that can only mean the group is broken.
        try:
            yield
        except RuntimeError as e:
            if isinstance(e, PeerLostError):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PeerLostError(f"lost contact with the other training processes ({first}); "
                                "another rank probably failed first, see its message") from e

    def close(self):
        # The barrier first: a rank that tears down its gloo pairs while a peer still talks to
        # them can abort that peer at exit. Past it every collective has finished on every rank.
        with self.communicating():
            dist.barrier()
        dist.destroy_process_group()


def from_environment(device: torch.device, batch_size: int) -> SingleProcess:
    return ProcessGroup(device, batch_size) if launched_by_torchrun() else SingleProcess(device)


def exit_process(code: int) -> None:
    """Leave the process with `code`. A torchrun rank leaves with os._exit, skipping interpreter
    finalization: under torch 2.14 the gloo worker threads outlive destroy_process_group
    (torch.distributed.nn holds the group in its functions' defaults), and a worker still
    dropping the last collective's tensors while the interpreter finalizes takes the GIL and
    aborts the process (SIGABRT, about one run in 60). By then the rank has passed the final
    barrier and closed its files, so nothing is lost; only the streams need flushing."""
    if launched_by_torchrun():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
