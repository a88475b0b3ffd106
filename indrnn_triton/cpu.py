"""The CPU path: the recurrence as one loop of in-place tensor ops per step, with its own backward.

No autograd graph is built (the custom op's backward calls :func:`cpu_backward`), every step
writes into preallocated buffers, and the per-step work touches only (B, H) slices that stay in
cache, so the cost is a handful of small kernels per step rather than a graph of T nodes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import clip_recurrent_weight


def _steps(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _step_masks(mask: Tensor | None) -> list[Tensor] | None:
    """(T, B) mask -> T (B, 1) bool slices (True = real step), ready to broadcast over H.

    Masked updates are selects (``torch.where``), never arithmetic blends such as
    ``lerp(old, new, 0)`` = ``old + 0 * (new - old)``: a NaN or Inf pre-activation at a padding
    step would leak into the state through the product with 0.
    """
    return None if mask is None else (mask != 0).unsqueeze(-1).unbind(0)


def _forward_one(
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
) -> None:
    """Fill ``out`` (T, B, H view) and ``h_n`` (B, H, accumulation dtype) in place."""
    T, B, H = x.shape
    acc = h_n.dtype
    u = clip_recurrent_weight(weight_hh.to(acc), recurrent_max_abs, recurrent_min_abs)
    b = None if bias is None else bias.to(acc)
    h = x.new_zeros(B, H, dtype=acc) if h0 is None else h0.to(acc)
    xs, outs, ms = x.unbind(0), out.unbind(0), _step_masks(mask)
    # When the output has the accumulation dtype it doubles as the state; otherwise the state
    # lives in two fp32 buffers (the new state must not overwrite the old one before masking).
    direct = out.dtype == acc
    bufs = None if direct else (x.new_empty(B, H, dtype=acc), x.new_empty(B, H, dtype=acc))
    for i, t in enumerate(_steps(T, reverse)):
        dst = outs[t] if direct else bufs[i % 2]
        if b is None:
            torch.addcmul(xs[t], u, h, out=dst)
        else:
            torch.add(xs[t], b, out=dst).addcmul_(u, h)
        dst.relu_()
        if ms is not None:
            torch.where(ms[t], dst, h, out=dst)
        if not direct:
            outs[t].copy_(dst)
        h = dst
    h_n.copy_(h)


def _backward_one(
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
) -> tuple[Tensor, Tensor]:
    """Fill ``grad_pre`` (T, B, H view) and ``grad_h0`` (B, H); return (du, db), shape (H,)."""
    T, B, H = out.shape
    acc = grad_h0.dtype
    w = weight_hh.detach().to(acc)
    u = clip_recurrent_weight(w, recurrent_max_abs, recurrent_min_abs)
    # du is zero where the weight was clipped; a NaN weight counts as kept by the minimum and
    # as clipped by the maximum, as torch.where and torch.clamp's gradients have it.
    keep = ~(w.abs() < recurrent_min_abs)
    if recurrent_max_abs is not None:
        keep &= w.abs() <= recurrent_max_abs
    du = torch.zeros_like(grad_h0)
    db = torch.zeros_like(grad_h0)
    # c: the gradient reaching the state after the step being processed (dL/dh_n to start).
    c = torch.zeros_like(grad_h0) if grad_hn is None else grad_hn.to(acc, copy=True)
    hs, gps, ms = out.unbind(0), grad_pre.unbind(0), _step_masks(mask)
    gs = None if grad_out is None else grad_out.unbind(0)
    direct = grad_pre.dtype == acc
    scratch = None if direct else torch.empty_like(c)
    ud = None if ms is None else torch.empty_like(c)
    zero = c.new_zeros(())
    order = _steps(T, reverse)
    for i in range(T - 1, -1, -1):
        t = order[i]
        if gs is not None:
            c.add_(gs[t])
        d = gps[t] if direct else scratch
        # c * [h > 0]; mixed dtypes (a bf16/fp16 output, fp32 c) need no upcast copy.
        torch.ops.aten.threshold_backward.grad_input(c, hs[t], 0, grad_input=d)
        if ms is None:
            torch.mul(d, u, out=c)
        else:
            # A padding step is the identity on the state: its gradient passes straight through.
            torch.where(ms[t], d, zero, out=d)
            torch.where(ms[t], torch.mul(d, u, out=ud), c, out=c)
        prev = hs[order[i - 1]] if i > 0 else h0
        if prev is not None:
            du.addcmul_(d, prev)
        db.add_(d)
        if not direct:
            gps[t].copy_(d)
    grad_h0.copy_(c)
    # A select, not a product with 0: du of a clipped weight is 0 even where the sum is NaN.
    return torch.where(keep, du.sum(0), 0.0), db.sum(0)


def _split(t: Tensor | None, D: int) -> list[Tensor | None]:
    """The D direction slices of a (..., D*H) tensor: strided views, never copies."""
    if t is None:
        return [None] * D
    H = t.shape[-1] // D
    return [t[..., d * H:(d + 1) * H] for d in range(D)]


def _states(t: Tensor | None, D: int) -> list[Tensor | None]:
    """D (B, H) states of a (B, H) or (D, B, H) tensor."""
    return [None] * D if t is None else list(t.view(D, *t.shape[-2:]).unbind(0))


def cpu_forward(x, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs, reverse,
                out, h_n, D):
    """Fill ``out`` (T, B, D*H view) and ``h_n`` (D states) in place; direction 1 runs
    backwards in time. Same contract as ``kernels.sequential.triton_forward``."""
    for d, (x_d, u_d, b_d, h0_d, o_d, hn_d) in enumerate(zip(
        _split(x, D), _split(weight_hh, D), _split(bias, D), _states(h0, D), _split(out, D),
        _states(h_n, D),
    )):
        _forward_one(x_d, u_d, b_d, h0_d, mask, recurrent_max_abs, recurrent_min_abs,
                     reverse or d == 1, o_d, hn_d)


def cpu_backward(grad_out, grad_hn, out, weight_hh, h0, mask, recurrent_max_abs,
                 recurrent_min_abs, reverse, grad_pre, grad_h0, D):
    """Fill ``grad_pre`` and ``grad_h0`` in place and return (du, db), each (D*H,). Same
    contract as ``kernels.sequential.triton_backward``."""
    parts = [
        _backward_one(g_d, ghn_d, o_d, u_d, h0_d, mask, recurrent_max_abs, recurrent_min_abs,
                      reverse or d == 1, gp_d, gh0_d)
        for d, (g_d, ghn_d, o_d, u_d, h0_d, gp_d, gh0_d) in enumerate(zip(
            _split(grad_out, D), _states(grad_hn, D), _split(out, D), _split(weight_hh, D),
            _states(h0, D), _split(grad_pre, D), _states(grad_h0, D),
        ))
    ]
    return torch.cat([du for du, _ in parts]), torch.cat([db for _, db in parts])
