"""Masks (chapter 5): shapes, meaning, translations to PyTorch's conventions, and no-leak tests."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transformer_book.attention import MultiHeadAttention, scaled_dot_product_attention
from transformer_book.masks import (
    causal_mask,
    check_mask,
    combine_masks,
    padding_mask,
    prefix_lm_mask,
    to_additive_mask,
    to_torch_key_padding_mask,
    to_torch_mha_mask,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- the masks themselves
@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_causal_mask_is_lower_triangle(n):
    mask = causal_mask(n)
    assert mask.dtype == torch.bool and mask.shape == (n, n)
    for t in range(n):
        for s in range(n):
            assert bool(mask[t, s]) == (s <= t)


def test_causal_mask_matches_torch_is_causal():
    q, k, v = torch.randn(3, 2, 2, 6, 4).unbind(0)
    ours, _ = scaled_dot_product_attention(q, k, v, causal_mask(6))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_padding_mask_shape_and_values():
    tokens = torch.tensor([[5, 6, 7, 0, 0], [1, 0, 2, 3, 0]])
    mask = padding_mask(tokens, pad_id=0)
    assert mask.shape == (2, 1, 1, 5) and mask.dtype == torch.bool
    assert mask[:, 0, 0].tolist() == [[True, True, True, False, False], [True, False, True, True, False]]


def _prefix_reference(n, p):
    return torch.tensor([[s < p or s <= t for s in range(n)] for t in range(n)])


@pytest.mark.parametrize("n,p", [(1, 0), (4, 0), (4, 1), (5, 2), (5, 5), (7, 3)])
def test_prefix_lm_mask_matches_definition(n, p):
    assert torch.equal(prefix_lm_mask(n, p), _prefix_reference(n, p))


def test_prefix_lm_mask_limits():
    assert torch.equal(prefix_lm_mask(6, 0), causal_mask(6))
    assert torch.equal(prefix_lm_mask(6, 1), causal_mask(6))
    assert bool(prefix_lm_mask(6, 6).all())


def test_prefix_lm_mask_per_sequence_lengths():
    lengths = torch.tensor([0, 2, 5])
    mask = prefix_lm_mask(5, lengths)
    assert mask.shape == (3, 1, 5, 5)
    for b, p in enumerate(lengths.tolist()):
        assert torch.equal(mask[b, 0], _prefix_reference(5, p))


def test_combine_masks_ands_and_broadcasts():
    tokens = torch.tensor([[1, 2, 0], [3, 0, 0]])
    combined = combine_masks(causal_mask(3), padding_mask(tokens, 0))
    assert combined.shape == (2, 1, 3, 3)
    for b in range(2):
        for t in range(3):
            for s in range(3):
                expected = s <= t and tokens[b, s].item() != 0
                assert bool(combined[b, 0, t, s]) == expected
    assert combine_masks(None, None) is None
    single = causal_mask(3)
    out = combine_masks(None, single)
    assert torch.equal(out, single) and out.data_ptr() != single.data_ptr()  # a copy, not an alias


# ---------------------------------------------------------------- translations
def test_additive_mask_gives_same_attention_as_boolean():
    q, k, v = torch.randn(3, 2, 3, 5, 8).unbind(0)
    mask = torch.rand(2, 3, 5, 5) > 0.4
    mask[..., 0] = True  # every row has something to attend to (an all -inf row is NaN in torch)
    additive = to_additive_mask(mask)
    assert additive.dtype == torch.float32
    assert torch.equal(additive == 0, mask) and bool(torch.isneginf(additive[~mask]).all())
    ref_bool = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref_add = F.scaled_dot_product_attention(q, k, v, attn_mask=additive)
    ours_bias, _ = scaled_dot_product_attention(q, k, v, bias=additive)
    torch.testing.assert_close(ref_add, ref_bool, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours_bias, ref_bool, atol=1e-6, rtol=1e-5)
    assert to_additive_mask(mask, torch.float64).dtype == torch.float64


def test_torch_mha_masks_are_the_logical_not_of_ours():
    torch.manual_seed(0)
    d, h, t = 16, 4, 6
    mha = torch.nn.MultiheadAttention(d, h, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(mha).eval()
    x = torch.randn(2, t, d)
    tokens = torch.tensor([[1, 2, 3, 4, 0, 0], [1, 2, 3, 4, 5, 6]])
    pad = padding_mask(tokens, 0)
    causal = causal_mask(t)
    ref_out, ref_w = mha(x, x, x, attn_mask=to_torch_mha_mask(causal),
                         key_padding_mask=to_torch_key_padding_mask(pad), average_attn_weights=False)
    out, w = ours(x, mask=combine_masks(causal, pad))
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    # Forgetting the translation is not harmless: torch then blocks exactly what we allow.
    wrong, _ = mha(x, x, x, attn_mask=causal, need_weights=False)
    assert not torch.allclose(wrong[:, 1:], out[:, 1:], atol=1e-3)


def test_to_torch_mha_mask_reshapes_4d():
    mask = torch.rand(2, 3, 4, 5) > 0.5
    out = to_torch_mha_mask(mask)
    assert out.shape == (6, 4, 5) and torch.equal(out, ~mask.reshape(6, 4, 5))
    kpm = to_torch_key_padding_mask(padding_mask(torch.tensor([[1, 0]]), 0))
    assert kpm.tolist() == [[False, True]]


# ---------------------------------------------------------------- no leaks
def test_causal_no_leak_gradient():
    """Output at position t has zero gradient with respect to every input after t."""
    torch.manual_seed(0)
    t_len, d = 7, 16
    attn = MultiHeadAttention(d, 4).eval()
    x = torch.randn(1, t_len, d)
    jac = torch.autograd.functional.jacobian(lambda x: attn(x, mask=causal_mask(t_len))[0], x)
    # jac: (1, T, d, 1, T, d) -> |d out_t / d x_s| summed over channels
    influence = jac.abs().sum(dim=(0, 2, 3, 5))
    past = causal_mask(t_len)
    assert bool((influence[~past] == 0).all())  # future inputs: exactly zero
    assert bool((influence[past] > 0).all())  # past and present: really used
    # without the mask the future does leak: the test can fail
    jac_free = torch.autograd.functional.jacobian(lambda x: attn(x)[0], x)
    assert bool((jac_free.abs().sum(dim=(0, 2, 3, 5))[~past] > 0).all())


def test_padding_content_does_not_change_real_outputs():
    torch.manual_seed(0)
    d = 8
    attn = MultiHeadAttention(d, 2).eval()
    tokens = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 0, 0, 0]])
    mask = padding_mask(tokens, 0)
    real = tokens != 0
    x = torch.randn(2, 5, d)
    x2 = x.clone()
    x2[~real] = 100 * torch.randn(int((~real).sum()), d)  # change what sits in the padding
    out1, _ = attn(x, mask=mask)
    out2, _ = attn(x2, mask=mask)
    assert torch.equal(out1[real], out2[real])
    out3, _ = attn(x2)  # unmasked: the padding does leak in
    assert not torch.allclose(out1[real], out3[real])


def test_fully_masked_query_row_is_zero_and_gradients_are_finite():
    torch.manual_seed(0)
    q = torch.randn(1, 1, 3, 4, requires_grad=True)
    k = torch.randn(1, 1, 3, 4, requires_grad=True)
    v = torch.randn(1, 1, 3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    out, w = scaled_dot_product_attention(q, k, v, mask)
    assert bool((out[0, 0, 1] == 0).all()) and bool((w[0, 0, 1] == 0).all())
    torch.testing.assert_close(w[0, 0, [0, 2]].sum(-1), torch.ones(2))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6, rtol=1e-5)
    out.square().sum().backward()
    for g in (q.grad, k.grad, v.grad):
        assert bool(torch.isfinite(g).all())
    assert bool((q.grad[0, 0, 1] == 0).all())
    # the same through an additive mask (a row of -inf), where a bare softmax gives NaN
    out_b, w_b = scaled_dot_product_attention(q, k, v, bias=to_additive_mask(mask))
    assert torch.equal(out_b, out) and torch.equal(w_b, w)
    assert bool(torch.isnan(torch.softmax(to_additive_mask(mask), -1)[1]).all())


# ---------------------------------------------------------------- bad input
def test_bad_lengths():
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        causal_mask(0)
    with pytest.raises(TypeError, match="n must be a positive int.*2.5"):
        causal_mask(2.5)
    with pytest.raises(ValueError, match=r"prefix_len must be an int in \[0, 4\], got 5"):
        prefix_lm_mask(4, 5)
    with pytest.raises(ValueError, match=r"prefix_len must lie in \[0, n=4\].*-1"):
        prefix_lm_mask(4, torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r"1-D integer.*\(2, 2\)"):
        prefix_lm_mask(4, torch.ones(2, 2, dtype=torch.long))


def test_bad_padding_inputs():
    with pytest.raises(ValueError, match=r"\(B, T\), got shape \(5,\)"):
        padding_mask(torch.arange(5), 0)
    with pytest.raises(TypeError, match="integer ids, got dtype torch.float32"):
        padding_mask(torch.zeros(2, 3), 0)
    with pytest.raises(TypeError, match="pad_id must be an int.*'0'"):
        padding_mask(torch.zeros(2, 3, dtype=torch.long), "0")


def test_combine_masks_rejects_unbroadcastable_and_float():
    with pytest.raises(ValueError, match=r"masks\[0\] \(3, 3\), masks\[1\] \(2, 1, 1, 4\).*broadcast"):
        combine_masks(causal_mask(3), torch.ones(2, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"masks\[1\] must have dtype torch.bool.*torch.float32.*bias="):
        combine_masks(causal_mask(3), torch.zeros(3, 3))


def test_check_mask_names_both_shapes():
    with pytest.raises(ValueError, match=r"shape \(4, 4\) cannot be broadcast.*\(2, 3, 4, 5\)"):
        check_mask(torch.ones(4, 4, dtype=torch.bool), (2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"shape \(1, 1, 1, 4, 5\) cannot be broadcast"):
        check_mask(torch.ones(1, 1, 1, 4, 5, dtype=torch.bool), (2, 3, 4, 5))
    assert check_mask(torch.ones(2, 1, 1, 5, dtype=torch.bool), (2, 3, 4, 5)).shape == (2, 1, 1, 5)


def test_translations_want_boolean():
    for fn in (to_additive_mask, to_torch_mha_mask, to_torch_key_padding_mask):
        with pytest.raises(TypeError, match="dtype torch.bool"):
            fn(torch.zeros(3, 3))
    with pytest.raises(TypeError, match="floating dtype, got torch.int64"):
        to_additive_mask(causal_mask(2), torch.long)
    with pytest.raises(ValueError, match=r"key padding mask.*\(2, 3, 4\)"):
        to_torch_key_padding_mask(torch.ones(2, 3, 4, dtype=torch.bool))
