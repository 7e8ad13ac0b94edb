"""Number words, English to German: chapter 1's translation task.

The data is made on the spot by `num2words <https://pypi.org/project/num2words/>`_, so
nothing is downloaded and every example is correct by construction. A pair looks like::

    (["twenty", "four"], ["vier", "und", "zwanzig"])           # 24
    (["one", "thousand", "twenty", "four"],
     ["ein", "tausend", "vier", "und", "zwanzig"])              # 1,024

Tokenization, and why:

* **English** is split into words. ``num2words`` writes British English ("three hundred
  and seventy-two thousand, eight hundred and forty-five"); hyphens become spaces, and the
  commas and every "and" are dropped. Both are fully predictable from the other words (the
  "and" always sits after "hundred"/"thousand" before a number below 100), so they carry no
  information and would only make the sequences longer.
* **German** writes a number below a million as one long word
  ("dreihundertzweiundsiebzigtausendachthundertfünfundvierzig"). As a single token it would
  hide all structure, so it is cut into number morphemes by :func:`split_german`
  ("drei hundert zwei und siebzig tausend acht hundert fünf und vierzig").
  Units come *before* tens in German ("vier und zwanzig" for "twenty four"), which is what
  makes the alignment between the two languages cross. :func:`join_german` glues the
  morphemes back into the real word.

``num2words`` (0.5.x) writes "einstausend" for 101,000-101,999, 201,000-201,999, ...
("einhunderteinstausend"); standard German is "einhunderteintausend" ("eins" is only used
at the very end of a number). :func:`german_word` corrects this one slip.

The range is 0-999,999 (:data:`MAX_VALUE`): beyond it German number words contain spaces
and inflect ("eine Million", "zwei Millionen"), which this chapter does not need.

Splits are made **by number**: :func:`number_splits` draws distinct numbers, so a number in
the test split never appears, in either language, in the training split. The numbers below
100 always go to training: they are the words of the task ("zero" -> "null" appears in no
other number), which no model could guess.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from num2words import num2words

from transformer_book import _checks

__all__ = [
    "MAX_VALUE",
    "SUPPORTED_LANGS",
    "ENGLISH_WORDS",
    "GERMAN_MORPHEMES",
    "PAD",
    "BOS",
    "EOS",
    "english_words",
    "german_word",
    "split_german",
    "join_german",
    "german_morphemes",
    "sample_numbers",
    "number_pairs",
    "NumberSplits",
    "number_splits",
    "Vocab",
    "english_vocab",
    "german_vocab",
    "parse_number",
    "parse_english",
]

MAX_VALUE = 999_999
"""Largest number the data functions accept."""

SUPPORTED_LANGS = ("de",)
"""Target languages :func:`number_pairs` can make."""

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"

ENGLISH_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    "hundred", "thousand",
)
"""Every word :func:`english_words` can produce, in counting order."""

GERMAN_MORPHEMES = (
    "null", "ein", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun",
    "zehn", "elf", "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn",
    "achtzehn", "neunzehn",
    "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig",
    "und", "hundert", "tausend",
)
"""The pieces :func:`split_german` cuts a German number word into, in counting order.

Teens and tens stay whole ("vierzehn", "zwanzig"): each one translates one English word,
so the only place where the order differs is the "units und tens" pattern.
"""


# --------------------------------------------------------------------------- checks

# --------------------------------------------------------------------------- words

def english_words(value: int) -> list[str]:
    """The English words for ``value`` (0 <= value <= MAX_VALUE), without "and" and commas.

    >>> english_words(372_845)
    ['three', 'hundred', 'seventy', 'two', 'thousand', 'eight', 'hundred', 'forty', 'five']
    """
    _checks.integer("value", value, 0, MAX_VALUE)
    text = num2words(value, lang="en").replace("-", " ").replace(",", " ")
    return [w for w in text.split() if w != "and"]


def german_word(value: int) -> str:
    """The German number word for ``value``, as num2words writes it, with "einstausend" fixed.

    >>> german_word(24), german_word(101_000)
    ('vierundzwanzig', 'einhunderteintausend')
    """
    _checks.integer("value", value, 0, MAX_VALUE)
    return num2words(value, lang="de").replace("einstausend", "eintausend")


# Longest first, so that "dreizehn" wins over "drei" and "eins" over "ein".
_BY_LENGTH = sorted(GERMAN_MORPHEMES, key=len, reverse=True)


def split_german(word: str) -> list[str]:
    """Cut a German number word into morphemes, by greedy longest match.

    At each position take the longest morpheme of :data:`GERMAN_MORPHEMES` that the rest of
    the word starts with. For number words this greedy choice is always right: a unit word is
    never directly followed by a piece that would make it a longer morpheme ("sechs" is
    followed by "und", "hundert" or "tausend", never by "zehn").

    >>> split_german("vierundzwanzig")
    ['vier', 'und', 'zwanzig']
    """
    if not isinstance(word, str):
        raise TypeError(f"word must be a str, got {type(word).__name__}")
    if not word:
        raise ValueError("word must be a non-empty German number word, got ''")
    pieces, i = [], 0
    while i < len(word):
        for piece in _BY_LENGTH:
            if word.startswith(piece, i):
                pieces.append(piece)
                i += len(piece)
                break
        else:
            raise ValueError(
                f"word {word!r} is not a German number word: no morpheme of GERMAN_MORPHEMES "
                f"starts at position {i} ({word[i:]!r})"
            )
    return pieces


def join_german(morphemes: Sequence[str]) -> str:
    """Glue morphemes back into the German word (the inverse of :func:`split_german`).

    >>> join_german(["vier", "und", "zwanzig"])
    'vierundzwanzig'
    """
    if isinstance(morphemes, str):
        raise TypeError("morphemes must be a sequence of str, got a single str; "
                        "pass a list such as ['vier', 'und', 'zwanzig']")
    morphemes = list(_checks.instance("morphemes", morphemes, Iterable, "sequence of str"))
    for i, m in enumerate(morphemes):
        if not isinstance(m, str):
            raise TypeError(f"morphemes[{i}] must be a str, got {type(m).__name__}")
    return "".join(morphemes)


def german_morphemes(value: int) -> list[str]:
    """``split_german(german_word(value))``: the German side of a pair."""
    return split_german(german_word(value))


def parse_number(text: str) -> int | None:
    """The int written in ``text`` with digits ("372845", "372,845", "372 845"), else None."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    digits = text.strip().replace(",", "").replace("_", "").replace(" ", "").replace(".", "")
    return int(digits) if digits.isdigit() else None


_ENGLISH_VALUES = {w: i for i, w in enumerate(ENGLISH_WORDS[:20])}
_ENGLISH_VALUES.update({w: 10 * (i + 2) for i, w in enumerate(ENGLISH_WORDS[20:28])})


def parse_english(words: Sequence[str]) -> int:
    """The number that :func:`english_words` writes as ``words`` (its inverse).

    >>> parse_english(["one", "thousand", "twenty", "four"])
    1024

    A ValueError says so when ``words`` is not how :func:`english_words` writes any number
    ("four twenty", "hundred", an unknown word).
    """
    if isinstance(words, str) or not isinstance(words, Sequence):
        raise TypeError(f"words must be a list of str, got {type(words).__name__}")
    unknown = [w for w in words if w not in ENGLISH_WORDS]
    if unknown or not words:
        raise ValueError(f"words {list(words)!r} are not English number words (unknown: {unknown})")
    total, current = 0, 0
    for w in words:
        if w == "hundred":
            current *= 100
        elif w == "thousand":
            total, current = total + current * 1000, 0
        else:
            current += _ENGLISH_VALUES[w]
    value = total + current
    if value > MAX_VALUE or english_words(value) != list(words):
        raise ValueError(f"words {' '.join(words)!r} are not how a number from 0 to {MAX_VALUE:,} is written")
    return value


# --------------------------------------------------------------------------- sampling

def _strata(max_value: int) -> list[tuple[int, int]]:
    """The numbers 0..max_value grouped by digit count: [(0, 9), (10, 99), ...], clipped."""
    strata, low = [], 0
    while low <= max_value:
        high = min(max(9, low * 10 - 1), max_value)
        strata.append((low, high))
        low = high + 1
    return strata


def sample_numbers(n: int, max_value: int = MAX_VALUE, seed: int = 0) -> list[int]:
    """``n`` distinct numbers from 0..max_value, spread evenly over digit counts, shuffled.

    A uniform draw from 0..999,999 would be 90 % six-digit numbers and would almost never
    show the model "twenty four" on its own. Instead each digit count (1, 2, ..., 6 digits)
    gets the same share of ``n``; a digit count with fewer numbers than its share
    (there are only ten one-digit numbers) gives all of them and passes the rest on to the
    larger ones. Deterministic for a given ``seed``.
    """
    _checks.integer("max_value", max_value, 0, MAX_VALUE)
    _checks.integer("n", n, 0, max_value + 1)
    _checks.integer("seed", seed, 0)
    return sample_by_digit_count(n, max_value, seed)


def sample_by_digit_count(n: int, max_value: int, seed: int) -> list[int]:
    """The sampler behind :func:`sample_numbers` for any ``max_value`` (arguments not checked here).

    Chapter 6's numbers up to a billion (:mod:`transformer_book.data.numbers_fr`) use it too.
    """
    rng = random.Random(seed)
    strata = _strata(max_value)
    sizes = [high - low + 1 for low, high in strata]
    # Water-filling: small strata take everything, the rest is shared by the others.
    quota = [0] * len(strata)
    left, open_ = n, sorted(range(len(strata)), key=lambda s: sizes[s])
    while open_:
        share = left // len(open_)
        s = open_[0]
        if sizes[s] <= share:
            quota[s] = sizes[s]
            left -= sizes[s]
            open_.pop(0)
        else:
            # Every open stratum can take its share; hand out the remainder one by one.
            for k, s in enumerate(open_):
                quota[s] = share + (1 if k < left - share * len(open_) else 0)
            break
    numbers = []
    for (low, high), q in zip(strata, quota):
        numbers.extend(rng.sample(range(low, high + 1), q))
    rng.shuffle(numbers)
    return numbers


def _pairs(numbers: Iterable[int]) -> list[tuple[list[str], list[str]]]:
    return [(english_words(x), german_morphemes(x)) for x in numbers]


def number_pairs(
    n: int, lang: str = "de", max_value: int = MAX_VALUE, seed: int = 0
) -> list[tuple[list[str], list[str]]]:
    """``n`` pairs (English words, German morphemes) for distinct numbers from 0..max_value.

    Args:
        n: number of pairs, 0 <= n <= max_value + 1 (the numbers are distinct).
        lang: target language; only ``"de"`` (German).
        max_value: largest number, an int in [0, MAX_VALUE].
        seed: the same seed gives the same pairs in the same order.

    The numbers are drawn by :func:`sample_numbers` (even over digit counts). For train /
    validation / test sets that share no number use :func:`number_splits`.
    """
    _checks.one_of("lang", lang, SUPPORTED_LANGS)
    numbers = sample_numbers(n, max_value=max_value, seed=seed)
    return _pairs(numbers)


class NumberSplits(NamedTuple):
    """Train / validation / test pairs, disjoint by number, and the numbers themselves."""

    train: list[tuple[list[str], list[str]]]
    valid: list[tuple[list[str], list[str]]]
    test: list[tuple[list[str], list[str]]]
    train_numbers: list[int]
    valid_numbers: list[int]
    test_numbers: list[int]


def number_splits(
    n_train: int,
    n_valid: int,
    n_test: int,
    lang: str = "de",
    max_value: int = MAX_VALUE,
    seed: int = 0,
    train_below: int = 100,
) -> NumberSplits:
    """Three sets of pairs with no number in common.

    ``n_train + n_valid + n_test`` distinct numbers are drawn by :func:`sample_numbers`
    (even over digit counts) and cut into three parts, so the splits are disjoint by
    construction. Every drawn number below ``train_below`` goes to the training split (and
    counts towards ``n_train``): those numbers are the *lexicon* of the task. "zero" -> "null"
    occurs in no other number, and "eins" only in numbers that end in ...01, so a model that
    never saw them could not possibly produce them. ``train_below=0`` turns this off.
    The training pairs are shuffled; validation and test pairs keep the drawing order.
    """
    _checks.one_of("lang", lang, SUPPORTED_LANGS)
    for name, value in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        _checks.integer(name, value, 0)
    _checks.integer("max_value", max_value, 0, MAX_VALUE)
    _checks.integer("seed", seed, 0)
    _checks.integer("train_below", train_below, 0, max_value + 1)
    total = n_train + n_valid + n_test
    if total > max_value + 1:
        raise ValueError(
            f"n_train + n_valid + n_test must be <= max_value + 1 = {max_value + 1} "
            f"(the numbers are distinct), got {n_train} + {n_valid} + {n_test} = {total}"
        )
    numbers = sample_numbers(total, max_value=max_value, seed=seed)
    n_lexicon = sum(x < train_below for x in numbers)
    if n_lexicon > n_train:
        raise ValueError(
            f"n_train must be at least the number of drawn numbers below train_below={train_below} "
            f"({n_lexicon}), got {n_train}; raise n_train or lower train_below"
        )
    train, valid, test = split_numbers(numbers, n_train, n_valid, train_below, seed)
    return NumberSplits(_pairs(train), _pairs(valid), _pairs(test), train, valid, test)


def split_numbers(numbers: Sequence[int], n_train: int, n_valid: int, train_below: int, seed: int
                  ) -> tuple[list[int], list[int], list[int]]:
    """Cut drawn ``numbers`` into (train, valid, test), every number below ``train_below`` in train.

    The split rule behind :func:`number_splits` (and chapter 6's French splits); the caller has
    checked that the numbers below ``train_below`` fit into ``n_train``. Train is shuffled by
    ``seed``; valid and test keep the drawing order.
    """
    lexicon = [x for x in numbers if x < train_below]
    rest = [x for x in numbers if x >= train_below]
    k = n_train - len(lexicon)
    train = lexicon + rest[:k]
    random.Random(seed).shuffle(train)
    return train, rest[k:k + n_valid], rest[k + n_valid:]


# --------------------------------------------------------------------------- vocabularies

class Vocab:
    """Token <-> id, with ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, then ``tokens`` in order.

    There is no unknown-token id on purpose: the vocabularies of this chapter are closed,
    and an unknown token is an error that should be reported, not hidden.
    """

    def __init__(self, tokens: Iterable[str]):
        if isinstance(tokens, str):
            raise TypeError("tokens must be an iterable of str, got a single str")
        _checks.instance("tokens", tokens, Iterable, "iterable of str")
        self.itos: list[str] = [PAD, BOS, EOS]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        for t in tokens:
            _checks.instance("tokens[...]", t, str)
            if not t:
                raise ValueError("tokens must be non-empty str, got ''")
            if t not in self.stoi:
                self.stoi[t] = len(self.itos)
                self.itos.append(t)
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[str]]) -> Vocab:
        """The vocabulary of all tokens in ``sequences``, sorted (so order does not matter)."""
        return cls(sorted({t for seq in sequences for t in seq}))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __repr__(self) -> str:
        shown = ", ".join(self.itos[:8]) + (", ..." if len(self) > 8 else "")
        return f"Vocab({len(self)} tokens: {shown})"

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The tokens of ``tokens`` that are not in the vocabulary, in order, without repeats."""
        return list(dict.fromkeys(t for t in tokens if t not in self.stoi))

    def encode(self, tokens: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids for ``tokens``; a ValueError lists any unknown tokens."""
        if isinstance(tokens, str):
            raise TypeError(f"tokens must be a sequence of str, got the str {tokens!r}; split it first")
        missing = self.unknown(tokens)
        if missing:
            raise ValueError(f"unknown tokens {missing}; the vocabulary has {self.itos[3:]}")
        ids = [self.stoi[t] for t in tokens]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], strip_special: bool = True) -> list[str]:
        """Tokens for ``ids``. With ``strip_special``: stop at ``<eos>``, drop ``<bos>``/``<pad>``."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be 1-D, got a tensor of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        out = []
        for i in ids:
            if not isinstance(i, int) or not 0 <= i < len(self):
                raise ValueError(f"ids hold id {i!r}, outside the vocabulary [0, {len(self) - 1}]")
            if strip_special:
                if i == self.eos_id:
                    break
                if i in (self.pad_id, self.bos_id):
                    continue
            out.append(self.itos[i])
        return out

    def encode_batch(
        self, sequences: Sequence[Sequence[str]], add_bos: bool = False, add_eos: bool = False
    ) -> torch.Tensor:
        """A ``(B, T)`` LongTensor of ids, right-padded with ``pad_id`` to the longest sequence."""
        if isinstance(sequences, str) or len(sequences) == 0:
            raise ValueError(f"sequences must be a non-empty list of token lists, got {sequences!r}")
        rows = [self.encode(s, add_bos=add_bos, add_eos=add_eos) for s in sequences]
        width = max(len(r) for r in rows)
        if width == 0:
            raise ValueError("sequences are all empty; nothing to encode")
        batch = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for b, r in enumerate(rows):
            batch[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        return batch

    def decode_batch(self, batch: torch.Tensor, strip_special: bool = True) -> list[list[str]]:
        """Token lists for a ``(B, T)`` tensor of ids (see :meth:`decode`)."""
        if not isinstance(batch, torch.Tensor) or batch.dim() != 2:
            got = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(f"batch must be a 2-D tensor (B, T), got {got}")
        return [self.decode(row, strip_special=strip_special) for row in batch]


def english_vocab() -> Vocab:
    """Source vocabulary: the specials and :data:`ENGLISH_WORDS` (33 tokens)."""
    return Vocab(ENGLISH_WORDS)


def german_vocab() -> Vocab:
    """Target vocabulary: the specials and :data:`GERMAN_MORPHEMES` (35 tokens)."""
    return Vocab(GERMAN_MORPHEMES)
