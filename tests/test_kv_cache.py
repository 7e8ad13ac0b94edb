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


# ---------------------------------------------------------------- chapter 8: more layouts, the fast path
from transformer_book.attention import affine, packed_weight  # noqa: E402
from transformer_book.kv_cache import GraphKVCache, SlidingWindowCache  # noqa: E402


class _WindowMaskedFullCache(KVCache):
    """The reference: a cache that keeps every position and hides the ones outside the window
    with a mask built independently (tril minus a lower tril), one pass over the whole sequence."""

    def __init__(self, *args, window, **kwargs):
        super().__init__(*args, **kwargs)
        self.window = window

    def attention_mask(self, n_new):
        n = self.length + n_new
        band = torch.ones(n, n, dtype=torch.bool).tril() & ~torch.ones(n, n, dtype=torch.bool).tril(-self.window)
        return band[self.length:]


@pytest.mark.parametrize("window,prefill,cfg", [(1, 5, {}), (4, 1, {}), (4, 9, dict(n_kv_head=2)), (7, 3, dict(n_kv_head=1)),
                                                (30, 6, {}), (40, 12, dict(n_layer=3))])
def test_sliding_window_equals_full_attention_under_a_window_mask(window, prefill, cfg):
    model = _gpt(window, **cfg)
    seq = torch.randint(61, (2, 40), generator=torch.Generator().manual_seed(window))
    ring = SlidingWindowCache.for_model(model, 2, window)
    full = _WindowMaskedFullCache(model.config.n_layer, 2, model.config.kv_heads, 8, 40, window=window)
    reference = model(seq, cache=full).logits  # every position at once under the band mask
    pieces = [model(seq[:, :prefill], cache=ring).logits]
    for t in range(prefill, 40):  # the ring wraps several times
        pieces.append(model(seq[:, t:t + 1], cache=ring).logits)
    torch.testing.assert_close(torch.cat(pieces, 1), reference, atol=1e-5, rtol=0)
    assert ring.length == 40 and ring.nbytes == kv_cache_bytes(model.config.n_layer, model.config.kv_heads, 8,
                                                               window, batch=2)
    if window >= 40:  # a window as long as the sequence is plain causal attention
        torch.testing.assert_close(reference, model(seq).logits, atol=1e-5, rtol=0)


def test_sliding_window_prefill_in_chunks_and_crop_by_one():
    model = _gpt(11)
    seq = torch.randint(61, (1, 30), generator=torch.Generator().manual_seed(5))
    reference = model(seq, cache=_WindowMaskedFullCache(2, 1, 4, 8, 30, window=6)).logits
    ring = SlidingWindowCache.for_model(model, 1, 6)
    out = [model(seq[:, a:b], cache=ring).logits for a, b in ((0, 4), (4, 13), (13, 14), (14, 30))]
    torch.testing.assert_close(torch.cat(out, 1), reference, atol=1e-5, rtol=0)
    model(torch.tensor([[3]]), cache=ring)  # a rejected token ...
    ring.crop(30)  # ... rolled back: the ring is as if it had never been seen
    fresh = SlidingWindowCache.for_model(model, 1, 6)
    model(seq, cache=fresh)
    nxt = torch.tensor([[7]])
    torch.testing.assert_close(model(nxt, cache=ring).logits, model(nxt, cache=fresh).logits, atol=1e-6, rtol=0)
    ring.crop(30)
    with pytest.raises(ValueError, match=r"window=6 holding 30 positions can roll back only to n in \[29, 30\]"):
        ring.crop(20)
    with pytest.raises(ValueError, match=r"n must be an int in \[0, 30\], got 31"):
        ring.crop(31)
    assert ring.length == 30


def test_sliding_window_bad_input_names_both_sides():
    model = _gpt(12)
    ring = SlidingWindowCache.for_model(model, 2, 5)
    with pytest.raises(ValueError, match="batch size 1 but the cache was built for batch_size=2"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=ring)
    with pytest.raises(ValueError, match="window must be a positive int"):
        SlidingWindowCache.for_model(model, 2, 0)
    with pytest.raises(ValueError, match=r"must have shape \(B, H_kv, T_new, D\)"):
        ring.update(0, torch.zeros(2, 4, 2, 7), torch.zeros(2, 4, 2, 7))
    assert ring.length == 0 and "window=5" in repr(ring)
    model(torch.zeros(2, 12, dtype=torch.long), cache=ring)  # longer than the window: fine, it is a ring
    assert ring.length == 12


@pytest.mark.parametrize("cache_cls", [KVCache, GraphKVCache])
@pytest.mark.parametrize("seed,cfg", list(_random_configs(4)))
def test_decode_step_equals_forward(cache_cls, seed, cfg):
    model = _gpt(seed, **cfg)
    b = 1 + seed % 3
    seq = torch.randint(61, (b, 20), generator=torch.Generator().manual_seed(seed))
    full = model(seq).logits
    cache = cache_cls.for_model(model, b, 20)
    got = [model.decode_step(seq[:, :7], cache)]  # prefill: the last position's logits
    for t in range(7, 20):
        got.append(model.decode_step(seq[:, t:t + 1], cache, check=t % 2 == 0))
    torch.testing.assert_close(torch.stack(got, 1), full[:, 6:], atol=1e-5, rtol=0)
    assert cache.length == 20
    if cache_cls is GraphKVCache:
        assert int(cache.position) == 20 and cache.sync_length() == 20
        cache.crop(10)
        assert int(cache.position) == 10
        torch.testing.assert_close(model.decode_step(seq[:, 10:11], cache), full[:, 10], atol=1e-5, rtol=0)


def test_graph_cache_has_the_same_shapes_every_step():
    model = _gpt(2)
    cache = GraphKVCache.for_model(model, 1, 12)
    shapes = set()
    for t in range(12):
        k, v = cache.update(0, torch.randn(1, 4, 1, 8), torch.randn(1, 4, 1, 8))
        shapes.add((tuple(k.shape), tuple(cache.attention_mask(1).shape), k.data_ptr()))
        cache.advance(1)
    assert shapes == {((1, 4, 12, 8), (1, 12), cache.keys[0].data_ptr())}
    cache.reset()
    assert int(cache.position) == 0 and cache.length == 0


def test_decode_step_after_training_step_uses_new_weights():
    model = _gpt(8)
    seq = torch.randint(61, (1, 6), generator=torch.Generator().manual_seed(0))
    before = model.decode_step(seq, model.new_cache(1, 6))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # in place: the packed copies must notice
    after = model.decode_step(seq, model.new_cache(1, 6))
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, model(seq).logits[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("rows", [1, 3])
def test_packed_weight_equals_the_linears(rows):
    torch.manual_seed(0)
    lins = [torch.nn.Linear(6, n) for n in (4, 2, 2)]
    x = torch.randn(rows, 5, 6)
    torch.testing.assert_close(affine(x, *packed_weight(*lins)), torch.cat([lin(x) for lin in lins], -1))
    nobias = torch.nn.Linear(6, 3, bias=False)
    torch.testing.assert_close(affine(x, *packed_weight(nobias)), nobias(x))


def test_decode_step_bad_input():
    model = _gpt(9)
    with pytest.raises(TypeError, match="cache must follow"):
        model.decode_step(torch.zeros(1, 2, dtype=torch.long), object())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.decode_step(torch.full((1, 2), 61), model.new_cache(1, 4))
    with pytest.raises(ValueError, match=r"3 new position\(s\) after the 0 filled ones, past the cache's max_len=2"):
        model.decode_step(torch.zeros(1, 3, dtype=torch.long), model.new_cache(1, 2))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 9, 32])
def test_large_matrices_are_prepacked_for_onednn_and_equal_the_linears(rows, dtype):
    torch.manual_seed(0)
    c = 512  # 512 x (512 + 256) weights: above ONEDNN_MIN_WEIGHTS
    lins = [torch.nn.Linear(c, n).to(dtype) for n in (512, 256)]
    x = torch.randn(rows, c, dtype=dtype)
    w, b, rows_w = packed_weight(*lins)
    assert w.is_mkldnn and tuple(w.shape) == (768, c)  # oneDNN's layout, (out, in)
    # one row goes to the C kernel, which reads nn.Linear's own (out, in) layout
    assert (rows_w is not None) == (dtype == torch.float32)  # used only where the kernel is available
    if rows_w is not None:
        assert torch.equal(rows_w, torch.cat([lin.weight for lin in lins]))
    expected = torch.cat([torch.nn.functional.linear(x.double(), lin.weight.double(), lin.bias.double())
                          for lin in lins], -1)
    tol = dict(atol=1e-4, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.1, rtol=0.02)
    nobias = torch.nn.Linear(c, c, bias=False).to(dtype)
    with torch.inference_mode():
        torch.testing.assert_close(affine(x, w, b, rows_w).double(), expected, **tol)
        torch.testing.assert_close(affine(x[None], *packed_weight(nobias)).double(),
                                   (x.double() @ nobias.weight.double().t())[None], **tol)


def test_small_matrices_stay_dense_for_addmm():
    w, b, rows = packed_weight(torch.nn.Linear(64, 192))  # oneDNN's fixed cost per call would dominate
    assert not w.is_mkldnn and tuple(w.shape) == (64, 192) and rows is None
