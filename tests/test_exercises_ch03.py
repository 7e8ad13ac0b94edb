"""Chapter 3's checkers: right answers pass, typical wrong answers fail with a useful line."""

from __future__ import annotations

import math

import pytest
import torch

from transformer_book.exercises.ch03 import (
    check_alibi_slopes,
    check_interpolated_rope,
    check_partial_rope,
    check_rope,
    check_sinusoidal,
)

from exercise_helpers import first_failure as _first_failure

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------- sinusoidal
def sinusoidal_right(n_positions, d_model):
    p = torch.arange(n_positions, dtype=torch.float64)[:, None]
    i = torch.arange(0, d_model, 2, dtype=torch.float64)
    angle = p / 10000 ** (i / d_model)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2], pe[:, 1::2] = angle.sin(), angle.cos()
    return pe


def sinusoidal_float64(n_positions, d_model):
    return sinusoidal_right(n_positions, d_model).double()


def sinusoidal_swapped(n_positions, d_model):
    return sinusoidal_right(n_positions, d_model)[:, [k ^ 1 for k in range(d_model)]]


def sinusoidal_exponent_i(n_positions, d_model):
    p = torch.arange(n_positions, dtype=torch.float64)[:, None]
    i = torch.arange(d_model // 2, dtype=torch.float64)
    angle = p / 10000 ** (i / d_model)  # forgot the factor 2
    return torch.stack((angle.sin(), angle.cos()), -1).flatten(1).float()


def sinusoidal_halves(n_positions, d_model):
    pe = sinusoidal_right(n_positions, d_model)
    return torch.cat((pe[:, 0::2], pe[:, 1::2]), dim=1)


def test_sinusoidal_checker():
    assert check_sinusoidal(sinusoidal_right, quiet=True).passed
    assert check_sinusoidal(sinusoidal_float64, quiet=True).passed  # any float dtype is fine
    for wrong, named in [(sinusoidal_swapped, "Sine and cosine are swapped"),
                         (sinusoidal_exponent_i, "exponent is 2i/d"), (sinusoidal_halves, "interleave them")]:
        report = check_sinusoidal(wrong, quiet=True)
        assert not report.passed and "FAILED" in report.text(), wrong.__name__
        assert named in _first_failure(report).hint, (wrong.__name__, report.text())


# ---------------------------------------------------------------------------------- RoPE
def rope_right(x, positions):
    d = x.shape[-1]
    w = 10000 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None] * w
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)


def rope_half_pairs(x, positions):
    d = x.shape[-1]
    perm = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))
    inverse = torch.argsort(perm)
    return rope_right(x[..., inverse], positions)[..., perm]


def rope_clockwise(x, positions):
    return rope_right(x, -positions)


def rope_wrong_frequency(x, positions):
    d = x.shape[-1]
    w = 10000 ** (-torch.arange(d // 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None] * w
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()), -1).flatten(-2).float()


def rope_todo(x, positions):
    raise NotImplementedError("Exercise ex-03-rope: rotate the pairs")


def test_rope_checker():
    assert check_rope(rope_right, quiet=True).passed
    for wrong, named in [(rope_half_pairs, "'half' layout"), (rope_clockwise, "wrong way (clockwise)"),
                         (rope_wrong_frequency, "exponent 2i/D")]:
        report = check_rope(wrong, quiet=True)
        assert not report.passed and "FAILED" in report.text(), wrong.__name__
        assert named in _first_failure(report).hint, (wrong.__name__, report.text())
    assert check_rope(rope_todo, quiet=True).not_done


# ---------------------------------------------------------------------------------- ALiBi slopes
def slopes_right(n):
    def power(n):
        return [2 ** (-8 * h / n) for h in range(1, n + 1)]

    below = 2 ** math.floor(math.log2(n))
    return power(below) + power(2 * below)[0::2][: n - below]


def slopes_tensor(n):
    return torch.tensor(slopes_right(n))


def slopes_no_special_case(n):
    return [2 ** (-8 * h / n) for h in range(1, n + 1)]


def slopes_off_by_one(n):
    return [2 ** (-8 * h / n) for h in range(n)]


def slopes_wrong_interleave(n):
    below = 2 ** math.floor(math.log2(n))
    return slopes_right(below) + slopes_right(2 * below)[1::2][: n - below]


def test_alibi_slopes_checker():
    assert check_alibi_slopes(slopes_right, quiet=True).passed
    assert check_alibi_slopes(slopes_tensor, quiet=True).passed
    for wrong, named in [(slopes_no_special_case, "not a power of two"), (slopes_off_by_one, "Off by one"),
                         (slopes_wrong_interleave, "not indices 1, 3, 5")]:
        report = check_alibi_slopes(wrong, quiet=True)
        assert not report.passed and "FAILED" in report.text(), wrong.__name__
        assert named in _first_failure(report).hint, (wrong.__name__, report.text())
    assert "not a power of two" in check_alibi_slopes(slopes_no_special_case, quiet=True).text()


# ---------------------------------------------------------------------------------- partial RoPE
def partial_right(x, positions, n_rot):  # written out: rope_right on the slice, the rest kept
    return torch.cat((rope_right(x[..., :n_rot], positions), x[..., n_rot:]), dim=-1)


def partial_loop(x, positions, n_rot):  # one pair at a time, in float64
    x64, out = x.double(), x.double().clone()
    for t, p in enumerate(positions.tolist()):
        for i in range(n_rot // 2):
            theta = p * 10000.0 ** (-2 * i / n_rot)
            a, b = x64[..., t, 2 * i], x64[..., t, 2 * i + 1]
            out[..., t, 2 * i] = a * math.cos(theta) - b * math.sin(theta)
            out[..., t, 2 * i + 1] = a * math.sin(theta) + b * math.cos(theta)
    return out.to(x.dtype)


def partial_everything(x, positions, n_rot):
    return rope_right(x, positions)


def partial_last(x, positions, n_rot):
    d = x.shape[-1]
    return torch.cat((x[..., : d - n_rot], rope_right(x[..., d - n_rot :], positions)), dim=-1)


def partial_frequencies_of_d(x, positions, n_rot):  # the full head width D in the exponent
    d = x.shape[-1]
    w = 10000 ** (-torch.arange(0, n_rot, 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None] * w
    a, b = x[..., 0:n_rot:2].double(), x[..., 1:n_rot:2].double()
    turned = torch.stack((a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()), -1)
    return torch.cat((turned.flatten(-2).to(x.dtype), x[..., n_rot:]), dim=-1)


def partial_half_pairs(x, positions, n_rot):
    return torch.cat((rope_half_pairs(x[..., :n_rot], positions), x[..., n_rot:]), dim=-1)


def partial_todo(x, positions, n_rot):
    raise NotImplementedError("Exercise ex-03-partial-rope: rotate the first n_rot dimensions")


def _gptj_query(x, n_rot):
    """GPT-J's attention (Hugging Face, from a configuration) with the query projection set to the
    identity: the query it hands to its attention product is x after GPT-J's partial rotary."""
    gptj = pytest.importorskip("transformers.models.gptj.modeling_gptj")
    from transformers import GPTJConfig

    b, h, t, d = x.shape
    config = GPTJConfig(n_embd=h * d, n_head=h, rotary_dim=n_rot, n_positions=64)
    attention = gptj.GPTJAttention(config, layer_idx=0).eval()
    seen = {}

    def capture(query, key, value, attention_mask=None):
        seen["query"] = query
        return value, None

    attention._attn = capture
    with torch.no_grad():
        attention.q_proj.weight.copy_(torch.eye(h * d))
        hidden = x.transpose(1, 2).reshape(b, t, h * d)
        attention(hidden, position_ids=torch.arange(t).expand(b, t))
    return seen["query"]  # (B, H, T, D)


_PARTIAL_SHAPES = [((2, 3, 9, 16), 4), ((1, 2, 7, 12), 6), ((1, 1, 5, 8), 8), ((2, 4, 33, 64), 16)]


def test_partial_rope_reference_agrees_with_a_loop():
    from transformer_book.exercises.ch03 import _partial_rope_reference

    g = torch.Generator().manual_seed(0)
    for shape, n_rot in _PARTIAL_SHAPES:
        x, positions = torch.randn(*shape, generator=g), torch.arange(shape[-2]) + 3
        ours = _partial_rope_reference(x, positions, n_rot)
        assert ours.shape == x.shape and ours.dtype == x.dtype
        assert torch.equal(ours[..., n_rot:], x[..., n_rot:])  # passed through, bit for bit
        torch.testing.assert_close(ours, partial_loop(x, positions, n_rot), atol=1e-5, rtol=1e-5)
    x = torch.randn(2, 3, 7, 16, generator=g)
    assert torch.allclose(_partial_rope_reference(x, torch.arange(7), 16), rope_right(x, torch.arange(7)),
                          atol=1e-6)  # n_rot = D: the whole of ex-03-rope


def test_partial_rope_reference_agrees_with_gptj():
    from transformer_book.exercises.ch03 import _partial_rope_reference

    g = torch.Generator().manual_seed(1)
    for shape, n_rot in _PARTIAL_SHAPES:
        x = torch.randn(*shape, generator=g)
        ours = _partial_rope_reference(x, torch.arange(shape[-2]), n_rot)
        torch.testing.assert_close(ours, _gptj_query(x, n_rot), atol=1e-5, rtol=1e-5)
    x = torch.randn(1, 2, 9, 16, generator=g)  # and GPT-J tells the wrong answers apart
    for wrong in (partial_last, partial_frequencies_of_d, partial_half_pairs, partial_everything):
        assert not torch.allclose(wrong(x, torch.arange(9), 4), _gptj_query(x, 4), atol=1e-3), wrong.__name__


def test_partial_rope_checker():
    assert check_partial_rope(partial_right, quiet=True).passed
    assert check_partial_rope(partial_loop, quiet=True).passed
    for wrong, named in [(partial_everything, "You rotated all D dimensions"),
                         (partial_last, "You rotated the last n_rot dimensions"),
                         (partial_frequencies_of_d, "not 10000^(-2i/D)"),
                         (partial_half_pairs, "'half' layout")]:
        report = check_partial_rope(wrong, quiet=True)
        assert not report.passed and "FAILED" in report.text(), wrong.__name__
        assert named in _first_failure(report).hint, (wrong.__name__, report.text())
    assert check_partial_rope(partial_todo, quiet=True).not_done


# ---------------------------------------------------------------------------------- interpolated RoPE
def interpolated_right(x, train_len):
    t = x.shape[-2]
    stretch = max(1.0, t / train_len)  # how much longer than in training
    return rope_right(x, torch.arange(t, dtype=torch.float64) / stretch)


def interpolated_not_scaled(x, train_len):
    return rope_right(x, torch.arange(x.shape[-2]))


def interpolated_always(x, train_len):  # short inputs stretched too
    return rope_right(x, torch.arange(x.shape[-2]) * (train_len / x.shape[-2]))


def interpolated_endpoints(x, train_len):  # last position mapped onto train_len - 1
    t = x.shape[-2]
    return rope_right(x, torch.arange(t) * min(1.0, (train_len - 1) / (t - 1)))


def interpolated_integer_positions(x, train_len):  # squeezed, then rounded down to whole positions
    t = x.shape[-2]
    return rope_right(x, (torch.arange(t) * min(1.0, train_len / t)).floor())


def test_interpolated_rope_checker():
    assert check_interpolated_rope(interpolated_right, quiet=True).passed
    for wrong, named in [(interpolated_not_scaled, "not interpolated"), (interpolated_always, "Short inputs must stay"),
                         (interpolated_endpoints, "The factor is train_len / T")]:
        report = check_interpolated_rope(wrong, quiet=True)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())
    report = check_interpolated_rope(interpolated_integer_positions, quiet=True)
    assert not report.passed and "fractional positions are fine" in _first_failure(report).hint
