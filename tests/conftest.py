"""Test-suite setup.

TRITON_INTERPRET=1 is set before anything imports indrnn_triton, so its Triton kernels are built
for Triton's interpreter and can run on CPU tensors. By default CPU tensors still take the
compiled CPU path (fast); the ``backend`` fixture runs a test once per path.
"""

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import indrnn_triton._alloc as alloc  # noqa: E402
import indrnn_triton.op as op  # noqa: E402


@pytest.fixture(autouse=True)
def _cpu_path_by_default(monkeypatch):
    monkeypatch.setattr(op, "cpu_uses_triton", False)


@pytest.fixture
def poison(monkeypatch):
    """Fill every buffer the op allocates with NaN, so unwritten elements fail the checks."""

    def nan_empty(*args, **kwargs):
        t = torch.empty(*args, **kwargs)
        return t.fill_(math.nan) if t.dtype.is_floating_point else t

    monkeypatch.setattr(alloc, "empty", nan_empty)


@pytest.fixture(params=["torch", "compiled", "compiled-streaming", "triton", "chunked"])
def backend(request, monkeypatch):
    """Run the test on the torch CPU path, the compiled CPU path (twice: as it runs, and with
    every output written by its streaming stores, which it otherwise keeps for outputs of 8 MiB
    and more), the sequential Triton kernels and the chunked ones (interpreted; "auto" then
    means the chunked method)."""
    compiled = request.param.startswith("compiled")
    if compiled and op.cpu_compiled.library() is None:
        pytest.fail("the compiled CPU kernels did not build (see the warning)")
    if request.param == "compiled-streaming":
        monkeypatch.setattr(op.cpu_compiled, "STREAM_MIN_BYTES", 0)
    if request.param in ("triton", "chunked"):
        if op.kernels is None:
            pytest.fail("Triton kernels not importable (pip install triton)")
        if not op.kernels.INTERPRET:
            pytest.skip("TRITON_INTERPRET=0: the kernels are built for the GPU, not interpreted "
                        "on CPU tensors (tests/test_cuda.py runs them on a GPU)")
    monkeypatch.setattr(op, "cpu_uses_triton", request.param in ("triton", "chunked"))
    monkeypatch.setattr(op, "cpu_uses_compiled", compiled)
    monkeypatch.setattr(op, "cpu_auto_method",
                        "chunked" if request.param == "chunked" else "sequential")
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
