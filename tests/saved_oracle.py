"""The activation-memory oracle: bytes torch's autograd really keeps for the backward pass.

Runs a forward pass in training mode (fp32, CPU) under
``torch.autograd.graph.saved_tensors_hooks`` and sums the storages of every saved tensor,
each storage once (by its storage object, so that it works on tensors without data too),
parameters and buffers excluded.

Under ``torch._subclasses.fake_tensor.FakeTensorMode`` (tensors with shapes and a CPU device
but no memory) the same hooks see the same tensors, as CPU torch's kernels choose them (the
meta device would not do: scaled-dot-product attention picks another kernel there), so the
full-size zoo models are measured at no cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


def saved_bytes(module: torch.nn.Module | None, run: Callable[[], Any]) -> int:
    """Bytes of the distinct storages autograd saves while ``run()`` executes."""
    persistent = set()
    if module is not None:
        module.train()
        for tensor in [*module.parameters(), *module.buffers()]:
            persistent.add(tensor.untyped_storage()._cdata)
    # held until the end: a storage freed meanwhile (a dead branch's) must not lend its
    # identity to a later one
    storages: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in persistent:
            storages[storage._cdata] = storage
        return t

    with several_threads(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(s.nbytes() for s in storages.values())


@contextmanager
def several_threads() -> Iterator[None]:
    """CPU torch picks some kernels by its thread count (oneDNN's 3-D convolutions over a
    1x1 kernel only with several threads), and the analysis follows it on several: run so
    whatever the process runs with (the fuzzer one, as OMP_NUM_THREADS=1 does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def batch_inputs(spec: Any, batch: int, grad: bool = False) -> list[torch.Tensor]:
    """Random inputs for ``spec`` (a ``dlspec.Spec``) at ``batch``: token ids, or floats,
    data that needs no gradient as in a training step (``grad``: floats that do)."""
    return [
        torch.randint(0, 2, (batch, *i.shape_value))
        if i.dtype == "long"
        else torch.randn(batch, *i.shape_value, requires_grad=grad)
        for i in spec.report.inputs
    ]
