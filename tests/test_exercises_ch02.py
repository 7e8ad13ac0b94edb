"""Chapter 2's checkers: right answers pass, typical wrong answers fail with a useful line."""

from __future__ import annotations

from collections import Counter

from transformer_book.exercises.ch02 import (
    _encode_chunk_reference,
    check_count_pairs,
    check_encode_chunk,
    check_merge_pair,
    check_wordpiece,
)
from transformer_book.tokenize import BPETokenizer

from exercise_helpers import first_failure as _first_failure


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


def count_pairs_only_presence(ids):
    return {pair: 1 for pair in zip(ids, ids[1:])}


def count_pairs_lists(ids):
    return {f"{a},{b}": n for (a, b), n in count_pairs_right(ids).items()}


def count_pairs_todo(ids):
    raise NotImplementedError("Exercise ex-02-count-pairs: count the pairs")


def test_count_pairs_checker():
    assert check_count_pairs(count_pairs_right, quiet=True).passed
    assert check_count_pairs(count_pairs_counter, quiet=True).passed  # a Counter is a dict
    for wrong, named in [(count_pairs_no_overlap, "Overlapping occurrences were skipped"),
                         (count_pairs_misses_last, "The last pair is missing"),
                         (count_pairs_only_presence, "Every pair got the count 1")]:
        report = check_count_pairs(wrong, quiet=True)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, _verdict(report))
    report = check_count_pairs(count_pairs_no_overlap, quiet=True)
    assert "overlapping" in _verdict(report) and "(5, 5)" in _verdict(report)
    report = check_count_pairs(count_pairs_lists, quiet=True)  # str keys: the comparison names them
    assert not report.passed and "must be (left, right) tuples" in _first_failure(report).reason
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
    assert "the pair's second id was kept" in _first_failure(check_merge_pair(merge_overlapping, quiet=True)).hint
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
    # whatever the mistake, the hint of the main case says merges apply in the order they were learned
    def encode_first_occurrence_only(data, merges):
        ids = list(data)
        for a, b, new in merges:
            i = next((i for i in range(len(ids) - 1) if ids[i : i + 2] == [a, b]), None)
            if i is not None:
                ids[i : i + 2] = [new]
        return ids

    report = check_encode_chunk(encode_first_occurrence_only, quiet=True)
    assert "in the order they were learned" in _first_failure(report).hint
    for wrong, named in [(encode_leftmost_first, "You merged the leftmost known pair first"),
                         (encode_reversed, "last-learned first"),
                         (encode_one_pass, "Only the first merge was applied"),
                         (encode_characters, "Work on the bytes")]:
        assert named in _verdict(check_encode_chunk(wrong, quiet=True)), wrong.__name__


def test_encode_chunk_reference_agrees_with_the_tokenizer():
    text = "def __init__(self, name):\n        self.name = name\n" * 20
    tok = BPETokenizer(pattern=None).train(text, 300)
    assert _encode_chunk_reference(text.encode(), tok.merges) == tok.encode(text)


# ---------------------------------------------------------------------------------- WordPiece
VOCAB = {"un", "##aff", "##able", "able", "a", "##a", "##b"}


def wordpiece_right(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            candidate = ("##" if start else "") + word[start:end]
            if candidate in vocab:
                break
            end -= 1
        if end == start:  # nothing in the vocabulary starts here
            return ["[UNK]"]
        pieces.append(candidate)
        start = end
    return pieces


def wordpiece_shortest_first(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            if (("##" if start else "") + word[start:end]) in vocab:
                pieces.append(("##" if start else "") + word[start:end])
                start = end
                break
        else:
            return ["[UNK]"]
    return pieces


def wordpiece_no_prefix(word, vocab):
    plain = {p.removeprefix("##") for p in vocab}
    pieces, start = [], 0
    while start < len(word):
        end = next((e for e in range(len(word), start, -1) if word[start:e] in plain), None)
        if end is None:
            return ["[UNK]"]
        pieces.append(word[start:end])
        start = end
    return pieces


def wordpiece_unk_piece(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        end = next((e for e in range(len(word), start, -1) if (("##" if start else "") + word[start:e]) in vocab),
                   None)
        if end is None:
            return pieces + ["[UNK]"]
        pieces.append(("##" if start else "") + word[start:end])
        start = end
    return pieces


def test_wordpiece_checker():
    assert wordpiece_right("unaffable", VOCAB | {"##ff"}) == ["un", "##aff", "##able"]
    assert check_wordpiece(wordpiece_right, quiet=True).passed
    for wrong, named in [(wordpiece_shortest_first, "shortest piece first"), (wordpiece_no_prefix, "'##' prefix"),
                         (wordpiece_unk_piece, "the whole word becomes ['[UNK]']")]:
        report = check_wordpiece(wrong, quiet=True)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())
    report = check_wordpiece(lambda word, vocab: list(word), quiet=True)  # characters, no lookup at all
    assert not report.passed
