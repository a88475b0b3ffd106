"""Triton kernels for the fused IndRNN recurrence, forward and backward.

Layout: every (T, B, H) tensor is addressed through its three strides, so time-major,
batch-major (``batch_first``) and arbitrarily strided inputs are read in place. One program owns
a (BLOCK_B, BLOCK_H) tile of the state and walks the whole time axis with that state in
registers; time runs forwards or backwards (REVERSE) without flipping memory. A third grid axis
runs the two directions of a bidirectional layer in one launch, on the two halves of the
feature axis. Triton does not software-pipeline these loops (there is no dot), so each program
issues the loads of CHUNK steps together before running the dependent chain over them.

When ``TRITON_INTERPRET=1`` is set before this module is imported, the same kernels run on CPU
tensors through Triton's interpreter: that is how the test-suite exercises them without a GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _alloc

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

def _configs() -> list[triton.Config]:
    if INTERPRET:
        # The interpreter costs per program and per step, not per element: a small tile that
        # still splits B and H into several partial blocks, and a chunk that leaves a tail.
        return [triton.Config({"BLOCK_B": 2, "BLOCK_H": 64, "CHUNK": 4}, num_warps=1)]
    return gpu_configs()


def gpu_configs() -> list[triton.Config]:
    """The autotune list for a GPU (also built under the interpreter, for tests)."""
    # (BLOCK_B, BLOCK_H, num_warps, CHUNK): 4 elements per thread (a 16-byte vector of fp32, 8
    # bytes of 16-bit types) or 8 (16 bytes of 16-bit types), and CHUNK steps of loads in
    # flight per program. Shapes where ptxas spills for sm_80 are left out or prefetch fewer
    # steps: 8 elements per thread prefetch 4, and nothing prefetches 16 (float16 spills).
    # benchmarks/kernel_report.py prints registers, spills and load widths of every config.
    tiles = [
        (1, 128, 1, 8), (1, 256, 1, 4), (1, 256, 4, 8), (1, 512, 2, 4), (1, 1024, 4, 4),
        (2, 128, 2, 8), (2, 256, 4, 8), (4, 128, 4, 8), (1, 512, 8, 8),
    ]
    # Deeper prefetch would help B x H <= 65536, which the H200 run found latency-bound (8
    # steps in flight per program are too few bytes there), but every 1-2 elements-per-thread
    # tile with CHUNK 16 or 32 spilled in ptxas for sm_80 or sm_90 in some dtype or flag set.
    configs = []
    for bb, bh, w, chunk in tiles:
        meta = {"BLOCK_B": bb, "BLOCK_H": bh, "CHUNK": chunk}
        configs.append(triton.Config(meta, num_warps=w, num_stages=1))
    return configs


def _prune(configs, named_args, **kwargs):
    """Drop tiles far wider than H (they would idle most lanes) and never return nothing."""
    H = named_args["H"]
    limit = max(128, triton.next_power_of_2(H))
    kept = [c for c in configs if c.kwargs["BLOCK_H"] <= limit]
    return kept or configs[:1]


_PRUNE = {"early_config_prune": _prune}


_HEURISTICS = {
    "HAS_H0": lambda a: a["p_h0"] is not None,
    "HAS_MASK": lambda a: a["p_mask"] is not None,
    # Accumulate in float64 only for float64 inputs (used by gradcheck); float32 otherwise.
    "ACC_F64": lambda a: a["p_out"].dtype == torch.float64,
}


@triton.jit
def _clip(b_u, r_max, r_min, CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr):
    """clamp(sign(u) * max(|u|, m), -r, r) and a 0/1 mask of where u passed through unchanged.

    A NaN weight stays NaN, as with torch.clamp (Triton's min/max would drop it by default).
    """
    b_keep = tl.full(b_u.shape, 1.0, b_u.dtype)
    if CLIP_MIN:
        b_small = tl.abs(b_u) < r_min
        b_sign = tl.where(b_u > 0, 1.0, tl.where(b_u < 0, -1.0, 0.0)).to(b_u.dtype)
        b_u = tl.where(b_small, b_sign * r_min, b_u)
        b_keep = tl.where(b_small, 0.0, b_keep)
    if CLIP_MAX:
        # Kept where |u| <= r, so a NaN weight has no gradient, as under torch.clamp.
        b_in = tl.abs(b_u) <= r_max
        b_u = tl.minimum(tl.maximum(b_u, -r_max, propagate_nan=tl.PropagateNan.ALL), r_max,
                         propagate_nan=tl.PropagateNan.ALL)
        b_keep = tl.where(b_in, b_keep, 0.0)
    return b_u, b_keep


@triton.jit
def _i64(x):
    """x as an int64 scalar tensor (x may be a specialised constant, e.g. a stride of 1)."""
    return x * tl.full([], 1, tl.int64)


@triton.jit
def _indrnn_fwd_body(
    p_pre,  # pre-activations W x, (T, B, H) through strides s_pre_*
    p_u,  # recurrent weights u, (D*H,) contiguous
    p_b,  # bias, (D*H,) contiguous, or None
    p_h0,  # initial state, (B, H) contiguous, or None
    p_mask,  # step mask, (T, B) through strides s_m_*, nonzero = real step; or None
    p_out,  # output h, (T, B, H) through strides s_out_*, same dtype as pre
    p_hn,  # final state, (B, H) contiguous, accumulation dtype
    T,
    B,
    H,
    s_pre_t, s_pre_b, s_pre_h,
    s_out_t, s_out_b, s_out_h,
    s_m_t, s_m_b,
    r_max,
    r_min,
    CLIP_MAX: tl.constexpr,
    CLIP_MIN: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ACC_F64: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    CHUNK: tl.constexpr,
    I_D: tl.constexpr,  # direction: 1 = the second half of a bidirectional layer
):
    ACC = tl.float64 if ACC_F64 else tl.float32
    i_b = tl.program_id(0)
    i_h = tl.program_id(1)
    o_b = (i_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    o_h = (i_h * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    m_b = o_b < B
    m_h = o_h < H
    o_f = I_D * H + o_h  # feature index along the D*H axis of pre, out, u and bias
    o_s = I_D * _i64(B) * H  # start of this direction's (B, H) state
    if REVERSE:
        rev = 1
    else:
        rev = 0
    m_bh = m_b[:, None] & m_h[None, :]

    b_u = tl.load(p_u + o_f, mask=m_h, other=0).to(ACC)
    b_u, _ = _clip(b_u, r_max, r_min, CLIP_MAX, CLIP_MIN)
    if HAS_BIAS:
        b_bias = tl.load(p_b + o_f, mask=m_h, other=0).to(ACC)
    else:
        b_bias = tl.zeros([BLOCK_H], dtype=ACC)
    if HAS_H0:
        b_h = tl.load(p_h0 + o_s + o_b[:, None] * H + o_h[None, :], mask=m_bh, other=0).to(ACC)
    else:
        b_h = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)

    # Time is walked through pointers that move one (signed, int64) stride per step, starting at
    # t = T-1 when reversed, so no t * stride product can overflow and memory is never flipped.
    t0 = _i64(T - 1) * rev
    sgn = 1 - 2 * rev
    d_x = sgn * _i64(s_pre_t)
    d_o = sgn * _i64(s_out_t)
    d_m = sgn * _i64(s_m_t)
    p_x = p_pre + t0 * s_pre_t + o_b[:, None] * s_pre_b + o_f[None, :] * s_pre_h
    p_o = p_out + t0 * s_out_t + o_b[:, None] * s_out_b + o_f[None, :] * s_out_h
    if HAS_MASK:
        p_m = p_mask + t0 * s_m_t + o_b * s_m_b
    for i in range(0, T, CHUNK):
        # The inputs do not depend on the state: issue the loads of CHUNK steps at once so
        # they are in flight together, then run the dependent chain over them.
        xs = ()
        ms = ()
        # Pointers advance one stride per step (cheaper in registers than CHUNK offsets).
        for j in tl.static_range(CHUNK):
            valid = (o_b * 0 + i + j) < T
            xs = xs + (tl.load(p_x, mask=m_bh & valid[:, None], other=0),)
            p_x += d_x
            if HAS_MASK:
                ms = ms + (tl.load(p_m, mask=m_b & valid, other=0) != 0,)
                p_m += d_m
        for j in tl.static_range(CHUNK):
            valid = (o_b * 0 + i + j) < T
            # relu that keeps NaN, as torch.relu does (Triton's maximum drops NaN by default).
            b_new = tl.maximum(xs[j].to(ACC) + b_bias[None, :] + b_u[None, :] * b_h, 0.0,
                               propagate_nan=tl.PropagateNan.ALL)
            if HAS_MASK:
                valid = valid & ms[j]
            b_h = tl.where(valid[:, None], b_new, b_h)
            tl.store(p_o, b_h.to(p_out.dtype.element_ty),
                     mask=m_bh & ((o_b * 0 + i + j) < T)[:, None])
            p_o += d_o
    o_state = o_s + o_b[:, None] * H + o_h[None, :]
    tl.store(p_hn + o_state, b_h.to(p_hn.dtype.element_ty), mask=m_bh)


@triton.jit
def _indrnn_bwd_body(
    p_out,  # forward output h, (T, B, H) through strides s_out_*
    p_h0,  # initial state, (B, H) contiguous, or None
    p_u,  # recurrent weights u, (D*H,) contiguous
    p_mask,  # step mask, (T, B) through strides s_m_*, or None
    p_dout,  # gradient of the output, (T, B, H) through strides s_do_*, or None
    p_dhn,  # gradient of the final state, (B, H) contiguous, or None
    p_dpre,  # gradient of pre, (T, B, H) through strides s_out_* (same layout as the output)
    p_dh0,  # gradient of h0, (B, H) contiguous, accumulation dtype
    p_du,  # per-row partial sums of du over time, (B, H) contiguous, accumulation dtype
    p_db,  # per-row partial sums of db over time, (B, H) contiguous, accumulation dtype
    T,
    B,
    H,
    s_out_t, s_out_b, s_out_h,
    s_do_t, s_do_b, s_do_h,
    s_m_t, s_m_b,
    r_max,
    r_min,
    CLIP_MAX: tl.constexpr,
    CLIP_MIN: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_DOUT: tl.constexpr,
    HAS_DHN: tl.constexpr,
    ACC_F64: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    CHUNK: tl.constexpr,
    I_D: tl.constexpr,  # direction: 1 = the second half of a bidirectional layer
):
    ACC = tl.float64 if ACC_F64 else tl.float32
    i_b = tl.program_id(0)
    i_h = tl.program_id(1)
    o_b = (i_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    o_h = (i_h * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    m_b = o_b < B
    m_h = o_h < H
    o_f = I_D * H + o_h  # feature index along the D*H axis of pre, out, u and bias
    o_s = I_D * _i64(B) * H  # start of this direction's (B, H) state
    if REVERSE:
        rev = 1
    else:
        rev = 0
    m_bh = m_b[:, None] & m_h[None, :]
    o_state = o_s + o_b[:, None] * H + o_h[None, :]

    b_u = tl.load(p_u + o_f, mask=m_h, other=0).to(ACC)
    b_u, b_keep = _clip(b_u, r_max, r_min, CLIP_MAX, CLIP_MIN)
    if HAS_H0:
        b_h0 = tl.load(p_h0 + o_state, mask=m_bh, other=0).to(ACC)
    else:
        b_h0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    # b_c: the gradient reaching the state after the step being processed (dL/dh_n to start).
    if HAS_DHN:
        b_c = tl.load(p_dhn + o_state, mask=m_bh, other=0).to(ACC)
    else:
        b_c = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    b_du = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    b_db = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)

    # Walk the forward processing order backwards, k = 0 .. T-1 being step T-1-k. The state
    # before a step is the output of the step before it (h0 for the first step); it is kept for
    # the next iteration, where it is the current output, so each output element is read once.
    # Pointers move one signed int64 stride per step, backwards through processing order.
    t_last = _i64(T - 1) * (1 - rev)
    sgn = 2 * rev - 1
    d_o = sgn * _i64(s_out_t)
    d_g = sgn * _i64(s_do_t)
    d_m = sgn * _i64(s_m_t)
    o_out = o_b[:, None] * s_out_b + o_f[None, :] * s_out_h
    p_h = p_out + t_last * s_out_t + o_out
    p_dx = p_dpre + t_last * s_out_t + o_out
    if HAS_DOUT:
        p_g = p_dout + t_last * s_do_t + o_b[:, None] * s_do_b + o_f[None, :] * s_do_h
    if HAS_MASK:
        p_m = p_mask + t_last * s_m_t + o_b * s_m_b
    b_h = tl.load(p_h, mask=m_bh, other=0).to(ACC)
    for i in range(0, T, CHUNK):
        # Issue the CHUNK steps' loads together (they do not depend on the carried gradient).
        hs = ()
        gs = ()
        ms = ()
        # Pointers advance one stride per step (cheaper in registers than CHUNK offsets).
        for j in tl.static_range(CHUNK):
            valid = (o_b * 0 + i + j) < T
            has_prev = (o_b * 0 + i + j) < T - 1
            p_h += d_o
            hs = hs + (tl.load(p_h, mask=m_bh & has_prev[:, None], other=0),)
            if HAS_DOUT:
                gs = gs + (tl.load(p_g, mask=m_bh & valid[:, None], other=0),)
                p_g += d_g
            if HAS_MASK:
                ms = ms + (tl.load(p_m, mask=m_b & valid, other=0) != 0,)
                p_m += d_m
        for j in tl.static_range(CHUNK):
            valid = (o_b * 0 + i + j) < T
            has_prev = (o_b * 0 + i + j) < T - 1
            b_prev = tl.where(has_prev[:, None], hs[j].to(ACC), b_h0)
            b_g = b_c
            if HAS_DOUT:
                b_g += gs[j].to(ACC)
            # The ReLU's gradient gate is "not h <= 0", as torch's threshold_backward: it is
            # open at a NaN output.
            b_live = ~(b_h <= 0)
            if HAS_MASK:
                # A padding step is the identity on the state: its gradient passes through.
                b_d = tl.where(b_live & (valid & ms[j])[:, None], b_g, 0.0)
                b_c = tl.where((valid & ms[j])[:, None], b_u[None, :] * b_d, b_g)
            else:
                b_d = tl.where(b_live & valid[:, None], b_g, 0.0)
                b_c = tl.where(valid[:, None], b_u[None, :] * b_d, b_g)
            tl.store(p_dx, b_d.to(p_dpre.dtype.element_ty), mask=m_bh & valid[:, None])
            p_dx += d_o
            b_du += b_d * b_prev
            b_db += b_d
            b_h = b_prev
    tl.store(p_dh0 + o_state, b_c.to(p_dh0.dtype.element_ty), mask=m_bh)
    # Per-row partials (every element written by exactly one program, whatever the tile), summed
    # over B by the caller with torch.sum: deterministic, no atomics.
    # A select, not a product with 0: du of a clipped weight is 0 even where the sum is NaN.
    tl.store(p_du + o_state, tl.where(b_keep[None, :] > 0, b_du, 0.0), mask=m_bh)
    tl.store(p_db + o_state, b_db, mask=m_bh)


@triton.heuristics({**_HEURISTICS, "HAS_BIAS": lambda a: a["p_b"] is not None})
@triton.autotune(configs=_configs(), key=["H"], prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["T"])
def _indrnn_fwd_kernel(
    p_pre,  # pre-activations W x, (T, B, H) through strides s_pre_*
    p_u,  # recurrent weights u, (D*H,) contiguous
    p_b,  # bias, (D*H,) contiguous, or None
    p_h0,  # initial state, (B, H) contiguous, or None
    p_mask,  # step mask, (T, B) through strides s_m_*, nonzero = real step; or None
    p_out,  # output h, (T, B, H) through strides s_out_*, same dtype as pre
    p_hn,  # final state, (B, H) contiguous, accumulation dtype
    T,
    B,
    H,
    s_pre_t, s_pre_b, s_pre_h,
    s_out_t, s_out_b, s_out_h,
    s_m_t, s_m_b,
    r_max,
    r_min,
    CLIP_MAX: tl.constexpr,
    CLIP_MIN: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ACC_F64: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    CHUNK: tl.constexpr,
    BIDIR: tl.constexpr,  # two directions: grid axis 2, the second reversed
):
    # Direction and REVERSE are compile-time in each body: a runtime sign on the time
    # strides costs ~100 registers with a mask. A bidirectional launch compiles both.
    if BIDIR:
        if tl.program_id(2) == 0:
            _indrnn_fwd_body(p_pre, p_u, p_b, p_h0, p_mask, p_out, p_hn, T, B, H, s_pre_t, s_pre_b,
                s_pre_h, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, CLIP_MAX, CLIP_MIN,
                False, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64, BLOCK_B, BLOCK_H, CHUNK, 0)
        else:
            _indrnn_fwd_body(p_pre, p_u, p_b, p_h0, p_mask, p_out, p_hn, T, B, H, s_pre_t, s_pre_b,
                s_pre_h, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, CLIP_MAX, CLIP_MIN,
                True, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64, BLOCK_B, BLOCK_H, CHUNK, 1)
    else:
        _indrnn_fwd_body(p_pre, p_u, p_b, p_h0, p_mask, p_out, p_hn, T, B, H, s_pre_t, s_pre_b,
            s_pre_h, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, CLIP_MAX, CLIP_MIN,
            REVERSE, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64, BLOCK_B, BLOCK_H, CHUNK, 0)


@triton.heuristics(
    {
        **_HEURISTICS,
        "HAS_DOUT": lambda a: a["p_dout"] is not None,
        "HAS_DHN": lambda a: a["p_dhn"] is not None,
    }
)
@triton.autotune(configs=_configs(), key=["H"], prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["T"])
def _indrnn_bwd_kernel(
    p_out,  # forward output h, (T, B, H) through strides s_out_*
    p_h0,  # initial state, (B, H) contiguous, or None
    p_u,  # recurrent weights u, (D*H,) contiguous
    p_mask,  # step mask, (T, B) through strides s_m_*, or None
    p_dout,  # gradient of the output, (T, B, H) through strides s_do_*, or None
    p_dhn,  # gradient of the final state, (B, H) contiguous, or None
    p_dpre,  # gradient of pre, (T, B, H) through strides s_out_* (same layout as the output)
    p_dh0,  # gradient of h0, (B, H) contiguous, accumulation dtype
    p_du,  # per-row partial sums of du over time, (B, H) contiguous, accumulation dtype
    p_db,  # per-row partial sums of db over time, (B, H) contiguous, accumulation dtype
    T,
    B,
    H,
    s_out_t, s_out_b, s_out_h,
    s_do_t, s_do_b, s_do_h,
    s_m_t, s_m_b,
    r_max,
    r_min,
    CLIP_MAX: tl.constexpr,
    CLIP_MIN: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_DOUT: tl.constexpr,
    HAS_DHN: tl.constexpr,
    ACC_F64: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    CHUNK: tl.constexpr,
    BIDIR: tl.constexpr,  # two directions: grid axis 2, the second reversed
):
    # Direction and REVERSE are compile-time in each body: a runtime sign on the time
    # strides costs ~100 registers with a mask. A bidirectional launch compiles both.
    if BIDIR:
        if tl.program_id(2) == 0:
            _indrnn_bwd_body(p_out, p_h0, p_u, p_mask, p_dout, p_dhn, p_dpre, p_dh0, p_du, p_db, T,
                B, H, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max,
                r_min, CLIP_MAX, CLIP_MIN, False, HAS_H0, HAS_MASK, HAS_DOUT, HAS_DHN, ACC_F64,
                BLOCK_B, BLOCK_H, CHUNK, 0)
        else:
            _indrnn_bwd_body(p_out, p_h0, p_u, p_mask, p_dout, p_dhn, p_dpre, p_dh0, p_du, p_db, T,
                B, H, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max,
                r_min, CLIP_MAX, CLIP_MIN, True, HAS_H0, HAS_MASK, HAS_DOUT, HAS_DHN, ACC_F64,
                BLOCK_B, BLOCK_H, CHUNK, 1)
    else:
        _indrnn_bwd_body(p_out, p_h0, p_u, p_mask, p_dout, p_dhn, p_dpre, p_dh0, p_du, p_db, T, B,
            H, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max, r_min,
            CLIP_MAX, CLIP_MIN, REVERSE, HAS_H0, HAS_MASK, HAS_DOUT, HAS_DHN, ACC_F64, BLOCK_B,
            BLOCK_H, CHUNK, 0)


def _clip_args(recurrent_max_abs: float | None, recurrent_min_abs: float) -> dict:
    return dict(
        r_max=float(recurrent_max_abs) if recurrent_max_abs is not None else 0.0,
        r_min=float(recurrent_min_abs),
        CLIP_MAX=recurrent_max_abs is not None,
        CLIP_MIN=recurrent_min_abs > 0,
    )


def _grid(B: int, H: int, D: int):
    return lambda meta: (triton.cdiv(B, meta["BLOCK_B"]), triton.cdiv(H, meta["BLOCK_H"]), D)


def _mask_arg(mask: Tensor | None) -> tuple[Tensor | None, int, int]:
    """(T, B) view of the mask as bytes (bool reinterpreted, never copied) and its strides."""
    if mask is None:
        return None, 0, 0
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    return mask, mask.stride(0), mask.stride(1)


def _dense(t: Tensor | None) -> Tensor | None:
    """The kernels index the (H,) vectors and (B, H) states as packed arrays: a strided or
    expanded (zero-stride) one is copied first (a few KB, never a (T, B, H) tensor)."""
    return None if t is None else t.contiguous()


def triton_forward(
    x: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None,
    h0: Tensor | None,
    mask: Tensor | None,
    recurrent_max_abs: float | None,
    recurrent_min_abs: float,
    reverse: bool,
    out: Tensor,
    h_n: Tensor,
    D: int,
) -> None:
    """Launch the forward kernel over D directions at once (a third grid axis).

    ``x``, ``out``: (T, B, D*H) views; ``weight_hh``, ``bias``: (D*H,); ``h0``, ``h_n``: D
    contiguous (B, H) states; ``mask``: (T, B) view. Direction 1 runs from T-1 down to 0.
    """
    T, B, H = x.shape[0], x.shape[1], x.shape[2] // D
    mask, s_m_t, s_m_b = _mask_arg(mask)
    _indrnn_fwd_kernel[_grid(B, H, D)](
        x, _dense(weight_hh), _dense(bias), _dense(h0), mask, out, h_n,
        T, B, H,
        *x.stride(), *out.stride(), s_m_t, s_m_b,
        REVERSE=reverse, BIDIR=D == 2, **_clip_args(recurrent_max_abs, recurrent_min_abs),
    )


def triton_backward(
    grad_out: Tensor | None,
    grad_hn: Tensor | None,
    out: Tensor,
    weight_hh: Tensor,
    h0: Tensor | None,
    mask: Tensor | None,
    recurrent_max_abs: float | None,
    recurrent_min_abs: float,
    reverse: bool,
    grad_pre: Tensor,
    grad_h0: Tensor,
    D: int,
) -> tuple[Tensor, Tensor]:
    """Launch the backward kernel over D directions; fills grad_pre and grad_h0 and returns
    (du, db), each (D*H,) in the accumulation dtype."""
    T, B, H = out.shape[0], out.shape[1], out.shape[2] // D
    mask, s_m_t, s_m_b = _mask_arg(mask)
    du = _alloc.empty(D, B, H, dtype=grad_h0.dtype, device=grad_h0.device)
    db = _alloc.empty(D, B, H, dtype=grad_h0.dtype, device=grad_h0.device)
    s_do = grad_out.stride() if grad_out is not None else (0, 0, 0)
    _indrnn_bwd_kernel[_grid(B, H, D)](
        out, _dense(h0), _dense(weight_hh), mask, grad_out, _dense(grad_hn),
        grad_pre, grad_h0, du, db,
        T, B, H,
        *out.stride(), *s_do, s_m_t, s_m_b,
        REVERSE=reverse, BIDIR=D == 2, **_clip_args(recurrent_max_abs, recurrent_min_abs),
    )
    return du.sum(1).flatten(), db.sum(1).flatten()
