"""Chapter 7's code model: the snippet protocol, batches, a tiny end-to-end training run, the sampling widget."""

from __future__ import annotations

import copy

import pytest
import torch

from transformer_book.bigram import BigramLM, bigram_counts
from transformer_book.code_model import (
    CHAPTER7_RECIPE,
    chapter7_model,
    cut_snippet,
    evaluate_loss,
    function_headers,
    parse_rate,
    random_batch,
)
from transformer_book.models import GPT, GPTConfig
from transformer_book.tokenize import BPETokenizer

torch.set_num_threads(1)

TINY_RECIPE = copy.deepcopy(CHAPTER7_RECIPE)
TINY_RECIPE["data"].update(train_bytes=40_000, heldout_bytes=10_000)
TINY_RECIPE["tokenizer"].update(vocab_size=300, train_bytes=20_000)
TINY_RECIPE["model"].update(block_size=16, n_layer=1, n_head=2, n_embd=16)
TINY_RECIPE["train"].update(steps=6, batch_size=4, warmup=2, eval_every=3, eval_windows=4)


# ---------------------------------------------------------------- the snippet protocol
def test_cut_snippet_drops_unfinished_line_and_stops_at_dedent():
    header = "def f(x):"
    assert cut_snippet(header, "\n    y = x + 1\n    return y\nprint(f(2))\n") == "def f(x):\n    y = x + 1\n    return y\n"
    assert cut_snippet(header, "\n    return x\n    if x ==") == "def f(x):\n    return x\n"
    assert cut_snippet(header, "\n    a = 1\n\n    return a\n\nclass C:\n") == "def f(x):\n    a = 1\n\n    return a\n\n"
    assert cut_snippet(header, " # no newline at all") == header  # does not parse: no body
    assert cut_snippet(header, "\nx = 1\n") == "def f(x):\n"  # immediate dedent: no body


def test_function_headers_are_heldout_and_parse_with_a_body():
    headers = function_headers(20, seed=0)
    assert len(headers) == len(set(headers)) == 20
    assert headers == function_headers(20, seed=0) and headers != function_headers(20, seed=1)
    for h in headers:
        assert h.startswith("def ") and h.endswith(":") and "\n" not in h
        compile(h + "\n    pass\n", "<header>", "exec")
    with pytest.raises(ValueError, match=r"asked for n=100000"):
        function_headers(100_000)


def test_parse_rate_counts_what_parses():
    tok = BPETokenizer().train("def f(x):\n    return x\n" * 20, 270)
    bigram = BigramLM(tok.vocab_size, alpha=1e-6).fit(tok.encode("def f(x):\n    return x\n" * 20))
    rate, snippets = parse_rate(bigram, tok, ["def f(x):", "def g(y):"], max_new_tokens=12, temperature=0.0)
    assert [s.parses for s in snippets] == [True, True] and rate == 1.0
    assert snippets[0].text.startswith("def f(x):\n")
    with pytest.raises(ValueError, match="prompts must not be empty"):
        parse_rate(bigram, tok, [])


# ---------------------------------------------------------------- batches and losses
def test_random_batch_targets_are_inputs_shifted():
    ids = torch.arange(100)
    x, y = random_batch(ids, 8, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 10)
    assert torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="longer than block_size=10"):
        random_batch(torch.arange(10), 2, 10)


def test_evaluate_loss_matches_direct_computation():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=8))
    ids = torch.randint(0, 30, (50,))
    x, y = ids[:48].view(6, 8), ids[1:49].view(6, 8)
    with torch.no_grad():
        direct = float(model(x, y).loss)
    assert evaluate_loss(model, ids, 8, batch_size=4) == pytest.approx(direct, rel=1e-5)


def test_bigram_matches_counts():
    ids = [0, 1, 2, 0, 1, 1]
    counts = bigram_counts(ids, 3)
    assert counts.tolist() == [[0, 2, 0], [0, 1, 1], [1, 0, 0]]
    model = BigramLM(3, alpha=1.0).fit(ids)
    expected = (counts[1].double() + 1) / (counts[1].sum() + 3)
    assert torch.allclose(model(torch.tensor([[1]])).logits[0, 0].exp().double(), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"outside \[0, vocab_size=3\)"):
        bigram_counts([0, 3], 3)
    with pytest.raises(ValueError, match="alpha must be a (finite |positive )?number"):
        BigramLM(3, alpha=0)


# ---------------------------------------------------------------- the recipe, end to end
def test_chapter7_model_trains_caches_and_reloads(tmp_path, capsys):
    model, tok, info = chapter7_model(TINY_RECIPE, root=tmp_path, verbose=False)
    assert not info["from_cache"] and len(info["history"].loss) == 6
    assert set(info["history"].evals) == {"heldout"} and info["heldout_loss"] > 0
    again, tok2, info2 = chapter7_model(TINY_RECIPE, root=tmp_path, verbose=False)
    assert info2["from_cache"] and tok2.merges == tok.merges
    assert torch.equal(again.wte.weight, model.wte.weight)


# ---------------------------------------------------------------- the sampling widget
def test_sampling_view_is_filled_and_reacts():
    pytest.importorskip("ipywidgets")
    from transformer_book.viz.sampling import sampling_render, sampling_view

    tok = BPETokenizer().train("def f(x):\n    return x + 1\n" * 10, 270)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    view = sampling_view(model, tok, prompt="def f", max_new_tokens=5)
    assert view.output.outputs and "image/png" in view.output.outputs[0]["data"]
    assert "temperature 0.8" in view.message.value
    view.temperature.value = 0.0
    assert "(greedy)" in view.message.value
    view.prompt.value = ""
    assert "type a prompt" in view.message.value and view.output.outputs == ()
    line, fig = sampling_render(model, tok, "def", temperature=1.0, top_k=3, max_new_tokens=4)
    assert "top-k 3" in line and fig.axes[0].get_title().startswith("next token after the prompt: 3 of")


# --------------------------------------------------------------------------- issue 10
def test_code_model_and_bigram_arguments_follow_the_one_rule():
    from transformer_book.code_model import random_batch

    with pytest.raises(TypeError, match="ids must hold integer token ids"):
        random_batch(torch.ones(100), 2, 8)
    with pytest.raises(TypeError, match="batch_size must be a positive int"):
        random_batch(torch.arange(100), 2.0, 8)
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        random_batch(torch.arange(100), 2, 0)
    with pytest.raises(TypeError, match="ids must be a 1-D sequence of integer ids, got NoneType"):
        bigram_counts(None, 3)
    model = BigramLM(3).fit([0, 1, 2])
    out = model(torch.tensor([[0, 1]]), targets=torch.full((1, 2), -1))
    assert out.loss.item() == 0.0  # all targets ignored: 0.0, as label_smoothed_cross_entropy
    with pytest.raises(TypeError, match="targets must hold integer ids"):
        model(torch.tensor([[0, 1]]), targets=torch.ones(1, 2))
