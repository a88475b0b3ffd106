"""The IndRNN layer op with the input projection fused in: x -> (output, h_n), pre never stored.

``fused_indrnn_linear`` validates its arguments and calls ``indrnn_triton::indrnn_linear_forward``,
a torch.library custom op: on CUDA (and on CPU tensors under TRITON_INTERPRET when
``op.cpu_uses_triton``) the kernel of :mod:`indrnn_triton.kernels.fused_linear`; on CPU
``F.linear`` then the CPU recurrence. Its backward reuses the recurrence's backward op for
dpre, then dx = dpre W and dW = dpre^T x through torch (cuBLAS on a GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _alloc, op
from .op import (
    _acc_dtype,
    _backward_op,
    _check_float_tensor,
    _check_reverse_mode_only,
    _clip_in_range,
    _forward_impl,
    _state_shape,
    _tbh,
    _validate,
)

try:
    from .kernels import fused_linear as _kernel
except ImportError:  # Triton is optional off Linux; CUDA tensors then need it, CPU ones do not.
    _kernel = None


def _forward_impl_linear(x, weight_ih, weight_hh, bias, h0, mask, r_max, r_min, reverse,
                         batch_first, bidirectional, use_triton):
    op.check_no_transform_running()
    if not use_triton:
        return _forward_impl(F.linear(x, weight_ih), weight_hh, bias, h0, mask, r_max, r_min,
                             reverse, batch_first, bidirectional, "auto", use_triton=False)
    if _kernel is None:
        raise RuntimeError(
            f"fused_indrnn_linear on {x.device} needs Triton, which is not installed "
            "(pip install triton)"
        )
    D = 2 if bidirectional else 1
    xt = _tbh(x, batch_first)
    T, B, DH = xt.shape[0], xt.shape[1], weight_ih.shape[0]
    H = DH // D
    out = _alloc.empty(*x.shape[:-1], DH, dtype=x.dtype, device=x.device)
    h_n = _alloc.empty(_state_shape(B, H, D), dtype=_acc_dtype(x.dtype), device=x.device)
    if T == 0 or B == 0 or H == 0:
        h_n.copy_(h0) if h0 is not None else h_n.zero_()
        return out, h_n
    m = None if mask is None else _tbh(mask, batch_first)
    _kernel.triton_forward(xt, weight_ih, weight_hh, bias, h0, m, _clip_in_range(r_max, h_n.dtype),
                           r_min, reverse, _tbh(out, batch_first), h_n, D,
                           allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return out, h_n


# One direction, or two (``bidirectional``: weight_ih (2H, I), the second H rows running from
# T-1 down to 0, h0/h_n (2, B, H)), as the recurrence op ``indrnn_triton::indrnn_forward``.
@torch.library.custom_op("indrnn_triton::indrnn_linear_forward", mutates_args=())
def _linear_forward_op(
    x: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None,
    h0: Tensor | None,
    mask: Tensor | None,
    recurrent_max_abs: float | None,
    recurrent_min_abs: float,
    reverse: bool,
    batch_first: bool,
    bidirectional: bool,
) -> tuple[Tensor, Tensor]:
    op.check_no_forward_ad_level()
    return _forward_impl_linear(x, weight_ih, weight_hh, bias, h0, mask, recurrent_max_abs,
                                recurrent_min_abs, reverse, batch_first, bidirectional,
                                use_triton=op.cpu_uses_triton)


@_linear_forward_op.register_kernel("cuda")
def _linear_forward_cuda(*args):
    op.check_no_forward_ad_level()
    return _forward_impl_linear(*args, use_triton=True)


@_linear_forward_op.register_fake
def _linear_forward_fake(x, weight_ih, weight_hh, bias, h0, mask, recurrent_max_abs,
                         recurrent_min_abs, reverse, batch_first, bidirectional):
    op.check_no_forward_ad_level()
    D = 2 if bidirectional else 1
    B, DH = _tbh(x, batch_first).shape[1], weight_ih.shape[0]
    return x.new_empty(*x.shape[:-1], DH), x.new_empty(_state_shape(B, DH // D, D),
                                                       dtype=_acc_dtype(x.dtype))


def _setup_context(ctx, inputs, output):
    (x, weight_ih, weight_hh, bias, h0, mask, r_max, r_min, reverse, batch_first,
     bidirectional) = inputs
    out, _ = output
    # The recurrence's backward needs only its output and h0 (the ReLU derivative is [h > 0]);
    # the projection's needs x and W. pre is never kept.
    ctx.save_for_backward(x, weight_ih, out, weight_hh, h0, mask)
    ctx.flags = (r_max, r_min, reverse, batch_first, bidirectional)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad_out, grad_hn):
    x, weight_ih, out, weight_hh, h0, mask = ctx.saved_tensors
    grads = _backward_op(grad_out, grad_hn, out, weight_hh, h0, mask, *ctx.flags)
    return _input_grads(ctx, x, weight_ih, weight_hh, h0, mask, *grads)


def _input_grads(ctx, x, weight_ih, weight_hh, h0, mask, grad_pre, du, db, dh0) -> tuple:
    """The forward's input gradients from the recurrence backward's outputs: dx = dpre W and
    dW = dpre^T x for the projection, the others in their inputs' dtypes."""
    grad_x = grad_w = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.matmul(grad_pre, weight_ih)
    if ctx.needs_input_grad[1]:
        if mask is not None:
            # dpre is 0 at padding steps, but 0 * NaN is NaN: x there must not reach dW.
            batch_first = ctx.flags[3]
            x = torch.where(_tbh(mask, batch_first).unsqueeze(-1) != 0, _tbh(x, batch_first), 0)
            x = _tbh(x, batch_first)
        grad_w = torch.tensordot(grad_pre, x, dims=([0, 1], [0, 1]))
    return (
        grad_x,
        grad_w,
        du.to(weight_hh.dtype),
        None if ctx.bias_dtype is None else db.to(ctx.bias_dtype),
        None if h0 is None else dh0.to(h0.dtype),
        None, None, None, None, None, None,
    )


_linear_forward_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLinear(torch.autograd.Function):
    """The custom op's forward and autograd formula without the dispatcher, for eager calls on
    plain CPU/CUDA tensors (as :class:`indrnn_triton.op._EagerRecurrence` for the recurrence):
    the same implementation functions and saved tensors, the recurrence's backward called
    directly. Under ``create_graph=True`` the backward goes through the custom ops."""

    @staticmethod
    def forward(ctx, x, weight_ih, weight_hh, bias, h0, mask, *flags):
        ctx.set_materialize_grads(False)
        ctx.use_triton = op._use_triton(x)
        output = _forward_impl_linear(x, weight_ih, weight_hh, bias, h0, mask, *flags,
                                      use_triton=ctx.use_triton)
        _setup_context(ctx, (x, weight_ih, weight_hh, bias, h0, mask, *flags), output)
        return output

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        if torch.is_grad_enabled() or op.batched(grad_out, grad_hn):  # create_graph, vmap
            return _backward(ctx, grad_out, grad_hn)
        x, weight_ih, out, weight_hh, h0, mask = ctx.saved_tensors
        grads = op._backward_impl(grad_out, grad_hn, out, weight_hh, h0, mask, *ctx.flags,
                                  "auto", use_triton=ctx.use_triton)
        return _input_grads(ctx, x, weight_ih, weight_hh, h0, mask, *grads)


def linear_recurrence(x, weight_ih, weight_hh, bias, h0, mask, r_max, r_min, reverse,
                      batch_first, bidirectional):
    """The fused layer op on checked arguments (:func:`prepare`), through
    :func:`indrnn_triton.op.route`: :func:`_linear_forward_op`, :class:`_EagerLinear`,
    :func:`_forward_impl_linear`."""
    return op.route(_linear_forward_op, _EagerLinear, _forward_impl_linear,
                    (x, weight_ih, weight_hh, bias, h0, mask, r_max, r_min, reverse, batch_first,
                     bidirectional), 6)


def _autocast(x: Tensor, weight_ih: Tensor) -> tuple[Tensor, Tensor]:
    """x and weight_ih in the autocast dtype when autocast is on for their device, as
    ``F.linear`` would run: autocast casts float32/float16/bfloat16 tensors and leaves float64
    alone. The recurrence's parameters keep their dtype."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return x, weight_ih
    dtype = torch.get_autocast_dtype(device)
    return tuple(t if t.dtype == torch.float64 else t.to(dtype) for t in (x, weight_ih))


def prepare(x, weight_ih, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs,
            reverse, batch_first, bidirectional):
    """Check every argument of the fused layer op (those of ``fused_indrnn`` through its own
    checks) and apply autocast; return (x, weight_ih, r_max, r_min) for the custom op."""
    if not isinstance(bidirectional, bool):
        raise TypeError(f"bidirectional must be a bool, got {bidirectional!r}")
    D = 2 if bidirectional else 1
    _check_float_tensor("x", x, 3)
    _check_float_tensor("weight_ih", weight_ih, 2)
    x, weight_ih = _autocast(x, weight_ih)
    layout = "(B, T, I)" if batch_first is True else "(T, B, I)"
    if weight_ih.shape[1] != x.shape[2]:
        raise ValueError(
            f"weight_ih must have shape (D*H, I) with I = {x.shape[2]} (the last dimension of x "
            f"{layout} = {tuple(x.shape)}), got {tuple(weight_ih.shape)}"
        )
    if weight_ih.shape[0] % D:
        raise ValueError(
            f"weight_ih must have shape (2H, I) for bidirectional=True (an even number of "
            f"rows), got {tuple(weight_ih.shape)}"
        )
    if weight_ih.dtype != x.dtype:
        raise TypeError(
            f"weight_ih must have x's dtype {x.dtype} (as F.linear), got {weight_ih.dtype}"
        )
    if weight_ih.device != x.device:
        raise ValueError(
            f"weight_ih is on {weight_ih.device} but x is on {x.device}: put them on one device"
        )
    _check_reverse_mode_only(x, weight_ih)
    H = weight_ih.shape[0] // D
    if D == 2:
        # The recurrence's checks below see the forward direction's slices (as
        # functional.indrnn_recurrence); the full shapes are checked here.
        for name, t in (("weight_hh", weight_hh), ("bias", bias)):
            if isinstance(t, Tensor) and tuple(t.shape) != (2 * H,):
                raise ValueError(f"{name} must have shape (2H,) = ({2 * H},) for "
                                 f"bidirectional=True, got {tuple(t.shape)}")
        if isinstance(h0, Tensor) and (h0.dim() != 3 or h0.shape[0] != 2):
            raise ValueError(f"h0 must have shape (2, B, H) for bidirectional=True, got "
                             f"{tuple(h0.shape)}")
        weight_hh, bias = (t[:H] if isinstance(t, Tensor) else t for t in (weight_hh, bias))
        h0 = h0[0] if isinstance(h0, Tensor) else h0
    # A stand-in for pre (a broadcast scalar: no memory) carries the shapes to the checks.
    pre = x.new_empty(()).expand(*x.shape[:2], H)
    # The method names the recurrence kernels of the unfused op: the fused kernel has one.
    r_max, r_min = _validate(pre, weight_hh, bias, h0, mask, recurrent_max_abs,
                             recurrent_min_abs, reverse, batch_first, "auto")
    return x, weight_ih, r_max, r_min


def fused_indrnn_linear(
    x: Tensor,
    weight_ih: Tensor,
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
    """One IndRNN layer from its input: h_t = relu(W x_t + bias + clip(u) * h_{t-1}).

    The same result as ``fused_indrnn(F.linear(x, weight_ih), weight_hh, bias, h0, ...)``, but
    on a GPU one kernel computes each chunk's projection tile and runs the recurrence on it in
    registers: pre = W x is never written to memory (in inference nothing of size T x B x H is
    allocated besides the output). Differentiable in ``x``, ``weight_ih``, ``weight_hh``,
    ``bias`` and ``h0``; the backward keeps x, the output and h0 (not pre).

    Args:
        x: (T, B, I), or (B, T, I) with ``batch_first=True``; float32, float16 or bfloat16
            (float64 on the CPU path and for checks); any strides: it is read in place.
        weight_ih: (H, I) input weights, x's dtype. Under ``torch.autocast`` x and weight_ih
            are cast to the autocast dtype, as ``F.linear`` would; the others keep theirs.
        weight_hh, bias, h0, recurrent_max_abs, recurrent_min_abs, mask, reverse, batch_first:
            as in :func:`indrnn_triton.fused_indrnn` (H from weight_ih). Padding steps of x are
            never read, and NaN there reaches no output and no gradient.

    Returns:
        ``(output, h_n)``: output (T, B, H) (or (B, T, H)) in x's dtype (the projection is not
        rounded to it before the recurrence, unlike the unfused path); ``h_n`` (B, H) in
        float32 (float64 for float64 inputs).

    On a GPU the recurrence runs as a scan over chunks of 16 steps, which needs the product of
    16 clipped weights to stay finite: |clip(u)| < 256 (see
    :mod:`indrnn_triton.kernels.fused_linear`); the papers' clip 2^(1/T) is far inside.

    Example:
        >>> import torch
        >>> from indrnn_triton import fused_indrnn_linear
        >>> x = torch.randn(16, 4, 32)                      # (T, B, input features)
        >>> w_ih, u = torch.randn(64, 32) * 0.1, torch.rand(64)
        >>> out, h_n = fused_indrnn_linear(x, w_ih, u, recurrent_max_abs=2 ** (1 / 16))
        >>> out.shape, h_n.shape
        (torch.Size([16, 4, 64]), torch.Size([4, 64]))
    """
    x, weight_ih, r_max, r_min = prepare(x, weight_ih, weight_hh, bias, h0, mask,
                                         recurrent_max_abs, recurrent_min_abs, reverse,
                                         batch_first, False)
    return linear_recurrence(x, weight_ih, weight_hh, bias, h0, mask, r_max, r_min, reverse,
                             batch_first, False)
