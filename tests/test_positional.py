"""Positions: sinusoidal table and its shift matrices, learned table, RoPE (vs complex numbers and
Hugging Face Llama), ALiBi (vs the paper's recipe and Hugging Face BLOOM), and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from transformer_book.positional import (
    LearnedPositionalEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    rope_angles,
    sinusoidal_encoding,
    sinusoidal_shift_matrix,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------- sinusoidal
def test_sinusoidal_matches_the_formula():
    n, d = 50, 16
    pe = sinusoidal_encoding(n, d)
    assert pe.shape == (n, d) and pe.dtype == torch.float32
    for p in range(n):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("k", [1, 3, 17, -5, 2.5])
def test_a_shift_is_one_linear_map_for_every_position(k):
    d = 32
    pe = sinusoidal_encoding(300, d, dtype=torch.float64)
    m = sinusoidal_shift_matrix(k, d).double()
    positions = torch.arange(10, 250, dtype=torch.float64)
    shifted = _sinusoid_at(positions + k, d)
    assert torch.allclose(_sinusoid_at(positions, d) @ m.T, shifted, atol=1e-5)
    if float(k).is_integer():
        p = torch.arange(10, 250)
        assert torch.allclose(pe[p] @ m.T, pe[p + int(k)], atol=1e-5)


def _sinusoid_at(positions: torch.Tensor, d: int) -> torch.Tensor:
    """Independent reference: the formula evaluated at arbitrary (even fractional) positions."""
    i = torch.arange(d // 2, dtype=torch.float64)
    angle = positions[:, None] / 10000 ** (2 * i / d)
    return torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(1)


def test_shift_matrix_is_a_block_diagonal_rotation_that_composes():
    d = 8
    m3, m4, m7 = (sinusoidal_shift_matrix(k, d).double() for k in (3, 4, 7))
    assert torch.allclose(m3 @ m3.T, torch.eye(d, dtype=torch.float64), atol=1e-6)  # orthogonal
    off_block = m3.clone()
    for i in range(0, d, 2):
        off_block[i : i + 2, i : i + 2] = 0
    assert off_block.abs().max() == 0  # only 2x2 blocks on the diagonal
    assert torch.allclose(m3 @ m4, m7, atol=1e-6)  # shifting by 3 then 4 = shifting by 7
    assert torch.allclose(sinusoidal_shift_matrix(0, d), torch.eye(d))


def test_sinusoidal_bad_input():
    with pytest.raises(ValueError, match="d_model must be even .* got 7"):
        sinusoidal_encoding(10, 7)
    with pytest.raises(ValueError, match=r"n_positions must be an? (int >= 1|positive int), got 0"):
        sinusoidal_encoding(0, 8)
    with pytest.raises(ValueError, match=r"base must be a (finite )?number > 1(\.0)?, got 1"):
        sinusoidal_encoding(4, 8, base=1)
    with pytest.raises(TypeError, match="k must be a (finite )?number"):
        sinusoidal_shift_matrix("3", 8)


# ---------------------------------------------------------------------------------- learned
def test_learned_positions_is_an_embedding_lookup_and_only_used_rows_learn():
    torch.manual_seed(0)
    pos = LearnedPositionalEmbedding(16, 8)
    ref = torch.nn.Embedding(16, 8)
    ref.weight.data.copy_(pos.weight.data)
    p = torch.tensor([[0, 1, 2], [5, 5, 3]])
    assert torch.equal(pos(p), ref(p))
    pos(torch.arange(4)).sum().backward()
    assert pos.weight.grad[:4].abs().sum() > 0 and pos.weight.grad[4:].abs().sum() == 0


def test_learned_positions_bad_input():
    pos = LearnedPositionalEmbedding(16, 8)
    with pytest.raises(ValueError, match=r"positions must be in \[0, 16\) .* got values in \[0, 20\]"):
        pos(torch.arange(21))
    with pytest.raises(TypeError, match="positions must be an integer tensor"):
        pos(torch.arange(4.0))
    with pytest.raises(ValueError, match=r"max_positions must be an? (int >= 1|positive int)"):
        LearnedPositionalEmbedding(0, 8)


# ---------------------------------------------------------------------------------- RoPE
def _rope_complex(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Independent reference: adjacent pairs as complex numbers times e^{i p w}."""
    d = x.shape[-1]
    w = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    phase = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions.double()[:, None] * w)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * phase).reshape(x.shape).to(x.dtype)


def test_rope_matches_complex_multiplication():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 16)
    positions = torch.arange(11) * 3 + 2
    assert torch.allclose(apply_rope(x, positions), _rope_complex(x, positions), atol=1e-5)
    assert torch.allclose(apply_rope(x, torch.zeros(11, dtype=torch.long)), x)  # position 0: no rotation


def test_rope_matches_huggingface_llama():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    torch.manual_seed(0)
    b, h, t, d = 2, 4, 13, 16
    cfg = transformers.LlamaConfig(hidden_size=h * d, num_attention_heads=h, head_dim=d, rope_theta=10000.0)
    q, k = torch.randn(b, h, t, d), torch.randn(b, h, t, d)
    position_ids = torch.arange(5, 5 + t)[None].expand(b, -1)
    cos, sin = LlamaRotaryEmbedding(cfg)(q, position_ids)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    # HF Llama pairs dimension i with i + D/2 ("half"):
    assert torch.allclose(apply_rope(q, position_ids, pairing="half"), q_hf, atol=1e-5)
    assert torch.allclose(apply_rope(k, position_ids[0], pairing="half"), k_hf, atol=1e-5)
    # our default pairs 2i with 2i + 1; permuting dimensions turns one convention into the other
    perm = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))  # interleaved -> half layout
    assert torch.allclose(apply_rope(q, position_ids)[..., perm], apply_rope(q[..., perm], position_ids, pairing="half"),
                          atol=1e-5)
    assert torch.allclose(apply_rope(q, position_ids)[..., perm], apply_rotary_pos_emb(q[..., perm], k, cos, sin)[0],
                          atol=1e-5)


@pytest.mark.parametrize("pairing", ["interleaved", "half"])
def test_rope_scores_depend_only_on_the_offset(pairing):
    torch.manual_seed(0)
    d = 32
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)

    def score(m, n):
        qm = apply_rope(q.view(1, 1, 1, d), torch.tensor([m]), pairing=pairing)
        kn = apply_rope(k.view(1, 1, 1, d), torch.tensor([n]), pairing=pairing)
        return (qm * kn).sum().item()

    for m, n in [(0, 0), (7, 3), (3, 7), (100, 1)]:
        for shift in (1, 13, 500):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-9)
    assert score(7, 3) != pytest.approx(score(3, 7), abs=1e-3)  # the sign of the offset matters
    x = torch.randn(1, 1, 20, d)
    assert torch.allclose(apply_rope(x, torch.arange(20), pairing=pairing).norm(dim=-1), x.norm(dim=-1))


def test_rope_batch_positions_and_dtypes():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8)
    per_batch = torch.stack((torch.arange(5), torch.arange(5) + 10))
    out = apply_rope(x, per_batch)
    assert torch.allclose(out[1], apply_rope(x[1:], torch.arange(5) + 10)[0])
    half = apply_rope(x.half(), torch.arange(5))
    assert half.dtype == torch.float16 and torch.allclose(half.float(), apply_rope(x, torch.arange(5)), atol=1e-2)


def test_rope_bad_input():
    with pytest.raises(ValueError, match=r"must be even .* got D=7 for x of shape \(1, 2, 3, 7\)"):
        apply_rope(torch.randn(1, 2, 3, 7), torch.arange(3))
    with pytest.raises(ValueError, match=r"T=3 .* got shape \(4,\)"):
        apply_rope(torch.randn(1, 2, 3, 8), torch.arange(4))
    with pytest.raises(TypeError, match="floating-point"):
        apply_rope(torch.ones(1, 2, 3, 8, dtype=torch.long), torch.arange(3))
    with pytest.raises(ValueError, match="pairing must be 'interleaved' or 'half', got 'neox'"):
        apply_rope(torch.randn(1, 2, 3, 8), torch.arange(3), pairing="neox")


# ---------------------------------------------------------------------------------- ALiBi
def _paper_slopes(n: int) -> list[float]:
    """The recipe as written in the ALiBi paper's reference code (start = ratio = 2^(-8/n))."""

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + _paper_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 8, 12, 16, 20, 24, 32, 48])
def test_alibi_slopes_match_the_paper_and_bloom(n):
    slopes = alibi_slopes(n)
    assert torch.allclose(slopes.double(), torch.tensor(_paper_slopes(n), dtype=torch.float64), rtol=1e-6)
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    assert torch.allclose(slopes, bloom._get_alibi_slopes(n, "cpu"), rtol=1e-6)


def test_alibi_slopes_by_hand():
    assert alibi_slopes(8).tolist() == [2.0**-k for k in range(1, 9)]
    assert alibi_slopes(2).tolist() == [2.0**-4, 2.0**-8]


def test_alibi_bias_matches_a_loop():
    heads, nq, nk = 6, 4, 9
    bias = alibi_bias(heads, nq, nk)
    slopes = _paper_slopes(heads)
    assert bias.shape == (heads, nq, nk)
    for h in range(heads):
        for i in range(nq):
            query_position = nk - nq + i
            for j in range(nk):
                assert bias[h, i, j].item() == pytest.approx(-slopes[h] * abs(query_position - j), rel=1e-6)


def test_alibi_equals_bloom_under_a_causal_mask():
    """BLOOM adds +m*j instead of -m*(i-j): the same row up to a constant, so the same softmax."""
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    torch.manual_seed(0)
    heads, t = 12, 10
    scores = torch.randn(heads, t, t)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    ours = (scores + alibi_bias(heads, t, t)).masked_fill(~causal, float("-inf")).softmax(-1)
    theirs_bias = bloom.build_alibi_tensor(torch.ones(1, t), heads, torch.float32)  # (H, 1, T)
    theirs = (scores + theirs_bias).masked_fill(~causal, float("-inf")).softmax(-1)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_alibi_bad_input():
    with pytest.raises(ValueError, match="n_queries must be <= n_keys .* n_queries=5, n_keys=3"):
        alibi_bias(4, 5, 3)
    with pytest.raises(ValueError, match=r"n_heads must be an? (int >= 1|positive int), got 0"):
        alibi_bias(0, 3, 3)
    with pytest.raises(TypeError, match="n_heads must be an? (int >= 1|positive int), got float 2.0"):
        alibi_slopes(2.0)


# ---------------------------------------------------------------------------------- the views
def test_figures_and_widgets():
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transformer_book.viz.positions import rope_figure, rope_widget, sinusoidal_figure, sinusoidal_widget

    fig = sinusoidal_figure(50, 16, position=10)
    assert len(fig.axes) == 3  # heatmap, its colour bar, the similarity curve
    plt.close(fig)
    fig = rope_figure(position=7, pair=1, d_head=8)
    assert "position 7" in fig.axes[0].get_title()
    plt.close(fig)
    with pytest.raises(ValueError, match=r"pair must be an int in \[0, 4\) .* got 4"):
        rope_figure(pair=4, d_head=8)
    with pytest.raises(ValueError, match=r"position must be an int in \[0, 50\) .* got 50"):
        sinusoidal_figure(50, 16, position=50)
    for widget, names in ((sinusoidal_widget(), ["d_model", "base", "position"]), (rope_widget(), ["position", "pair i"])):
        sliders, _ = widget.children
        assert [s.description for s in sliders.children] == names
        sliders.children[0].value = sliders.children[0].value + 2  # moving a slider redraws without error
    plt.close("all")


# ---------------------------------------------------------------------------------- issue 10
def test_tables_refuse_integer_and_bool_dtypes():
    for dtype in (torch.int64, torch.bool):
        with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
            sinusoidal_encoding(4, 8, dtype=dtype)
        with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
            alibi_bias(2, 3, 3, dtype=dtype)
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype, got str"):
        sinusoidal_encoding(4, 8, dtype="float32")
    assert sinusoidal_encoding(4, 8, dtype=torch.float64).dtype == torch.float64


def test_init_std_must_be_a_finite_non_negative_number():
    for bad in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="init_std must be"):
            LearnedPositionalEmbedding(8, 4, init_std=bad)
    with pytest.raises(TypeError, match="init_std must be"):
        LearnedPositionalEmbedding(8, 4, init_std="0.02")


def test_rope_positions_must_be_numbers_and_the_shift_finite():
    with pytest.raises(TypeError, match="positions must be an integer or real tensor, got dtype torch.bool"):
        apply_rope(torch.zeros(1, 1, 4, 8), torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="positions must be a torch.Tensor"):
        rope_angles([0, 1], 8)
    with pytest.raises(ValueError, match="k must be a finite number"):
        sinusoidal_shift_matrix(float("nan"), 8)
