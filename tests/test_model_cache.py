"""The model cache: hit, miss, stale and corrupt entries, atomic writes, where it lives."""

from __future__ import annotations

import os

import pytest
import torch

from transformer_book import model_cache
from transformer_book.model_cache import cache_root, cached_model, clear_entry, entry_path, recipe_key
from transformer_book.models import GPT, GPTConfig

torch.set_num_threads(1)

RECIPE = {"version": 1, "model": {"vocab_size": 20, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 8}}


class Builder:
    """A build function that counts its calls and makes a (random, untrained) tiny GPT."""

    def __init__(self):
        self.calls = 0

    def __call__(self, recipe, seed):
        self.calls += 1
        torch.manual_seed(seed)
        return GPT(GPTConfig(**recipe["model"])), {"note": "built", "losses": [3.0, 2.5], "seed_used": seed}


def make(config: dict) -> GPT:
    return GPT(GPTConfig.from_dict(config))


def _get(tmp_path, builder, recipe=RECIPE, seed=0, **kw):
    return cached_model(recipe, seed, builder, make, name="tiny", root=tmp_path, **kw)


def test_miss_then_hit_gives_the_same_weights(tmp_path, capsys):
    builder = Builder()
    first, info1 = _get(tmp_path, builder)
    second, info2 = _get(tmp_path, builder)
    assert builder.calls == 1
    assert not info1["from_cache"] and info2["from_cache"]
    assert info2["note"] == "built" and info2["losses"] == [3.0, 2.5] and "build_seconds" in info2
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert not second.training
    out = capsys.readouterr().out
    assert "no entry" in out and "saved" in out and "loaded" in out


def test_key_depends_on_recipe_and_seed_not_on_key_order():
    reordered = {"model": RECIPE["model"], "version": 1}
    assert recipe_key(RECIPE, 0) == recipe_key(reordered, 0)
    assert recipe_key(RECIPE, 0) != recipe_key(RECIPE, 1)
    assert recipe_key(RECIPE, 0) != recipe_key(RECIPE | {"version": 2}, 0)


def test_new_recipe_or_seed_builds_a_new_entry(tmp_path):
    builder = Builder()
    _get(tmp_path, builder)
    _get(tmp_path, builder, seed=1)
    _get(tmp_path, builder, recipe=RECIPE | {"version": 2})
    assert builder.calls == 3
    assert len(list(tmp_path.glob("tiny-*.pt"))) == 3


def test_corrupt_entry_is_rebuilt_with_a_message(tmp_path, capsys):
    builder = Builder()
    _get(tmp_path, builder)
    path = entry_path("tiny", RECIPE, 0, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated file, as after a crash mid-copy
    capsys.readouterr()
    model, info = _get(tmp_path, builder)
    assert builder.calls == 2 and not info["from_cache"]
    assert "corrupt entry" in capsys.readouterr().out
    _, info = _get(tmp_path, builder)  # the rebuilt entry is sound
    assert info["from_cache"] and builder.calls == 2


def test_garbage_entry_is_rebuilt(tmp_path, capsys):
    path = entry_path("tiny", RECIPE, 0, tmp_path)
    path.write_text("not a checkpoint")
    builder = Builder()
    _, info = _get(tmp_path, builder)
    assert builder.calls == 1 and "corrupt entry" in capsys.readouterr().out


def test_stale_entry_is_rebuilt(tmp_path, capsys):
    builder = Builder()
    _get(tmp_path, builder, recipe=RECIPE | {"version": 0})
    old = entry_path("tiny", RECIPE | {"version": 0}, 0, tmp_path)
    os.replace(old, entry_path("tiny", RECIPE, 0, tmp_path))  # an entry from another recipe under this key
    capsys.readouterr()
    _, info = _get(tmp_path, builder)
    assert builder.calls == 2 and not info["from_cache"]
    assert "stale entry" in capsys.readouterr().out


def test_interrupted_save_leaves_no_entry(tmp_path, monkeypatch):
    def crash(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        _get(tmp_path, Builder())
    assert not entry_path("tiny", RECIPE, 0, tmp_path).exists()  # only the temporary file was written
    monkeypatch.undo()
    builder = Builder()
    _, info = _get(tmp_path, builder)
    assert builder.calls == 1 and not info["from_cache"]


def test_unwritable_cache_still_returns_the_model(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    builder = Builder()
    model, info = _get(blocker / "cache", builder)
    assert builder.calls == 1 and info["cache_path"] is None and isinstance(model, GPT)
    assert "could not save" in capsys.readouterr().out
    assert "not cached" in model_cache.describe(info)


def test_rebuild_flag_and_clear(tmp_path):
    builder = Builder()
    _get(tmp_path, builder)
    _get(tmp_path, builder, rebuild=True)
    assert builder.calls == 2
    assert clear_entry("tiny", RECIPE, 0, tmp_path)
    assert not clear_entry("tiny", RECIPE, 0, tmp_path)


def test_cache_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFORMER_BOOK_CACHE", str(tmp_path / "here"))
    assert cache_root() == tmp_path / "here"
    monkeypatch.delenv("TRANSFORMER_BOOK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "transformer-book"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root().parts[-2:] == (".cache", "transformer-book")


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="recipe must be a dict, got list"):
        recipe_key([1, 2], 0)
    with pytest.raises(TypeError, match="seed must be an int, got str"):
        recipe_key(RECIPE, "0")
    with pytest.raises(TypeError, match="JSON-serialisable"):
        recipe_key({"f": object()}, 0)
    with pytest.raises(ValueError, match="name must be a non-empty file-name-safe str, got '../x'"):
        entry_path("../x", RECIPE, 0, tmp_path)
    with pytest.raises(TypeError, match=r"build_fn must return \(nn.Module, dict\)"):
        cached_model(RECIPE, 0, lambda r, s: ("model", {}), make, name="tiny", root=tmp_path, verbose=False)


def test_describe():
    assert "loaded from the cache" in model_cache.describe({"from_cache": True, "cache_path": "/x/y.pt"})
    assert "trained in 3 s" in model_cache.describe({"from_cache": False, "build_seconds": 3.2, "cache_path": "/x"})


def test_messages_show_the_home_folder_as_a_tilde(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / "cache"
    _get(root, Builder())  # a miss: "no entry at ..." and "saved ... to ..."
    _, info = _get(root, Builder())  # a hit: "loaded ... from ..."
    said = capsys.readouterr().out + model_cache.describe(info)
    assert "~/cache" in said and str(tmp_path) not in said
    assert model_cache.describe({"from_cache": True, "cache_path": "/elsewhere/x.pt"}).endswith("/elsewhere/x.pt")


# --------------------------------------------------------------------------- issue 10: any corrupt entry is rebuilt
def _tamper(tmp_path, mutate):
    path = entry_path("tiny", RECIPE, 0, tmp_path)
    state = torch.load(path, weights_only=True)
    mutate(state)
    torch.save(state, path)


def _flip_a_bit(state):
    state["model"]["lm_head.weight"].view(torch.int32)[0, 0] ^= 1 << 2


def _nan_weights_resummed(state):  # NaN weights in a file whose checksum is consistent
    from transformer_book.train import tensor_checksum
    state["model"]["lm_head.weight"].fill_(float("nan"))
    state["checksum"] = tensor_checksum({k: v for k, v in state.items() if k != "checksum"})


@pytest.mark.parametrize("label, mutate", [
    ("missing model key", lambda s: s.pop("model")),
    ("config of wrong types", lambda s: s.__setitem__("config", {"vocab_size": "20"})),
    ("absurd config", lambda s: s["config"].__setitem__("n_layer", 10 ** 6)),
    ("config not a dict", lambda s: s.__setitem__("config", [1])),
    ("info not a dict", lambda s: s.__setitem__("info", [1])),
    ("NaN weights", lambda s: s["model"]["lm_head.weight"].fill_(float("nan"))),
    ("NaN weights, checksum redone", _nan_weights_resummed),
    ("a flipped bit", _flip_a_bit),
])
def test_any_corrupt_entry_is_rebuilt_never_served(tmp_path, capsys, label, mutate):
    builder = Builder()
    first, _ = _get(tmp_path, builder)
    _tamper(tmp_path, mutate)
    capsys.readouterr()
    model, info = _get(tmp_path, builder)
    assert builder.calls == 2 and not info["from_cache"]
    assert "rebuilding it" in capsys.readouterr().out
    for a, b in zip(first.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)  # the rebuilt model, not the damaged one
    _, info = _get(tmp_path, builder)
    assert info["from_cache"] and builder.calls == 2


def test_a_failed_save_after_training_returns_the_model_and_leaves_no_temporary(tmp_path, monkeypatch, capsys):
    def fail(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a file")
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(torch, "save", fail)
    builder = Builder()
    model, info = _get(tmp_path, builder)
    assert isinstance(model, GPT) and builder.calls == 1 and info["cache_path"] is None
    assert "could not save" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_cached_model_flags_are_checked(tmp_path):
    with pytest.raises(TypeError, match="rebuild must be a bool"):
        _get(tmp_path, Builder(), rebuild=1)
    with pytest.raises(TypeError, match="make_model must be callable"):
        cached_model(RECIPE, 0, Builder(), None, root=tmp_path)
    with pytest.raises(TypeError, match="root must be"):
        entry_path("tiny", RECIPE, 0, 3)
