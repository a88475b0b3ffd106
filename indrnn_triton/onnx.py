"""ONNX export of the IndRNN custom ops, for ``torch.onnx.export(..., dynamo=True)``.

``torch.export`` records every IndRNN layer as one of this package's custom ops,
``indrnn_triton::indrnn_forward`` (the recurrence) or ``indrnn_triton::indrnn_linear_forward``
(the recurrence with the input projection fused in). The ONNX exporter has no translation for
them; this module provides one, written with ONNX Script:

- the projection (fused op only) is one ``MatMul`` for all steps, the bias is added to every
  step at once, and the clip of the recurrent weights is a few element-wise ops;
- the recurrence itself is one ONNX ``Scan`` over time whose body is
  ``h = Where(mask_t, Relu(a_t + u * h), h)``, so the exported graph runs for any sequence
  length and batch size. A bidirectional layer runs both directions in the same ``Scan``: the
  backward half of the features is flipped in time before the loop and flipped back after it.

The state is computed in float32 (float64 for float64 inputs), as the op does: 16-bit inputs
are cast up before the loop, the output is cast back to the input's dtype and ``h_n`` keeps the
compute dtype.

Limitations (onnxruntime 1.32, CPU): its Scan fails on an empty sequence (T = 0), which the
PyTorch op accepts; it has no bfloat16 MatMul, so a bfloat16 model's projection does not run
there (the recurrence itself takes bfloat16: it casts to float32 first).

Usage::

    from indrnn_triton.onnx import export_onnx
    export_onnx(model, (x,), "model.onnx", dynamic_shapes=({0: "batch", 1: "time"},))

or pass :func:`custom_translation_table` to ``torch.onnx.export(..., dynamo=True)`` yourself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, Union

import numpy as np
import onnx_ir as ir
import torch
from onnxscript import BOOL, DOUBLE, FLOAT, graph, script
from onnxscript import opset18 as op
from onnxscript.values import Opset

# Importing the package (this module's parent) registered the custom ops the table names.

__all__ = ["custom_translation_table", "export_onnx", "OPSET", "DOMAIN"]

# The ONNX opset the translations are written against: the one the torch exporter's own
# operator library targets. Exports at later opsets (the exporter's default is 20) work too.
OPSET = 18
# Domain of the ONNX functions that hold the Scan. The exporter inlines them (torch 2.13, with
# optimize True or False): the saved model has plain Scan nodes and no local functions.
DOMAIN = "pkg.indrnn_triton"

_functions = Opset(DOMAIN, 1)
_INT64_MIN = np.iinfo(np.int64).min
# The state's dtype inside the functions. The annotations also tell the exporter how many
# outputs a function has.
TState = TypeVar("TState", bound=Union[FLOAT, DOUBLE])  # noqa: UP007 (onnxscript reads Union)


# ----------------------------------------------------------------------------------------------
# The recurrence over time: ONNX functions with a Scan. Everything that depends on Python-level
# options (bias, h0, clip, direction, layout, dtype) is resolved outside them, so two functions
# cover every case: with and without a padding mask.
#
# Shapes: pre (T, B, D, H) in the compute dtype with the bias already added, and every direction
# already oriented so that the Scan walks forwards; u (D, H) clipped; h0 (B, D, H); mask
# (T, B, D, 1) bool. Returns out (T, B, D, H) and h_n (B, D, H).
# ----------------------------------------------------------------------------------------------


@script(_functions, default_opset=op)
def indrnn_scan(pre: TState, u: TState, h0: TState) -> tuple[TState, TState]:
    """h_t = relu(pre_t + u * h_{t-1}) for t = 0..T-1; out_t = h_t."""

    @graph()
    def step(h, a):  # the state, then this step's slice of pre; u from the enclosing scope
        h_new = op.Relu(op.Add(a, op.Mul(u, h)))
        out = op.Identity(h_new)  # a graph output may not be listed twice
        return h_new, out

    h_n, out = op.Scan(h0, pre, body=step, num_scan_inputs=1)
    return out, h_n


@script(_functions, default_opset=op)
def indrnn_scan_masked(
    pre: TState, u: TState, h0: TState, mask: BOOL
) -> tuple[TState, TState]:
    """As :func:`indrnn_scan`, but at a padding step (mask_t False) the state is carried
    unchanged and the output repeats it."""

    @graph()
    def step(h, a, m):
        h_new = op.Where(m, op.Relu(op.Add(a, op.Mul(u, h))), h)
        out = op.Identity(h_new)
        return h_new, out

    h_n, out = op.Scan(h0, pre, mask, body=step, num_scan_inputs=2)
    return out, h_n


# ----------------------------------------------------------------------------------------------
# Helpers used while tracing a translation (inputs are the exporter's symbolic ir.Values).
# ----------------------------------------------------------------------------------------------


def _ints(*values: int):
    return op.Constant(value=ir.tensor(np.array(values, dtype=np.int64)))


def _scalar(value: float, dtype: ir.DataType):
    return op.Constant(value=ir.tensor(np.array(value, dtype=dtype.numpy())))


def _compute_dtype(dtype: ir.DataType) -> ir.DataType:
    """The dtype the recurrence runs in: float64 for float64 inputs, else float32."""
    return ir.DataType.DOUBLE if dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT


def _cast(x, dtype: ir.DataType):
    return x if x.dtype == dtype else op.Cast(x, to=dtype)


def _swap01(x, rank: int = 3):
    """(T, B, ...) <-> (B, T, ...): swap the first two axes of a tensor of rank ``rank``."""
    return op.Transpose(x, perm=[1, 0, *range(2, rank)])


def _flip_time(x):
    """x[::-1] along axis 0, for any length."""
    return op.Slice(x, _ints(-1), _ints(_INT64_MIN), _ints(0), _ints(-1))


def _orient(x, D: int, reverse: bool):
    """Make every direction of (T, B, D, ...) tensor ``x`` run forwards in time: the op runs
    direction d backwards when ``reverse`` or d == 1. Its own inverse."""
    if reverse:
        return _flip_time(x)
    if D == 1:
        return x
    forward = op.Slice(x, _ints(0), _ints(1), _ints(2))
    backward = _flip_time(op.Slice(x, _ints(1), _ints(2), _ints(2)))
    return op.Concat(forward, backward, axis=2)


def _clip(u, recurrent_max_abs: float | None, recurrent_min_abs: float, dtype: ir.DataType):
    """clamp(sign(u) * max(|u|, m), -r, r), as ``reference.clip_recurrent_weight`` (0 stays
    0). A bound r at or above the compute dtype's largest value (inf included) clips nothing."""
    if recurrent_min_abs > 0:
        m = _scalar(recurrent_min_abs, dtype)
        u = op.Where(op.Less(op.Abs(u), m), op.Mul(op.Sign(u), m), u)
    top = float(np.finfo(dtype.numpy()).max)
    if recurrent_max_abs is not None and recurrent_max_abs < top:
        u = op.Clip(u, _scalar(-recurrent_max_abs, dtype), _scalar(recurrent_max_abs, dtype))
    return u


def _recurrence(pre, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs,
                reverse, batch_first, bidirectional, out_dtype):
    """The recurrence on ``pre`` (T, B, D*H) or (B, T, D*H) in any float dtype; returns
    (output in ``out_dtype``, h_n in the compute dtype) as the custom op does."""
    D = 2 if bidirectional else 1
    # From the op's input dtype: a MatMul's result (the fused op's pre) has none while traced.
    compute = _compute_dtype(out_dtype)
    # H from the parameter's static shape rather than -1 in the Reshapes below: onnxruntime
    # cannot infer a -1 dimension of an empty tensor (T = 0 or B = 0).
    DH = weight_hh.shape[0] if weight_hh.shape is not None else None
    H = DH // D if isinstance(DH, int) else -1

    x = _swap01(pre) if batch_first else pre  # (T, B, D*H)
    x = _cast(x, compute)
    if bias is not None:  # the op adds the bias in the compute dtype, before u * h
        x = op.Add(x, _cast(bias, compute))
    x = op.Reshape(x, _ints(0, 0, D, H))  # (T, B, D, H)
    x = _orient(x, D, reverse)

    u = _clip(_cast(weight_hh, compute), recurrent_max_abs, recurrent_min_abs, compute)
    u = op.Reshape(u, _ints(D, H))  # (D, H)

    if h0 is None:
        h = op.Expand(_scalar(0.0, compute), op.Shape(x, start=1))  # zeros (B, D, H)
    elif D == 1:
        h = op.Unsqueeze(_cast(h0, compute), _ints(1))  # (B, H) -> (B, 1, H)
    else:
        h = op.Transpose(_cast(h0, compute), perm=[1, 0, 2])  # (2, B, H) -> (B, 2, H)

    if mask is None:
        out, h_n = indrnn_scan(x, u, h)
    else:
        m = op.Cast(mask, to=ir.DataType.BOOL)  # nonzero = real step
        m = _swap01(m, rank=2) if batch_first else m  # (T, B)
        m = op.Unsqueeze(m, _ints(2, 3))  # (T, B, 1, 1)
        if D == 2 and not reverse:
            m = op.Expand(m, _ints(1, 1, 2, 1))  # the backward half sees the flipped mask
        m = _orient(m, D, reverse)
        out, h_n = indrnn_scan_masked(x, u, h, m)

    out = _orient(out, D, reverse)
    out = op.Reshape(out, _ints(0, 0, D * H if H > 0 else -1))  # (T, B, D*H)
    out = _swap01(out) if batch_first else out
    if out_dtype != compute:
        out = op.Cast(out, to=out_dtype)
    if D == 1:
        h_n = op.Squeeze(h_n, _ints(1))  # (B, H)
    else:
        h_n = op.Transpose(h_n, perm=[1, 0, 2])  # (2, B, H)
    return out, h_n


# ----------------------------------------------------------------------------------------------
# The translations, with the custom ops' signatures (the exporter passes ir.Values for tensors,
# None for absent optional tensors and Python values for the rest).
# ----------------------------------------------------------------------------------------------


def indrnn_forward(pre, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs,
                   reverse, batch_first, bidirectional, method="auto"):
    """ONNX translation of ``indrnn_triton::indrnn_forward``. ``method`` only picks GPU
    kernels and has no effect here."""
    return _recurrence(pre, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs,
                       reverse, batch_first, bidirectional, pre.dtype)


def indrnn_linear_forward(x, weight_ih, weight_hh, bias, h0, mask, recurrent_max_abs,
                          recurrent_min_abs, reverse, batch_first, bidirectional):
    """ONNX translation of ``indrnn_triton::indrnn_linear_forward``: the projection
    ``x @ weight_ih^T`` (one MatMul, in x's dtype as ``F.linear``), then the recurrence."""
    pre = op.MatMul(x, op.Transpose(weight_ih, perm=[1, 0]))
    return _recurrence(pre, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs,
                       reverse, batch_first, bidirectional, x.dtype)


def custom_translation_table() -> dict[Callable, Callable]:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: merge it
    with your own entries if you have any."""
    return {
        torch.ops.indrnn_triton.indrnn_forward.default: indrnn_forward,
        torch.ops.indrnn_triton.indrnn_linear_forward.default: indrnn_linear_forward,
    }


def export_onnx(
    model: torch.nn.Module,
    args: tuple[Any, ...] = (),
    f=None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    dynamic_shapes=None,
    opset_version: int | None = None,
    custom_translation_table_extra: Mapping[Callable, Callable] | None = None,
    **export_kwargs: Any,
) -> torch.onnx.ONNXProgram:
    """``torch.onnx.export(model, args, f, dynamo=True, ...)`` with the IndRNN translations.

    Args:
        model: the module to export (any module whose forward calls the IndRNN ops).
        args, kwargs: example inputs, as for ``torch.export.export``.
        f: path to save the ``.onnx`` file to, or None to only return the program.
        dynamic_shapes: as for ``torch.onnx.export``, e.g. ``({0: "batch", 1: "time"},)``
            for a batch-first input (the names become the ONNX inputs' dimension names).
            Without it the ONNX inputs keep the traced sizes.
        opset_version: the ONNX opset (default: the exporter's, 20 in torch 2.13; 18 =
            :data:`OPSET` or later).
        custom_translation_table_extra: further translations for other ops.
        export_kwargs: passed on to ``torch.onnx.export`` (input_names, optimize, ...).

    Returns:
        The ``torch.onnx.ONNXProgram``.
    """
    table = custom_translation_table()
    if custom_translation_table_extra:
        table.update(custom_translation_table_extra)
    return torch.onnx.export(
        model, args, f, kwargs=kwargs, dynamo=True, dynamic_shapes=dynamic_shapes,
        opset_version=opset_version, custom_translation_table=table, **export_kwargs,
    )
