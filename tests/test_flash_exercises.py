"""Chapter 9's exercise checkers: right solutions pass, typical wrong ones fail, stubs are "not done"."""

from __future__ import annotations

import torch

from transformer_book.exercises.ch09 import check_causal_block_kind, check_merge_attention, check_online_update

torch.set_num_threads(1)


def _not_done(*args):
    raise NotImplementedError("Exercise ex-09-...: write this function")


# ---- ex-09-online-update --------------------------------------------------------------


def online_update(m, l, x_block):
    m_new = torch.maximum(m, x_block.amax(dim=-1))
    ref = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    return m_new, l * torch.exp(m - ref) + torch.exp(x_block - ref.unsqueeze(-1)).sum(dim=-1)


def update_without_rescale(m, l, x_block):
    m_new = torch.maximum(m, x_block.amax(dim=-1))
    ref = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    return m_new, l + torch.exp(x_block - ref.unsqueeze(-1)).sum(dim=-1)


def update_nan_on_empty(m, l, x_block):
    m_new = torch.maximum(m, x_block.amax(dim=-1))
    return m_new, l * torch.exp(m - m_new) + torch.exp(x_block - m_new.unsqueeze(-1)).sum(dim=-1)


def update_without_max(m, l, x_block):  # plain sums of exponentials: overflows
    return torch.maximum(m, x_block.amax(dim=-1)), l + torch.exp(x_block).sum(dim=-1)


def test_online_update_checker():
    assert check_online_update(online_update, quiet=True).passed
    for wrong, case in [(update_without_rescale, "raises the max"), (update_nan_on_empty, "no NaN"),
                        (update_without_max, "overflow")]:
        report = check_online_update(wrong, quiet=True)
        assert not report.passed
        assert any(case in c.label and not c.passed for c in report.cases), [c.label for c in report.cases]
    assert check_online_update(_not_done, quiet=True).not_done


# ---- ex-09-causal-blocks --------------------------------------------------------------


def block_kind(q_start, q_stop, k_start, k_stop):
    if k_start >= q_stop:
        return "skip"
    if k_stop - 1 <= q_start:
        return "full"
    return "diagonal"


def test_block_kind_solution_agrees_with_brute_force():
    for q_start, q_stop, k_start, k_stop in [(0, 4, 0, 4), (3, 9, 0, 5), (2, 3, 0, 3), (0, 5, 5, 9), (6, 8, 2, 7)]:
        visible = torch.tensor([[j <= i for j in range(k_start, k_stop)] for i in range(q_start, q_stop)])
        want = "full" if visible.all() else "skip" if not visible.any() else "diagonal"
        assert block_kind(q_start, q_stop, k_start, k_stop) == want


def test_causal_block_kind_checker():
    assert check_causal_block_kind(block_kind, quiet=True).passed
    strict = lambda qs, qe, ks, ke: "skip" if ks >= qe else "full" if ke - 1 < qs else "diagonal"  # noqa: E731
    aligned = lambda qs, qe, ks, ke: "skip" if ks > qs else "full" if ks < qs else "diagonal"  # noqa: E731
    no_diagonal = lambda qs, qe, ks, ke: "skip" if ks >= qe else "full"  # noqa: E731
    for wrong, named in [(strict, "Off by one at the diagonal"), (aligned, "You compared where the tiles start"),
                         (no_diagonal, "return 'diagonal'")]:
        report = check_causal_block_kind(wrong, quiet=True)
        assert not report.passed and 0 < report.n_passed < len(report.cases)
        failure = next(c for c in report.cases if not c.passed)
        assert named in failure.hint, (wrong, failure.hint)
        assert "character" not in failure.reason and failure.reason.startswith("output is '")  # labels as labels
    assert check_causal_block_kind(_not_done, quiet=True).not_done


# ---- ex-09-merge-attention ------------------------------------------------------------


def merge_attention(o1, lse1, o2, lse2):
    lse = torch.logaddexp(lse1, lse2)
    ref = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    return torch.exp(lse1 - ref)[..., None] * o1 + torch.exp(lse2 - ref)[..., None] * o2, lse


def merge_average(o1, lse1, o2, lse2):
    return (o1 + o2) / 2, torch.logaddexp(lse1, lse2)


def merge_overflowing(o1, lse1, o2, lse2):
    w1, w2 = torch.exp(lse1), torch.exp(lse2)
    return (w1[..., None] * o1 + w2[..., None] * o2) / (w1 + w2)[..., None], torch.log(w1 + w2)


def merge_max_lse(o1, lse1, o2, lse2):
    return merge_attention(o1, lse1, o2, lse2)[0], torch.maximum(lse1, lse2)


def test_merge_attention_checker():
    assert check_merge_attention(merge_attention, quiet=True).passed
    for wrong, case in [(merge_average, "equal halves"), (merge_overflowing, "large scores"),
                        (merge_max_lse, "equal halves")]:
        report = check_merge_attention(wrong, quiet=True)
        assert not report.passed
        assert any(case in c.label and not c.passed for c in report.cases), [(c.label, c.passed) for c in report.cases]
    assert check_merge_attention(_not_done, quiet=True).not_done


# ---- ex-09-window-blocks (new) ---------------------------------------------------------


def test_window_block_kind_checker():
    from transformer_book.exercises.ch09 import _window_block_kind, check_window_block_kind

    def window_block_kind(q_start, q_stop, k_start, k_stop, window):
        visible = [i - window < j <= i for i in range(q_start, q_stop) for j in range(k_start, k_stop)]
        return "full" if all(visible) else "skip" if not any(visible) else "diagonal"

    assert check_window_block_kind(window_block_kind, quiet=True).passed
    assert check_window_block_kind(_window_block_kind, quiet=True).passed
    for wrong, named in [
        (lambda qs, qe, ks, ke, w: block_kind(qs, qe, ks, ke), "You ignored the window"),
        (lambda qs, qe, ks, ke, w: window_block_kind(qs, qe, ks, ke, w + 1), "Off by one at the window's edge"),
        (lambda qs, qe, ks, ke, w: "skip" if ks >= qe or ke - 1 <= qs - w else "full", "return 'diagonal'"),
    ]:
        report = check_window_block_kind(wrong, quiet=True)
        failure = next(c for c in report.cases if not c.passed)
        assert not report.passed and failure.reason.startswith("output is '"), report.text()
        assert named in failure.hint or named in report.text(), (named, report.text())
