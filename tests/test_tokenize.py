"""Tokenizers: char/word unknown handling, BPE pieces, fast == naive training, lossless round trips,
identity with Hugging Face `tokenizers` given the same merges, save/load and bad input."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transformer_book.data.code import stdlib_corpus
from transformer_book.tokenize import (
    GPT2_PATTERN,
    BPETokenizer,
    CharTokenizer,
    WordTokenizer,
    bytes_to_unicode,
    count_pairs,
    learn_merges,
    learn_merges_naive,
    merge_pair,
)

tokenizers = pytest.importorskip("tokenizers")

EOT = "<|endoftext|>"
HARD_STRINGS = [
    "",
    " ",
    "\n\n\t  \r\n",
    "def f(x):\n    return x  # é",
    "👨‍👩‍👧‍👦 family, 🐍 snake, 🇫🇷 flag",
    "中文字符 日本語 한국어",
    "e\u0301 a\u0308 Z\u0335\u0327",  # combining marks
    "\x00\x01\x1b[31m\x7f\x85\u2028",  # control characters, NEL, line separator
    "\ufeff\ufffd\U0010ffff",
    f"text {EOT} more {EOT}{EOT}",
    "<|endoftext",
    "'s 've 'll 'S",
]


# Every code point, with lone surrogates drawn often (Hypothesis rarely picks them on its own).
ANY_CHARACTER = (
    st.characters(exclude_categories=())
    | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
    | st.sampled_from(["\u0301", "\u200d", "\ufe0f", "🐍", "中", "\x00", "\r", "'"])
)


@pytest.fixture(scope="module")
def corpus() -> str:
    return stdlib_corpus(max_bytes=150_000, seed=0)


@pytest.fixture(scope="module")
def heldout() -> str:
    return stdlib_corpus(max_bytes=60_000, seed=0, split="heldout")


@pytest.fixture(scope="module")
def bpe(corpus) -> BPETokenizer:
    return BPETokenizer(special_tokens=[EOT]).train(corpus, vocab_size=700)


# ---------------------------------------------------------------------------------- char / word
def test_char_tokenizer_known_unknown_and_order():
    tok = CharTokenizer.from_text("abracadabra")
    assert tok.itos == ["<unk>", "a", "b", "r", "c", "d"]  # by frequency, ties by first appearance
    assert tok.encode("cab") == [4, 1, 2]
    assert tok.decode(tok.encode("abc")) == "abc"
    assert tok.encode("abz!") == [1, 2, 0, 0]
    assert tok.decode(tok.encode("abz!")) == "ab<unk><unk>"
    assert CharTokenizer.from_text("aaab", max_size=1).itos == ["<unk>", "a"]
    assert CharTokenizer.from_text("aaab", min_count=2).itos == ["<unk>", "a"]


def test_word_tokenizer_unknown_identifiers():
    tok = WordTokenizer.from_text("def foo(x):\n    return foo(x)\n")
    ids = tok.encode("def foo(x):")
    assert 0 not in ids and tok.decode(ids) == "def foo(x):"
    ids = tok.encode("def bar(x):")
    assert ids[2] == tok.unk_id and tok.decode(ids) == "def <unk>(x):"
    small = WordTokenizer.from_text("a a a b b c", max_size=2)
    assert small.itos == ["<unk>", " ", "a"]


def test_vocabulary_tokenizer_bad_input():
    with pytest.raises(ValueError, match="'a' twice"):
        CharTokenizer(["a", "a"])
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(ValueError, match=r"ids\[1\] = 3 is out of range.*\[0, 3\)"):
        tok.decode([1, 3])
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tok.encode(b"ab")
    with pytest.raises(ValueError, match="max_size must be a positive int, got 0"):
        CharTokenizer.from_text("ab", max_size=0)


# ---------------------------------------------------------------------------------- BPE pieces
def test_count_pairs_and_merge_pair_by_hand():
    assert count_pairs([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert count_pairs([5, 5, 5]) == {(5, 5): 2}
    assert count_pairs([1, 2], {(1, 2): 3}, weight=4) == {(1, 2): 7}
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]
    assert merge_pair([5, 5, 5, 5], (5, 5), 9) == [9, 9]
    assert merge_pair([], (5, 5), 9) == []


def test_worked_example():
    # "aaabdaaabac": (a, a) occurs 4 times (overlapping), so it is merged first: 'aa' = 256;
    # then 'aa'+'a' (2x) ties with 'a'+'b' (2x) and (256, 97) < ... no: ties go to the smallest ids,
    # (97, 98) < (256, 97) -> 'ab' = 257; then ('aa', 'ab') (2x) -> 258.
    tok = BPETokenizer(pattern=None).train("aaabdaaabac", vocab_size=259)
    assert tok.merges == [(97, 97, 256), (97, 98, 257), (256, 257, 258)]
    assert tok.vocab[256:] == [b"aa", b"ab", b"aaab"]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


def test_merge_that_recreates_existing_bytes_reuses_the_id():
    # 'abc' made twice, from ('ab', 'c') and from ('a', 'bc'): one token, as in HF's trainer.
    state = {**BPETokenizer().to_dict(), "merges": [[97, 98], [256, 99], [98, 99], [97, 258]], "vocab_size": 259}
    tok = BPETokenizer.from_dict(state)
    assert tok.merges == [(97, 98, 256), (256, 99, 257), (98, 99, 258), (97, 258, 257)]
    assert tok.vocab[256:] == [b"ab", b"abc", b"bc"] and tok.vocab_size == 259
    text = "abc bc abcbc xbc"
    assert tok.encode(text) == tok.to_huggingface().encode(text).ids
    assert tok.decode(tok.encode(text)) == text


def test_learned_tokens_are_distinct(bpe):
    assert len(set(bpe.vocab)) == len(bpe.vocab)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abcd é", min_size=0, max_size=12), max_size=30), st.integers(256, 300))
def test_fast_training_equals_naive(words, vocab_size):
    chunks = [w.encode() for w in words]
    assert learn_merges(Counter(chunks), vocab_size) == learn_merges_naive(chunks, vocab_size)


def test_fast_training_equals_naive_on_code(corpus):
    chunks = [c.encode() for c in BPETokenizer().pretokenize(corpus[:30_000])]
    assert learn_merges(Counter(chunks), 330) == learn_merges_naive(chunks, 330)


def test_training_is_deterministic(corpus):
    a = BPETokenizer().train(corpus[:50_000], 400)
    b = BPETokenizer().train(corpus[:50_000], 400)
    assert a.merges == b.merges and len(a.merges) == 144


def test_training_stops_when_pairs_run_out():
    tok = BPETokenizer().train("ab ab", vocab_size=1000)
    assert tok.vocab_size == 258  # 'ab', ' ab': then every chunk is one token
    assert tok.encode("ab ab") == [256, 257]


# ---------------------------------------------------------------------------------- lossless
@pytest.mark.parametrize("text", HARD_STRINGS)
def test_round_trip_hard_strings(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.decode(bpe.encode(text, allowed_special=False)) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=ANY_CHARACTER, max_size=60))
def test_round_trip_any_string(bpe, text):
    """Every Python string, lone surrogates included, survives encode -> decode."""
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text
    assert bpe.decode(BPETokenizer().encode(text)) == text  # even with no merges at all


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40), st.sampled_from([r"\d+", r"[a-z]+|\s", GPT2_PATTERN]))
def test_pretokenize_partitions_text(text, pattern):
    assert "".join(BPETokenizer(pattern=pattern).pretokenize(text)) == text


def test_compresses_code(bpe, heldout):
    ids = bpe.encode(heldout)
    assert len(heldout.encode()) / len(ids) > 2.0, "444 merges should more than halve the length of Python source"


def test_special_tokens(bpe):
    eot = bpe.special_tokens[EOT]
    assert eot == bpe.vocab_size - 1 == len(bpe.vocab)
    ids = bpe.encode(f"x{EOT}y")
    assert eot in ids and bpe.decode(ids) == f"x{EOT}y"
    plain = bpe.encode(f"x{EOT}y", allowed_special=False)
    assert eot not in plain and bpe.decode(plain) == f"x{EOT}y"
    assert bpe.id_to_token(eot) == EOT.encode()


def test_special_tokens_are_not_merged_in_training():
    tok = BPETokenizer(special_tokens=["<s>"]).train("<s>ab<s>ab<s>ab<s>", 300)
    assert all(b"<" not in t and b">" not in t for t in tok.vocab[256:])


# ---------------------------------------------------------------------------------- vs Hugging Face
def test_byte_alphabet_matches_huggingface():
    mine = bytes_to_unicode()
    assert sorted(mine) == list(range(256)) and len(set(mine.values())) == 256
    assert set(mine.values()) == set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    assert mine[ord(" ")] == "Ġ" and mine[ord("\n")] == "Ċ" and mine[ord("A")] == "A"
    hf = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    points = [cp for cp in range(0, 0x110000, 97) if not 0xD800 <= cp < 0xE000] + list(range(256))
    text = "".join(chr(cp) for cp in points)
    ((hf_text, _),) = hf.pre_tokenize_str(text)
    assert hf_text == "".join(mine[b] for b in text.encode())


def test_same_merges_same_encoding_as_huggingface(bpe, heldout):
    hf = bpe.to_huggingface()
    assert hf.get_vocab_size() == bpe.vocab_size
    ours = bpe.encode(heldout)
    theirs = hf.encode(heldout).ids
    assert ours == theirs
    assert hf.decode(ours, skip_special_tokens=False) == heldout


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60) | st.sampled_from(HARD_STRINGS))
def test_same_encoding_as_huggingface_on_any_text(bpe, text):
    hf = bpe.to_huggingface()
    assert bpe.encode(text) == hf.encode(text, add_special_tokens=False).ids


def test_huggingface_bridge_with_a_custom_pattern(corpus):
    tok = BPETokenizer(pattern=r"\w+|[^\w\s]+|\s+").train(corpus[:30_000], 400)
    hf = tok.to_huggingface()
    sample = corpus[30_000:40_000]
    assert tok.encode(sample) == hf.encode(sample).ids


# ---------------------------------------------------------------------------------- save / load
def test_save_load_round_trip(bpe, heldout, tmp_path):
    path = tmp_path / "tok.json"
    bpe.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == bpe.merges and loaded.special_tokens == bpe.special_tokens
    assert loaded.encode(heldout[:5000]) == bpe.encode(heldout[:5000])


def _write(tmp_path, content) -> str:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return str(path)


def test_load_rejects_corrupt_and_foreign_files(bpe, tmp_path):
    good = bpe.to_dict()
    cases = [
        ('{"format": "transformer_book.BPE', "not valid JSON"),
        ([1, 2, 3], "expected a JSON object, got list"),
        ({**good, "format": "minbpe"}, "'format' is 'minbpe'"),
        ({**good, "version": 99}, "version 99 is not supported"),
        ({k: v for k, v in good.items() if k != "merges"}, r"missing field\(s\) \['merges'\]"),
        ({**good, "merges": [[97, 98], [97]]}, r"merges\[1\] = \[97\] is not a \[left, right\] pair"),
        ({**good, "merges": [[97, 98], [97, 400]]}, r"merges\[1\] = \[97, 400\] uses an id outside \[0, 257\)"),
        ({**good, "merges": [[97, 98], [97, 98]]}, r"merges\[1\] = \[97, 98\] repeats"),
        ({**good, "vocab_size": 5}, "'vocab_size' is 5 but the merges and special tokens give 700"),
        ({**good, "pattern": "(unclosed"}, "not a valid regular expression"),
        ({**good, "special_tokens": ["", "x"]}, "non-empty str"),
    ]
    for content, message in cases:
        with pytest.raises(ValueError, match=message):
            BPETokenizer.load(_write(tmp_path, content))
    hf_file = tmp_path / "tokenizer.json"
    bpe.to_huggingface().save(str(hf_file))
    with pytest.raises(ValueError, match="Hugging Face `tokenizers` file"):
        BPETokenizer.load(hf_file)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not valid JSON"):
        BPETokenizer.load(binary)


def test_failed_load_leaves_the_tokenizer_untouched(bpe, tmp_path):
    before = bpe.encode("def main():")
    with pytest.raises(ValueError):
        bpe.load(_write(tmp_path, {**bpe.to_dict(), "vocab_size": 5}))  # classmethod: builds a new object
    assert bpe.encode("def main():") == before and bpe.vocab_size == 700


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("size", [0, 255, 256])
def test_vocab_too_small(size):
    tok = BPETokenizer(special_tokens=[EOT])
    with pytest.raises(ValueError, match=rf"at least 256 .* \+ 1 special token\(s\) = 257, got {size}"):
        tok.train("hello", size)


def test_bad_arguments(bpe):
    with pytest.raises(ValueError, match=r"ids\[2\] = 700 is out of range: token ids must be in \[0, 700\)"):
        bpe.decode([1, 2, 700])
    with pytest.raises(ValueError, match=r"ids\[0\] = -1 is out of range"):
        bpe.decode([-1])
    with pytest.raises(TypeError, match=r"ids\[0\] must be an int, got float"):
        bpe.decode([1.0])
    with pytest.raises(TypeError, match="ids must be a sequence of ints, got str"):
        bpe.decode("abc")
    with pytest.raises(TypeError, match="text must be a str, got list"):
        bpe.encode([1, 2])
    with pytest.raises(TypeError, match="vocab_size must be an int, got float"):
        BPETokenizer().train("abc", 300.0)
    with pytest.raises(ValueError, match="special_tokens must be unique"):
        BPETokenizer(special_tokens=["<s>", "<s>"])
    with pytest.raises(TypeError, match="special_tokens must be a list of str, got str"):
        BPETokenizer(special_tokens="<s>")


def test_decode_accepts_tensors_and_replaces_invalid_utf8(bpe):
    torch = pytest.importorskip("torch")
    ids = bpe.encode("héllo")
    assert bpe.decode(torch.tensor(ids)) == "héllo"
    assert bpe.decode([0xE9]) == "\ufffd"  # a lone continuation byte is not UTF-8
    with pytest.raises(ValueError, match=r"1-D, got an array of shape \(1, 2\)"):
        bpe.decode(torch.tensor([[1, 2]]))


# ---------------------------------------------------------------------------------- speed
@pytest.mark.slow
def test_training_one_megabyte_is_fast():
    text = stdlib_corpus(max_bytes=1_000_000)
    start = time.perf_counter()
    tok = BPETokenizer().train(text, 2000)
    elapsed = time.perf_counter() - start
    assert tok.vocab_size == 2000
    assert elapsed < 30, f"training 1 MB to 2,000 tokens took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------- the views
def test_tokens_html_marks_unknowns_partial_bytes_and_counts(bpe):
    from transformer_book.viz.tokens import UNKNOWN_COLOUR, token_pieces, tokens_html

    char = CharTokenizer.from_text("abc")
    page = tokens_html(char, "ab<z")
    assert page.count(UNKNOWN_COLOUR) == 2 and "&lt;unk&gt;" in page and "4 tokens" in page
    pieces = token_pieces(BPETokenizer(), "é🐍")  # no merges: one token per byte
    assert [shown for _, shown, _ in pieces] == ["⟨c3⟩", "⟨a9⟩", "⟨f0⟩", "⟨9f⟩", "⟨90⟩", "⟨8d⟩"]
    text = "def main():\n    pass\n"
    assert "".join(shown for _, shown, _ in token_pieces(bpe, text)) == text
    assert f"→ <b>{len(bpe.encode(text))} tokens</b>" in tokens_html(bpe, text)
    with pytest.raises(TypeError, match=r"tokenizer must have an encode\(\) method, got object"):
        tokens_html(object(), "x")


def test_token_widget_updates_as_you_type(bpe):
    pytest.importorskip("ipywidgets")
    from transformer_book.viz.tokens import token_widget

    widget = token_widget({"bpe": bpe, "char": CharTokenizer.from_text("abc")}, text="abc")
    box, bpe_view, char_view = widget.children
    assert "3 tokens" in char_view.value
    box.value = "abcabc!"
    assert "7 tokens" in char_view.value and f"{len(bpe.encode('abcabc!'))} tokens" in bpe_view.value


# --------------------------------------------------------------------------- issue 10: save and load, bounded
def _small_bpe():
    return BPETokenizer(special_tokens=["<eos>"]).train("hello world hello there " * 20, 270)


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "tok.json"
    tok = _small_bpe()
    tok.save(path)
    before = path.read_bytes()
    real_open = open

    def failing_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            f.write("{half")
            f.close()
            raise OSError("disk full")
        return f
    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError, match="disk full"):
        BPETokenizer().train("other text " * 10, 260).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]
    assert BPETokenizer.load(path).merges == tok.merges


def test_unwritable_special_tokens_and_pattern_are_refused_when_given():
    with pytest.raises(ValueError, match=r"special_tokens\[0\] cannot be saved"):
        BPETokenizer(special_tokens=["\ud800"])
    with pytest.raises(ValueError, match="pattern cannot be saved"):
        BPETokenizer(pattern="a\udfffb")
    with pytest.raises(TypeError, match=r"special_tokens\[1\] must be a str, got int"):
        BPETokenizer(special_tokens=["<a>", 3])


def test_load_is_bounded_in_time_and_memory(tmp_path):
    import json
    import resource
    import time

    n = 12_000  # about 250 kB of JSON: a chain where every merge adds one byte to the last token
    merges = [[256 + i - 1 if i else 97, 98] for i in range(n)]
    state = {"format": "transformer_book.BPETokenizer", "version": 1, "pattern": None, "special_tokens": [],
             "vocab_size": 256 + n, "merges": merges}
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps(state))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ValueError, match="MAX_TOKEN_BYTES"):
        BPETokenizer.load(path)
    assert time.perf_counter() - start < 5.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # kB: under 100 MB


def test_load_refuses_deep_nesting_and_missing_files(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        BPETokenizer.load(deep)
    with pytest.raises(ValueError, match="path .* is not a file"):
        BPETokenizer.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="path must be a file name"):
        _small_bpe().save(tmp_path)


def test_pieces_check_their_arguments():
    with pytest.raises(TypeError, match=r"ids\[0\] must be an int, got float"):
        merge_pair([1.0, 2], (1, 2), 3)
    with pytest.raises(ValueError, match="pair must be a .* got 3 values"):
        merge_pair([1, 2], (1, 2, 3), 4)
    with pytest.raises(ValueError, match="new_id must be an int >= 0"):
        merge_pair([1, 2], (1, 2), -1)
    with pytest.raises(TypeError, match="ids must be a list of ints, got str"):
        count_pairs("abc")
    with pytest.raises(ValueError, match="weight must be a positive int"):
        count_pairs([1, 2], weight=0)
    with pytest.raises(TypeError, match="word_counts key must be a bytes, got str"):
        learn_merges({"ab": 2}, 257)
    with pytest.raises(TypeError, match="tokens must be an iterable of str"):
        CharTokenizer("ab")
