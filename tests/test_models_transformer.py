"""The encoder-decoder Transformer: equal to torch.nn.Transformer with copied weights; masks; bad inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transformer_book.masks import (
    causal_mask,
    combine_masks,
    padding_mask,
    to_torch_key_padding_mask,
    to_torch_mha_mask,
)
from transformer_book.models import AttentionMaps, Transformer, TransformerConfig

torch.set_num_threads(1)


def _cfg(**kw):
    base = dict(src_vocab_size=11, tgt_vocab_size=13, d_model=16, n_heads=4, n_encoder_layers=2,
                n_decoder_layers=2, d_ff=32, dropout=0.0, max_len=16)
    base.update(kw)
    return TransformerConfig(**base)


def _nn_transformer_pair(norm_first: bool, seed: int = 0):
    torch.manual_seed(seed)
    ref = nn.Transformer(d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=32,
                         dropout=0.0, batch_first=True, norm_first=norm_first)
    ours = Transformer(_cfg(n_decoder_layers=3, norm_first=norm_first, final_norm=True))
    ours.load_torch_transformer(ref)
    # Move the final norms away from the identity so that they are really tested.
    with torch.no_grad():
        for p in list(ref.encoder.norm.parameters()) + list(ref.decoder.norm.parameters()):
            p.add_(torch.randn(p.shape) * 0.1)
    ours.load_torch_transformer(ref)
    ref.train()  # dropout is 0; train mode keeps torch off its nested-tensor fast path
    return ours, ref


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@pytest.mark.parametrize("norm_first", [False, True])
def test_matches_nn_transformer_with_all_masks(norm_first):
    ours, ref = _nn_transformer_pair(norm_first)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 7, 16, generator=g), torch.randn(3, 5, 16, generator=g)
    src = torch.tensor([[4, 5, 6, 7, 8, 9, 10], [4, 5, 6, 0, 0, 0, 0], [4, 5, 6, 7, 8, 0, 0]])
    src_mask = padding_mask(src, 0)  # (B, 1, 1, S)
    tgt_mask = causal_mask(5)
    memory_mask = torch.ones(5, 7, dtype=torch.bool)
    memory_mask[:, 1] = False  # no target position may read source position 1
    expected = ref(x, y, tgt_mask=to_torch_mha_mask(tgt_mask), memory_mask=to_torch_mha_mask(memory_mask),
                   src_key_padding_mask=to_torch_key_padding_mask(src_mask),
                   memory_key_padding_mask=to_torch_key_padding_mask(src_mask))
    memory, enc_w = ours.encoder_stack(x, src_mask, need_weights=True)
    got, dec_w, cross_w = ours.decoder_stack(y, memory, tgt_mask, combine_masks(memory_mask, src_mask),
                                             need_weights=True)
    assert (got - expected).abs().max().item() < 1e-5
    assert len(enc_w) == 2 and len(dec_w) == len(cross_w) == 3
    assert torch.all(cross_w[0][:, :, :, 1] == 0) and torch.all(cross_w[0][1, :, :, 3:] == 0)


def test_forward_shapes_attention_maps_and_tying():
    model = Transformer(_cfg()).eval()
    src = torch.tensor([[3, 4, 5, 0], [3, 4, 5, 6]])
    tgt = torch.tensor([[1, 3, 4], [1, 5, 0]])
    logits, maps = model(src, tgt, return_attention=True)
    assert logits.shape == (2, 3, 13) and isinstance(maps, AttentionMaps)
    assert maps.encoder[0].shape == (2, 4, 4, 4) and maps.decoder[1].shape == (2, 4, 3, 3)
    assert maps.cross[0].shape == (2, 4, 3, 4)
    torch.testing.assert_close(model(src, tgt), logits)
    assert model.lm_head.weight is model.tgt_embed.weight
    assert torch.all(maps.cross[0][0, :, :, 3] == 0)  # source padding is never read
    untied = Transformer(_cfg(tie_embeddings=False))
    assert untied.num_parameters() == model.num_parameters() + 13 * 16


def test_decoder_is_causal_and_padding_does_not_leak():
    model = Transformer(_cfg(positions="learned", norm_first=True, activation="gelu")).eval()
    src = torch.tensor([[3, 4, 5, 6]])
    tgt = torch.tensor([[1, 3, 4, 7, 8]])
    base = model(src, tgt)
    changed = tgt.clone()
    changed[0, 3:] = torch.tensor([9, 10])
    torch.testing.assert_close(model(src, changed)[:, :3], base[:, :3])  # the future is unseen
    padded = torch.tensor([[3, 4, 5, 6, 0, 0]])
    torch.testing.assert_close(model(padded, tgt), base, atol=1e-5, rtol=1e-5)  # padding is unseen


def test_config_round_trip_and_rmsnorm_swiglu():
    cfg = _cfg(norm="rmsnorm", activation="swiglu", norm_first=True)
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    model = Transformer(cfg)
    assert model.encoder_norm is not None  # pre-LN gets final norms by default
    assert Transformer(_cfg()).encoder_norm is None  # post-LN does not
    logits = model(torch.tensor([[3, 4]]), torch.tensor([[1, 2]]))
    logits.sum().backward()


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_heads=4 must divide d_model=18"):
        _cfg(d_model=18)
    with pytest.raises(ValueError, match="norm kind must be .* got 'batchnorm'"):
        _cfg(norm="batchnorm")
    with pytest.raises(ValueError, match="activation must be one of .* got 'sigmoid'"):
        _cfg(activation="sigmoid")
    with pytest.raises(ValueError, match="positions must be .* got 'rope'"):
        _cfg(positions="rope")
    with pytest.raises(ValueError, match=r"eos_id must be an int in \[0, 12\], got 20"):
        _cfg(eos_id=20)
    with pytest.raises(ValueError, match="unknown TransformerConfig fields \\['colour'\\]"):
        TransformerConfig.from_dict({**_cfg().to_dict(), "colour": 1})
    with pytest.raises(TypeError, match="config must be a TransformerConfig, got dict"):
        Transformer({"d_model": 16})
    model = Transformer(_cfg())
    with pytest.raises(TypeError, match="src must hold integer token ids .*got dtype torch.float32"):
        model(torch.zeros(1, 3), torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"src holds ids in \[3, 11\], outside the vocabulary \[0, vocab_size=11\)"):
        model(torch.tensor([[3, 11]]), torch.tensor([[1]]))
    with pytest.raises(ValueError, match=r"tgt_in must have 2 dimensions \(B, T\)"):
        model(torch.tensor([[3, 4]]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="tgt_in has length 17 but the model's max_len is 16"):
        model(torch.tensor([[3, 4]]), torch.ones(1, 17, dtype=torch.long))
    memory, mask = model.encode(torch.tensor([[3, 4]]))
    with pytest.raises(ValueError, match=r"memory must have shape \(B, S, C\) = \(2, \*, 16\), got shape \(1, 2, 16\)"):
        model.decode(torch.ones(2, 3, dtype=torch.long), memory, mask)
    with pytest.raises(ValueError, match=r"same batch size B"):
        model(torch.tensor([[3, 4]]), torch.ones(2, 3, dtype=torch.long))
    ref = nn.Transformer(d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32,
                         batch_first=True)
    with pytest.raises(ValueError, match="n_heads: ours 4, torch 2"):
        Transformer(_cfg(final_norm=True)).load_torch_transformer(ref)
    ref4 = nn.Transformer(d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32,
                          batch_first=True)
    with pytest.raises(ValueError, match="needs norm='layernorm' and final_norm=True"):
        Transformer(_cfg()).load_torch_transformer(ref4)


def test_committed_checkpoint_loads_and_translates():
    """The chapter's checkpoint (book/data) fits the chapter's config and translates numbers it may never have seen."""
    from pathlib import Path

    from transformer_book.data.numbers_fr import english_vocab_big, english_words_big, french_vocab, french_words
    from transformer_book.decoding import translate_batch
    from transformer_book.train import load_checkpoint

    path = Path(__file__).resolve().parents[1] / "book" / "data" / "ch06_transformer.pt"
    if not path.exists():
        pytest.skip("no chapter 6 checkpoint in book/data")
    src_vocab, tgt_vocab = english_vocab_big(), french_vocab()
    cfg = TransformerConfig(src_vocab_size=len(src_vocab), tgt_vocab_size=len(tgt_vocab), d_model=64, n_heads=4,
                            n_encoder_layers=2, n_decoder_layers=2, d_ff=256, dropout=0.0, norm_first=True, max_len=24)
    model = Transformer(cfg)
    load_checkpoint(path, model, cfg)
    numbers = [7, 80, 97, 201, 71_080, 200_000_000, 999_999_999, 123_456_789, 80_080_080]
    src = src_vocab.encode_batch([english_words_big(n) for n in numbers])
    predictions = [tgt_vocab.decode(p) for p in translate_batch(model.eval(), src, max_len=22)]
    assert sum(p == french_words(n) for p, n in zip(predictions, numbers)) >= len(numbers) - 1


# --------------------------------------------------------------------------- issue 10
def _torch_ref(**kw):
    args = dict(d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32,
                dropout=0.0, batch_first=True)
    args.update(kw)
    return nn.Transformer(**args)


def test_load_torch_transformer_compares_every_setting_it_relies_on():
    model = Transformer(_cfg(final_norm=True))
    model.load_torch_transformer(_torch_ref())  # the same settings: loads
    with pytest.raises(ValueError, match="activation: ours 'relu', torch 'gelu'"):
        model.load_torch_transformer(_torch_ref(activation="gelu"))
    with pytest.raises(ValueError, match="norm_eps: ours 1e-05, torch 0.001"):
        model.load_torch_transformer(_torch_ref(layer_norm_eps=1e-3))
    with pytest.raises(ValueError, match="bias: ours True, torch False"):
        model.load_torch_transformer(_torch_ref(bias=False))
    ref = _torch_ref()
    ref.decoder.layers[1].activation = torch.nn.functional.gelu  # one layer that differs
    with pytest.raises(ValueError, match="layer 3 activation: ours 'relu', torch 'gelu'"):
        model.load_torch_transformer(ref)
    gelu = Transformer(_cfg(final_norm=True, activation="gelu"))
    gelu.load_torch_transformer(_torch_ref(activation="gelu"))


def test_memory_of_another_dtype_names_both():
    model = Transformer(_cfg())
    memory, mask = model.encode(torch.tensor([[3, 4]]))
    with pytest.raises(TypeError, match=r"memory (torch\.)?float64, model (torch\.)?float32"):
        model.decode(torch.ones(1, 3, dtype=torch.long), memory.double(), mask)
    with pytest.raises(TypeError, match="memory must be a torch.Tensor"):
        model.decode(torch.ones(1, 3, dtype=torch.long), [[0.0]], mask)


def test_config_checks_follow_the_one_rule():
    with pytest.raises(TypeError, match="d_model must be a positive int, got float 16.0"):
        _cfg(d_model=16.0)
    with pytest.raises(TypeError, match="norm_first must be a bool"):
        _cfg(norm_first=1)
    with pytest.raises(ValueError, match="pad_id must be in the source vocabulary"):
        _cfg(pad_id=11)
    with pytest.raises(TypeError, match="src must hold integer token ids"):
        Transformer(_cfg())(torch.ones(1, 2, dtype=torch.uint8), torch.ones(1, 2, dtype=torch.long))
