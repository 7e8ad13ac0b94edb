"""GPT against Hugging Face's GPT2LMHeadModel (built from a config, no download), the KV cache, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transformer_book.models import GPT, GPTConfig
from transformer_book.models.gpt import GPTOutput

torch.set_num_threads(1)

SMALL = dict(vocab_size=101, block_size=24, n_layer=3, n_head=4, n_embd=32)


def _hf_model(seed=0, **overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = dict(vocab_size=101, n_positions=24, n_embd=32, n_layer=3, n_head=4,
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0) | overrides
    hf = GPT2LMHeadModel(GPT2Config(**cfg)).eval()
    with torch.no_grad():  # HF starts biases at 0 and norms at 1: randomise them so a mix-up shows
        for name, p in hf.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.normal_(0.0, 0.3)
    return hf


@pytest.fixture(scope="module")
def pair():
    hf = _hf_model()
    return hf, GPT.from_hf_gpt2(hf)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(**SMALL)).eval()


# ---------------------------------------------------------------- Hugging Face GPT-2
def test_logits_match_hf(pair):
    hf, ours = pair
    idx = torch.randint(0, 101, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(idx).logits - hf(idx).logits).abs().max().item()
    assert diff < 1e-4, diff


def test_cached_logits_match_hf(pair):
    hf, ours = pair
    idx = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(idx).logits
        out = ours(idx[:, :7], use_cache=True)
        pieces, past = [out.logits], out.past_key_values
        for t in range(7, 20):  # one token at a time, as in generation
            out = ours(idx[:, t : t + 1], past_key_values=past, use_cache=True)
            pieces.append(out.logits)
            past = out.past_key_values
    assert (torch.cat(pieces, 1) - ref).abs().max().item() < 1e-4
    assert past[0][0].shape == (2, 4, 20, 8)


def test_loss_matches_hf(pair):
    hf, ours = pair
    idx = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hf_loss = hf(idx, labels=idx).loss  # HF shifts the labels inside
        our_loss = ours(idx[:, :-1], idx[:, 1:]).loss  # we pass the shifted targets
    assert torch.allclose(hf_loss, our_loss, atol=1e-5)


def test_parameter_count_matches_hf(pair):
    hf, ours = pair
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())


def test_greedy_generation_matches_hf(pair):
    from transformer_book.generate import generate

    hf, ours = pair
    prompt = torch.tensor([[5, 17, 3]])
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                      pad_token_id=0)
    assert torch.equal(generate(ours, prompt, 12), ref)


def test_mismatched_sizes_name_parameter_and_shapes(pair):
    hf, _ = pair
    wrong = GPT(GPTConfig(**(SMALL | {"vocab_size": 90})))
    with pytest.raises(ValueError, match=r"'transformer\.wte\.weight'.*\(101, 32\).*\(90, 32\)"):
        wrong.load_hf_gpt2_state_dict(hf.state_dict())
    narrow = GPT(GPTConfig(**(SMALL | {"n_embd": 16})))
    with pytest.raises(ValueError, match=r"wte\.weight.*\(101, 32\).*\(101, 16\)"):
        narrow.load_hf_gpt2_state_dict(hf.state_dict())
    shallow = GPT(GPTConfig(**(SMALL | {"n_layer": 4})))
    with pytest.raises(ValueError, match=r"no parameter 'transformer\.h\.3\.ln_1\.weight'"):
        shallow.load_hf_gpt2_state_dict(hf.state_dict())
    before = narrow.wte.weight.clone()
    assert torch.equal(narrow.wte.weight, before)  # nothing copied when a shape is wrong


def test_unsupported_hf_variants_are_refused():
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True"):
        GPT.from_hf_gpt2(_hf_model(scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="activation_function='relu'"):
        GPT.from_hf_gpt2(_hf_model(activation_function="relu"))
    with pytest.raises(ValueError, match="untied"):
        GPT.from_hf_gpt2(_hf_model(tie_word_embeddings=False))
    with pytest.raises(TypeError, match="Hugging Face GPT-2 model"):
        GPT.from_hf_gpt2(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- the model itself
def test_shapes_output_and_tied_head(model):
    idx = torch.randint(0, 101, (2, 10))
    out = model(idx)
    assert isinstance(out, GPTOutput) and out.logits.shape == (2, 10, 101)
    assert out.loss is None and out.past_key_values is None and out.attentions is None
    assert model.lm_head.weight is model.wte.weight
    logits, loss, *_ = model(idx, idx)  # unpacks like a tuple
    assert torch.allclose(loss, F.cross_entropy(logits.reshape(-1, 101), idx.reshape(-1)))


def test_targets_ignore_index(model):
    idx = torch.randint(0, 101, (1, 8))
    targets = idx.clone()
    targets[0, :4] = -1
    out = model(idx, targets)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits[0, 4:], idx[0, 4:]))


def test_attention_weights_are_causal_distributions(model):
    out = model(torch.randint(0, 101, (2, 9)), need_weights=True)
    assert len(out.attentions) == 3
    for w in out.attentions:
        assert w.shape == (2, 4, 9, 9)
        assert torch.allclose(w.sum(-1), torch.ones(2, 4, 9))
        assert w.triu(diagonal=1).abs().max() == 0  # nothing from the future


def test_no_leak_from_the_future(model):
    idx = torch.randint(0, 101, (1, 12), generator=torch.Generator().manual_seed(4))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 101
    a, b = model(idx).logits, model(changed).logits
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_cache_equals_full_forward_with_weights(model):
    idx = torch.randint(0, 101, (2, 15), generator=torch.Generator().manual_seed(5))
    full = model(idx, need_weights=True)
    first = model(idx[:, :9], use_cache=True)
    rest = model(idx[:, 9:], past_key_values=first.past_key_values, use_cache=True, need_weights=True)
    assert torch.allclose(torch.cat([first.logits, rest.logits], 1), full.logits, atol=1e-5)
    assert torch.allclose(rest.attentions[0], full.attentions[0][:, :, 9:], atol=1e-6)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    m = GPT(GPTConfig(**(SMALL | {"dropout": 0.5})))
    idx = torch.randint(0, 101, (1, 6))
    m.train()
    assert not torch.allclose(m(idx).logits, m(idx).logits)
    m.eval()
    assert torch.equal(m(idx).logits, m(idx).logits)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("field, value, match", [
    ("n_embd", 30, r"n_head=4 must divide GPTConfig.n_embd=30"),
    ("n_head", 0, r"n_head must be a positive int, got 0"),
    ("vocab_size", 2.5, r"vocab_size must be a positive int, got float 2.5"),
    ("dropout", 1.0, r"dropout must be a number in \[0, 1\), got 1.0"),
    ("layer_norm_epsilon", -1e-5, r"layer_norm_epsilon.*-1e-05"),
    ("n_kv_head", 3, r"n_kv_head=3 must divide GPTConfig.n_head=4"),
])
def test_config_validation(field, value, match):
    error = TypeError if isinstance(value, float) and field == "vocab_size" else ValueError
    with pytest.raises(error, match=match):
        GPTConfig(**(SMALL | {field: value}))


def test_config_round_trip_and_unknown_fields():
    cfg = GPTConfig(**SMALL)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg and cfg.n_positions == 24
    with pytest.raises(ValueError, match=r"unknown GPTConfig field\(s\) \['n_ctx'\]"):
        GPTConfig.from_dict(cfg.to_dict() | {"n_ctx": 3})
    with pytest.raises(TypeError, match="config must be a GPTConfig, got dict"):
        GPT(SMALL)


def test_forward_bad_input(model):
    with pytest.raises(ValueError, match=r"ids in \[0, 101\], outside the vocabulary \[0, vocab_size=101\)"):
        model(torch.tensor([[0, 101]]))
    with pytest.raises(ValueError, match=r"ids in \[-1, 3\]"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match=r"T=25 exceeds the context window block_size=24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids.*got dtype torch.float32"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"idx must have 2 dimensions \(B, T\), got shape \(4,\)"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got shape \(0, 3\)"):
        model(torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must have shape \(B, T\) of idx = \(1, 3\), got shape \(1, 2\)"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))


def test_forward_bad_cache(model):
    past = model(torch.zeros(1, 20, dtype=torch.long), use_cache=True).past_key_values
    with pytest.raises(ValueError, match=r"T=5 new tokens after 20 cached ones exceeds .*block_size=24"):
        model(torch.zeros(1, 5, dtype=torch.long), past_key_values=past)
    with pytest.raises(ValueError, match=r"n_layer=3 \(k, v\) pairs, got tuple of length 2"):
        model(torch.zeros(1, 1, dtype=torch.long), past_key_values=past[:2])
    with pytest.raises(ValueError, match=r"past_key_values\[0\]\[0\] must have shape \(B=2, n_kv_head=4"):
        model(torch.zeros(2, 1, dtype=torch.long), past_key_values=past)


def test_targets_rules(model):
    idx = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(TypeError, match="targets must hold integer token ids.*got dtype torch.float32"):
        model(idx, torch.tensor([[1.7, 2.0, 3.0]]))
    with pytest.raises(ValueError, match=r"targets holds ids in \[-2, 3\]"):
        model(idx, torch.tensor([[-2, 2, 3]]))
    with pytest.raises(ValueError, match=r"targets holds ids in \[0, 101\]"):
        model(idx, torch.tensor([[0, 2, 101]]))
    with pytest.raises(TypeError, match="idx must hold integer token ids.*torch.uint8"):
        model(idx.to(torch.uint8))
    # every target ignored: the loss is 0 (not 0/0 = NaN) and backward still works
    loss = model(idx, torch.full((1, 3), -1)).loss
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    # otherwise the plain mean over the targets that count
    targets = torch.tensor([[5, -1, 7]])
    logits = model(idx).logits
    expected = torch.nn.functional.cross_entropy(logits[0], targets[0], ignore_index=-1)
    torch.testing.assert_close(model(idx, targets).loss, expected)
