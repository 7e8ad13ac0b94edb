"""English -> French number words: correct French (num2words), reversible tokens, splits disjoint by number."""

from __future__ import annotations

import pytest
import torch
from num2words import num2words

from transformer_book.data.numbers_fr import (
    ENGLISH_WORDS_BIG,
    FRENCH_WORDS,
    batches,
    encode_pairs,
    english_vocab_big,
    english_words_big,
    french_splits,
    french_vocab,
    french_words,
    join_french,
    sample_numbers_big,
)


@pytest.mark.parametrize("value,english,french", [
    (0, "zero", "zéro"),
    (21, "twenty one", "vingt et un"),
    (71, "seventy one", "soixante et onze"),
    (80, "eighty", "quatre vingts"),
    (97, "ninety seven", "quatre vingt dix sept"),
    (200, "two hundred", "deux cents"),
    (201, "two hundred one", "deux cent un"),
    (80_000, "eighty thousand", "quatre vingt mille"),
    (200_000_000, "two hundred million", "deux cents millions"),
    (1_001_000, "one million one thousand", "un million mille"),
    (999_999_999, "nine hundred ninety nine million nine hundred ninety nine thousand nine hundred ninety nine",
     "neuf cent quatre vingt dix neuf millions neuf cent quatre vingt dix neuf mille neuf cent quatre vingt dix neuf"),
])
def test_words(value, english, french):
    assert english_words_big(value) == english.split()
    assert french_words(value) == french.split()
    assert join_french(french_words(value)) == num2words(value, lang="fr")


def test_join_french_inverts_the_split_on_a_sample():
    for x in sample_numbers_big(300, seed=3):
        assert join_french(french_words(x)) == num2words(x, lang="fr")
        assert set(french_words(x)) <= set(FRENCH_WORDS) and set(english_words_big(x)) <= set(ENGLISH_WORDS_BIG)


def test_sampling_is_even_over_digit_counts_and_deterministic():
    xs = sample_numbers_big(900, seed=1)
    assert xs == sample_numbers_big(900, seed=1) and xs != sample_numbers_big(900, seed=2)
    assert len(set(xs)) == 900
    counts = [sum(len(str(x)) == d for x in xs) for d in range(1, 10)]
    assert counts[0] == 10 and counts[1] == 90 and all(c in (114, 115) for c in counts[2:])


def test_splits_are_disjoint_and_keep_the_lexicon_in_training():
    s = french_splits(300, 50, 100, seed=0)
    assert len(s.train) == 300 and len(s.valid) == 50 and len(s.test) == 100
    assert not set(s.train_numbers) & set(s.test_numbers) and not set(s.valid_numbers) & set(s.test_numbers)
    assert all(x >= 100 for x in s.valid_numbers + s.test_numbers)
    assert s.test == french_splits(300, 50, 100, seed=0).test


def test_encode_and_batches():
    pairs = [(english_words_big(x), french_words(x)) for x in (5, 97, 1_000_000)]
    src, tgt = encode_pairs(pairs, english_vocab_big(), french_vocab())
    assert src.shape == (3, 2) and tgt[:, 0].eq(1).all() and tgt.shape == (3, 6)
    it = batches(src, tgt, batch_size=2, seed=0)
    s, t = next(it)
    assert s.shape[0] == 2 and t.shape[0] == 2 and (t != 0).any(dim=0).all()  # padding columns trimmed
    assert [x.tolist() for x in next(batches(src, tgt, 2, seed=0))] == [s.tolist(), t.tolist()]


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"value must be an int in \[0, 999999999\], got 1000000000"):
        french_words(1_000_000_000)
    with pytest.raises(TypeError, match="value must be an int .* got str '12'"):
        english_words_big("12")
    with pytest.raises(TypeError, match="got a single str"):
        join_french("quatre vingts")
    with pytest.raises(ValueError, match="n must be an int in"):
        sample_numbers_big(-1)
    with pytest.raises(ValueError, match=r"n_train=5 must be at least the number of drawn numbers below"):
        french_splits(5, 10, 10, seed=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        next(batches(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), 0))
