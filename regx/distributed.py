"""Multi-process training under torchrun: one process per device, DistributedDataParallel.

    torchrun --nproc_per_node=N -m regx train [overrides]

Every rank builds the same model and data; each epoch each rank trains on its own shard of the same
shuffled order (the global batch stays `batch_size`: each rank takes batch_size / N); gradients are
averaged by DDP; metrics are summed over ranks; every rank evaluates the whole validation split with
the same weights. All ranks agree on ONE run directory (rank 0 picks it) and only rank 0 writes.
gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def requested() -> bool:
    """Started by torchrun (or anything that sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup() -> None:
    """Join the process group torchrun describes (idempotent; nothing without torchrun)."""
    if not requested() or active():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def teardown(succeeded: bool) -> None:
    """Leave torchrun's process group together: a rank that exits while another still talks to it
    aborts inside gloo ("terminate called without an active exception"), and torchrun then stops
    the rest. So every rank waits for the others (when all went well), then the group is destroyed."""
    if not active():
        return
    if succeeded:
        dist.barrier()
    import gc

    gc.collect()  # DDP's reducer (held in reference cycles) goes now, not in interpreter shutdown, where it aborts
    dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if active() else 0


def size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Ranks:
    """The processes of one run, as the training loop sees them. With one process every method is
    the identity or a no-op, so the loop never branches on DDP. Methods marked "collective" must be
    called by every rank at the same point."""

    def __init__(self):
        setup()
        self.rank, self.world = rank(), size()
        self.main = self.rank == 0  # only rank 0 writes and talks
        self._net, self._trains = None, None

    def device(self, spec: str) -> str:
        """device=auto/cuda under torchrun: this rank's GPU (LOCAL_RANK)."""
        if self.world > 1 and spec in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        return spec

    def seed_offset(self) -> int:
        return 1000 * self.rank  # each rank its own augmentation draws and dropout masks

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of an epoch's order: every rank gets the same count (the tail that does
        not divide evenly is dropped), interleaved so each global batch spans all ranks."""
        if self.world == 1:
            return order
        usable = len(order) // self.world * self.world
        return order[:usable][self.rank :: self.world]

    def net(self, model: torch.nn.Module, trains: str, device: torch.device, compile_mode: str | None):
        """The module to train: the model itself, or DDP around it, rebuilt when what trains changes
        (DDP syncs the parameters that train when it is built)."""
        if self.world == 1:
            return None
        if trains != self._trains:
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            self._net = torch.compile(ddp, mode=compile_mode) if compile_mode else ddp
            self._trains = trains
        return self._net

    def release(self) -> None:
        """Drop the DDP wrapper (its reducer holds the process group) once training is over."""
        self._net, self._trains = None, None

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when any rank says True (collective)."""
        if self.world == 1:
            return flag
        t = torch.tensor(int(flag), device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def max(self, t: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum over ranks (collective)."""
        if self.world > 1:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (collective)."""
        if self.world > 1:
            t = t.clone()
            dist.all_reduce(t)
        return t

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank (collective)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them before
        each forward, and each rank's forward then updates its own copy: after an epoch they differ."""
        if self.world > 1:
            for b in model.buffers():
                dist.broadcast(b, src=0)

    def agreement(self, model: torch.nn.Module, val_acc: float | None) -> dict | None:
        """The same weights and validation accuracy on every rank, checked (collective); None alone."""
        if self.world == 1:
            return None
        sums = self.gather((checksum(model), val_acc))
        return {
            "world_size": self.world,
            "backend": dist.get_backend(),
            "weights_identical": len({c for c, _ in sums}) == 1,
            "val_acc_by_rank": [v for _, v in sums],
        }


def checksum(model: torch.nn.Module) -> str:
    """A digest of every parameter and buffer: equal on all ranks when they hold the same weights."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
