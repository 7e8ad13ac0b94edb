"""Switches for the Triton kernel: each performance idea can be turned on and off.

The default :class:`FlashConfig` has every optimisation on. :func:`performance_ladder` lists
configurations that add one optimisation at a time, from a plain tiled kernel to the full
one, so that a benchmark can measure what each step buys (``python -m
transformer_book.bench flash`` does, on a GPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["FlashConfig", "performance_ladder"]

_GRID_ORDERS = ("qblocks_fastest", "heads_fastest")
_POW2_BLOCKS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class FlashConfig:
    """How :func:`~transformer_book.flash.flash_attention` runs its kernels.

    Attributes:
        use_exp2: compute ``exp2(s * scale * log2(e) - m)`` instead of ``exp(s * scale - m)``:
            the scale and the change of base fold into one multiply, and ``exp2`` is the
            GPU's native instruction.
        deferred_norm: keep the output accumulator unnormalised and divide by the softmax sum
            ``l`` once at the end (FlashAttention-2), instead of rescaling it to a normalised
            output after every key block (FlashAttention-1).
        causal_skip: for causal attention, skip key blocks that are entirely masked and mask
            only the blocks on the diagonal (a separate loop). Off: every key block is
            computed and masked elementwise.
        grid_order: ``"qblocks_fastest"``: consecutive programs take consecutive query blocks
            of the **same** head, so they read the same K and V while those are in the L2
            cache. ``"heads_fastest"``: consecutive programs take different heads.
        autotune: pick block sizes, warps and stages with ``triton.autotune`` per problem
            shape. ``None`` (default) = on for GPU tensors, off under the CPU interpreter
            (``TRITON_INTERPRET=1``), where timing means nothing and tuning is slow.
        block_m, block_n: forward tile (queries x keys) when not autotuning;
            ``block_m`` must be a multiple of ``block_n`` (the causal diagonal split needs it).
        num_warps, num_stages: launch settings when not autotuning; ``num_stages > 1``
            software-pipelines the key loop (loads of the next blocks overlap the math). Each
            stage holds its own K and V tiles in shared memory: float32 with D=128 and the
            default tiles needs about 180 KB (a block may use up to 227 KB on an H100, 163 KB on an A100).
        bwd_block_owned, bwd_block_loop: backward tiles when not autotuning. A dK/dV program
            owns ``bwd_block_owned`` keys and loops over the queries ``bwd_block_loop`` at a
            time; a dQ program owns ``bwd_block_owned`` queries and loops over the keys.
            ``bwd_block_owned`` must be a multiple of ``bwd_block_loop``.
        allow_tf32: for float32 inputs on a GPU, let ``tl.dot`` use TF32 tensor cores
            (faster, ~1e-3 relative error). Off: full-precision ("ieee") products.
    """

    use_exp2: bool = True
    deferred_norm: bool = True
    causal_skip: bool = True
    grid_order: str = "qblocks_fastest"
    autotune: bool | None = None
    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3
    bwd_block_owned: int = 64
    bwd_block_loop: int = 32
    allow_tf32: bool = False

    def __post_init__(self):
        for name in ("use_exp2", "deferred_norm", "causal_skip", "allow_tf32"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"FlashConfig.{name} must be a bool, got {value!r}")
        if self.autotune is not None and not isinstance(self.autotune, bool):
            raise TypeError(f"FlashConfig.autotune must be True, False or None, got {self.autotune!r}")
        if self.grid_order not in _GRID_ORDERS:
            raise ValueError(f"FlashConfig.grid_order must be one of {_GRID_ORDERS}, got {self.grid_order!r}")
        for name in ("block_m", "block_n", "bwd_block_owned", "bwd_block_loop"):
            value = getattr(self, name)
            if type(value) is not int or value not in _POW2_BLOCKS:
                raise ValueError(f"FlashConfig.{name} must be one of {_POW2_BLOCKS} (tl.dot needs >= 16), got {value!r}")
        if self.block_m % self.block_n:
            raise ValueError(
                f"FlashConfig.block_m must be a multiple of block_n, got block_m={self.block_m}, block_n={self.block_n}"
            )
        if self.bwd_block_owned % self.bwd_block_loop:
            raise ValueError(
                "FlashConfig.bwd_block_owned must be a multiple of bwd_block_loop, "
                f"got bwd_block_owned={self.bwd_block_owned}, bwd_block_loop={self.bwd_block_loop}"
            )
        if type(self.num_warps) is not int or self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"FlashConfig.num_warps must be one of (1, 2, 4, 8, 16), got {self.num_warps!r}")
        if isinstance(self.num_stages, bool) or not isinstance(self.num_stages, int) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"FlashConfig.num_stages must be an int in [1, 8], got {self.num_stages!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def performance_ladder() -> list[tuple[str, FlashConfig]]:
    """``(name, config)`` pairs, each adding one optimisation to the one before.

    The first rung is a correct tiled kernel without any of the tricks: natural ``exp``,
    normalising after every block, every causal block computed and masked, no software
    pipelining, heads varying fastest over the grid, fixed 64 x 64 tiles. The last rung is
    the default :class:`FlashConfig` (autotuned).
    """
    base = FlashConfig(
        use_exp2=False, deferred_norm=False, causal_skip=False, grid_order="heads_fastest",
        autotune=False, block_m=64, block_n=64, num_warps=4, num_stages=1,
    )
    steps = [("baseline: tiled kernel, online softmax", base)]
    steps.append(("+ exp2 with the scale folded in", replace(steps[-1][1], use_exp2=True)))
    steps.append(("+ deferred normalisation", replace(steps[-1][1], deferred_norm=True)))
    steps.append(("+ causal block skipping", replace(steps[-1][1], causal_skip=True)))
    steps.append(("+ software pipelining (num_stages=3)", replace(steps[-1][1], num_stages=3)))
    steps.append(("+ grid order for L2 reuse", replace(steps[-1][1], grid_order="qblocks_fastest")))
    steps.append(("+ autotuned tiles, warps, stages", replace(steps[-1][1], autotune=True)))
    return steps
