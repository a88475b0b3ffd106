"""Functional IndRNN layers: the pieces :class:`indrnn_triton.IndRNN` is assembled from.

- :func:`indrnn_recurrence` runs the fused recurrence over the pre-activations of one layer, one
  or two directions. Two directions run on the two strided halves of one (T, B, 2H) GEMM output
  and write the two halves of one preallocated (T, B, 2H) output: no flip, no concatenation, no
  copy of a (T, B, H) tensor, forwards or backwards (the op's two-direction form).
- :func:`indrnn_layer` is one whole layer: one GEMM for all steps and both directions, an
  optional normalisation of the pre-activations, then the recurrence (bias added in the kernel);
  or, without a norm, the projection fused into the recurrence kernel
  (:func:`indrnn_triton.fused_indrnn_linear`), chosen by :func:`use_fused_projection`.
- :func:`batch_norm_over_steps` is batch normalisation whose statistics cover real steps only.
- :func:`dropout_over_time` is dropout with one mask shared by all time steps.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .fused_linear import fused_indrnn_linear, linear_recurrence, prepare
from .op import _tbh, _validate, check_mask, fused_indrnn, recurrence

# ----------------------------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------------------------


def _check_vector(name: str, t: Tensor | None, size: int, what: str) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != (size,):
        raise ValueError(f"{name} must have shape {what} = ({size},), got {tuple(t.shape)}")


def _check_states(h0: Tensor | None, D: int, B: int, H: int) -> None:
    """A layer's initial states: None or a (D, B, H) tensor."""
    if h0 is None:
        return
    if not isinstance(h0, Tensor):
        raise TypeError(f"h0 must be a torch.Tensor, got {type(h0).__name__}")
    if tuple(h0.shape) != (D, B, H):
        raise ValueError(f"h0 must have shape (D, B, H) = ({D}, {B}, {H}), got {tuple(h0.shape)}")


def indrnn_recurrence(
    pre: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    recurrent_max_abs: float | None = None,
    recurrent_min_abs: float = 0.0,
    mask: Tensor | None = None,
    batch_first: bool = False,
    bidirectional: bool = False,
    method: str = "auto",
) -> tuple[Tensor, Tensor]:
    """The IndRNN recurrence of one layer, one or both directions, on given pre-activations.

    Args:
        pre: (T, B, D*H), or (B, T, D*H) with ``batch_first``: the input projection W x of
            every step, without bias, the forward direction's H features first. Any strides.
        weight_hh: (D*H,) recurrent weights, forward direction first.
        bias: (D*H,) or None, added inside the kernel.
        h0: (D, B, H) initial states (any float dtype), or None for zeros.
        recurrent_max_abs, recurrent_min_abs, mask, batch_first, method: as in
            :func:`indrnn_triton.fused_indrnn`.
        bidirectional: D = 2: the second half of the features runs from T-1 down to 0.

    Returns:
        ``(output, h_n)``: output (T, B, D*H) (or batch-major) in ``pre``'s dtype, freshly
        allocated and contiguous, each direction written straight into its half; h_n (D, B, H)
        in float32 (float64 for float64 inputs). With a mask, the backward direction's h_n is
        its state after each sequence's first real step.
    """
    if not isinstance(bidirectional, bool):
        raise TypeError(f"bidirectional must be a bool, got {bidirectional!r}")
    if not isinstance(pre, Tensor) or pre.dim() != 3:
        shape = tuple(pre.shape) if isinstance(pre, Tensor) else type(pre).__name__
        raise ValueError(f"pre must be a 3-dimensional tensor (T, B, D*H), got {shape}")
    D = 2 if bidirectional else 1
    T, B, DH = _tbh(pre, batch_first).shape
    if DH % D:
        raise ValueError(f"pre's last dimension must be 2*H for bidirectional=True, got {DH}")
    H = DH // D
    _check_vector("weight_hh", weight_hh, DH, "(D*H,)")
    _check_vector("bias", bias, DH, "(D*H,)")
    _check_states(h0, D, B, H)
    if D == 1:
        out, h_n = fused_indrnn(pre, weight_hh, bias, None if h0 is None else h0[0],
                                recurrent_max_abs=recurrent_max_abs,
                                recurrent_min_abs=recurrent_min_abs, mask=mask,
                                batch_first=batch_first, method=method)
        return out, h_n.unsqueeze(0)
    # Dtypes, devices, mask and clip bounds are checked on the forward direction's slices.
    r_max, r_min = _validate(pre[..., :H], weight_hh[:H], None if bias is None else bias[:H],
                             None if h0 is None else h0[0], mask, recurrent_max_abs,
                             recurrent_min_abs, False, batch_first, method)
    return recurrence(pre, weight_hh, bias, h0, mask, r_max, r_min, False, batch_first, True,
                      method)


def use_fused_projection(fused_projection: bool | None, device: torch.device,
                         dtype: torch.dtype, *, has_norm: bool) -> bool:
    """Whether :func:`indrnn_layer` runs the projection inside the recurrence kernel.

    ``fused_projection`` True or False forces the choice (True with a norm is an error: a norm
    between the GEMM and the recurrence needs pre in memory). None picks: today always the
    unfused path (one cuBLAS GEMM, then the recurrence kernel), on every device and dtype,
    because the fused kernel has not yet been measured on a GPU; on CPU the fused op is the
    GEMM and the recurrence anyway. Revisit with ``benchmarks/bench_layer.py --grid fused`` on
    a GPU: its notes list, per dtype, the shapes where the fused layer is faster.
    """
    if fused_projection is not None and not isinstance(fused_projection, bool):
        raise TypeError(f"fused_projection must be True, False or None, got {fused_projection!r}")
    if fused_projection and has_norm:
        raise ValueError(
            "fused_projection=True cannot apply norm: a norm of the pre-activations needs them "
            "in memory; pass norm=None or fused_projection=False/None"
        )
    if fused_projection is not None:
        return fused_projection
    return False


def indrnn_layer(
    x: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    recurrent_max_abs: float | None = None,
    recurrent_min_abs: float = 0.0,
    mask: Tensor | None = None,
    batch_first: bool = False,
    bidirectional: bool = False,
    norm: Callable[[Tensor], Tensor] | None = None,
    norm_position: str = "before",
    method: str = "auto",
    fused_projection: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """One IndRNN layer: h_t = relu(norm(W x_t) + b + clip(u) * h_{t-1}), both directions
    (or, with ``norm_position="after"``, output_t = norm(h_t) with h_t = relu(W x_t + b +
    clip(u) * h_{t-1})).

    ``W x`` is ONE GEMM (``F.linear``, no bias) over all steps and both directions; the bias
    is added inside the recurrence kernel.

    Args:
        x: (T, B, I), or (B, T, I) with ``batch_first``.
        weight_ih: (D*H, I): the forward direction's rows first, then the backward direction's.
        weight_hh: (D*H,). bias: (D*H,) or None. h0: (D, B, H) or None.
        recurrent_max_abs, recurrent_min_abs, mask, batch_first, bidirectional, method: as in
            :func:`indrnn_recurrence`.
        norm: optional function of a (T, B, D*H) tensor (e.g. ``lambda p:
            batch_norm_over_steps(p, mask, ...)``), applied where ``norm_position`` says.
        norm_position: ``"before"``: ``norm`` takes the pre-activations ``W x`` and the
            recurrence runs on its result; ``"after"``: the recurrence runs on ``W x`` and
            ``norm`` takes its output (the recurrence's state, h_n, is not normalised).
        fused_projection: True runs ``W x`` inside the recurrence kernel
            (:func:`indrnn_triton.fused_indrnn_linear`, both directions in one launch: pre is
            never stored), False the GEMM then the recurrence, None lets
            :func:`use_fused_projection` choose (today: unfused). Not with ``norm``.

    Returns:
        ``(output, h_n)``: output (T, B, D*H) or (B, T, D*H); h_n (D, B, H) float32.

    Example:
        >>> import torch
        >>> from indrnn_triton.functional import indrnn_layer
        >>> x = torch.randn(10, 3, 8)
        >>> w_ih, u = torch.randn(2 * 16, 8) * 0.2, torch.rand(2 * 16)
        >>> out, h_n = indrnn_layer(x, w_ih, u, bidirectional=True)
        >>> out.shape, h_n.shape
        (torch.Size([10, 3, 32]), torch.Size([2, 3, 16]))
    """
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a 3-dimensional tensor (T, B, I), got {shape}")
    if not isinstance(weight_ih, Tensor) or weight_ih.dim() != 2:
        raise ValueError("weight_ih must be a 2-dimensional tensor (D*H, I)")
    if weight_ih.shape[1] != x.shape[-1]:
        raise ValueError(
            f"weight_ih must have shape (D*H, I) with I = {x.shape[-1]} (x's last dimension), "
            f"got {tuple(weight_ih.shape)}"
        )
    if isinstance(weight_hh, Tensor) and weight_hh.shape[:1] != weight_ih.shape[:1]:
        raise ValueError(
            f"weight_hh must have shape (D*H,) = ({weight_ih.shape[0]},) to match weight_ih "
            f"{tuple(weight_ih.shape)}, got {tuple(weight_hh.shape)}"
        )
    check_norm_position(norm_position)
    # Checked here, before anything reads them (the unfused path zeroes padding inputs first).
    D = 2 if bidirectional is True else 1
    T, B = _tbh(x, batch_first is True).shape[:2]
    check_mask(mask, T, B, batch_first is True)
    if weight_ih.shape[0] % D == 0:  # else the recurrence's checks name weight_ih's rows
        _check_states(h0, D, B, weight_ih.shape[0] // D)
    if use_fused_projection(fused_projection, x.device, x.dtype, has_norm=norm is not None):
        if bidirectional:
            x, weight_ih, r_max, r_min = prepare(x, weight_ih, weight_hh, bias, h0, mask,
                                                 recurrent_max_abs, recurrent_min_abs, False,
                                                 batch_first, True)
            return linear_recurrence(x, weight_ih, weight_hh, bias, h0, mask, r_max, r_min,
                                     False, batch_first, True)
        out, h_n = fused_indrnn_linear(x, weight_ih, weight_hh, bias,
                                       None if h0 is None else h0[0],
                                       recurrent_max_abs=recurrent_max_abs,
                                       recurrent_min_abs=recurrent_min_abs, mask=mask,
                                       batch_first=batch_first)
        return out, h_n.unsqueeze(0)
    pre = F.linear(padding_free_input(x, mask), weight_ih)
    if norm is not None and norm_position == "before":
        pre = norm(pre)
    out, h_n = indrnn_recurrence(pre, weight_hh, bias, h0, recurrent_max_abs=recurrent_max_abs,
                                 recurrent_min_abs=recurrent_min_abs, mask=mask,
                                 batch_first=batch_first, bidirectional=bidirectional,
                                 method=method)
    if norm is not None and norm_position == "after":
        out = norm(out)
    return out, h_n


NORM_POSITIONS = ("before", "after")


def check_norm_position(norm_position) -> str:
    """``norm_position`` itself, or a ValueError naming the two placements."""
    if norm_position not in NORM_POSITIONS:
        raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, got {norm_position!r}")
    return norm_position


def padding_free_input(x: Tensor, mask: Tensor | None) -> Tensor:
    """A layer input whose padding steps (``mask`` == 0) cannot reach any gradient.

    The recurrence never reads padding steps, and neither do a batch norm's statistics, so the
    forward values are already independent of them. The backward is not: the weight gradient
    of the projection, dW = dpre^T x, multiplies the zero gradient of a padding step by its
    input (0 * NaN = NaN), and so does a norm's scale gradient. While autograd records, the
    input is therefore zeroed at padding steps (one pass over it, and one over its gradient);
    without autograd it is returned as it is, except under torch.jit.trace, whose graph would
    otherwise depend on the grad mode it was traced in (its check traces again without grad).
    """
    if mask is None or not (torch.is_grad_enabled() or torch.jit.is_tracing()):
        return x
    return x.masked_fill((mask == 0).unsqueeze(-1), 0)


def _inside_backward() -> bool:
    """True while the autograd engine runs a backward pass (not traceable: False when compiling,
    where a checkpointed recomputation still updates the running statistics)."""
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def batch_norm_over_steps(
    x: Tensor,
    mask: Tensor | None,
    weight: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    *,
    training: bool,
    bias: Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalisation of (T, B, F) or (B, T, F) features over the two leading dimensions.

    In training (or without running statistics) the mean and biased variance are taken over
    the real steps only (``mask`` nonzero, same two leading dimensions as ``x``; None = all
    steps), in float32 at least; padding never enters them. The running statistics, when
    given, are updated in place as ``torch.nn.BatchNorm1d`` does (unbiased variance, weight
    ``momentum``) and used in eval mode; they are left alone by a batch with fewer than two
    real steps, and when this runs inside a backward pass (the recomputation of activation
    checkpointing). ``weight`` scales the normalised
    features and ``bias`` shifts them (None: no shift; before the recurrence the IndRNN
    layer's own bias, added right after, is the shift). Padding positions are normalised too,
    with the real steps' statistics.
    """
    use_batch = training or running_mean is None
    # Activation checkpointing recomputing this forward inside backward: the first forward
    # already moved the running statistics, and a second update would count the batch twice.
    # The recomputation passes the same tensors (checkpointing compares what is saved) with a
    # zero update weight.
    recomputing = use_batch and running_mean is not None and _inside_backward()
    if mask is None or not use_batch:
        # Every step is real, or the running statistics are used: torch's fused batch norm.
        flat = F.batch_norm(x.flatten(0, 1), running_mean, running_var, weight, bias, use_batch,
                            0.0 if recomputing else momentum, eps)
        return flat.view(x.shape)
    acc = torch.promote_types(x.dtype, torch.float32)
    m = (mask != 0).unsqueeze(-1)
    count = m.sum(dtype=acc)
    n = count.clamp(min=1)
    mean = torch.where(m, x, 0).sum((0, 1), dtype=acc) / n
    var = torch.where(m, (x - mean).square(), 0).sum((0, 1)) / n
    if running_mean is not None and not recomputing:
        with torch.no_grad():
            # A batch with no real step has no statistics, and one with a single real step no
            # unbiased variance (torch.nn.BatchNorm1d refuses one value per feature in
            # training): they leave the running statistics alone, through a zero weight, not a
            # host sync.
            weight_ = (count > 1).to(running_mean.dtype) * momentum
            running_mean.lerp_(mean.to(running_mean.dtype), weight_)
            unbiased = var * (n / (n - 1).clamp(min=1))
            running_var.lerp_(unbiased.to(running_var.dtype), weight_)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    y = (x - mean) * scale
    return (y if bias is None else y + bias).to(x.dtype)


def dropout_over_time(x: Tensor, p: float, training: bool, batch_first: bool = False) -> Tensor:
    """Dropout of (T, B, F) (or (B, T, F)) features with ONE mask per sequence for all steps.

    As in the IndRNN papers: a feature dropped for a sequence stays dropped at every step. The
    kept features are scaled by 1 / (1 - p). Identity when not training or p == 0.
    """
    if not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
    if not training or p == 0.0:
        return x
    shape = (x.shape[0], 1, x.shape[2]) if batch_first else (1, x.shape[1], x.shape[2])
    keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
    return x * keep.div_(1.0 - p)
