"""Chapter 6's recipe: train the Transformer and chapter 1's GRU on English -> French numbers.

Run from the repository root (about 10 minutes on 2 CPU cores):

    OMP_WAIT_POLICY=PASSIVE python book/data/ch06_recipe.py [transformer|rnn|both]

It writes ``book/data/ch06_transformer.pt`` and ``book/data/ch06_rnn.pt`` with
``transformer_book.train.save_checkpoint`` (config, weights in float16 to keep the files small,
the training history and this recipe's settings). Chapter 6 loads them with ``load_checkpoint``,
which refuses a checkpoint whose config differs from the one the notebook builds.
"""

from __future__ import annotations

import sys
import time

import torch

from transformer_book import seed_everything
from transformer_book.data.numbers_fr import batches, encode_pairs, english_vocab_big, french_splits, french_vocab
from transformer_book.models import Transformer, TransformerConfig
from transformer_book.train import History, label_smoothed_cross_entropy, lr_lambda, save_checkpoint, train_loop

DATA = dict(n_train=30_000, n_valid=500, n_test=3_000, seed=0)
TRANSFORMER = dict(d_model=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=256, dropout=0.0,
                   norm_first=True, max_len=24)
T_TRAIN = dict(steps=2000, batch_size=128, lr=2e-3, warmup=200, smoothing=0.1, seed=0)
RNN = dict(attention="additive", emb_dim=64, hidden_dim=128)
RNN_TRAIN = dict(epochs=10, batch_size=128, lr=3e-3, seed=0)


def transformer_config() -> TransformerConfig:
    src_vocab, tgt_vocab = english_vocab_big(), french_vocab()
    return TransformerConfig(src_vocab_size=len(src_vocab), tgt_vocab_size=len(tgt_vocab), **TRANSFORMER)


def translation_loss(model, batch, smoothing=0.0):
    """Teacher forcing: predict tgt[:, 1:] from tgt[:, :-1]; padding ignored."""
    src, tgt = batch
    logits = model(src, tgt[:, :-1])
    return label_smoothed_cross_entropy(logits, tgt[:, 1:], smoothing, ignore_index=model.config.pad_id)


def half_state(model):
    return {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}


def train_transformer(splits, steps=None, progress=True):
    seed_everything(T_TRAIN["seed"])
    cfg = transformer_config()
    model = Transformer(cfg)
    src, tgt = encode_pairs(splits.train, english_vocab_big(), french_vocab())
    opt = torch.optim.AdamW(model.parameters(), lr=T_TRAIN["lr"], betas=(0.9, 0.98), weight_decay=0.01)
    total = steps or T_TRAIN["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("cosine", T_TRAIN["warmup"], total, 0.02))
    hist = train_loop(model, batches(src, tgt, T_TRAIN["batch_size"], seed=T_TRAIN["seed"]),
                      lambda m, b: translation_loss(m, b, T_TRAIN["smoothing"]), opt, steps=total, scheduler=sched,
                      progress=progress, desc="transformer")
    return model, hist


def main(which: str = "both") -> None:
    torch.set_num_threads(2)
    t0 = time.time()
    splits = french_splits(**DATA)
    print(f"data: {time.time() - t0:.1f}s")
    if which in ("transformer", "both"):
        t0 = time.time()
        model, hist = train_transformer(splits)
        model.load_state_dict(half_state(model))  # evaluate what is saved
        print(f"transformer: {time.time() - t0:.0f}s, {model.num_parameters()} parameters")
        from transformer_book.decoding import exact_match_by, translate_batch
        tv = french_vocab()
        src, _ = encode_pairs(splits.test, english_vocab_big(), tv)
        preds = [tv.decode(p) for p in translate_batch(model, src, max_len=22)]
        acc, by = exact_match_by(preds, [t for _, t in splits.test], [len(str(x)) for x in splits.test_numbers])
        print("transformer test exact match", acc, by)
        save_checkpoint("book/data/ch06_transformer.pt", _HalfView(model), transformer_config(),
                        history=hist.to_dict(), recipe={"data": DATA, "model": TRANSFORMER, "train": T_TRAIN},
                        test_exact_match=acc)
    if which in ("rnn", "both"):
        from transformer_book.seq2seq import Seq2Seq, evaluate, train_model

        t0 = time.time()
        seed_everything(RNN_TRAIN["seed"])
        rnn = Seq2Seq(english_vocab_big(), french_vocab(), **RNN)
        losses = train_model(rnn, splits.train, epochs=RNN_TRAIN["epochs"], batch_size=RNN_TRAIN["batch_size"],
                             lr=RNN_TRAIN["lr"], seed=RNN_TRAIN["seed"])
        rnn.load_state_dict(half_state(rnn))
        ev = evaluate(rnn, splits.test)
        print(f"rnn: {time.time() - t0:.0f}s, test exact match {ev.accuracy}")
        save_checkpoint("book/data/ch06_rnn.pt", _HalfView(rnn), RNN, history=History(
            name="GRU + additive attention", steps=list(range(len(losses))), loss=losses).to_dict(),
            recipe={"data": DATA, "model": RNN, "train": RNN_TRAIN}, test_exact_match=ev.accuracy)


class _HalfView(torch.nn.Module):
    """Wraps a model so that save_checkpoint stores its weights in float16 (half the file size)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def state_dict(self, *args, **kwargs):
        return half_state(self.model)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "both")
