"""What every Triton kernel of the op shares: the clip of u, int64 pointer arithmetic, the
argument heuristics and the host-side argument preparation."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

# Read once, at import: Triton builds the kernels for its interpreter or for the GPU then.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

HEURISTICS = {
    "HAS_H0": lambda a: a["p_h0"] is not None,
    "HAS_MASK": lambda a: a["p_mask"] is not None,
    # Accumulate in float64 only for float64 inputs (used by gradcheck); float32 otherwise.
    "ACC_F64": lambda a: a["p_out"].dtype == torch.float64,
}


@triton.jit
def clip(b_u, r_max, r_min, CLIP_MAX: tl.constexpr, CLIP_MIN: tl.constexpr):
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
def i64(x):
    """x as an int64 scalar tensor (x may be a specialised constant, e.g. a stride of 1)."""
    return x * tl.full([], 1, tl.int64)


def tune_bench(kernel_call, quantiles):
    """The autotuners' timing of one config: 5 ms of warm-up and 25 ms of repeats instead of
    Triton's 25 and 100. A first call with a new key times up to 15 configs per kernel (each
    also flushing L2 per repeat), and these kernels stream memory with no data-dependent work,
    so their times settle within a few repeats; a quarter of the default keeps the first
    training step's tuning from taking seconds per (H, batch class, dtypes) key."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


def batch_class(B: int) -> int:
    """B rounded up to a power of two: the autotuned kernels' ``B_CLASS`` argument, which they
    never read. It is in their autotune key with H, T_CLASS and BIDIR (Triton adds the dtypes;
    the fused projection kernel also keys on K and its matmul PRECISION), because the best tile
    depends on how many programs there are to spread over the SMs, cdiv(B, BLOCK_B) x
    cdiv(H, BLOCK_H) x directions. Without it the tile tuned on the first call served every
    batch size with that H: a model tuned at B = 64 ran B = 4 with a tile too large to fill the
    GPU. Classes, not B itself, so that a loader's last, smaller batch or a new generation batch
    costs at most one tuning run per power of two."""
    return 1 << max(B - 1, 0).bit_length()


# Sequences of at least this many steps are tuned apart from shorter ones (length_class).
LONG_T = 256


def length_class(T: int) -> int:
    """0 for sequences shorter than :data:`LONG_T` steps, 1 from there: the autotuned kernels'
    ``T_CLASS`` argument, which they never read, in their autotune key. A tile timed on a few
    steps is timed on launch latency and on filling the pipeline (the deepest configs keep 32
    steps in flight), not on the steady stream of a long sequence: without the class, a first
    call on a short sequence (a warm-up, a generation prompt) chose the tile of every later
    long one at that H and batch class. Two classes: a model's calls cost at most one more
    tuning run."""
    return int(T >= LONG_T)


def prune_tiles(configs, args: dict, min_width: int) -> list:
    """The autotune configs worth timing: tiles at most max(min_width, next power of two of H)
    wide and at most the batch size class tall (wider or taller ones would idle most lanes; the
    class, not B, so that every B of one key gets the same list); never nothing. ``args``: the
    launch's arguments, positional and keyword (the launchers pass ``B_CLASS`` by keyword)."""
    width = max(min_width, triton.next_power_of_2(args["H"]))
    kept = [c for c in configs
            if c.kwargs["BLOCK_H"] <= width and c.kwargs["BLOCK_B"] <= args["B_CLASS"]]
    return kept or configs[:1]


def clip_args(recurrent_max_abs: float | None, recurrent_min_abs: float) -> dict:
    return dict(
        r_max=float(recurrent_max_abs) if recurrent_max_abs is not None else 0.0,
        r_min=float(recurrent_min_abs),
        CLIP_MAX=recurrent_max_abs is not None,
        CLIP_MIN=recurrent_min_abs > 0,
    )


def mask_arg(mask: Tensor | None) -> tuple[Tensor | None, int, int]:
    """(T, B) view of the mask as bytes (bool reinterpreted, never copied) and its strides."""
    if mask is None:
        return None, 0, 0
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    return mask, mask.stride(0), mask.stride(1)


def dense(t: Tensor | None) -> Tensor | None:
    """The kernels index the (H,) vectors and (B, H) states as packed arrays: a strided or
    expanded (zero-stride) one is copied first (a few KB, never a (T, B, H) tensor)."""
    return None if t is None else t.contiguous()


@triton.jit
def tile(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, i_b, i_h):
    """Row and feature offsets (int64) of a (BLOCK_B, BLOCK_H) state tile and their bounds."""
    o_b = (i_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    o_h = (i_h * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    m_b = o_b < B
    m_h = o_h < H
    return o_b, o_h, m_b, m_h, m_b[:, None] & m_h[None, :]


@triton.jit
def fwd_walk(p_x, p_o, p_m, d_x, d_o, d_m, b_h, b_u, b_bias, n, o_b, m_b, m_bh,
             HAS_MASK: tl.constexpr, STORE: tl.constexpr, ACC: tl.constexpr,
             CHUNK: tl.constexpr, STAGES: tl.constexpr):
    """Run n forward steps from state b_h: h = relu(x + bias + u h) at real steps, h carried
    at padding steps; store each step's state at p_o when STORE. Pointers p_x, p_o, p_m sit at
    the first step and move d_x, d_o, d_m (signed int64 strides) per step. Returns the state.

    The loads of CHUNK steps are issued together, then the dependent chain runs over them. With
    STAGES > 1 Triton's loop pipeliner also stages the next STAGES - 1 chunks' loads through
    shared memory (cp.async), so CHUNK * (STAGES - 1) more steps are in flight without holding
    them in registers. The interpreter runs the loop as a plain range.
    """
    for i in tl.range(0, n, CHUNK, num_stages=STAGES):
        xs = ()
        ms = ()
        # Pointers advance one stride per step (cheaper in registers than CHUNK offsets).
        for j in tl.static_range(CHUNK):
            valid = (o_b * 0 + i + j) < n
            xs = xs + (tl.load(p_x, mask=m_bh & valid[:, None], other=0),)
            p_x += d_x
            if HAS_MASK:
                ms = ms + (tl.load(p_m, mask=m_b & valid, other=0) != 0,)
                p_m += d_m
        for j in tl.static_range(CHUNK):
            in_range = (o_b * 0 + i + j) < n
            # relu that keeps NaN, as torch.relu does (Triton's maximum drops NaN by default).
            b_new = tl.maximum(xs[j].to(ACC) + b_bias[None, :] + b_u[None, :] * b_h, 0.0,
                               propagate_nan=tl.PropagateNan.ALL)
            valid = in_range
            if HAS_MASK:
                valid = valid & ms[j]
            # A select, never a blend: pre at a padding step must not reach the state.
            b_h = tl.where(valid[:, None], b_new, b_h)
            if STORE:
                tl.store(p_o, b_h.to(p_o.dtype.element_ty), mask=m_bh & in_range[:, None])
                p_o += d_o
    return b_h


@triton.jit
def bwd_walk(p_h, p_g, p_m, p_dx, d_o, d_g, d_m, b_h, b_c, b_h0, b_u, b_du, b_db, n, n_prev,
             o_b, m_b, m_bh, HAS_MASK: tl.constexpr, HAS_DOUT: tl.constexpr,
             STORE: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr,
             STAGES: tl.constexpr):
    """Run n backward steps, last processed step first. b_h is that step's output (already
    loaded from p_h, which points at it); b_c the gradient reaching the state after it. The
    first n_prev steps walked have a previous output (read from p_h as it moves back); the
    others take b_h0 as the state before them. p_g and p_m point at that step too, p_dx where
    its gradient of pre goes (moved by d_o, as p_h). Adds d * h_prev to b_du and d to b_db.
    Returns (carried gradient, b_du, b_db). CHUNK and STAGES as in :func:`fwd_walk`."""
    for i in tl.range(0, n, CHUNK, num_stages=STAGES):
        # Issue the CHUNK steps' loads together (they do not depend on the carried gradient).
        hs = ()
        gs = ()
        ms = ()
        for j in tl.static_range(CHUNK):
            valid = (o_b * 0 + i + j) < n
            has_prev = (o_b * 0 + i + j) < n_prev
            p_h += d_o
            hs = hs + (tl.load(p_h, mask=m_bh & has_prev[:, None], other=0),)
            if HAS_DOUT:
                gs = gs + (tl.load(p_g, mask=m_bh & valid[:, None], other=0),)
                p_g += d_g
            if HAS_MASK:
                ms = ms + (tl.load(p_m, mask=m_b & valid, other=0) != 0,)
                p_m += d_m
        for j in tl.static_range(CHUNK):
            valid = (o_b * 0 + i + j) < n
            has_prev = (o_b * 0 + i + j) < n_prev
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
            if STORE:
                tl.store(p_dx, b_d.to(p_dx.dtype.element_ty), mask=m_bh & valid[:, None])
                p_dx += d_o
            b_du += b_d * b_prev
            b_db += b_d
            b_h = b_prev
    return b_c, b_du, b_db
