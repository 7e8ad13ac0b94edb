"""Layers of chapter 6 against torch's own: LayerNorm, RMSNorm, GELU/SwiGLU feed-forward, encoder/decoder layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_book.layers import DecoderLayer, EncoderLayer, FeedForward, LayerNorm, RMSNorm, make_norm
from transformer_book.masks import causal_mask, padding_mask, to_torch_key_padding_mask, to_torch_mha_mask

torch.set_num_threads(1)


def _x(*shape, seed=0, scale=1.0, shift=0.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale + shift


# --------------------------------------------------------------------------- norms
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch(bias):
    ours, ref = LayerNorm(16, bias=bias), nn.LayerNorm(16, bias=bias)
    with torch.no_grad():
        w = _x(16, seed=1)
        ours.weight.copy_(w), ref.weight.copy_(w)
        if bias:
            b = _x(16, seed=2)
            ours.bias.copy_(b), ref.bias.copy_(b)
    x = _x(2, 5, 16, seed=3, scale=4.0, shift=3.0)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    assert (ours.bias is None) == (not bias)


def test_rmsnorm_matches_torch():
    ours, ref = RMSNorm(12), nn.RMSNorm(12, eps=1e-6)
    with torch.no_grad():
        w = _x(12, seed=1)
        ours.weight.copy_(w), ref.weight.copy_(w)
    x = _x(3, 4, 12, seed=2, scale=5.0)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    # RMSNorm does not centre: a constant shift changes the output (LayerNorm's does not).
    assert not torch.allclose(ours(x + 1), ours(x), atol=1e-3)
    torch.testing.assert_close(LayerNorm(12)(x + 1), LayerNorm(12)(x), atol=1e-4, rtol=1e-4)


def test_norm_gradients_match_torch():
    x1 = _x(2, 3, 8, seed=4).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    LayerNorm(8)(x1).pow(2).sum().backward()
    nn.LayerNorm(8)(x2).pow(2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-4)


def test_norm_bad_inputs():
    with pytest.raises(ValueError, match="d_model must be a positive int, got 0"):
        LayerNorm(0)
    with pytest.raises(ValueError, match="eps must be a number > 0, got -1"):
        RMSNorm(4, eps=-1)
    with pytest.raises(ValueError, match=r"last dimension d_model=4 .* got shape \(2, 3\)"):
        LayerNorm(4)(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        RMSNorm(3)(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="norm kind must be 'layernorm' or 'rmsnorm', got 'batchnorm'"):
        make_norm("batchnorm", 8)


# --------------------------------------------------------------------------- feed-forward
@pytest.mark.parametrize("activation,fn", [("relu", F.relu), ("gelu", F.gelu),
                                           ("gelu_tanh", lambda h: F.gelu(h, approximate="tanh"))])
def test_feedforward_matches_formula(activation, fn):
    ff = FeedForward(8, 32, activation=activation)
    x = _x(2, 3, 8, seed=5)
    expected = F.linear(fn(F.linear(x, ff.fc_in.weight, ff.fc_in.bias)), ff.fc_out.weight, ff.fc_out.bias)
    torch.testing.assert_close(ff(x), expected)
    assert ff.fc_gate is None


def test_gelu_tanh_differs_from_exact_gelu_but_barely():
    x = torch.linspace(-4, 4, 101)
    diff = (F.gelu(x) - F.gelu(x, approximate="tanh")).abs().max()
    assert 0 < diff < 1e-3


def test_swiglu():
    ff = FeedForward(8, 16, activation="swiglu", bias=False)
    assert ff.fc_gate.weight.shape == (16, 8) and ff.fc_in.bias is None
    x = _x(4, 8, seed=6)
    expected = ff.fc_out.weight @ (F.silu(ff.fc_gate.weight @ x.T) * (ff.fc_in.weight @ x.T))
    torch.testing.assert_close(ff(x), expected.T)


def test_feedforward_bad_inputs():
    with pytest.raises(ValueError, match="activation must be one of .* got 'tanh'"):
        FeedForward(8, 16, activation="tanh")
    with pytest.raises(ValueError, match="d_ff must be a positive int, got 0"):
        FeedForward(8, 0)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 1.5"):
        FeedForward(8, 16, dropout=1.5)
    with pytest.raises(ValueError, match=r"d_model=8 .* got shape \(2, 7\)"):
        FeedForward(8, 16)(torch.zeros(2, 7))


# --------------------------------------------------------------------------- encoder / decoder layers vs torch
def _copy_encoder_layer(ours: EncoderLayer, ref: nn.TransformerEncoderLayer) -> None:
    ours.self_attn.load_torch_weights(ref.self_attn)
    with torch.no_grad():
        for a, b in ((ours.ff.fc_in, ref.linear1), (ours.ff.fc_out, ref.linear2),
                     (ours.norm1, ref.norm1), (ours.norm2, ref.norm2)):
            a.weight.copy_(b.weight), a.bias.copy_(b.bias)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(norm_first, activation):
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation=activation, batch_first=True,
                                     norm_first=norm_first)
    ours = EncoderLayer(16, 4, 32, activation=activation, norm_first=norm_first)
    _copy_encoder_layer(ours, ref)
    x = _x(2, 5, 16, seed=1)
    tokens = torch.tensor([[3, 4, 5, 0, 0], [3, 4, 5, 6, 7]])
    mask = padding_mask(tokens, 0)
    ref.train()  # dropout is 0; train mode avoids torch's nested-tensor fast path
    expected = ref(x, src_key_padding_mask=to_torch_key_padding_mask(mask))
    got, w = ours(x, mask, need_weights=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert w.shape == (2, 4, 5, 5) and torch.all(w[0, :, :, 3:] == 0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first):
    torch.manual_seed(1)
    ref = nn.TransformerDecoderLayer(16, 2, 24, dropout=0.0, batch_first=True, norm_first=norm_first)
    ours = DecoderLayer(16, 2, 24, norm_first=norm_first)
    ours.self_attn.load_torch_weights(ref.self_attn)
    ours.cross_attn.load_torch_weights(ref.multihead_attn)
    with torch.no_grad():
        for a, b in ((ours.ff.fc_in, ref.linear1), (ours.ff.fc_out, ref.linear2), (ours.norm1, ref.norm1),
                     (ours.norm2, ref.norm2), (ours.norm3, ref.norm3)):
            a.weight.copy_(b.weight), a.bias.copy_(b.bias)
    y, memory = _x(2, 4, 16, seed=2), _x(2, 6, 16, seed=3)
    src = torch.tensor([[5, 6, 7, 8, 0, 0], [5, 6, 7, 8, 9, 10]])
    mem_mask = padding_mask(src, 0)
    self_mask = causal_mask(4)
    expected = ref(y, memory, tgt_mask=to_torch_mha_mask(self_mask),
                   memory_key_padding_mask=to_torch_key_padding_mask(mem_mask))
    got, w_self, w_cross = ours(y, memory, self_mask, mem_mask, need_weights=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert w_self.shape == (2, 2, 4, 4) and w_cross.shape == (2, 2, 4, 6)
    assert torch.all(w_self.triu(1) == 0) and torch.all(w_cross[0, :, :, 4:] == 0)


def test_layers_rmsnorm_and_swiglu_run_and_backprop():
    enc = EncoderLayer(8, 2, 16, activation="swiglu", norm="rmsnorm", norm_first=True)
    dec = DecoderLayer(8, 2, 16, activation="swiglu", norm="rmsnorm", norm_first=True)
    x, _ = enc(_x(1, 3, 8, seed=1))
    y, _, _ = dec(_x(1, 2, 8, seed=2), x, causal_mask(2))
    y.sum().backward()
    assert isinstance(enc.norm1, RMSNorm) and all(p.grad is not None for p in enc.parameters())


def test_layer_bad_inputs():
    with pytest.raises(ValueError, match="n_heads=4 must divide d_model=10"):
        EncoderLayer(10, 4, 16)
    with pytest.raises(ValueError, match="norm kind must be 'layernorm' or 'rmsnorm', got 'batch'"):
        DecoderLayer(8, 2, 16, norm="batch")
    with pytest.raises(TypeError, match="norm_first must be a bool, got str 'yes'"):
        EncoderLayer(8, 2, 16, norm_first="yes")
    with pytest.raises(ValueError, match="activation must be one of"):
        EncoderLayer(8, 2, 16, activation="elu")
    dec = DecoderLayer(8, 2, 16)
    with pytest.raises(ValueError, match=r"same batch size, got x \(2, 3, 8\) and memory \(1, 4, 8\)"):
        dec(torch.zeros(2, 3, 8), torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match=r"memory must have last dimension d_model=8"):
        dec(torch.zeros(2, 3, 8), torch.zeros(2, 4, 6))
