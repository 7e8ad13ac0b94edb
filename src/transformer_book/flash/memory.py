"""Measure the peak memory of the tensors a function creates, on any device, CPU included.

``torch.cuda.max_memory_allocated`` answers this on a GPU; the CPU allocator keeps no such
statistic. :class:`TensorMemoryTracker` watches every ATen operation (a
``TorchDispatchMode``), remembers each new storage it produces and notices when it is freed,
and keeps the running maximum of the bytes alive. It counts tensors, not allocator overheads
or an operator's internal scratch space, which is exactly the quantity the N x N argument is
about.
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["TensorMemoryTracker", "measure_peak_memory"]


class TensorMemoryTracker(TorchDispatchMode):
    """Context manager: ``.peak_bytes`` = most bytes of storages created inside it alive at once.

    Inputs that exist before the ``with`` block are not counted (they are not new), which is
    what "extra memory used by the computation" means.
    """

    def __init__(self):
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self._seen_before: set[int] = set()

    def _sweep(self) -> None:
        for key in [key for key, (ref, _) in self._live.items() if ref.expired()]:
            self.current_bytes -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Storages that already exist when an op runs (its inputs) are not new allocations.
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                key = StorageWeakRef(t.untyped_storage()).cdata
                if key not in self._live:
                    self._seen_before.add(key)
        out = func(*args, **kwargs)
        self._sweep()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata in self._live or ref.cdata in self._seen_before:
                    continue  # a view, or an in-place op on an existing tensor
                self._live[ref.cdata] = (ref, storage.nbytes())
                self.current_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        return out


def measure_peak_memory(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)``; return ``(result, peak_bytes)`` of the tensors it created."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    with torch.no_grad(), TensorMemoryTracker() as tracker:
        result = fn(*args, **kwargs)
    return result, tracker.peak_bytes
