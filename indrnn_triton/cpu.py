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


def _step_masks(mask: Tensor | None, dtype: torch.dtype) -> list[Tensor] | None:
    """(T, B) mask -> T (B, 1) slices of 0.0/1.0, ready to broadcast over H.

    Masked updates are written as ``torch.lerp(old, new, m)``, exact at m = 0 and m = 1, which
    costs a third of ``torch.where`` with a bool mask on small tensors.
    """
    return None if mask is None else (mask != 0).to(dtype).unsqueeze(-1).unbind(0)


def cpu_forward(
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
    xs, outs, ms = x.unbind(0), out.unbind(0), _step_masks(mask, acc)
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
            torch.lerp(h, dst, ms[t], out=dst)
        if not direct:
            outs[t].copy_(dst)
        h = dst
    h_n.copy_(h)


def cpu_backward(
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
    keep = w.abs() >= recurrent_min_abs  # du is zero where the weight was clipped
    if recurrent_max_abs is not None:
        keep &= w.abs() <= recurrent_max_abs
    du = torch.zeros_like(grad_h0)
    db = torch.zeros_like(grad_h0)
    # c: the gradient reaching the state after the step being processed (dL/dh_n to start).
    c = torch.zeros_like(grad_h0) if grad_hn is None else grad_hn.to(acc, copy=True)
    hs, gps, ms = out.unbind(0), grad_pre.unbind(0), _step_masks(mask, acc)
    gs = None if grad_out is None else grad_out.unbind(0)
    direct = grad_pre.dtype == acc
    scratch = None if direct else torch.empty_like(c)
    h32 = None if out.dtype == acc else torch.empty_like(c)
    ud = None if ms is None else torch.empty_like(c)
    order = _steps(T, reverse)
    for i in range(T - 1, -1, -1):
        t = order[i]
        if gs is not None:
            c.add_(gs[t])
        h = hs[t] if h32 is None else h32.copy_(hs[t])
        d = gps[t] if direct else scratch
        torch.ops.aten.threshold_backward.grad_input(c, h, 0, grad_input=d)  # c * [h > 0]
        if ms is None:
            torch.mul(d, u, out=c)
        else:
            # A padding step is the identity on the state: its gradient passes straight through.
            d.mul_(ms[t])
            torch.lerp(c, torch.mul(d, u, out=ud), ms[t], out=c)
        prev = hs[order[i - 1]] if i > 0 else h0
        if prev is not None:
            du.addcmul_(d, prev)
        db.add_(d)
        if not direct:
            gps[t].copy_(d)
    grad_h0.copy_(c)
    return du.sum(0) * keep.to(acc), db.sum(0)
