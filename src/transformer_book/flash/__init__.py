"""Chapter 9: FlashAttention, from the online softmax to a Triton kernel.

* :func:`online_softmax` (and :func:`softmax_stats`, :func:`online_softmax_update`): the
  one-pass max-and-sum recurrence.
* :func:`tiled_attention`: the FlashAttention algorithm in plain PyTorch, block by block,
  never building the ``N x N`` score matrix.
* :func:`flash_attention`: the same in Triton kernels (forward and FlashAttention-2
  backward), with the optimisations switchable through :class:`FlashConfig`.
* :func:`naive_attention`: the textbook baseline; :func:`measure_peak_memory`: how much
  tensor memory a call needs, on any device.

Depends on torch only; ``triton`` is imported on the first ``flash_attention`` call.
"""

from .config import FlashConfig, performance_ladder
from .memory import TensorMemoryTracker, measure_peak_memory
from .online_softmax import online_softmax, online_softmax_update, softmax_stats
from .reference import naive_attention
from .tiled import merge_block, tiled_attention
from .triton_attention import SUPPORTED_HEAD_DIMS, flash_attention, flash_attention_forward

__all__ = [
    "FlashConfig",
    "SUPPORTED_HEAD_DIMS",
    "TensorMemoryTracker",
    "flash_attention",
    "flash_attention_forward",
    "measure_peak_memory",
    "merge_block",
    "naive_attention",
    "online_softmax",
    "online_softmax_update",
    "performance_ladder",
    "softmax_stats",
    "tiled_attention",
]
