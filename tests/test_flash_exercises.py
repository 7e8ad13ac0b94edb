"""Chapter 9's exercise checkers: right solutions pass, typical wrong ones fail, stubs are "not done"."""

from __future__ import annotations

import torch

from transformer_book.exercises.ch09 import (
    check_causal_block_kind,
    check_merge_attention,
    check_online_update,
    check_window_block_kind,
)

from exercise_helpers import first_failure

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


def update_inverted_rescale(m, l, x_block):
    m_new = torch.maximum(m, x_block.amax(dim=-1))
    ref = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    return m_new, l * torch.exp(ref - m).nan_to_num(0.0) + torch.exp(x_block - ref.unsqueeze(-1)).sum(dim=-1)


def update_block_max_only(m, l, x_block):  # forgets the running maximum
    m_new = x_block.amax(dim=-1)
    ref = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    return m_new, l * torch.exp(m - ref) + torch.exp(x_block - ref.unsqueeze(-1)).sum(dim=-1)


def test_online_update_checker():
    assert check_online_update(online_update, quiet=True).passed
    for wrong, case, named in [
        (update_without_rescale, "raises the max", "The old sum is not rescaled"),
        (update_nan_on_empty, "an all -inf block first", "-inf - (-inf) = NaN"),
        (update_without_max, "first block", "You summed exp(x) itself"),
        (update_inverted_rescale, "raises the max", "upside down"),
        (update_block_max_only, "below the max", "forgets the old one"),
    ]:
        report = check_online_update(wrong, quiet=True)
        failure = first_failure(report)
        assert not report.passed and case in failure.label, (wrong.__name__, failure.label)
        assert named in failure.hint, (wrong.__name__, report.text())
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


def test_causal_block_kind_refuses_visiting_every_pair():
    def by_the_mask(q_start, q_stop, k_start, k_stop):  # right on small tiles, cannot allocate a huge one
        visible = torch.arange(k_start, k_stop)[None, :] <= torch.arange(q_start, q_stop)[:, None]
        return "full" if visible.all() else "skip" if not visible.any() else "diagonal"

    def by_every_pair(q_start, q_stop, k_start, k_stop):  # right on small tiles, too slow on a huge one
        pairs = [(i, j) for i in range(q_start, q_stop) for j in range(k_start, k_stop)]
        visible = [j <= i for i, j in pairs]
        return "full" if all(visible) else "skip" if not any(visible) else "diagonal"

    for wrong, reason in [(by_the_mask, "can't allocate memory"), (by_every_pair, "did not return within")]:
        report = check_causal_block_kind(wrong, quiet=True)
        failure = first_failure(report)
        assert report.n_passed == len(report.cases) - 1 and failure.label.startswith("a tile of 10^7")
        assert reason in failure.reason and "four integers" in failure.hint, report.text()


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


def merge_swapped(o1, lse1, o2, lse2):
    o, lse = merge_attention(o2, lse1, o1, lse2)
    return o, lse


def merge_unguarded(o1, lse1, o2, lse2):  # NaN when both parts are empty
    lse = torch.logaddexp(lse1, lse2)
    return torch.exp(lse1 - lse)[..., None] * o1 + torch.exp(lse2 - lse)[..., None] * o2, lse


def test_merge_attention_checker():
    assert check_merge_attention(merge_attention, quiet=True).passed
    for wrong, case, named in [
        (merge_average, "equal halves", "A plain average"),
        (merge_overflowing, "large scores", "never exponentiate an lse on its own"),
        (merge_max_lse, "equal halves", "not the larger of the two"),
        (merge_swapped, "equal halves", "The weights are swapped"),
        (merge_unguarded, "both parts empty", "-inf - (-inf) = NaN"),
    ]:
        report = check_merge_attention(wrong, quiet=True)
        failure = first_failure(report)
        assert not report.passed and case in failure.label, (wrong.__name__, failure.label)
        assert named in failure.hint, (wrong.__name__, report.text())
    assert check_merge_attention(_not_done, quiet=True).not_done


# ---- ex-09-window-blocks (new) ---------------------------------------------------------


def window_block_kind(q_start, q_stop, k_start, k_stop, window):
    # j - i over the tile runs from k_start - (q_stop - 1) up to (k_stop - 1) - q_start
    lowest, highest = k_start - (q_stop - 1), (k_stop - 1) - q_start
    if lowest > 0 or highest <= -window:
        return "skip"
    if highest <= 0 and lowest > -window:
        return "full"
    return "diagonal"


def window_by_every_pair(q_start, q_stop, k_start, k_stop, window):
    visible = [i - window < j <= i for i in range(q_start, q_stop) for j in range(k_start, k_stop)]
    return "full" if all(visible) else "skip" if not any(visible) else "diagonal"


def test_window_block_kind_checker():
    assert check_window_block_kind(window_block_kind, quiet=True).passed
    for q_start, q_stop, k_start, k_stop, window in [(8, 12, 0, 4, 4), (8, 12, 4, 8, 8), (8, 12, 5, 6, 4),
                                                     (0, 4, 0, 4, 1), (3, 9, 0, 5, 3), (20, 24, 2, 19, 6)]:
        assert window_block_kind(q_start, q_stop, k_start, k_stop, window) == window_by_every_pair(
            q_start, q_stop, k_start, k_stop, window)
    for wrong, named in [
        (lambda qs, qe, ks, ke, w: block_kind(qs, qe, ks, ke), "You ignored the window"),
        (lambda qs, qe, ks, ke, w: window_block_kind(qs, qe, ks, ke, w + 1), "Off by one at the window's edge"),
        (lambda qs, qe, ks, ke, w: "skip" if ks >= qe or ke - 1 <= qs - w else "full", "return 'diagonal'"),
    ]:
        report = check_window_block_kind(wrong, quiet=True)
        failure = first_failure(report)
        assert not report.passed and failure.reason.startswith("output is '"), report.text()
        assert named in failure.hint, (named, report.text())
    report = check_window_block_kind(window_by_every_pair, quiet=True)
    failure = first_failure(report)
    assert report.n_passed == len(report.cases) - 1 and "did not return within" in failure.reason
    assert "four integers" in failure.hint
    assert check_window_block_kind(_not_done, quiet=True).not_done
