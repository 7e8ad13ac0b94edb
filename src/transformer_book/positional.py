"""Where a token is: sinusoidal, learned, rotary (RoPE) and linear-bias (ALiBi) positions.

Attention by itself is blind to order: permute the keys and values and each query gets the same
answer. Chapter 3 builds four ways to tell the model where each token sits:

* :func:`sinusoidal_encoding` -- fixed sines and cosines added to the embeddings (Vaswani et al.,
  2017); a shift by ``k`` positions is one fixed rotation (:func:`sinusoidal_shift_matrix`);
* :class:`LearnedPositionalEmbedding` -- one trained vector per position (GPT-2);
* :func:`apply_rope` -- rotate each query/key pair of dimensions by an angle proportional to the
  position (Su et al., 2021), so that ``q . k`` depends on positions only through their offset;
* :func:`alibi_bias` -- no vectors at all: a penalty ``-m * distance`` added to the attention
  scores, with one slope ``m`` per head (Press et al., 2022).

Shapes: per-head tensors are ``(B, H, T, D)``; position tables are ``(T, C)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from transformer_book import _checks

__all__ = [
    "LearnedPositionalEmbedding",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "rope_angles",
    "sinusoidal_encoding",
    "sinusoidal_shift_matrix",
]


def _check_even(name: str, value: object) -> int:
    value = _checks.positive_int(name, value)
    if value % 2:
        raise ValueError(f"{name} must be even (dimensions come in sin/cos pairs), got {value}")
    return value


def _check_base(base: object) -> float:
    return _checks.number("base", base, low=1.0, low_open=True)


def _check_float_dtype(dtype: object) -> torch.dtype:
    _checks.instance("dtype", dtype, torch.dtype, "floating-point torch.dtype")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype (a table of sines and slopes), got {dtype}")
    return dtype


def _frequencies(d: int, base: float) -> Tensor:
    """The ``d/2`` angular frequencies ``w_i = base^(-2i/d)``, from 1 down towards ``1/base`` (float64)."""
    return base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)


# --------------------------------------------------------------------------------------------
# Sinusoidal
# --------------------------------------------------------------------------------------------
def sinusoidal_encoding(
    n_positions: int, d_model: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The sinusoidal table of Vaswani et al. (2017), shape ``(n_positions, d_model)``.

    ``PE[p, 2i] = sin(p * w_i)`` and ``PE[p, 2i + 1] = cos(p * w_i)`` with ``w_i = base^(-2i/d_model)``:
    pair ``i`` is a point going round a circle, fast for small ``i`` and slowly for large ``i``.
    """
    n_positions = _checks.positive_int("n_positions", n_positions)
    d_model = _check_even("d_model", d_model)
    base, dtype = _check_base(base), _check_float_dtype(dtype)
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * _frequencies(d_model, base)
    table = torch.empty(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.to(dtype)


def sinusoidal_shift_matrix(k: int | float, d_model: int, base: float = 10000.0) -> Tensor:
    """The ``(d_model, d_model)`` matrix ``M_k`` with ``PE[p + k] = M_k @ PE[p]`` for *every* ``p``.

    Block-diagonal: pair ``i`` is rotated by the angle ``k * w_i``, because
    ``sin(a + b) = sin a cos b + cos a sin b`` and ``cos(a + b) = cos a cos b - sin a sin b``.
    It depends on the shift ``k`` but not on the position ``p``: the reason Vaswani et al. chose sines.
    """
    k = _checks.number("k", k)  # the shift in positions
    d_model = _check_even("d_model", d_model)
    angle = k * _frequencies(d_model, _check_base(base))
    cos, sin = torch.cos(angle), torch.sin(angle)
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    m[0::2, 0::2] = torch.diag(cos)  # new sin = cos(b) sin(a) + sin(b) cos(a)
    m[0::2, 1::2] = torch.diag(sin)
    m[1::2, 0::2] = torch.diag(-sin)  # new cos = -sin(b) sin(a) + cos(b) cos(a)
    m[1::2, 1::2] = torch.diag(cos)
    return m.to(torch.float32)


# --------------------------------------------------------------------------------------------
# Learned
# --------------------------------------------------------------------------------------------
class LearnedPositionalEmbedding(nn.Module):
    """One trainable vector per position, as in GPT-2: ``forward(positions) -> (*positions.shape, d_model)``.

    A position never seen in training has never had a gradient: its vector stays at its random
    initialisation. Positions ``>= max_positions`` have no vector at all and raise.
    """

    def __init__(self, max_positions: int, d_model: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.max_positions = _checks.positive_int("max_positions", max_positions)
        self.d_model = _checks.positive_int("d_model", d_model)
        init_std = _checks.number("init_std", init_std, low=0.0)
        self.weight = nn.Parameter(torch.randn(max_positions, d_model) * init_std)

    def forward(self, positions: Tensor) -> Tensor:
        _checks.tensor("positions", positions)
        if positions.dtype not in _checks.ID_DTYPES:
            raise TypeError(f"positions must be an integer tensor (int64 or int32), got dtype {positions.dtype}")
        if positions.numel() and (positions.min() < 0 or positions.max() >= self.max_positions):
            raise ValueError(
                f"positions must be in [0, {self.max_positions}) (max_positions), got values in "
                f"[{int(positions.min())}, {int(positions.max())}]"
            )
        return self.weight[positions]

    def extra_repr(self) -> str:
        return f"max_positions={self.max_positions}, d_model={self.d_model}"


# --------------------------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------------------------
def rope_angles(positions: Tensor, d_head: int, base: float = 10000.0) -> Tensor:
    """Rotation angles ``positions[..., None] * w_i``, shape ``(*positions.shape, d_head / 2)``, float64."""
    _check_positions(positions)
    return _angles(positions, _check_even("d_head", d_head), _check_base(base))


def _check_positions(positions: object) -> Tensor:
    _checks.tensor("positions", positions)
    if positions.dtype == torch.bool or positions.is_complex():
        raise TypeError(f"positions must be an integer or real tensor, got dtype {positions.dtype}")
    return positions


def _angles(positions: Tensor, d_head: int, base: float) -> Tensor:
    return positions.to(torch.float64)[..., None] * _frequencies(d_head, base)


def apply_rope(x: Tensor, positions: Tensor, base: float = 10000.0, pairing: str = "interleaved") -> Tensor:
    """Rotary position embedding (Su et al., 2021) of queries or keys ``x``, shape ``(B, H, T, D)``.

    Dimensions are taken in ``D/2`` pairs and pair ``i`` of the vector at position ``p`` is rotated
    by the angle ``p * w_i`` with ``w_i = base^(-2i/D)``. Rotations compose by adding angles, so
    ``apply_rope(q, m) . apply_rope(k, n)`` depends on ``m - n`` only.

    ``pairing`` says which dimensions form a pair:

    * ``"interleaved"`` (default, the RoFormer paper's): ``(x[2i], x[2i + 1])``, i.e. the complex
      number ``x[2i] + 1j * x[2i + 1]`` multiplied by ``exp(1j * p * w_i)``;
    * ``"half"`` (GPT-NeoX, Hugging Face Llama's ``rotate_half``): ``(x[i], x[i + D/2])``.

    The two are the same rotation up to a fixed permutation of the ``D`` dimensions; a checkpoint
    trained with one needs that pairing.

    ``positions``: shape ``(T,)`` or ``(B, T)`` (integer or float). Works for any ``x`` of shape
    ``(..., T, D)`` with ``positions`` broadcastable to ``(..., T)``. Returns a tensor like ``x``.
    """
    x = _checks.float_tensor("x", x, min_dim=2, layout="(..., T, D)")
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"apply_rope: the last dimension D of x must be even (RoPE rotates pairs of "
                         f"dimensions), got D={d} for x of shape {tuple(x.shape)}")
    pairing = _checks.one_of("pairing", pairing, ("interleaved", "half"))
    _check_positions(positions)
    base = _check_base(base)
    t = x.shape[-2]
    if positions.dim() == 0 or positions.shape[-1] != t:
        raise ValueError(f"positions must have shape (T,) or (B, T) with T={t} (x of shape {tuple(x.shape)}), "
                         f"got shape {tuple(positions.shape)}")
    if positions.dim() == 2 and x.dim() == 4:
        positions = positions[:, None, :]  # (B, T) -> (B, 1, T): the same positions for every head
    angles = _angles(positions, d, base)  # (..., T, D/2)
    cos, sin = torch.cos(angles).to(x.dtype), torch.sin(angles).to(x.dtype)
    if pairing == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    y1 = x1 * cos - x2 * sin  # (x1 + i x2) * (cos + i sin)
    y2 = x1 * sin + x2 * cos
    if pairing == "interleaved":
        return torch.stack((y1, y2), dim=-1).flatten(-2)
    return torch.cat((y1, y2), dim=-1)


# --------------------------------------------------------------------------------------------
# ALiBi
# --------------------------------------------------------------------------------------------
def alibi_slopes(n_heads: int) -> Tensor:
    """The per-head slopes of Press et al. (2022), shape ``(n_heads,)``.

    For ``n`` heads, ``n`` a power of two: the geometric sequence ``2^(-8/n), 2^(-16/n), ..., 2^(-8)``.
    Otherwise, with ``n'`` the largest power of two below ``n``: the ``n'`` slopes for ``n'`` heads,
    then every other slope of the ``2n'``-head sequence (the ones in between) until there are ``n``.
    """
    return _slopes(_checks.positive_int("n_heads", n_heads))


def _slopes(n_heads: int) -> Tensor:
    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    below = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = power_of_two(below)
    if below < n_heads:
        slopes += power_of_two(2 * below)[0::2][: n_heads - below]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(n_heads: int, n_queries: int, n_keys: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """ALiBi attention-score biases, shape ``(n_heads, n_queries, n_keys)``: add them to ``q k^T / sqrt(D)``.

    ``bias[h, i, j] = -m_h * |i' - j|`` where ``m_h`` is head ``h``'s slope (:func:`alibi_slopes`)
    and ``i' = i + n_keys - n_queries`` is the query's position: queries are the *last*
    ``n_queries`` of the ``n_keys`` positions (as when decoding with a cache). For keys at or
    before the query (``j <= i'``) this is the paper's ``-m * (i' - j)``; ALiBi was made for causal
    models, whose mask removes the keys after the query -- for them this function gives the
    symmetric penalty ``-m * (j - i')``, so the bias also makes sense without a causal mask.
    """
    n_heads = _checks.positive_int("n_heads", n_heads)
    n_queries = _checks.positive_int("n_queries", n_queries)
    n_keys = _checks.positive_int("n_keys", n_keys)
    dtype = _check_float_dtype(dtype)
    if n_queries > n_keys:
        raise ValueError(f"n_queries must be <= n_keys (queries are the last n_queries of the n_keys "
                         f"positions), got n_queries={n_queries}, n_keys={n_keys}")
    query_pos = torch.arange(n_keys - n_queries, n_keys)
    distance = (query_pos[:, None] - torch.arange(n_keys)[None, :]).abs()  # (n_queries, n_keys)
    return (-_slopes(n_heads)[:, None, None] * distance).to(dtype)
