"""The sequential method: one program per state tile walks the whole time axis.

Layout: every (T, B, H) tensor is addressed through its three strides, so time-major,
batch-major (``batch_first``) and arbitrarily strided inputs are read in place. One program owns
a (BLOCK_B, BLOCK_H) tile of the state and walks the whole time axis with that state in
registers; time runs forwards or backwards (REVERSE) without flipping memory. A third grid axis
runs the two directions of a bidirectional layer in one launch, on the two halves of the
feature axis. Each program issues the loads of CHUNK steps together before running the
dependent chain over them; configs with STAGES > 1 also have Triton's loop pipeliner stage the
next chunks' loads through shared memory (cp.async), for more bytes in flight than registers
hold. The autotuner picks among them per H, batch size class (:func:`.common.batch_class`),
sequence length class (:func:`.common.length_class`), direction count (a bidirectional launch
has twice the programs) and dtypes.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .. import _alloc
from .common import (
    HEURISTICS,
    INTERPRET,
    batch_class,
    bwd_walk,
    clip,
    clip_args,
    dense,
    fwd_walk,
    i64,
    length_class,
    mask_arg,
    prune_tiles,
    tile,
    tune_bench,
)


def _configs() -> list[triton.Config]:
    if INTERPRET:
        # The interpreter costs per program and per step, not per element: a small tile that
        # still splits B and H into several partial blocks, and a chunk that leaves a tail.
        return [triton.Config({"BLOCK_B": 2, "BLOCK_H": 64, "CHUNK": 4, "STAGES": 1},
                              num_warps=1)]
    return gpu_configs()


def gpu_configs() -> list[triton.Config]:
    """The autotune list for a GPU (also built under the interpreter, for tests)."""
    # (BLOCK_B, BLOCK_H, num_warps, CHUNK, STAGES): 4 elements per thread (a 16-byte vector of
    # fp32, 8 bytes of 16-bit types) or 8 (16 bytes of 16-bit types), and CHUNK steps of loads
    # in flight per program, held in registers. Shapes where ptxas spills for sm_80 are left out
    # or prefetch fewer steps: 8 elements per thread prefetch 4, and nothing prefetches 16
    # (float16 spills). benchmarks/kernel_report.py prints registers, spills, shared memory and
    # load widths of every config.
    tiles = [
        (1, 128, 1, 8, 1), (1, 256, 1, 4, 1), (1, 256, 4, 8, 1), (1, 512, 2, 4, 1),
        (1, 1024, 4, 4, 1), (2, 128, 2, 8, 1), (2, 256, 4, 8, 1), (4, 128, 4, 8, 1),
        (1, 512, 8, 8, 1),
        # Staged: the H200 run found B x H <= 65536 latency-bound (8 steps in flight per
        # program are too few bytes there), and CHUNK 16 or 32 in registers spilled. With
        # STAGES > 1 the loop pipeliner keeps the next STAGES - 1 chunks' loads in flight in
        # shared memory (cp.async) instead: 4 + 4 x 5 = 24 or 4 + 4 x 7 = 32 steps, up to 160 KB
        # of shared memory (1x1024, fp32, backward), no spills for sm_80 or sm_90 in any dtype
        # or flag set. 4 elements per thread (cp.async of 16 bytes of fp32, 8 of 16-bit types)
        # or 8 (16 bytes of 16-bit types). The autotuner measures them against the others;
        # no GPU has timed them yet. CHUNK 8 with STAGES 4 and the 2-row or 8-warp staged
        # tiles spilled in the bidirectional backward.
        (1, 128, 1, 4, 6), (1, 256, 2, 4, 6), (1, 256, 2, 4, 8), (1, 512, 4, 4, 6),
        (1, 512, 2, 4, 6), (1, 1024, 4, 4, 6),
    ]
    configs = []
    for bb, bh, w, chunk, stages in tiles:
        meta = {"BLOCK_B": bb, "BLOCK_H": bh, "CHUNK": chunk, "STAGES": stages}
        configs.append(triton.Config(meta, num_warps=w, num_stages=1))
    return configs


def _prune(configs, named_args, **kwargs):
    """:func:`.common.prune_tiles`, tiles at least 128 wide kept."""
    return prune_tiles(configs, {**named_args, **kwargs}, 128)


_PRUNE = {"early_config_prune": _prune}


@triton.jit
def fwd_body(
    p_pre,  # pre-activations W x, (T, B, H) through strides s_pre_*
    p_u,  # recurrent weights u, (D*H,) contiguous
    p_b,  # bias, (D*H,) contiguous, or None
    p_h0,  # states entering the steps, (B, H) blocks from element o_in on, or None (zeros)
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
    s0,  # first step in processing order (time T-1-s0 when reversed)
    n,  # steps to run; the program that reaches step T-1 writes h_n
    o_in,  # offset of this direction's entering (B, H) state in p_h0
    i_b,  # batch block
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
    STAGES: tl.constexpr,  # chunks of loads staged ahead through shared memory (1: none)
    I_D: tl.constexpr,  # direction: 1 = the second half of a bidirectional layer
):
    """Steps s0 .. s0+n-1 of one direction for one state tile (the whole sequence here; one
    time chunk in :mod:`.chunked`)."""
    ACC = tl.float64 if ACC_F64 else tl.float32
    o_b, o_h, m_b, m_h, m_bh = tile(B, H, BLOCK_B, BLOCK_H, i_b, tl.program_id(1))
    o_f = I_D * H + o_h  # feature index along the D*H axis of pre, out, u and bias
    o_state = o_b[:, None] * H + o_h[None, :]
    if REVERSE:
        rev = 1
    else:
        rev = 0

    b_u = tl.load(p_u + o_f, mask=m_h, other=0).to(ACC)
    b_u, _ = clip(b_u, r_max, r_min, CLIP_MAX, CLIP_MIN)
    if HAS_BIAS:
        b_bias = tl.load(p_b + o_f, mask=m_h, other=0).to(ACC)
    else:
        b_bias = tl.zeros([BLOCK_H], dtype=ACC)
    if HAS_H0:
        b_h = tl.load(p_h0 + o_in + o_state, mask=m_bh, other=0).to(ACC)
    else:
        b_h = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)

    # Time is walked through pointers that move one (signed, int64) stride per step, starting at
    # t = T-1-s0 when reversed, so no t * stride product can overflow and memory is never flipped.
    sgn = 1 - 2 * rev
    t0 = i64(T - 1) * rev + sgn * i64(s0)
    d_x = sgn * i64(s_pre_t)
    d_o = sgn * i64(s_out_t)
    d_m = sgn * i64(s_m_t)
    p_x = p_pre + t0 * s_pre_t + o_b[:, None] * s_pre_b + o_f[None, :] * s_pre_h
    p_o = p_out + t0 * s_out_t + o_b[:, None] * s_out_b + o_f[None, :] * s_out_h
    if HAS_MASK:
        p_m = p_mask + t0 * s_m_t + o_b * s_m_b
    else:
        p_m = p_x
    b_h = fwd_walk(p_x, p_o, p_m, d_x, d_o, d_m, b_h, b_u, b_bias, n, o_b, m_b, m_bh, HAS_MASK,
                   True, ACC, CHUNK, STAGES)
    tl.store(p_hn + I_D * i64(B) * H + o_state, b_h.to(p_hn.dtype.element_ty),
             mask=m_bh & ((o_b * 0 + s0 + n) >= T)[:, None])


@triton.jit
def bwd_body(
    p_out,  # forward output h, (T, B, H) through strides s_out_*
    p_h0,  # initial state, (B, H) contiguous, or None
    p_u,  # recurrent weights u, (D*H,) contiguous
    p_mask,  # step mask, (T, B) through strides s_m_*, or None
    p_dout,  # gradient of the output, (T, B, H) through strides s_do_*, or None
    p_dhn,  # gradients reaching the state after step s0+n-1, (B, H) blocks from o_c; or None
    p_dpre,  # gradient of pre, (T, B, H) through strides s_out_* (same layout as the output)
    p_dh0,  # gradient of h0, (B, H) contiguous, accumulation dtype
    p_du,  # partial sums of du over these steps, (B, H) blocks from o_part, accumulation dtype
    p_db,  # partial sums of db, laid out as p_du
    T,
    B,
    H,
    s_out_t, s_out_b, s_out_h,
    s_do_t, s_do_b, s_do_h,
    s_m_t, s_m_b,
    r_max,
    r_min,
    s0,  # first step in processing order; the program that reaches step 0 writes dh0
    n,  # steps to run, walked from processing step s0+n-1 down to s0
    o_c,  # offset of this direction's (B, H) block in p_dhn
    o_part,  # offset of this program's (B, H) block in p_du and p_db
    i_b,  # batch block
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
    STAGES: tl.constexpr,  # chunks of loads staged ahead through shared memory (1: none)
    I_D: tl.constexpr,  # direction: 1 = the second half of a bidirectional layer
):
    """The backward of steps s0 .. s0+n-1 of one direction for one state tile."""
    ACC = tl.float64 if ACC_F64 else tl.float32
    o_b, o_h, m_b, m_h, m_bh = tile(B, H, BLOCK_B, BLOCK_H, i_b, tl.program_id(1))
    o_f = I_D * H + o_h  # feature index along the D*H axis of pre, out, u and bias
    o_state = o_b[:, None] * H + o_h[None, :]
    o_s = I_D * i64(B) * H  # start of this direction's (B, H) state
    if REVERSE:
        rev = 1
    else:
        rev = 0

    b_u = tl.load(p_u + o_f, mask=m_h, other=0).to(ACC)
    b_u, b_keep = clip(b_u, r_max, r_min, CLIP_MAX, CLIP_MIN)
    if HAS_H0:
        b_h0 = tl.load(p_h0 + o_s + o_state, mask=m_bh, other=0).to(ACC)
    else:
        b_h0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    # b_c: the gradient reaching the state after the step being processed (dL/dh_n to start).
    if HAS_DHN:
        b_c = tl.load(p_dhn + o_c + o_state, mask=m_bh, other=0).to(ACC)
    else:
        b_c = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)

    # Walk the processing order backwards from step s0+n-1. The state before a step is the
    # output of the step before it (h0 for step 0); it is kept for the next iteration, where it
    # is the current output, so each output element is read once. Pointers move one signed
    # int64 stride per step, backwards through processing order.
    sgn = 2 * rev - 1
    t_last = i64(T - 1) * rev - sgn * i64(s0 + n - 1)
    d_o = sgn * i64(s_out_t)
    d_g = sgn * i64(s_do_t)
    d_m = sgn * i64(s_m_t)
    o_out = o_b[:, None] * s_out_b + o_f[None, :] * s_out_h
    p_h = p_out + t_last * s_out_t + o_out
    p_dx = p_dpre + t_last * s_out_t + o_out
    if HAS_DOUT:
        p_g = p_dout + t_last * s_do_t + o_b[:, None] * s_do_b + o_f[None, :] * s_do_h
    else:
        p_g = p_h
    if HAS_MASK:
        p_m = p_mask + t_last * s_m_t + o_b * s_m_b
    else:
        p_m = p_h
    b_h = tl.load(p_h, mask=m_bh, other=0).to(ACC)
    b_zero = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    b_c, b_du, b_db = bwd_walk(p_h, p_g, p_m, p_dx, d_o, d_g, d_m, b_h, b_c, b_h0, b_u, b_zero,
                               b_zero, n, s0 + n - 1, o_b, m_b, m_bh, HAS_MASK, HAS_DOUT, True,
                               ACC, CHUNK, STAGES)
    tl.store(p_dh0 + o_s + o_state, b_c.to(p_dh0.dtype.element_ty),
             mask=m_bh & ((o_b * 0 + s0) == 0)[:, None])
    # Per-row partials (every element written by exactly one program, whatever the tile), summed
    # over B (and chunks) by the caller with torch.sum: deterministic, no atomics.
    # A select, not a product with 0: du of a clipped weight is 0 even where the sum is NaN.
    tl.store(p_du + o_part + o_state, tl.where(b_keep[None, :] > 0, b_du, 0.0), mask=m_bh)
    tl.store(p_db + o_part + o_state, b_db, mask=m_bh)


@triton.heuristics({**HEURISTICS, "HAS_BIAS": lambda a: a["p_b"] is not None})
@triton.autotune(configs=_configs(), key=["H", "B_CLASS", "T_CLASS", "BIDIR"],
                 prune_configs_by=_PRUNE, do_bench=tune_bench)
@triton.jit(do_not_specialize=["T", "B_CLASS", "T_CLASS"])
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
    B_CLASS,  # batch_class(B): read only by the autotuner's key
    T_CLASS,  # length_class(T): read only by the autotuner's key
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
    STAGES: tl.constexpr,
    BIDIR: tl.constexpr,  # two directions: grid axis 2, the second reversed
):
    # Direction and REVERSE are compile-time in each body: a runtime sign on the time
    # strides costs ~100 registers with a mask. A bidirectional launch compiles both.
    i_b = tl.program_id(0)
    if BIDIR:
        if tl.program_id(2) == 0:
            fwd_body(p_pre, p_u, p_b, p_h0, p_mask, p_out, p_hn, T, B, H, s_pre_t, s_pre_b,
                s_pre_h, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, 0, T, 0, i_b,
                CLIP_MAX, CLIP_MIN, False, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64, BLOCK_B, BLOCK_H,
                CHUNK, STAGES, 0)
        else:
            fwd_body(p_pre, p_u, p_b, p_h0, p_mask, p_out, p_hn, T, B, H, s_pre_t, s_pre_b,
                s_pre_h, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, 0, T, i64(B) * H,
                i_b, CLIP_MAX, CLIP_MIN, True, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64, BLOCK_B,
                BLOCK_H, CHUNK, STAGES, 1)
    else:
        fwd_body(p_pre, p_u, p_b, p_h0, p_mask, p_out, p_hn, T, B, H, s_pre_t, s_pre_b, s_pre_h,
            s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, 0, T, 0, i_b, CLIP_MAX,
            CLIP_MIN, REVERSE, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64, BLOCK_B, BLOCK_H, CHUNK,
            STAGES, 0)


@triton.heuristics(
    {
        **HEURISTICS,
        "HAS_DOUT": lambda a: a["p_dout"] is not None,
        "HAS_DHN": lambda a: a["p_dhn"] is not None,
    }
)
@triton.autotune(configs=_configs(), key=["H", "B_CLASS", "T_CLASS", "BIDIR"],
                 prune_configs_by=_PRUNE, do_bench=tune_bench)
@triton.jit(do_not_specialize=["T", "B_CLASS", "T_CLASS"])
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
    B_CLASS,  # batch_class(B): read only by the autotuner's key
    T_CLASS,  # length_class(T): read only by the autotuner's key
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
    STAGES: tl.constexpr,
    BIDIR: tl.constexpr,  # two directions: grid axis 2, the second reversed
):
    # Direction and REVERSE are compile-time in each body: a runtime sign on the time
    # strides costs ~100 registers with a mask. A bidirectional launch compiles both.
    i_b = tl.program_id(0)
    if BIDIR:
        if tl.program_id(2) == 0:
            bwd_body(p_out, p_h0, p_u, p_mask, p_dout, p_dhn, p_dpre, p_dh0, p_du, p_db, T, B,
                H, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max, r_min,
                0, T, 0, 0, i_b, CLIP_MAX, CLIP_MIN, False, HAS_H0, HAS_MASK, HAS_DOUT, HAS_DHN,
                ACC_F64, BLOCK_B, BLOCK_H, CHUNK, STAGES, 0)
        else:
            bwd_body(p_out, p_h0, p_u, p_mask, p_dout, p_dhn, p_dpre, p_dh0, p_du, p_db, T, B,
                H, s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max, r_min,
                0, T, i64(B) * H, i64(B) * H, i_b, CLIP_MAX, CLIP_MIN, True, HAS_H0, HAS_MASK,
                HAS_DOUT, HAS_DHN, ACC_F64, BLOCK_B, BLOCK_H, CHUNK, STAGES, 1)
    else:
        bwd_body(p_out, p_h0, p_u, p_mask, p_dout, p_dhn, p_dpre, p_dh0, p_du, p_db, T, B, H,
            s_out_t, s_out_b, s_out_h, s_do_t, s_do_b, s_do_h, s_m_t, s_m_b, r_max, r_min, 0, T,
            0, 0, i_b, CLIP_MAX, CLIP_MIN, REVERSE, HAS_H0, HAS_MASK, HAS_DOUT, HAS_DHN, ACC_F64,
            BLOCK_B, BLOCK_H, CHUNK, STAGES, 0)


def _grid(B: int, H: int, D: int):
    return lambda meta: (triton.cdiv(B, meta["BLOCK_B"]), triton.cdiv(H, meta["BLOCK_H"]), D)


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
    mask, s_m_t, s_m_b = mask_arg(mask)
    _indrnn_fwd_kernel[_grid(B, H, D)](
        x, dense(weight_hh), dense(bias), dense(h0), mask, out, h_n,
        T, B, H,
        *x.stride(), *out.stride(), s_m_t, s_m_b,
        B_CLASS=batch_class(B), T_CLASS=length_class(T), REVERSE=reverse, BIDIR=D == 2,
        **clip_args(recurrent_max_abs, recurrent_min_abs),
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
    mask, s_m_t, s_m_b = mask_arg(mask)
    du = _alloc.empty(D, B, H, dtype=grad_h0.dtype, device=grad_h0.device)
    db = _alloc.empty(D, B, H, dtype=grad_h0.dtype, device=grad_h0.device)
    s_do = grad_out.stride() if grad_out is not None else (0, 0, 0)
    _indrnn_bwd_kernel[_grid(B, H, D)](
        out, dense(h0), dense(weight_hh), mask, grad_out, dense(grad_hn),
        grad_pre, grad_h0, du, db,
        T, B, H,
        *out.stride(), *s_do, s_m_t, s_m_b,
        B_CLASS=batch_class(B), T_CLASS=length_class(T), REVERSE=reverse, BIDIR=D == 2,
        **clip_args(recurrent_max_abs, recurrent_min_abs),
    )
    return du.sum(1).flatten(), db.sum(1).flatten()
