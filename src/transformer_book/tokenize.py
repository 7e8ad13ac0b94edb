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
def _check_text(text: object, name: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    return text


def _check_ids(ids: object, n_vocab: int) -> list[int]:
    """A list of Python ints in ``[0, n_vocab)``; accepts lists, tuples, 1-D tensors/arrays."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"ids must be a sequence of ints, got {type(ids).__name__}")
    if hasattr(ids, "tolist") and hasattr(ids, "ndim"):  # torch.Tensor / numpy.ndarray
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got an array of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if not isinstance(ids, Iterable):
        raise TypeError(f"ids must be a sequence of ints, got {type(ids).__name__}")
    out = []
    for position, i in enumerate(ids):
        if not isinstance(i, numbers.Integral) or isinstance(i, bool):
            raise TypeError(f"ids[{position}] must be an int, got {type(i).__name__} {i!r}")
        if not 0 <= i < n_vocab:
            raise ValueError(
                f"ids[{position}] = {int(i)} is out of range: token ids must be in [0, {n_vocab}) "
                f"for this tokenizer (vocabulary size {n_vocab})"
            )
        out.append(int(i))
    return out


def _check_positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Character and word tokenizers
# --------------------------------------------------------------------------------------------
class _VocabularyTokenizer:
    """A tokenizer with a fixed list of tokens and an unknown token at id 0."""

    def __init__(self, tokens: Iterable[str], unk_token: str = "<unk>") -> None:
        _check_text(unk_token, "unk_token")
        self.unk_token = unk_token
        self.itos: list[str] = [unk_token]
        for token in tokens:
            _check_text(token, "each token")
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
        return [self.stoi.get(piece, self.unk_id) for piece in self._split(_check_text(text))]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; ``unk_id`` comes back as ``unk_token`` (what it stood for is lost)."""
        return "".join(self.itos[i] for i in _check_ids(ids, self.vocab_size))

    def id_to_token(self, token_id: int) -> str:
        return self.itos[_check_ids([token_id], self.vocab_size)[0]]

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
        _check_text(text)
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
        _check_text(text)
        return cls(_frequent(Counter(cls._regex.findall(text)), max_size, min_count), unk_token=unk_token)

    def _split(self, text: str) -> list[str]:
        return self._regex.findall(text)


def _frequent(counts: Counter, max_size: int | None, min_count: int) -> list[str]:
    if max_size is not None:
        _check_positive_int(max_size, "max_size")
    _check_positive_int(min_count, "min_count")
    kept = [t for t, c in counts.most_common() if c >= min_count]  # stable: ties keep first-seen order
    return kept if max_size is None else kept[:max_size]


# --------------------------------------------------------------------------------------------
# BPE: the pieces
# --------------------------------------------------------------------------------------------
def count_pairs(ids: Sequence[int], counts: dict | None = None, weight: int = 1) -> dict[tuple[int, int], int]:
    """Count adjacent pairs: ``[1, 2, 3, 1, 2]`` -> ``{(1, 2): 2, (2, 3): 1, (3, 1): 1}``.

    Adds ``weight`` per occurrence into ``counts`` if given (a word seen ``weight`` times).
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids``, left to right, by ``new_id``.

    ``merge_pair([5, 5, 5], (5, 5), 9)`` is ``[9, 5]``: occurrences do not overlap.
    """
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
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__} {vocab_size!r}")
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
            new = merge_pair(old, pair, new_id)
            words[index] = new
            old_pairs, new_pairs = count_pairs(old), count_pairs(new)
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
    _check_vocab_size(vocab_size)
    vocab = _Vocabulary()
    sequences = [list(c) for c in chunks]
    merges: list[Merge] = []
    while len(vocab.tokens) < vocab_size:
        counts: dict[tuple[int, int], int] = {}
        for seq in sequences:
            count_pairs(seq, counts)
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))  # most frequent; ties -> smallest ids
        new_id = vocab.add(*pair)
        merges.append((pair[0], pair[1], new_id))
        sequences = [merge_pair(seq, pair, new_id) for seq in sequences]
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
        if pattern is not None and not isinstance(pattern, str):
            raise TypeError(f"pattern must be a regular expression str or None, got {type(pattern).__name__}")
        try:
            self._regex = None if pattern is None else regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        if isinstance(special_tokens, str) or not isinstance(special_tokens, Sequence):
            raise TypeError(f"special_tokens must be a list of str, got {type(special_tokens).__name__}")
        for s in special_tokens:
            if not isinstance(s, str) or not s:
                raise ValueError(f"each special token must be a non-empty str, got {s!r}")
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
        _check_text(text)
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
        _check_text(text)
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
            ids = merge_pair(ids, best, ranks[best][1])
        if len(self._cache) >= 1 << 16:
            self._cache.clear()
        self._cache[data] = ids
        return ids

    def encode(self, text: str, allowed_special: bool = True) -> list[int]:
        """Token ids of ``text``. With ``allowed_special`` the strings of special tokens become
        their ids; without, they are encoded as ordinary text. Either way ``decode`` restores ``text``."""
        _check_text(text)
        if not isinstance(allowed_special, bool):
            raise TypeError(f"allowed_special must be a bool, got {type(allowed_special).__name__}")
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
        (token_id,) = _check_ids([token_id], self.vocab_size)
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
        """Write the tokenizer as JSON (pattern, special tokens, merges in order)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False)

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
        vocab, merges, seen = _Vocabulary(), [], set()
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
        validated first, so a corrupt file raises ``ValueError`` and nothing is half-loaded."""
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{os.fspath(path)!s}: not a {FILE_FORMAT} file (not valid JSON: {exc})") from None
        return cls.from_dict(state, source=os.fspath(path))

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
