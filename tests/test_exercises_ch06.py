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

    for checker in (ch06.check_rms_norm, ch06.check_residual, ch06.check_beam_step, ch06.check_label_smoothing,
                    ch06.check_gnmt_rerank):
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
