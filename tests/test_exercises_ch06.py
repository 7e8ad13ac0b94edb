"""Chapter 6 checkers: right solutions pass, typical wrong ones fail with a useful message."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transformer_book.exercises import ch06

from exercise_helpers import first_failure as _first_failure, run as _run

torch.set_num_threads(1)


def test_not_done_is_reported():
    def stub(*args):
        raise NotImplementedError("Exercise ex-06-...: write it")

    for checker in (ch06.check_rms_norm, ch06.check_residual, ch06.check_beam_step, ch06.check_beam_step_eos,
                    ch06.check_label_smoothing, ch06.check_gnmt_rerank):
        report = _run(checker, stub)
        assert report.not_done and "not done yet" in report.text(), checker.__name__


# ---------------------------------------------------------------- RMSNorm
def _rms_right(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def _assert_named(checker, wrong, named):
    report = _run(checker, wrong)
    assert not report.passed, named
    assert named in _first_failure(report).hint, (named, report.text())
    return report


def test_rms_norm_right_and_wrong():
    assert _run(ch06.check_rms_norm, _rms_right).passed
    assert _run(ch06.check_rms_norm, lambda x, w, eps: F.rms_norm(x, (x.shape[-1],), w, eps)).passed
    for wrong, named in [
        (lambda x, w, eps: F.layer_norm(x, (x.shape[-1],), w, None, eps), "That is LayerNorm"),
        (lambda x, w, eps: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w, "eps goes inside"),
        (lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps), "weight is missing"),
        (lambda x, w, eps: x / (x.std(-1, unbiased=False, keepdim=True).pow(2) + eps).sqrt() * w,
         "standard deviation"),
        (lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + eps) * w, "last dimension"),
    ]:
        _assert_named(ch06.check_rms_norm, wrong, named)
    no_eps = _run(ch06.check_rms_norm, lambda x, w, eps: x / x.pow(2).mean(-1, keepdim=True).sqrt() * w)
    assert not no_eps.passed and "eps goes inside" in _first_failure(no_eps).hint
    assert any("nan" in c.reason.lower() for c in no_eps.cases if not c.passed)  # the all-zero case


# ---------------------------------------------------------------- residual
def _residual_right(x, sublayer, norm, norm_first):
    return x + sublayer(norm(x)) if norm_first else norm(x + sublayer(x))


def test_residual_right_and_wrong():
    assert _run(ch06.check_residual, _residual_right).passed
    for wrong, named in [
        (lambda x, f, n, nf: _residual_right(x, f, n, not nf), "you computed the other variant"),
        (lambda x, f, n, nf: f(n(x)) if nf else n(f(x)), "residual connection is missing"),
        (lambda x, f, n, nf: n(x) + f(n(x)) if nf else n(x + f(x)), "untouched"),
        (lambda x, f, n, nf: x + f(n(x)) if nf else x + n(f(x)), "normalises the *sum*"),
        (lambda x, f, n, nf: n(x + f(x)), "you computed the other variant"),  # always post-LN
        (lambda x, f, n, nf: x + f(n(x)), "you computed the other variant"),  # always pre-LN
    ]:
        _assert_named(ch06.check_residual, wrong, named)
    swapped = _run(ch06.check_residual, lambda x, f, n, nf: _residual_right(x, f, n, not nf))
    assert swapped.n_passed == 0


# ---------------------------------------------------------------- beam step
def _beam_right(scores, log_probs, beam_size):
    v = log_probs.shape[-1]
    top, idx = (scores[:, None] + log_probs).flatten().topk(beam_size)
    return top, idx // v, idx % v


def test_beam_step_right_and_wrong():
    assert _run(ch06.check_beam_step, _beam_right).passed

    def per_beam(scores, log_probs, beam_size):  # the best token of each beam, not the best overall
        best, tok = (scores[:, None] + log_probs).max(dim=-1)
        top, beam = best.topk(min(beam_size, len(scores)))
        return top, beam, tok[beam]

    def ignore_scores(scores, log_probs, beam_size):
        return _beam_right(torch.zeros_like(scores), log_probs, beam_size)

    def transposed_index(scores, log_probs, beam_size):
        k = log_probs.shape[0]
        top, idx = (scores[:, None] + log_probs).flatten().topk(beam_size)
        return top, idx % k, idx // k

    def float_indices(scores, log_probs, beam_size):
        top, b, t = _beam_right(scores, log_probs, beam_size)
        return top, b.float(), t.float()

    def ascending(scores, log_probs, beam_size):
        v = log_probs.shape[-1]
        top, idx = (scores[:, None] + log_probs).flatten().sort()
        return top[:beam_size], idx[:beam_size] // v, idx[:beam_size] % v

    for wrong, named in [(per_beam, "one prefix may supply several"), (ignore_scores, "scores are missing"),
                         (transposed_index, "the wrong way round"), (float_indices, "integer tensors"),
                         (ascending, "the *largest* totals")]:
        _assert_named(ch06.check_beam_step, wrong, named)


# ---------------------------------------------------------------- beam step that refills after <eos>
def _refill_loop(scores, log_probs, beam_size, eos_id):
    """An independent reference: a plain loop down the ranked list of (total, prefix, token)."""
    k, v = log_probs.shape
    ranked = sorted(((float(scores[b]) + float(log_probs[b, t]), b, t) for b in range(k) for t in range(v)),
                    key=lambda c: -c[0])
    done = [(s, b) for s, b, t in ranked[:beam_size] if t == eos_id]
    live = [c for c in ranked if c[2] != eos_id][:beam_size]
    return ([s for s, _, _ in live], [b for _, b, _ in live], [t for _, _, t in live],
            [s for s, _ in done], [b for _, b in done])


def _refill_right(scores, log_probs, beam_size, eos_id):
    v = log_probs.shape[-1]
    total = scores[:, None] + log_probs
    top, flat = total.flatten().topk(beam_size)
    ended = flat % v == eos_id
    live = total.masked_fill(torch.arange(v) == eos_id, float("-inf"))
    live_top, live_flat = live.flatten().topk(beam_size)
    return live_top, live_flat // v, live_flat % v, top[ended], flat[ended] // v


def test_beam_step_eos_reference_agrees_with_a_loop():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        k, v = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(3, 8, (1,), generator=g))
        beam_size = int(torch.randint(1, k * (v - 1) + 1, (1,), generator=g))
        eos_id = int(torch.randint(0, v, (1,), generator=g))
        scores = -torch.rand(k, generator=g, dtype=torch.float64) * 3
        logits = torch.randn(k, v, generator=g, dtype=torch.float64) * 2
        logits[:, eos_id] += torch.rand(k, generator=g, dtype=torch.float64) * 4
        log_probs = torch.log_softmax(logits, dim=-1)
        got = ch06._beam_step_eos_reference(scores, log_probs, beam_size, eos_id)
        want = _refill_loop(scores, log_probs, beam_size, eos_id)
        assert len(got[0]) == beam_size and not bool((got[2] == eos_id).any())
        for g_t, w in zip(got, want):
            assert torch.allclose(g_t.double(), torch.tensor(w, dtype=torch.float64)), (trial, got, want)
        assert got[1].dtype == got[2].dtype == got[4].dtype == torch.int64
        for mine, w in zip(_refill_right(scores, log_probs, beam_size, eos_id), want):
            assert torch.allclose(mine.double(), torch.tensor(w, dtype=torch.float64)), trial


def test_beam_step_eos_right_and_wrong():
    assert _run(ch06.check_beam_step_eos, _refill_right).passed

    def as_loop(scores, log_probs, beam_size, eos_id):  # the loop, as tensors of the right dtypes
        ls, lb, lt, ds, db = _refill_loop(scores, log_probs, beam_size, eos_id)
        f, i = scores.dtype, torch.int64
        return (torch.tensor(ls, dtype=f), torch.tensor(lb, dtype=i), torch.tensor(lt, dtype=i),
                torch.tensor(ds, dtype=f), torch.tensor(db, dtype=i))

    assert _run(ch06.check_beam_step_eos, as_loop).passed

    def eos_stays(scores, log_probs, beam_size, eos_id):  # the plain step of Exercise 6.3
        v = log_probs.shape[-1]
        top, flat = (scores[:, None] + log_probs).flatten().topk(beam_size)
        ended = flat % v == eos_id
        return top, flat // v, flat % v, top[ended], flat[ended] // v

    def no_refill(scores, log_probs, beam_size, eos_id):  # the chapter's dead slots
        top, beam, tok, done_s, done_b = eos_stays(scores, log_probs, beam_size, eos_id)
        keep = tok != eos_id
        return top[keep], beam[keep], tok[keep], done_s, done_b

    def thrown_away(scores, log_probs, beam_size, eos_id):
        live_s, live_b, live_t, _, _ = _refill_right(scores, log_probs, beam_size, eos_id)
        return live_s, live_b, live_t, torch.zeros(0), torch.zeros(0, dtype=torch.int64)

    def every_eos(scores, log_probs, beam_size, eos_id):  # each prefix's <eos> extension finishes
        live = _refill_right(scores, log_probs, beam_size, eos_id)[:3]
        ends, beam = (scores + log_probs[:, eos_id]).sort(descending=True)
        return live + (ends, beam)

    def walk_until_full(scores, log_probs, beam_size, eos_id):  # every <eos> above the last live one
        ls, lb, lt, _, _ = _refill_loop(scores, log_probs, beam_size, eos_id)
        k, v = log_probs.shape
        ranked = sorted(((float(scores[b] + log_probs[b, t]), b, t) for b in range(k) for t in range(v)),
                        key=lambda c: -c[0])
        done = [(s, b) for s, b, t in ranked if t == eos_id and s > ls[-1]]
        return (torch.tensor(ls), torch.tensor(lb), torch.tensor(lt), torch.tensor([s for s, _ in done]),
                torch.tensor([b for _, b in done], dtype=torch.int64))

    def fixed_eos(scores, log_probs, beam_size, eos_id):
        return _refill_right(scores, log_probs, beam_size, 2)

    def flat_index(scores, log_probs, beam_size, eos_id):
        v = log_probs.shape[-1]
        out = _refill_right(scores, log_probs, beam_size, eos_id)
        _, flat = (scores[:, None] + log_probs).flatten().topk(beam_size)
        return out[:4] + (flat[flat % v == eos_id],)

    for wrong, named in [(eos_stays, "no live token may be eos_id"), (no_refill, "Refill the beam"),
                         (thrown_away, "kept aside, not thrown away"),
                         (every_eos, "the other prefixes' <eos> extensions are dropped"),
                         (walk_until_full, "not every one ranked above the last live extension"),
                         (fixed_eos, "not with a fixed id"), (flat_index, "not the flat index")]:
        _assert_named(ch06.check_beam_step_eos, wrong, named)
    assert _first_failure(_run(ch06.check_beam_step_eos, fixed_eos)).label.startswith("eos_id=0")
    assert _run(ch06.check_beam_step_eos, every_eos).cases[0].passed  # one prefix: nothing to tell apart

    def masks_in_place(scores, log_probs, beam_size, eos_id):
        v = log_probs.shape[-1]
        top, flat = (scores[:, None] + log_probs).flatten().topk(beam_size)
        ended = flat % v == eos_id
        log_probs[:, eos_id] = float("-inf")
        live_top, live_flat = (scores[:, None] + log_probs).flatten().topk(beam_size)
        return live_top, live_flat // v, live_flat % v, top[ended], flat[ended] // v

    report = _run(ch06.check_beam_step_eos, masks_in_place)
    assert not report.passed and "in place" in _first_failure(report).reason
    assert "`log_probs`" in _first_failure(report).hint


# ---------------------------------------------------------------- label smoothing
def _ls_right(logits, targets, eps, pad_id):
    log_p = torch.log_softmax(logits, dim=-1)
    keep = targets != pad_id
    nll = -log_p[keep].gather(1, targets[keep][:, None]).squeeze(1)
    return ((1 - eps) * nll + eps * -log_p[keep].mean(-1)).mean()


def test_label_smoothing_right_and_wrong():
    assert _run(ch06.check_label_smoothing, _ls_right).passed

    def no_padding(logits, targets, eps, pad_id):
        return F.cross_entropy(logits, targets, label_smoothing=eps)

    def eps_over_others(logits, targets, eps, pad_id):  # spreads eps over the V - 1 wrong classes only
        v = logits.shape[-1]
        keep = targets != pad_id
        q = torch.full_like(logits[keep], eps / (v - 1)).scatter(1, targets[keep][:, None], 1 - eps)
        return -(q * torch.log_softmax(logits[keep], -1)).sum(-1).mean()

    def pad_is_zero(logits, targets, eps, pad_id):
        return _ls_right(logits, targets, eps, 0)

    def divide_by_all_rows(logits, targets, eps, pad_id):
        keep = targets != pad_id
        return _ls_right(logits, targets, eps, pad_id) * keep.sum() / len(targets)

    def swapped_weights(logits, targets, eps, pad_id):
        log_p = torch.log_softmax(logits, dim=-1)
        keep = targets != pad_id
        nll = -log_p[keep].gather(1, targets[keep][:, None]).squeeze(1)
        return (eps * nll + (1 - eps) * -log_p[keep].mean(-1)).mean()

    for wrong, named in [(no_padding, "The padding rows count"), (eps_over_others, "not over the V - 1 others"),
                         (pad_is_zero, "not with 0"), (divide_by_all_rows, "must not count in the number"),
                         (swapped_weights, "The weights are swapped")]:
        _assert_named(ch06.check_label_smoothing, wrong, named)
    report = _run(ch06.check_label_smoothing, eps_over_others)
    assert report.n_passed == 1  # only eps=0
    report = _run(ch06.check_label_smoothing, pad_is_zero)
    assert _first_failure(report).label.startswith("pad_id=5")

    def nan_when_empty(logits, targets, eps, pad_id):
        return _ls_right(logits, targets, eps, pad_id) * float("nan")

    assert "NaN" in _first_failure(_run(ch06.check_label_smoothing, nan_when_empty)).reason


def test_infinite_loop_is_stopped():
    def forever(x, weight, eps):
        while True:
            pass

    import transformer_book.exercises.core as core

    report = core.check_function(forever, reference=None, cases=[core.Case(args=(torch.ones(2), torch.ones(2), 1e-6),
                                                                             expected=torch.ones(2))],
                                 exercise="ex-06-rmsnorm", timeout_s=0.5, quiet=True)
    assert not report.passed and "stopped" in report.cases[0].reason


# ---------------------------------------------------------------- GNMT length penalty (new)
def test_gnmt_rerank_right_and_wrong():
    def gnmt_rerank(log_probs, lengths, alpha):
        scores = log_probs / ((5 + lengths) / 6) ** alpha
        return torch.sort(scores, descending=True, stable=True).indices

    assert ch06.check_gnmt_rerank(gnmt_rerank, quiet=True).passed
    for wrong, named in [
        (lambda lp, n, a: torch.argsort(lp / n ** a, descending=True), "the chapter's |Y|^alpha penalty"),
        (lambda lp, n, a: torch.argsort(lp / ((5 + n) / 6) ** a), "descending order"),
        (lambda lp, n, a: torch.argsort(lp * ((5 + n) / 6) ** a, descending=True), "Divide by the penalty"),
    ]:
        report = ch06.check_gnmt_rerank(wrong, quiet=True)
        assert not report.passed and named in _first_failure(report).hint, (named, report.text())
    report = ch06.check_gnmt_rerank(lambda lp, n, a: gnmt_rerank(lp, n, a).tolist(), quiet=True)
    assert not report.passed and "expected a torch.Tensor" in _first_failure(report).reason
