"""The IndRNN recurrence as a plain Python loop: the ground truth the fused op is tested against.

Deliberately simple: one step at a time, autograd through every step, no fusion. Use it to check
results, not to train.
"""

from __future__ import annotations

import torch
from torch import Tensor


def clip_recurrent_weight(
    weight_hh: Tensor, recurrent_max_abs: float | None, recurrent_min_abs: float = 0.0
) -> Tensor:
    """Return u' = clamp(sign(u) * max(|u|, m), -r, r), differentiable with torch's rules.

    The gradient passes where u was left unchanged (m <= |u| <= r) and is zero where u was
    clipped. A weight of exactly 0 keeps sign 0 and stays 0, as in TensorFlow's IndRNNCell.
    """
    u = weight_hh
    if recurrent_min_abs > 0:
        u = torch.where(u.abs() < recurrent_min_abs, torch.sign(u) * recurrent_min_abs, u)
    if recurrent_max_abs is not None and recurrent_max_abs < torch.finfo(u.dtype).max:
        u = u.clamp(-recurrent_max_abs, recurrent_max_abs)  # (a larger bound clips nothing)
    return u


def indrnn_reference(
    pre: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    recurrent_max_abs: float | None = None,
    recurrent_min_abs: float = 0.0,
    mask: Tensor | None = None,
    reverse: bool = False,
    batch_first: bool = False,
) -> tuple[Tensor, Tensor]:
    """h_t = relu(pre_t + bias + clip(u) * h_{t-1}), one step at a time.

    Same arguments and semantics as :func:`indrnn_triton.fused_indrnn`. The recurrence runs in
    ``pre``'s dtype promoted to at least float32 (pass float64 tensors for a float64 reference);
    the output is cast back to ``pre``'s dtype and ``h_n`` is returned in the compute dtype.
    """
    compute = torch.promote_types(pre.dtype, torch.float32)
    x = pre.transpose(0, 1) if batch_first else pre
    T, B, H = x.shape
    u = clip_recurrent_weight(weight_hh.to(compute), recurrent_max_abs, recurrent_min_abs)
    h = torch.zeros(B, H, dtype=compute, device=pre.device) if h0 is None else h0.to(compute)
    if mask is not None:
        m = (mask.transpose(0, 1) if batch_first else mask) != 0
    outs: list[Tensor | None] = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        a = x[t].to(compute)
        if bias is not None:
            a = a + bias.to(compute)
        new = torch.relu(a + u * h)
        h = new if mask is None else torch.where(m[t].unsqueeze(-1), new, h)
        outs[t] = h
    out = torch.stack(outs) if T > 0 else x.new_zeros(0, B, H, dtype=compute)
    if batch_first:
        out = out.transpose(0, 1)
    return out.to(pre.dtype), h
