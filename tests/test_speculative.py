"""Speculative decoding: greedy exactness with rigged and real drafts, distribution exactness by a
chi-square test against the target's enumerated distribution (which a wrong acceptance rule
fails), cache rollback against recomputation, prompt lookup against a plain-Python search, the
theory's formulas against brute force, and the bad-input rules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import transformer_book.speculative as spec
from transformer_book.generate import generate, next_token_probs
from transformer_book.kv_cache import KVCache
from transformer_book.models import GPT, GPTConfig
from transformer_book.speculative import (
    PromptLookupDraft,
    SpeculativeStats,
    acceptance_rate,
    best_k,
    decode_step_seconds,
    expected_speedup,
    expected_tokens_per_pass,
    greedy_verify,
    speculative_generate,
    verify_draft,
)

torch.set_num_threads(1)

#: The false-alarm probability of every chi-square test below: a correct implementation fails
#: one with probability 1e-4 (the seeds are fixed, so a run is reproducible either way).
FALSE_ALARM = 1e-4


def _gpt(seed, vocab=40, n_layer=2, n_embd=16, n_head=2, block_size=64, scale=0.3, dtype=torch.float64):
    """A random GPT whose weights are large enough that its next-token distributions are far from uniform."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, scale)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def pair():
    return _gpt(0), _gpt(1, n_layer=1, n_embd=8)


# ---------------------------------------------------------------- the theory
def test_expected_tokens_against_the_capped_geometric_by_enumeration():
    for alpha in (0.0, 0.3, 0.8, 0.99, 1.0):
        for k in range(0, 9):
            # accepted length m: P(m = j) = alpha^j (1 - alpha) for j < k, P(m = k) = alpha^k
            probs = [alpha**j * (1 - alpha) for j in range(k)] + [alpha**k]
            mean = sum((j + 1) * pj for j, pj in enumerate(probs))
            assert expected_tokens_per_pass(alpha, k) == pytest.approx(mean, rel=1e-12, abs=1e-12)


def test_speedup_is_tokens_over_cost_and_best_k_is_the_argmax():
    assert expected_speedup(0.8, 0.0, 4) == pytest.approx((1 - 0.8**5) / 0.2)
    assert expected_speedup(0.8, 0.1, 4) == pytest.approx((1 - 0.8**5) / (0.2 * 1.4))
    assert expected_speedup(0.5, 1.0, 3) < 1  # a draft as costly as the target never pays
    for alpha, c in ((0.6, 0.05), (0.9, 0.1), (0.3, 0.2), (0.99, 0.01)):
        grid = {k: expected_speedup(alpha, c, k) for k in range(1, 17)}
        assert best_k(alpha, c) == max(grid, key=grid.get)


@pytest.mark.parametrize("call, match", [
    (lambda: expected_tokens_per_pass(1.5, 2), "alpha"),
    (lambda: expected_tokens_per_pass(0.5, -1), "k"),
    (lambda: expected_speedup(0.5, -0.1, 2), "c"),
    (lambda: best_k(0.5, 0.1, 0), "k_max"),
])
def test_theory_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- prompt lookup
def _lookup_by_hand(context: list[int], k: int, max_ngram: int, min_ngram: int) -> list[int]:
    t = len(context)
    for n in range(min(max_ngram, t - 1), min_ngram - 1, -1):
        suffix = context[t - n:]
        for start in range(t - n - 1, -1, -1):  # most recent first, never the suffix itself
            if context[start: start + n] == suffix:
                out = list(context)
                while len(out) < t + k:  # copy on, from the copy itself once past the end
                    out.append(out[start + n + len(out) - t])
                return out[t:]
    return []


def test_prompt_lookup_against_a_plain_python_search():
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        t = int(torch.randint(1, 30, (1,), generator=g))
        context = torch.randint(0, 4, (t,), generator=g)  # small vocabulary: many matches
        max_ngram = 1 + trial % 4
        min_ngram = 1 + (trial // 4) % max_ngram
        k = 1 + trial % 5
        ours = PromptLookupDraft(max_ngram, min_ngram).lookup(context, k)
        assert ours == _lookup_by_hand(context.tolist(), k, max_ngram, min_ngram), (context.tolist(), k)


def test_prompt_lookup_hand_cases_and_batch_padding():
    draft = PromptLookupDraft(max_ngram=3)
    assert draft.lookup(torch.tensor([1, 2, 3, 4, 1, 2, 3]), 3) == [4, 1, 2]
    assert draft.lookup(torch.tensor([7, 1, 2, 1, 2]), 5) == [1, 2, 1, 2, 1]  # an overlapping copy
    assert draft.lookup(torch.tensor([5, 5, 5, 5]), 4) == [5, 5, 5, 5]
    assert draft.lookup(torch.tensor([5, 1, 2, 9, 1, 2, 7, 1, 2]), 2) == [7, 1]  # the most recent match
    assert draft.lookup(torch.tensor([1, 2, 3]), 4) == []  # nothing repeats
    out = draft.propose(torch.tensor([[1, 2, 3, 1, 2], [4, 5, 6, 7, 8]]), 3)
    assert out.tolist() == [[3, 1, 2], [-1, -1, -1]]  # row 2: nothing repeats


def test_prompt_lookup_bad_input():
    with pytest.raises(ValueError, match="max_ngram"):
        PromptLookupDraft(max_ngram=0)
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookupDraft(max_ngram=2, min_ngram=3)
    with pytest.raises(ValueError, match="k"):
        PromptLookupDraft().lookup(torch.tensor([1, 2]), 0)
    with pytest.raises(TypeError, match="context"):
        PromptLookupDraft().lookup(torch.tensor([1.0, 2.0]), 1)


# ---------------------------------------------------------------- the acceptance rules, by hand
def test_greedy_verify_hand_cases():
    logits = torch.full((1, 4, 5), -1.0)
    for i, best in enumerate([2, 0, 4, 1]):
        logits[0, i, best] = 1.0
    cases = {(2, 0, 4): (3, 1), (2, 0, 3): (2, 4), (1, 0, 4): (0, 2), (2, 3, 4): (1, 0)}
    for draft, (n, nxt) in cases.items():
        n_acc, token = greedy_verify(logits, torch.tensor([draft]))
        assert (int(n_acc), int(token)) == (n, nxt), draft
    n_acc, token = greedy_verify(logits, torch.tensor([[2, 0, 4]]), n_drafted=torch.tensor([1]))
    assert (int(n_acc), int(token)) == (1, 0)  # only one real proposal: accepted, then the target's token


def test_verify_draft_first_token_has_the_target_distribution():
    """One pass, k = 1, many rows at once: the first output token is distributed as p_1 exactly."""
    g = torch.Generator().manual_seed(0)
    n, v = 200_000, 4
    p1 = torch.tensor([0.1, 0.2, 0.3, 0.4])
    q1 = torch.tensor([0.4, 0.3, 0.2, 0.1])
    p = torch.stack([p1, torch.tensor([0.25] * 4)])[None].expand(n, 2, v)
    q = q1[None, None].expand(n, 1, v)
    draft = torch.multinomial(q1, n, replacement=True, generator=g)[:, None]
    n_acc, nxt = verify_draft(p, q, draft, generator=g)
    first = torch.where(n_acc == 1, draft[:, 0], nxt)
    counts = torch.bincount(first, minlength=v).double()
    stat, threshold = _chi_square(counts, p1.double() * n)
    assert stat < threshold
    # accepted with probability sum_x min(p, q) = 0.1 + 0.2 + 0.2 + 0.1
    assert float((n_acc == 1).double().mean()) == pytest.approx(0.6, abs=0.005)


def test_verify_draft_equal_distributions_accept_everything_and_add_a_bonus():
    p = torch.softmax(torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(1)), -1)
    draft = torch.tensor([[0, 1, 2], [3, 4, 5], [5, 5, 5]])
    n_acc, nxt = verify_draft(p, p[:, :3], draft, generator=torch.Generator().manual_seed(0))
    assert n_acc.tolist() == [3, 3, 3]
    assert ((nxt >= 0) & (nxt < 6)).all()


def test_verify_bad_input():
    p = torch.full((1, 3, 4), 0.25)
    with pytest.raises(ValueError, match="q"):
        verify_draft(p, p, torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="draft"):
        verify_draft(p, p[:, :2], torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="vocabulary"):
        verify_draft(p, p[:, :2], torch.tensor([[0, 9]]))
    with pytest.raises(TypeError, match="draft"):
        greedy_verify(p.log(), torch.zeros(1, 2))


# ---------------------------------------------------------------- greedy: identical to the target's
class Rigged:
    """A draft that knows the target's greedy continuation and is right on the first ``right`` of its k."""

    def __init__(self, reference: torch.Tensor, right: int, vocab: int):
        self.reference, self.right, self.vocab = reference, right, vocab

    def propose(self, tokens, k):
        truth = self.reference[:, tokens.shape[1]: tokens.shape[1] + k]
        wrong = (truth + 1) % self.vocab
        cut = min(self.right, k)
        return torch.cat([truth[:, :cut], wrong[:, cut:]], dim=1)


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_greedy_rigged_drafts_accept_exactly_what_is_right(pair, k):
    target, _ = pair
    idx = torch.randint(0, 40, (1, 5), generator=torch.Generator().manual_seed(k))
    new = 23
    reference = generate(target, idx, new)
    for right in range(0, k + 1):  # always wrong (0), right for exactly j of k, always right (k)
        out, stats = speculative_generate(target, Rigged(reference, right, 40), idx, new, k=k)
        assert torch.equal(out, reference), (k, right)
        # each pass: min(right, k_now) accepted; then the correction (or the bonus when right >= k_now)
        produced, expected_lengths = 0, []
        while produced < new:
            k_now = min(k, new - produced - 1)
            accepted = min(right, k_now)
            expected_lengths.append(accepted)
            produced += accepted + 1
        assert stats.accepted_lengths == expected_lengths, (k, right)
        assert stats.target_passes == len(expected_lengths)
        assert stats.accepted == sum(expected_lengths)
        assert stats.drafted == sum(min(k, new - p - 1) for p in _starts(expected_lengths))


def _starts(lengths):
    produced = 0
    for n in lengths:
        yield produced
        produced += n + 1


def test_greedy_always_right_draft_is_the_target_itself(pair):
    target, _ = pair
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    out, stats = speculative_generate(target, target, idx, 20, k=4)
    assert torch.equal(out, generate(target, idx, 20))
    assert stats.alpha == 1.0 and stats.accepted_lengths[:3] == [4, 4, 4]  # five tokens a pass


def test_greedy_identical_for_random_models_prompts_lengths_and_k():
    for seed in range(3):
        target = _gpt(10 + seed, vocab=30, n_layer=1 + seed % 2)
        draft = _gpt(20 + seed, vocab=30, n_layer=1, n_embd=8)
        g = torch.Generator().manual_seed(seed)
        for trial in range(3):
            t = int(torch.randint(1, 12, (1,), generator=g))
            idx = torch.randint(0, 30, (1, t), generator=g)
            new = int(torch.randint(0, 30, (1,), generator=g))
            reference = generate(target, idx, new)
            for k in (1, 3, 8):
                for d in (draft, PromptLookupDraft(max_ngram=1 + trial % 3)):
                    out, stats = speculative_generate(target, d, idx, new, k=k)
                    assert torch.equal(out, reference), (seed, trial, k, type(d).__name__)
                    assert stats.new_tokens == new and len(stats.accepted_lengths) == stats.target_passes


def test_greedy_identical_in_float32_with_a_trained_like_draft():
    target = _gpt(3, dtype=torch.float32)
    # a draft that mostly agrees: the target with noise on its weights
    draft = _gpt(3, dtype=torch.float32)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.02 * torch.randn_like(p))
    idx = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(0))
    out, stats = speculative_generate(target, draft, idx, 40, k=4)
    assert torch.equal(out, generate(target, idx, 40))
    assert stats.accepted > 0  # the agreeing draft did get tokens accepted


def test_greedy_batch_rows_are_decoded_as_if_alone(pair):
    target, draft = pair
    idx = torch.randint(0, 40, (6, 4), generator=torch.Generator().manual_seed(5))
    for d in (draft, PromptLookupDraft(), target):
        out, stats = speculative_generate(target, d, idx, 17, k=3)
        assert torch.equal(out, generate(target, idx, 17))
        assert sum(stats.accepted_lengths) + len(stats.accepted_lengths) == 6 * 17  # every row's tokens


def test_zero_new_tokens_returns_the_prompt(pair):
    target, draft = pair
    idx = torch.tensor([[1, 2, 3]])
    out, stats = speculative_generate(target, draft, idx, 0)
    assert torch.equal(out, idx) and stats.target_passes == 0


# ---------------------------------------------------------------- cache rollback
class Spy(nn.Module):
    """Wraps a GPT; before every cached call, checks the cache against a fresh recomputation."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model, self.config = model, model.config
        self.seq: list[int] = []
        self.checked = 0
        self.rollbacks = 0

    def forward(self, idx, cache=None):
        if cache.length < len(self.seq):
            self.rollbacks += 1  # positions were cropped since the last call
        self.seq = self.seq[: cache.length]
        if cache.length:
            fresh = KVCache.for_model(self.model, 1, cache.max_len)
            self.model(torch.tensor([self.seq]), cache=fresh)
            for layer in range(cache.n_layer):
                n = cache.length
                assert torch.allclose(cache.keys[layer][:, :, :n], fresh.keys[layer][:, :, :n], atol=1e-12)
                assert torch.allclose(cache.values[layer][:, :, :n], fresh.values[layer][:, :, :n], atol=1e-12)
            self.checked += 1
        self.seq += idx[0].tolist()
        return self.model(idx, cache=cache)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_both_caches_after_rollback_equal_a_recomputation(pair, temperature):
    target, draft = pair
    spy_target, spy_draft = Spy(target).eval(), Spy(draft).eval()  # eval: restoring train() would recurse
    idx = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(2))
    out, stats = speculative_generate(spy_target, spy_draft, idx, 30, k=3, temperature=temperature,
                                      generator=torch.Generator().manual_seed(0))
    assert spy_target.rollbacks > 0 and spy_draft.rollbacks > 0  # rejections happened and were rolled back
    assert spy_target.checked == stats.target_passes - 1  # every pass after the first was checked
    assert spy_draft.checked > 0
    if temperature == 0:
        assert torch.equal(out, generate(target, idx, 30))


# ---------------------------------------------------------------- sampling: the target's distribution exactly
def _chi_square(counts: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """Pearson's statistic (cells with expected < 5 pooled into one; a count in a cell of
    probability 0 is an infinite statistic) and its 1 - FALSE_ALARM quantile.

    The quantile of the chi-square distribution with ``df`` degrees of freedom is found by
    bisection on its survival function ``Q(df / 2, x / 2)`` (torch's regularized upper
    incomplete gamma), so no approximation is involved beyond Pearson's large-sample one.
    """
    impossible = expected == 0  # cells the target never produces (top-k / top-p cut them)
    if bool((counts[impossible] > 0).any()):
        return math.inf, _chi2_quantile(max(int((~impossible).sum()) - 1, 1), 1 - FALSE_ALARM)
    counts, expected = counts[~impossible], expected[~impossible]
    small = expected < 5
    if bool(small.any()):
        counts = torch.cat([counts[~small], counts[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    stat = float(((counts - expected) ** 2 / expected).sum())
    df = len(counts) - 1
    return stat, _chi2_quantile(df, 1 - FALSE_ALARM)


def _chi2_quantile(df: int, level: float) -> float:
    survival = lambda x: float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),  # noqa: E731
                                                       torch.tensor(x / 2, dtype=torch.float64)))
    lo, hi = 0.0, 10.0 * df + 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if survival(mid) > 1 - level else (lo, mid)
    return hi


def test_chi2_quantile_matches_known_values():
    # chi-square quantiles at 1 - 1e-4 (tables: df=1 15.137, df=10 35.564, df=26 59.300)
    assert _chi2_quantile(1, 1 - 1e-4) == pytest.approx(15.137, abs=2e-3)
    assert _chi2_quantile(10, 1 - 1e-4) == pytest.approx(35.564, abs=2e-3)
    assert _chi2_quantile(2, 0.95) == pytest.approx(-2 * math.log(0.05), abs=1e-6)


V_TINY, NEW_TINY = 3, 3


def _tiny(seed):
    return _gpt(seed, vocab=V_TINY, n_layer=1, n_embd=8, n_head=1, block_size=12, scale=0.8, dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny_pair():
    return _tiny(0), _tiny(1)


def _exact_joint(target, prompt, settings) -> torch.Tensor:
    """P(first NEW_TINY tokens = s) for every s in V^NEW_TINY, by enumeration: the product of p's."""
    seqs = torch.tensor(list(itertools.product(range(V_TINY), repeat=NEW_TINY)))  # (V^n, n) in lexicographic order
    full = torch.cat([prompt.repeat(len(seqs), 1), seqs], dim=1)
    with torch.no_grad():
        probs = next_token_probs(target(full[:, :-1]).logits.double(), *settings)  # (V^n, T-1, V)
    t0 = prompt.shape[1]
    steps = probs[:, t0 - 1:].gather(-1, seqs[..., None]).squeeze(-1)  # (V^n, n)
    return steps.prod(dim=1)


def _sampled_joint(target, draft, prompt, settings, n_runs, seed, k=2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out, _ = speculative_generate(target, draft, prompt.repeat(n_runs, 1), NEW_TINY, k=k, temperature=settings[0],
                                  top_k=settings[1], top_p=settings[2], generator=g)
    new = out[:, prompt.shape[1]:]
    code = sum(new[:, i] * V_TINY ** (NEW_TINY - 1 - i) for i in range(NEW_TINY))  # lexicographic index
    return torch.bincount(code, minlength=V_TINY**NEW_TINY).double()


N_RUNS = 12_000
SETTINGS = [(1.0, None, None), (0.7, 2, None), (1.3, None, 0.8)]


@pytest.mark.parametrize("settings", SETTINGS)
def test_sampling_joint_distribution_is_the_targets(tiny_pair, settings):
    target, draft = tiny_pair
    prompt = torch.tensor([[0, 2]])
    expected = _exact_joint(target, prompt, settings) * N_RUNS
    for d in (draft, PromptLookupDraft(max_ngram=1)):
        counts = _sampled_joint(target, d, prompt, settings, N_RUNS, seed=1)
        stat, threshold = _chi_square(counts, expected)
        assert stat < threshold, (type(d).__name__, settings, stat, threshold)


def _always_accept(p, q, draft, n_drafted=None, generator=None):
    """A wrong rule: keep every proposal, then draw the next token from p."""
    n = n_drafted if n_drafted is not None else torch.full((draft.shape[0],), draft.shape[1])
    rows = torch.arange(draft.shape[0])
    return n, torch.multinomial(p[rows, n], 1, generator=generator).squeeze(1)


def _resample_from_p(p, q, draft, n_drafted=None, generator=None):
    """A wrong rule: accept with probability min(1, p/q) but, on a rejection, draw from p, not the residual."""
    n_acc, _ = spec._verify_draft(p, q, draft, n_drafted if n_drafted is not None else
                                  torch.full((draft.shape[0],), draft.shape[1]), generator)
    rows = torch.arange(draft.shape[0])
    return n_acc, torch.multinomial(p[rows, n_acc], 1, generator=generator).squeeze(1)


@pytest.mark.parametrize("wrong", [_always_accept, _resample_from_p])
def test_the_same_test_fails_for_a_wrong_acceptance_rule(tiny_pair, monkeypatch, wrong):
    target, draft = tiny_pair
    prompt = torch.tensor([[0, 2]])
    settings = SETTINGS[0]
    expected = _exact_joint(target, prompt, settings) * N_RUNS
    monkeypatch.setattr(spec, "verify_draft", wrong)
    counts = _sampled_joint(target, draft, prompt, settings, N_RUNS, seed=1)
    stat, threshold = _chi_square(counts, expected)
    assert stat > threshold, (wrong.__name__, stat, threshold)


def test_sampling_is_reproducible_with_a_seed(pair):
    target, draft = pair
    idx = torch.tensor([[1, 2, 3]])
    runs = [speculative_generate(target, draft, idx, 15, k=3, temperature=1.0,
                                 generator=torch.Generator().manual_seed(7))[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


# ---------------------------------------------------------------- stats, alpha, c
def test_stats_fields_and_alpha_estimate():
    stats = SpeculativeStats(target_passes=3, drafted=12, accepted=6, new_tokens=9,
                             drafted_lengths=[4, 4, 4], accepted_lengths=[4, 2, 0])
    assert stats.tokens_per_pass == 3.0
    assert stats.alpha == pytest.approx(6 / 8)  # two rejections judged besides the 6 accepted
    assert stats.to_dict()["alpha"] == stats.alpha


def test_acceptance_rate_greedy_and_sampled(pair):
    target, draft = pair
    tokens = generate(target, torch.tensor([[1, 2, 3]]), 20)
    greedy = acceptance_rate(target, draft, tokens, start=3)
    agree = (target(tokens[:, :-1]).logits.argmax(-1) == draft(tokens[:, :-1]).logits.argmax(-1))[0, 2:]
    assert greedy == pytest.approx(float(agree.double().mean()))
    assert acceptance_rate(target, target, tokens, start=3, temperature=1.0) == pytest.approx(1.0)
    sampled = acceptance_rate(target, draft, tokens, start=3, temperature=1.0)
    p = torch.softmax(target(tokens[:, :-1]).logits[0, 2:], -1)
    q = torch.softmax(draft(tokens[:, :-1]).logits[0, 2:], -1)
    assert sampled == pytest.approx(float(torch.minimum(p, q).sum(-1).mean()))


def test_decode_step_seconds(pair):
    target, _ = pair
    seconds = decode_step_seconds(target, torch.tensor([[1, 2, 3]]), n_new=2, steps=3)
    assert 0 < seconds < 10
    with pytest.raises(ValueError, match="block_size"):
        decode_step_seconds(target, torch.zeros(1, 64, dtype=torch.long), n_new=1)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(k=0), ValueError, "k must be"),
    (dict(k=-2), ValueError, "k must be"),
    (dict(k=1.5), TypeError, "k must be"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(generator=3), TypeError, "generator"),
    (dict(max_new_tokens=70), ValueError, "block_size=64"),
])
def test_bad_arguments_name_the_value(pair, kwargs, error, match):
    target, draft = pair
    args = dict(max_new_tokens=5, k=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        speculative_generate(target, draft, torch.tensor([[1, 2]]), **args)


def test_draft_with_another_vocabulary_is_refused(pair):
    target, _ = pair
    with pytest.raises(ValueError, match=r"vocab_size=30.*vocab_size=40"):
        speculative_generate(target, _gpt(5, vocab=30), torch.tensor([[1, 2]]), 5)


def test_models_on_different_devices_are_refused(pair):
    target, _ = pair
    draft = _gpt(5).to("meta")
    with pytest.raises(ValueError, match=r"target on cpu, draft on meta"):
        speculative_generate(target, draft, torch.tensor([[1, 2]]), 5)


def test_a_draft_that_is_neither_model_nor_drafter_is_refused(pair):
    target, _ = pair
    with pytest.raises(TypeError, match="draft"):
        speculative_generate(target, "lookup", torch.tensor([[1, 2]]), 5)

    class Bad:
        def propose(self, tokens, k):
            return torch.zeros(tokens.shape[0], k + 1, dtype=torch.long)

    with pytest.raises(ValueError, match=r"shape \(B=1, k=2\)"):
        speculative_generate(target, Bad(), torch.tensor([[1, 2]]), 5, k=2)

    class OutOfVocab:
        def propose(self, tokens, k):
            return torch.full((tokens.shape[0], k), 99)

    with pytest.raises(ValueError, match="vocab_size=40"):
        speculative_generate(target, OutOfVocab(), torch.tensor([[1, 2]]), 5, k=2)


def test_ids_outside_the_vocabulary_are_refused(pair):
    target, draft = pair
    with pytest.raises(ValueError, match="idx"):
        speculative_generate(target, draft, torch.tensor([[1, 40]]), 5)


def test_models_are_put_back_in_their_mode(pair):
    target, draft = pair
    target.train()
    try:
        speculative_generate(target, draft, torch.tensor([[1, 2]]), 3)
        assert target.training and not draft.training
    finally:
        target.eval()


# ---------------------------------------------------------------- the fast path the loop uses
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decode_step_all_positions_equal_forward_with_a_cache(dtype):
    model = _gpt(7, dtype=dtype)
    seq = torch.randint(0, 40, (2, 13), generator=torch.Generator().manual_seed(3))
    fast, slow = model.new_cache(2, 13), model.new_cache(2, 13)
    for start, end in ((0, 6), (6, 7), (7, 11), (11, 13)):  # a prefill, a step, verification passes
        got = model.decode_step(seq[:, start:end], fast, last_only=False)  # (B, T, V)
        want = model(seq[:, start:end], cache=slow).logits
        assert got.shape == want.shape == (2, end - start, 40)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    last = model.decode_step(seq[:, :6], model.new_cache(2, 13))  # the default: the last position only
    torch.testing.assert_close(last, model(seq[:, :6], cache=model.new_cache(2, 13)).logits[:, -1], atol=1e-5, rtol=0)
    assert fast.length == slow.length == 13
    with pytest.raises(TypeError, match="last_only"):
        model.decode_step(seq[:, :2], model.new_cache(2, 4), last_only="no")


def test_stats_time_every_pass(pair):
    target, draft = pair
    for batch in (1, 3):
        _, stats = speculative_generate(target, draft, torch.ones(batch, 3, dtype=torch.long), 12, k=3)
        assert len(stats.draft_seconds) == len(stats.target_seconds) > 0
        assert all(s >= 0 for s in stats.draft_seconds + stats.target_seconds)
