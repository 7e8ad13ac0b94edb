"""Number words, English to French, up to a billion: chapter 6's translation task.

Harder than chapter 1's English -> German (:mod:`transformer_book.data.numbers`) in three ways:

* longer: numbers up to 999,999,999, so up to 12 English words and 18 French ones;
* French counts in twenties from 70 to 99: 71 is "soixante et onze" (sixty and eleven),
  80 "quatre-vingts" (four twenties), 97 "quatre-vingt-dix-sept" (four twenty ten seven):
  one English word ("ninety") becomes up to three French ones, and which ones depends on
  the *next* English word;
* agreement: "quatre-vingts" and "deux cents" take an "s" only at the end of a number or
  before "millions" ("deux cents millions", but "deux cent mille", "deux cent un"),
  "million" becomes "millions" after two or more, "mille" never changes, "un" is dropped
  before "cent" and "mille" but not before "million".

The data is made by `num2words <https://pypi.org/project/num2words/>`_ (``lang="fr"``,
traditional spelling), so it is correct by construction and nothing is downloaded.
Tokenization: English as in chapter 1 (words; hyphens, commas and "and" dropped); French split
at spaces and hyphens. The hyphens are predictable (between two words below 100, except next
to "et"), so :func:`join_french` puts them back.

Splits are made **by number** (:func:`french_splits`): the test numbers never occur in
training. The numbers below 100 always go to training: they are the task's lexicon.
"""

from __future__ import annotations

from collections.abc import Sequence

from num2words import num2words

from transformer_book import _checks

from transformer_book.data.numbers import (ENGLISH_WORDS, NumberSplits, Vocab, sample_by_digit_count,
                                          split_numbers)

__all__ = [
    "MAX_VALUE",
    "ENGLISH_WORDS_BIG",
    "FRENCH_WORDS",
    "english_words_big",
    "french_text",
    "french_words",
    "join_french",
    "sample_numbers_big",
    "french_pairs",
    "french_splits",
    "english_vocab_big",
    "french_vocab",
    "encode_pairs",
    "batches",
]

MAX_VALUE = 999_999_999
"""Largest number of this task."""

ENGLISH_WORDS_BIG = ENGLISH_WORDS + ("million",)
"""Every word :func:`english_words_big` can produce."""

FRENCH_WORDS = (
    "zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf",
    "dix", "onze", "douze", "treize", "quatorze", "quinze", "seize",
    "vingt", "vingts", "trente", "quarante", "cinquante", "soixante",
    "et", "cent", "cents", "mille", "million", "millions",
)
"""Every token :func:`french_words` can produce."""

# Tokens that stand apart (a space on both sides): the multipliers and "et".
_SPACED = {"et", "cent", "cents", "mille", "million", "millions"}


def english_words_big(value: int) -> list[str]:
    """English words for ``0 <= value <= 999,999,999``, without "and", commas and hyphens.

    >>> english_words_big(2_000_021)
    ['two', 'million', 'twenty', 'one']
    """
    _checks.integer("value", value, 0, MAX_VALUE)
    text = num2words(value, lang="en").replace("-", " ").replace(",", " ")
    return [w for w in text.split() if w != "and"]


def french_text(value: int) -> str:
    """The French number, as num2words writes it: ``french_text(80) == "quatre-vingts"``."""
    return num2words(_checks.integer("value", value, 0, MAX_VALUE), lang="fr")


def french_words(value: int) -> list[str]:
    """The French side of a pair: :func:`french_text` split at spaces and hyphens.

    >>> french_words(97)
    ['quatre', 'vingt', 'dix', 'sept']
    """
    return french_text(value).replace("-", " ").split()


def join_french(tokens: Sequence[str]) -> str:
    """Glue French tokens back into the written number (the inverse of :func:`french_words`).

    Two neighbouring words below 100 are joined by a hyphen ("quatre-vingt-dix-sept"); "et",
    "cent(s)", "mille" and "million(s)" stand apart with spaces ("vingt et un", "deux cents").
    """
    if isinstance(tokens, str):
        raise TypeError("tokens must be a sequence of str, got a single str; pass ['quatre', 'vingts']")
    tokens = list(_checks.instance("tokens", tokens, Sequence, "sequence of str"))
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise TypeError(f"tokens[{i}] must be a str, got {type(t).__name__}")
    out = ""
    for i, t in enumerate(tokens):
        if i == 0:
            out = t
        elif t in _SPACED or tokens[i - 1] in _SPACED:
            out += " " + t
        else:
            out += "-" + t
    return out


def sample_numbers_big(n: int, max_value: int = MAX_VALUE, seed: int = 0) -> list[int]:
    """``n`` distinct numbers from ``0..max_value``, spread evenly over digit counts, shuffled.

    A uniform draw below a billion would be 90 % nine-digit numbers; here each digit count
    (1 to 9 digits) gets the same share, and one with fewer numbers than its share (there are
    only ten one-digit numbers) gives all of them and passes the rest on. Deterministic by ``seed``.
    """
    _checks.integer("max_value", max_value, 0, MAX_VALUE)
    _checks.integer("n", n, 0, max_value + 1)  # at most max_value + 1 distinct numbers
    _checks.integer("seed", seed, 0)
    return sample_by_digit_count(n, max_value, seed)


def french_pairs(numbers: Sequence[int]) -> list[tuple[list[str], list[str]]]:
    """(English words, French words) for each number."""
    if isinstance(numbers, str) or not isinstance(numbers, Sequence):
        raise TypeError(f"numbers must be a sequence of ints, got {_checks.describe(numbers)}")
    for i, x in enumerate(numbers):
        _checks.integer(f"numbers[{i}]", x, 0, MAX_VALUE)
    return [(english_words_big(x), french_words(x)) for x in numbers]


def french_splits(n_train: int, n_valid: int, n_test: int, max_value: int = MAX_VALUE, seed: int = 0,
                  train_below: int = 100) -> NumberSplits:
    """Train / validation / test pairs with no number in common (see the module docstring).

    Every drawn number below ``train_below`` goes to training (and counts towards ``n_train``).
    """
    for name, value in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        _checks.integer(name, value, 0)
    total = n_train + n_valid + n_test
    _checks.integer("max_value", max_value, 0, MAX_VALUE)
    _checks.integer("train_below", train_below, 0, max_value + 1)
    if total > max_value + 1:
        raise ValueError(f"n_train + n_valid + n_test = {total} must be <= max_value + 1 = {max_value + 1}")
    numbers = sample_numbers_big(total, max_value, seed)
    n_lexicon = sum(x < train_below for x in numbers)
    if n_lexicon > n_train:
        raise ValueError(f"n_train={n_train} must be at least the number of drawn numbers below "
                         f"train_below={train_below} ({n_lexicon})")
    train, valid, test = split_numbers(numbers, n_train, n_valid, train_below, seed)
    return NumberSplits(french_pairs(train), french_pairs(valid), french_pairs(test), train, valid, test)


def english_vocab_big() -> Vocab:
    """Source vocabulary: the specials and :data:`ENGLISH_WORDS_BIG` (34 tokens)."""
    return Vocab(ENGLISH_WORDS_BIG)


def french_vocab() -> Vocab:
    """Target vocabulary: the specials and :data:`FRENCH_WORDS` (32 tokens)."""
    return Vocab(FRENCH_WORDS)


def encode_pairs(pairs: Sequence[tuple[Sequence[str], Sequence[str]]], src_vocab: Vocab, tgt_vocab: Vocab):
    """``(src (N, S), tgt (N, T + 2))`` id tensors, right-padded; targets get ``<bos>`` and ``<eos>``."""
    if isinstance(pairs, str) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a non-empty list of (source words, target words), got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError("pairs must be a non-empty list of (source words, target words), got an empty one")
    _checks.instance("src_vocab", src_vocab, Vocab)
    _checks.instance("tgt_vocab", tgt_vocab, Vocab)
    src = src_vocab.encode_batch([s for s, _ in pairs])
    tgt = tgt_vocab.encode_batch([t for _, t in pairs], add_bos=True, add_eos=True)
    return src, tgt


def batches(src, tgt, batch_size: int, seed: int = 0, pad_id: int = 0):
    """Endless shuffled mini-batches ``(src (B, S), tgt (B, T))`` of two id tensors, padding columns trimmed.

    Each pass over the data is a new permutation drawn from ``seed``: the same seed gives the
    same batches in the same order.
    """
    _checks.token_ids("src", src, layout="(N, S)")
    _checks.token_ids("tgt", tgt, layout="(N, T)")
    batch_size = _checks.positive_int("batch_size", batch_size)
    _checks.integer("seed", seed)
    _checks.integer("pad_id", pad_id)
    if src.shape[0] != tgt.shape[0]:
        raise ValueError(f"src and tgt must have the same number of rows, got {tuple(src.shape)} and {tuple(tgt.shape)}")
    return _batches(src, tgt, batch_size, seed, pad_id)


def _batches(src, tgt, batch_size: int, seed: int, pad_id: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    n = src.shape[0]
    while True:
        order = torch.randperm(n, generator=g)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = order[start:start + batch_size]
            s, t = src[idx], tgt[idx]
            yield s[:, : int((s != pad_id).sum(1).max())], t[:, : int((t != pad_id).sum(1).max())]
