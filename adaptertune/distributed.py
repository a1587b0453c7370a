"""One run over several processes: `torchrun --nproc-per-node N -m adaptertune train ...` (DDP).

torchrun starts N copies of the same command; each sees RANK, WORLD_SIZE and LOCAL_RANK. `session`
(entered by `sweep.run_sweep`) joins them in a process group (nccl on CUDA, gloo on the CPU), and the
copies go through the same sweep in lockstep. Without those variables, or with WORLD_SIZE 1, nothing
here does anything: `current()` is the single process and every hook returns what it was given.

What the processes share and how (train.py calls these hooks):
  - `--batch-size` is the global batch, and the lr is scaled by it (train.py) whatever the world size.
    Every rank draws the same seeded permutation of the epoch and cuts it into the same global
    batches; rank r trains on the r-th contiguous slice of each (`shard`). Each image is seen once
    per epoch: no padding, no dropping. The last, short batch is cut as evenly as it goes, and each
    rank's loss is its slice's sum x world / global count (`objective`), so DDP's mean of the ranks'
    gradients is the gradient of the global batch's mean loss, as in one process.
  - Augmentation: every rank draws the crop boxes and flips of the whole global batch from the same
    generator and keeps its slice's rows (`images.transform(within=...)`). An image gets the crop it
    would get in one process, so results do not depend on the world size (up to float summation
    order), which seeding one generator per rank by (seed, rank) would not give.
  - DDP wraps only what the step calls (`wrap`); it reduces the parameters that require grad, so the
    frozen backbone is not its concern, and every method's trainable parameters are used at every
    step (tests/test_distributed.py checks each), so find_unused_parameters stays off.
  - Rank 0 alone claims the run (lock.py), evaluates, extracts features and writes the run directory;
    the others wait at barriers and learn its decisions (`from_main`). A resumed run: rank 0 reads the
    checkpoint first (`main_first`), then the others read the same file.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import UserError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun (torch.distributed.run) sets in each process


def launched() -> bool:
    """Whether this process is one of several that torchrun started."""
    return all(k in os.environ for k in ENV) and int(os.environ["WORLD_SIZE"]) > 1


@dataclass(frozen=True)
class Context:
    """This process's place in the run: rank 0 of 1 when not under torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The process's own GPU (LOCAL_RANK) when the run is on CUDA; `device` otherwise."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def main_only(self, log):
        """`log` on rank 0; a function that prints nothing on the others."""
        return log if self.main else _silent

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (it may write: a decode cache, split.json, a set-aside
        checkpoint); the others run it once rank 0 is done, and find what it wrote."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def from_main(self, value):
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.active:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, order: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, int, int]]:
        """This rank's part of each global batch of `order`: (indices, first row in the global batch,
        the global batch's size). One process: the batches themselves."""
        out = []
        for batch in order.split(batch_size):
            n = len(batch)
            lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
            out.append((batch[lo:hi], lo, n))
        return out

    def objective(self, logits: torch.Tensor, y: torch.Tensor, total: int, label_smoothing: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(what to backpropagate, the slice's summed loss). One process: the batch's mean loss and
        mean x count. Several: sum x world / total, which DDP's mean over ranks turns into the
        global batch's mean (a slice may be empty in an epoch's last batch: its sum is 0)."""
        if not self.active:
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            return loss, loss.detach() * len(y)
        loss_sum = F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="sum")
        return loss_sum * (self.world / total), loss_sum.detach()

    def all_sum(self, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor summed over ranks (one all-reduce); as they are in one process."""
        if not self.active:
            return values
        stacked = torch.stack([v.float() for v in values])
        torch.distributed.all_reduce(stacked)
        return tuple(stacked.unbind())

    def wrap(self, forward, module: torch.nn.Module, device: torch.device, compile: bool = False):
        """`forward` in one process; DDP over `module` (the model, or its head when the loop trains
        on cached features) in several, compiled if asked. Evaluation keeps calling the plain model
        (rank 0 alone: no collective in it)."""
        if not self.active:
            return forward
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        return torch.compile(ddp) if compile else ddp


def _silent(*args, **kwargs) -> None:
    pass


def current() -> Context:
    """This process's Context: from the process group `session` set up, else the single process."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Context()


@contextlib.contextmanager
def session(device: str, batch_sizes: list[int]):
    """Under torchrun: join the process group for the block (nccl when `device` is CUDA, else gloo)
    and check that every global batch splits evenly over the processes; elsewhere: nothing."""
    dist = torch.distributed
    if not launched():
        yield current()
        return
    world, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    bad = sorted({b for b in batch_sizes if b % world})
    if bad:
        raise UserError(f"--batch-size {bad[0]} is the global batch: it must split evenly over the {world} "
                        f"processes (a multiple of {world})")
    if dist.is_initialized():  # a caller's own process group
        yield current()
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if ":" in device:
            raise UserError(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                            "pass --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                            "for --nproc-per-node processes")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    yield current()
    dist.destroy_process_group()  # not on an error: the others may wait in a collective; torchrun ends them


class _Follower:
    """What a rank other than 0 holds while rank 0 holds the run's claim."""

    took_over = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def claim(run_dir):
    """`lock.claim(run_dir)`, taken by rank 0 alone; every rank gets a claim or None, as rank 0 did."""
    from . import lock

    ctx = current()
    if not ctx.active:
        return lock.claim(run_dir)
    held = lock.claim(run_dir) if ctx.main else None
    if ctx.from_main(held is not None):
        return held if ctx.main else _Follower()
    return None
