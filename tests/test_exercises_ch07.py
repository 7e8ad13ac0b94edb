"""Chapter 7 checkers: right solutions pass, typical wrong ones fail with a useful message."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from transformer_book.exercises import ch07

from exercise_helpers import first_failure as _first_failure, run as _run

torch.set_num_threads(1)


# ---------------------------------------------------------------- top-k
def _top_k_right(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def test_top_k_right_passes_and_stub_is_not_done():
    assert _run(ch07.check_top_k, _top_k_right).passed

    def stub(logits, k):
        raise NotImplementedError("Exercise ex-07-top-k: write it")

    report = _run(ch07.check_top_k, stub)
    assert report.not_done and "not done yet" in report.text()


def test_top_k_wrong_solutions_fail():
    def off_by_one(logits, k):  # keeps k + 1 tokens
        kth = torch.topk(logits, min(k + 1, logits.shape[-1]), dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))

    def zeros_not_inf(logits, k):
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, 0.0)

    def global_not_per_row(logits, k):
        kth = logits.flatten().topk(k).values[-1]
        return logits.masked_fill(logits < kth, float("-inf"))

    def in_place(logits, k):
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits[logits < kth] = float("-inf")
        return logits

    def smallest(logits, k):
        kth = torch.topk(logits, k, dim=-1, largest=False).values[..., -1:]
        return logits.masked_fill(logits > kth, float("-inf"))

    for wrong, named in [(off_by_one, "you kept k + 1 tokens"), (zeros_not_inf, "must get -inf, not 0"),
                         (global_not_per_row, "each row keeps its own k largest"), (smallest, "*smallest*")]:
        report = _run(ch07.check_top_k, wrong)
        assert not report.passed and named in _first_failure(report).hint, (named, report.text())
    report = _run(ch07.check_top_k, global_not_per_row)
    assert report.n_passed >= 1  # the 1-D case passes, the batched ones do not
    report = _run(ch07.check_top_k, in_place)
    assert not report.passed and "changed its input" in report.text()


# ---------------------------------------------------------------- top-p
def _top_p_right(logits, p):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    remove = (probs.cumsum(-1) - probs) >= p
    remove[..., 0] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def test_top_p_right_passes():
    assert _run(ch07.check_top_p, _top_p_right).passed


def test_top_p_wrong_solutions_fail():
    def drops_crossing_token(logits, p):  # keeps tokens while the cumsum *including* them is < p
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        remove = sorted_logits.softmax(-1).cumsum(-1) >= p
        return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))

    def forgets_unsort(logits, p):
        sorted_logits, _ = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        remove = (probs.cumsum(-1) - probs) >= p
        return logits.masked_fill(remove, float("-inf"))

    def on_logits_not_probs(logits, p):
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        remove = (sorted_logits.cumsum(-1) - sorted_logits) >= p
        remove[..., 0] = False
        return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))

    def never_returns(logits, p):
        while True:
            pass

    for wrong, named in [(drops_crossing_token, "makes the sum cross p: it is kept"),
                         (forgets_unsort, "applied in vocabulary order"), (on_logits_not_probs, "You added up logits")]:
        report = _run(ch07.check_top_p, wrong)
        assert not report.passed and named in _first_failure(report).hint, (named, report.text())
    assert "shuffled" in _first_failure(_run(ch07.check_top_p, forgets_unsort)).label
    report = _run(ch07.check_top_p, never_returns)
    assert not report.passed and "did not return" in report.text()


# ---------------------------------------------------------------- language-model loss
def _lm_loss_right(logits, ids):
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1))


def test_lm_loss_right_passes():
    assert _run(ch07.check_lm_loss, _lm_loss_right).passed


def test_lm_loss_wrong_solutions_fail():
    def no_shift(logits, ids):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))

    def shift_backwards(logits, ids):
        return F.cross_entropy(logits[:, 1:].reshape(-1, logits.shape[-1]), ids[:, :-1].reshape(-1))

    def summed(logits, ids):
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                               reduction="sum")

    def nan_loss(logits, ids):
        return torch.tensor(float("nan"))

    def raises(logits, ids):
        return F.cross_entropy(logits, ids)  # (B, T, V) against (B, T): wrong layout for cross_entropy

    def over_all_positions(logits, ids):  # the mean taken over B * T, one per position
        v = logits.shape[-1]
        total = F.cross_entropy(logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1), reduction="sum")
        return total / ids.numel()

    for wrong, named in [(no_shift, "No shift"), (shift_backwards, "Shifted the wrong way"),
                         (summed, "A sum, not a mean"), (over_all_positions, "not B * T")]:
        report = _run(ch07.check_lm_loss, wrong)
        assert not report.passed and named in _first_failure(report).hint, (named, report.text())
    report = _run(ch07.check_lm_loss, summed)
    assert "×" in report.text()  # the verdict points at a constant factor
    report = _run(ch07.check_lm_loss, nan_loss)
    assert not report.passed and "NaN" in report.text()
    report = _run(ch07.check_lm_loss, raises)
    assert not report.passed and "Error" in _first_failure(report).reason


# ---------------------------------------------------------------- bigram counts
def _bigram_right(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    for a, b in zip(ids, ids[1:]):
        counts[a, b] += 1
    return counts


def test_bigram_counts_right_passes():
    assert _run(ch07.check_bigram_counts, _bigram_right).passed


@pytest.mark.parametrize("wrong, named", [
    (lambda ids, v: _bigram_right(ids, v).T.contiguous(), "Rows and columns are swapped"),
    (lambda ids, v: _bigram_right(ids + ids[:1], v), "One pair too many"),  # wraps around
    (lambda ids, v: _bigram_right(ids, v).float(), "Return torch.int64 counts"),
    (lambda ids, v: _bigram_right(ids[:-1], v), "The last pair"),  # misses the last pair
    (lambda ids, v: _bigram_right(ids, v).clamp(max=1), "not only whether it occurs"),
])
def test_bigram_counts_wrong_solutions_fail(wrong, named):
    report = _run(ch07.check_bigram_counts, wrong)
    assert not report.passed and named in _first_failure(report).hint, report.text()


# ---------------------------------------------------------------- min-p (new)
def test_min_p_right_and_wrong():
    from transformer_book.exercises.ch07 import check_min_p

    def min_p(logits, p_min):
        log_p = torch.log_softmax(logits, dim=-1)
        keep = log_p >= log_p.amax(-1, keepdim=True) + math.log(p_min)
        return logits.masked_fill(~keep, float("-inf"))

    assert check_min_p(min_p, quiet=True).passed
    for wrong, named in [
        (lambda x, p: x.masked_fill(torch.softmax(x, -1) < p, float("-inf")), "The threshold is relative"),
        (lambda x, p: x.masked_fill(x < p * x.amax(-1, keepdim=True), float("-inf")), "Compare probabilities"),
        (lambda x, p: torch.softmax(x, -1).masked_fill(
            torch.softmax(x, -1) < p * torch.softmax(x, -1).amax(-1, keepdim=True), 0.0), "Return filtered logits"),
    ]:
        report = check_min_p(wrong, quiet=True)
        assert not report.passed and named in _first_failure(report).hint, (named, report.text())


# ---------------------------------------------------------------- repetition penalty (CTRL)
def _repetition_penalty_right(logits, context, penalty):
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, context, True)
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def _repetition_penalty_loop(logits, context, penalty):
    """An independent reference: one token at a time, each distinct token of a row once."""
    out = logits.clone()
    for b in range(logits.shape[0]):
        for token in set(context[b].tolist()):
            value = float(logits[b, token])
            out[b, token] = value / penalty if value > 0 else value * penalty
    return out


def test_repetition_penalty_reference_agrees_with_hugging_face_and_a_loop():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    def hugging_face(logits, context, penalty):
        return RepetitionPenaltyLogitsProcessor(penalty=penalty)(context, logits.clone())

    # on the checker's own cases: Hugging Face's processor and the loop pass it
    assert _run(ch07.check_repetition_penalty, hugging_face).passed
    assert _run(ch07.check_repetition_penalty, _repetition_penalty_loop).passed
    # and on random ones, with many repeats (T > V) and penalties on both sides of 1
    g = torch.Generator().manual_seed(0)
    for trial in range(50):
        b, v, t = (int(n) for n in torch.randint(1, 30, (3,), generator=g))
        logits = torch.randn(b, v, generator=g) * 4
        context = torch.randint(0, v, (b, t), generator=g)
        penalty = float(torch.rand((), generator=g) * 2 + 0.5)
        expected = hugging_face(logits, context, penalty)
        torch.testing.assert_close(ch07._repetition_penalty_reference(logits, context, penalty), expected)
        torch.testing.assert_close(_repetition_penalty_loop(logits, context, penalty), expected)


def test_repetition_penalty_right_passes_and_stub_is_not_done():
    assert _run(ch07.check_repetition_penalty, _repetition_penalty_right).passed

    def stub(logits, context, penalty):
        raise NotImplementedError("Exercise ex-07-repetition-penalty: write it")

    report = _run(ch07.check_repetition_penalty, stub)
    assert report.not_done and "not done yet" in report.text()


def _seen(logits, context):
    return torch.zeros_like(logits, dtype=torch.bool).scatter(1, context, True)


def _divides_every_logit(logits, context, penalty):
    return torch.where(_seen(logits, context), logits / penalty, logits)


def _swapped_rule(logits, context, penalty):
    return torch.where(_seen(logits, context), torch.where(logits > 0, logits * penalty, logits / penalty),
                       logits)


def _once_per_occurrence(logits, context, penalty):
    out = logits.clone()
    for b in range(logits.shape[0]):
        for token in context[b].tolist():  # a repeated token is penalised again
            out[b, token] = out[b, token] / penalty if out[b, token] > 0 else out[b, token] * penalty
    return out


def _every_token(logits, context, penalty):
    return torch.where(logits > 0, logits / penalty, logits * penalty)


def _row_zero_context(logits, context, penalty):
    return _repetition_penalty_right(logits, context[:1].expand_as(context), penalty)


def _whole_batch_context(logits, context, penalty):
    return _repetition_penalty_right(logits, context.reshape(1, -1).expand(len(context), -1), penalty)


@pytest.mark.parametrize("wrong, named, first_label", [
    (_divides_every_logit, "You divided every penalised logit by penalty", "one row"),
    (_swapped_rule, "The rule is the wrong way round", "one row"),
    (_once_per_occurrence, "penalised a token once per occurrence", "a context that repeats tokens"),
    (_every_token, "You penalised every token", "one row"),
    (_row_zero_context, "Every row used the context of row 0", "3 rows"),
    (_whole_batch_context, "the whole batch's context", "3 rows"),
])
def test_repetition_penalty_wrong_solutions_fail(wrong, named, first_label):
    report = _run(ch07.check_repetition_penalty, wrong)
    failure = _first_failure(report)
    assert not report.passed and named in failure.hint, (named, report.text())
    assert failure.label.startswith(first_label), report.text()


def test_repetition_penalty_in_place_fails_with_before_and_after():
    def in_place(logits, context, penalty):
        seen = _seen(logits, context)
        logits[seen & (logits > 0)] /= penalty
        logits[seen & (logits < 0)] *= penalty
        return logits

    report = _run(ch07.check_repetition_penalty, in_place)
    failure = _first_failure(report)
    assert not report.passed and "changed its input `logits` in place" in failure.reason, report.text()
    assert failure.before.startswith("logits = ") and failure.after.startswith("logits = ")
    assert failure.before != failure.after
    assert "Your function changed `logits`" in failure.hint
