"""Training helpers: schedules, label-smoothed loss vs F.cross_entropy, clipping, checkpoints, the loop."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_book.train import (
    CheckpointConfigError,
    CheckpointError,
    History,
    clip_gradients,
    label_smoothed_cross_entropy,
    load_checkpoint,
    lr_lambda,
    plot_histories,
    save_checkpoint,
    train_loop,
    warmup_cosine,
    warmup_inverse_sqrt,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------- schedules
def test_inverse_sqrt_matches_the_paper():
    d_model, warmup = 512, 4000
    for step in (0, 10, 3999, 4000, 10_000, 100_000):
        s = step + 1
        paper = d_model ** -0.5 * min(s ** -0.5, s * warmup ** -1.5)
        ours = d_model ** -0.5 * warmup ** -0.5 * warmup_inverse_sqrt(step, warmup)
        assert ours == pytest.approx(paper, rel=1e-12)
    assert warmup_inverse_sqrt(warmup - 1, warmup) == pytest.approx(1.0)
    assert warmup_inverse_sqrt(0, 0) == 1.0 and warmup_inverse_sqrt(3, 0) == 0.5


def test_cosine_schedule():
    assert warmup_cosine(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 110, min_ratio=0.1) == pytest.approx(0.1)


def test_lr_lambda_with_lambdalr():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("inverse_sqrt", warmup=4))
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs[7] == pytest.approx(2.0 * math.sqrt(4 / 8))
    assert lr_lambda("constant", 2)(0) == 0.5 and lr_lambda("constant", 0)(5) == 1.0


def test_schedule_bad_inputs():
    with pytest.raises(ValueError, match="warmup must be an int >= 0, got -1"):
        warmup_inverse_sqrt(0, -1)
    with pytest.raises(ValueError, match="warmup=20 must be <= total=10"):
        warmup_cosine(0, 20, 10)
    with pytest.raises(ValueError, match=r"min_ratio must be a (finite )?number in \[0(\.0)?, 1(\.0)?\], got 2"):
        warmup_cosine(0, 1, 10, min_ratio=2)
    with pytest.raises(ValueError, match="kind must be one of .* got 'linear'"):
        lr_lambda("linear", 10)
    with pytest.raises(ValueError, match="total .* is needed for kind='cosine'"):
        lr_lambda("cosine", 10)


# --------------------------------------------------------------------------- loss
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_torch(smoothing):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 3
    targets = torch.randint(1, 11, (3, 5), generator=g)
    targets[0, 3:] = 0  # padding
    ours = label_smoothed_cross_entropy(logits, targets, smoothing, ignore_index=0)
    ref = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), label_smoothing=smoothing, ignore_index=0)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    ours_all = label_smoothed_cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), smoothing)
    ref_all = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), label_smoothing=smoothing)
    torch.testing.assert_close(ours_all, ref_all, atol=1e-6, rtol=1e-6)


def test_label_smoothing_gradient_and_all_padding():
    logits = torch.randn(4, 6, requires_grad=True)
    targets = torch.tensor([1, 2, 3, 0])
    label_smoothed_cross_entropy(logits, targets, 0.1, ignore_index=0).backward()
    assert torch.all(logits.grad[3] == 0)  # the padded row gets no gradient
    loss = label_smoothed_cross_entropy(logits, torch.zeros(4, dtype=torch.long), 0.1, ignore_index=0)
    assert loss.item() == 0.0  # not NaN


def test_label_smoothing_bad_inputs():
    logits = torch.zeros(2, 3, 5)
    with pytest.raises(TypeError, match="targets must be an integer tensor .* torch.float32"):
        label_smoothed_cross_entropy(logits, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"logits \(2, 3, 5\), targets \(3, 2\)"):
        label_smoothed_cross_entropy(logits, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\] .* got \[7\]"):
        label_smoothed_cross_entropy(logits, torch.tensor([[0, 1, 7], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"smoothing must be a (finite )?number in \[0(\.0)?, 1(\.0)?\), got -0.1"):
        label_smoothed_cross_entropy(logits, torch.zeros(2, 3, dtype=torch.long), -0.1)
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        label_smoothed_cross_entropy(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_clip_gradients():
    p = nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    assert clip_gradients([p], 1.0) == pytest.approx(5.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match=r"max_norm must be a (finite )?number > 0(\.0)?, got 0"):
        clip_gradients([p], 0)


# --------------------------------------------------------------------------- checkpoints
def _model(width=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


def test_checkpoint_round_trip(tmp_path):
    model, config = _model(), {"width": 4, "layers": 2}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, config, opt, step=7, recipe="test")
    fresh = _model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    state = load_checkpoint(path, fresh, config, fresh_opt)
    assert state["step"] == 7 and state["recipe"] == "test"
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"][0]["step"] == 1


def test_checkpoint_refuses_another_config(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _model(), {"width": 4, "layers": 2, "norm": "pre"})
    target = _model()
    before = [p.clone() for p in target.parameters()]
    with pytest.raises(CheckpointConfigError) as info:
        load_checkpoint(path, target, {"width": 4, "layers": 3, "norm": "post", "extra": 1})
    msg = str(info.value)
    assert "layers: checkpoint has 2, model config has 3" in msg
    assert "norm: checkpoint has 'pre', model config has 'post'" in msg
    assert "extra: checkpoint has '<missing>', model config has 1" in msg
    assert "width" not in msg
    assert isinstance(info.value, ValueError)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))  # nothing loaded


def test_checkpoint_refuses_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint"):
        load_checkpoint(bad, _model(), {})
    foreign = tmp_path / "foreign.pt"
    torch.save(_model().state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a transformer_book checkpoint"):
        load_checkpoint(foreign, _model(), {})
    with pytest.raises(CheckpointError, match="no checkpoint file at"):
        load_checkpoint(tmp_path / "missing.pt", _model(), {})
    # A truncated file (a crash while copying it) is reported as corrupt too.
    good = tmp_path / "good.pt"
    save_checkpoint(good, _model(), {"width": 4})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint"):
        load_checkpoint(truncated, _model(), {"width": 4})
    # Same config, other shapes: refused, nothing loaded.
    wide = tmp_path / "wide.pt"
    save_checkpoint(wide, _model(width=8), {"width": 4})
    with pytest.raises(CheckpointError, match=r"shape mismatches \['0.weight: checkpoint \(8, 3\), model \(4, 3\)"):
        load_checkpoint(wide, _model(), {"width": 4})


def test_checkpoint_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="config must be a dict .* got list"):
        save_checkpoint(tmp_path / "x.pt", _model(), [1, 2])
    with pytest.raises(ValueError, match="extra key 'format' is reserved"):
        save_checkpoint(tmp_path / "x.pt", _model(), {}, format=1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        load_checkpoint(tmp_path / "x.pt", "model", {})


# --------------------------------------------------------------------------- loop
def test_train_loop_learns_and_records():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    model = nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("cosine", 10, 200))
    hist = train_loop(model, [(x, y)], lambda m, b: F.mse_loss(m(b[0]), b[1]), opt, steps=200, scheduler=sched,
                      evaluate=lambda m: {"mse": F.mse_loss(m(x), y).item()}, eval_every=50, progress=False,
                      desc="linear")
    assert len(hist.loss) == 200 and hist.steps[-1] == 199 and hist.loss[-1] < 1e-3 < hist.loss[0]
    assert [s for s, _ in hist.evals["mse"]] == [49, 99, 149, 199]
    assert hist.lr[9] == pytest.approx(0.05)
    assert History.from_dict(hist.to_dict()) == hist
    ax = plot_histories([hist])
    assert ax.get_lines() and ax.get_legend() is not None


def test_train_loop_stops_on_nan():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="loss is nan at step 0"):
        train_loop(model, lambda step: None, lambda m, b: torch.tensor(float("nan")), opt, steps=3, progress=False)
    with pytest.raises(ValueError, match=r"steps must be an? (int >= 1|positive int), got 0"):
        train_loop(model, [1], lambda m, b: m.weight.sum(), opt, steps=0)


def test_history_and_plot_bad_inputs(tmp_path):
    h = History(name="x", steps=[0, 1, 2], loss=[3.0, 1.0, 2.0])
    assert h.smoothed(2) == [3.0, 2.0, 1.5]
    with pytest.raises(ValueError, match=r"window must be an? (int >= 1|positive int), got 0"):
        h.smoothed(0)
    with pytest.raises(ValueError, match="histories must be a non-empty list of History objects"):
        plot_histories([])
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer or None, got str"):
        save_checkpoint(tmp_path / "x.pt", _model(), {}, optimizer="adam")
    save_checkpoint(tmp_path / "x.pt", _model(), {})
    model = _model()
    with pytest.raises(CheckpointError, match="has no optimizer state to load"):
        load_checkpoint(tmp_path / "x.pt", model, {}, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"total must be an? (int >= 1|positive int), got 0"):
        warmup_cosine(0, 0, 0)


# --------------------------------------------------------------------------- issue 10: mended
def _saved(tmp_path, mutate=None, optimizer=False):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3) if optimizer else None
    if opt is not None:
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, {"width": 4}, opt)
    if mutate is not None:
        state = torch.load(path, weights_only=True)
        mutate(state)
        torch.save(state, path)
    return path


@pytest.mark.parametrize("label, mutate", [
    ("no config", lambda s: s.pop("config")),
    ("no weights", lambda s: s.pop("model")),
    ("config a list", lambda s: s.__setitem__("config", [1])),
    ("weights a list", lambda s: s.__setitem__("model", [1])),
    ("a weight not a tensor", lambda s: s["model"].__setitem__("0.weight", 3)),
])
def test_malformed_checkpoint_is_a_checkpoint_error(tmp_path, label, mutate):
    target = _model(width=4)
    before = [p.clone() for p in target.parameters()]
    with pytest.raises(CheckpointError, match="is damaged: the checksum"):
        load_checkpoint(_saved(tmp_path, mutate), target, {"width": 4})
    # Without a checksum (an old-style file), the structure checks refuse it.
    with pytest.raises(CheckpointError, match="is malformed: its"):
        load_checkpoint(_saved(tmp_path, lambda s: (mutate(s), s.pop("checksum"))), target, {"width": 4})
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))


def test_checkpoint_checksum_refuses_a_flipped_bit_and_non_finite_weights(tmp_path):
    def flip(state):
        state["model"]["0.weight"].view(torch.int32)[0, 0] ^= 1 << 3

    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(_saved(tmp_path, flip), _model(), {"width": 4})

    def nan_weights_new_sum(state):  # a consistent file whose weights are NaN (a diverged run)
        from transformer_book.train import tensor_checksum
        state["model"]["2.bias"].fill_(float("nan"))
        state["checksum"] = tensor_checksum({k: v for k, v in state.items() if k != "checksum"})

    target = _model()
    before = [p.clone() for p in target.parameters()]
    with pytest.raises(CheckpointError, match="non-finite values in model weight '2.bias'"):
        load_checkpoint(_saved(tmp_path, nan_weights_new_sum), target, {"width": 4})
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))


def test_checkpoint_optimizer_state_checked_before_anything_is_loaded(tmp_path):
    def broken(state):
        state["optimizer"]["param_groups"] = "broken"
        state.pop("checksum")  # an old-style file: only the structure can tell

    for mutate, match in ((broken, "malformed: its optimizer state"),
                          (lambda s: s["optimizer"].__setitem__("param_groups", "broken"), "checksum"),
                          (lambda s: (s["optimizer"]["param_groups"][0]["params"].pop(), s.pop("checksum")),
                           "parameter groups of sizes")):
        path = _saved(tmp_path, mutate, optimizer=True)
        target = _model()
        with torch.no_grad():
            for p in target.parameters():
                p.zero_()
        opt = torch.optim.Adam(target.parameters(), lr=1e-3)
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(path, target, {"width": 4}, opt)
        assert all(bool((p == 0).all()) for p in target.parameters())  # the model was not touched
        assert opt.state_dict()["state"] == {}


def test_checkpoint_without_a_checksum_still_loads(tmp_path):
    # Checkpoints written before checksums existed (chapter 6's committed ones) stay loadable.
    path = _saved(tmp_path, lambda s: s.pop("checksum"))
    load_checkpoint(path, _model(), {"width": 4})


def test_failed_checkpoint_save_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()

    def boom(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _model(), {"width": 4})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_train_loop_stops_before_the_step_on_a_non_finite_gradient():
    model = nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]

    def loss_fn(m, batch):  # the loss is finite, its gradient is not
        m.weight.register_hook(lambda g: g * float("inf"))
        return m(batch).mean()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for clip in (None, 1.0):
        with pytest.raises(FloatingPointError, match=r"gradient norm is (inf|nan) at step 0 .* weights are unchanged"):
            train_loop(model, [torch.ones(4, 2)], loss_fn, opt, steps=2, clip=clip, progress=False)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_train_loop_records_the_norm_without_clipping():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    hist = train_loop(model, [torch.ones(4, 2)], lambda m, b: m(b).sum(), opt, steps=1, clip=None, progress=False)
    assert hist.grad_norm[0] == pytest.approx(math.sqrt(4 ** 2 * 2 + 4 ** 2))


def test_all_ignored_targets_give_zero_with_a_grad_fn():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = label_smoothed_cross_entropy(logits, torch.full((2, 3), -100), 0.1, ignore_index=-100)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_train_bad_inputs_name_the_argument():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="batches must hold at least one batch"):
        train_loop(model, [], lambda m, b: m.weight.sum(), opt, steps=1, progress=False)
    with pytest.raises(TypeError, match="batches must be"):
        train_loop(model, None, lambda m, b: m.weight.sum(), opt, steps=1, progress=False)
    with pytest.raises(ValueError, match="clip"):
        train_loop(model, [1], lambda m, b: m.weight.sum(), opt, steps=1, clip=float("nan"), progress=False)
    with pytest.raises(TypeError, match="ignore_index"):
        label_smoothed_cross_entropy(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), ignore_index=1.5)
    with pytest.raises(TypeError, match="parameters"):
        clip_gradients(3, 1.0)
    with pytest.raises(ValueError, match="d must hold 'steps'"):
        History.from_dict({})


_BAR_SCRIPT = """
import sys, torch
from torch import nn
from transformer_book.train import train_loop
model = nn.Linear(2, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
train_loop(model, [torch.ones(4, 2)], lambda m, b: m(b).sum(), opt, steps=2, desc="bar?",
           progress=sys.argv[1] == "True")
"""


@pytest.mark.parametrize("env, progress, shown", [("", True, True), ("1", True, False), ("", False, False)])
def test_train_loop_bar_honours_progress_and_tqdm_disable(env, progress, shown):
    # tqdm reads TQDM_* when it is imported, so each case runs in a fresh interpreter
    environ = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | ({"TQDM_DISABLE": env} if env else {})
    run = subprocess.run([sys.executable, "-c", _BAR_SCRIPT, str(progress)], env=environ,
                         capture_output=True, text=True, timeout=120, check=True)
    assert ("bar?" in run.stderr) is shown
