"""Checkers for the exercises of chapter 2 (tokenization).

Each ``check_*`` runs the learner's function on a handful of cases, compares it with the book's
implementation in :mod:`transformer_book.tokenize`, prints a short verdict and returns a
:class:`~transformer_book.exercises.core.CheckReport`.
"""

from __future__ import annotations

from transformer_book.exercises.core import Case, CheckReport, check_function
from transformer_book.tokenize import count_pairs, merge_pair

__all__ = ["check_count_pairs", "check_merge_pair", "check_encode_chunk", "check_wordpiece"]


def _count_pairs_reference(ids):
    return count_pairs(ids)


def _as_plain_dict(expected, received):
    """Accept a dict or a collections.Counter with the same items; say what differs otherwise."""
    if not isinstance(received, dict):
        return f"output is a {type(received).__name__}; expected a dict {{(left, right): count}}"
    odd = next((k for k in received if not (isinstance(k, tuple) and len(k) == 2)), None)
    if odd is not None:
        return (f"output has the key {odd!r} ({type(odd).__name__}); the keys must be (left, right) tuples "
                f"of ids, e.g. (5, 5)")
    received = {k: v for k, v in received.items() if v != 0}  # a Counter may hold zeros
    if received == expected:
        return None
    for pair, n in expected.items():
        if received.get(pair) != n:
            return f"the count of pair {pair} is {received.get(pair, 'missing')}; expected {n}"
    extra = next(p for p in received if p not in expected)
    return f"output holds the pair {extra!r}, which does not occur (or is not a (left, right) tuple)"


def check_count_pairs(fn, *, quiet: bool = False) -> CheckReport:
    """ex-02-count-pairs: ``fn(ids) -> {(a, b): count}`` over adjacent pairs, overlaps included."""
    overlap_hint = ("Every adjacent pair counts, overlapping ones too: [5, 5, 5] has the pair (5, 5) "
                    "twice, at positions 0-1 and 1-2. Use zip(ids, ids[1:]).")
    cases = [
        Case(args=([1, 2, 3, 1, 2, 3],), label="[1, 2, 3, 1, 2, 3]", hint="(1, 2) and (2, 3) occur twice."),
        Case(args=([5, 5, 5],), label="overlapping [5, 5, 5]", hint=overlap_hint),
        Case(args=([7, 8],), label="two ids", hint="The last pair ends at the last id: n ids have n - 1 pairs."),
        Case(args=([4],), label="one id (no pairs)", hint="Fewer than two ids: return an empty dict."),
        Case(args=([],), label="empty list", hint="Fewer than two ids: return an empty dict."),
        Case(args=(list(b"the cat sat on the mat"),), label="bytes of 'the cat sat on the mat'",
             hint="Keys are tuples (left, right) of ints, values how often they occur."),
    ]
    mistakes = [
        (_count_without_overlap, "Overlapping occurrences were skipped: counting is not merging. Every "
                                 "adjacent pair counts, so [5, 5, 5] holds (5, 5) twice (positions 0-1 and 1-2)."),
        (lambda ids: count_pairs(ids[:-1]), "The last pair is missing: n ids have n - 1 pairs, the last one "
                                            "(ids[-2], ids[-1])."),
        (lambda ids: dict.fromkeys(zip(ids, ids[1:]), 1), "Every pair got the count 1: count how many times "
                                                          "each pair occurs, not only whether it does."),
    ]
    return check_function(fn, reference=_count_pairs_reference, cases=cases, exercise="ex-02-count-pairs",
                          compare=_as_plain_dict, quiet=quiet, mistakes=mistakes)


def _count_without_overlap(ids):  # a known mistake: after a pair of equal ids, skip both
    counts, i = {}, 0
    while i + 1 < len(ids):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
        i += 2 if pair[0] == pair[1] else 1
    return counts


def _merge_overlapping(ids, pair, new_id):  # a known mistake: after a match, steps one id only
    out = list(ids)
    for i in range(len(out) - 1):
        if (out[i], out[i + 1]) == tuple(pair):
            out[i] = new_id
            out[i + 1] = None
    return [x for x in out if x is not None]


def _merge_drops_last(ids, pair, new_id):  # a known mistake: the loop stops one id early
    out, i = [], 0
    while i + 1 < len(ids):
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_keeps_second(ids, pair, new_id):  # a known mistake: after a match, the second id is kept
    out = []
    for i, x in enumerate(ids):
        out.append(new_id if (x, *ids[i + 1:i + 2]) == tuple(pair) else x)
    return out


def check_merge_pair(fn, *, quiet: bool = False) -> CheckReport:
    """ex-02-merge-pair: ``fn(ids, pair, new_id) -> list``, every occurrence replaced left to right."""
    greedy_hint = ("Scan left to right; after a match, jump over both ids (i += 2), so occurrences "
                   "do not overlap: [5, 5, 5] with (5, 5) -> [9, 5].")
    cases = [
        Case(args=([1, 2, 3, 1, 2], (1, 2), 9), label="two occurrences", hint=greedy_hint),
        Case(args=([5, 5, 5], (5, 5), 9), label="overlapping [5, 5, 5]", hint=greedy_hint),
        Case(args=([5, 5, 5, 5], (5, 5), 9), label="[5, 5, 5, 5]", hint=greedy_hint),
        Case(args=([1, 3, 2], (1, 2), 9), label="no occurrence (1 and 2 not adjacent)",
             hint="Only adjacent ids form a pair."),
        Case(args=([3, 1, 2], (1, 2), 9), label="pair at the end",
             hint="Check i + 1 < len(ids) before looking at ids[i + 1], and keep the last id."),
        Case(args=([1, 2, 1], (1, 2), 9), label="last id left over",
             hint="When the scan stops one short of the end, append the last id."),
        Case(args=([2, 1], (1, 2), 9), label="pair in the wrong order", hint="(1, 2) is not (2, 1)."),
        Case(args=([], (1, 2), 9), label="empty list", hint="Nothing to merge: return []."),
    ]
    mistakes = [
        (_merge_drops_last, "The last id is missing: when the scan stops one short of the end (no pair "
                            "starts there), append the last id too."),
        (_merge_overlapping, "Occurrences overlapped: after a match, jump over both ids (i += 2), so "
                             "[5, 5, 5] with (5, 5) gives [9, 5], not [9, 9]."),
        (_merge_keeps_second, "After a match the pair's second id was kept: the new id replaces both ids "
                              "of the pair, so jump over both (i += 2)."),
    ]
    return check_function(fn, reference=merge_pair, cases=cases, exercise="ex-02-merge-pair", quiet=quiet,
                          mistakes=mistakes)


def _encode_chunk_reference(data, merges):
    ids = list(data)
    for a, b, new_id in merges:  # rank order = the order of the list
        ids = merge_pair(ids, (a, b), new_id)
    return ids


def _encode_leftmost(data, merges):  # a known mistake: merge the leftmost known pair first
    lookup = {(a, b): new for a, b, new in merges}
    ids = list(data)
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) in lookup:
            ids[i:i + 2] = [lookup[(ids[i], ids[i + 1])]]
            i = 0
        else:
            i += 1
    return ids


def _encode_reversed(data, merges):  # a known mistake: the last-learned merge first
    return _encode_chunk_reference(data, list(reversed(merges)))


def _encode_first_only(data, merges):  # a known mistake: only the first merge
    return _encode_chunk_reference(data, merges[:1])


def check_encode_chunk(fn, *, quiet: bool = False) -> CheckReport:
    """ex-02-encode-chunk: ``fn(data: bytes, merges: list[(a, b, new_id)]) -> list[int]``."""
    rank_hint = ("Merges must be applied in the order they were learned: the pair learned first goes first, "
                 "wherever it is in the text — not the leftmost pair.")
    worked = [(97, 97, 256), (97, 98, 257), (256, 257, 258)]  # 'aa', 'ab', 'aaab'
    cases = [
        Case(args=(b"hello", []), label="no merges", hint="With no merges every byte is a token: list(data)."),
        Case(args=(b"", worked), label="empty bytes", hint="Nothing to encode: return []."),
        Case(args=(b"aaabdaaabac", worked), label="the worked example 'aaabdaaabac'",
             hint="Start from list(data); apply the merges in the order they were learned (the order of "
                  "the list), each one to the whole sequence before the next."),
        Case(args=(b"abc", [(98, 99, 256), (97, 98, 257)]), label="'abc' where 'bc' was learned before 'ab'",
             hint=rank_hint),
        Case(args=(b"aaa", [(97, 97, 256), (256, 97, 257)]), label="'aaa' with 'aa' then 'aa'+'a'",
             hint="A merge can use a token made by an earlier merge: apply them one after another."),
        Case(args=("héé".encode(), [(0xC3, 0xA9, 256), (256, 256, 257)]), label="UTF-8 bytes of 'héé'",
             hint="Work on the bytes, not the characters."),
    ]
    mistakes = [
        (_encode_leftmost, "You merged the leftmost known pair first. Merges apply in the order they were "
                           "learned: the pair learned first goes first, wherever it is in the text."),
        (_encode_reversed, "You applied the merges last-learned first. Merges apply in the order they were "
                           "learned: merges[0] first, then merges[1], ..."),
        (_encode_first_only, "Only the first merge was applied: apply every merge of the list, in the order "
                             "they were learned, each to the whole sequence."),
    ]
    return check_function(fn, reference=_encode_chunk_reference, cases=cases, exercise="ex-02-encode-chunk",
                          quiet=quiet, mistakes=mistakes)


def _wordpiece_reference(word, vocab, unk="[UNK]"):
    # Longest match first, left to right; pieces after the first carry the "##" prefix.
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return [unk]  # no piece fits here: the whole word is unknown
    return pieces


def check_wordpiece(fn, *, quiet: bool = False) -> CheckReport:
    """ex-02-wordpiece: ``fn(word, vocab) -> list[str]``, WordPiece's greedy longest-match-first split
    (BERT's tokenizer; a variant the chapter does not build): continuation pieces start with "##",
    and a word that cannot be covered becomes ``["[UNK]"]``."""
    vocab = {"un", "##aff", "##able", "##a", "##ff", "aff", "able", "a", "##b", "##l", "##e", "u", "##n"}
    cases = [
        Case(args=("unaffable", vocab), label="'unaffable'",
             hint="At each position take the longest piece in the vocabulary: un, ##aff, ##able."),
        Case(args=("able", vocab), label="a whole word in the vocabulary", hint="'able' is one piece."),
        Case(args=("ab", {"a", "ab", "##b"}), label="'ab' with both 'ab' and 'a' + '##b'",
             hint="Longest match first: 'ab' beats 'a' + '##b'."),
        Case(args=("unx", vocab), label="a word that cannot be covered",
             hint="When no piece fits at some position the whole word is ['[UNK]'], not a partial split."),
        Case(args=("aable", vocab), label="'aable': 'able' only as a continuation",
             hint="After the first piece, look up '##' + the rest: 'able' is not '##able'."),
        Case(args=("", vocab), label="empty word", hint="No characters: no pieces, []."),
    ]
    mistakes = [
        (lambda w, v: _shortest_first(w, v), "You took the shortest piece first: WordPiece takes the longest "
                                              "piece in the vocabulary at each position."),
        (lambda w, v: _no_hashes(w, v), "Continuation pieces carry the '##' prefix: after the first piece, "
                                        "look up '##' + the substring."),
        (lambda w, v: _partial_unk(w, v), "When no piece fits, the whole word becomes ['[UNK]'], not the pieces "
                                          "found so far plus '[UNK]'."),
    ]
    return check_function(fn, reference=_wordpiece_reference, cases=cases, exercise="ex-02-wordpiece",
                          quiet=quiet, mistakes=mistakes)


def _shortest_first(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return ["[UNK]"]
    return pieces


def _no_hashes(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            if word[start:end] in vocab:
                pieces.append(word[start:end])
                start = end
                break
        else:
            return ["[UNK]"]
    return pieces


def _partial_unk(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return pieces + ["[UNK]"]
    return pieces
