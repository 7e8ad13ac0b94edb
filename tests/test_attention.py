"""Attention (chapter 4) against PyTorch: F.scaled_dot_product_attention and nn.MultiheadAttention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from transformer_book.attention import (
    MultiHeadAttention,
    attention_flops,
    attention_flops_breakdown,
    attention_param_count,
    merge_heads,
    repeat_kv,
    scaled_dot_product_attention,
    split_heads,
)
from transformer_book.masks import (
    causal_mask,
    combine_masks,
    padding_mask,
    to_additive_mask,
    to_torch_key_padding_mask,
    to_torch_mha_mask,
)

torch.set_num_threads(1)
TOL = dict(atol=1e-5, rtol=1e-5)

shapes = st.tuples(
    st.integers(1, 3),  # B
    st.integers(1, 4),  # H
    st.integers(1, 9),  # T_q
    st.integers(1, 9),  # T_k
    st.integers(1, 16),  # D
    st.integers(1, 16),  # D_v
)


def _qkv(b, h, tq, tk, d, dv, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=g)
    k = torch.randn(b, h, tk, d, generator=g)
    v = torch.randn(b, h, tk, dv, generator=g)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


# ---------------------------------------------------------------- scaled dot-product attention
@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), mask_kind=st.sampled_from(["none", "bool", "additive", "broadcast"]))
def test_sdpa_matches_torch(shape, seed, mask_kind):
    b, h, tq, tk, d, dv = shape
    q, k, v = _qkv(*shape, seed, requires_grad=True)
    g = torch.Generator().manual_seed(seed + 1)
    mask = bias = ref_mask = None
    if mask_kind == "bool":  # random, rows may be fully blocked: both give zeros there
        mask = ref_mask = torch.rand(b, h, tq, tk, generator=g) > 0.5
    elif mask_kind == "broadcast":  # a key-padding-like mask (B, 1, 1, T_k)
        mask = ref_mask = torch.rand(b, 1, 1, tk, generator=g) > 0.3
    elif mask_kind == "additive":
        bias = ref_mask = torch.randn(b, 1, tq, tk, generator=g)
    out, w = scaled_dot_product_attention(q, k, v, mask, bias=bias)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=ref_mask)
    assert out.shape == (b, h, tq, dv) and w.shape == (b, h, tq, tk)
    torch.testing.assert_close(out, ref, **TOL)
    # gradients agree too
    grad_out = torch.randn(out.shape, generator=g)
    ours_g = torch.autograd.grad(out, (q, k, v), grad_out)
    ref_g = torch.autograd.grad(ref, (q, k, v), grad_out)
    for a, r in zip(ours_g, ref_g):
        torch.testing.assert_close(a, r, **TOL)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_sdpa_weights_are_the_softmax_of_scaled_scores(shape, seed):
    q, k, v = _qkv(*shape, seed)
    _, w = scaled_dot_product_attention(q, k, v)
    ref = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    torch.testing.assert_close(w, ref, **TOL)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), **TOL)


def test_sdpa_explicit_scale_and_bool_plus_bias():
    q, k, v = _qkv(2, 3, 5, 7, 8, 4, seed=0)
    out, _ = scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.3), **TOL)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True
    bias = torch.randn(3, 5, 7)
    out, _ = scaled_dot_product_attention(q, k, v, mask, bias=bias)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias + to_additive_mask(mask))
    torch.testing.assert_close(out, ref, **TOL)


def test_sdpa_dropout_changes_output_only_in_training():
    torch.manual_seed(0)
    q, k, v = _qkv(1, 2, 6, 6, 8, 8, seed=1)
    plain, w_plain = scaled_dot_product_attention(q, k, v)
    dropped, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert torch.equal(w, w_plain)  # returned weights are before dropout
    assert not torch.allclose(dropped, plain)


def test_sdpa_bad_inputs():
    q, k, v = _qkv(2, 2, 4, 5, 8, 8, seed=0)
    with pytest.raises(ValueError, match=r"same head size D.*q \(2, 2, 4, 8\) and k \(2, 2, 5, 6\)"):
        scaled_dot_product_attention(q, k[..., :6], v)
    with pytest.raises(ValueError, match=r"same number of keys.*k \(2, 2, 5, 8\) and v \(2, 2, 4, 8\)"):
        scaled_dot_product_attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match=r"leading.*k \(2, 1, 5, 8\).*repeat_kv"):
        scaled_dot_product_attention(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match=r"mask of shape \(4, 4\) cannot be broadcast.*\(2, 2, 4, 5\)"):
        scaled_dot_product_attention(q, k, v, causal_mask(4))
    with pytest.raises(TypeError, match=r"mask must have dtype torch.bool.*torch.float32.*bias="):
        scaled_dot_product_attention(q, k, v, torch.zeros(4, 5))
    with pytest.raises(TypeError, match=r"bias must be a floating-point tensor.*torch.bool.*mask="):
        scaled_dot_product_attention(q, k, v, bias=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bias of shape \(3, 5\) cannot be broadcast.*\(2, 2, 4, 5\)"):
        scaled_dot_product_attention(q, k, v, bias=torch.zeros(3, 5))
    with pytest.raises(TypeError, match="q must be a floating-point tensor, got dtype torch.int64"):
        scaled_dot_product_attention(q.long(), k, v)
    with pytest.raises(TypeError, match="share a dtype"):
        scaled_dot_product_attention(q.double(), k, v)
    with pytest.raises(ValueError, match=r"dropout_p must be a number in \[0, 1\), got 1.5"):
        scaled_dot_product_attention(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="scale must be a number > 0, got nan"):
        scaled_dot_product_attention(q, k, v, scale=float("nan"))


# ---------------------------------------------------------------- heads
def test_split_merge_heads_roundtrip_and_layout():
    x = torch.randn(2, 5, 12)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    torch.testing.assert_close(h[:, 1], x[..., 4:8])  # head 1 owns channels 4..7
    assert torch.equal(merge_heads(h), x)
    with pytest.raises(ValueError, match=r"C=12 of x \(2, 5, 12\) must be divisible by n_heads=5"):
        split_heads(x, 5)


def test_repeat_kv_interleaves():
    x = torch.randn(2, 3, 4, 5)
    r = repeat_kv(x, 2)
    assert r.shape == (2, 6, 4, 5)
    assert torch.equal(r, x.repeat_interleave(2, dim=1))
    assert repeat_kv(x, 1) is x
    with pytest.raises(ValueError, match="n_rep must be a positive int, got 0"):
        repeat_kv(x, 0)


# ---------------------------------------------------------------- MultiHeadAttention vs nn.MultiheadAttention
def _torch_pair(d, h, bias=True, seed=0):
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(d, h, bias=bias, batch_first=True).eval()
    if bias:  # torch initialises in_proj_bias to zeros: make the test see the biases
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha, MultiHeadAttention.from_torch(mha).eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d,h,tq,tk", [(16, 4, 6, 6), (24, 3, 5, 9), (8, 1, 1, 4), (32, 8, 7, 2)])
def test_mha_matches_torch(d, h, tq, tk, bias):
    mha, ours = _torch_pair(d, h, bias)
    xq, xkv = torch.randn(2, tq, d), torch.randn(2, tk, d)
    ref_out, ref_w = mha(xq, xkv, xkv, average_attn_weights=False)
    out, w = ours(xq, xkv)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(w, ref_w, **TOL)
    if tq == tk:  # self-attention: x_kv defaults to x_q
        torch.testing.assert_close(ours(xq)[0], mha(xq, xq, xq)[0], **TOL)


def test_mha_dropout_only_in_training():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, dropout=0.3, batch_first=False)
    ours = MultiHeadAttention.from_torch(mha)
    assert ours.dropout == 0.3
    x = torch.randn(2, 5, 16)
    ours.eval(), mha.eval()
    ref, _ = mha(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1))  # (T, B, C) layout
    torch.testing.assert_close(ours(x)[0], ref.transpose(0, 1), **TOL)
    ours.train()
    a, w_a = ours(x)
    b, w_b = ours(x)
    assert not torch.allclose(a, b)  # a different dropout draw each call
    torch.testing.assert_close(w_a, w_b)  # returned weights are before dropout


def test_mha_masks_translated_to_torch():
    mha, ours = _torch_pair(16, 4)
    t = 6
    x = torch.randn(3, t, 16)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    causal, pad = causal_mask(t), padding_mask(tokens, 0)
    ref_out, ref_w = mha(x, x, x, attn_mask=to_torch_mha_mask(causal),
                         key_padding_mask=to_torch_key_padding_mask(pad), average_attn_weights=False)
    out, w = ours(x, mask=combine_masks(causal, pad))
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(w, ref_w, **TOL)
    # a per-head (B, H, T, T) mask: torch wants (B*H, T, T)
    per_head = torch.rand(3, 4, t, t) > 0.4
    per_head[..., 0] = True
    ref_out, _ = mha(x, x, x, attn_mask=to_torch_mha_mask(per_head))
    torch.testing.assert_close(ours(x, mask=per_head)[0], ref_out, **TOL)


def test_mha_fully_masked_row_zero_where_torch_gives_nan():
    mha, ours = _torch_pair(8, 2)
    x = torch.randn(1, 3, 8)
    mask = torch.tensor([[True, True, False], [False, False, False], [True, True, True]])
    ref_out, _ = mha(x, x, x, attn_mask=to_torch_mha_mask(mask))
    out, w = ours(x, mask=mask)
    assert bool(torch.isnan(ref_out[0, 1]).all())  # nn.MultiheadAttention: NaN row
    assert bool((w[0, :, 1] == 0).all()) and bool(torch.isfinite(out).all())
    # our row is the output projection of a zero vector: just the output bias
    torch.testing.assert_close(out[0, 1], ours.out_proj.bias)
    torch.testing.assert_close(out[0, [0, 2]], ref_out[0, [0, 2]], **TOL)


def test_mha_torch_backend_equals_book_backend():
    torch.manual_seed(0)
    book = MultiHeadAttention(16, 4, 2).eval()
    fast = MultiHeadAttention(16, 4, 2, backend="torch").eval()
    fast.load_state_dict(book.state_dict())
    x, mem = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mask = torch.rand(2, 1, 5, 7) > 0.5
    out_book, _ = book(x, mem, mask, need_weights=False)
    out_fast, w = fast(x, mem, mask, need_weights=False)
    assert w is None
    torch.testing.assert_close(out_fast, out_book, **TOL)


def test_mha_precomputed_kv_hook():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, 2).eval()
    x, mem = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    k, v = attn.project_kv(mem)
    assert k.shape == (2, 2, 5, 4)
    torch.testing.assert_close(attn(x, kv=(k, v))[0], attn(x, mem)[0], **TOL)
    # a cache built in two pieces gives the same result as one
    k1, v1 = attn.project_kv(mem[:, :2])
    k2, v2 = attn.project_kv(mem[:, 2:])
    cached = (torch.cat([k1, k2], 2), torch.cat([v1, v2], 2))
    torch.testing.assert_close(attn(x, kv=cached)[0], attn(x, mem)[0], **TOL)
    with pytest.raises(ValueError, match="either x_kv.*or kv"):
        attn(x, mem, kv=(k, v))
    expected = r"kv\[0\] must have shape \(B, n_kv_heads, T_k, D\) = \(2, 2, 5, 4\), got shape \(2, 4, 5, 4\)"
    with pytest.raises(ValueError, match=expected):
        attn(x, kv=(k.repeat(1, 2, 1, 1), v))


# ---------------------------------------------------------------- grouped-query / multi-query
@pytest.mark.parametrize("h,h_kv", [(4, 2), (4, 1), (6, 3), (8, 8)])
def test_gqa_equals_mha_with_repeated_kv_heads(h, h_kv):
    torch.manual_seed(0)
    d = 8 * h
    gqa = MultiHeadAttention(d, h, h_kv).eval()
    mha = MultiHeadAttention(d, h).eval()
    n_rep, hd = h // h_kv, d // h
    with torch.no_grad():
        mha.q_proj.load_state_dict(gqa.q_proj.state_dict())
        mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
        for src, dst in ((gqa.k_proj, mha.k_proj), (gqa.v_proj, mha.v_proj)):
            # rows of a (H_kv*D, C) weight are head-major: repeat each head's D rows n_rep times
            dst.weight.copy_(src.weight.view(h_kv, hd, d).repeat_interleave(n_rep, 0).reshape(d, d))
            dst.bias.copy_(src.bias.view(h_kv, hd).repeat_interleave(n_rep, 0).reshape(d))
    x = torch.randn(2, 5, d)
    mask = causal_mask(5)
    out_g, w_g = gqa(x, mask=mask)
    out_m, w_m = mha(x, mask=mask)
    torch.testing.assert_close(out_g, out_m, **TOL)
    torch.testing.assert_close(w_g, w_m, **TOL)
    # and torch's own GQA path agrees
    q = gqa.project_q(x)
    k, v = gqa.project_kv(x)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(gqa.out_proj(merge_heads(ref)), out_g, **TOL)


# ---------------------------------------------------------------- counting
@pytest.mark.parametrize("d,h,h_kv,bias", [(16, 4, None, True), (64, 8, 2, True), (64, 8, 1, False), (48, 6, 3, False)])
def test_param_count_matches_module(d, h, h_kv, bias):
    module = MultiHeadAttention(d, h, h_kv, bias=bias)
    assert attention_param_count(d, h, h_kv, bias=bias) == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("d,h,h_kv,tq,tk", [(16, 4, None, 5, None), (64, 8, 2, 7, 11), (32, 4, 1, 3, 3)])
def test_flops_match_torch_flop_counter(d, h, h_kv, tq, tk):
    module = MultiHeadAttention(d, h, h_kv).eval()
    xq = torch.randn(2, tq, d)
    xkv = None if tk is None else torch.randn(2, tk, d)
    with FlopCounterMode(display=False) as counter:
        module(xq, xkv)
    expected = attention_flops(d, h, h_kv, t_q=tq, t_k=tk, batch=2)
    assert counter.get_total_flops() == expected
    parts = attention_flops_breakdown(d, h, h_kv, t_q=tq, t_k=tk, batch=2)
    assert sum(parts.values()) == expected and parts["scores"] == parts["weighted_sum"]


# ---------------------------------------------------------------- bad configuration and input
def test_bad_head_counts():
    with pytest.raises(ValueError, match="n_heads=5 must divide d_model=16"):
        MultiHeadAttention(16, 5)
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide n_heads=4"):
        MultiHeadAttention(16, 4, 3)
    with pytest.raises(ValueError, match="n_heads must be a positive int, got 0"):
        MultiHeadAttention(16, 0)
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide n_heads=4"):
        attention_param_count(16, 4, 3)
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=16"):
        attention_flops(16, 3, t_q=4)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 2"):
        MultiHeadAttention(16, 4, dropout=2)
    with pytest.raises(ValueError, match="backend must be 'book' or 'torch', got 'cuda'"):
        MultiHeadAttention(16, 4, backend="cuda")


def test_mha_bad_inputs():
    attn = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match=r"x_q must have shape \(B, T, d_model=16\), got shape \(2, 5, 12\)"):
        attn(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match=r"x_q \(2, 5, 16\) and x_kv \(3, 5, 16\) must have the same batch size"):
        attn(torch.randn(2, 5, 16), torch.randn(3, 5, 16))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 1, 1, 4\) cannot be broadcast.*\(2, 4, 5, 5\)"):
        attn(torch.randn(2, 5, 16), mask=torch.ones(2, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        attn(torch.randn(2, 5, 16), mask=torch.zeros(5, 5))


def test_from_torch_rejects_what_does_not_map():
    with pytest.raises(ValueError, match="kdim = vdim = embed_dim"):
        MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(16, 4, kdim=8, vdim=8))
    with pytest.raises(ValueError, match="add_bias_kv=False"):
        MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(16, 4, add_bias_kv=True))
    with pytest.raises(ValueError, match="n_kv_heads=2 != n_heads=4"):
        MultiHeadAttention(16, 4, 2).load_torch_weights(torch.nn.MultiheadAttention(16, 4))
    with pytest.raises(ValueError, match="embed_dim=16, num_heads=2.*n_heads=4"):
        MultiHeadAttention(16, 4).load_torch_weights(torch.nn.MultiheadAttention(16, 2))
    with pytest.raises(TypeError, match="got Linear"):
        MultiHeadAttention.from_torch(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- NaN is reported, not hidden
@pytest.mark.parametrize("where", ["scores", "bias"])
def test_nan_with_a_mask_is_not_taken_for_a_masked_row(where):
    q, k, v = (torch.randn(1, 1, 3, 4) for _ in range(3))
    mask = causal_mask(3)
    bias = torch.zeros(3, 3)
    if where == "scores":
        q[0, 0, 1, 0] = float("nan")
    else:
        bias[1, 0] = float("nan")
    out, w = scaled_dot_product_attention(q, k, v, mask, bias=bias)
    assert torch.isnan(out[0, 0, 1]).all() and torch.isnan(w[0, 0, 1, :2]).all()
    assert torch.isfinite(out[0, 0, 0]).all() and torch.isfinite(out[0, 0, 2]).all()
    # a row that the mask really empties is still all zero
    empty = mask.clone()
    empty[2] = False
    out, w = scaled_dot_product_attention(torch.randn(1, 1, 3, 4), k, v, empty)
    assert torch.equal(out[0, 0, 2], torch.zeros(4)) and torch.equal(w[0, 0, 2], torch.zeros(3))


def test_mixed_dtypes_name_both():
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(TypeError, match=r"x_q torch.float64.*weights torch.float32"):
        mha(torch.randn(1, 3, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"n_heads must be a positive int, got float 4.0"):
        MultiHeadAttention(16, 4.0)
