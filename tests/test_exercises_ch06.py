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

    for checker in (ch06.check_rms_norm, ch06.check_residual, ch06.check_beam_step, ch06.check_label_smoothing):
        report = _run(checker, stub)
        assert report.not_done and "not done yet" in report.text(), checker.__name__


# ---------------------------------------------------------------- RMSNorm
def _rms_right(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def test_rms_norm_right_and_wrong():
    assert _run(ch06.check_rms_norm, _rms_right).passed
    layer_norm = _run(ch06.check_rms_norm, lambda x, w, eps: F.layer_norm(x, (x.shape[-1],), w, None, eps))
    assert not layer_norm.passed and "do not subtract the mean" in _first_failure(layer_norm).hint.lower() \
        or "does not centre" in _first_failure(layer_norm).hint
    eps_outside = _run(ch06.check_rms_norm, lambda x, w, eps: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w)
    assert not eps_outside.passed
    no_eps = _run(ch06.check_rms_norm, lambda x, w, eps: x / x.pow(2).mean(-1, keepdim=True).sqrt() * w)
    assert not no_eps.passed and "eps goes inside" in _first_failure(no_eps).hint
    assert any("nan" in c.reason.lower() for c in no_eps.cases if not c.passed)  # the all-zero case
    wrong_axis = _run(ch06.check_rms_norm, lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + eps) * w)
    assert not wrong_axis.passed
    no_weight = _run(ch06.check_rms_norm, lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    assert not no_weight.passed and no_weight.n_passed >= 1  # right when the weight is 1


# ---------------------------------------------------------------- residual
def test_residual_right_and_wrong():
    def right(x, sublayer, norm, norm_first):
        return x + sublayer(norm(x)) if norm_first else norm(x + sublayer(x))

    assert _run(ch06.check_residual, right).passed
    swapped = _run(ch06.check_residual, lambda x, f, n, nf: right(x, f, n, not nf))
    assert not swapped.passed and swapped.n_passed == 0
    no_residual = _run(ch06.check_residual, lambda x, f, n, nf: f(n(x)) if nf else n(f(x)))
    assert not no_residual.passed
    normed_residual = _run(ch06.check_residual, lambda x, f, n, nf: n(x) + f(n(x)) if nf else n(x + f(x)))
    assert not normed_residual.passed and "untouched" in _first_failure(normed_residual).hint
    always_post = _run(ch06.check_residual, lambda x, f, n, nf: n(x + f(x)))
    assert not always_post.passed and always_post.n_passed == 2


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

    for wrong in (per_beam, ignore_scores, transposed_index, float_indices):
        assert not _run(ch06.check_beam_step, wrong).passed, wrong.__name__
    report = _run(ch06.check_beam_step, ignore_scores)
    assert "scores[:, None] + log_probs" in _first_failure(report).hint


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

    def nan_when_empty(logits, targets, eps, pad_id):
        return _ls_right(logits, targets, eps, pad_id) * float("nan")

    report = _run(ch06.check_label_smoothing, no_padding)
    assert not report.passed and "pad_id" in _first_failure(report).hint
    report = _run(ch06.check_label_smoothing, eps_over_others)
    assert not report.passed and report.n_passed == 1  # only eps=0
    report = _run(ch06.check_label_smoothing, pad_is_zero)
    assert not report.passed and _first_failure(report).label.startswith("pad_id=5")
    assert not _run(ch06.check_label_smoothing, nan_when_empty).passed


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
