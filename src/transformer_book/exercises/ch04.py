"""Checkers for the exercises of chapter 4 (attention heads).

Each ``check_*`` runs the learner's function on a handful of cases, compares it with the book's
implementation in :mod:`transformer_book.attention`, prints a short verdict and returns a
:class:`~transformer_book.exercises.core.CheckReport`.
"""

from __future__ import annotations

import torch

from transformer_book.attention import (
    MultiHeadAttention,
    merge_heads,
    repeat_kv,
    scaled_dot_product_attention,
    split_heads,
)
from transformer_book.exercises.core import Case, CheckReport, check_function

__all__ = [
    "check_sdpa",
    "check_split_heads",
    "check_merge_heads",
    "check_repeat_kv",
    "check_param_count",
    "check_qk_norm_attention",
    "check_softcap_attention",
]


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _sdpa_reference(q, k, v):
    return scaled_dot_product_attention(q, k, v)


def check_sdpa(fn, *, quiet: bool = False) -> CheckReport:
    """ex-04-scaled-attention: ``fn(q, k, v) -> (output, weights)``, scaled by 1/sqrt(D), no mask."""
    scale_hint = "Divide the scores q @ k^T by sqrt(D), D = q.shape[-1], before the softmax."
    cases = [
        Case(args=(_randn(2, 3, 4, 8, seed=1), _randn(2, 3, 4, 8, seed=2), _randn(2, 3, 4, 8, seed=3)),
             label="self-attention (2, 3, 4, 8)",
             hint="Return the pair (output, weights), and divide the scores by sqrt(D) before the softmax."),
        Case(args=(_randn(1, 2, 3, 16, seed=4), _randn(1, 2, 7, 16, seed=5), _randn(1, 2, 7, 5, seed=6)),
             label="cross-attention T_q=3, T_k=7, D_v=5",
             hint="The softmax runs over the keys: the last dimension of q @ k.transpose(-2, -1)."),
        Case(args=(_randn(6, 4, seed=7), _randn(9, 4, seed=8), _randn(9, 3, seed=9)),
             label="no batch dimensions (T_q, D)",
             hint="Use k.transpose(-2, -1) (not k.T) so that any leading dimensions work."),
        Case(args=(_randn(1, 1, 5, 256, seed=10), _randn(1, 1, 5, 256, seed=11), _randn(1, 1, 5, 2, seed=12)),
             label="wide head D=256 (the scale matters)", hint=scale_hint),
        Case(args=(_randn(2, 1, 1, seed=13), _randn(2, 6, 1, seed=14), _randn(2, 6, 4, seed=15)),
             label="one query, D=1",
             hint="One query of size 1 against six keys: the weights are a softmax over the six keys."),
    ]
    mistakes = [
        (lambda q, k, v: _attend(q, k, v, scale=1.0),
         "The scale is missing: divide the scores q @ k^T by sqrt(D) (D = q.shape[-1]) before the softmax."),
        (lambda q, k, v: _attend(q, k, v, scale=1.0 / q.shape[-1]),
         "You divided by D: the scale is 1 / sqrt(D), which keeps the scores' spread near 1."),
        (lambda q, k, v: _attend(q, k, v, dim=-2),
         "The softmax ran over the queries (dim=-2): each query's weights must sum to 1 over the keys, "
         "the last dimension (dim=-1)."),
        (lambda q, k, v: _attend(q, k, v)[::-1],
         "The pair is in the wrong order: return (output, weights), the output first."),
    ]
    return check_function(fn, reference=_sdpa_reference, cases=cases, exercise="ex-04-scaled-attention",
                          quiet=quiet, mistakes=mistakes)


def _attend(q, k, v, scale=None, dim=-1):  # the mistakes' attention: another scale or softmax axis
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    weights = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=dim)
    return weights @ v, weights


def check_split_heads(fn, *, quiet: bool = False) -> CheckReport:
    """ex-04-split-merge-heads: ``fn(x, n_heads)``: ``(B, T, C) -> (B, H, T, C // H)``."""
    order_hint = ("Reshape to (B, T, H, D) first, then swap the T and H axes: reshaping straight to "
                  "(B, H, T, D) mixes positions into heads.")
    cases = [
        Case(args=(torch.arange(24.0).view(1, 2, 12), 3), label="channels numbered, C=12, H=3", hint=order_hint),
        Case(args=(_randn(2, 5, 16, seed=1), 4), label="(2, 5, 16), H=4", hint=order_hint),
        Case(args=(_randn(3, 4, 8, seed=2), 1), label="one head", hint="With H=1 the result is x[:, None]."),
        Case(args=(_randn(2, 3, 8, seed=3), 8), label="D=1 (H=C)", hint=order_hint),
    ]
    mistakes = [
        (lambda x, h: x.reshape(x.shape[0], h, x.shape[1], x.shape[2] // h),
         "You reshaped straight to (B, H, T, D): that cuts the sequence, not the channels, into heads. "
         "View as (B, T, H, D) first, then swap the T and H axes (transpose(1, 2))."),
        (lambda x, h: x.view(x.shape[0], x.shape[1], x.shape[2] // h, h).permute(0, 3, 1, 2),
         "Head h got every H-th channel (h, h + H, ...): it must own one contiguous block, channels "
         "h*D ... (h+1)*D - 1, so view as (B, T, H, D), heads before channels."),
        (lambda x, h: x.view(x.shape[0], x.shape[1], h, x.shape[2] // h),
         "The head axis is still after T: swap them (transpose(1, 2)) to get (B, H, T, D)."),
    ]
    return check_function(fn, reference=split_heads, cases=cases, exercise="ex-04-split-merge-heads",
                          quiet=quiet, mistakes=mistakes)


def check_merge_heads(fn, *, quiet: bool = False) -> CheckReport:
    """ex-04-split-merge-heads: ``fn(x)``: ``(B, H, T, D) -> (B, T, H * D)``, the inverse of split."""
    order_hint = ("Swap the H and T axes back first (transpose(1, 2)), then reshape to (B, T, H * D); "
                  "after a transpose use reshape (or .contiguous().view).")
    cases = [
        Case(args=(split_heads(torch.arange(24.0).view(1, 2, 12), 3),), label="channels numbered, H=3",
             hint=order_hint),
        Case(args=(_randn(2, 4, 5, 4, seed=1),), label="(2, 4, 5, 4)", hint=order_hint),
        Case(args=(_randn(1, 1, 3, 6, seed=2),), label="one head", hint=order_hint),
        Case(args=(_randn(2, 8, 3, 1, seed=3),), label="D=1", hint=order_hint),
    ]
    mistakes = [
        (lambda x: x.reshape(x.shape[0], x.shape[2], -1),
         "You reshaped without moving the head axis back: that mixes positions into channels. Swap H "
         "and T first (transpose(1, 2)), then reshape to (B, T, H * D)."),
        (lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], -1),
         "The channels came out interleaved (channel d of every head, then d + 1, ...): the heads' blocks "
         "must follow each other, so the axes go (B, T, H, D) before the reshape."),
        (lambda x: x.transpose(1, 2),
         "The heads are not merged: after swapping H and T, reshape (B, T, H, D) into (B, T, H * D)."),
    ]
    return check_function(fn, reference=merge_heads, cases=cases, exercise="ex-04-split-merge-heads",
                          quiet=quiet, mistakes=mistakes)


def check_repeat_kv(fn, *, quiet: bool = False) -> CheckReport:
    """ex-04-repeat-kv: ``fn(x, n_rep)``: ``(B, H_kv, T, D) -> (B, H_kv * n_rep, T, D)``, head h <- h // n_rep."""
    order_hint = ("Output head h must be input head h // n_rep: copies of one head sit next to each other "
                  "(repeat_interleave on dim 1), not the whole stack repeated (repeat).")
    cases = [
        Case(args=(torch.arange(3.0).view(1, 3, 1, 1), 2), label="heads 0, 1, 2 repeated twice", hint=order_hint),
        Case(args=(_randn(2, 2, 5, 4, seed=1), 4), label="(2, 2, 5, 4), n_rep=4", hint=order_hint),
        Case(args=(_randn(1, 1, 3, 8, seed=2), 8), label="multi-query: one kv head, n_rep=8", hint=order_hint),
        Case(args=(_randn(2, 4, 3, 2, seed=3), 1), label="n_rep=1 (ordinary MHA)",
             hint="With n_rep=1 nothing changes."),
    ]
    mistakes = [
        (lambda x, n: x.repeat(1, n, 1, 1),
         "The whole stack of heads was repeated (0, 1, 2, 0, 1, 2): the copies of one head must sit next "
         "to each other (0, 0, 1, 1, 2, 2), so that output head h reads input head h // n_rep."),
        (lambda x, n: x.repeat_interleave(n, dim=2),
         "You repeated along the positions (dim 2): the heads are dim 1 of (B, H_kv, T, D)."),
        (lambda x, n: x,
         "The input came back unchanged: the output has H_kv * n_rep heads, n_rep copies of each."),
    ]
    return check_function(fn, reference=repeat_kv, cases=cases, exercise="ex-04-repeat-kv", quiet=quiet,
                          mistakes=mistakes)


def check_param_count(fn, *, quiet: bool = False) -> CheckReport:
    """ex-04-param-count: ``fn(d_model, n_heads, n_kv_heads, bias)`` against real modules' parameter counts."""
    cases = []
    for d_model, n_heads, n_kv_heads, bias in [(16, 4, 4, True), (64, 8, 2, True), (64, 8, 1, False),
                                               (512, 8, 8, False), (96, 12, 3, True)]:
        module = MultiHeadAttention(d_model, n_heads, n_kv_heads, bias=bias)
        kind = "MHA" if n_kv_heads == n_heads else "MQA" if n_kv_heads == 1 else "GQA"
        cases.append(Case(args=(d_model, n_heads, n_kv_heads, bias),
                          expected=sum(p.numel() for p in module.parameters()),
                          label=f"{kind} d_model={d_model}, H={n_heads}, H_kv={n_kv_heads}, bias={bias}",
                          hint=("Count each of the four nn.Linear projections: in_features * out_features "
                                "weights, plus out_features biases when bias is true. What are the output "
                                "widths of k_proj and v_proj when a head has d_model / n_heads channels?")))
    def kv_dim(d, h, kv):
        return kv * (d // h)

    mistakes = [
        (lambda d, h, kv, b: 4 * d * d + (4 * d if b else 0),
         "You counted four d_model x d_model projections: with n_kv_heads < n_heads the key and value "
         "projections are smaller, d_model x (n_kv_heads * d_model / n_heads) each."),
        (lambda d, h, kv, b: 2 * d * d + 2 * d * kv_dim(d, h, kv),
         "The biases are missing: with bias=True each projection has one bias per output channel."),
        (lambda d, h, kv, b: 2 * d * d + 2 * d * kv * d + ((2 * d + 2 * kv * d) if b else 0),
         "A key/value head has head_dim = d_model / n_heads channels, not d_model: the key projection "
         "maps to n_kv_heads * d_model / n_heads channels."),
        (lambda d, h, kv, b: 2 * d * d + 2 * d * kv_dim(d, h, kv) + (4 * d if b else 0),
         "The key and value biases have n_kv_heads * d_model / n_heads entries each (one per output "
         "channel of their projection), not d_model."),
    ]
    return check_function(fn, reference=None, cases=cases, exercise="ex-04-param-count", quiet=quiet,
                          mistakes=mistakes)


def _rms_normed(x, gain, eps, dim=-1):
    # RMSNorm of the vectors along `dim`: divide by sqrt(mean(x^2) + eps), then scale by the gain.
    return x / torch.sqrt((x * x).mean(dim=dim, keepdim=True) + eps) * gain


def _qk_norm_attention_reference(q, k, v, g_q, g_k, eps=1e-6):
    # QK-norm: each head's query and key vectors (their D channels) RMS-normalised, own gains.
    return scaled_dot_product_attention(_rms_normed(q, g_q, eps), _rms_normed(k, g_k, eps), v)


def check_qk_norm_attention(fn, *, quiet: bool = False) -> CheckReport:
    """ex-04-qk-norm: ``fn(q, k, v, g_q, g_k, eps=1e-6) -> (output, weights)``: RMSNorm with gains
    ``g_q``/``g_k`` ``(D,)`` over the last dimension of ``q`` and ``k`` ``(B, H, T, D)``, then scaled
    dot-product attention with the 1/sqrt(D) scale (Dehghani et al. 2023; Gemma 3, Qwen3)."""
    g = torch.Generator().manual_seed(44)

    def randn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g) * scale + shift

    def gains(d):
        return 1.0 + 0.5 * randn(d)

    zero_query = randn(1, 2, 3, 4)
    zero_query[0, 1, 1] = 0.0  # head 1, position 1: an all-zero query vector
    hint = ("Normalise each query vector (one head, one position) over its D channels, the last dimension: "
            "q * g_q / sqrt(mean(q^2) + eps); the keys the same way with g_k; then the chapter's attention "
            "with its 1/sqrt(D) scale on the normalised q, k and the untouched v.")
    cases = [
        Case(args=(randn(2, 3, 4, 8, scale=2.0, shift=0.5), randn(2, 3, 4, 8, scale=1.5, shift=-0.3),
                   randn(2, 3, 4, 8), gains(8), gains(8)),
             label="(2, 3, 4, 8), default eps", hint=hint),
        Case(args=(randn(1, 2, 5, 16, scale=1000.0), randn(1, 2, 5, 16, scale=1000.0), randn(1, 2, 5, 16),
                   gains(16), gains(16), 1e-6),
             label="q and k 1000 times larger: the scores stay bounded", hint=hint),
        Case(args=(randn(2, 2, 2, 8, shift=1.0), randn(2, 2, 6, 8), randn(2, 2, 6, 3), gains(8), gains(8), 1e-5),
             label="cross-attention T_q=2, T_k=6, D_v=3", hint=hint),
        Case(args=(randn(1, 2, 3, 4, scale=0.1), randn(1, 2, 3, 4, scale=0.1), randn(1, 2, 3, 4), gains(4),
                   gains(4), 0.1),
             label="small q and k, eps=0.1: where eps goes matters",
             hint="eps goes inside the square root: x / sqrt(mean(x^2) + eps)."),
        Case(args=(zero_query, randn(1, 2, 3, 4), randn(1, 2, 3, 4), gains(4), gains(4), 1e-6),
             label="an all-zero query: eps keeps it finite",
             hint="An all-zero query normalises to zeros (eps keeps 0 / 0 away); its weights are uniform."),
    ]

    mistakes = [
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_k, eps, dim=-2),
         "You normalised over the positions (dim -2, T): RMSNorm normalises each head's vector at one "
         "position, over its D channels, the last dimension (dim=-1)."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_k, eps, dim=-3),
         "You normalised over the heads (dim 1, H): RMSNorm normalises each head's vector at one "
         "position, over its D channels, the last dimension (dim=-1)."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_k, eps, centre=True),
         "You subtracted the mean first (that is LayerNorm): RMSNorm does not centre, it only divides by "
         "the root mean square sqrt(mean(x^2) + eps)."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_q, eps),
         "The keys were scaled by g_q: each side has its own gain, g_q for the queries and g_k for the keys."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_k, g_k, eps),
         "The queries were scaled by g_k: each side has its own gain, g_q for the queries and g_k for the keys."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, 1.0, 1.0, eps),
         "The gains are missing: multiply the normalised queries by g_q and the normalised keys by g_k "
         "(channel by channel)."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_k, eps, v_gain=1.0),
         "The values were normalised too: QK-norm touches only the queries and the keys; v goes into the "
         "attention as it is."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_k, eps, v_gain=g_k),
         "The values were normalised too: QK-norm touches only the queries and the keys; v goes into the "
         "attention as it is."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_k, eps, eps_outside=True),
         "eps went outside the square root: RMSNorm divides by sqrt(mean(x^2) + eps), not by "
         "sqrt(mean(x^2)) + eps."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_k, 0.0),
         "eps is missing: divide by sqrt(mean(x^2) + eps); without it an all-zero vector gives 0 / 0 = NaN."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_k, eps, l2=True),
         "You divided by the length sqrt(sum(x^2)) (as F.normalize does): RMSNorm divides by the root *mean* "
         "square sqrt(mean(x^2) + eps), so a normalised vector has length sqrt(D), not 1."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_k, eps, scale=1.0),
         "The 1/sqrt(D) scale is missing: QK-norm changes what goes into the chapter's attention, not the "
         "attention itself; keep dividing the scores by sqrt(D)."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_k, eps, only="q"),
         "Only the queries were normalised: normalise the keys too, with their gain g_k."),
        (lambda q, k, v, g_q, g_k, eps=1e-6: _qk_wrong(q, k, v, g_q, g_k, eps, only="k"),
         "Only the keys were normalised: normalise the queries too, with their gain g_q."),
    ]
    return check_function(fn, reference=_qk_norm_attention_reference, cases=cases, exercise="ex-04-qk-norm",
                          quiet=quiet, mistakes=mistakes)


def _qk_wrong(q, k, v, g_q, g_k, eps, *, dim=-1, centre=False, eps_outside=False, l2=False, scale=None,
              v_gain=None, only=None):
    """QK-norm attention with one known mistake (another axis, centring, eps outside, ...)."""
    def norm(x, gain):
        if centre:
            x = x - x.mean(dim=dim, keepdim=True)
        if l2:
            return x / torch.sqrt((x * x).sum(dim=dim, keepdim=True) + eps) * gain
        if eps_outside:
            return x / (torch.sqrt((x * x).mean(dim=dim, keepdim=True)) + eps) * gain
        return _rms_normed(x, gain, eps, dim)

    q_hat = q if only == "k" else norm(q, g_q)
    k_hat = k if only == "q" else norm(k, g_k)
    v_hat = v if v_gain is None else norm(v, v_gain)
    return scaled_dot_product_attention(q_hat, k_hat, v_hat, scale=scale)


def _softcap_attention_reference(q, k, v, cap):
    # Gemma 2's logit soft-capping: scores squashed smoothly into (-cap, cap) before the softmax.
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    weights = torch.softmax(cap * torch.tanh(scores / cap), dim=-1)
    return weights @ v, weights


def check_softcap_attention(fn, *, quiet: bool = False) -> CheckReport:
    """ex-04-softcap: ``fn(q, k, v, cap) -> (output, weights)``: scaled dot-product attention whose
    scaled scores ``s`` are soft-capped to ``cap * tanh(s / cap)`` before the softmax (Gemma 2; a
    variant the chapter does not show)."""
    g = torch.Generator().manual_seed(4)

    def qkv(*lead, t_q=3, t_k=5, d=8, scale=1.0):
        return (torch.randn(*lead, t_q, d, generator=g) * scale, torch.randn(*lead, t_k, d, generator=g) * scale,
                torch.randn(*lead, t_k, 4, generator=g))

    hint = ("Scale first (s = q @ k^T / sqrt(D)), then cap (cap * tanh(s / cap)), then softmax over the keys.")
    cases = [
        Case(args=(*qkv(1, scale=0.1), 50.0), label="small scores, cap 50: almost plain attention", hint=hint),
        Case(args=(*qkv(2, 2, scale=6.0), 5.0), label="large scores, cap 5: the cap matters", hint=hint),
        Case(args=(*qkv(3, t_q=1, t_k=7, scale=4.0), 1.0), label="cap 1, one query", hint=hint),
    ]
    mistakes = [
        (lambda q, k, v, c: _sdpa_reference(q, k, v),
         "No cap: squash the scaled scores with cap * tanh(scores / cap) before the softmax."),
        (lambda q, k, v, c: _capped_unscaled(q, k, v, c),
         "You capped before scaling: divide by sqrt(D) first, then cap the scaled scores."),
        (lambda q, k, v, c: _clamped(q, k, v, c),
         "A hard clamp is not the soft cap: use cap * tanh(scores / cap), smooth and with a gradient everywhere."),
    ]
    return check_function(fn, reference=_softcap_attention_reference, cases=cases, exercise="ex-04-softcap",
                          quiet=quiet, mistakes=mistakes)


def _capped_unscaled(q, k, v, cap):  # a known mistake: cap, then scale
    scores = cap * torch.tanh(q @ k.transpose(-2, -1) / cap) / q.shape[-1] ** 0.5
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def _clamped(q, k, v, cap):  # a known mistake: a hard clamp
    scores = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).clamp(-cap, cap)
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
