"""Fixed per-call cost of the fused op on a tiny input, split into the wrapper and the work.

On a tiny input (default B=1, T=16, H=64) the time of a call is almost all fixed cost. For the
forward, and for forward+backward, it times three nested layers of one call:

- ``op``: the public call, :func:`indrnn_triton.fused_indrnn` (argument checks, the custom op's
  dispatch, autograd's graph and, for forward+backward, ``torch.autograd.grad``);
- ``impl``: the custom op's implementation called directly (``op._forward_impl`` /
  ``op._backward_impl``): output allocation, method choice and the launches;
- ``kernels``: the launchers alone (``triton_forward``/``triton_backward`` of the method, or the
  CPU path's ``cpu_forward``/``cpu_backward``) on preallocated buffers.

``wrapper`` = op - impl is what the Python and dispatch layers add; ``alloc+dispatch`` =
impl - kernels is allocation and the method choice. On a GPU every method is measured.

    PYTHONPATH=. python benchmarks/bench_overhead.py              # CPU (or the GPU if present)
    PYTHONPATH=. python benchmarks/bench_overhead.py --device cuda --out /tmp/results
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import (
    add_common_args,
    bench,
    bench_calls,
    environment,
    results_dir,
    setup,
    write_results,
)
from indrnn_triton import fused_indrnn, op

COLUMNS = ["device", "method", "mode", "op_us", "impl_us", "kernels_us", "wrapper_us",
           "alloc_dispatch_us"]


def _launchers(method: str, device: torch.device):
    if device.type == "cpu":  # the path CPU tensors take: compiled, or torch ops as fallback
        if op.cpu_uses_compiled and op.cpu_compiled.library() is not None:
            return op.cpu_compiled.compiled_forward, op.cpu_compiled.compiled_backward
        return op.cpu_forward, op.cpu_backward
    module = op.chunked if method == "chunked" else op.sequential
    return module.triton_forward, module.triton_backward


def measure(B: int, T: int, H: int, device: torch.device, method: str, budget_s: float) -> list:
    torch.manual_seed(0)
    pre = torch.randn(T, B, H, device=device, requires_grad=True)
    u = torch.rand(H, device=device, requires_grad=True)
    b = torch.zeros(H, device=device, requires_grad=True)
    g = torch.randn(T, B, H, device=device)
    flags = (None, 0.0, False, False, False, method)  # clip, reverse, batch_first, bidir, method
    use_triton = device.type == "cuda"
    fwd, bwd = _launchers(method, device)
    out = torch.empty_like(pre)
    h_n = torch.empty(B, H, device=device)
    grad_pre, grad_h0 = torch.empty_like(pre), torch.empty(B, H, device=device)
    with torch.no_grad():
        y = fused_indrnn(pre, u, b, method=method)[0]

    def op_fwd():
        with torch.no_grad():
            return fused_indrnn(pre, u, b, method=method)

    def impl_fwd():
        return op._forward_impl(pre.detach(), u.detach(), b.detach(), None, None, *flags,
                                use_triton=use_triton)

    def kernels_fwd():
        return fwd(pre.detach(), u.detach(), b.detach(), None, None, None, 0.0, False, out, h_n,
                   1)

    def op_fwdbwd():
        return torch.autograd.grad(fused_indrnn(pre, u, b, method=method)[0], (pre, u, b), g)

    def impl_fwdbwd():
        o, _ = impl_fwd()
        return op._backward_impl(g, None, o, u.detach(), None, None, *flags,
                                 use_triton=use_triton)

    def kernels_fwdbwd():
        kernels_fwd()
        return bwd(g, None, y, u.detach(), None, None, None, 0.0, False, grad_pre, grad_h0, 1)

    rows = []
    for mode, fns in (("fwd", (op_fwd, impl_fwd, kernels_fwd)),
                      ("fwdbwd", (op_fwdbwd, impl_fwdbwd, kernels_fwdbwd))):
        # On a GPU, wall clock over back-to-back calls (bench_calls): do_bench's events would
        # hide the host work that overlaps its cache flush, and host work is what this measures.
        timer = bench_calls if device.type == "cuda" else bench
        us = [1000 * timer(f, device, budget_s=budget_s) for f in fns]
        rows.append(dict(device=str(device), method=method, mode=mode, op_us=us[0],
                         impl_us=us[1], kernels_us=us[2], wrapper_us=us[0] - us[1],
                         alloc_dispatch_us=us[1] - us[2]))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--shape", type=int, nargs=3, default=(1, 16, 64), metavar=("B", "T", "H"))
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timing per figure")
    args = p.parse_args(argv)
    device = setup(args)
    out = results_dir(device, args.out)
    B, T, H = args.shape
    methods = ("sequential", "chunked") if device.type == "cuda" else ("auto",)
    rows = [r for m in methods for r in measure(B, T, H, device, m, args.budget)]
    md = write_results(out, "bench_overhead", rows, COLUMNS, environment(device), notes=[
        f"Per-call cost at B={B}, T={T}, H={H} (float32), microseconds, median (GPU: wall "
        "clock per call over batches of 20 back-to-back calls between synchronisations). op = "
        "fused_indrnn (forward: under no_grad; fwdbwd: with torch.autograd.grad); impl = the "
        "custom op's implementation called directly; kernels = the launchers (CPU: the compiled "
        "CPU path) on preallocated buffers. wrapper = op - impl; alloc_dispatch = impl - kernels.",
    ])
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
