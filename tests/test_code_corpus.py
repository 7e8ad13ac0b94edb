"""The standard-library code corpus: deterministic, size-capped, split by file, robust decoding."""

from __future__ import annotations

import pytest

from transformer_book.data.code import SKIP_DIRS, stdlib_corpus, stdlib_files


def test_files_exist_and_skip_tests_and_site_packages():
    names = stdlib_files("all")
    assert len(names) > 100, "the running interpreter's standard library should have many modules"
    assert "json/decoder.py" in names and "os.py" in names
    for name in names:
        assert not SKIP_DIRS.intersection(name.split("/")[:-1]), name


def test_split_is_by_file_disjoint_and_about_one_in_ten():
    train, heldout, every = stdlib_files("train"), stdlib_files("heldout"), stdlib_files("all")
    assert set(train).isdisjoint(heldout)
    assert sorted(train + heldout) == every
    assert 0.05 < len(heldout) / len(every) < 0.15


def test_corpus_is_deterministic_and_capped():
    a = stdlib_corpus(max_bytes=50_000, seed=0)
    b = stdlib_corpus(max_bytes=50_000, seed=0)
    assert a == b
    size = len(a.encode("utf-8"))
    assert 45_000 < size <= 50_000
    assert a.endswith("\n")


def test_seed_changes_the_file_order_and_split_changes_the_text():
    assert stdlib_corpus(20_000, seed=0) != stdlib_corpus(20_000, seed=1)
    train = stdlib_corpus(20_000, split="train")
    heldout = stdlib_corpus(20_000, split="heldout")
    assert train != heldout


def test_each_split_holds_exactly_its_own_files(tmp_path):
    for i in range(60):
        (tmp_path / f"mod{i}.py").write_text(f"MARKER_{i} = {i}\n")
    for split in ("train", "heldout"):
        text = stdlib_corpus(None, split=split, root=tmp_path)
        expected = {f"MARKER_{n[3:-3]}" for n in stdlib_files(split, root=tmp_path)}
        found = {line.split(" = ")[0] for line in text.splitlines()}
        assert found == expected and expected
    assert stdlib_files("heldout", root=tmp_path), "60 files should put a few in the held-out split"


def test_robust_decoding(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "latin.py").write_bytes(b"# -*- coding: latin-1 -*-\nname = '\xe9t\xe9'\n")
    (tmp_path / "pkg" / "broken.py").write_bytes(b"x = '\xff\xfe'\r\ny = 1\r\n")
    (tmp_path / "pkg" / "bom.py").write_bytes("\ufeffz = 'ü'".encode("utf-8"))
    (tmp_path / "site-packages" / "skipped.py").write_text("SKIPPED = True\n")
    names = stdlib_files("all", root=tmp_path)
    assert names == ["latin.py", "pkg/bom.py", "pkg/broken.py"]
    text = stdlib_corpus(None, split="all", root=tmp_path)
    assert "name = 'été'" in text  # the PEP 263 cookie was honoured
    assert "x = '\ufffd\ufffd'\ny = 1\n" in text  # invalid bytes -> U+FFFD, CRLF -> LF
    assert "z = 'ü'\n" in text and "\ufeff" not in text  # BOM dropped, final newline added
    assert "SKIPPED" not in text


def test_last_file_is_cut_at_a_line_boundary(tmp_path):
    (tmp_path / "a.py").write_text("".join(f"line_{i} = {i}\n" for i in range(100)))
    text = stdlib_corpus(max_bytes=35, split="all", root=tmp_path)
    assert text == "line_0 = 0\nline_1 = 1\nline_2 = 2\n"


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100"])
def test_bad_max_bytes(bad):
    with pytest.raises(ValueError, match="max_bytes") as info:
        stdlib_corpus(max_bytes=bad)
    assert repr(bad) in str(info.value)


def test_bad_split_and_seed_and_root(tmp_path):
    with pytest.raises(ValueError, match="'validation'"):
        stdlib_corpus(1000, split="validation")
    with pytest.raises(TypeError, match="seed"):
        stdlib_corpus(1000, seed="0")
    with pytest.raises(ValueError, match="root"):
        stdlib_files("all", root=tmp_path / "missing")
    with pytest.raises(RuntimeError, match="no Python files"):
        stdlib_corpus(1000, split="all", root=tmp_path)
