"""The fused IndRNN op: argument checks, the torch.library custom op, autograd, the public function.

``fused_indrnn`` validates its arguments and calls ``indrnn_triton::indrnn_forward``, a
torch.library custom op with a CPU implementation (:mod:`indrnn_triton.cpu`), the Triton kernels
registered for CUDA (:mod:`indrnn_triton.kernels`), a fake implementation for
torch.compile, and a backward that is itself a custom op (``indrnn_triton::indrnn_backward``).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import _alloc, cpu_compiled
from .cpu import cpu_backward, cpu_forward

try:
    from . import kernels
    from .kernels import chunked, sequential
except ImportError:  # Triton is optional off Linux; CUDA tensors then need it, CPU ones do not.
    kernels = chunked = sequential = None

# With TRITON_INTERPRET=1 set before import, CPU tensors run the Triton kernels through Triton's
# interpreter instead of the CPU path. Read at call time, so tests can switch it per test.
cpu_uses_triton = kernels is not None and kernels.INTERPRET
# Otherwise CPU tensors take the compiled kernels (indrnn_triton/csrc, built on first use; they
# fall back to the torch CPU path if they cannot be built), or with False the torch CPU path.
cpu_uses_compiled = True
# What "auto" means for CPU tensors run through the interpreter (no SMs to count); the tests set
# it to "chunked" to run every op test through the chunked kernels.
cpu_auto_method = "sequential"

_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
METHODS = ("auto", "sequential", "chunked")

# "auto" thresholds, per SM: documented estimates from the sequential kernels' H200 run
# (benchmarks/results/nvidia-h200/bench_op.md, 132 SMs, T = 1024), not yet measured against the
# chunked kernels. The sequential kernels reach 0.93 of copy bandwidth (forward, fp32) at
# B x H = 262144 (~2000 elements per SM), but only 0.63 forward / 0.44 backward at 65536 (~500
# per SM; bf16: 0.26 / 0.22) and 0.35 / 0.13 at 16384 (~124 per SM; bf16: 0.09 / 0.07): too few
# independent chains to hide memory latency. The chunked kernels move 3/2 (forward) and 5/3
# (backward) of the minimum bytes, so at best ~0.6 of copy: they should win below ~0.5.
# benchmarks/bench_op.py on a GPU writes the thresholds its measured grid supports
# (measured_thresholds): replace these with them, citing that run.
CHUNKED_MAX_ELEMS_PER_SM = {torch.float32: 256, torch.float64: 256,
                            torch.float16: 512, torch.bfloat16: 512}
# Below this many steps a few chunks of 64 cannot pay for two extra launches. Per dtype, like
# the elements per SM, so that each dtype's measured thresholds can be written as they are.
CHUNKED_MIN_T = {torch.float32: 256, torch.float64: 256, torch.float16: 256, torch.bfloat16: 256}


def choose_method(elements: int, T: int, dtype: torch.dtype, sm_count: int) -> str:
    """The method ``"auto"`` runs on a GPU with ``sm_count`` SMs for ``elements`` = B x H x D
    independent recurrences of ``T`` steps in ``dtype``: ``"chunked"`` when the sequential
    kernels would leave the GPU waiting on memory latency, else ``"sequential"``."""
    if T >= CHUNKED_MIN_T[dtype] and elements <= CHUNKED_MAX_ELEMS_PER_SM[dtype] * sm_count:
        return "chunked"
    return "sequential"


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The recurrence runs in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _clip_in_range(r_max: float | None, acc: torch.dtype) -> float | None:
    """A bound at or above the accumulation dtype's largest value clips nothing: None, so that
    every path behaves alike (the CPU path could not even represent it)."""
    return None if r_max is not None and r_max >= torch.finfo(acc).max else r_max


def _tbh(x: Tensor, batch_first: bool) -> Tensor:
    """(T, B, ...) view of a time-major or batch-major tensor; never copies."""
    return x.transpose(0, 1) if batch_first else x


def _backend(x: Tensor, D: int, method: str, use_triton: bool):
    """(forward, backward) launchers for (T, B, D*H) view x: the CPU path, or the Triton
    kernels of ``method`` ("auto" resolved by :func:`choose_method`; on CPU tensors, under the
    interpreter, it means ``cpu_auto_method``)."""
    if not use_triton:
        if cpu_uses_compiled:
            return cpu_compiled.compiled_forward, cpu_compiled.compiled_backward
        return cpu_forward, cpu_backward
    if kernels is None:
        raise RuntimeError(
            f"fused_indrnn on {x.device} needs Triton, which is not installed (pip install triton)"
        )
    if method == "auto":
        if x.device.type == "cuda":
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            method = choose_method(x.shape[1] * x.shape[2], x.shape[0], x.dtype, sms)
        else:
            method = cpu_auto_method
    module = chunked if method == "chunked" else sequential
    return module.triton_forward, module.triton_backward


def _state_shape(B: int, H: int, D: int) -> tuple[int, ...]:
    return (2, B, H) if D == 2 else (B, H)


def _forward_impl(pre, weight_hh, bias, h0, mask, r_max, r_min, reverse, batch_first,
                  bidirectional, method, use_triton):
    check_no_transform_running()
    D = 2 if bidirectional else 1
    x = _tbh(pre, batch_first)
    T, B, H = x.shape[0], x.shape[1], x.shape[2] // D
    out = _alloc.empty(pre.shape, dtype=pre.dtype, device=pre.device)
    h_n = _alloc.empty(_state_shape(B, H, D), dtype=_acc_dtype(pre.dtype), device=pre.device)
    if T == 0 or B == 0 or H == 0:
        h_n.copy_(h0) if h0 is not None else h_n.zero_()
        return out, h_n
    forward, _ = _backend(x, D, method, use_triton)
    r_max = _clip_in_range(r_max, h_n.dtype)
    m = None if mask is None else _tbh(mask, batch_first)
    # Each direction reads and writes its own strided half: no flip, no concatenation.
    forward(x, weight_hh, bias, h0, m, r_max, r_min, reverse, _tbh(out, batch_first), h_n, D)
    return out, h_n


def _backward_impl(grad_out, grad_hn, out, weight_hh, h0, mask, r_max, r_min, reverse,
                   batch_first, bidirectional, method, use_triton):
    D = 2 if bidirectional else 1
    o = _tbh(out, batch_first)
    T, B, H = o.shape[0], o.shape[1], o.shape[2] // D
    acc = _acc_dtype(out.dtype)
    grad_pre = _alloc.empty(out.shape, dtype=out.dtype, device=out.device)
    grad_h0 = _alloc.empty(_state_shape(B, H, D), dtype=acc, device=out.device)
    if T == 0 or B == 0 or H == 0:
        grad_h0.copy_(grad_hn) if grad_hn is not None else grad_h0.zero_()
        grad_pre.zero_()
        zeros = torch.zeros(D * H, dtype=acc, device=out.device)
        return grad_pre, zeros, zeros.clone(), grad_h0
    _, backward = _backend(o, D, method, use_triton)
    r_max = _clip_in_range(r_max, acc)
    g = None if grad_out is None else _tbh(grad_out, batch_first)
    m = None if mask is None else _tbh(mask, batch_first)
    du, db = backward(g, grad_hn, o, weight_hh, h0, m, r_max, r_min, reverse,
                      _tbh(grad_pre, batch_first), grad_h0, D)
    return grad_pre, du, db, grad_h0


# The custom ops cover one direction, or two (``bidirectional``: pre (T, B, 2H), the second half
# running from T-1 down to 0, h0/h_n (2, B, H)) so that a bidirectional layer writes both halves
# of one output and one input gradient. ``fused_indrnn`` exposes the one-direction form;
# ``functional.indrnn_recurrence`` the two-direction one.
@torch.library.custom_op("indrnn_triton::indrnn_forward", mutates_args=())
def _forward_op(
    pre: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None,
    h0: Tensor | None,
    mask: Tensor | None,
    recurrent_max_abs: float | None,
    recurrent_min_abs: float,
    reverse: bool,
    batch_first: bool,
    bidirectional: bool,
    method: str = "auto",
) -> tuple[Tensor, Tensor]:
    check_no_forward_ad_level()
    return _forward_impl(pre, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs,
                         reverse, batch_first, bidirectional, method, use_triton=cpu_uses_triton)


@_forward_op.register_kernel("cuda")
def _forward_cuda(pre, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs, reverse,
                  batch_first, bidirectional, method="auto"):
    check_no_forward_ad_level()
    return _forward_impl(pre, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs,
                         reverse, batch_first, bidirectional, method, use_triton=True)


@_forward_op.register_fake
def _forward_fake(pre, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs, reverse,
                  batch_first, bidirectional, method="auto"):
    check_no_forward_ad_level()
    D = 2 if bidirectional else 1
    T, B, DH = _tbh(pre, batch_first).shape
    return torch.empty_like(pre, memory_format=torch.contiguous_format), pre.new_empty(
        _state_shape(B, DH // D, D), dtype=_acc_dtype(pre.dtype)
    )


@torch.library.custom_op("indrnn_triton::indrnn_backward", mutates_args=())
def _backward_op(
    grad_out: Tensor | None,
    grad_hn: Tensor | None,
    out: Tensor,
    weight_hh: Tensor,
    h0: Tensor | None,
    mask: Tensor | None,
    recurrent_max_abs: float | None,
    recurrent_min_abs: float,
    reverse: bool,
    batch_first: bool,
    bidirectional: bool,
    method: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _backward_impl(grad_out, grad_hn, out, weight_hh, h0, mask, recurrent_max_abs,
                          recurrent_min_abs, reverse, batch_first, bidirectional, method,
                          use_triton=cpu_uses_triton)


@_backward_op.register_kernel("cuda")
def _backward_cuda(grad_out, grad_hn, out, weight_hh, h0, mask, recurrent_max_abs,
                   recurrent_min_abs, reverse, batch_first, bidirectional, method="auto"):
    return _backward_impl(grad_out, grad_hn, out, weight_hh, h0, mask, recurrent_max_abs,
                          recurrent_min_abs, reverse, batch_first, bidirectional, method,
                          use_triton=True)


@_backward_op.register_fake
def _backward_fake(grad_out, grad_hn, out, weight_hh, h0, mask, recurrent_max_abs,
                   recurrent_min_abs, reverse, batch_first, bidirectional, method="auto"):
    D = 2 if bidirectional else 1
    T, B, DH = _tbh(out, batch_first).shape
    acc = _acc_dtype(out.dtype)
    return (
        torch.empty_like(out, memory_format=torch.contiguous_format),
        out.new_empty(DH, dtype=acc),
        out.new_empty(DH, dtype=acc),
        out.new_empty(_state_shape(B, DH // D, D), dtype=acc),
    )


def _setup_context(ctx, inputs, output):
    pre, weight_hh, bias, h0, mask, *flags = inputs
    out, _ = output
    # The ReLU derivative is [h > 0], so the output and h0 are all the activations kept.
    ctx.save_for_backward(out, weight_hh, h0, mask)
    ctx.flags = tuple(flags)  # clip bounds, reverse, batch_first, bidirectional, method
    ctx.bias_dtype = None if bias is None else bias.dtype


def _input_grads(ctx, weight_hh, h0, grad_pre, du, db, dh0) -> tuple:
    """The forward's input gradients from the backward's outputs, in the inputs' dtypes."""
    return (
        grad_pre,
        du.to(weight_hh.dtype),
        None if ctx.bias_dtype is None else db.to(ctx.bias_dtype),
        None if h0 is None else dh0.to(h0.dtype),
        None,  # mask
        *(None,) * len(ctx.flags),
    )


def _backward(ctx, grad_out, grad_hn):
    out, weight_hh, h0, mask = ctx.saved_tensors
    grads = _backward_op(grad_out, grad_hn, out, weight_hh, h0, mask, *ctx.flags)
    return _input_grads(ctx, weight_hh, h0, *grads)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(
        "the IndRNN ops have first-order gradients only: a gradient of their gradient (double "
        "backward, e.g. a gradient penalty through the recurrence) is not implemented")


# Reached only through a gradient of a gradient (torch.autograd.grad(..., create_graph=True),
# then backward through its result); without it torch's message asked to register a formula.
_backward_op.register_autograd(_no_double_backward)


class _EagerRecurrence(torch.autograd.Function):
    """The custom op's forward and autograd formula without the dispatcher, for eager calls on
    plain CPU/CUDA tensors (see :func:`recurrence`): the same implementation functions, saved
    tensors and flags, minus tens of microseconds of Python dispatch per call. Gradients that
    autograd would only fill with zeros (an unused output) arrive as None, which the kernels
    skip. Under ``create_graph=True`` the backward goes through the custom op, so that a double
    backward raises its error (no formula registered) instead of treating the gradient as a
    constant."""

    @staticmethod
    def forward(ctx, pre, weight_hh, bias, h0, mask, *flags):
        ctx.set_materialize_grads(False)
        ctx.use_triton = _use_triton(pre)
        output = _forward_impl(pre, weight_hh, bias, h0, mask, *flags, use_triton=ctx.use_triton)
        _setup_context(ctx, (pre, weight_hh, bias, h0, mask, *flags), output)
        return output

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        if torch.is_grad_enabled() or batched(grad_out, grad_hn):  # create_graph=True, vmap
            return _backward(ctx, grad_out, grad_hn)
        out, weight_hh, h0, mask = ctx.saved_tensors
        grads = _backward_impl(grad_out, grad_hn, out, weight_hh, h0, mask, *ctx.flags,
                               use_triton=ctx.use_triton)
        return _input_grads(ctx, weight_hh, h0, *grads)


def batched(*grads) -> bool:
    """Whether a backward got a vmap batch of output gradients (``is_grads_batched=True``,
    ``jacobian(vectorize=True)``). The kernels take plain tensors, so the eager backwards then
    go through the custom ops, which torch runs once per gradient of the batch."""
    return any(g is not None and (torch._C._functorch.is_legacy_batchedtensor(g)
                                  or torch._C._functorch.is_batchedtensor(g)) for g in grads)


def use_custom_op(tensors) -> bool:
    """Whether a call with these tensor arguments (the first one defined) must go through the
    registered custom op: under torch.compile, FakeTensor and other dispatch modes, tensor
    subclasses, meta and other devices, and torch.jit.trace, which records ops and not the
    eager path's writes into its buffers."""
    return (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
            or torch.jit.is_tracing() or tensors[0].device.type not in ("cpu", "cuda")
            or any(t is not None and type(t) not in _PLAIN for t in tensors))


def _use_triton(t: Tensor) -> bool:
    """Whether ``t``'s device runs the Triton kernels (CUDA; CPU only under the interpreter)."""
    return t.device.type == "cuda" or cpu_uses_triton


_PLAIN = (Tensor, torch.nn.Parameter)


def route(custom_op, eager, impl, args, n_tensors: int):
    """Run an op on checked arguments ``args``, whose first ``n_tensors`` are its tensors (the
    last of them the mask, never differentiated): the registered ``custom_op`` where torch's
    machinery needs it (:func:`use_custom_op`), the same computation through the
    autograd.Function ``eager`` when a gradient is wanted, and ``impl`` alone otherwise."""
    tensors = args[:n_tensors]
    if use_custom_op(tensors):
        return custom_op(*args)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors[:-1]):
        return eager.apply(*args)
    return impl(*args, use_triton=_use_triton(args[0]))


def recurrence(pre, weight_hh, bias, h0, mask, r_max, r_min, reverse, batch_first,
               bidirectional, method):
    """The op on checked arguments (:func:`route`: :func:`_forward_op`,
    :class:`_EagerRecurrence`, :func:`_forward_impl`)."""
    return route(_forward_op, _EagerRecurrence, _forward_impl,
                 (pre, weight_hh, bias, h0, mask, r_max, r_min, reverse, batch_first,
                  bidirectional, method), 5)


def _check_float_tensor(name: str, t, ndim: int) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INPUT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}"
        )
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def _check_real(name: str, value, *, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    # Comparisons rather than math.isfinite: under torch.compile(dynamic=True) a module's float
    # attributes arrive as symbolic floats, which math.isfinite cannot take.
    if not -math.inf < value < math.inf:
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_clip(recurrent_max_abs, recurrent_min_abs) -> tuple[float | None, float]:
    """Validate the clip bounds (r > 0 finite or None; 0 <= m <= r); return them as floats."""
    r_max = _check_real("recurrent_max_abs", recurrent_max_abs, allow_none=True)
    if r_max is not None and r_max <= 0:
        raise ValueError(f"recurrent_max_abs must be > 0 (or None for no clip), got {r_max}")
    r_min = _check_real("recurrent_min_abs", recurrent_min_abs, allow_none=False)
    if r_min < 0:
        raise ValueError(f"recurrent_min_abs must be >= 0, got {r_min}")
    if r_max is not None and r_min > r_max:
        raise ValueError(
            f"recurrent_min_abs ({r_min}) must not exceed recurrent_max_abs ({r_max})"
        )
    return r_max, r_min


def _check_reverse_mode_only(*tensors) -> None:
    """Refuse what the op would get silently wrong: it has a reverse-mode formula only.

    Forward-mode AD would see a zero (or no) tangent, and torch.func's transforms cannot run
    the op's autograd (custom-op autograd has no functorch rule). Both raise here instead.
    """
    if torch.compiler.is_compiling():
        return
    check_no_transform_running()
    if forward_ad._current_level >= 0 and any(
        t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors
    ):
        raise NotImplementedError(_FORWARD_AD_ERROR)


_TRANSFORM_ERROR = (
    "fused_indrnn does not support torch.func transforms (grad, vjp, jvp, jacrev, jacfwd, vmap, "
    "hessian), also under torch.compile: use reverse-mode autograd instead, loss.backward() or "
    "torch.autograd.grad (torch.autograd.functional.jacobian for Jacobians)"
)
_FORWARD_AD_ERROR = (
    "fused_indrnn does not support forward-mode AD (torch.autograd.forward_ad dual tensors, "
    "torch.func.jvp / jacfwd), also under torch.compile: use reverse-mode autograd instead, "
    "loss.backward() or torch.autograd.grad"
)


def check_no_transform_running() -> None:
    """No torch.func transform running: the eager check of :func:`_check_reverse_mode_only`,
    and the kernels' entry, because a ``torch.compile``d
    ``torch.func`` transform on the "eager" backend runs the graph's custom op under the
    transform's interpreter, with wrapped tensors the kernels cannot read (it failed with
    "Cannot access data pointer of Tensor that doesn't have storage"). Eager calls never get
    here under a transform: the wrapper refused them."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        raise NotImplementedError(_TRANSFORM_ERROR)


def check_no_forward_ad_level() -> None:
    """No forward-AD level open, where the custom ops run (their fake implementations while a
    graph is traced, their CPU and CUDA implementations when called): the tangents cannot be
    read there, so any open level refuses, rather than torch dropping the tangent.

    Tracing: inside ``torch.compile`` the wrapper's check cannot run, and torch traced the op
    under forward-mode AD (``torch.func.jvp``/``jacfwd`` compiled, or a compiled function
    called on dual tensors) as if its tangent were zero. Running: a compiled transform whose
    graph broke at the op runs the op's custom op eagerly after the wrapper's check was traced
    and skipped (a compiled jvp on the "eager" backend returned a zero tangent); a compiled
    function run inside a user's ``dual_level`` calls the custom op there too. Eager calls of
    the op itself never reach the custom op (:func:`recurrence`): under a dual level, plain
    tensors still run."""
    if forward_ad._current_level >= 0:
        raise NotImplementedError(_FORWARD_AD_ERROR)


def check_method(method) -> str:
    """``method`` itself, or a ValueError naming the methods."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    return method


def check_mask(mask, T: int, B: int, batch_first: bool) -> None:
    """A ValueError or TypeError naming ``mask`` unless it is None or a (T, B) / (B, T) tensor of
    bool or integers. Quantized integers are refused: the kernels would read their stored
    values, not the numbers they represent."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex or mask.is_quantized:
        raise TypeError(
            f"mask must be bool or an integer dtype (nonzero = real step), got {mask.dtype}"
        )
    want = (B, T) if batch_first else (T, B)
    if tuple(mask.shape) != want:
        name = "(B, T)" if batch_first else "(T, B)"
        raise ValueError(f"mask must have shape {name} = {want}, got {tuple(mask.shape)}")


def _validate(pre, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs, reverse,
              batch_first, method):
    for name, flag in (("reverse", reverse), ("batch_first", batch_first)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    check_method(method)
    _check_float_tensor("pre", pre, 3)
    layout = "(B, T, H)" if batch_first else "(T, B, H)"
    T, B, H = _tbh(pre, batch_first).shape
    _check_float_tensor("weight_hh", weight_hh, 1)
    if weight_hh.shape[0] != H:
        raise ValueError(
            f"weight_hh must have shape (H,) = ({H},) to match pre {layout} = "
            f"{tuple(pre.shape)}, got {tuple(weight_hh.shape)}"
        )
    if bias is not None:
        _check_float_tensor("bias", bias, 1)
        if bias.shape[0] != H:
            raise ValueError(f"bias must have shape (H,) = ({H},), got {tuple(bias.shape)}")
    if h0 is not None:
        _check_float_tensor("h0", h0, 2)
        if tuple(h0.shape) != (B, H):
            raise ValueError(f"h0 must have shape (B, H) = ({B}, {H}), got {tuple(h0.shape)}")
    check_mask(mask, T, B, batch_first)
    for name, t in (("weight_hh", weight_hh), ("bias", bias), ("h0", h0), ("mask", mask)):
        if t is not None and t.device != pre.device:
            raise ValueError(
                f"{name} is on {t.device} but pre is on {pre.device}: put them on one device"
            )
    _check_reverse_mode_only(pre, weight_hh, bias, h0)
    return check_clip(recurrent_max_abs, recurrent_min_abs)


def fused_indrnn(
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
    method: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Run the IndRNN recurrence h_t = relu(pre_t + bias + clip(u) * h_{t-1}) over all steps.

    One fused kernel does the bias add, the clip of u, the element-wise recurrence, the ReLU,
    padding and direction, with the state kept in float32 (float64 for float64 inputs) across
    the whole sequence. Differentiable in ``pre``, ``weight_hh``, ``bias`` and ``h0``.

    Args:
        pre: the input projection W x for every step, without bias: (T, B, H), or (B, T, H)
            with ``batch_first=True``. float32, float16 or bfloat16 (float64 on the CPU path
            and for checks); any strides: it is read in place.
        weight_hh: (H,) recurrent weights u, one per hidden unit.
        bias: (H,) bias added inside the kernel, or None.
        h0: (B, H) initial state, or None for zeros.
        recurrent_max_abs: r > 0 to clip u to [-r, r] inside the kernel (the gradient of u is
            zero where it was clipped), or None. The papers use r = 2 ** (1 / T).
        recurrent_min_abs: m >= 0; |u| is raised to m keeping its sign (0 stays 0).
        mask: (T, B), or (B, T) with ``batch_first``, bool or integers, nonzero = real step.
            On a padding step the state is carried unchanged and the output there equals the
            carried state, so left and right padding both work and ``h_n`` is the state after
            each sequence's last real step. Values of ``pre`` at padding steps are never read:
            NaN or Inf there changes no output and no gradient. NaN at a real step propagates,
            as through ``torch.relu``.
        reverse: run time from T-1 down to 0 (the backward direction of a bidirectional layer),
            without flipping memory.
        batch_first: ``pre`` (and ``mask``) are batch-major.
        method: how the Triton kernels walk time. ``"sequential"``: one program per (batch,
            hidden) tile runs all T steps; ``"chunked"``: time is cut into chunks run in
            parallel, each chunk's steps composed into one map (exact up to float rounding),
            for few B x H and long T; ``"auto"`` (default): picked per call from B x H, T, the
            dtype and the GPU's SM count (:func:`indrnn_triton.op.choose_method`). On CPU
            tensors the CPU path (the compiled C++ kernels, or their torch fallback) runs
            whatever the method, unless ``TRITON_INTERPRET=1``
            was set before import: then ``"chunked"`` runs the chunked Triton kernels through
            Triton's interpreter, and ``"auto"`` the sequential ones.

    Returns:
        ``(output, h_n)``: output in the layout and dtype of ``pre``; ``h_n`` (B, H) in float32
        (float64 for float64 inputs), the kernel's own state, to carry between calls.

    Reverse-mode autograd only: forward-mode AD and ``torch.func`` transforms raise
    ``NotImplementedError``. ``weight_hh``, ``bias`` and ``h0`` may be strided or expanded views.

    Example:
        >>> import torch
        >>> from indrnn_triton import fused_indrnn
        >>> x = torch.randn(16, 4, 32)                      # (T, B, input features)
        >>> w_ih = torch.randn(64, 32) * 0.1
        >>> u, b = torch.rand(64), torch.zeros(64)
        >>> out, h_n = fused_indrnn(torch.nn.functional.linear(x, w_ih), u, b,
        ...                         recurrent_max_abs=2 ** (1 / 16))
        >>> out.shape, h_n.shape
        (torch.Size([16, 4, 64]), torch.Size([4, 64]))
    """
    r_max, r_min = _validate(pre, weight_hh, bias, h0, mask, recurrent_max_abs,
                             recurrent_min_abs, reverse, batch_first, method)
    return recurrence(pre, weight_hh, bias, h0, mask, r_max, r_min, reverse, batch_first,
                      False, method)
