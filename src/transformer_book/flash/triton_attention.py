r"""``flash_attention``: the Triton FlashAttention-2 kernels behind a differentiable function.

Nothing here imports ``triton`` at import time: the kernels (``_kernels.py``) are loaded on the
first call. Without ``triton`` installed, ``flash_attention`` raises an ``ImportError`` that
names the package; ``tiled_attention`` needs only torch.

Where it runs:

* CUDA tensors: compiled Triton kernels (float16, bfloat16 or float32).
* CPU tensors (float16, float32): only under Triton's interpreter, i.e. with the environment variable
  ``TRITON_INTERPRET=1`` set **before the first call** (Triton fixes the mode when the kernels
  are defined). Slow, for checking on tiny shapes. Without it CPU tensors raise a
  ``ValueError``; there is no silent fallback.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import torch

from ._validate import check_causal, check_qkv, resolve_scale
from .config import FlashConfig

__all__ = ["flash_attention", "flash_attention_forward", "SUPPORTED_HEAD_DIMS"]

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634

_KERNELS_MODULE = __name__.rsplit(".", 1)[0] + "._kernels"


def _loaded_kernels():
    """The kernel module if something has imported it already, else None."""
    return sys.modules.get(_KERNELS_MODULE)


def _load_kernels():
    """Import the kernel module on first use, with a clear error if ``triton`` is missing."""
    if _loaded_kernels() is None:
        try:
            import triton  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "flash_attention needs the 'triton' package (pip install triton, or this book's "
                "extra: pip install 'transformer-book[gpu]'); it was not found. "
                "tiled_attention computes the same thing in plain PyTorch without it."
            ) from err
        importlib.import_module(_KERNELS_MODULE)
    return _loaded_kernels()


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_language_interpreted() -> bool | None:
    """Whether ``triton.language`` (imported already) was set up for the interpreter; None if
    it has not been imported. Triton decides this once, when it is first imported."""
    tl = sys.modules.get("triton.language")
    if tl is None:
        return None
    return type(tl.standard.sum).__name__ == "InterpretedFunction"


_HOW_TO_INTERPRET = (
    "set os.environ['TRITON_INTERPRET'] = '1' before triton is first imported (in a fresh "
    "process or notebook kernel), or use tiled_attention, which computes the same thing on the CPU"
)


def _check_device(q: torch.Tensor) -> None:
    """Kernels run on CUDA, or on the CPU under the interpreter; anything else is an error."""
    if q.device.type == "cuda":
        return
    if q.device.type != "cpu":
        raise ValueError(
            f"flash_attention got tensors on device '{q.device}'; supported: 'cuda', or 'cpu' with "
            "TRITON_INTERPRET=1"
        )
    kernels = _loaded_kernels()
    if kernels is not None:
        if kernels.is_interpreted():
            return
        raise ValueError(
            "flash_attention got tensors on device 'cpu', but its Triton kernels were already "
            f"loaded for the GPU (TRITON_INTERPRET was not '1' when they were defined); {_HOW_TO_INTERPRET}"
        )
    if not _interpreter_requested():
        raise ValueError(
            "flash_attention got tensors on device 'cpu'; its Triton kernels run on a CUDA GPU, or on "
            f"the CPU only under Triton's interpreter: {_HOW_TO_INTERPRET}"
        )
    if _triton_language_interpreted() is False:
        raise ValueError(
            "flash_attention got tensors on device 'cpu' and TRITON_INTERPRET=1 is set, but triton "
            f"was imported before it was set, so it is in GPU mode; {_HOW_TO_INTERPRET}"
        )


def _check_inputs(q, k, v, causal, config):
    check_qkv(q, k, v, dtypes=_SUPPORTED_DTYPES)
    check_causal(causal)
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"flash_attention supports head size D in {SUPPORTED_HEAD_DIMS}, got D={q.shape[-1]} "
            f"(q shape {tuple(q.shape)}); tiled_attention takes any D"
        )
    if config is None:
        config = FlashConfig()
    elif not isinstance(config, FlashConfig):
        raise TypeError(f"config must be a FlashConfig or None, got {type(config).__name__}")
    _check_device(q)
    interpreted = q.device.type == "cpu"
    if interpreted and q.dtype == torch.bfloat16:
        raise TypeError(
            "flash_attention under the CPU interpreter supports float16 and float32, got q dtype "
            "torch.bfloat16 (the interpreter computes with NumPy, which has no bfloat16); "
            "bfloat16 runs on a CUDA GPU"
        )
    if interpreted and config.autotune:
        raise ValueError(
            "FlashConfig.autotune=True needs a GPU (tuning times kernels); under the CPU interpreter "
            "use autotune=None or False"
        )
    return config, interpreted


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    """The kernels take any strides for B, H and N but need D contiguous (stride 1):
    tensors that do not have it are copied with ``.contiguous()``."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _strides(x):
    return x.stride(0), x.stride(1), x.stride(2)


def _dot_precision(dtype, config):
    return "tf32" if (dtype == torch.float32 and config.allow_tf32) else "ieee"


def _on_device(x: torch.Tensor):
    """Launch on the tensors' GPU (Triton launches on the *current* CUDA device)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _use_autotune(config, interpreted):
    return (not interpreted) if config.autotune is None else config.autotune


def flash_attention_forward(q, k, v, causal=False, scale=None, config=None):
    """Run the forward kernel; return ``(O, lse)``: ``O (B, H, N_q, D)`` and ``lse (B, H, N_q)``
    float32 (row log-sum-exp of the scaled scores). No autograd; see :func:`flash_attention`."""
    config, interpreted = _check_inputs(q, k, v, causal, config)
    scale = resolve_scale(scale, q.shape[-1])
    kern = _load_kernels()
    q, k, v = (_unit_last_stride(x) for x in (q, k, v))
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    qk_scale = scale * _LOG2E if config.use_exp2 else scale
    common = dict(
        HEAD_DIM=D, CAUSAL=causal, CAUSAL_SKIP=config.causal_skip, USE_EXP2=config.use_exp2,
        DEFERRED_NORM=config.deferred_norm, QBLOCKS_FASTEST=config.grid_order == "qblocks_fastest",
        DOT_PRECISION=_dot_precision(q.dtype, config),
    )
    args = (q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o), H, B * H, n_q, n_k, qk_scale)
    with _on_device(q):
        if _use_autotune(config, interpreted):
            def grid(meta):
                return (triton_cdiv(n_q, meta["BLOCK_M"]) * B * H,)

            # EVEN_* depend on the tile, which the tuner picks: take the safe (masked) variant
            # unless the lengths are multiples of the largest tile any config uses (128).
            kern.attn_fwd_tuned[grid](*args, EVEN_Q=n_q % 128 == 0, EVEN_K=n_k % 128 == 0, **common)
        else:
            bm, bn = config.block_m, config.block_n
            grid = (triton_cdiv(n_q, bm) * B * H,)
            kern.attn_fwd[grid](*args, BLOCK_M=bm, BLOCK_N=bn, EVEN_Q=n_q % bm == 0, EVEN_K=n_k % bn == 0,
                                num_warps=config.num_warps, num_stages=config.num_stages, **common)
    return o, lse


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _flash_backward(do, q, k, v, o, lse, causal, scale, config, interpreted):
    kern = _load_kernels()
    do = _unit_last_stride(do)
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    delta = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    pre_block = 32
    kern.bwd_preprocess[(triton_cdiv(n_q, pre_block) * B * H,)](
        o, do, delta, *_strides(o), *_strides(do), H, B * H, n_q, HEAD_DIM=D, BLOCK_M=pre_block)

    qk_scale = scale * _LOG2E if config.use_exp2 else scale
    lse_scale = _LOG2E if config.use_exp2 else 1.0
    common = dict(
        HEAD_DIM=D, CAUSAL=causal, CAUSAL_SKIP=config.causal_skip, USE_EXP2=config.use_exp2,
        QBLOCKS_FASTEST=config.grid_order == "qblocks_fastest", DOT_PRECISION=_dot_precision(q.dtype, config),
    )
    base = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    dkdv_args = (q, k, v, do, lse, delta, dk, dv, *base, *_strides(dk), *_strides(dv),
                 H, B * H, n_q, n_k, scale, qk_scale, lse_scale)
    dq_args = (q, k, v, do, lse, delta, dq, *base, *_strides(dq), H, B * H, n_q, n_k, scale, qk_scale, lse_scale)
    if _use_autotune(config, interpreted):
        even = dict(EVEN_Q=n_q % 128 == 0, EVEN_K=n_k % 128 == 0)
        kern.attn_bwd_dkdv_tuned[lambda meta: (triton_cdiv(n_k, meta["BLOCK_N"]) * B * H,)](
            *dkdv_args, **even, **common)
        kern.attn_bwd_dq_tuned[lambda meta: (triton_cdiv(n_q, meta["BLOCK_M"]) * B * H,)](
            *dq_args, **even, **common)
    else:
        owned, loop = config.bwd_block_owned, config.bwd_block_loop
        launch = dict(num_warps=config.num_warps, num_stages=config.num_stages)
        kern.attn_bwd_dkdv[(triton_cdiv(n_k, owned) * B * H,)](
            *dkdv_args, BLOCK_M=loop, BLOCK_N=owned, EVEN_Q=n_q % loop == 0, EVEN_K=n_k % owned == 0,
            **launch, **common)
        kern.attn_bwd_dq[(triton_cdiv(n_q, owned) * B * H,)](
            *dq_args, BLOCK_M=owned, BLOCK_N=loop, EVEN_Q=n_q % owned == 0, EVEN_K=n_k % loop == 0,
            **launch, **common)
    return dq, dk, dv


class _FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, config):
        o, lse = flash_attention_forward(q, k, v, causal=causal, scale=scale, config=config)
        ctx.save_for_backward(_unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v), o, lse)
        ctx.causal = causal
        ctx.scale = resolve_scale(scale, q.shape[-1])
        ctx.config = config if config is not None else FlashConfig()
        ctx.interpreted = q.device.type == "cpu"
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        with _on_device(q):
            dq, dk, dv = _flash_backward(do, q, k, v, o, lse, ctx.causal, ctx.scale, ctx.config, ctx.interpreted)
        return dq, dk, dv, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, *,
                    scale=None, config: FlashConfig | None = None) -> torch.Tensor:
    r"""FlashAttention-2 in Triton: :math:`\mathrm{softmax}(QK^\top \cdot \mathrm{scale})V`, differentiable.

    Args:
        q: ``(B, H, N_q, D)``; k, v: ``(B, H, N_k, D)``; float16, bfloat16 or float32 (the
            same for all three); ``D`` in ``(16, 32, 64, 128)``; any ``N_q``, ``N_k`` (ragged
            last blocks are masked). Any strides along B, H, N; a tensor whose last dimension
            is not contiguous is copied.
        causal: query ``i`` attends to keys ``j <= i`` (top-left aligned, as ``is_causal`` in
            ``F.scaled_dot_product_attention``).
        scale: defaults to ``1 / sqrt(D)``.
        config: a :class:`FlashConfig` (the optimisation switches); default: all on.

    Returns:
        ``O`` of shape ``(B, H, N_q, D)`` in the input dtype (a new contiguous tensor).
        Gradients flow to q, k and v through the FlashAttention-2 backward kernels.
    """
    resolve_scale(scale, q.shape[-1] if isinstance(q, torch.Tensor) and q.dim() else 1)  # the arguments first,
    _check_inputs(q, k, v, causal, config)  # then whether this machine can run the kernel
    return _FlashAttentionFunction.apply(q, k, v, causal, scale, config)
