"""The static KV cache (chapter 8) against decoding without a cache, and its bad-input rules."""

import pytest
import torch

from transformer_book.generate import generate
from transformer_book.kv_cache import KVCache, kv_cache_bytes
from transformer_book.models import GPT, GPTConfig


def _gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=61, block_size=40, n_layer=2, n_head=4, n_embd=32) | overrides
    return GPT(GPTConfig(**cfg)).eval()


def _random_configs(n):
    g = torch.Generator().manual_seed(123)
    for i in range(n):
        n_head = [1, 2, 4][int(torch.randint(3, (1,), generator=g))]
        n_kv = [h for h in (1, 2, 4) if n_head % h == 0][int(torch.randint(3, (1,), generator=g)) % len(
            [h for h in (1, 2, 4) if n_head % h == 0])]
        yield i, dict(n_layer=int(torch.randint(1, 4, (1,), generator=g)), n_head=n_head, n_kv_head=n_kv,
                      n_embd=8 * n_head, bias=bool(torch.randint(2, (1,), generator=g)))


@pytest.mark.parametrize("seed,cfg", list(_random_configs(8)))
def test_cached_logits_equal_uncached(seed, cfg):
    model = _gpt(seed, **cfg)
    g = torch.Generator().manual_seed(seed)
    b, t0 = 1 + seed % 3, 1 + seed % 5
    seq = torch.randint(61, (b, 30), generator=g)
    full = model(seq).logits  # (B, 30, V): every position at once, no cache
    cache = KVCache.for_model(model, b, max_len=30)
    pieces = [model(seq[:, :t0], cache=cache).logits]  # prefill
    for t in range(t0, 30):
        pieces.append(model(seq[:, t:t + 1], cache=cache).logits)  # decode, one token a step
    assert cache.length == 30
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_crop_then_redecode_equals_fresh_decoding():
    model = _gpt(3, n_kv_head=2)
    seq = torch.randint(61, (2, 24), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(2, max_len=24)
    model(seq[:, :20], cache=cache)
    other = torch.randint(61, (2, 4), generator=torch.Generator().manual_seed(1))
    model(other, cache=cache)  # a "draft" that will be rejected: positions 20..23 are now wrong
    cache.crop(12)
    out = model(seq[:, 12:24], cache=cache).logits
    torch.testing.assert_close(out, model(seq).logits[:, 12:], atol=1e-5, rtol=0)


def test_generate_with_static_cache_equals_uncached_greedy_and_sampling():
    model = _gpt(4, n_kv_head=1)
    prompt = torch.randint(61, (3, 5), generator=torch.Generator().manual_seed(2))
    for kwargs in (dict(), dict(temperature=0.8, top_k=10, top_p=0.9)):
        a = generate(model, prompt, 50, use_cache=True, generator=torch.Generator().manual_seed(7), **kwargs)
        b = generate(model, prompt, 50, use_cache=False, generator=torch.Generator().manual_seed(7), **kwargs)
        assert torch.equal(a, b)  # 55 tokens: the window (40) slides, the cache restarts


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = _gpt(5, n_kv_head=2)
    mha = _gpt(5)
    with torch.no_grad():
        mha.load_state_dict({k: v for k, v in gqa.state_dict().items() if ".k_proj." not in k and ".v_proj." not in k},
                            strict=False)
        for bg, bm in zip(gqa.h, mha.h):
            for name in ("k_proj", "v_proj"):
                src, dst = getattr(bg.attn, name), getattr(bm.attn, name)
                w = src.weight.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
                dst.weight.copy_(w)
                dst.bias.copy_(src.bias.view(2, 8).repeat_interleave(2, dim=0).reshape(32))
    x = torch.randint(61, (2, 16), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(gqa(x).logits, mha(x).logits, atol=1e-5, rtol=0)
    assert mha.new_cache(1).nbytes == 2 * gqa.new_cache(1).nbytes  # n_head / n_kv_head = 2


def test_nbytes_is_the_formula():
    model = _gpt(0, n_layer=3, n_kv_head=2)
    cache = KVCache.for_model(model, 4, max_len=17, dtype=torch.bfloat16)
    assert cache.nbytes == kv_cache_bytes(3, 2, 8, 17, batch=4, dtype=torch.bfloat16) == 2 * 3 * 2 * 8 * 2 * 17 * 4


def test_reorder_permutes_the_batch():
    model = _gpt(6)
    seq = torch.randint(61, (3, 9), generator=torch.Generator().manual_seed(4))
    cache = model.new_cache(3, max_len=10)
    model(seq, cache=cache)
    cache.reorder(torch.tensor([2, 2, 0]))
    nxt = torch.tensor([[5], [6], [7]])
    out = model(nxt, cache=cache).logits[:, -1]
    ref = model(torch.cat([seq[[2, 2, 0]], nxt], dim=1)).logits[:, -1]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    cache.reset()
    assert cache.length == 0


def test_bad_input_names_both_sides_and_leaves_the_cache_unchanged():
    model = _gpt(7)
    cache = model.new_cache(2, max_len=8)
    model(torch.zeros(2, 6, dtype=torch.long), cache=cache)
    before = [k.clone() for k in cache.keys]
    with pytest.raises(ValueError, match=r"3 new position\(s\) after the 6 filled ones, past the cache's max_len=8"):
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="batch size 1 but the cache was built for batch_size=2"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    with pytest.raises(TypeError, match="model computes in torch.float32 but the cache holds torch.float64"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=KVCache.for_model(model, 2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"2 key/value heads; the model has n_layer=2, n_kv_head=4"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=KVCache(2, 2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"n must be an int in \[0, 6\], got 7"):
        cache.crop(7)
    with pytest.raises(ValueError, match="either cache= .* or past_key_values"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=cache, use_cache=True)
    with pytest.raises(ValueError, match=r"must have shape \(B, H_kv, T_new, D\)"):
        cache.update(0, torch.zeros(2, 3, 1, 8), torch.zeros(2, 3, 1, 8))
    assert cache.length == 6 and all(torch.equal(a, b) for a, b in zip(before, cache.keys))
    with pytest.raises(ValueError, match=r"beam_idx holds ids in \[0, 5\]"):
        cache.reorder(torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="max_len must be an int in"):
        KVCache.for_model(model, 1, max_len=41)
