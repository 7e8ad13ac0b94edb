"""Chapter 10's recipe: a deep target GPT and a one-layer draft GPT on chapter 7's code corpus.

Run from the repository root (about 20 minutes on 2 busy CPU cores, most of it the target):

    OMP_WAIT_POLICY=PASSIVE python book/data/ch10_recipe.py [draft|target|both]

Speculative decoding pays off when the draft is much cheaper than the target. On a CPU, a model
this small is bound by the Python and kernel-launch overhead of each layer, not by arithmetic,
so the cost of one decoding step grows with the *number of layers* far more than with their
width. The target is therefore deep and narrow (24 layers of width 64) and the draft is one
layer of width 128. Both use chapter 7's corpus, split and BPE tokenizer
(:func:`transformer_book.code_model.prepare_data` with ``CHAPTER7_RECIPE``), a context window of
256 tokens, and the same training loop and batches (seeded).

It writes ``book/data/ch10_target.pt`` and ``book/data/ch10_draft.pt`` with
``transformer_book.train.save_checkpoint``: the config, the weights in float16 (small files), the
tokenizer (``to_dict()``), the training history, the held-out loss and this recipe's settings.
Chapter 10 loads them with ``transformer_book.speculative.load_chapter10_models``.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from transformer_book import seed_everything
from transformer_book.code_model import CHAPTER7_RECIPE, evaluate_loss, prepare_data, random_batch
from transformer_book.models.gpt import GPT, GPTConfig
from transformer_book.train import lr_lambda, save_checkpoint, train_loop

BLOCK_SIZE = 256
MODELS = {
    "target": dict(block_size=BLOCK_SIZE, n_layer=24, n_head=4, n_embd=64, dropout=0.0, bias=True),
    "draft": dict(block_size=BLOCK_SIZE, n_layer=1, n_head=4, n_embd=128, dropout=0.0, bias=True),
}
_TRAIN = dict(steps=500, batch_size=8, lr=3e-3, warmup=50, min_lr_ratio=0.1, weight_decay=0.1, clip=1.0, seed=0,
              eval_every=100, eval_windows=64)
TRAIN = {"target": _TRAIN, "draft": _TRAIN}  # the same steps, batches and schedule for both


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the matrices only (not on norms' gains, biases or the position table)."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("wpe") else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def half_state(model: nn.Module) -> dict:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}


class _HalfView(nn.Module):
    """Wraps a model so that save_checkpoint stores its weights in float16."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def state_dict(self, *args, **kwargs):
        return half_state(self.model)


def train_one(which: str) -> None:
    m, t = MODELS[which], TRAIN[which]
    data = prepare_data(CHAPTER7_RECIPE)
    seed_everything(t["seed"])
    config = GPTConfig(vocab_size=data.tokenizer.vocab_size, **m)
    model = GPT(config)
    print(f"{which}: {model.num_parameters():,} parameters, {data.train.numel():,} training tokens", flush=True)
    optimizer = torch.optim.AdamW(decay_groups(model, t["weight_decay"]), lr=t["lr"], betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("cosine", t["warmup"], t["steps"],
                                                                      t["min_lr_ratio"]))
    batches = torch.Generator().manual_seed(t["seed"])
    start = time.time()
    history = train_loop(
        model, lambda step: random_batch(data.train, t["batch_size"], BLOCK_SIZE, batches),
        lambda mdl, batch: mdl(*batch).loss, optimizer, steps=t["steps"], scheduler=schedule, clip=t["clip"],
        evaluate=lambda mdl: {"heldout": evaluate_loss(mdl, data.heldout, BLOCK_SIZE, t["eval_windows"])},
        eval_every=t["eval_every"], desc=f"ch10 {which}")
    seconds = time.time() - start
    model.load_state_dict(half_state(model))  # evaluate what is saved
    model.eval()
    heldout = evaluate_loss(model, data.heldout, BLOCK_SIZE, 256)
    print(f"{which}: held-out loss {heldout:.3f} nats/token after {seconds:.0f} s", flush=True)
    save_checkpoint(f"book/data/ch10_{which}.pt", _HalfView(model), config, history=history.to_dict(),
                    tokenizer=data.tokenizer.to_dict(), heldout_loss=heldout, train_seconds=seconds,
                    recipe={"data": CHAPTER7_RECIPE["data"], "tokenizer": CHAPTER7_RECIPE["tokenizer"],
                            "model": m, "train": t})


def main(which: str = "both") -> None:
    torch.set_num_threads(2)
    if which not in ("draft", "target", "both"):
        raise SystemExit(f"usage: ch10_recipe.py [draft|target|both], got {which!r}")
    for name in ("draft", "target"):
        if which in (name, "both"):
            train_one(name)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "both")
