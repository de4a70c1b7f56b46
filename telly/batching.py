"""Batches: slicing a list into batches, and moving a batch (nested dicts of tensors) to a device."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def move_to(batch, device: torch.device):
    """A batch (nested dicts / tensors / PrefixStates) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch
