"""Chapter 8 checkers: the reference solutions pass, typical wrong ones fail with a message naming the mistake."""

from __future__ import annotations

import torch

from transformer_book.exercises import ch08

from exercise_helpers import first_failure as _first_failure, run as _run

torch.set_num_threads(1)


def test_not_done_is_reported():
    def stub(*args):
        raise NotImplementedError("Exercise ex-08-...: write it")

    for checker in (ch08.check_max_context, ch08.check_ring_slots, ch08.check_greedy_decode,
                    ch08.check_decode_ceiling):
        assert _run(checker, stub).not_done, checker.__name__


# ---------------------------------------------------------------- max context
def test_max_context_right_and_wrong():
    def right(budget, n_layer, n_kv_head, head_dim, batch, nbytes):
        return budget // (2 * n_layer * n_kv_head * head_dim * nbytes * batch)

    assert _run(ch08.check_max_context, right).passed

    def no_two(budget, n_layer, n_kv_head, head_dim, batch, nbytes):
        return budget // (n_layer * n_kv_head * head_dim * nbytes * batch)

    def rounds_up(budget, n_layer, n_kv_head, head_dim, batch, nbytes):
        return -(-budget // (2 * n_layer * n_kv_head * head_dim * nbytes * batch))

    def no_batch(budget, n_layer, n_kv_head, head_dim, batch, nbytes):
        return budget // (2 * n_layer * n_kv_head * head_dim * nbytes)

    def float_division(budget, n_layer, n_kv_head, head_dim, batch, nbytes):
        return budget / (2 * n_layer * n_kv_head * head_dim * nbytes * batch)

    for wrong, word in ((no_two, "factor 2"), (rounds_up, "Round down"), (no_batch, "batch"),
                        (float_division, "Round down")):
        report = _run(ch08.check_max_context, wrong)
        assert not report.passed, wrong.__name__
        assert word in _first_failure(report).hint, (wrong.__name__, _first_failure(report).hint)


# ---------------------------------------------------------------- ring slots
def _ring_right(length, window):
    slots = torch.full((window,), -1, dtype=torch.long)
    for p in range(max(0, length - window), length):
        slots[p % window] = p
    return slots


def test_ring_slots_right_and_wrong():
    assert _run(ch08.check_ring_slots, _ring_right).passed

    def no_empty(length, window):
        s = torch.arange(window)
        return s + ((length - 1 - s) // window) * window  # newest position of each slot, never -1

    def keeps_oldest(length, window):
        s = torch.arange(window)
        return torch.where(s < length, s, torch.full_like(s, -1))

    def time_order(length, window):
        held = torch.arange(max(0, length - window), length)
        return torch.cat([held, torch.full((window - len(held),), -1)])

    def as_list(length, window):
        return _ring_right(length, window).tolist()

    for wrong, word in ((no_empty, "-1"), (keeps_oldest, "newest"), (time_order, "slot p % window")):
        report = _run(ch08.check_ring_slots, wrong)
        assert not report.passed, wrong.__name__
        assert word in _first_failure(report).hint, (wrong.__name__, _first_failure(report).hint)
    report = _run(ch08.check_ring_slots, as_list)
    assert not report.passed and "tensor" in _first_failure(report).reason.lower()


# ---------------------------------------------------------------- greedy decode
def _greedy_right(model, prompt, n):
    cache = model.new_cache(prompt.shape[0], prompt.shape[1] + n)
    logits = model.decode_step(prompt, cache)
    new = []
    for i in range(n):
        token = logits.argmax(-1, keepdim=True)
        new.append(token)
        if i + 1 < n:
            logits = model.decode_step(token, cache)
    return torch.cat([prompt, *new], dim=1)


def test_greedy_decode_right_and_wrong():
    assert _run(ch08.check_greedy_decode, _greedy_right).passed

    def new_tokens_only(model, prompt, n):
        return _greedy_right(model, prompt, n)[:, prompt.shape[1]:]

    def feeds_everything(model, prompt, n):  # the whole sequence again, into a cache that already has it
        cache = model.new_cache(prompt.shape[0], prompt.shape[1] + n)
        out = prompt
        for _ in range(n):
            out = torch.cat([out, model.decode_step(out, cache).argmax(-1, keepdim=True)], 1)
        return out

    def argmax_over_batch(model, prompt, n):
        cache = model.new_cache(prompt.shape[0], prompt.shape[1] + n)
        logits, out = model.decode_step(prompt, cache), prompt
        for i in range(n):
            token = logits.argmax(0)[: prompt.shape[0], None]
            out = torch.cat([out, token], 1)
            if i + 1 < n:
                logits = model.decode_step(token, cache)
        return out

    def one_short(model, prompt, n):
        return _greedy_right(model, prompt, n - 1) if n > 1 else prompt

    for wrong in (new_tokens_only, feeds_everything, argmax_over_batch, one_short):
        report = _run(ch08.check_greedy_decode, wrong)
        assert not report.passed, wrong.__name__
        assert "newest token" in _first_failure(report).hint


# ---------------------------------------------------------------- decode ceiling
def test_decode_ceiling_right_and_wrong():
    def right(bw, weights, kv, context, batch):
        return batch * bw / (weights + batch * context * kv)

    assert _run(ch08.check_decode_ceiling, right).passed

    def no_cache(bw, weights, kv, context, batch):
        return batch * bw / weights

    def one_token_per_step(bw, weights, kv, context, batch):
        return bw / (weights + batch * context * kv)

    def weights_per_sequence(bw, weights, kv, context, batch):
        return batch * bw / (batch * weights + batch * context * kv)

    def shared_cache(bw, weights, kv, context, batch):
        return batch * bw / (weights + context * kv)

    for wrong, word in ((no_cache, "cache"), (one_token_per_step, "every sequence"),
                        (weights_per_sequence, "read once per step"), (shared_cache, "its own cache")):
        report = _run(ch08.check_decode_ceiling, wrong)
        assert not report.passed, wrong.__name__
        assert word in _first_failure(report).hint, (wrong.__name__, _first_failure(report).hint)
