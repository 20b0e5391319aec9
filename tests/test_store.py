"""Batches gathered from a split kept on the device or on the host are the same images."""

import numpy as np
import pytest
import torch

from mtl.data import store as store_module
from mtl.data.store import ImageStore


@pytest.mark.parametrize("where", ["device", "host", "auto"])
def test_batches_are_the_indexed_images_wherever_the_split_lives(where, monkeypatch):
    monkeypatch.setattr(store_module, "_CHUNK", 7)  # filled in chunks that do not divide the split
    images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    store = ImageStore(images, torch.device("cpu"), where=where)
    assert store.where == ("device" if where == "auto" else where)
    assert len(store) == 20 and store.shape == (20, 4, 4, 3)
    idx = torch.tensor([[3, 0], [19, 3]])
    batch = store[idx]
    assert batch.dtype == torch.uint8 and batch.shape == (2, 2, 4, 4, 3)
    assert np.array_equal(batch.numpy(), images[idx.numpy()])
    assert np.array_equal(store[torch.arange(20)].numpy(), images)


def test_a_memmap_is_read_into_memory_and_a_bad_place_is_refused(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3))
    store = ImageStore(np.load(path, mmap_mode="r"), torch.device("cpu"))
    assert store[torch.tensor([1])].flatten().tolist() == list(range(12, 24))
    with pytest.raises(ValueError, match="where must be"):
        ImageStore(np.zeros((1, 1, 1, 1), np.uint8), torch.device("cpu"), where="disk")
