"""Two fixes to Triton's interpreter (TRITON_INTERPRET=1 only) that the fused kernel needs.

- ``tl.associative_scan`` with a user combine function runs one ELEMENT at a time in Python,
  minutes for one (CT, BLOCK_B, BLOCK_H) tile. It is replaced with the same left fold along the
  scan axis, one combine call per step on whole slices (combine functions are element-wise): the
  same operations in the same order, so the same results.
- ``tl.dot`` on bfloat16 multiplies the raw 16-bit patterns (the interpreter stores bfloat16 as
  uint16). bfloat16 operands are widened to float32 first, exactly, which is what a tensor core
  computes with a float32 accumulator.

Installed only where the interpreter has the expected shape; otherwise it is left alone.
"""

from __future__ import annotations

import numpy as np


def _slice_scan(self, input):
    axis = self.axis
    datas = [a.handle.data for a in input]
    outs = [np.empty_like(d) for d in datas]
    acc = None
    for i in range(datas[0].shape[axis]):
        step = tuple(self.to_tensor(np.take(d, i, axis=axis), a.dtype)
                     for d, a in zip(datas, input, strict=True))
        if acc is None:
            acc = step
        else:
            ret = self.combine_fn.fn(*acc, *step)
            acc = ret if isinstance(ret, tuple) else (ret,)
        at = (slice(None),) * axis + (i,)
        for o, a in zip(outs, acc, strict=True):
            o[at] = a.handle.data
    return [self.to_tensor(o, a.dtype) for o, a in zip(outs, input, strict=True)]


def _widening_dot(create_dot):
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    def widen(h):
        if h.dtype != tl.bfloat16:
            return h
        return TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def dot(self, a, b, d, *args, **kwargs):
        return create_dot(self, widen(a), widen(b), d, *args, **kwargs)

    dot.widens_bf16 = True
    return dot


def install() -> None:
    try:
        from triton.runtime.interpreter import InterpreterBuilder, ScanOps, TensorHandle  # noqa: F401
    except ImportError:
        return
    if callable(getattr(ScanOps, "generic_scan", None)) and hasattr(ScanOps, "to_tensor"):
        ScanOps.generic_scan = _slice_scan
    dot = getattr(InterpreterBuilder, "create_dot", None)
    if callable(dot) and not getattr(dot, "widens_bf16", False):
        InterpreterBuilder.create_dot = _widening_dot(dot)
