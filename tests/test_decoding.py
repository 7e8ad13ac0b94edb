"""Greedy and beam search: beam 1 == greedy; a wide beam finds the best sequence found by enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch

from transformer_book.decoding import (
    beam_search,
    exact_match_by,
    greedy_decode,
    length_normalized_score,
    sequence_log_prob,
    strip_ids,
    translate_batch,
)
from transformer_book.models import Transformer, TransformerConfig

torch.set_num_threads(1)


def _model(tgt_vocab=6, seed=0, max_len=16):
    torch.manual_seed(seed)
    cfg = TransformerConfig(src_vocab_size=7, tgt_vocab_size=tgt_vocab, d_model=16, n_heads=2, n_encoder_layers=1,
                            n_decoder_layers=1, d_ff=32, dropout=0.0, max_len=max_len)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # sharpen the random model so that its choices are far from ties
        model.tgt_embed.weight.mul_(6.0)
    return model


def test_beam_size_one_is_greedy():
    for seed in range(3):
        model = _model(seed=seed)
        src = torch.tensor([[3, 4, 5, 6], [4, 4, 3, 0], [6, 5, 0, 0]])
        greedy = greedy_decode(model, src, max_len=8)
        beams = beam_search(model, src, beam_size=1, max_len=8)
        for row, hyps in zip(greedy, beams):
            assert strip_ids(row, eos_id=2, pad_id=0) == strip_ids(hyps[0][0], eos_id=2)
            assert (2 in row.tolist()) == (2 in hyps[0][0])


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_finds_the_best_sequence(alpha):
    # Allowed tokens: <eos> (2), 3, 4. Every output of at most 3 tokens: enumerate them all.
    model = _model(tgt_vocab=5, seed=1)
    src = torch.tensor([[3, 5, 6]])
    outputs = []
    for n in (1, 2, 3):
        for body in itertools.product([3, 4], repeat=n - 1):
            outputs.append(list(body) + [2])  # ends with <eos>
        if n == 3:
            outputs += [list(body) for body in itertools.product([3, 4], repeat=3)]  # cut at max_len
    scored = [(length_normalized_score(sequence_log_prob(model, src, out), len(out), alpha), out) for out in outputs]
    best_score, best = max(scored)
    (ids, score), = beam_search(model, src, beam_size=16, max_len=3, alpha=alpha)[0]
    # float32 log-probabilities of 16 beams at once vs one sequence: equal up to float32 rounding
    assert ids == best and score == pytest.approx(best_score, rel=1e-5)
    # n_best lists the hypotheses in order of score.
    top3 = beam_search(model, src, beam_size=16, max_len=3, alpha=alpha, n_best=3)[0]
    assert [h[0] for h in top3] == [o for _, o in sorted(scored, reverse=True)[:3]]


def test_beam_is_at_least_as_good_as_greedy():
    model = _model(seed=2)
    src = torch.tensor([[3, 4, 5, 6, 3, 4]])
    g = greedy_decode(model, src, max_len=6)[0]
    greedy_out = strip_ids(g, 2, 0) + ([2] if 2 in g.tolist() else [])
    (ids, _), = beam_search(model, src, beam_size=4, max_len=6, alpha=0.0)[0]
    assert sequence_log_prob(model, src, ids) >= sequence_log_prob(model, src, greedy_out) - 1e-9


def test_length_normalisation():
    assert length_normalized_score(-6.0, 3, 0.0) == -6.0
    assert length_normalized_score(-6.0, 3, 1.0) == -2.0
    torch.testing.assert_close(length_normalized_score(torch.tensor([-4.0]), torch.tensor([4]), 0.5),
                               torch.tensor([-2.0]))


def test_bad_inputs():
    model = _model()
    src = torch.tensor([[3, 4]])
    with pytest.raises(ValueError, match=r"beam_size must be an? (int >= 1|positive int), got 0"):
        beam_search(model, src, beam_size=0)
    with pytest.raises(ValueError, match=r"max_len must be an? (int >= 1|positive int), got -2"):
        greedy_decode(model, src, max_len=-2)
    with pytest.raises(ValueError, match="n_best=3 must be <= beam_size=2"):
        beam_search(model, src, beam_size=2, n_best=3)
    with pytest.raises(ValueError, match=r"alpha must be a (finite )?number in \[0(\.0)?, 5(\.0)?\], got -1"):
        beam_search(model, src, alpha=-1)
    with pytest.raises(ValueError, match=r"length must be an? (int >= 1|positive int), got 0"):
        length_normalized_score(-1.0, 0)
    with pytest.raises(TypeError, match="model must be an encoder-decoder .* got Linear"):
        greedy_decode(torch.nn.Linear(2, 2), src)
    with pytest.raises(TypeError, match="src must hold integer token ids .*got dtype torch.float32"):
        beam_search(model, src.float())
    with pytest.raises(ValueError, match=r"src holds ids in .* outside the vocabulary \[0, vocab_size=7\)"):
        greedy_decode(model, torch.tensor([[3, 9]]))
    with pytest.raises(ValueError, match=r"src must be one source of shape \(1, S\)"):
        sequence_log_prob(model, torch.tensor([[3], [4]]), [2])


def test_translate_batch_and_exact_match():
    model = _model()
    src = torch.tensor([[3, 4, 5, 6], [4, 4, 3, 0], [6, 5, 0, 0]])
    greedy = translate_batch(model, src, max_len=6, batch_size=2)
    assert greedy == [strip_ids(r, 2, 0) for r in greedy_decode(model, src, max_len=6)]
    assert translate_batch(model, src, beam_size=1, max_len=6) == greedy
    acc, by = exact_match_by([[1, 2], [3], [4]], [[1, 2], [3, 3], [4]], [2, 1, 1])
    assert acc == pytest.approx(2 / 3) and by == {1: (1, 2), 2: (1, 1)}
    with pytest.raises(ValueError, match=r"batch_size must be an? (int >= 1|positive int), got 0"):
        translate_batch(model, src, batch_size=0)
    with pytest.raises(ValueError, match="must be non-empty and of one length, got 2, 1, 2"):
        exact_match_by([[1], [2]], [[1]], [0, 0])


# --------------------------------------------------------------------------- issue 10
def test_decoding_arguments_follow_the_one_rule():
    model = _model()
    src = torch.tensor([[3, 4, 5]])
    with pytest.raises(TypeError, match=r"out\[0\] must be an int"):
        sequence_log_prob(model, src, [1.5])
    with pytest.raises(ValueError, match=r"out\[0\] must be an int in"):
        sequence_log_prob(model, src, [99])
    with pytest.raises(TypeError, match="ids must be a list of ints or a 1-D tensor, got str"):
        strip_ids("abc", 2)
    with pytest.raises(TypeError, match="eos_id must be an int"):
        strip_ids([3, 2], 2.0)
    with pytest.raises(ValueError, match="alpha must be"):
        translate_batch(model, src, alpha=float("nan"))
    with pytest.raises(TypeError, match="src must be a torch.Tensor"):
        translate_batch(model, [[3, 4]])
    with pytest.raises(TypeError, match="predictions must be a list"):
        exact_match_by(None, [], [])
    with pytest.raises(ValueError, match="log_prob must be a finite number"):
        length_normalized_score(float("nan"), 3)
