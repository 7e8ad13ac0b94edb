"""Tests for transformer_book.data.numbers: the English->German number-word data of chapter 1."""

from __future__ import annotations

import random

import pytest
import torch
from num2words import num2words

from transformer_book.data.numbers import (
    BOS,
    ENGLISH_WORDS,
    EOS,
    GERMAN_MORPHEMES,
    MAX_VALUE,
    PAD,
    Vocab,
    english_vocab,
    english_words,
    german_morphemes,
    german_word,
    german_vocab,
    join_german,
    number_pairs,
    number_splits,
    parse_english,
    parse_number,
    sample_numbers,
    split_german,
)

# All numbers below 1,200, a spread of larger ones and the num2words slip's range: every
# morpheme pattern shows up. num2words is slow (~0.2 ms a call), so each is computed once.
NUMBERS = sorted(
    set(range(1_200))
    | set(random.Random(1).sample(range(1_200, MAX_VALUE + 1), 1_500))
    | {101_000, 101_001, 201_999, 901_017, 11_000, 17_017, 100_000, 999_000, MAX_VALUE}
)


@pytest.fixture(scope="module")
def table():
    """number -> (num2words en, num2words de, english_words, german_word)."""
    return {
        x: (num2words(x, lang="en"), num2words(x, lang="de"), english_words(x), german_word(x))
        for x in NUMBERS
    }


def test_examples_from_the_chapter():
    assert english_words(24) == ["twenty", "four"]
    assert german_morphemes(24) == ["vier", "und", "zwanzig"]
    assert german_morphemes(1024) == ["ein", "tausend", "vier", "und", "zwanzig"]
    assert english_words(372_845) == "three hundred seventy two thousand eight hundred forty five".split()
    assert german_morphemes(372_845) == "drei hundert zwei und siebzig tausend acht hundert fünf und vierzig".split()
    assert german_morphemes(0) == ["null"] and english_words(0) == ["zero"]
    assert german_morphemes(1) == ["eins"] and german_morphemes(101) == ["ein", "hundert", "eins"]
    assert german_morphemes(17) == ["siebzehn"] and german_morphemes(77) == ["sieben", "und", "siebzig"]


def test_english_words_match_num2words_without_and_and_commas(table):
    for x, (en, _, words, _) in table.items():
        reference = en.replace(",", "").replace("-", " ").split()
        assert words == [w for w in reference if w != "and"], x


def test_german_word_is_num2words_except_the_einstausend_slip(table):
    slips = 0
    for x, (_, ref, _, word) in table.items():
        if (x // 1000) % 100 == 1 and x >= 101_000:  # 101,xxx  201,xxx ... 901,xxx
            assert "einstausend" in ref and word == ref.replace("einstausend", "eintausend"), x
            slips += 1
        else:
            assert word == ref, x
    assert slips >= 4
    assert german_word(101_000) == "einhunderteintausend"
    assert german_word(1_000) == "eintausend"


def test_split_then_join_gives_the_word_back_and_uses_only_known_morphemes(table):
    seen = set()
    for x, (_, _, _, word) in table.items():
        pieces = split_german(word)
        assert join_german(pieces) == word, x
        assert set(pieces) <= set(GERMAN_MORPHEMES), x
        seen |= set(pieces)
    assert seen == set(GERMAN_MORPHEMES)
    assert set(w for _, _, words, _ in table.values() for w in words) == set(ENGLISH_WORDS)


def test_split_german_longest_match_and_errors():
    assert split_german("dreizehntausenddrei") == ["dreizehn", "tausend", "drei"]
    assert split_german("sechsundsechzig") == ["sechs", "und", "sechzig"]
    assert split_german("einhunderteins") == ["ein", "hundert", "eins"]
    with pytest.raises(ValueError, match="'zwanzigx'.*position 7"):
        split_german("zwanzigx")
    with pytest.raises(ValueError, match="non-empty"):
        split_german("")
    with pytest.raises(TypeError, match="int"):
        split_german(24)
    with pytest.raises(TypeError, match="single str"):
        join_german("vierundzwanzig")


def test_units_come_before_tens_in_german():
    """The crossing alignment the chapter is about: 'twenty four' -> 'vier und zwanzig'."""
    for tens in range(20, 100, 10):
        for unit in range(1, 10):
            en, de = english_words(tens + unit), german_morphemes(tens + unit)
            assert len(en) == 2 and len(de) == 3 and de[1] == "und"
            assert de[0] == ("ein" if unit == 1 else german_morphemes(unit)[0])
            assert de[2] == german_morphemes(tens)[0]


def test_sample_numbers_distinct_deterministic_and_spread_over_digit_counts():
    a = sample_numbers(6_000, seed=3)
    assert a == sample_numbers(6_000, seed=3)
    assert a != sample_numbers(6_000, seed=4)
    assert len(set(a)) == 6_000 and all(0 <= x <= MAX_VALUE for x in a)
    digits = [len(str(x)) for x in a]
    assert digits.count(1) == 10 and digits.count(2) == 90 and digits.count(3) == 900
    for d in (4, 5, 6):  # the 5,000 left are shared evenly
        assert abs(digits.count(d) - 5_000 / 3) <= 1
    assert sorted(sample_numbers(100, max_value=99)) == list(range(100))
    assert sorted(sample_numbers(10, max_value=20, seed=1)) == sorted(set(sample_numbers(10, max_value=20, seed=1)))


def test_number_pairs_deterministic_and_correct():
    pairs = number_pairs(200, seed=5)
    assert pairs == number_pairs(200, seed=5)
    assert pairs != number_pairs(200, seed=6)
    numbers = sample_numbers(200, seed=5)
    assert pairs == [(english_words(x), german_morphemes(x)) for x in numbers]
    assert number_pairs(0) == []


def test_number_splits_are_disjoint_by_number_and_sized():
    s = number_splits(300, 50, 80, seed=2)
    assert (len(s.train), len(s.valid), len(s.test)) == (300, 50, 80)
    assert not set(s.train_numbers) & set(s.test_numbers)
    assert not set(s.train_numbers) & set(s.valid_numbers)
    assert not set(s.valid_numbers) & set(s.test_numbers)
    assert s.test == [(english_words(x), german_morphemes(x)) for x in s.test_numbers]
    # The English side determines the number, so no test source is a training source either.
    train_sources = {tuple(src) for src, _ in s.train}
    assert not any(tuple(src) in train_sources for src, _ in s.test)
    assert s == number_splits(300, 50, 80, seed=2)
    # Every drawn number below 100 is in train (there are some in the other splits' share).
    drawn = sample_numbers(430, seed=2)
    assert 50 < sum(x < 100 for x in drawn) == sum(x < 100 for x in s.train_numbers)
    assert min(s.valid_numbers + s.test_numbers) >= 100
    assert sorted(s.train_numbers + s.valid_numbers + s.test_numbers) == sorted(drawn)
    mixed = number_splits(300, 50, 80, seed=2, train_below=0)
    assert min(mixed.test_numbers) < 100  # without the rule small numbers land in test too
    assert not set(mixed.train_numbers) & set(mixed.test_numbers)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(n=-1), ValueError, r"n must be an int in \[0, 1000000\], got -1"),
        (dict(n=2.5), TypeError, r"n must be an int.*got float 2\.5"),
        (dict(n=10, lang="fr"), ValueError, r"lang must be (one of \('de',\)|'de'), got 'fr'"),
        (dict(n=10, lang="DE"), ValueError, r"lang must be .*got 'DE'"),
        (dict(n=10, max_value=1e6), TypeError, r"max_value must be an int in \[0, 999999\], got float 1000000\.0"),
        (dict(n=10, max_value="999"), TypeError, r"max_value must be an int.*got str '999'"),
        (dict(n=10, max_value=10**7), ValueError, r"max_value must be an int in \[0, 999999\], got 10000000"),
        (dict(n=10, max_value=-5), ValueError, r"max_value must be an int in \[0, 999999\], got -5"),
        (dict(n=101, max_value=99), ValueError, r"n must be an int in \[0, 100\], got 101"),
        (dict(n=True), TypeError, r"n must be an int.*got bool True"),
        (dict(n=3, seed=-1), ValueError, r"seed must be an int >= 0, got -1"),
    ],
)
def test_number_pairs_bad_input(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        number_pairs(**kwargs)


def test_number_splits_bad_input():
    with pytest.raises(ValueError, match=r"n_valid must be an int >= 0, got -2"):
        number_splits(10, -2, 5)
    with pytest.raises(ValueError, match=r"<= max_value \+ 1 = 100.*60 \+ 30 \+ 20 = 110"):
        number_splits(60, 30, 20, max_value=99)
    with pytest.raises(ValueError, match="lang must be"):
        number_splits(1, 1, 1, lang="en")
    with pytest.raises(ValueError, match=r"n_train must be at least .* below train_below=100 \(100\), got 50"):
        number_splits(50, 10, 500)
    with pytest.raises(TypeError, match=r"train_below must be an int in \[0, 1000000\], got float 2.5"):
        number_splits(50, 10, 500, train_below=2.5)
    with pytest.raises(ValueError, match=r"value must be an int in \[0, 999999\], got 1000000"):
        english_words(1_000_000)
    with pytest.raises(ValueError, match=r"value must be an int.*got -1"):
        german_word(-1)


def test_parse_english_inverts_english_words(table):
    for x, (_, _, words, _) in table.items():
        assert parse_english(words) == x
    for bad in (["four", "twenty"], ["hundred"], ["twenty", "twenty"], ["one", "thousand", "thousand"],
                ["zero", "one"], ["one", "hundred", "hundred"]):
        with pytest.raises(ValueError, match="are not how a number"):
            parse_english(bad)
    with pytest.raises(ValueError, match=r"not English number words \(unknown: \['fourty'\]\)"):
        parse_english(["fourty", "two"])
    with pytest.raises(ValueError, match="not English number words"):
        parse_english([])
    with pytest.raises(TypeError, match="list of str, got str"):
        parse_english("twenty four")


def test_parse_number():
    assert parse_number("372845") == 372_845
    assert parse_number(" 372,845 ") == 372_845
    assert parse_number("1 024") == 1024
    assert parse_number("twenty four") is None
    assert parse_number("") is None
    with pytest.raises(TypeError, match="int"):
        parse_number(24)


def test_vocab_ids_specials_and_round_trip():
    v = german_vocab()
    assert (v.pad_id, v.bos_id, v.eos_id) == (0, 1, 2)
    assert v.itos[:3] == [PAD, BOS, EOS] and len(v) == 3 + len(GERMAN_MORPHEMES)
    assert len(english_vocab()) == 3 + len(ENGLISH_WORDS)
    assert all(v.itos[v.stoi[t]] == t for t in GERMAN_MORPHEMES)
    ids = v.encode(["vier", "und", "zwanzig"], add_bos=True, add_eos=True)
    assert ids[0] == v.bos_id and ids[-1] == v.eos_id and len(ids) == 5
    assert v.decode(ids) == ["vier", "und", "zwanzig"]
    assert v.decode(ids, strip_special=False) == [BOS, "vier", "und", "zwanzig", EOS]
    assert v.decode(ids + [v.stoi["null"]]) == ["vier", "und", "zwanzig"]  # stops at <eos>
    w = Vocab.from_sequences([["b", "a"], ["a", "c"]])
    assert w.itos == [PAD, BOS, EOS, "a", "b", "c"]
    assert "a" in w and "z" not in w


def test_vocab_encode_batch_pads_right_and_decodes_back():
    v = english_vocab()
    seqs = [["twenty", "four"], ["seven"], ["one", "thousand", "twenty", "four"]]
    batch = v.encode_batch(seqs)
    assert batch.dtype == torch.long and batch.shape == (3, 4)
    assert batch[1].tolist() == [v.stoi["seven"], 0, 0, 0]
    assert v.decode_batch(batch) == seqs
    with_specials = v.encode_batch(seqs, add_bos=True, add_eos=True)
    assert with_specials.shape == (3, 6)
    assert with_specials[:, 0].eq(v.bos_id).all()
    assert with_specials[1].tolist() == [v.bos_id, v.stoi["seven"], v.eos_id, 0, 0, 0]
    assert v.decode_batch(with_specials) == seqs


def test_vocab_bad_input():
    v = english_vocab()
    with pytest.raises(ValueError, match=r"unknown tokens \['fourty', 'zwei'\]"):
        v.encode(["fourty", "two", "zwei", "fourty"])
    with pytest.raises(TypeError, match="split it first"):
        v.encode("twenty four")
    with pytest.raises(ValueError, match=r"ids hold id 99, outside the vocabulary \[0, 32\]"):
        v.decode([3, 99])
    with pytest.raises(ValueError, match=r"1-D.*\(2, 2\)"):
        v.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"2-D tensor \(B, T\), got \(3,\)"):
        v.decode_batch(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty list"):
        v.encode_batch([])
    with pytest.raises(ValueError, match="non-empty str"):
        Vocab(["a", ""])
