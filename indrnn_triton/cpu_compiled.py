"""The compiled CPU path: ``csrc/indrnn_cpu.cpp``, built on first use and called through ctypes.

One pass over time per call with the state in cache, vectorised over H, threads over batch and
directions (see the C++ file). The source uses no torch headers, so the build is a single
compiler call (about 20 s on 2 cores), done by ``torch.utils.cpp_extension.load`` (needs ``ninja``
and a C++20 compiler, as torch's extensions: tested with GCC 12). The library is cached in
torch's extension folder, ``$TORCH_EXTENSIONS_DIR/<name>/`` or by default
``~/.cache/torch_extensions/py<ver>_cpu/<name>/``; the name carries a hash of the source and the
instruction set, so every version builds once per machine and a stale build is never loaded.

If the build or the load fails (no compiler, no ninja, a read-only cache), the op falls back to
the torch CPU path (:mod:`indrnn_triton.cpu`) with one warning per process.
"""

from __future__ import annotations

import ctypes
import hashlib
import struct
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from . import _alloc
from .cpu import cpu_backward, cpu_forward

SOURCE = Path(__file__).with_name("csrc") / "indrnn_cpu.cpp"

# dtype codes of the C++ file (enum Dtype)
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


# The C++ Params struct, packed in one call: 8 int64 (T, B, H, D, reverse, has_max,
# num_threads, stream_min), 2 doubles (max_abs, min_abs), then 13 Views (data pointer, dtype
# code, 3 strides), every field 8 bytes, so native alignment adds no padding.
_VIEWS = ("pre", "out", "grad_out", "grad_pre", "u", "bias", "h0", "mask", "h_n", "grad_hn",
          "grad_h0", "du", "db")
_PARAMS = struct.Struct("@8q2d" + "P4q" * len(_VIEWS))
_NO_VIEW = (0, 0, 0, 0, 0)

# Outputs (out in the forward, the input gradient in the backward) of at least this many bytes
# are written with streaming stores, which skip the caches and the read of each line that a
# normal store does first. Measured on the 2-core development machine (2026-12-02, one thread,
# benchmarks/README.md): at T=1000, B=32, H=256 (31 MiB in float32) streaming made the forward
# 1.6x faster and the backward 1.2x; at the quick start's 2.5 MiB the op alone was also faster,
# but a whole training step was not (21-22 ms either way): the next layer's GEMM reads the
# output while it is still in L2/L3. Small outputs therefore stay cached.
STREAM_MIN_BYTES = 8 << 20


def _flags() -> tuple[list[str], str]:
    """Compiler flags and a tag naming the instruction set they target."""
    # No trapping math: GCC then turns the ReLU selects into blends and vectorises the loops
    # (the kernels never read the floating-point exception flags).
    flags = ["-O3", "-fno-trapping-math"]
    if sys.platform.startswith("linux"):  # the OpenMP runtime torch itself loads (libgomp)
        flags.append("-fopenmp")
    # AVX2 (with FMA and F16C, which every AVX2 CPU has) when the CPU running torch has it;
    # the tag keeps builds for different CPUs apart in a shared home directory (and the flags
    # are part of the build's name).
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return flags, "base"
    flags += ["-mavx2", "-mfma", "-mf16c"]
    # PREFETCHW (Linux calls it 3dnowprefetch), for the loops' prefetches of the rows they will
    # write: without it GCC emits a read prefetch there.
    if "3dnowprefetch" in cpu_features():
        flags.append("-mprfchw")
    return flags, "avx2"


def cpu_features(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _build() -> ctypes.CDLL:
    from torch.utils.cpp_extension import load

    flags, isa = _flags()
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    path = load(name=f"indrnn_cpu_{isa}_{digest}", sources=[str(SOURCE)], extra_cflags=flags,
                extra_ldflags=[f for f in flags if f == "-fopenmp"], is_python_module=False)
    lib = ctypes.CDLL(path)
    for fn in (lib.indrnn_cpu_forward, lib.indrnn_cpu_backward):
        fn.argtypes = [ctypes.c_char_p]  # the packed Params (read only)
        fn.restype = None
    return lib


def _first_error(e: Exception) -> str:
    """The compiler's first error line from a build failure's (long) message, else its end."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or [""])[0 if errors else -1]


_lib: ctypes.CDLL | None = None
_failed = False
_lock = threading.Lock()


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on the first call; None (after one warning) if they cannot
    be built or loaded."""
    global _lib, _failed
    with _lock:
        if _lib is None and not _failed:
            try:
                _lib = _build()
            except Exception as e:  # any build or load failure: the torch path still works
                _failed = True
                warnings.warn(
                    "indrnn_triton: could not build the compiled CPU kernels "
                    f"({type(e).__name__}: {_first_error(e)}); using the slower "
                    "torch CPU path. The build needs a C++ compiler (GCC >= 12 or Clang >= 15) "
                    "and ninja (pip install ninja).",
                    RuntimeWarning, stacklevel=2,
                )
    return _lib


def _view(t: Tensor | None, code: int | None = None) -> tuple[int, ...]:
    if t is None:
        return _NO_VIEW
    if t.dim() == 2 and code is None:  # a (B, H) state: (1, B, H)
        return (t.data_ptr(), _DTYPE_CODES[t.dtype], 0, *t.stride())
    return (t.data_ptr(), _DTYPE_CODES[t.dtype] if code is None else code,
            *(*t.stride(), 0, 0)[:3])


def _params(x: Tensor, D: int, reverse: bool, r_max: float | None, r_min: float, *,
            mask: Tensor | None, **views: Tensor | None) -> bytes:
    """The Params struct for one call (absent views: null pointers)."""
    T, B, DH = x.shape
    fields = [T, B, DH // D, D, reverse, r_max is not None, torch.get_num_threads(),
              STREAM_MIN_BYTES, 0.0 if r_max is None else r_max, r_min]
    for name in _VIEWS:
        if name == "mask":
            fields += _NO_VIEW if mask is None else _view(mask, mask.element_size())
        else:
            fields += _view(views.get(name))
    return _PARAMS.pack(*fields)


def compiled_forward(x, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs,
                     reverse, out, h_n, D):
    """Same contract as :func:`indrnn_triton.cpu.cpu_forward`."""
    lib = library()
    if lib is None:
        return cpu_forward(x, weight_hh, bias, h0, mask, recurrent_max_abs, recurrent_min_abs,
                           reverse, out, h_n, D)
    p = _params(x, D, reverse, recurrent_max_abs, recurrent_min_abs, mask=mask, pre=x, out=out,
                u=weight_hh, bias=bias, h0=h0, h_n=h_n)
    lib.indrnn_cpu_forward(p)


def compiled_backward(grad_out, grad_hn, out, weight_hh, h0, mask, recurrent_max_abs,
                      recurrent_min_abs, reverse, grad_pre, grad_h0, D):
    """Same contract as :func:`indrnn_triton.cpu.cpu_backward`."""
    lib = library()
    if lib is None:
        return cpu_backward(grad_out, grad_hn, out, weight_hh, h0, mask, recurrent_max_abs,
                            recurrent_min_abs, reverse, grad_pre, grad_h0, D)
    du = _alloc.empty(weight_hh.shape[0], dtype=grad_h0.dtype, device=out.device)
    db = _alloc.empty(weight_hh.shape[0], dtype=grad_h0.dtype, device=out.device)
    # The kernels read grad_out in out's dtype (autograd always passes it so).
    g = None if grad_out is None else grad_out.to(out.dtype)
    p = _params(out, D, reverse, recurrent_max_abs, recurrent_min_abs, mask=mask, out=out,
                grad_out=g, grad_pre=grad_pre, u=weight_hh, h0=h0, grad_hn=grad_hn,
                grad_h0=grad_h0, du=du, db=db)
    lib.indrnn_cpu_backward(p)
    return du, db
