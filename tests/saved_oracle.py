"""The activation-memory oracle: bytes torch's autograd really keeps for the backward pass.

Runs a forward pass in training mode (fp32, CPU) under
``torch.autograd.graph.saved_tensors_hooks`` and sums the storages of every saved tensor,
each storage once (by its data pointer), parameters and buffers excluded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def saved_bytes(module: torch.nn.Module | None, run: Callable[[], Any]) -> int:
    """Bytes of the distinct storages autograd saves while ``run()`` executes."""
    persistent = set()
    if module is not None:
        module.train()
        for tensor in [*module.parameters(), *module.buffers()]:
            persistent.add(tensor.untyped_storage().data_ptr())
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in persistent:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(storages.values())
