"""A cache of trained models, so a later chapter reuses an earlier chapter's model instead of retraining.

A model is described by a **recipe**: a JSON-able dict of everything that decides its weights
(data, tokenizer settings, model sizes, training steps, a ``version`` bumped whenever the
training code changes) plus a **seed**. The cache stores one checkpoint per (recipe, seed),
named by a hash of both, in a per-user directory:

* ``$TRANSFORMER_BOOK_CACHE`` if set (tests and CI point it at a fresh directory);
* else ``$XDG_CACHE_HOME/transformer-book``, else ``~/.cache/transformer-book``.

:func:`cached_model` loads the entry if it is there and sound; otherwise it calls the build
function (training), saves the result and returns it. An entry that cannot be read (a corrupt
file), whose checksum does not match its contents (a flipped bit), that holds non-finite
weights, misses keys, has values of the wrong types or a config the model cannot be built from,
or that was made from another recipe (stale) is reported and rebuilt, never served.
Checkpoints are written by :func:`transformer_book.train.save_checkpoint`, which writes to a
temporary file and renames it: an interrupted save leaves no half-written entry behind, and a
save that fails after training still returns the trained model (uncached).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from transformer_book import _checks, cache_root
from transformer_book.train import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint

__all__ = ["cache_root", "recipe_key", "entry_path", "cached_model", "clear_entry", "describe"]


def _canonical(recipe: object, seed: object) -> str:
    _checks.instance("recipe", recipe, Mapping, "dict")
    _checks.integer("seed", seed)
    try:
        return json.dumps({"recipe": recipe, "seed": seed}, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"recipe must be JSON-serialisable (str, numbers, bools, lists, dicts): {exc}") from None


def recipe_key(recipe: Mapping, seed: int) -> str:
    """16 hex digits of the SHA-256 of the recipe and seed (key order does not matter)."""
    return hashlib.sha256(_canonical(recipe, seed).encode("utf-8")).hexdigest()[:16]


def entry_path(name: str, recipe: Mapping, seed: int, root: str | os.PathLike | None = None) -> Path:
    """Where the entry of ``(recipe, seed)`` lives: ``<root>/<name>-<key>.pt``."""
    _checks.instance("name", name, str)
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"name must be a non-empty file-name-safe str, got {name!r}")
    if root is not None:
        _checks.instance("root", root, (str, os.PathLike), "str, os.PathLike or None")
    root = cache_root() if root is None else Path(root)
    return root / f"{name}-{recipe_key(recipe, seed)}.pt"


def _tilde(text: str) -> str:
    """Text as a reader should see it: paths under the home folder start with ~ (no build-machine paths)."""
    home = str(Path.home()).rstrip("/")
    return text.replace(home + "/", "~/") if home else text


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(f"[model cache] {_tilde(message)}", flush=True)


def _try_load(path: Path, recipe: Mapping, seed: int, make_model: Callable[[dict], nn.Module],
              verbose: bool) -> tuple[nn.Module, dict] | None:
    """The cached (model, info), or None (with a message) when the entry is missing, corrupt or stale."""
    if not path.exists():
        _say(verbose, f"no entry at {path}: building it")
        return None
    try:  # the structure, the checksum and finite weights: read_checkpoint checks them all
        peek = read_checkpoint(path)
    except CheckpointError as exc:
        _say(verbose, f"corrupt entry {path.name} ({str(exc)[:160]}): rebuilding it")
        return None
    stored = {"recipe": peek.get("recipe"), "seed": peek.get("seed")}
    try:
        same = json.loads(_canonical(recipe, seed)) == json.loads(json.dumps(stored, sort_keys=True))
    except (TypeError, ValueError):
        same = False
    if not same:
        _say(verbose, f"stale entry {path.name} (made from another recipe or seed): rebuilding it")
        return None
    if not isinstance(peek.get("info", {}), dict):
        _say(verbose, f"corrupt entry {path.name} (its info is not a dict): rebuilding it")
        return None
    try:  # the config is data from a file: whatever make_model raises on it means "unusable"
        model = make_model(dict(peek["config"]))
        state = load_checkpoint(path, model, peek["config"])
    except Exception as exc:  # noqa: BLE001
        _say(verbose, f"unusable entry {path.name} ({type(exc).__name__}: {str(exc)[:160]}): rebuilding it")
        return None
    info = dict(state.get("info") or {})
    info.update(cache_path=str(path), from_cache=True)
    _say(verbose, f"loaded {path.name} from {path.parent}")
    return model.eval(), info


def cached_model(
    recipe: Mapping,
    seed: int,
    build_fn: Callable[[Mapping, int], tuple[nn.Module, dict]],
    make_model: Callable[[dict], nn.Module],
    *,
    name: str = "model",
    root: str | os.PathLike | None = None,
    rebuild: bool = False,
    verbose: bool = True,
) -> tuple[nn.Module, dict]:
    """The model of ``(recipe, seed)``: from the cache if a sound entry exists, else built and cached.

    Args:
        build_fn: ``build_fn(recipe, seed) -> (model, info)``: trains the model. ``model`` must
            have ``model.config`` (a dataclass or an object with ``to_dict()``); ``info`` is a
            dict of plain values (numbers, strings, lists, dicts: e.g. the tokenizer's
            ``to_dict()``, the loss history) stored next to the weights.
        make_model: ``make_model(config_dict) -> model`` with fresh weights of that config
            (e.g. ``lambda c: GPT(GPTConfig(**c))``); the weights are then loaded into it.
        name: the entry's file-name prefix; root: the cache directory (default :func:`cache_root`).
        rebuild: ignore any existing entry.

    Returns ``(model, info)``, the model in eval mode; ``info`` also holds ``cache_path``
    (``None`` if the directory could not be written: the model is then returned uncached),
    ``from_cache`` and (when built) ``build_seconds``.
    """
    for arg, f in (("build_fn", build_fn), ("make_model", make_model)):
        if not callable(f):
            raise TypeError(f"{arg} must be callable, got {_checks.describe(f)}")
    rebuild = _checks.boolean("rebuild", rebuild)
    verbose = _checks.boolean("verbose", verbose)
    path = entry_path(name, recipe, seed, root)
    if not rebuild:
        found = _try_load(path, recipe, seed, make_model, verbose)
        if found is not None:
            return found
    start = time.perf_counter()
    model, info = build_fn(recipe, seed)
    if not isinstance(model, nn.Module) or not isinstance(info, dict):
        raise TypeError(f"build_fn must return (nn.Module, dict), got ({type(model).__name__}, {type(info).__name__})")
    info = dict(info, build_seconds=time.perf_counter() - start)
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"the built model ({type(model).__name__}) has no .config to rebuild it from")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, model, config, recipe=json.loads(_canonical(recipe, seed))["recipe"], seed=seed,
                        key=recipe_key(recipe, seed), info=info)
    except Exception as exc:  # noqa: BLE001 - a read-only or full disk: the model is good, only not cached
        for leftover in path.parent.glob(glob.escape(path.name) + ".tmp*") if path.parent.is_dir() else ():
            leftover.unlink(missing_ok=True)
        _say(verbose, f"could not save to {path.parent} ({type(exc).__name__}: {exc}); the model is not cached")
        return model.eval(), dict(info, cache_path=None, from_cache=False)
    _say(verbose, f"saved {path.name} to {path.parent}")
    return model.eval(), dict(info, cache_path=str(path), from_cache=False)


def clear_entry(name: str, recipe: Mapping, seed: int, root: str | os.PathLike | None = None) -> bool:
    """Delete the entry of ``(recipe, seed)``; returns whether there was one."""
    path = entry_path(name, recipe, seed, root)
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def describe(info: Mapping[str, Any]) -> str:
    """One line about where a model came from, for a notebook to print."""
    where = info.get("cache_path") and _tilde(str(info["cache_path"]))
    if info.get("from_cache"):
        return f"loaded from the cache: {where}"
    trained = f"trained in {info.get('build_seconds', float('nan')):.0f} s"
    return f"{trained} and saved to the cache: {where}" if where else f"{trained} (not cached: the cache is not writable)"
