"""Several processes, one run: ``torchrun --nproc_per_node=K -m mtl pretrain|metatrain PIPELINE``.

Under torchrun (``WORLD_SIZE`` > 1) each process joins a ``torch.distributed`` group (NCCL on GPUs,
gloo on the CPU). Every rank holds the data and draws the same random numbers, so all ranks agree on
every global batch or meta-batch; each computes its slice, gradients are averaged across ranks, and
only rank 0 logs, writes checkpoints and shows progress. Batch norm is synchronised across ranks
(``nn.SyncBatchNorm`` on GPUs, :class:`DistBatchNorm2d` on the CPU), so K processes compute what one
process computes on the whole batch, up to float rounding. A batch norm without a learnable scale γ
(:class:`~mtl.models.norm.ShiftBatchNorm2d`) stays so: its β is synchronised like any parameter.
"""

from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mtl.errors import MtlError
from mtl.models.norm import ShiftBatchNorm2d, fix_scale, has_fixed_scale

__all__ = ["DistBatchNorm2d", "World", "world"]


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def slice(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (the first ``n % size`` ranks get one more)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Mean of every parameter's gradient over the ranks, in one flattened all-reduce."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(part.view_as(g))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks, in a new tensor (for a single process, the input itself)."""
        if not self.active:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    def share(self, obj: object) -> object:
        """Rank 0's ``obj`` (picklable) on every rank, a collective; for a single process ``obj`` itself."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, problem: str | None) -> None:
        """Stop every rank if any has a ``problem`` (one line), a collective: each node reads its own
        files (data, checkpoints), and a rank that stopped alone would leave the others waiting in
        their next collective. The line is the lowest such rank's, naming it and its host unless it
        is rank 0."""
        if not self.active:
            if problem is not None:
                raise MtlError(problem)
            return
        found: list[tuple[str, str | None]] = [("", None)] * self.size
        dist.all_gather_object(found, (socket.gethostname(), problem))
        for rank, (host, line) in enumerate(found):
            if line is not None:
                raise MtlError(line if rank == 0 else f"rank {rank} ({host}): {line}")

    @contextmanager
    def agreeing(self) -> Iterator[None]:
        """A block every rank runs with no collective in it: a user error (:class:`MtlError`) on any
        rank stops them all after it with that rank's line (:meth:`agree`)."""
        problem = None
        try:
            yield
        except MtlError as exc:
            if not self.active:
                raise
            problem = str(exc)
        self.agree(problem)

    def gather(self, tensor: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every rank's :meth:`slice` of ``n`` rows, in rank order: the full ``(n, ...)``."""
        if not self.active:
            return tensor
        sizes = [World(r, self.size).slice(n) for r in range(self.size)]
        rows = max(s.stop - s.start for s in sizes)
        padded = torch.zeros(rows, *tensor.shape[1:], dtype=tensor.dtype, device=tensor.device)
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: s.stop - s.start] for p, s in zip(parts, sizes, strict=True)])


_WORLD = World()


def world(device: str = "auto") -> World:
    """The process group this process belongs to, joined on first call (a single process: size 1).

    ``device`` is the config's: NCCL for CUDA, gloo for ``cpu`` or when no GPU is present.
    """
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        # Left to the interpreter's exit, a gloo group's worker threads can end the process in
        # std::terminate (SIGABRT) after the run has finished: leave the group while Python is whole.
        atexit.register(_leave)
        _WORLD = World(dist.get_rank(), dist.get_world_size(), local)
    return _WORLD


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the gradients (each rank's loss depends
    on every rank's input). ``torch.distributed.nn.functional.all_reduce`` did this, and is deprecated."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class DistBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics cover the batch of every rank, for the CPU (gloo), where
    ``nn.SyncBatchNorm`` does not run. The sums travel through autograd-aware all-reduces, so the
    backward pass is that of one batch norm over the whole global batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        # Two passes (mean, then squared deviations), as accurate as the fused single-process kernel.
        local = torch.cat([xf.sum((0, 2, 3)), xf.new_full((1,), x.numel() / c)])
        total = _AllReduceSum.apply(local)
        count = total[-1]
        mean = total[:c] / count
        var = _AllReduceSum.apply((xf - mean.view(1, c, 1, 1)).square().sum((0, 2, 3))) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch norms that compute statistics over all ranks' batches (a no-op for a single process).

    On CUDA every batch norm becomes an ``nn.SyncBatchNorm``, on the CPU every plain ``nn.BatchNorm2d``
    a :class:`DistBatchNorm2d`; either keeps a fixed γ a buffer. Only builds modules: the process group
    is needed once they run in train mode.
    """
    if not _WORLD.active:
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if device.type == "cuda" and isinstance(child, _BatchNorm):
                setattr(parent, name, _sync(child))
            elif device.type != "cuda" and type(child) in (nn.BatchNorm2d, ShiftBatchNorm2d):
                new = DistBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
                if has_fixed_scale(child):
                    fix_scale(new)
                new.load_state_dict(child.state_dict())
                setattr(parent, name, new.to(child.weight.device if child.affine else device))
    return model


def _sync(bn: _BatchNorm) -> nn.SyncBatchNorm:
    """``bn`` as an ``nn.SyncBatchNorm`` sharing its tensors. ``convert_sync_batchnorm`` would assign a
    fixed γ buffer to SyncBatchNorm's γ parameter, which fails, so such a norm is converted here."""
    if not has_fixed_scale(bn):
        return nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    new = fix_scale(nn.SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats))
    new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var = bn.running_mean, bn.running_var
    new.num_batches_tracked = bn.num_batches_tracked
    return new.train(bn.training)
