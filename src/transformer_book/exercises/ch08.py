"""Checkers for the exercises of chapter 8 (the KV cache).

Each ``check_*`` runs the learner's function on a handful of cases, compares it with a reference
written here (or the book's :func:`~transformer_book.generate.generate`), prints a short verdict
and returns a :class:`~transformer_book.exercises.core.CheckReport`. The cases are ordered so
that each typical mistake first fails a case whose hint names it.
"""

from __future__ import annotations

import torch

from transformer_book.exercises.core import Case, CheckReport, check_function
from transformer_book.generate import generate
from transformer_book.models import GPT, GPTConfig

__all__ = ["check_max_context", "check_ring_slots", "check_greedy_decode", "check_decode_ceiling"]


# ---------------------------------------------------------------- apply: the memory formula, inverted
def _max_context_reference(budget_bytes, n_layer, n_kv_head, head_dim, batch, bytes_per_element):
    per_token = 2 * n_layer * n_kv_head * head_dim * bytes_per_element * batch  # keys and values
    return budget_bytes // per_token


def check_max_context(fn, *, quiet: bool = False) -> CheckReport:
    """ex-08-max-context: ``fn(budget_bytes, n_layer, n_kv_head, head_dim, batch, bytes_per_element)``
    -> the longest context (an int) whose cache fits in ``budget_bytes``."""
    two = "Every position stores a key *and* a value, per layer and per key/value head: the factor 2."
    down = "Round down (//): a context whose cache does not fit in the budget is not allowed."
    batch = "Every sequence of the batch has its own cache: the bytes per position grow with batch."
    gib = 2**30
    cases = [
        Case(args=(2 * 12 * 12 * 64 * 4 * 1000, 12, 12, 64, 1, 4), label="GPT-2 small, float32, exactly 1000 positions",
             hint=two),
        Case(args=(2 * 12 * 12 * 64 * 4 * 1000 + 5000, 12, 12, 64, 1, 4), label="a budget between two lengths",
             hint=down),
        Case(args=(gib, 32, 8, 128, 4, 2), label="7B-class GQA, bfloat16, batch 4, 1 GiB", hint=batch),
        Case(args=(16 * gib, 32, 32, 128, 1, 2), label="7B-class MHA, 16 GiB", hint=two),
        Case(args=(1000, 12, 12, 64, 1, 4), label="a budget too small for one position", hint=down),
    ]
    return check_function(fn, reference=_max_context_reference, cases=cases, exercise="ex-08-max-context",
                          quiet=quiet)


# ---------------------------------------------------------------- apply: the ring buffer
def _ring_slots_reference(length, window):
    slots = torch.full((window,), -1, dtype=torch.long)
    for p in range(max(0, length - window), length):
        slots[p % window] = p
    return slots


def check_ring_slots(fn, *, quiet: bool = False) -> CheckReport:
    """ex-08-ring-slots: ``fn(length, window)`` -> ``(window,)`` int64: the position held in each slot
    of a sliding-window cache after ``length`` positions (``-1``: never written)."""
    cases = [
        Case(args=(3, 5), label="length=3, window=5 (not full yet)",
             hint="A slot nobody has written yet holds no position: -1."),
        Case(args=(10, 5), label="length=10, window=5 (wrapped twice)",
             hint="Each new position overwrites its slot: the ring holds the newest W positions, not the first."),
        Case(args=(8, 5), label="length=8, window=5 (wrapped part way)",
             hint="Position p lives in slot p % window: list what each *slot* holds, not the positions in "
                  "time order."),
        Case(args=(0, 4), label="an empty cache", hint="Before any write, every slot is -1."),
        Case(args=(13, 4), label="length=13, window=4", hint="Position p lives in slot p % window."),
        Case(args=(7, 1), label="window=1: only the newest position", hint="Position p lives in slot p % window."),
    ]
    return check_function(fn, reference=_ring_slots_reference, cases=cases, exercise="ex-08-ring-slots",
                          quiet=quiet)


# ---------------------------------------------------------------- extend: the decoding loop
def _tiny_gpt(seed: int, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=37, block_size=32, n_layer=2, n_head=2, n_embd=16) | overrides
    return GPT(GPTConfig(**config)).eval()


def _greedy_reference(model, prompt, n):
    return generate(model, prompt, n)


def check_greedy_decode(fn, *, quiet: bool = False) -> CheckReport:
    """ex-08-greedy-decode: ``fn(model, prompt, n)`` -> ``(B, T + n)``: the prompt and ``n`` greedy
    tokens, decoded with a static cache and ``model.decode_step``."""
    hint = ("Make one cache of T + n positions (model.new_cache), run the prompt once "
            "(model.decode_step(prompt, cache) gives the last position's logits (B, V)), then each step "
            "feeds only the newest token (B, 1); return the prompt followed by the n new tokens, (B, T + n).")
    g = torch.Generator().manual_seed(0)
    cases = [
        Case(args=(_tiny_gpt(0), torch.randint(37, (1, 4), generator=g), 6), label="batch 1, 4-token prompt, 6 new",
             hint=hint),
        Case(args=(_tiny_gpt(1, n_kv_head=1), torch.randint(37, (3, 2), generator=g), 9),
             label="batch 3 (multi-query attention), 9 new",
             hint="Take the argmax over the vocabulary (the last dimension), for every row of the batch. " + hint),
        Case(args=(_tiny_gpt(2), torch.randint(37, (2, 1), generator=g), 1), label="one new token only",
             hint="n = 1: the prompt's pass alone gives the one new token. " + hint),
        Case(args=(_tiny_gpt(3), torch.randint(37, (1, 7), generator=g), 25), label="up to the context window (32)",
             hint="The cache needs exactly T + n positions (the last token is returned, not fed). " + hint),
    ]
    return check_function(fn, reference=_greedy_reference, cases=cases, exercise="ex-08-greedy-decode",
                          timeout_s=30.0, allow_mutation=True, quiet=quiet)


# ---------------------------------------------------------------- transfer: the bound, for any machine and batch
def _decode_ceiling_reference(bandwidth, weight_bytes, kv_bytes_per_token, context, batch):
    step_bytes = weight_bytes + batch * context * kv_bytes_per_token  # weights once, every sequence's cache
    return batch * bandwidth / step_bytes


def check_decode_ceiling(fn, *, quiet: bool = False) -> CheckReport:
    """ex-08-decode-ceiling: ``fn(bandwidth, weight_bytes, kv_bytes_per_token, context, batch)`` -> the
    memory-bound ceiling in tokens per second (a float)."""
    cases = [
        Case(args=(20e9, 5e8, 0.0, 0, 1), label="batch 1, no cache to read", hint=(
            "One step reads every weight once: time = bytes / bandwidth, and it makes one token.")),
        Case(args=(3.35e12, 14e9, 524288.0, 4096, 1), label="a 7B model in float16 on a 3.35 TB/s GPU, context 4096",
             hint="A step also reads the sequence's cache: context x kv_bytes_per_token more bytes."),
        Case(args=(20e9, 5e8, 0.0, 0, 8), label="batch 8, no cache", hint=(
            "The weights are read once per step for the whole batch, and the step makes one token for "
            "every sequence: batch tokens per step.")),
        Case(args=(20e9, 5e8, 36864.0, 1024, 8), label="batch 8 at context 1024", hint=(
            "Every sequence of the batch reads its own cache: batch x context x kv_bytes_per_token.")),
        Case(args=(1e11, 1e9, 1e5, 2048, 32), label="batch 32, the cache outweighs the weights", hint=(
            "Every sequence of the batch reads its own cache: batch x context x kv_bytes_per_token.")),
    ]
    return check_function(fn, reference=_decode_ceiling_reference, cases=cases, exercise="ex-08-decode-ceiling",
                          rtol=1e-6, quiet=quiet)
