"""The input projection fused with the recurrence: x -> h without writing pre = x W^T.

One program owns a (BLOCK_B, BLOCK_H) tile of the state and walks time in chunks of CT steps.
For each chunk it computes the projection of the chunk's CT x BLOCK_B input rows with ``tl.dot``
(float32 accumulation; tensor cores for bf16/fp16, TF32 for fp32 when
``torch.backends.cuda.matmul.allow_tf32`` is set, as ``F.linear``), adds the bias and runs the
chunk's CT dependent steps in registers as an in-tile associative scan (DESIGN §4 and §6):

- every step is a clamp-affine map f(h) = clamp(A + U h, L, H): a real step is
  (A = pre + bias, U = u', L = 0, H = BIG) = relu(pre + bias + u' h); a padding or
  out-of-range step is the identity (0, 1, -BIG, BIG), chosen by a select so that the input
  there never reaches the state (BIG = the largest float32, or float64 with float64
  accumulation: finite so that 0 * BIG = 0);
- ``tl.associative_scan`` along the time axis composes the maps into prefix maps;
- every step's state is its prefix map applied to the state entering the chunk, in one
  vectorised expression; the state leaving the chunk is the last row.

A chunk costs log2(CT) combine levels instead of CT dependent steps, and pre never touches
memory: the only (T, B, H) tensor written is the output.

Exactness: the composition is exact algebra, so the result equals the sequential loop up to
rounding, for any sign of u. Limits: the prefix product U of up to CT weights saturates at
BIG, so |u'| above 2^(128/CT) (CT = 16: 256) can give a wrong finite value where the sequential
loop with a tiny state still is finite (such a recurrence overflows within a few chunks anyway);
states are clamped to [-BIG, BIG]: an infinite h0 carried through padding becomes BIG, and an
infinite pre-activation at a real step gives BIG there (and finite states after it) where the
unfused op gives inf (README, Numerics).

Bidirectional layers run both directions in one launch (grid axis 2). Each direction reads
every x tile once; the two directions cannot share a tile load, because they walk time in
opposite orders: at any point of the walk they need different chunks (sharing would mean
holding all projections of a sequence, which is pre). x is anyway re-read by every hidden block
of a direction (from L2 on a GPU), so a second direction costs what a wider H costs.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .common import (
    HEURISTICS,
    INTERPRET,
    batch_class,
    clip,
    clip_args,
    dense,
    i64,
    length_class,
    mask_arg,
    prune_tiles,
    tile,
    tune_bench,
)

# The unbounded ends of a map's clamp: the largest float32, finite so that a zero weight times
# a bound is 0, not NaN (0 * inf), and representable in every accumulation dtype.
BIG = tl.constexpr(3.4028234663852886e38)
# float64 accumulation (float64 inputs) bounds its states by float64's largest value instead:
# a float64 state may legitimately pass float32's range.
BIG64 = tl.constexpr(1.7976931348623157e308)

if INTERPRET:
    from . import _interpreter

    _interpreter.install()


def _configs() -> list[triton.Config]:
    if INTERPRET:
        # The interpreter costs per program and per operation: small tiles that still split B
        # and H into partial blocks, several chunks with a tail, and a K loop with a tail.
        return [triton.Config({"BLOCK_B": 2, "BLOCK_H": 64, "BLOCK_K": 16, "CT": 4},
                              num_warps=1)]
    return gpu_configs()


def gpu_configs() -> list[triton.Config]:
    """The autotune list for a GPU (also built under the interpreter, for tests).

    (BLOCK_B, BLOCK_H, BLOCK_K, CT, num_warps, num_stages). CT x BLOCK_B rows share each W tile
    (W comes from L2 for every chunk: more rows per program amortise it), and tl.dot needs at
    least 16 of them. Not yet tuned on a GPU: chosen to compile for sm_80 and sm_90 without
    spills (benchmarks/kernel_report.py).
    """
    # Four warps and at most 8 elements per thread in each of the scan's four
    # (CT, BLOCK_B, BLOCK_H) arrays: at 16 (BLOCK_B=2, BLOCK_H=64) the bidirectional kernel
    # reaches 255 registers (spilling at BLOCK_B=4), and 8 warps cap ptxas at 128 registers,
    # where fp16/bf16 spill. CT = 32 (BLOCK_B=1, BLOCK_H=32) spilled for sm_90 in bf16.
    tiles = [(1, 64, 32, 16, 4, 2), (2, 32, 32, 16, 4, 2), (4, 16, 64, 16, 4, 3)]
    return [
        triton.Config({"BLOCK_B": bb, "BLOCK_H": bh, "BLOCK_K": bk, "CT": ct}, num_warps=w,
                      num_stages=s)
        for bb, bh, bk, ct, w, s in tiles
    ]


def _prune(configs, named_args, **kwargs):
    """:func:`.common.prune_tiles`, tiles at least 32 wide kept."""
    return prune_tiles(configs, {**named_args, **kwargs}, 32)


@triton.jit
def _compose(a1, u1, l1, h1, a2, u2, l2, h2):
    """The clamp-affine map "f1, then f2" (DESIGN §4): associative, the scan's combine.

    NaN propagates through every min/max (torch.relu keeps NaN). Written out in one function:
    the interpreter pays per call of a nested jit function.
    """
    p = a2 + u2 * l1
    q = a2 + u2 * h1
    lo = tl.minimum(p, q, propagate_nan=tl.PropagateNan.ALL)
    hi = tl.maximum(p, q, propagate_nan=tl.PropagateNan.ALL)
    lo = tl.minimum(tl.maximum(lo, l2, propagate_nan=tl.PropagateNan.ALL), h2,
                    propagate_nan=tl.PropagateNan.ALL)
    hi = tl.minimum(tl.maximum(hi, l2, propagate_nan=tl.PropagateNan.ALL), h2,
                    propagate_nan=tl.PropagateNan.ALL)
    # U saturates at BIG instead of overflowing to inf: inf * 0 (a zero offset or state) would
    # be NaN where the true product is 0.
    u = tl.minimum(tl.maximum(u2 * u1, -BIG, propagate_nan=tl.PropagateNan.ALL), BIG,
                   propagate_nan=tl.PropagateNan.ALL)
    return a2 + u2 * a1, u, lo, hi


@triton.jit
def fwd_body(
    p_x,  # layer input, (T, B, I) through strides s_x_*
    p_w,  # input weights, (D*H, I) through strides s_w_*
    p_u,  # recurrent weights u, (D*H,) contiguous
    p_b,  # bias, (D*H,) contiguous, or None
    p_h0,  # initial states, D (B, H) blocks contiguous, or None (zeros)
    p_mask,  # step mask, (T, B) through strides s_m_*, nonzero = real step; or None
    p_out,  # output h, (T, B, D*H) through strides s_out_*, same dtype as x
    p_hn,  # final states, D (B, H) blocks contiguous, accumulation dtype
    T, B, H, K,  # K: input features (the I of x)
    s_x_t, s_x_b, s_x_i,
    s_w_h, s_w_i,
    s_out_t, s_out_b, s_out_h,
    s_m_t, s_m_b,
    r_max, r_min,
    i_b,  # batch block
    CLIP_MAX: tl.constexpr,
    CLIP_MIN: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ACC_F64: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input precision: "tf32" or "ieee"
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CT: tl.constexpr,
    I_D: tl.constexpr,  # direction: 1 = the second half of a bidirectional layer
):
    """One direction of one state tile over the whole sequence."""
    ACC = tl.float64 if ACC_F64 else tl.float32
    big: tl.constexpr = BIG64 if ACC_F64 else BIG  # the clamp's "no bound"
    o_b, o_h, m_b, m_h, m_bh = tile(B, H, BLOCK_B, BLOCK_H, i_b, tl.program_id(1))
    o_f = I_D * H + o_h  # feature index along the D*H axis of W, u, bias and the output
    o_s = I_D * i64(B) * H + o_b[:, None] * H + o_h[None, :]  # this tile in h0 / h_n

    b_u = tl.load(p_u + o_f, mask=m_h, other=0).to(ACC)
    b_u, _ = clip(b_u, r_max, r_min, CLIP_MAX, CLIP_MIN)
    if HAS_BIAS:
        b_bias = tl.load(p_b + o_f, mask=m_h, other=0).to(ACC)
    else:
        b_bias = tl.zeros([BLOCK_H], dtype=ACC)
    if HAS_H0:
        b_h = tl.load(p_h0 + o_s, mask=m_bh, other=0).to(ACC)
    else:
        b_h = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)

    # The rows of a chunk tile: row r is step r // BLOCK_B of the chunk (in processing order)
    # for batch row r % BLOCK_B, so the tile reshapes to (CT, BLOCK_B, ...) with time first.
    o_r = tl.arange(0, CT * BLOCK_B)
    r_j = o_r // BLOCK_B
    r_b = i_b * BLOCK_B + (o_r % BLOCK_B).to(tl.int64)
    m_rb = r_b < B
    o_k = tl.arange(0, BLOCK_K)
    # W^T tile (BLOCK_K, BLOCK_H) at the first K block; it moves BLOCK_K * s_w_i per block.
    p_wt = p_w + o_f[None, :] * s_w_h + o_k[:, None] * i64(s_w_i)
    is_last = (tl.arange(0, CT) == CT - 1)[:, None, None]

    for s0 in range(0, T, CT):
        r_s = s0 + r_j  # processing step of every row
        m_r = m_rb & (r_s < T)
        if REVERSE:
            r_t = i64(T - 1) - r_s
        else:
            r_t = r_s.to(tl.int64)
        p_xr = p_x + r_t * s_x_t + r_b * s_x_b
        acc = tl.zeros([CT * BLOCK_B, BLOCK_H], dtype=ACC)
        for k in range(0, K, BLOCK_K):
            m_k = (k + o_k) < K
            b_x = tl.load(p_xr[:, None] + (k + o_k)[None, :] * i64(s_x_i),
                          mask=m_r[:, None] & m_k[None, :], other=0)
            b_w = tl.load(p_wt + k * i64(s_w_i), mask=m_k[:, None] & m_h[None, :], other=0)
            acc = tl.dot(b_x, b_w, acc, input_precision=PRECISION, out_dtype=ACC)
        real = m_r
        if HAS_MASK:
            real = real & (tl.load(p_mask + r_t * s_m_t + r_b * s_m_b, mask=m_r, other=0) != 0)
        real = tl.reshape(real, [CT, BLOCK_B])[:, :, None]
        b_a = tl.reshape(acc, [CT, BLOCK_B, BLOCK_H]) + b_bias[None, None, :]
        # Selects, never blends: the input at a padding step (NaN or Inf included) must not
        # reach the state.
        b_zero = tl.zeros([CT, BLOCK_B, BLOCK_H], dtype=ACC)
        m_a = tl.where(real, b_a, 0.0)
        m_u = tl.where(real, b_u[None, None, :], 1.0)
        m_l = tl.where(real, b_zero, -big)
        m_hi = b_zero + big
        m_a, m_u, m_l, m_hi = tl.associative_scan((m_a, m_u, m_l, m_hi), 0, _compose)
        b_hs = tl.minimum(tl.maximum(m_a + m_u * b_h[None, :, :], m_l,
                                     propagate_nan=tl.PropagateNan.ALL), m_hi,
                          propagate_nan=tl.PropagateNan.ALL)
        p_o = p_out + r_t[:, None] * s_out_t + r_b[:, None] * s_out_b + o_f[None, :] * s_out_h
        tl.store(p_o, tl.reshape(b_hs, [CT * BLOCK_B, BLOCK_H]).to(p_out.dtype.element_ty),
                 mask=m_r[:, None] & m_h[None, :])
        # The last row's prefix map covers the whole chunk (later rows past T are identities).
        b_h = tl.sum(tl.where(is_last, b_hs, 0.0), axis=0)
    tl.store(p_hn + o_s, b_h.to(p_hn.dtype.element_ty), mask=m_bh)


@triton.heuristics({**HEURISTICS, "HAS_BIAS": lambda a: a["p_b"] is not None})
@triton.autotune(configs=_configs(),
                 key=["H", "K", "B_CLASS", "T_CLASS", "BIDIR", "PRECISION"],
                 prune_configs_by={"early_config_prune": _prune}, do_bench=tune_bench)
@triton.jit(do_not_specialize=["T", "B_CLASS", "T_CLASS"])
def _fused_linear_fwd_kernel(
    p_x,  # layer input, (T, B, I) through strides s_x_*
    p_w,  # input weights, (D*H, I) through strides s_w_*
    p_u,  # recurrent weights u, (D*H,) contiguous
    p_b,  # bias, (D*H,) contiguous, or None
    p_h0,  # initial states, D (B, H) blocks contiguous, or None
    p_mask,  # step mask, (T, B) through strides s_m_*, nonzero = real step; or None
    p_out,  # output h, (T, B, D*H) through strides s_out_*, same dtype as x
    p_hn,  # final states, D (B, H) blocks contiguous, accumulation dtype
    T, B, H, K,  # K: input features (the I of x)
    s_x_t, s_x_b, s_x_i,
    s_w_h, s_w_i,
    s_out_t, s_out_b, s_out_h,
    s_m_t, s_m_b,
    r_max, r_min,
    B_CLASS,  # batch_class(B): read only by the autotuner's key
    T_CLASS,  # length_class(T): read only by the autotuner's key
    CLIP_MAX: tl.constexpr,
    CLIP_MIN: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ACC_F64: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CT: tl.constexpr,
    BIDIR: tl.constexpr,  # two directions: grid axis 2, the second reversed
):
    # Direction and REVERSE are compile-time in each body (as in the sequential kernel).
    i_b = tl.program_id(0)
    if BIDIR:
        if tl.program_id(2) == 0:
            fwd_body(p_x, p_w, p_u, p_b, p_h0, p_mask, p_out, p_hn, T, B, H, K, s_x_t, s_x_b, s_x_i,
                s_w_h, s_w_i, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, i_b, CLIP_MAX,
                CLIP_MIN, False, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64, PRECISION, BLOCK_B, BLOCK_H,
                BLOCK_K, CT, 0)
        else:
            fwd_body(p_x, p_w, p_u, p_b, p_h0, p_mask, p_out, p_hn, T, B, H, K, s_x_t, s_x_b, s_x_i,
                s_w_h, s_w_i, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, i_b, CLIP_MAX,
                CLIP_MIN, True, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64, PRECISION, BLOCK_B, BLOCK_H,
                BLOCK_K, CT, 1)
    else:
        fwd_body(p_x, p_w, p_u, p_b, p_h0, p_mask, p_out, p_hn, T, B, H, K, s_x_t, s_x_b, s_x_i,
            s_w_h, s_w_i, s_out_t, s_out_b, s_out_h, s_m_t, s_m_b, r_max, r_min, i_b, CLIP_MAX,
            CLIP_MIN, REVERSE, HAS_BIAS, HAS_H0, HAS_MASK, ACC_F64, PRECISION, BLOCK_B, BLOCK_H,
            BLOCK_K, CT, 0)


def triton_forward(
    x: Tensor,
    weight_ih: Tensor,
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
    allow_tf32: bool,
) -> None:
    """Launch the fused forward over D directions at once (a third grid axis).

    ``x``: (T, B, I) view; ``weight_ih``: (D*H, I); ``out``: (T, B, D*H) view; ``weight_hh``,
    ``bias``: (D*H,); ``h0``, ``h_n``: D contiguous (B, H) states; ``mask``: (T, B) view.
    Direction 1 runs from T-1 down to 0. ``allow_tf32``: float32 inputs use TF32 tensor cores.
    """
    T, B, K = x.shape
    H = out.shape[2] // D
    mask, s_m_t, s_m_b = mask_arg(mask)
    precision = "tf32" if allow_tf32 and x.dtype.itemsize == 4 else "ieee"
    grid = lambda meta: (triton.cdiv(B, meta["BLOCK_B"]), triton.cdiv(H, meta["BLOCK_H"]), D)  # noqa: E731
    _fused_linear_fwd_kernel[grid](
        x, weight_ih, dense(weight_hh), dense(bias), dense(h0), mask, out, h_n,
        T, B, H, K,  # K: input features (the I of x)
        *x.stride(), *weight_ih.stride(), *out.stride(), s_m_t, s_m_b,
        B_CLASS=batch_class(B), T_CLASS=length_class(T), REVERSE=reverse, BIDIR=D == 2,
        PRECISION=precision,
        **clip_args(recurrent_max_abs, recurrent_min_abs),
    )
