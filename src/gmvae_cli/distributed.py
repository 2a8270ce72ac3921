"""Training one model on several processes, as launched by torchrun.

    torchrun --nproc-per-node 2 -m gmvae_cli train data.parquet --k 10

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in each process; with WORLD_SIZE > 1 training
joins a process group (gloo on CPU, nccl on CUDA, one GPU per process) and wraps the network
in DistributedDataParallel. Each process trains on its own share of the rows (rows i with
i % world == rank; sources.py and stream.py cut the shares); DDP averages the gradients of the per-process batch means, which is the
gradient of the mean over all processes' batches. Rank 0 alone writes checkpoints and shows
progress; sums that decide something (epoch ELBO, restart choice, cluster sizes) are
all-reduced so every rank decides the same.

Batch norm stays per process: each normalises with its own batch statistics and DDP
broadcasts rank 0's running statistics. SyncBatchNorm would need equal batch counts on every
rank (streamed shards are not equal) and gloo lacks it.
"""

from __future__ import annotations

import contextlib
import datetime
import gc

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gmvae_cli.ranks import context, is_main  # noqa: F401 (where this process stands)


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this process's device."""
    ctx = context()
    if not ctx.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Ranks wait for rank 0's warm start (distributed.from_main): minutes on a big table.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=2))
    return device


def barrier() -> None:
    """Wait for every rank (a rank that exits while others still talk to it aborts gloo)."""
    if reducing():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group. DDP's wrappers sit in reference cycles and still hold gloo
    work; collecting them first lets the group go down with nothing in flight."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def reducing() -> bool:
    """True in a process group of several ranks (setup joined it)."""
    return context().active and dist.is_available() and dist.is_initialized()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (float64 on CPU, moved to the device the backend needs)."""
    if not reducing():
        return values
    nccl = dist.get_backend() == "nccl"  # nccl reduces CUDA tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    summed = values.to(device=device, dtype=torch.float64)
    dist.all_reduce(summed)
    return summed.cpu()


def from_main(value):
    """Rank 0's value on every rank (broadcast); the value itself without torchrun."""
    if not reducing():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def epoch_seed(seed: int, epoch: int) -> None:
    """Distinct Monte-Carlo noise per rank and epoch (the same on a resumed run)."""
    ctx = context()
    if ctx.active:
        torch.manual_seed((seed * 1_000_003 + epoch) * 1009 + ctx.rank)


class _ELBOForward(nn.Module):
    """DDP hooks `forward`; the GMVAE's training step is `elbo_terms`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, y, cluster_weights=None, with_assignment=False):
        return self.net.elbo_terms(y, cluster_weights, with_assignment)


class Replicated:
    """A GMVAENet under DDP, with the three things the training loop uses."""

    def __init__(self, net: nn.Module, device: torch.device):
        self.net = net
        ids = [device] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_ELBOForward(net), device_ids=ids)

    def train(self, mode: bool = True):
        self.net.train(mode)
        return self

    def elbo_terms(self, y, cluster_weights=None, with_assignment=False):
        return self.ddp(y, cluster_weights, with_assignment)

    def parameters(self):
        return self.net.parameters()

    def join(self):
        # Streamed shards can end a few batches apart: ranks that run out shadow the others'
        # gradient all-reduces instead of leaving them waiting.
        return self.ddp.join()


def for_training(net: nn.Module, device: torch.device):
    """The network to train: wrapped in DDP under torchrun, else the network itself."""
    return Replicated(net, device) if context().active else net


def join(trained) -> contextlib.AbstractContextManager:
    return trained.join() if isinstance(trained, Replicated) else contextlib.nullcontext()
