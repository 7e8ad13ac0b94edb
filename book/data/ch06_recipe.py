"""Chapter 6's recipe: train the Transformer and chapter 1's GRU on English -> French numbers.

Run from the repository root (about 10 minutes on 2 otherwise idle CPU cores):

    OMP_WAIT_POLICY=PASSIVE python book/data/ch06_recipe.py [transformer|rnn|both]

It writes ``book/data/ch06_transformer.pt`` and ``book/data/ch06_rnn.pt`` with
``transformer_book.train.save_checkpoint`` (config, weights in float16 to keep the files small,
the training history with validation exact match every 100 steps, and this
recipe's settings). Both models see the same batches, 2000 steps of 128 pairs, warm-up + cosine. Chapter 6 loads them with ``load_checkpoint``,
which refuses a checkpoint whose config differs from the one the notebook builds.
"""

from __future__ import annotations

import sys
import time

import torch

from transformer_book import seed_everything
from transformer_book.data.numbers_fr import batches, encode_pairs, english_vocab_big, french_splits, french_vocab
from transformer_book.decoding import exact_match_by, translate_batch
from transformer_book.models import Transformer, TransformerConfig
from transformer_book.train import label_smoothed_cross_entropy, lr_lambda, save_checkpoint, train_loop

DATA = dict(n_train=30_000, n_valid=500, n_test=3_000, seed=0)
TRANSFORMER = dict(d_model=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=256, dropout=0.0,
                   norm_first=True, max_len=24)
T_TRAIN = dict(steps=2000, batch_size=128, lr=2e-3, warmup=200, smoothing=0.1, seed=0)
RNN = dict(attention="additive", emb_dim=64, hidden_dim=128)
RNN_TRAIN = dict(steps=2000, batch_size=128, lr=3e-3, warmup=200, seed=0)
EVAL_EVERY = 100


def transformer_config() -> TransformerConfig:
    src_vocab, tgt_vocab = english_vocab_big(), french_vocab()
    return TransformerConfig(src_vocab_size=len(src_vocab), tgt_vocab_size=len(tgt_vocab), **TRANSFORMER)


def translation_loss(model, batch, smoothing=0.0):
    """Teacher forcing: predict tgt[:, 1:] from tgt[:, :-1]; padding ignored."""
    src, tgt = batch
    logits = model(src, tgt[:, :-1])
    if isinstance(logits, tuple):  # chapter 1's Seq2Seq returns (logits, attention weights)
        logits = logits[0]
    return label_smoothed_cross_entropy(logits, tgt[:, 1:], smoothing, ignore_index=0)


def half_state(model):
    return {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}


class _HalfView(torch.nn.Module):
    """Wraps a model so that save_checkpoint stores its weights in float16 (half the file size)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def state_dict(self, *args, **kwargs):
        return half_state(self.model)


def valid_evaluator(splits, decode):
    """evaluate(model) -> exact match on the validation pairs, overall and by digit count."""
    refs = [t for _, t in splits.valid]
    keys = [len(str(x)) for x in splits.valid_numbers]

    def evaluate(model):
        acc, by = exact_match_by(decode(model, splits.valid), refs, keys)
        return {"valid": acc, **{f"valid_{k}_digits": c / n for k, (c, n) in by.items()}}

    return evaluate


def transformer_decode(model, pairs):
    tv = french_vocab()
    src, _ = encode_pairs(pairs, english_vocab_big(), tv)
    return [tv.decode(p) for p in translate_batch(model, src, max_len=22)]


def rnn_decode(model, pairs):
    from transformer_book.seq2seq import evaluate

    return evaluate(model, pairs).predictions


def train(model, splits, settings, smoothing, decode, desc):
    src, tgt = encode_pairs(splits.train, english_vocab_big(), french_vocab())
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("cosine", settings["warmup"], settings["steps"], 0.02))
    t0 = time.time()
    hist = train_loop(model, batches(src, tgt, settings["batch_size"], seed=settings["seed"]),
                      lambda m, b: translation_loss(m, b, smoothing), opt, steps=settings["steps"], scheduler=sched,
                      evaluate=valid_evaluator(splits, decode), eval_every=EVAL_EVERY, desc=desc)
    return hist, time.time() - t0


def test_report(model, splits, decode, name):
    acc, by = exact_match_by(decode(model, splits.test), [t for _, t in splits.test],
                             [len(str(x)) for x in splits.test_numbers])
    print(f"{name}: test exact match {acc:.4f} {by}", flush=True)
    return acc


def main(which: str = "both") -> None:
    torch.set_num_threads(2)
    t0 = time.time()
    splits = french_splits(**DATA)
    print(f"data: {time.time() - t0:.1f}s")
    if which in ("transformer", "both"):
        seed_everything(T_TRAIN["seed"])
        model = Transformer(transformer_config())
        hist, seconds = train(model, splits, T_TRAIN, T_TRAIN["smoothing"], transformer_decode, "Transformer")
        model.load_state_dict(half_state(model))  # evaluate what is saved
        acc = test_report(model, splits, transformer_decode, f"transformer ({seconds:.0f}s)")
        save_checkpoint("book/data/ch06_transformer.pt", _HalfView(model), transformer_config(),
                        history=hist.to_dict(), recipe={"data": DATA, "model": TRANSFORMER, "train": T_TRAIN},
                        train_seconds=seconds, test_exact_match=acc)
    if which in ("rnn", "both"):
        from transformer_book.seq2seq import Seq2Seq

        seed_everything(RNN_TRAIN["seed"])
        rnn = Seq2Seq(english_vocab_big(), french_vocab(), **RNN)
        hist, seconds = train(rnn, splits, RNN_TRAIN, 0.0, rnn_decode, "GRU + additive attention")
        rnn.load_state_dict(half_state(rnn))
        acc = test_report(rnn, splits, rnn_decode, f"rnn ({seconds:.0f}s)")
        save_checkpoint("book/data/ch06_rnn.pt", _HalfView(rnn), RNN, history=hist.to_dict(),
                        recipe={"data": DATA, "model": RNN, "train": RNN_TRAIN}, train_seconds=seconds,
                        test_exact_match=acc)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "both")
