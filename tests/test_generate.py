"""Sampling filters against Hugging Face's logits warpers and hand-computed cases; the generation loop."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from transformer_book.bigram import BigramLM
from transformer_book.generate import (
    apply_temperature,
    filter_logits,
    generate,
    next_token_probs,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)
from transformer_book.kv_cache import KVCache
from transformer_book.models import GPT, GPTConfig

torch.set_num_threads(1)
NEG_INF = float("-inf")


def _logits(*shape, seed=0, scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture(scope="module")
def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


# ---------------------------------------------------------------- filters: hand-computed
def test_top_k_hand_computed():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.equal(top_k_filter(logits, 2), torch.tensor([[NEG_INF, 3.0, 2.0, NEG_INF]]))
    assert torch.equal(top_k_filter(logits, 4), logits)
    assert torch.equal(top_k_filter(logits, 100), logits)  # k > V keeps everything
    ties = torch.tensor([2.0, 1.0, 1.0, 0.0])
    assert torch.equal(top_k_filter(ties, 2), torch.tensor([2.0, 1.0, 1.0, NEG_INF]))  # tie with the k-th kept


def test_top_p_hand_computed():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).tolist()  # noqa: E731
    assert kept(0.4) == [True, False, False, False]  # the top token alone already has 0.5 >= 0.4
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]  # 0.5 < 0.6: the second token is needed
    assert kept(0.9) == [True, True, True, False]
    assert kept(0.96) == [True, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    assert kept(1e-9) == [True, False, False, False]  # never empty
    shuffled = logits[[2, 0, 3, 1]]  # order in the vocabulary does not matter
    assert torch.isfinite(top_p_filter(shuffled, 0.6)).tolist() == [False, True, False, True]


def test_temperature_and_greedy():
    logits = torch.tensor([[1.0, 2.0, 4.0]])
    assert torch.allclose(apply_temperature(logits, 2.0), logits / 2)
    cold = next_token_probs(logits, temperature=0.05)
    hot = next_token_probs(logits, temperature=50.0)
    assert cold[0, 2] > 0.999 and (hot - 1 / 3).abs().max() < 0.02
    assert torch.equal(next_token_probs(logits, temperature=0.0), torch.tensor([[0.0, 0.0, 1.0]]))
    assert sample_next_token(logits, temperature=0.0).item() == 2


def test_filters_do_not_modify_input():
    logits = _logits(3, 10)
    before = logits.clone()
    top_k_filter(logits, 3)
    top_p_filter(logits, 0.5)
    filter_logits(logits, 0.7, 3, 0.5)
    assert torch.equal(logits, before)


# ---------------------------------------------------------------- filters: Hugging Face warpers
def test_top_k_matches_hf_warper():
    from transformers.generation.logits_process import TopKLogitsWarper

    for seed, (b, v) in enumerate([(4, 50), (2, 7), (8, 1000)]):
        logits = _logits(b, v, seed=seed)
        for k in (1, 2, 5, v - 1, v):
            ours = top_k_filter(logits, k)
            ref = TopKLogitsWarper(top_k=k)(None, logits.clone())
            assert torch.equal(torch.isfinite(ours), torch.isfinite(ref)), (seed, k)
            assert torch.equal(ours[torch.isfinite(ours)], ref[torch.isfinite(ref)])


def test_top_p_matches_hf_warper():
    from transformers.generation.logits_process import TopPLogitsWarper

    for seed, (b, v, scale) in enumerate([(4, 50, 3.0), (3, 9, 1.0), (8, 1000, 5.0), (5, 30, 0.1)]):
        logits = _logits(b, v, seed=seed, scale=scale)
        for p in (0.01, 0.1, 0.5, 0.8, 0.9, 0.95, 0.999):
            ours = top_p_filter(logits, p)
            ref = TopPLogitsWarper(top_p=p)(None, logits.clone())
            assert torch.equal(torch.isfinite(ours), torch.isfinite(ref)), (seed, p)


def test_filter_order_matches_hf_chain():
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = _logits(6, 40, seed=3)
    chain = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.8)])
    ref = chain(None, logits.clone())
    ours = filter_logits(logits, temperature=0.7, top_k=10, top_p=0.8)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(ref))
    assert torch.allclose(torch.softmax(ours, -1), torch.softmax(ref, -1), atol=1e-6)


def test_sampling_frequencies_follow_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    probs = next_token_probs(logits, temperature=0.8, top_k=3)
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next_token(logits.expand(2000, 5), 0.8, 3, generator=g) for _ in range(5)])
    freq = torch.bincount(draws.flatten(), minlength=5).float() / draws.numel()
    assert freq[3:].sum() == 0  # filtered tokens never drawn
    assert (freq - probs[0]).abs().max() < 0.02


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, match", [
    (dict(top_p=0.0), r"top_p.*\(0, 1\].*0\.0"),
    (dict(top_p=1.5), r"top_p.*1\.5"),
    (dict(top_p=float("nan")), r"top_p.*nan"),
    (dict(temperature=-0.5), r"temperature.*-0\.5"),
    (dict(temperature=float("inf")), r"temperature.*inf"),
    (dict(top_k=0), r"top_k.*0"),
    (dict(top_k=-3), r"top_k.*-3"),
    (dict(max_new_tokens=-1), r"max_new_tokens.*-1"),
])
def test_generate_rejects_bad_arguments(tiny_gpt, kwargs, match):
    args = dict(max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=match):
        generate(tiny_gpt, torch.zeros(1, 2, dtype=torch.long), **args)


def test_generate_rejects_bad_types(tiny_gpt):
    with pytest.raises(TypeError, match="top_k must be a positive int"):
        generate(tiny_gpt, torch.zeros(1, 2, dtype=torch.long), 3, top_k=2.5)
    with pytest.raises(TypeError, match="idx must hold integer"):
        generate(tiny_gpt, torch.zeros(1, 2), 3)
    with pytest.raises(ValueError, match=r"idx must have 2 dimensions \(B, T\).*\(5,\)"):
        generate(tiny_gpt, torch.zeros(5, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, vocab_size=50\)"):
        generate(tiny_gpt, torch.tensor([[3, 50]]), 3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        generate("gpt", torch.zeros(1, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="temperature=0 means greedy"):
        apply_temperature(torch.zeros(3), 0.0)


# ---------------------------------------------------------------- the loop
def test_greedy_cached_equals_uncached_equals_argmax_loop(tiny_gpt):
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    cached = generate(tiny_gpt, prompt, 10, use_cache=True)
    uncached = generate(tiny_gpt, prompt, 10, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :3], prompt) and cached.shape == (2, 13)
    x = prompt  # the definition, written out: argmax of the last position, appended
    for _ in range(10):
        x = torch.cat([x, tiny_gpt(x).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, x)


def test_same_seed_same_tokens(tiny_gpt):
    prompt = torch.tensor([[7, 8]])
    run = lambda seed, **kw: generate(tiny_gpt, prompt, 20, temperature=1.0, top_k=20, top_p=0.9,  # noqa: E731
                                      generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(run(1), run(1))
    assert torch.equal(run(1), run(1, use_cache=False))  # the cache does not change what is drawn
    assert not torch.equal(run(1), run(2))


def test_sliding_window_beyond_block_size(tiny_gpt):
    prompt = torch.tensor([[1, 2, 3]])
    out = generate(tiny_gpt, prompt, 30, use_cache=True)  # 33 tokens > block_size 16
    assert out.shape == (1, 33)
    assert torch.equal(out, generate(tiny_gpt, prompt, 30, use_cache=False))
    # each token is the argmax given the last block_size tokens before it
    for t in range(16, 33):
        window = out[:, t - 16 : t]
        assert tiny_gpt(window).logits[0, -1].argmax().item() == out[0, t].item()


def test_long_prompt_is_cropped_with_a_warning(tiny_gpt):
    prompt = torch.arange(20).view(1, 20) % 50
    with pytest.warns(UserWarning, match=r"prompt has 20 tokens.*block_size=16.*last 16"):
        out = generate(tiny_gpt, prompt, 2)
    assert torch.equal(out[:, :20], prompt)  # the whole prompt comes back
    expected = tiny_gpt(prompt[:, -16:]).logits[0, -1].argmax().item()
    assert out[0, 20].item() == expected


def test_zero_new_tokens_and_mode_restored(tiny_gpt):
    tiny_gpt.train()
    prompt = torch.tensor([[1, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(generate(tiny_gpt, prompt, 0), prompt)
    assert tiny_gpt.training
    tiny_gpt.eval()


def test_bigram_generates_through_the_same_loop():
    bigram = BigramLM(5, alpha=1e-3).fit([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0])
    out = generate(bigram, torch.tensor([[0]]), 9)
    assert out.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]]
    sampled = generate(bigram, torch.tensor([[2]]), 5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (1, 6)
    assert math.isclose(float(bigram.log_probs.exp().sum(-1).mean()), 1.0, rel_tol=1e-5)


# ---------------------------------------------------------------- NaN is reported, not hidden
def test_tiny_temperature_is_the_greedy_limit_not_an_overflow():
    logits = torch.tensor([[1000.0, 999.0, -5.0]])
    probs = next_token_probs(logits, temperature=1e-300)  # 1000 / 1e-300 overflows float32
    assert torch.equal(probs, torch.tensor([[1.0, 0.0, 0.0]]))
    assert sample_next_token(logits, temperature=1e-300).item() == 0


def test_rows_with_nothing_to_sample_raise():
    with pytest.raises(ValueError, match="NaN, \\+inf or only -inf"):
        next_token_probs(torch.full((1, 4), float("-inf")), temperature=1.0)
    with pytest.raises(ValueError, match="NaN, \\+inf or only -inf"):
        sample_next_token(torch.tensor([[0.0, float("nan")]]), temperature=0.0)


def test_a_model_returning_nan_logits_stops_generate(tiny_gpt):
    with torch.no_grad():
        tiny_gpt.lm_head.weight[0, 0] = float("nan")
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match="is the model's output finite"):
            generate(tiny_gpt, torch.zeros(1, 2, dtype=torch.long), 3, temperature=temperature)


def test_decode_greedy_feeds_its_choices_and_keeps_the_cache_on_failure():
    """GPT.decode_greedy outside the C loop (a batch, a small model): decode_step and argmax per
    token, the cache left holding the prompt and all chosen tokens but the last."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.inference_mode():
        cache = model.new_cache(2, 12)
        got = model.decode_greedy(prompt, cache, 8)
    assert got.shape == (2, 8) and got.dtype == torch.long and cache.length == 3 + 7
    assert torch.equal(torch.cat([prompt, got], 1), generate(model, prompt, 8))
    with pytest.raises(ValueError, match=r"n must be a positive int, got 0"):
        model.decode_greedy(prompt, model.new_cache(2, 12), 0)
    with pytest.raises(ValueError, match=r"the step writes 10 new position\(s\) after the 0 filled ones, past the "
                                         r"cache's max_len=9"):
        model.decode_greedy(prompt, model.new_cache(2, 9), 8)  # 3 + 7 fed positions
    with pytest.raises(ValueError, match=r"n=15 greedy tokens after 0 cached and 3 new ones need 17 positions, "
                                         r"past block_size=16"):
        model.decode_greedy(prompt, KVCache(2, 2, 2, 8, 40), 15)  # a cache longer than the window
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    cache = model.new_cache(2, 12)
    model.decode_step(prompt[:, :1], cache)
    with pytest.raises(ValueError, match="the logits at position 2 have a NaN"):
        model.decode_greedy(prompt[:, 1:], cache, 4)
    assert cache.length == 1  # as it was
