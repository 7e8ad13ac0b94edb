"""GPU benchmarks of the book's kernels, recorded as JSON with provenance.

``python -m transformer_book.bench flash [--quick] [--out PATH]`` runs chapter 9's
FlashAttention benchmark (see :mod:`transformer_book.bench.flash`). Without a CUDA GPU it
says so and exits with status 2, writing nothing. The chapters replay the recorded JSON
(``book/data/flash_bench*.json``) when they run without a GPU.
"""

from .flash import (
    SCHEMA,
    BenchSettings,
    NoGPUError,
    attention_flops,
    build_record,
    default_settings,
    load_recordings,
    run_flash_benchmark,
    validate_record,
    write_record,
)
from .provenance import collect_provenance

__all__ = [
    "SCHEMA",
    "BenchSettings",
    "NoGPUError",
    "attention_flops",
    "build_record",
    "collect_provenance",
    "default_settings",
    "load_recordings",
    "run_flash_benchmark",
    "validate_record",
    "write_record",
]
