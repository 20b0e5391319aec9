"""A split's images where training gathers its batches: on the device when they fit, else on the host.

The whole train split is uint8 ``(N, H, W, C)``; on a GPU it normally lives in GPU memory, so a batch
is one index op with no transfer. A split larger than half the free GPU memory (tieredImageNet's
448k 84x84 images are 9.5 GB) stays in pinned host memory instead, and each batch is gathered there
and copied over asynchronously. Either way ``store[idx]`` returns the batch on the device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageStore"]

_CHUNK = 4096  # images per copy while filling the store (~87 MB at 84x84 RGB)


class ImageStore:
    """uint8 images ``(N, H, W, C)`` indexed by image ids into batches ``(B, H, W, C)`` on ``device``.

    Args:
        images: the split (a numpy memmap is read once).
        device: where batches are used.
        where: ``"device"``, ``"host"``, or ``"auto"`` (device unless it is a GPU with less than twice
            the split's size free).
    """

    def __init__(self, images: np.ndarray, device: torch.device, *, where: str = "auto") -> None:
        if where == "auto":
            fits = device.type != "cuda" or 2 * images.nbytes <= torch.cuda.mem_get_info(device)[0]
            where = "device" if fits else "host"
        if where not in ("device", "host"):
            raise ValueError(f"where must be 'auto', 'device' or 'host', got {where!r}")
        self.device, self.where = device, where
        self.data = torch.empty(
            tuple(images.shape),
            dtype=torch.uint8,
            device=device if where == "device" else "cpu",
            pin_memory=where == "host" and device.type == "cuda",
        )
        # Filled a chunk at a time from the (memory-mapped) split, so the host never holds a second
        # copy of it: tieredImageNet's train split alone is 9.5 GB.
        for start in range(0, len(images), _CHUNK):
            chunk = np.array(images[start : start + _CHUNK])  # a memmap slice is read-only
            self.data[start : start + len(chunk)].copy_(torch.from_numpy(chunk))

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def __getitem__(self, idx: Tensor) -> Tensor:
        """idx: int64 ids of any shape, on any device (host ids avoid a sync) -> uint8 ``(*idx, H, W, C)``."""
        if self.where == "device":
            return self.data[idx.to(self.device, non_blocking=True)]
        batch = self.data[idx.cpu()]
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)
