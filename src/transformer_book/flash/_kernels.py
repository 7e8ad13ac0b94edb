"""The Triton kernels of FlashAttention-2: forward, and the atomic-free backward.

This module imports ``triton`` and decorates the kernels when it is first imported, which
:mod:`transformer_book.flash.triton_attention` does only on the first call of
``flash_attention``. Triton decides *at decoration time* whether a kernel is compiled for the
GPU or run by its CPU interpreter (``TRITON_INTERPRET=1``), so that variable must be set
before this module is imported. Importing it never touches a GPU driver.

Layout: every tensor is ``(B, H, N, D)`` with unit stride along ``D``; the other strides are
passed in, so transposed views such as ``x.transpose(1, 2)`` work without a copy. The
log-sum-exp and the backward's ``delta`` are ``(B * H, N_q)`` float32, contiguous.

Units: with ``USE_EXP2`` the scores are carried in base 2, ``s2 = q.k * scale * log2(e)``, and
``exp2(s2 - m2) = exp(q.k * scale - m)``: the scale and the change of base cost one multiply.
The stored log-sum-exp is always in natural units, ``lse = m + log(l)``, so that it can be
checked against ``torch.logsumexp``.
"""

from __future__ import annotations

import triton
import triton.language as tl

@triton.jit
def _program_ids(n_blocks, n_bh, QBLOCKS_FASTEST: tl.constexpr):
    """Split the 1-D program id into (block index, batch*head index).

    With ``QBLOCKS_FASTEST`` neighbouring programs (which the GPU runs at the same time) work
    on neighbouring blocks of the same head and so share that head's K and V in the L2 cache.
    """
    pid = tl.program_id(0)
    if QBLOCKS_FASTEST:
        pid_blk = pid % n_blocks
        pid_bh = pid // n_blocks
    else:
        pid_bh = pid % n_bh
        pid_blk = pid // n_bh
    return pid_blk, pid_bh


# ----------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
               lo, hi, n_k, qk_scale,
               BLOCK_N: tl.constexpr, MASK_CAUSAL: tl.constexpr, MASK_KEYS: tl.constexpr,
               USE_EXP2: tl.constexpr, DEFERRED_NORM: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Walk key blocks ``[lo, hi)`` for one query block, updating (acc, l, m) online."""
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        kt_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None]  # K^T tile: (D, BLOCK_N)
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]  # V tile: (BLOCK_N, D)
        if MASK_KEYS:  # only the ragged last block needs bounds checks
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < n_k, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < n_k, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), fp32
        if MASK_CAUSAL:
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        if MASK_KEYS:
            s = tl.where(offs_n[None, :] < n_k, s, float("-inf"))
        # Online softmax. Every row has seen at least one visible key before or in this block
        # (key 0 is visible to all rows, and blocks are visited from the left), so m_new is
        # finite and the exponents below never see -inf - (-inf).
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if USE_EXP2:
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
        else:
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
        l_new = l_i * alpha + tl.sum(p, 1)
        if DEFERRED_NORM:
            # FlashAttention-2: keep acc unnormalised; one divide by l at the very end.
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        else:
            # FlashAttention-1 style: acc is always a normalised output; rescale every block.
            acc = acc * (l_i * alpha / l_new)[:, None]
            acc = tl.dot((p / l_new[:, None]).to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        l_i = l_new
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE,
              stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
              stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
              n_heads, n_bh, n_q, n_k, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, CAUSAL_SKIP: tl.constexpr, USE_EXP2: tl.constexpr,
              DEFERRED_NORM: tl.constexpr, QBLOCKS_FASTEST: tl.constexpr,
              EVEN_Q: tl.constexpr, EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One program = one block of BLOCK_M queries of one (batch, head)."""
    pid_m, pid_bh = _program_ids(tl.cdiv(n_q, BLOCK_M), n_bh, QBLOCKS_FASTEST)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    o_base = O + b * stride_ob + h * stride_oh

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = q_base + offs_m[:, None] * stride_qn + offs_d[None, :]
    if EVEN_Q:
        q = tl.load(q_ptrs)
    else:
        q = tl.load(q_ptrs, mask=offs_m[:, None] < n_q, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        if CAUSAL_SKIP:
            # Off the diagonal: keys [0, start_m) are visible to every query of the block
            # (start_m is a multiple of BLOCK_N): no mask needed.
            hi = tl.minimum(start_m, n_k)
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
                                       offs_m, offs_d, 0, hi, n_k, qk_scale,
                                       BLOCK_N, False, not EVEN_K, USE_EXP2, DEFERRED_NORM, DOT_PRECISION)
            # On the diagonal: keys [start_m, start_m + BLOCK_M) need the causal mask. Key
            # blocks after that are invisible to the whole query block and are never visited.
            hi = tl.minimum(start_m + BLOCK_M, n_k)
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
                                       offs_m, offs_d, start_m, hi, n_k, qk_scale,
                                       BLOCK_N, True, not EVEN_K, USE_EXP2, DEFERRED_NORM, DOT_PRECISION)
        else:
            # No skipping: every key block is computed, and masked elementwise.
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
                                       offs_m, offs_d, 0, n_k, n_k, qk_scale,
                                       BLOCK_N, True, not EVEN_K, USE_EXP2, DEFERRED_NORM, DOT_PRECISION)
    else:
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
                                   offs_m, offs_d, 0, n_k, n_k, qk_scale,
                                   BLOCK_N, False, not EVEN_K, USE_EXP2, DEFERRED_NORM, DOT_PRECISION)

    if DEFERRED_NORM:
        acc = acc / l_i[:, None]
    if USE_EXP2:
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # base-2 units -> natural log
    else:
        lse = m_i + tl.log(l_i)
    o_ptrs = o_base + offs_m[:, None] * stride_on + offs_d[None, :]
    lse_ptrs = LSE + pid_bh.to(tl.int64) * n_q + offs_m
    if EVEN_Q:
        tl.store(o_ptrs, acc.to(O.dtype.element_ty))
        tl.store(lse_ptrs, lse)
    else:
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=offs_m[:, None] < n_q)
        tl.store(lse_ptrs, lse, mask=offs_m < n_q)


# ----------------------------------------------------------------------------------------
# Backward (FlashAttention-2): delta = rowsum(dO * O); P recomputed from the saved lse.
#   dV = P^T dO,   dP = dO V^T,   dS = P * (dP - delta),   dQ = scale * dS K,   dK = scale * dS^T Q
# Two kernels, no atomics: one program per key block writes dK, dV; one per query block, dQ.
# ----------------------------------------------------------------------------------------


@triton.jit
def _bwd_preprocess(O, DO, DELTA,
                    stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don,
                    n_heads, n_bh, n_q,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = sum_d O_id dO_id  (= sum_j P_ij dP_ij), one float32 per query row."""
    pid_m, pid_bh = _program_ids(tl.cdiv(n_q, BLOCK_M), n_bh, True)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < n_q
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :],
                mask=row_ok, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :],
                 mask=row_ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * n_q + offs_m, delta, mask=offs_m < n_q)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                offs_n, offs_d, lo, hi, n_q, qk_scale, lse_scale,
                BLOCK_M: tl.constexpr, MASK_CAUSAL: tl.constexpr, MASK_Q: tl.constexpr,
                USE_EXP2: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Walk query blocks ``[lo, hi)`` for one key block, accumulating dK and dV."""
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        qt_ptrs = q_base + offs_m[None, :] * stride_qn + offs_d[:, None]  # Q^T: (D, BLOCK_M)
        do_ptrs = do_base + offs_m[:, None] * stride_don + offs_d[None, :]  # dO: (BLOCK_M, D)
        if MASK_Q:
            # Rows past n_q load as q = 0, dO = 0, lse = delta = 0: their p is 1, but every
            # term they add is multiplied by dO = 0 or (dP - delta) = 0, so they add nothing.
            qt = tl.load(qt_ptrs, mask=offs_m[None, :] < n_q, other=0.0)
            do = tl.load(do_ptrs, mask=offs_m[:, None] < n_q, other=0.0)
            lse = tl.load(lse_base + offs_m, mask=offs_m < n_q, other=0.0)
            delta = tl.load(delta_base + offs_m, mask=offs_m < n_q, other=0.0)
        else:
            qt = tl.load(qt_ptrs)
            do = tl.load(do_ptrs)
            lse = tl.load(lse_base + offs_m)
            delta = tl.load(delta_base + offs_m)
        st = tl.dot(k, qt, input_precision=DOT_PRECISION) * qk_scale  # S^T: (BLOCK_N, BLOCK_M)
        if USE_EXP2:
            pt = tl.math.exp2(st - (lse * lse_scale)[None, :])
        else:
            pt = tl.exp(st - lse[None, :])
        if MASK_CAUSAL:
            pt = tl.where(offs_m[None, :] >= offs_n[:, None], pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # dP^T: (BLOCK_N, BLOCK_M)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV,
                   stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                   stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                   n_heads, n_bh, n_q, n_k, sm_scale, qk_scale, lse_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, CAUSAL_SKIP: tl.constexpr, USE_EXP2: tl.constexpr,
                   QBLOCKS_FASTEST: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_K: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """One program = one block of BLOCK_N keys of one (batch, head); loops over queries."""
    pid_n, pid_bh = _program_ids(tl.cdiv(n_k, BLOCK_N), n_bh, QBLOCKS_FASTEST)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    lse_base = LSE + pid_bh.to(tl.int64) * n_q
    delta_base = DELTA + pid_bh.to(tl.int64) * n_q

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    if EVEN_K:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    else:  # keys past n_k load as 0; their dK, dV rows are computed but never stored
        k = tl.load(k_ptrs, mask=offs_n[:, None] < n_k, other=0.0)
        v = tl.load(v_ptrs, mask=offs_n[:, None] < n_k, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        if CAUSAL_SKIP:
            # Queries before start_n see none of these keys: skipped. Queries in
            # [start_n, start_n + BLOCK_N) straddle the diagonal: masked. Later ones see all.
            mid = tl.minimum(start_n + BLOCK_N, n_q)
            dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                                 offs_n, offs_d, start_n, mid, n_q, qk_scale, lse_scale,
                                 BLOCK_M, True, not EVEN_Q, USE_EXP2, DOT_PRECISION)
            dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                                 offs_n, offs_d, start_n + BLOCK_N, n_q, n_q, qk_scale, lse_scale,
                                 BLOCK_M, False, not EVEN_Q, USE_EXP2, DOT_PRECISION)
        else:
            dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                                 offs_n, offs_d, 0, n_q, n_q, qk_scale, lse_scale,
                                 BLOCK_M, True, not EVEN_Q, USE_EXP2, DOT_PRECISION)
    else:
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                             offs_n, offs_d, 0, n_q, n_q, qk_scale, lse_scale,
                             BLOCK_M, False, not EVEN_Q, USE_EXP2, DOT_PRECISION)

    dk = dk * sm_scale
    dk_ptrs = DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
    dv_ptrs = DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :]
    if EVEN_K:
        tl.store(dk_ptrs, dk.to(DK.dtype.element_ty))
        tl.store(dv_ptrs, dv.to(DV.dtype.element_ty))
    else:
        tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=offs_n[:, None] < n_k)
        tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < n_k)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn,
              offs_m, offs_d, lo, hi, n_k, qk_scale,
              BLOCK_N: tl.constexpr, MASK_CAUSAL: tl.constexpr, MASK_KEYS: tl.constexpr,
              USE_EXP2: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Walk key blocks ``[lo, hi)`` for one query block, accumulating dQ."""
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        kt_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None]  # K^T: (D, BLOCK_N)
        vt_ptrs = v_base + offs_n[None, :] * stride_vn + offs_d[:, None]  # V^T: (D, BLOCK_N)
        if MASK_KEYS:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < n_k, other=0.0)
            vt = tl.load(vt_ptrs, mask=offs_n[None, :] < n_k, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            vt = tl.load(vt_ptrs)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        if USE_EXP2:
            p = tl.math.exp2(s - lse[:, None])  # lse already in base-2 units here
        else:
            p = tl.exp(s - lse[:, None])
        if MASK_CAUSAL:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        if MASK_KEYS:
            p = tl.where(offs_n[None, :] < n_k, p, 0.0)
        dp = tl.dot(do, vt, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ,
                 stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                 stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                 stride_dqb, stride_dqh, stride_dqn,
                 n_heads, n_bh, n_q, n_k, sm_scale, qk_scale, lse_scale,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, CAUSAL_SKIP: tl.constexpr, USE_EXP2: tl.constexpr,
                 QBLOCKS_FASTEST: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_K: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """One program = one block of BLOCK_M queries of one (batch, head); loops over keys."""
    pid_m, pid_bh = _program_ids(tl.cdiv(n_q, BLOCK_M), n_bh, QBLOCKS_FASTEST)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    do_ptrs = DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :]
    lse_ptrs = LSE + pid_bh.to(tl.int64) * n_q + offs_m
    delta_ptrs = DELTA + pid_bh.to(tl.int64) * n_q + offs_m
    if EVEN_Q:
        q = tl.load(q_ptrs)
        do = tl.load(do_ptrs)
        lse = tl.load(lse_ptrs)
        delta = tl.load(delta_ptrs)
    else:  # rows past n_q: dO = 0 and delta = 0 make ds = 0; they are never stored
        q = tl.load(q_ptrs, mask=offs_m[:, None] < n_q, other=0.0)
        do = tl.load(do_ptrs, mask=offs_m[:, None] < n_q, other=0.0)
        lse = tl.load(lse_ptrs, mask=offs_m < n_q, other=0.0)
        delta = tl.load(delta_ptrs, mask=offs_m < n_q, other=0.0)
    lse = lse * lse_scale
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        if CAUSAL_SKIP:
            hi = tl.minimum(start_m, n_k)  # fully visible key blocks (start_m % BLOCK_N == 0)
            dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn,
                           offs_m, offs_d, 0, hi, n_k, qk_scale,
                           BLOCK_N, False, not EVEN_K, USE_EXP2, DOT_PRECISION)
            hi = tl.minimum(start_m + BLOCK_M, n_k)  # the diagonal blocks, masked
            dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn,
                           offs_m, offs_d, start_m, hi, n_k, qk_scale,
                           BLOCK_N, True, not EVEN_K, USE_EXP2, DOT_PRECISION)
        else:
            dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn,
                           offs_m, offs_d, 0, n_k, n_k, qk_scale,
                           BLOCK_N, True, not EVEN_K, USE_EXP2, DOT_PRECISION)
    else:
        dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn,
                       offs_m, offs_d, 0, n_k, n_k, qk_scale,
                       BLOCK_N, False, not EVEN_K, USE_EXP2, DOT_PRECISION)

    dq = dq * sm_scale
    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :]
    if EVEN_Q:
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty))
    else:
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=offs_m[:, None] < n_q)


# ----------------------------------------------------------------------------------------
# Autotuned variants (GPU only). Every config keeps the divisibility the causal split needs:
# forward BLOCK_M % BLOCK_N == 0; dK/dV BLOCK_N % BLOCK_M == 0; dQ BLOCK_M % BLOCK_N == 0.
# Configs that do not fit in shared memory are skipped by the autotuner (OutOfResources).
# The kernels overwrite their outputs (no atomics, no accumulation into them), so running a
# config several times while tuning is harmless.
# ----------------------------------------------------------------------------------------

_TUNE_KEY = ["n_q", "n_k", "HEAD_DIM", "CAUSAL", "CAUSAL_SKIP", "USE_EXP2", "DEFERRED_NORM", "QBLOCKS_FASTEST"]
_TUNE_KEY_BWD = ["n_q", "n_k", "HEAD_DIM", "CAUSAL", "CAUSAL_SKIP", "USE_EXP2", "QBLOCKS_FASTEST"]

FWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(64, 64, 4, 3), (128, 32, 4, 4), (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2)]
]
DKDV_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(32, 64, 4, 3), (32, 128, 4, 3), (64, 128, 8, 2), (16, 64, 4, 4)]
]
DQ_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(64, 32, 4, 3), (128, 32, 4, 3), (128, 64, 8, 2), (64, 16, 4, 4)]
]

attn_fwd_tuned = triton.autotune(configs=FWD_CONFIGS, key=_TUNE_KEY)(_attn_fwd)
attn_bwd_dkdv_tuned = triton.autotune(configs=DKDV_CONFIGS, key=_TUNE_KEY_BWD)(_attn_bwd_dkdv)
attn_bwd_dq_tuned = triton.autotune(configs=DQ_CONFIGS, key=_TUNE_KEY_BWD)(_attn_bwd_dq)

attn_fwd = _attn_fwd
attn_bwd_dkdv = _attn_bwd_dkdv
attn_bwd_dq = _attn_bwd_dq
bwd_preprocess = _bwd_preprocess


def is_interpreted() -> bool:
    """True when these kernels, and triton.language itself, were set up for the CPU interpreter."""
    return type(_attn_fwd).__name__ == "InterpretedFunction" and type(tl.standard.sum).__name__ == "InterpretedFunction"
