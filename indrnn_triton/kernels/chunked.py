"""The chunked method: time split into chunks run by different programs (DESIGN §4).

For few (batch, hidden) elements and long sequences the sequential kernels cannot fill a GPU:
each element is one chain of T dependent steps. Here time is cut into chunks of ``L`` steps
and each direction runs in three launches:

1. ``maps``: one program per (chunk, batch block, hidden block) composes its chunk's steps
   into one map. Forward: the clamp-affine map h -> clamp(A + U h, L, H) (a real step is
   (a_t, u, 0, +inf), a padding step the identity (0, 1, -inf, +inf)); backward: the affine map
   c -> P c + Q of the carried gradient (a real step is (m u, m u g_t), m = [h_t > 0], a
   padding step (1, g_t)). Four (two) numbers per element and chunk, in the accumulation dtype.
2. ``carry``: one program per state tile applies the chunk maps one after the other (T / L
   steps) and writes the state (carried gradient) entering every chunk. Where a chunk's map is
   not safe to apply (|U| or |P| above ``LIMIT``, i.e. unclipped |u| > 1 compounded over the
   chunk, or a NaN/Inf in the map), that tile walks that chunk's steps one by one instead, so
   the result never depends on an overflowed product.
3. ``steps``: one program per (chunk, batch block, hidden block) runs the sequential body of
   :mod:`.sequential` over its chunk from the carried state: outputs (gradients of pre, and
   per-chunk partial sums of du and db) are computed exactly as the sequential kernel does.

Every feature of the sequential kernels carries over (mask, reverse, two directions in one
launch, clip, h0, bias, strides, float32 state); results differ from them by float rounding
only (the state entering a chunk comes from a composed map).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import _alloc
from .common import (
    INTERPRET,
    bwd_walk,
    clip,
    clip_args,
    dense,
    fwd_walk,
    i64,
    mask_arg,
    tile,
)
from .sequential import bwd_body, fwd_body

# Tile and steps of loads in flight per program (no autotuning: the chunk length depends on the
# tile). On a GPU: 4 fp32 elements per thread (16-byte vectors), as the sequential list's
# (1, 256, 2 warps) tiles; estimates until measured (benchmarks/gpu_check.sh). Under the
# interpreter: small tiles that leave partial B and H blocks, as the sequential kernels'.
if INTERPRET:
    BLOCK_B, BLOCK_H, CHUNK, NUM_WARPS = 2, 64, 4, 1
    # Short chunks, so small test shapes span several chunks with a partial last one.
    MIN_CHUNK = 8
else:
    BLOCK_B, BLOCK_H, CHUNK, NUM_WARPS = 1, 256, 8, 2
    # Each chunk writes 4 (forward) or 2 (backward) accumulation-dtype numbers per element for
    # L steps of input: at L >= 64 that is at most 1/16 of the traffic of one fp32 input.
    MIN_CHUNK = 64
# Steps of loads in flight in the carry passes' step-by-step fallback: it runs only where a map
# is unsafe, and deeper prefetch there made ptxas spill (bidirectional backward carry, sm_80).
FALLBACK_CHUNK = tl.constexpr(2)
# No pass of the chunked method stages loads through shared memory (the sequential kernels'
# STAGES): the one fixed tile is not tuned, and nothing has measured staging there.
STAGES = tl.constexpr(1)
# Programs per SM the chunk length aims for (latency hiding: many independent chains).
PROGRAMS_PER_SM = 16


def chunk_length(T: int, tiles: int, sm_count: int) -> int:
    """Steps per chunk: enough chunks that ``tiles`` state tiles times the chunks give
    PROGRAMS_PER_SM programs per SM, no shorter than MIN_CHUNK, a multiple of CHUNK."""
    n_chunks = max(1, -(-PROGRAMS_PER_SM * sm_count // tiles))
    length = max(MIN_CHUNK, -(-T // n_chunks))
    return -(-length // CHUNK) * CHUNK


@triton.jit
def _limit(ACC_F64: tl.constexpr):
    """|U| (|P|) above which a chunk's map is not applied: U x must not overflow for any state
    x a finite run could reach, and the map's A (Q) must not be a difference of huge terms."""
    if ACC_F64:
        return 1e150
    else:
        return 1e12


@triton.jit
def _compose_step(b_A, b_U, b_L, b_H, b_a, b_u):
    """The clamp-affine map F followed by one real step x -> max(0, a + u x) (DESIGN §4).

    The image of [L, H] under x -> a + u x is taken per sign of u with selects, so an infinite
    bound is never multiplied by 0; NaN propagates into the bounds (and the map is then not
    applied: see _map_unsafe)."""
    b_lo = tl.where(b_u > 0, b_a + b_u * b_L, tl.where(b_u < 0, b_a + b_u * b_H, b_a))
    b_hi = tl.where(b_u > 0, b_a + b_u * b_H, tl.where(b_u < 0, b_a + b_u * b_L, b_a))
    b_L = tl.maximum(b_lo, 0.0, propagate_nan=tl.PropagateNan.ALL)
    b_H = tl.maximum(b_hi, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return b_a + b_u * b_A, b_u * b_U, b_L, b_H


@triton.jit
def _fwd_maps_body(p_pre, p_u, p_b, p_mask, p_maps, T, B, H, NC, L, s_map,
                   s_pre_t, s_pre_b, s_pre_h, s_m_t, s_m_b, r_max, r_min, i_c, i_b,
                   CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr, REVERSE: tl.constexpr,
                   HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, ACC_F64: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, CHUNK: tl.constexpr,
                   I_D: tl.constexpr):
    """Compose chunk i_c's forward steps for one tile into (A, U, L, H), stored in p_maps
    (4 planes s_map apart, each (D, NC, B, H))."""
    ACC = tl.float64 if ACC_F64 else tl.float32
    o_b, o_h, m_b, m_h, m_bh = tile(B, H, BLOCK_B, BLOCK_H, i_b, tl.program_id(1))
    o_f = I_D * H + o_h
    b_u = tl.load(p_u + o_f, mask=m_h, other=0).to(ACC)
    b_u, _ = clip(b_u, r_max, r_min, CLIP_MAX, CLIP_MIN)
    if HAS_BIAS:
        b_bias = tl.load(p_b + o_f, mask=m_h, other=0).to(ACC)
    else:
        b_bias = tl.zeros([BLOCK_H], dtype=ACC)
    b_u = tl.broadcast_to(b_u[None, :], (BLOCK_B, BLOCK_H))
    if REVERSE:
        rev = 1
    else:
        rev = 0
    s0 = i64(i_c) * L
    n = tl.minimum(T - s0, L)
    sgn = 1 - 2 * rev
    t0 = i64(T - 1) * rev + sgn * s0
    d_x = sgn * i64(s_pre_t)
    d_m = sgn * i64(s_m_t)
    p_x = p_pre + t0 * s_pre_t + o_b[:, None] * s_pre_b + o_f[None, :] * s_pre_h
    if HAS_MASK:
        p_m = p_mask + t0 * s_m_t + o_b * s_m_b
    # Start from the identity map.
    b_A = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    b_U = tl.full([BLOCK_B, BLOCK_H], 1.0, ACC)
    b_L = tl.full([BLOCK_B, BLOCK_H], float("-inf"), ACC)
    b_H = tl.full([BLOCK_B, BLOCK_H], float("inf"), ACC)
    for i in range(0, n, CHUNK):
        xs = ()
        ms = ()
        for j in tl.static_range(CHUNK):
            valid = (o_b * 0 + i + j) < n
            xs = xs + (tl.load(p_x, mask=m_bh & valid[:, None], other=0),)
            p_x += d_x
            if HAS_MASK:
                ms = ms + (tl.load(p_m, mask=m_b & valid, other=0) != 0,)
                p_m += d_m
        for j in tl.static_range(CHUNK):
            valid = (o_b * 0 + i + j) < n
            if HAS_MASK:
                valid = valid & ms[j]
            b_a = xs[j].to(ACC) + b_bias[None, :]
            nA, nU, nL, nH = _compose_step(b_A, b_U, b_L, b_H, b_a, b_u)
            # A padding step is the identity: a select, so its pre never reaches the map.
            b_A = tl.where(valid[:, None], nA, b_A)
            b_U = tl.where(valid[:, None], nU, b_U)
            b_L = tl.where(valid[:, None], nL, b_L)
            b_H = tl.where(valid[:, None], nH, b_H)
    p = p_maps + (I_D * i64(NC) + i_c) * B * H + o_b[:, None] * H + o_h[None, :]
    tl.store(p, b_A, mask=m_bh)
    tl.store(p + s_map, b_U, mask=m_bh)
    tl.store(p + 2 * s_map, b_L, mask=m_bh)
    tl.store(p + 3 * s_map, b_H, mask=m_bh)


@triton.jit
def _fwd_carry_body(p_pre, p_u, p_b, p_h0, p_mask, p_maps, p_states, T, B, H, NC, L, s_map,
                    s_pre_t, s_pre_b, s_pre_h, s_m_t, s_m_b, r_max, r_min,
                    CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr, REVERSE: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr,
                    ACC_F64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                    CHUNK: tl.constexpr, I_D: tl.constexpr):
    """Apply the chunk maps in processing order from h0; store the state entering each chunk
    in p_states (D, NC, B, H)."""
    ACC = tl.float64 if ACC_F64 else tl.float32
    o_b, o_h, m_b, m_h, m_bh = tile(B, H, BLOCK_B, BLOCK_H, tl.program_id(0), tl.program_id(1))
    o_f = I_D * H + o_h
    o_state = o_b[:, None] * H + o_h[None, :]
    b_u = tl.load(p_u + o_f, mask=m_h, other=0).to(ACC)
    b_u, _ = clip(b_u, r_max, r_min, CLIP_MAX, CLIP_MIN)
    if HAS_BIAS:
        b_bias = tl.load(p_b + o_f, mask=m_h, other=0).to(ACC)
    else:
        b_bias = tl.zeros([BLOCK_H], dtype=ACC)
    if HAS_H0:
        b_h = tl.load(p_h0 + I_D * i64(B) * H + o_state, mask=m_bh, other=0).to(ACC)
    else:
        b_h = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    if REVERSE:
        rev = 1
    else:
        rev = 0
    sgn = 1 - 2 * rev
    d_x = sgn * i64(s_pre_t)
    d_m = sgn * i64(s_m_t)
    limit = _limit(ACC_F64)
    p_map = p_maps + I_D * i64(NC) * B * H + o_state
    p_st = p_states + I_D * i64(NC) * B * H + o_state
    for c in range(0, NC):
        tl.store(p_st, b_h, mask=m_bh)
        # Masked-out lanes read a zero map: safe, and never stored.
        b_A = tl.load(p_map, mask=m_bh, other=0)
        b_U = tl.load(p_map + s_map, mask=m_bh, other=0)
        b_L = tl.load(p_map + 2 * s_map, mask=m_bh, other=0)
        b_H = tl.load(p_map + 3 * s_map, mask=m_bh, other=0)
        safe = (tl.abs(b_U) <= limit) & (tl.abs(b_A) < float("inf")) & (b_L == b_L) \
            & (b_H == b_H)
        if tl.min(safe.to(tl.int32)) == 0:
            # Walk this chunk's steps instead (exact: the sequential recurrence).
            s0 = i64(c) * L
            t0 = i64(T - 1) * rev + sgn * s0
            p_x = p_pre + t0 * s_pre_t + o_b[:, None] * s_pre_b + o_f[None, :] * s_pre_h
            if HAS_MASK:
                p_m = p_mask + t0 * s_m_t + o_b * s_m_b
            else:
                p_m = p_x
            b_h = fwd_walk(p_x, p_x, p_m, d_x, d_x, d_m, b_h, b_u, b_bias, tl.minimum(T - s0, L),
                           o_b, m_b, m_bh, HAS_MASK, False, ACC, FALLBACK_CHUNK, STAGES)
        else:
            b_h = tl.minimum(tl.maximum(b_A + b_U * b_h, b_L, propagate_nan=tl.PropagateNan.ALL),
                             b_H, propagate_nan=tl.PropagateNan.ALL)
        p_map += i64(B) * H
        p_st += i64(B) * H


@triton.jit
def _bwd_maps_body(p_out, p_u, p_mask, p_dout, p_maps, T, B, H, NC, L, s_map,
                   s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max, r_min,
                   i_c, i_b, CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr,
                   REVERSE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DOUT: tl.constexpr,
                   ACC_F64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                   CHUNK: tl.constexpr, I_D: tl.constexpr):
    """Compose chunk i_c's backward steps (last step first) for one tile into the affine map
    c -> P c + Q of the carried gradient, stored in p_maps (2 planes s_map apart)."""
    ACC = tl.float64 if ACC_F64 else tl.float32
    o_b, o_h, m_b, m_h, m_bh = tile(B, H, BLOCK_B, BLOCK_H, i_b, tl.program_id(1))
    o_f = I_D * H + o_h
    b_u = tl.load(p_u + o_f, mask=m_h, other=0).to(ACC)
    b_u, _ = clip(b_u, r_max, r_min, CLIP_MAX, CLIP_MIN)
    b_u = tl.broadcast_to(b_u[None, :], (BLOCK_B, BLOCK_H))
    if REVERSE:
        rev = 1
    else:
        rev = 0
    s0 = i64(i_c) * L
    n = tl.minimum(T - s0, L)
    sgn = 2 * rev - 1
    t_last = i64(T - 1) * rev - sgn * (s0 + n - 1)
    d_o = sgn * i64(s_out_t)
    d_g = sgn * i64(s_do_t)
    d_m = sgn * i64(s_m_t)
    p_h = p_out + t_last * s_out_t + o_b[:, None] * s_out_b + o_f[None, :] * s_out_h
    if HAS_DOUT:
        p_g = p_dout + t_last * s_do_t + o_b[:, None] * s_do_b + o_f[None, :] * s_do_h
    if HAS_MASK:
        p_m = p_mask + t_last * s_m_t + o_b * s_m_b
    b_P = tl.full([BLOCK_B, BLOCK_H], 1.0, ACC)
    b_Q = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    for i in range(0, n, CHUNK):
        hs = ()
        gs = ()
        ms = ()
        for j in tl.static_range(CHUNK):
            valid = (o_b * 0 + i + j) < n
            hs = hs + (tl.load(p_h, mask=m_bh & valid[:, None], other=0),)
            p_h += d_o
            if HAS_DOUT:
                gs = gs + (tl.load(p_g, mask=m_bh & valid[:, None], other=0),)
                p_g += d_g
            if HAS_MASK:
                ms = ms + (tl.load(p_m, mask=m_b & valid, other=0) != 0,)
                p_m += d_m
        for j in tl.static_range(CHUNK):
            valid = (o_b * 0 + i + j) < n
            if HAS_DOUT:
                b_g = gs[j].to(ACC)
            else:
                b_g = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
            # c -> u [h > 0] (c + g) at a real step (the gate open at NaN, as in bwd_walk);
            # c -> c + g at a padding step; the identity past the chunk's end.
            b_live = ~(hs[j].to(ACC) <= 0)
            b_alpha = tl.where(b_live, b_u, 0.0)
            b_beta = tl.where(b_live, b_u * b_g, 0.0)
            if HAS_MASK:
                real = ms[j][:, None]
                b_alpha = tl.where(real, b_alpha, 1.0)
                b_beta = tl.where(real, b_beta, b_g)
            b_P = tl.where(valid[:, None], b_alpha * b_P, b_P)
            b_Q = tl.where(valid[:, None], b_alpha * b_Q + b_beta, b_Q)
    p = p_maps + (I_D * i64(NC) + i_c) * B * H + o_b[:, None] * H + o_h[None, :]
    tl.store(p, b_P, mask=m_bh)
    tl.store(p + s_map, b_Q, mask=m_bh)


@triton.jit
def _bwd_carry_body(p_out, p_h0, p_u, p_mask, p_dout, p_dhn, p_maps, p_states, T, B, H, NC, L,
                    s_map, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b,
                    r_max, r_min, CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr,
                    REVERSE: tl.constexpr, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr,
                    HAS_DOUT: tl.constexpr, HAS_DHN: tl.constexpr, ACC_F64: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, CHUNK: tl.constexpr,
                    I_D: tl.constexpr):
    """Apply the chunk maps from the last chunk down from dL/dh_n; store the gradient reaching
    the state after each chunk's last step in p_states (D, NC, B, H)."""
    ACC = tl.float64 if ACC_F64 else tl.float32
    o_b, o_h, m_b, m_h, m_bh = tile(B, H, BLOCK_B, BLOCK_H, tl.program_id(0), tl.program_id(1))
    o_f = I_D * H + o_h
    o_state = o_b[:, None] * H + o_h[None, :]
    o_s = I_D * i64(B) * H
    b_u = tl.load(p_u + o_f, mask=m_h, other=0).to(ACC)
    b_u, _ = clip(b_u, r_max, r_min, CLIP_MAX, CLIP_MIN)
    if HAS_H0:
        b_h0 = tl.load(p_h0 + o_s + o_state, mask=m_bh, other=0).to(ACC)
    else:
        b_h0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    if HAS_DHN:
        b_c = tl.load(p_dhn + o_s + o_state, mask=m_bh, other=0).to(ACC)
    else:
        b_c = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    if REVERSE:
        rev = 1
    else:
        rev = 0
    sgn = 2 * rev - 1
    d_o = sgn * i64(s_out_t)
    d_g = sgn * i64(s_do_t)
    d_m = sgn * i64(s_m_t)
    o_out = o_b[:, None] * s_out_b + o_f[None, :] * s_out_h
    limit = _limit(ACC_F64)
    b_zero = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    p_map = p_maps + (I_D * i64(NC) + NC - 1) * B * H + o_state
    p_st = p_states + (I_D * i64(NC) + NC - 1) * B * H + o_state
    for k in range(0, NC):
        c = NC - 1 - k
        tl.store(p_st, b_c, mask=m_bh)
        b_P = tl.load(p_map, mask=m_bh, other=0)
        b_Q = tl.load(p_map + s_map, mask=m_bh, other=0)
        safe = (tl.abs(b_P) <= limit) & (tl.abs(b_Q) < float("inf"))
        if tl.min(safe.to(tl.int32)) == 0:
            # Walk this chunk's steps instead (exact: the sequential recurrence).
            s0 = i64(c) * L
            n = tl.minimum(T - s0, L)
            t_last = i64(T - 1) * rev - sgn * (s0 + n - 1)
            p_h = p_out + t_last * s_out_t + o_out
            if HAS_DOUT:
                p_g = p_dout + t_last * s_do_t + o_b[:, None] * s_do_b + o_f[None, :] * s_do_h
            else:
                p_g = p_h
            if HAS_MASK:
                p_m = p_mask + t_last * s_m_t + o_b * s_m_b
            else:
                p_m = p_h
            b_h = tl.load(p_h, mask=m_bh, other=0).to(ACC)
            # (du and db of the walk are not needed here: the steps pass sums them.)
            b_c, b_du_walk, b_db_walk = bwd_walk(p_h, p_g, p_m, p_h, d_o, d_g, d_m, b_h, b_c,
                                                 b_h0, b_u, b_zero, b_zero, n, s0 + n - 1, o_b,
                                                 m_b, m_bh, HAS_MASK, HAS_DOUT, False, ACC,
                                                 FALLBACK_CHUNK, STAGES)
        else:
            b_c = b_P * b_c + b_Q
        p_map -= i64(B) * H
        p_st -= i64(B) * H


# The kernels: grid (batch blocks x chunks, hidden blocks, directions) for maps and steps,
# (batch blocks, hidden blocks, directions) for carry. Direction and REVERSE are compile-time in
# each body, as in the sequential kernels; a bidirectional launch compiles both.
_NO_SPECIALISE = ["T", "NC", "L", "s_map"]


@triton.jit(do_not_specialize=_NO_SPECIALISE)
def _fwd_maps_kernel(p_pre, p_u, p_b, p_mask, p_maps, T, B, H, NC, L, s_map,
                     s_pre_t, s_pre_b, s_pre_h, s_m_t, s_m_b, r_max, r_min,
                     CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr, REVERSE: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, ACC_F64: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, CHUNK: tl.constexpr,
                     BIDIR: tl.constexpr):
    nb = tl.cdiv(B, BLOCK_B)
    i_c, i_b = tl.program_id(0) // nb, tl.program_id(0) % nb
    if BIDIR:
        if tl.program_id(2) == 0:
            _fwd_maps_body(p_pre, p_u, p_b, p_mask, p_maps, T, B, H, NC, L, s_map, s_pre_t,
                           s_pre_b, s_pre_h, s_m_t, s_m_b, r_max, r_min, i_c, i_b, CLIP_MAX,
                           CLIP_MIN, False, HAS_BIAS, HAS_MASK, ACC_F64, BLOCK_B, BLOCK_H, CHUNK,
                           0)
        else:
            _fwd_maps_body(p_pre, p_u, p_b, p_mask, p_maps, T, B, H, NC, L, s_map, s_pre_t,
                           s_pre_b, s_pre_h, s_m_t, s_m_b, r_max, r_min, i_c, i_b, CLIP_MAX,
                           CLIP_MIN, True, HAS_BIAS, HAS_MASK, ACC_F64, BLOCK_B, BLOCK_H, CHUNK,
                           1)
    else:
        _fwd_maps_body(p_pre, p_u, p_b, p_mask, p_maps, T, B, H, NC, L, s_map, s_pre_t, s_pre_b,
                       s_pre_h, s_m_t, s_m_b, r_max, r_min, i_c, i_b, CLIP_MAX, CLIP_MIN,
                       REVERSE, HAS_BIAS, HAS_MASK, ACC_F64, BLOCK_B, BLOCK_H, CHUNK, 0)


@triton.jit(do_not_specialize=_NO_SPECIALISE)
def _fwd_carry_kernel(p_pre, p_u, p_b, p_h0, p_mask, p_maps, p_states, T, B, H, NC, L, s_map,
                      s_pre_t, s_pre_b, s_pre_h, s_m_t, s_m_b, r_max, r_min,
                      CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr, REVERSE: tl.constexpr,
                      HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr,
                      ACC_F64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                      CHUNK: tl.constexpr, BIDIR: tl.constexpr):
    if BIDIR:
        if tl.program_id(2) == 0:
            _fwd_carry_body(p_pre, p_u, p_b, p_h0, p_mask, p_maps, p_states, T, B, H, NC, L,
                            s_map, s_pre_t, s_pre_b, s_pre_h, s_m_t, s_m_b, r_max, r_min,
                            CLIP_MAX, CLIP_MIN, False, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64,
                            BLOCK_B, BLOCK_H, CHUNK, 0)
        else:
            _fwd_carry_body(p_pre, p_u, p_b, p_h0, p_mask, p_maps, p_states, T, B, H, NC, L,
                            s_map, s_pre_t, s_pre_b, s_pre_h, s_m_t, s_m_b, r_max, r_min,
                            CLIP_MAX, CLIP_MIN, True, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64,
                            BLOCK_B, BLOCK_H, CHUNK, 1)
    else:
        _fwd_carry_body(p_pre, p_u, p_b, p_h0, p_mask, p_maps, p_states, T, B, H, NC, L, s_map,
                        s_pre_t, s_pre_b, s_pre_h, s_m_t, s_m_b, r_max, r_min, CLIP_MAX,
                        CLIP_MIN, REVERSE, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64, BLOCK_B, BLOCK_H,
                        CHUNK, 0)


@triton.jit(do_not_specialize=_NO_SPECIALISE)
def _fwd_steps_kernel(p_pre, p_u, p_b, p_states, p_mask, p_out, p_hn, T, B, H, NC, L,
                      s_pre_t, s_pre_b, s_pre_h, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b,
                      r_max, r_min, CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr,
                      REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
                      ACC_F64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                      CHUNK: tl.constexpr, BIDIR: tl.constexpr):
    nb = tl.cdiv(B, BLOCK_B)
    i_c, i_b = tl.program_id(0) // nb, tl.program_id(0) % nb
    s0 = i64(i_c) * L
    n = tl.minimum(T - s0, L)
    if BIDIR:
        if tl.program_id(2) == 0:
            fwd_body(p_pre, p_u, p_b, p_states, p_mask, p_out, p_hn, T, B, H, s_pre_t, s_pre_b,
                     s_pre_h, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, s0, n,
                     i64(i_c) * B * H, i_b, CLIP_MAX, CLIP_MIN, False, HAS_BIAS, True, HAS_MASK,
                     ACC_F64, BLOCK_B, BLOCK_H, CHUNK, STAGES, 0)
        else:
            fwd_body(p_pre, p_u, p_b, p_states, p_mask, p_out, p_hn, T, B, H, s_pre_t, s_pre_b,
                     s_pre_h, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, s0, n,
                     (i64(NC) + i_c) * B * H, i_b, CLIP_MAX, CLIP_MIN, True, HAS_BIAS, True,
                     HAS_MASK, ACC_F64, BLOCK_B, BLOCK_H, CHUNK, STAGES, 1)
    else:
        fwd_body(p_pre, p_u, p_b, p_states, p_mask, p_out, p_hn, T, B, H, s_pre_t, s_pre_b,
                 s_pre_h, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, s0, n,
                 i64(i_c) * B * H, i_b, CLIP_MAX, CLIP_MIN, REVERSE, HAS_BIAS, True, HAS_MASK,
                 ACC_F64, BLOCK_B, BLOCK_H, CHUNK, STAGES, 0)


@triton.jit(do_not_specialize=_NO_SPECIALISE)
def _bwd_maps_kernel(p_out, p_u, p_mask, p_dout, p_maps, T, B, H, NC, L, s_map,
                     s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max,
                     r_min, CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr,
                     REVERSE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DOUT: tl.constexpr,
                     ACC_F64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                     CHUNK: tl.constexpr, BIDIR: tl.constexpr):
    nb = tl.cdiv(B, BLOCK_B)
    i_c, i_b = tl.program_id(0) // nb, tl.program_id(0) % nb
    if BIDIR:
        if tl.program_id(2) == 0:
            _bwd_maps_body(p_out, p_u, p_mask, p_dout, p_maps, T, B, H, NC, L, s_map, s_out_t,
                           s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max, r_min,
                           i_c, i_b, CLIP_MAX, CLIP_MIN, False, HAS_MASK, HAS_DOUT, ACC_F64,
                           BLOCK_B, BLOCK_H, CHUNK, 0)
        else:
            _bwd_maps_body(p_out, p_u, p_mask, p_dout, p_maps, T, B, H, NC, L, s_map, s_out_t,
                           s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max, r_min,
                           i_c, i_b, CLIP_MAX, CLIP_MIN, True, HAS_MASK, HAS_DOUT, ACC_F64,
                           BLOCK_B, BLOCK_H, CHUNK, 1)
    else:
        _bwd_maps_body(p_out, p_u, p_mask, p_dout, p_maps, T, B, H, NC, L, s_map, s_out_t,
                       s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max, r_min, i_c,
                       i_b, CLIP_MAX, CLIP_MIN, REVERSE, HAS_MASK, HAS_DOUT, ACC_F64, BLOCK_B,
                       BLOCK_H, CHUNK, 0)


@triton.jit(do_not_specialize=_NO_SPECIALISE)
def _bwd_carry_kernel(p_out, p_h0, p_u, p_mask, p_dout, p_dhn, p_maps, p_states, T, B, H, NC,
                      L, s_map, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b,
                      r_max, r_min, CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr,
                      REVERSE: tl.constexpr, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr,
                      HAS_DOUT: tl.constexpr, HAS_DHN: tl.constexpr, ACC_F64: tl.constexpr,
                      BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, CHUNK: tl.constexpr,
                      BIDIR: tl.constexpr):
    if BIDIR:
        if tl.program_id(2) == 0:
            _bwd_carry_body(p_out, p_h0, p_u, p_mask, p_dout, p_dhn, p_maps, p_states, T, B, H,
                            NC, L, s_map, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h,
                            s_m_t, s_m_b, r_max, r_min, CLIP_MAX, CLIP_MIN, False, HAS_H0,
                            HAS_MASK, HAS_DOUT, HAS_DHN, ACC_F64, BLOCK_B, BLOCK_H, CHUNK, 0)
        else:
            _bwd_carry_body(p_out, p_h0, p_u, p_mask, p_dout, p_dhn, p_maps, p_states, T, B, H,
                            NC, L, s_map, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h,
                            s_m_t, s_m_b, r_max, r_min, CLIP_MAX, CLIP_MIN, True, HAS_H0,
                            HAS_MASK, HAS_DOUT, HAS_DHN, ACC_F64, BLOCK_B, BLOCK_H, CHUNK, 1)
    else:
        _bwd_carry_body(p_out, p_h0, p_u, p_mask, p_dout, p_dhn, p_maps, p_states, T, B, H, NC,
                        L, s_map, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t,
                        s_m_b, r_max, r_min, CLIP_MAX, CLIP_MIN, REVERSE, HAS_H0, HAS_MASK,
                        HAS_DOUT, HAS_DHN, ACC_F64, BLOCK_B, BLOCK_H, CHUNK, 0)


@triton.jit(do_not_specialize=_NO_SPECIALISE)
def _bwd_steps_kernel(p_out, p_h0, p_u, p_mask, p_dout, p_states, p_dpre, p_dh0, p_du, p_db, T,
                      B, H, NC, L, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t,
                      s_m_b, r_max, r_min, CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr,
                      REVERSE: tl.constexpr, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr,
                      HAS_DOUT: tl.constexpr, ACC_F64: tl.constexpr, BLOCK_B: tl.constexpr,
                      BLOCK_H: tl.constexpr, CHUNK: tl.constexpr, BIDIR: tl.constexpr):
    nb = tl.cdiv(B, BLOCK_B)
    i_c, i_b = tl.program_id(0) // nb, tl.program_id(0) % nb
    s0 = i64(i_c) * L
    n = tl.minimum(T - s0, L)
    # The carried gradients and the du/db partials are (D, NC, B, H): block (I_D, i_c).
    if BIDIR:
        if tl.program_id(2) == 0:
            o = i64(i_c) * B * H
            bwd_body(p_out, p_h0, p_u, p_mask, p_dout, p_states, p_dpre, p_dh0, p_du, p_db, T,
                     B, H, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b,
                     r_max, r_min, s0, n, o, o, i_b, CLIP_MAX, CLIP_MIN, False, HAS_H0,
                     HAS_MASK, HAS_DOUT, True, ACC_F64, BLOCK_B, BLOCK_H, CHUNK, STAGES, 0)
        else:
            o = (i64(NC) + i_c) * B * H
            bwd_body(p_out, p_h0, p_u, p_mask, p_dout, p_states, p_dpre, p_dh0, p_du, p_db, T,
                     B, H, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b,
                     r_max, r_min, s0, n, o, o, i_b, CLIP_MAX, CLIP_MIN, True, HAS_H0,
                     HAS_MASK, HAS_DOUT, True, ACC_F64, BLOCK_B, BLOCK_H, CHUNK, STAGES, 1)
    else:
        o = i64(i_c) * B * H
        bwd_body(p_out, p_h0, p_u, p_mask, p_dout, p_states, p_dpre, p_dh0, p_du, p_db, T, B, H,
                 s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max, r_min,
                 s0, n, o, o, i_b, CLIP_MAX, CLIP_MIN, REVERSE, HAS_H0, HAS_MASK, HAS_DOUT, True,
                 ACC_F64, BLOCK_B, BLOCK_H, CHUNK, STAGES, 0)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    # CPU tensors (the interpreter): no SMs to fill; as many chunks as MIN_CHUNK allows, so the
    # tests exercise several chunks.
    return 1 << 30


def _plan(T: int, B: int, H: int, D: int, device: torch.device) -> tuple[int, int, int]:
    """(batch blocks, chunk length L, number of chunks NC)."""
    nb = triton.cdiv(B, BLOCK_B)
    L = chunk_length(T, nb * triton.cdiv(H, BLOCK_H) * D, _sm_count(device))
    return nb, L, triton.cdiv(T, L)


def _meta(reverse: bool, D: int, acc: torch.dtype, recurrent_max_abs, recurrent_min_abs) -> dict:
    return dict(REVERSE=reverse, BIDIR=D == 2, ACC_F64=acc == torch.float64, BLOCK_B=BLOCK_B,
                BLOCK_H=BLOCK_H, CHUNK=CHUNK, num_warps=NUM_WARPS,
                **clip_args(recurrent_max_abs, recurrent_min_abs))


def triton_forward(x: Tensor, weight_hh: Tensor, bias: Tensor | None, h0: Tensor | None,
                   mask: Tensor | None, recurrent_max_abs: float | None,
                   recurrent_min_abs: float, reverse: bool, out: Tensor, h_n: Tensor,
                   D: int) -> None:
    """Same contract as :func:`.sequential.triton_forward`, in three launches."""
    T, B, H = x.shape[0], x.shape[1], x.shape[2] // D
    nb, L, NC = _plan(T, B, H, D, x.device)
    nh = triton.cdiv(H, BLOCK_H)
    acc = h_n.dtype
    maps = _alloc.empty(4, D, NC, B, H, dtype=acc, device=x.device)
    states = _alloc.empty(D, NC, B, H, dtype=acc, device=x.device)
    mask, s_m_t, s_m_b = mask_arg(mask)
    u, b, h0 = dense(weight_hh), dense(bias), dense(h0)
    meta = _meta(reverse, D, acc, recurrent_max_abs, recurrent_min_abs)
    sizes = dict(T=T, B=B, H=H, NC=NC, L=L)
    flags = dict(HAS_BIAS=b is not None, HAS_MASK=mask is not None)
    _fwd_maps_kernel[(nb * NC, nh, D)](x, u, b, mask, maps, **sizes, s_map=D * NC * B * H,
                                       s_pre_t=x.stride(0), s_pre_b=x.stride(1),
                                       s_pre_h=x.stride(2), s_m_t=s_m_t, s_m_b=s_m_b,
                                       **flags, **meta)
    _fwd_carry_kernel[(nb, nh, D)](x, u, b, h0, mask, maps, states, **sizes,
                                   s_map=D * NC * B * H, s_pre_t=x.stride(0),
                                   s_pre_b=x.stride(1), s_pre_h=x.stride(2), s_m_t=s_m_t,
                                   s_m_b=s_m_b, HAS_H0=h0 is not None, **flags, **meta)
    _fwd_steps_kernel[(nb * NC, nh, D)](x, u, b, states, mask, out, h_n, **sizes,
                                        s_pre_t=x.stride(0), s_pre_b=x.stride(1),
                                        s_pre_h=x.stride(2), s_out_t=out.stride(0),
                                        s_out_b=out.stride(1), s_out_h=out.stride(2),
                                        s_m_t=s_m_t, s_m_b=s_m_b, **flags, **meta)


def triton_backward(grad_out: Tensor | None, grad_hn: Tensor | None, out: Tensor,
                    weight_hh: Tensor, h0: Tensor | None, mask: Tensor | None,
                    recurrent_max_abs: float | None, recurrent_min_abs: float, reverse: bool,
                    grad_pre: Tensor, grad_h0: Tensor, D: int) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`.sequential.triton_backward`, in three launches."""
    T, B, H = out.shape[0], out.shape[1], out.shape[2] // D
    nb, L, NC = _plan(T, B, H, D, out.device)
    nh = triton.cdiv(H, BLOCK_H)
    acc = grad_h0.dtype
    maps = _alloc.empty(2, D, NC, B, H, dtype=acc, device=out.device)
    states = _alloc.empty(D, NC, B, H, dtype=acc, device=out.device)
    du = _alloc.empty(D, NC, B, H, dtype=acc, device=out.device)
    db = _alloc.empty(D, NC, B, H, dtype=acc, device=out.device)
    mask, s_m_t, s_m_b = mask_arg(mask)
    u, h0, grad_hn = dense(weight_hh), dense(h0), dense(grad_hn)
    meta = _meta(reverse, D, acc, recurrent_max_abs, recurrent_min_abs)
    s_do = grad_out.stride() if grad_out is not None else (0, 0, 0)
    common = dict(T=T, B=B, H=H, NC=NC, L=L, s_out_t=out.stride(0), s_out_b=out.stride(1),
                  s_out_h=out.stride(2), s_do_t=s_do[0], s_do_b=s_do[1], s_do_h=s_do[2],
                  s_m_t=s_m_t, s_m_b=s_m_b, HAS_MASK=mask is not None,
                  HAS_DOUT=grad_out is not None, **meta)
    _bwd_maps_kernel[(nb * NC, nh, D)](out, u, mask, grad_out, maps, s_map=D * NC * B * H,
                                       **common)
    _bwd_carry_kernel[(nb, nh, D)](out, h0, u, mask, grad_out, grad_hn, maps, states,
                                   s_map=D * NC * B * H, HAS_H0=h0 is not None,
                                   HAS_DHN=grad_hn is not None, **common)
    _bwd_steps_kernel[(nb * NC, nh, D)](out, h0, u, mask, grad_out, states, grad_pre, grad_h0,
                                        du, db, HAS_H0=h0 is not None, **common)
    return du.sum((1, 2)).flatten(), db.sum((1, 2)).flatten()
