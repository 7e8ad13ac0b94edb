"""Tokenizers from scratch: characters, words, and byte-level BPE.

A model reads integers, not text. A *tokenizer* is the pair of maps text -> list of ids
(``encode``) and ids -> text (``decode``). This module builds three of them (chapter 2):

* :class:`CharTokenizer` -- one id per character seen in training, ``<unk>`` for the rest;
* :class:`WordTokenizer` -- one id per frequent word / punctuation mark / whitespace run;
* :class:`BPETokenizer` -- byte-level byte-pair encoding (Sennrich et al., 2016, on bytes as in
  GPT-2, Radford et al., 2019): start from the 256 byte values, so *every* string can be encoded,
  and learn merges of frequent adjacent pairs into new tokens.

BPE training counts pairs over the *unique* pre-tokenized words weighted by their frequency and,
after each merge, updates only the counts of the words that contained the merged pair (an index
pair -> words) with a lazily updated max-heap to find the next pair. :func:`learn_merges_naive` is
the textbook loop that recounts everything after every merge; it learns the same merges and is
kept as the reference and the speed anchor.

Pre-tokenization: before BPE, text is cut into chunks with GPT-2's regular expression
(:data:`GPT2_PATTERN`: contractions, letters with an optional leading space, digits, punctuation
runs, whitespace), and merges never cross a chunk boundary. That keeps "def" and " def" tokens
from swallowing the surrounding punctuation, and it is what Hugging Face's ``ByteLevel``
pre-tokenizer does, so the two can be compared token for token (:meth:`BPETokenizer.to_huggingface`).
The chunks are a partition of the text: any text between matches is kept as its own chunk, so
encoding is lossless for any pattern.
"""

from __future__ import annotations

import codecs
import heapq
import json
import numbers
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import regex

from transformer_book import _checks

__all__ = [
    "GPT2_PATTERN",
    "BPETokenizer",
    "CharTokenizer",
    "WordTokenizer",
    "bytes_to_unicode",
    "count_pairs",
    "learn_merges",
    "learn_merges_naive",
    "merge_pair",
]

#: GPT-2's pre-tokenization pattern (Radford et al., 2019), the one Hugging Face's ByteLevel uses.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: The ``format`` field of a saved :class:`BPETokenizer`.
FILE_FORMAT = "transformer_book.BPETokenizer"
FILE_VERSION = 1

Merge = tuple[int, int, int]  # (left id, right id, id of the merged token)


# --------------------------------------------------------------------------------------------
# Decoding bytes that may not be valid UTF-8
# --------------------------------------------------------------------------------------------
def _surrogatepass_or_replace(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler: give back lone surrogates (Python strings may hold them), replace the rest.

    ``str.encode("utf-8", "surrogatepass")`` lets the tokenizer encode *every* Python string, even
    one with a lone surrogate such as ``"\\ud800"``; this handler undoes that on decoding, and turns
    any other invalid byte sequence (ids that did not come from ``encode``) into U+FFFD.
    """
    try:
        return codecs.lookup_error("surrogatepass")(error)
    except UnicodeError:
        return codecs.lookup_error("replace")(error)


_ERRORS = "transformer_book.surrogatepass_or_replace"
codecs.register_error(_ERRORS, _surrogatepass_or_replace)


def _to_bytes(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


# --------------------------------------------------------------------------------------------
# Input checks shared by the tokenizers
# --------------------------------------------------------------------------------------------
def _check_ids(ids: object, n_vocab: int, name: str = "ids") -> list[int]:
    """A list of Python ints in ``[0, n_vocab)``; accepts lists, tuples, 1-D tensors/arrays."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of ints, got {type(ids).__name__}")
    if hasattr(ids, "tolist") and hasattr(ids, "ndim"):  # torch.Tensor / numpy.ndarray
        if ids.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got an array of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if not isinstance(ids, Iterable):
        raise TypeError(f"{name} must be a sequence of ints, got {type(ids).__name__}")
    out = []
    for position, i in enumerate(ids):
        if not isinstance(i, numbers.Integral) or isinstance(i, bool):
            raise TypeError(f"{name}[{position}] must be an int, got {type(i).__name__} {i!r}")
        if not 0 <= i < n_vocab:
            raise ValueError(
                f"{name}[{position}] = {int(i)} is out of range: token ids must be in [0, {n_vocab}) "
                f"for this tokenizer (vocabulary size {n_vocab})"
            )
        out.append(int(i))
    return out


def _check_int_list(name: str, ids: object) -> list:
    """A list or tuple of ints (the plain id sequences of the BPE pieces)."""
    _checks.instance(name, ids, (list, tuple), "list of ints")
    for position, i in enumerate(ids):
        _checks.integer(f"{name}[{position}]", i)
    return ids


# --------------------------------------------------------------------------------------------
# Character and word tokenizers
# --------------------------------------------------------------------------------------------
class _VocabularyTokenizer:
    """A tokenizer with a fixed list of tokens and an unknown token at id 0."""

    def __init__(self, tokens: Iterable[str], unk_token: str = "<unk>") -> None:
        _checks.instance("unk_token", unk_token, str)
        if not unk_token:
            raise ValueError("unk_token must be a non-empty str, got ''")
        if isinstance(tokens, str) or not isinstance(tokens, Iterable):
            raise TypeError(f"tokens must be an iterable of str (not one str), got {_checks.describe(tokens)}")
        self.unk_token = unk_token
        self.itos: list[str] = [unk_token]
        for position, token in enumerate(tokens):
            _checks.instance(f"tokens[{position}]", token, str)
            if token == unk_token or token in self.itos:
                raise ValueError(f"tokens must be unique and differ from unk_token, got {token!r} twice")
            self.itos.append(token)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        self.unk_id = 0

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def _split(self, text: str) -> list[str]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Ids of the pieces of ``text``; a piece not in the vocabulary becomes ``unk_id``."""
        return [self.stoi.get(piece, self.unk_id) for piece in self._split(_checks.instance("text", text, str))]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; ``unk_id`` comes back as ``unk_token`` (what it stood for is lost)."""
        return "".join(self.itos[i] for i in _check_ids(ids, self.vocab_size))

    def id_to_token(self, token_id: int) -> str:
        return self.itos[_check_ids([_checks.integer("token_id", token_id)], self.vocab_size, "token_id")[0]]

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, unk_token={self.unk_token!r})"


class CharTokenizer(_VocabularyTokenizer):
    """One token per character (Unicode code point).

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.decode(tok.encode("hole"))
    'hole'
    >>> tok.decode(tok.encode("help!"))   # 'p' and '!' were never seen
    'hel<unk><unk>'
    """

    @classmethod
    def from_text(
        cls, text: str, max_size: int | None = None, min_count: int = 1, unk_token: str = "<unk>"
    ) -> CharTokenizer:
        """The characters of ``text`` seen at least ``min_count`` times, most frequent first
        (ties in order of first appearance), at most ``max_size`` of them (plus ``<unk>``)."""
        _checks.instance("text", text, str)
        return cls(_frequent(Counter(text), max_size, min_count), unk_token=unk_token)

    def _split(self, text: str) -> list[str]:
        return list(text)


#: How :class:`WordTokenizer` cuts text: identifiers/words, whitespace runs, single other characters.
WORD_PATTERN = r"\w+|\s+|[^\w\s]"


class WordTokenizer(_VocabularyTokenizer):
    """One token per word (``\\w+``), whitespace run, or punctuation character.

    Only the ``max_size`` most frequent pieces get an id; any other piece -- a rare identifier,
    a new name, a misspelling -- becomes ``<unk>``: the problem BPE solves.
    """

    _regex = regex.compile(WORD_PATTERN)

    @classmethod
    def from_text(
        cls, text: str, max_size: int | None = None, min_count: int = 1, unk_token: str = "<unk>"
    ) -> WordTokenizer:
        _checks.instance("text", text, str)
        return cls(_frequent(Counter(cls._regex.findall(text)), max_size, min_count), unk_token=unk_token)

    def _split(self, text: str) -> list[str]:
        return self._regex.findall(text)


def _frequent(counts: Counter, max_size: int | None, min_count: int) -> list[str]:
    if max_size is not None:
        _checks.positive_int("max_size", max_size)
    _checks.positive_int("min_count", min_count)
    kept = [t for t, c in counts.most_common() if c >= min_count]  # stable: ties keep first-seen order
    return kept if max_size is None else kept[:max_size]


# --------------------------------------------------------------------------------------------
# BPE: the pieces
# --------------------------------------------------------------------------------------------
def count_pairs(ids: Sequence[int], counts: dict | None = None, weight: int = 1) -> dict[tuple[int, int], int]:
    """Count adjacent pairs: ``[1, 2, 3, 1, 2]`` -> ``{(1, 2): 2, (2, 3): 1, (3, 1): 1}``.

    Adds ``weight`` per occurrence into ``counts`` if given (a word seen ``weight`` times).
    """
    _check_int_list("ids", ids)
    if counts is not None:
        _checks.instance("counts", counts, dict, "dict or None")
    return _count_pairs(ids, {} if counts is None else counts, _checks.positive_int("weight", weight))


def _count_pairs(ids: Sequence[int], counts: dict, weight: int = 1) -> dict[tuple[int, int], int]:
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids``, left to right, by ``new_id``.

    ``merge_pair([5, 5, 5], (5, 5), 9)`` is ``[9, 5]``: occurrences do not overlap.
    """
    _check_int_list("ids", ids)
    _checks.instance("pair", pair, (tuple, list), "(left, right) pair of ints")
    if len(pair) != 2:
        raise ValueError(f"pair must be a (left, right) pair of ints, got {len(pair)} values {tuple(pair)!r}")
    _check_int_list("pair", pair)
    return _merge_pair(ids, tuple(pair), _checks.integer("new_id", new_id, low=0))


def _merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    a, b = pair
    out = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class _Vocabulary:
    """The growing list id -> bytes. A merge whose bytes already exist reuses that id (as HF does)."""

    def __init__(self) -> None:
        self.tokens: list[bytes] = [bytes([i]) for i in range(256)]
        self.ids: dict[bytes, int] = {t: i for i, t in enumerate(self.tokens)}

    def add(self, a: int, b: int) -> int:
        data = self.tokens[a] + self.tokens[b]
        if data not in self.ids:
            self.ids[data] = len(self.tokens)
            self.tokens.append(data)
        return self.ids[data]


def _check_vocab_size(vocab_size: object, n_special: int = 0) -> int:
    _checks.integer("vocab_size", vocab_size)
    smallest = 256 + n_special
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size must be at least 256 (one token per byte value) + {n_special} special "
            f"token(s) = {smallest}, got {vocab_size}"
        )
    return vocab_size


def learn_merges(word_counts: Mapping[bytes, int], vocab_size: int) -> list[Merge]:
    """Learn BPE merges from pre-tokenized words until the vocabulary has ``vocab_size`` tokens.

    ``word_counts`` maps each distinct chunk (bytes) to how often it occurs. Each step merges the
    most frequent adjacent pair (ties: the smallest ``(left, right)`` ids). Instead of recounting
    every pair after every merge, it keeps

    * ``counts``: pair -> occurrences, weighted by word frequency;
    * ``where``: pair -> indices of the words containing it;
    * a max-heap of ``(-count, pair)`` entries; an entry is stale when ``counts`` has moved on,
      and stale entries are skipped when popped (lazy deletion);

    and after a merge it rewrites only the words in ``where[pair]``, moving their pair counts.
    Returns ``[(left, right, new_id), ...]`` in the order learned. Stops early, with fewer tokens,
    if no pair is left (every word is a single token).
    """
    _checks.instance("word_counts", word_counts, Mapping, "dict bytes -> count")
    for word, count in word_counts.items():
        _checks.instance("word_counts key", word, bytes)
        _checks.positive_int(f"word_counts[{word!r}]", count)
    _check_vocab_size(vocab_size)
    vocab = _Vocabulary()
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for index, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] += freq
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)

    merges: list[Merge] = []
    while len(vocab.tokens) < vocab_size:
        while heap and counts.get(heap[0][1], 0) != -heap[0][0]:
            heapq.heappop(heap)  # stale: this pair's count changed after the entry was pushed
        if not heap:
            break
        _, pair = heapq.heappop(heap)
        new_id = vocab.add(*pair)
        merges.append((pair[0], pair[1], new_id))

        changed: set[tuple[int, int]] = set()
        for index in where.pop(pair):
            old, freq = words[index], freqs[index]
            new = _merge_pair(old, pair, new_id)
            words[index] = new
            old_pairs, new_pairs = _count_pairs(old, {}), _count_pairs(new, {})
            for p, c in old_pairs.items():
                counts[p] -= c * freq
                changed.add(p)
                if p not in new_pairs and p != pair:
                    where[p].discard(index)
            for p, c in new_pairs.items():
                counts[p] += c * freq
                changed.add(p)
                where[p].add(index)
        for p in changed:
            if counts[p] > 0:
                heapq.heappush(heap, (-counts[p], p))
            else:
                del counts[p]
                where.pop(p, None)
    return merges


def learn_merges_naive(chunks: Sequence[bytes], vocab_size: int) -> list[Merge]:
    """The textbook BPE loop: after every merge, recount all pairs in all chunks.

    Same rule and tie-break as :func:`learn_merges`, so it learns the same merges -- only slower:
    each merge costs a pass over the whole corpus. The reference and the speed anchor.
    """
    _checks.instance("chunks", chunks, (list, tuple), "list of bytes")
    for position, chunk in enumerate(chunks):
        _checks.instance(f"chunks[{position}]", chunk, bytes)
    _check_vocab_size(vocab_size)
    vocab = _Vocabulary()
    sequences = [list(c) for c in chunks]
    merges: list[Merge] = []
    while len(vocab.tokens) < vocab_size:
        counts: dict[tuple[int, int], int] = {}
        for seq in sequences:
            _count_pairs(seq, counts)
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))  # most frequent; ties -> smallest ids
        new_id = vocab.add(*pair)
        merges.append((pair[0], pair[1], new_id))
        sequences = [_merge_pair(seq, pair, new_id) for seq in sequences]
    return merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to 256 printable characters.

    Hugging Face's byte-level BPE stores tokens as strings in this alphabet: printable ASCII and
    Latin-1 bytes stand for themselves, the other 68 (controls, space, ...) are shifted to
    U+0100 and up, in byte order -- so the space byte 0x20 is written 'Ġ'.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return dict(sorted(mapping.items()))


# --------------------------------------------------------------------------------------------
# The BPE tokenizer
# --------------------------------------------------------------------------------------------
#: Bounds on what :meth:`BPETokenizer.load` accepts, so that a crafted file cannot take unbounded
#: time or memory: the file's size, the number of merges, the bytes of one token and of all
#: tokens together (a chain of merges, each adding one byte to the last token, grows the
#: vocabulary quadratically: 25 000 merges would be 300 MB of token bytes). GPT-2's 50 000
#: merges are far inside them.
MAX_FILE_BYTES = 64 * 2**20
MAX_MERGES = 2**20
MAX_TOKEN_BYTES = 1024
MAX_VOCAB_BYTES = 64 * 2**20


def _writable(name: str, text: str) -> None:
    """``text`` survives a UTF-8 JSON file (a lone surrogate does not: refuse it when given)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} cannot be saved: {text!r} is not valid Unicode text ({exc.reason} at "
                         f"position {exc.start})") from None


class BPETokenizer:
    """Byte-level BPE: ``train`` learns merges, ``encode``/``decode`` apply them.

    Ids ``0..255`` are the byte values, then one id per learned token, then the special tokens
    (e.g. ``"<|endoftext|>"``), in the order given. ``decode(encode(s)) == s`` for every Python
    string ``s`` (emoji, CJK, combining marks, control characters, even lone surrogates).

    >>> tok = BPETokenizer().train("low lower lowest " * 10, vocab_size=262)
    >>> tok.decode(tok.encode("slowest 🐍")) == "slowest 🐍"
    True
    """

    def __init__(self, pattern: str | None = GPT2_PATTERN, special_tokens: Sequence[str] = ()) -> None:
        if pattern is not None:
            _checks.instance("pattern", pattern, str, "regular expression str or None")
            _writable("pattern", pattern)
        try:
            self._regex = None if pattern is None else regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        if isinstance(special_tokens, str) or not isinstance(special_tokens, Sequence):
            raise TypeError(f"special_tokens must be a list of str, got {type(special_tokens).__name__}")
        for position, token in enumerate(special_tokens):
            _checks.instance(f"special_tokens[{position}]", token, str)
            if not token:
                raise ValueError(f"special_tokens[{position}] must be a non-empty str, got ''")
            _writable(f"special_tokens[{position}]", token)
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special_tokens must be unique, got {list(special_tokens)!r}")
        self.pattern = pattern
        self._specials = list(special_tokens)
        longest_first = sorted(self._specials, key=len, reverse=True)
        self._special_regex = regex.compile("|".join(regex.escape(s) for s in longest_first)) if longest_first else None
        self._set_merges([])

    # ---- state -------------------------------------------------------------------------------
    def _set_merges(self, merges: list[Merge]) -> None:
        vocab = _Vocabulary()
        for a, b, new_id in merges:
            if vocab.add(a, b) != new_id:
                raise ValueError(f"merge ({a}, {b}) -> {new_id} disagrees with the vocabulary built so far")
        self.merges: list[Merge] = merges
        self.vocab: list[bytes] = vocab.tokens
        self._ranks = {(a, b): (rank, new_id) for rank, (a, b, new_id) in enumerate(merges)}
        self._cache: dict[bytes, list[int]] = {}

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token -> id; they come after the learned vocabulary."""
        return {s: len(self.vocab) + i for i, s in enumerate(self._specials)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self._specials)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={self._specials!r})")

    # ---- pre-tokenization -------------------------------------------------------------------
    def _split_special(self, text: str, allowed_special: bool) -> Iterator[tuple[str, bool]]:
        """(piece, is_special) covering ``text``."""
        if not allowed_special or self._special_regex is None:
            yield text, False
            return
        pos = 0
        for m in self._special_regex.finditer(text):
            if m.start() > pos:
                yield text[pos:m.start()], False
            yield m.group(), True
            pos = m.end()
        if pos < len(text):
            yield text[pos:], False

    def pretokenize(self, text: str) -> list[str]:
        """Cut ``text`` into the chunks BPE works within (matches of ``pattern`` and the gaps
        between them, so ``"".join(chunks) == text``)."""
        _checks.instance("text", text, str)
        if self._regex is None:
            return [text] if text else []
        chunks, pos = [], 0
        for m in self._regex.finditer(text):
            if m.start() > pos:
                chunks.append(text[pos:m.start()])
            if m.end() > m.start():
                chunks.append(m.group())
            pos = m.end()
        if pos < len(text):
            chunks.append(text[pos:])
        return chunks

    # ---- training ------------------------------------------------------------------------------
    def train(self, text: str, vocab_size: int) -> BPETokenizer:
        """Learn merges on ``text`` until there are ``vocab_size`` tokens (bytes + merges + specials).

        Replaces any earlier training; returns ``self``. Special-token strings in ``text`` are
        cut out first and never merged into ordinary tokens. If the text runs out of pairs the
        vocabulary stays smaller (check ``vocab_size`` afterwards).
        """
        _checks.instance("text", text, str)
        _check_vocab_size(vocab_size, len(self._specials))
        word_counts: Counter[bytes] = Counter()
        for piece, is_special in self._split_special(text, allowed_special=True):
            if not is_special:
                word_counts.update(_to_bytes(chunk) for chunk in self.pretokenize(piece))
        self._set_merges(learn_merges(word_counts, vocab_size - len(self._specials)))
        return self

    # ---- encoding / decoding -----------------------------------------------------------------
    def _encode_chunk(self, data: bytes) -> list[int]:
        cached = self._cache.get(data)
        if cached is not None:
            return cached
        ids = list(data)
        ranks = self._ranks
        while len(ids) >= 2:
            # the pair learned earliest goes first, exactly as in training
            best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, (len(ranks),))[0])
            if best not in ranks:
                break
            ids = _merge_pair(ids, best, ranks[best][1])
        if len(self._cache) >= 1 << 16:
            self._cache.clear()
        self._cache[data] = ids
        return ids

    def encode(self, text: str, allowed_special: bool = True) -> list[int]:
        """Token ids of ``text``. With ``allowed_special`` the strings of special tokens become
        their ids; without, they are encoded as ordinary text. Either way ``decode`` restores ``text``."""
        _checks.instance("text", text, str)
        _checks.boolean("allowed_special", allowed_special)
        ids: list[int] = []
        specials = self.special_tokens
        for piece, is_special in self._split_special(text, allowed_special):
            if is_special:
                ids.append(specials[piece])
                continue
            for chunk in self.pretokenize(piece):
                ids.extend(self._encode_chunk(_to_bytes(chunk)))
        return ids

    def id_to_token(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's UTF-8 string)."""
        (token_id,) = _check_ids([_checks.integer("token_id", token_id)], self.vocab_size, "token_id")
        if token_id < len(self.vocab):
            return self.vocab[token_id]
        return _to_bytes(self._specials[token_id - len(self.vocab)])

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The bytes ``ids`` stand for (may end in the middle of a UTF-8 character)."""
        ids = _check_ids(ids, self.vocab_size)
        n = len(self.vocab)
        return b"".join(self.vocab[i] if i < n else _to_bytes(self._specials[i - n]) for i in ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``. Ids from ``encode`` give back the text exactly; any other byte
        sequence that is not valid UTF-8 has its invalid parts replaced by U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors=_ERRORS)

    # ---- saving / loading --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "pattern": self.pattern,
            "special_tokens": list(self._specials),
            "vocab_size": self.vocab_size,
            "merges": [[a, b] for a, b, _ in self.merges],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON (pattern, special tokens, merges in order).

        Atomic: the text is built in memory, written to a temporary file next to ``path`` and
        renamed over it, so a failed save never damages an existing file (nor leaves the
        temporary one behind).
        """
        path = os.fspath(_checks.instance("path", path, (str, os.PathLike), "str or os.PathLike"))
        if os.path.isdir(path):
            raise ValueError(f"path must be a file name, got the directory {path!r}")
        text = json.dumps(self.to_dict(), ensure_ascii=False)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def from_dict(cls, state: object, source: str = "state") -> BPETokenizer:
        """Rebuild a tokenizer from :meth:`to_dict`'s output, validating everything first."""
        if not isinstance(state, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(state).__name__}")
        if state.get("format") != FILE_FORMAT:
            if "model" in state and "added_tokens" in state:
                raise ValueError(f"{source}: this is a Hugging Face `tokenizers` file "
                                 f"(load it with tokenizers.Tokenizer.from_file), not a {FILE_FORMAT} file")
            raise ValueError(f"{source}: 'format' is {state.get('format')!r}, expected {FILE_FORMAT!r}")
        if state.get("version") != FILE_VERSION:
            raise ValueError(f"{source}: version {state.get('version')!r} is not supported, expected {FILE_VERSION}")
        missing = {"pattern", "special_tokens", "vocab_size", "merges"} - state.keys()
        if missing:
            raise ValueError(f"{source}: missing field(s) {sorted(missing)}")
        merges_in = state["merges"]
        if not isinstance(merges_in, list):
            raise ValueError(f"{source}: 'merges' must be a list of [left, right] id pairs")
        if len(merges_in) > MAX_MERGES:
            raise ValueError(f"{source}: 'merges' has {len(merges_in)} entries, more than MAX_MERGES={MAX_MERGES}")
        vocab, merges, seen, total_bytes = _Vocabulary(), [], set(), 256
        for k, m in enumerate(merges_in):
            ok = (isinstance(m, list) and len(m) == 2
                  and all(isinstance(i, int) and not isinstance(i, bool) for i in m))
            if not ok:
                raise ValueError(f"{source}: merges[{k}] = {m!r} is not a [left, right] pair of ints")
            if not all(0 <= i < len(vocab.tokens) for i in m):
                raise ValueError(f"{source}: merges[{k}] = {m!r} uses an id outside [0, {len(vocab.tokens)}), "
                                 "the tokens that exist at that point")
            if tuple(m) in seen:
                raise ValueError(f"{source}: merges[{k}] = {m!r} repeats an earlier merge")
            seen.add(tuple(m))
            size = len(vocab.tokens[m[0]]) + len(vocab.tokens[m[1]])
            total_bytes += size
            if size > MAX_TOKEN_BYTES or total_bytes > MAX_VOCAB_BYTES:
                raise ValueError(f"{source}: merges[{k}] = {m!r} makes a token of {size} bytes (the vocabulary "
                                 f"{total_bytes} bytes): beyond MAX_TOKEN_BYTES={MAX_TOKEN_BYTES} or "
                                 f"MAX_VOCAB_BYTES={MAX_VOCAB_BYTES}; the merges look crafted, not learned")
            merges.append((m[0], m[1], vocab.add(m[0], m[1])))
        try:
            tok = cls(pattern=state["pattern"], special_tokens=state["special_tokens"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None
        expected = len(vocab.tokens) + len(tok._specials)
        if state["vocab_size"] != expected:
            raise ValueError(f"{source}: 'vocab_size' is {state['vocab_size']!r} but the merges and special "
                             f"tokens give {expected}: the file is inconsistent")
        tok._set_merges(merges)
        return tok

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """A *new* tokenizer read from ``path`` (``BPETokenizer.load(path)``); the file is fully
        validated first, so a corrupt file raises ``ValueError`` and nothing is half-loaded.

        Bounded in time and memory: a file over :data:`MAX_FILE_BYTES`, JSON nested too deeply
        for the parser, or merges beyond :data:`MAX_MERGES` / :data:`MAX_TOKEN_BYTES` /
        :data:`MAX_VOCAB_BYTES` are refused with ``ValueError``, as is a missing file.
        """
        path = os.fspath(_checks.instance("path", path, (str, os.PathLike), "str or os.PathLike"))
        if not os.path.isfile(path):
            raise ValueError(f"path {path!r} is not a file (no tokenizer to load there)")
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise ValueError(f"path {path!r}: the file has {os.path.getsize(path)} bytes, more than "
                             f"MAX_FILE_BYTES={MAX_FILE_BYTES} for a tokenizer")
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"path {path!r}: not a {FILE_FORMAT} file (not valid JSON: {exc})") from None
        except RecursionError:
            raise ValueError(f"path {path!r}: not a {FILE_FORMAT} file (JSON nested too deeply)") from None
        return cls.from_dict(state, source=f"path {path!r}")

    # ---- Hugging Face bridge -----------------------------------------------------------------
    def to_huggingface(self):
        """The same merges in a Hugging Face ``tokenizers.Tokenizer`` (BPE model, ByteLevel pre-tokenizer
        and decoder), for checking this implementation against theirs.

        HF byte-level BPE writes tokens in GPT-2's printable alphabet (:func:`bytes_to_unicode`);
        ids are kept. With the GPT-2 pattern, HF's own ByteLevel regex does the splitting; with
        another pattern a ``Split`` pre-tokenizer runs it first.
        """
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        alphabet = bytes_to_unicode()
        as_str = ["".join(alphabet[b] for b in token) for token in self.vocab]
        model = models.BPE(
            vocab={s: i for i, s in enumerate(as_str)},
            merges=[(as_str[a], as_str[b]) for a, b, _ in self.merges],
        )
        tok = Tokenizer(model)
        if self.pattern == GPT2_PATTERN:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        elif self.pattern is None:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(self.pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in self._specials])
        for s, i in self.special_tokens.items():
            if tok.token_to_id(s) != i:
                raise RuntimeError(f"special token {s!r} got id {tok.token_to_id(s)} in tokenizers, expected {i}")
        return tok
