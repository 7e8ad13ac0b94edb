"""Tests for transformer_book.seq2seq: chapter 1's GRU encoder-decoder with and without attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_book.data.numbers import english_vocab, german_vocab, number_pairs
from transformer_book.seq2seq import (
    ATTENTIONS,
    AdditiveAttention,
    Decoder,
    DotProductAttention,
    Encoder,
    Seq2Seq,
    additive_scores,
    dot_scores,
    evaluate,
    greedy_decode,
    masked_softmax,
    source_words,
    train_model,
    translate,
)

torch.set_num_threads(1)

EN, DE = english_vocab(), german_vocab()
PAIRS = number_pairs(40, seed=0)


def make(kind: str, seed: int = 0, **kw) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(EN, DE, kind, emb_dim=kw.pop("emb_dim", 16), hidden_dim=kw.pop("hidden_dim", 32), **kw).eval()


def batch(pairs):
    src = EN.encode_batch([s for s, _ in pairs])
    tgt = DE.encode_batch([t for _, t in pairs], add_bos=True, add_eos=True)
    return src, tgt


# --------------------------------------------------------------------------- attention functions

def test_additive_scores_match_a_loop_over_every_pair():
    g = torch.Generator().manual_seed(0)
    B, T, S, Cq, Ck, A = 2, 3, 4, 5, 6, 7
    q, k = torch.randn(B, T, Cq, generator=g), torch.randn(B, S, Ck, generator=g)
    wq, wk, v = torch.randn(A, Cq, generator=g), torch.randn(A, Ck, generator=g), torch.randn(A, generator=g)
    expected = torch.empty(B, T, S)
    for b in range(B):
        for i in range(T):
            for j in range(S):
                expected[b, i, j] = v @ torch.tanh(wq @ q[b, i] + wk @ k[b, j])
    torch.testing.assert_close(additive_scores(q, k, wq, wk, v), expected)


def test_additive_attention_module_uses_its_linear_layers():
    torch.manual_seed(0)
    attn = AdditiveAttention(5, 6, 7)
    q, k = torch.randn(2, 3, 5), torch.randn(2, 4, 6)
    expected = torch.tanh(attn.w_query(q)[:, :, None] + attn.w_key(k)[:, None]) @ attn.v
    torch.testing.assert_close(attn.score(q, k), expected)


def test_dot_scores_match_einsum():
    q, k = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    torch.testing.assert_close(dot_scores(q, k), torch.einsum("btc,bsc->bts", q, k))


def test_dot_attention_matches_torch_scaled_dot_product_attention_with_scale_one():
    torch.manual_seed(0)
    q, k = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    context, weights = DotProductAttention()(q, k, mask[:, None, :])
    reference = F.scaled_dot_product_attention(q, k, k, attn_mask=mask[:, None, :], scale=1.0)
    torch.testing.assert_close(context, reference)
    assert weights.shape == (3, 4, 6)


def test_masked_softmax_zero_on_masked_sums_to_one_and_no_nan_on_empty_rows():
    scores = torch.randn(2, 3, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)[:, None, :]
    w = masked_softmax(scores, mask)
    assert (w[0][:, ~mask[0, 0]] == 0).all()  # exactly zero, not just small
    torch.testing.assert_close(w[0].sum(-1), torch.ones(3))
    torch.testing.assert_close(w[0][:, mask[0, 0]], scores[0][:, mask[0, 0]].softmax(-1))
    assert (w[1] == 0).all()  # nothing to attend to: all zero, defined
    w.sum().backward()
    assert torch.isfinite(scores.grad).all()
    torch.testing.assert_close(masked_softmax(scores), scores.softmax(-1))


def test_attention_functions_reject_bad_input():
    q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match=r"query \(B, T, C\) and keys \(B, S, C\) must share B and C.*\(2, 3, 4\).*\(2, 5, 6\)"):
        dot_scores(q, torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"query must have 3 dimensions( \(B, T, C\))?, got shape \(3, 4\)"):
        dot_scores(q[0], k)
    with pytest.raises(TypeError, match="keys must be a floating-point tensor, got dtype torch.int64"):
        dot_scores(q, k.long())
    with pytest.raises(ValueError, match=r"w_key must have shape \(A, C_k\) = \(7, 4\), got \(7, 3\)"):
        additive_scores(q, k, torch.randn(7, 4), torch.randn(7, 3), torch.randn(7))
    with pytest.raises(TypeError, match="mask must be a boolean tensor"):
        masked_softmax(torch.randn(2, 5), torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) does not broadcast to scores of shape \(2, 5\)"):
        masked_softmax(torch.randn(2, 5), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_dim must be a positive int, got 0"):
        AdditiveAttention(4, 4, 0)


# --------------------------------------------------------------------------- the GRU parts

def test_encoder_matches_nn_gru_on_each_unpadded_sequence():
    """Packing makes each row of a padded batch equal to nn.GRU run on that row alone."""
    model = make("additive")
    pairs = [PAIRS[i] for i in range(6)]
    src, _ = batch(pairs)
    memory, hidden, mask = model.encode(src)
    gru = model.encoder.gru
    for b, (words, _) in enumerate(pairs):
        L = len(words)
        x = model.encoder.embed(src[b:b + 1, :L])
        out, h_n = gru(x)  # the plain torch.nn.GRU, no packing, no padding
        torch.testing.assert_close(memory[b, :L], out[0])
        assert (memory[b, L:] == 0).all()
        summary = torch.cat([h_n[0, 0], h_n[1, 0]])
        torch.testing.assert_close(hidden[0, b], torch.tanh(model.bridge(summary)))
    assert mask.tolist() == (src != 0).tolist()


def test_encoder_bidirectional_gru_by_hand_from_its_weights():
    """The backward direction reads the sequence reversed: check against two nn.GRUCell loops."""
    model = make("dot")
    gru = model.encoder.gru
    src, _ = batch(PAIRS[:1])
    x = model.encoder.embed(src)[0]
    memory, _, _ = model.encode(src)
    H = gru.hidden_size
    outputs = []
    for suffix in ("", "_reverse"):
        cell = nn.GRUCell(gru.input_size, H)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).data.copy_(getattr(gru, f"{name}_l0{suffix}"))
        h, seq = torch.zeros(1, H), []
        steps = range(x.size(0)) if not suffix else reversed(range(x.size(0)))
        for t in steps:
            h = cell(x[t:t + 1], h)
            seq.append(h[0])
        outputs.append(torch.stack(seq if not suffix else seq[::-1]))
    torch.testing.assert_close(memory[0], torch.cat(outputs, dim=-1))


def test_decoder_step_by_step_equals_all_at_once():
    for kind in ATTENTIONS:
        model = make(kind)
        src, tgt = batch(PAIRS[:5])
        logits, weights = model(src, tgt[:, :-1])
        memory, hidden, mask = model.encode(src)
        for t in range(tgt.size(1) - 1):
            step_logits, hidden, w = model.decoder(tgt[:, t:t + 1], hidden, memory, mask)
            torch.testing.assert_close(step_logits[:, 0], logits[:, t], atol=1e-5, rtol=1e-5)
            if kind != "none":
                torch.testing.assert_close(w[:, 0], weights[:, t], atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- the model

@pytest.mark.parametrize("kind", ATTENTIONS)
def test_forward_shapes_masks_and_sums(kind):
    model = make(kind)
    src, tgt = batch(PAIRS[:8])
    logits, weights = model(src, tgt[:, :-1])
    B, S, T = src.size(0), src.size(1), tgt.size(1) - 1
    assert logits.shape == (B, T, len(DE))
    if kind == "none":
        assert weights is None
        return
    assert weights.shape == (B, T, S)
    pad = src == EN.pad_id
    assert pad.any(), "the batch must contain padding for this test to mean something"
    assert (weights.masked_select(pad[:, None, :].expand_as(weights)) == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, T))


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_padding_does_not_change_a_sequence_result(kind):
    model = make(kind)
    short = [p for p in PAIRS if len(p[0]) <= 3][:1]
    long = [p for p in PAIRS if len(p[0]) >= 7][:1]
    src_alone, tgt_alone = batch(short)
    src_padded, tgt_padded = batch(short + long)
    logits_alone, w_alone = model(src_alone, tgt_alone[:, :-1])
    logits_padded, w_padded = model(src_padded, tgt_padded[:, :-1])
    T, S = tgt_alone.size(1) - 1, src_alone.size(1)
    torch.testing.assert_close(logits_padded[0, :T], logits_alone[0], atol=1e-5, rtol=1e-5)
    if kind != "none":
        torch.testing.assert_close(w_padded[0, :T, :S], w_alone[0], atol=1e-6, rtol=1e-5)


def test_greedy_decode_is_the_argmax_of_teacher_forcing_on_its_own_output():
    model = make("additive")
    src, _ = batch(PAIRS[:6])
    tokens, weights = greedy_decode(model, src, max_len=12)
    assert tokens.dtype == torch.long and tokens.shape[0] == 6 and tokens.shape[1] <= 12
    assert weights.shape == (6, tokens.shape[1], src.shape[1])
    bos = torch.full((6, 1), DE.bos_id)
    logits, _ = model(src, torch.cat([bos, tokens[:, :-1]], dim=1))
    expected = logits.argmax(-1)
    for b in range(6):  # up to and including each row's <eos>; <pad> after it
        row = tokens[b].tolist()
        n = row.index(DE.eos_id) + 1 if DE.eos_id in row else len(row)
        assert row[:n] == expected[b, :n].tolist()
        assert all(t == DE.pad_id for t in row[n:])
        assert (weights[b, n:] == 0).all()


@pytest.mark.parametrize(
    "src, error, pattern",
    [
        (torch.zeros(2, 3), TypeError, r"src must have dtype torch.long \(token ids\), got torch.float32"),
        (torch.ones(3, dtype=torch.long), ValueError, r"src must have shape \(B, L\).*got shape \(3,\)"),
        (torch.ones(1, 2, 3, dtype=torch.long), ValueError, r"got shape \(1, 2, 3\)"),
        (torch.tensor([[3, 4], [5, 40]]), ValueError, r"src has id 40 at position \(1, 1\), outside the vocabulary \[0, 32\]"),
        (torch.tensor([[3, -1]]), ValueError, r"src has id -1 at position \(0, 1\)"),
        (torch.tensor([[3, 4], [0, 0]]), ValueError, "src row 1 is all padding"),
        (torch.tensor([[0, 3, 4]]), ValueError, "src row 0 has padding before a real token"),
        ([[3, 4]], TypeError, "src must be a torch.Tensor of token ids, got list"),
    ],
)
def test_model_rejects_bad_source_tokens(src, error, pattern):
    model = make("dot")
    tgt = torch.ones(1 if not isinstance(src, torch.Tensor) or src.dim() != 2 else src.size(0), 2, dtype=torch.long)
    with pytest.raises(error, match=pattern):
        model(src, tgt)
    if isinstance(src, torch.Tensor):
        with pytest.raises(error, match=pattern):
            greedy_decode(model, src)


def test_model_rejects_bad_target_tokens_and_settings():
    model = make("dot")
    src = torch.tensor([[3, 4]])
    with pytest.raises(ValueError, match=r"tgt_in has id 35 at position \(0, 1\), outside the vocabulary \[0, 34\]"):
        model(src, torch.tensor([[1, 35]]))
    with pytest.raises(TypeError, match="tgt_in must have dtype torch.long"):
        model(src, torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"same batch size, got \(1, 2\) and \(2, 2\)"):
        model(src, torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention must be one of \('none', 'additive', 'dot'\), got 'bahdanau'"):
        Seq2Seq(EN, DE, "bahdanau")
    with pytest.raises(ValueError, match="hidden_dim must be even"):
        Seq2Seq(EN, DE, "dot", hidden_dim=33)
    with pytest.raises(TypeError, match="src_vocab must be a Vocab, got int"):
        Seq2Seq(33, DE)
    with pytest.raises(ValueError, match="max_len must be a positive int, got 0"):
        greedy_decode(model, src, max_len=0)


def test_translate_returns_tokens_and_attention_matrix_and_names_unknown_words():
    model = make("additive")
    t = translate(model, "Twenty-Four")
    assert t.source == ["twenty", "four"]
    assert t.weights.shape == (len(t.target), 2)
    assert t.text == "".join(t.target)
    assert all(tok in DE.itos[3:] for tok in t.target)
    assert translate(model, 24).source == translate(model, "24").source == ["twenty", "four"]
    assert translate(model, "one hundred and one").source == ["one", "hundred", "one"]
    assert translate(make("none"), "seven").weights is None
    with pytest.raises(ValueError, match=r"text has unknown words \['fourty', 'zwo'\] in 'fourty zwo two'"):
        translate(model, "fourty zwo two")
    with pytest.raises(ValueError, match="no words to translate"):
        translate(model, " , ")
    with pytest.raises(ValueError, match=r"text: value must be an int in \[0, 999999\], got 1000000"):
        translate(model, "1000000")
    with pytest.raises(TypeError, match="text must be a str or an int, got float"):
        source_words(2.5, EN)


# --------------------------------------------------------------------------- learning

@pytest.mark.parametrize("kind", ["additive", "dot"])
def test_tiny_overfit(kind):
    """A small attention model learns 48 pairs by heart in a few seconds."""
    torch.manual_seed(0)
    pairs = number_pairs(48, max_value=9_999, seed=3)
    model = Seq2Seq(EN, DE, kind, emb_dim=32, hidden_dim=64)
    losses = train_model(model, pairs, epochs=60, batch_size=16, lr=1e-2, progress=False)
    assert len(losses) == 60 * 3 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.05 < losses[0]
    result = evaluate(model, pairs)
    assert result.accuracy == 1.0, result.predictions


def test_evaluate_counts_exact_matches_by_length():
    model = make("dot")
    pairs = PAIRS[:20]
    result = evaluate(model, pairs, batch_size=7)
    assert len(result.predictions) == 20
    manual = sum(p == list(t) for p, (_, t) in zip(result.predictions, pairs))
    assert result.accuracy == manual / 20
    assert sum(total for _, total in result.by_length.values()) == 20
    for length, (correct, total) in result.by_length.items():
        assert total == sum(len(s) == length for s, _ in pairs)
        assert result.accuracy_at(length) == correct / total
    max_len = 2 * max(len(t) for _, t in pairs) + 2  # evaluate's default
    tokens, _ = greedy_decode(model, EN.encode_batch([pairs[0][0]]), max_len=max_len)
    assert result.predictions[0] == DE.decode(tokens[0])
    assert evaluate(model, pairs, max_len=3).predictions[0] == DE.decode(tokens[0, :3])
    with pytest.raises(ValueError, match="no source of length 99"):
        result.accuracy_at(99)


def test_train_and_evaluate_reject_bad_input():
    model = make("dot")
    with pytest.raises(ValueError, match="pairs must be a non-empty list"):
        train_model(model, [])
    with pytest.raises(ValueError, match=r"epochs must be a positive int, got 0"):
        train_model(model, PAIRS, epochs=0)
    with pytest.raises(ValueError, match=r"lr must be a (finite |positive )?number( > 0(\.0)?)?, got -1"):
        train_model(model, PAIRS, lr=-1)
    with pytest.raises(ValueError, match=r"pairs\[0\] must be a pair"):
        evaluate(model, [["one"]])
    with pytest.raises(TypeError, match="model must be a Seq2Seq, got Linear"):
        evaluate(nn.Linear(2, 2), PAIRS)


# --------------------------------------------------------------------------- issue 10
def test_mixed_dtypes_and_bad_sizes_are_named():
    q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"query (torch\.)?float32, keys (torch\.)?float64"):
        dot_scores(q, k)
    with pytest.raises(TypeError, match="vocab_size must be a positive int"):
        Encoder(4.0, 4, 6)
    with pytest.raises(ValueError, match="pad_id must be an int in"):
        Encoder(10, 4, 6, pad_id=10)
    with pytest.raises(TypeError, match="attention must be a nn.Module"):
        Decoder(10, 4, 6, attention="additive")
    with pytest.raises(TypeError, match="seed must be an int"):
        train_model(make("dot"), PAIRS, seed="0")
    with pytest.raises(TypeError, match="pairs must be a non-empty list"):
        train_model(make("dot"), None)
