"""Data-parallel training under torchrun: the only module that knows about processes and the process group.

`torchrun --nproc_per_node N -m slmkit.cli train ...` starts N copies of the same stage. Each reads the same
data and builds the same model; `init` joins them into a process group (gloo on the CPU, NCCL with one GPU per
process), and the training loop (`slmkit.train.run_epochs`) wraps the model in DistributedDataParallel, so
every step all-reduces the gradients. Rank 0 alone evaluates, writes the artifact and shows progress; it sends
its eval scores to the others (`from_main`), so every process takes the same best-epoch and early-stopping
decisions, and its final metrics (`broadcast`), which they return once the artifact is committed.

Sharding (`shard`): the loop draws the same global batches of `train.batch_size` examples, in the same order, as
a single process would, and process r takes rows r, r+N, r+2N, ... of each one. Batches are sorted by length
within pools, so interleaving gives every process a share of similar lengths (similar work, little padding),
and every process runs one optimizer step per global batch: the same number of steps, the same learning-rate
schedule (counted in global steps) and the same effective batch size as one process, whatever N is. Each
process weights its loss by its share of the batch (N·n_r/n), so DDP's average of the gradients is the
gradient of the whole batch's mean loss, as in a single process. (Exact for mean losses; class-weighted
cross-entropy and distillation's cross-entropy, which averages over the labeled rows only, are weighted by
rows, a close approximation.) A share left empty (a last batch smaller than N) takes one row at weight 0.

Tolerance: with dropout off, a run on N processes follows the single-process run up to floating-point
summation order (and per-share padding): per-epoch train losses agree within 1e-5 relative and eval metrics
within one eval example (tests/test_ddp.py, 2 processes; measured 3e-8, the size of the change from 1 to 2
torch threads). With dropout on, each process draws its own masks, so the run is a different sample of the
same training: expect eval metrics within the seed-to-seed spread of single-process runs.

Several machines: every process reads the data itself (same paths on every node). `--resume` and distill's
vocabulary trimming read what rank 0 wrote in the staging directory beside `--out`, so there `--out` must be
on a filesystem all nodes see; a teacher cache that is not shared is computed once per node instead.

A single process (no torchrun, or one process), and any stage that does not call `init`, never touches
torch.distributed: every function here is then the identity or a no-op, and training is bit-identical to what
it was before.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from functools import partial
from typing import Any, Callable, Iterator

import numpy as np

from slmkit.errors import UserError

# this process's place in the group, set by `init` once it has joined one
_world, _rank, _device = 1, 0, "cpu"  # _device: where collectives put their tensors


def world_size() -> int:
    """How many processes train together: torchrun's WORLD_SIZE once `init` joined the group, else 1."""
    return _world


def rank() -> int:
    """This process's global index, 0 to world_size() - 1 (torchrun's RANK)."""
    return _rank


def is_main() -> bool:
    """Whether this process writes artifacts and logs: rank 0, or the only process."""
    return rank() == 0


def init(device: str) -> str:
    """Join the process group when torchrun started several processes, and return this process's device.

    Idempotent (a pipeline runs several stages in one process); the group lives until the process exits. A
    single process gets `device` back unchanged. Under torchrun a cuda device becomes cuda:LOCAL_RANK (one
    GPU per process, whatever N `train.device` named) with NCCL; the CPU uses gloo."""
    global _world, _rank, _device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return device
    import torch
    import torch.distributed as dist

    cuda = device != "cpu"
    if not dist.is_available() or not (dist.is_nccl_available() if cuda else dist.is_gloo_available()):
        raise UserError(f"this PyTorch build has no {'NCCL' if cuda else 'gloo'} backend for torchrun: run in a single process")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(_shut_down)
    _world, _rank, _device = world, dist.get_rank(), device
    return device


def shard(batch: np.ndarray, rank: int, world: int) -> tuple[np.ndarray, float]:
    """Process `rank`'s rows of a global batch (index array) and the weight of its loss (module docstring).

    The weights of all processes sum to `world`, so DDP's mean of the weighted gradients is the whole batch's."""
    rows = batch[rank::world]
    if len(rows) == 0:  # every process must step (DDP all-reduces in backward): a row that counts for nothing
        return batch[:1], 0.0
    return rows, world * len(rows) / len(batch)


def wrap(model, loss_fn: Callable[[Any, dict], Any]) -> Callable[[dict], Any]:
    """`batch -> loss_fn(model, batch)`; under torchrun through DistributedDataParallel, so that backward
    averages the gradients across processes.

    DDP wraps a module whose forward *is* the loss function: loss functions that call submodules
    (distillation's `model.student`) still run inside DDP's forward, as its gradient hooks need."""
    if world_size() == 1:
        return partial(loss_fn, model)
    import torch
    from torch.nn.parallel import DistributedDataParallel

    class LossOf(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, batch: dict):
            return loss_fn(self.model, batch)

    device_ids = [torch.device(_device).index] if _device.startswith("cuda") else None
    # every parameter gets a gradient each step (no find_unused_parameters); the models have no running
    # statistics (no BatchNorm), so buffers need no sync before each forward
    return DistributedDataParallel(LossOf(), device_ids=device_ids, forward_sync_buffers=False)


def _shut_down() -> None:
    """At exit: wait for every process, then tear the group down together. A process that tore its group down
    while another still finished its stage (rank 0 writes the outputs after the last collective) sometimes
    aborted ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def mean_across(values: list[float]) -> list[float]:
    """The element-wise mean of `values` over all processes (one all-reduce)."""
    if world_size() == 1:
        return values
    import torch
    import torch.distributed as dist

    total = torch.tensor(values, dtype=torch.float64, device=_device)
    dist.all_reduce(total)
    return (total / world_size()).tolist()


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every process; the others block until rank 0 sends it (pass None there)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(compute: Callable[[], Any]) -> Any:
    """`compute()` run on rank 0 only, its result given to every process (e.g. eval scores)."""
    return broadcast(compute() if is_main() else None)


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0, then on the others: rank 0 fills a cache that the others then read."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
