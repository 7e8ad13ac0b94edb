"""Chapter 2's checkers: right answers pass, typical wrong answers fail with a useful line."""

from __future__ import annotations

from collections import Counter

from transformer_book.exercises.ch02 import _encode_chunk_reference, check_count_pairs, check_encode_chunk, check_merge_pair
from transformer_book.tokenize import BPETokenizer


def _verdict(report) -> str:
    return report.text()


# ---------------------------------------------------------------------------------- count pairs
def count_pairs_right(ids):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def count_pairs_counter(ids):
    return Counter(zip(ids, ids[1:]))


def count_pairs_no_overlap(ids):
    counts, i = {}, 0
    while i + 1 < len(ids):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
        i += 2 if pair[0] == pair[1] else 1
    return counts


def count_pairs_misses_last(ids):
    return count_pairs_right(ids[:-1])


def count_pairs_lists(ids):
    return {f"{a},{b}": n for (a, b), n in count_pairs_right(ids).items()}


def count_pairs_todo(ids):
    raise NotImplementedError("Exercise ex-02-count-pairs: count the pairs")


def test_count_pairs_checker():
    assert check_count_pairs(count_pairs_right, quiet=True).passed
    assert check_count_pairs(count_pairs_counter, quiet=True).passed  # a Counter is a dict
    for wrong in (count_pairs_no_overlap, count_pairs_misses_last, count_pairs_lists):
        report = check_count_pairs(wrong, quiet=True)
        assert not report.passed and "FAILED" in _verdict(report), wrong.__name__
    report = check_count_pairs(count_pairs_no_overlap, quiet=True)
    assert "overlapping" in _verdict(report) and "(5, 5)" in _verdict(report)
    assert check_count_pairs(count_pairs_todo, quiet=True).not_done


# ---------------------------------------------------------------------------------- merge pair
def merge_right(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_overlapping(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
        else:
            out.append(ids[i])
        i += 1
    return out


def merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i + 1 < len(ids):
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_in_place(ids, pair, new_id):
    i = 0
    while i + 1 < len(ids):
        if (ids[i], ids[i + 1]) == tuple(pair):
            ids[i : i + 2] = [new_id]
        i += 1
    return ids


def test_merge_pair_checker():
    assert check_merge_pair(merge_right, quiet=True).passed
    for wrong in (merge_overlapping, merge_drops_last, merge_in_place):
        report = check_merge_pair(wrong, quiet=True)
        assert not report.passed and "FAILED" in _verdict(report), wrong.__name__
    assert "i += 2" in _verdict(check_merge_pair(merge_overlapping, quiet=True))
    in_place = _verdict(check_merge_pair(merge_in_place, quiet=True))
    assert "changed its input `ids` in place" in in_place and "before:   ids = " in in_place
    hint = next(line for line in in_place.splitlines() if line.strip().startswith("hint:"))
    assert "after:    ids = " in in_place and "Your function changed `ids`" in hint and "overlap" not in hint
    assert "append the last id" in _verdict(check_merge_pair(merge_drops_last, quiet=True))


# ---------------------------------------------------------------------------------- encode chunk
def encode_right(data, merges):
    ranks = {(a, b): (r, new) for r, (a, b, new) in enumerate(merges)}
    ids = list(data)
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, (float("inf"),))[0])
        if pair not in ranks:
            break
        ids = merge_right(ids, pair, ranks[pair][1])
    return ids


def encode_leftmost_first(data, merges):
    lookup = {(a, b): new for a, b, new in merges}
    ids, changed = list(data), True
    while changed:
        changed = False
        for i in range(len(ids) - 1):
            if (ids[i], ids[i + 1]) in lookup:
                ids = ids[:i] + [lookup[(ids[i], ids[i + 1])]] + ids[i + 2 :]
                changed = True
                break
    return ids


def encode_one_pass(data, merges):
    ids = list(data)
    for a, b, new in merges[:1]:
        ids = merge_right(ids, (a, b), new)
    return ids


def encode_reversed(data, merges):
    ids = list(data)
    for a, b, new in reversed(merges):
        ids = merge_right(ids, (a, b), new)
    return ids


def encode_characters(data, merges):
    ids = [ord(c) for c in data.decode()]
    for a, b, new in merges:
        ids = merge_right(ids, (a, b), new)
    return ids


def test_encode_chunk_checker():
    assert check_encode_chunk(encode_right, quiet=True).passed
    for wrong in (encode_leftmost_first, encode_one_pass, encode_reversed, encode_characters):
        report = check_encode_chunk(wrong, quiet=True)
        assert not report.passed and "FAILED" in _verdict(report), wrong.__name__
    assert "learned first" in _verdict(check_encode_chunk(encode_leftmost_first, quiet=True))
    for wrong, named in [(encode_leftmost_first, "You merged the leftmost known pair first"),
                         (encode_reversed, "last-learned first"),
                         (encode_one_pass, "Only the first merge was applied"),
                         (encode_characters, "Work on the bytes")]:
        assert named in _verdict(check_encode_chunk(wrong, quiet=True)), wrong.__name__


def test_encode_chunk_reference_agrees_with_the_tokenizer():
    text = "def __init__(self, name):\n        self.name = name\n" * 20
    tok = BPETokenizer(pattern=None).train(text, 300)
    assert _encode_chunk_reference(text.encode(), tok.merges) == tok.encode(text)


# ---------------------------------------------------------------------------------- wordpiece (new)
def test_wordpiece_checker():
    from transformer_book.exercises.ch02 import (
        _no_hashes,
        _partial_unk,
        _shortest_first,
        _wordpiece_reference,
        check_wordpiece,
    )

    assert check_wordpiece(_wordpiece_reference, quiet=True).passed
    for wrong, named in [(_shortest_first, "shortest piece first"), (_no_hashes, "'##' prefix"),
                         (_partial_unk, "the whole word becomes ['[UNK]']")]:
        report = check_wordpiece(wrong, quiet=True)
        failure = next(c for c in report.cases if not c.passed)
        assert not report.passed and named in failure.hint, (wrong.__name__, report.text())
    report = check_wordpiece(lambda word, vocab: list(word), quiet=True)  # characters, no lookup at all
    assert not report.passed
