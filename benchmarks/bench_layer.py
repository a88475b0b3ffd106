"""Forward+backward of an IndRNN layer against nn.RNN(relu), nn.GRU and nn.LSTM.

Every model has input size = hidden size = H, 1 or 2 layers, time-major input (T, B, H). One
timed call runs the forward and the backward to the input and every parameter
(``torch.autograd.grad`` against a random output gradient), or with ``--forward-only`` the
forward under ``torch.no_grad``. On a GPU the torch layers run cuDNN. ``indrnn_speedup`` is a
model's time over IndRNN's in the same run and configuration. ``indrnn_fused`` is the same
IndRNN with the input projection fused into the recurrence kernel (``fused_projection=True``).

    PYTHONPATH=. python benchmarks/bench_layer.py --quick      # CPU, a couple of minutes
    PYTHONPATH=. python benchmarks/bench_layer.py              # GPU grid on CUDA
    PYTHONPATH=. python benchmarks/bench_layer.py --grid fused --layers 1 --dtypes float32 \
        bfloat16 --models indrnn_fused rnn_relu gru lstm [--forward-only]   # issue 11 targets
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from benchmarks.common import (
    add_common_args,
    autotuned,
    bench,
    environment,
    grid_shapes,
    peak_bytes,
    plot_sweeps,
    progress,
    results_dir,
    saved_bytes,
    setup,
    tile_lines,
    write_results,
)
from indrnn_triton import IndRNN

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODELS = {
    # Both paths pinned: the baseline stays GEMM + recurrence whatever the heuristic picks.
    "indrnn": lambda H, L: IndRNN(H, H, num_layers=L, fused_projection=False),
    "indrnn_fused": lambda H, L: IndRNN(H, H, num_layers=L, fused_projection=True),
    "rnn_relu": lambda H, L: nn.RNN(H, H, num_layers=L, nonlinearity="relu"),
    "gru": lambda H, L: nn.GRU(H, H, num_layers=L),
    "lstm": lambda H, L: nn.LSTM(H, H, num_layers=L),
}
T_SWEEP = (256, 512, 1024, 4096)
GRIDS = {
    "quick": dict(T_sweep=T_SWEEP, BH=(8, 64), T=1024, BH_sweep=((8, 64), (32, 128)),
                  budget_s=0.3),
    "cpu": dict(T_sweep=T_SWEEP, BH=(32, 256), T=1024, BH_sweep=((8, 128), (32, 256)),
                budget_s=0.5),
    "gpu": dict(T_sweep=T_SWEEP, BH=(64, 512), T=1024,
                BH_sweep=((16, 512), (64, 512), (256, 512), (128, 1024)),
                budget_s=0.2),
    # The fused projection's targets (issue 11): B = 64, T = 1024, I = H = 512, and where it
    # may lose (few rows per W tile, short T).
    "fused": dict(T_sweep=(256, 1024), BH=(64, 512), T=1024, BH_sweep=((16, 512), (256, 512)),
                  budget_s=0.2),
}


def run_case(B, T, H, layers, dtype, device, budget_s, models, forward_only=False) -> list[dict]:
    dt = DTYPES[dtype]
    torch.manual_seed(0)
    x = torch.randn(T, B, H, dtype=dt, device=device, requires_grad=True)
    g = torch.randn(T, B, H, dtype=dt, device=device)
    rows, base_ms = [], None
    for name in models:
        model = MODELS[name](H, layers).to(device=device, dtype=dt)
        inputs = (x, *model.parameters())

        def step(model=model, inputs=inputs):
            if forward_only:
                with torch.no_grad():
                    return model(x)
            return torch.autograd.grad(model(x)[0], inputs, g)

        ms = bench(step, device, budget_s=budget_s)
        base_ms = ms if name == "indrnn" else base_ms
        peak = peak_bytes(step, device)
        tiles = fused_tiles(step) if device.type == "cuda" and name == "indrnn_fused" else None
        saved = saved_bytes(lambda model=model: model(x))
        rows.append(dict(
            dtype=dtype, layers=layers, B=B, T=T, H=H, BxH=B * H, model=name,
            timed="forward" if forward_only else "forward+backward", ms=ms,
            indrnn_speedup=None if base_ms is None or name == "indrnn" else ms / base_ms,
            saved_MB=saved / 2**20, peak_MB=peak / 2**20, tiles=tiles,
        ))
    return rows


def _fused_kernel():
    try:
        from indrnn_triton.kernels import fused_linear
    except ImportError:  # no Triton: nothing was tuned
        return None
    return fused_linear


def fused_tiles(fn) -> str | None:
    """The fused projection kernel's config its autotuner picked for one more call of ``fn``."""
    kernel = _fused_kernel()
    return None if kernel is None else autotuned(
        fn, {"fused": kernel._fused_linear_fwd_kernel.fn})


def fused_tile_lines(rows: list[dict]) -> list[str]:
    """:func:`benchmarks.common.tile_lines` of the fused projection kernel."""
    kernel = _fused_kernel()
    if kernel is None or not any(r.get("tiles") for r in rows):
        return []
    return tile_lines(rows, {"fused": kernel.gpu_configs()})


def headline(rows: list[dict]) -> list[str]:
    """IndRNN's speedup over each model, per layer count, at T = 1024 on the T sweep's B x H."""
    lines = []
    for r in rows:
        if r["T"] == 1024 and r["indrnn_speedup"] is not None and r["model"] != "indrnn_fused":
            lines.append(
                f"{r['layers']} layer(s), B={r['B']}, H={r['H']}, T=1024, {r['dtype']}: IndRNN "
                f"{r['indrnn_speedup']:.1f}x faster than {r['model']}"
            )
    return lines


# Issue 11's targets for the fused projection against GEMM + recurrence kernel, bfloat16.
FUSED_TARGETS = {("forward", 64, 1024, 512): 1.3, ("forward+backward", 64, 1024, 512): 1.1}


# Timing noise: a fused/unfused speed ratio within 5 % of 1 is "even", neither a win nor a loss.
EVEN = 0.05


def fused_lines(rows: list[dict]) -> list[str]:
    """The fused projection against the unfused layer (GEMM, then the recurrence kernel) in the
    same run: its speedup at each case, issue 11's targets, per layer count, timing and dtype
    where it wins, and per dtype the choice :func:`indrnn_triton.functional.use_fused_projection`
    can express (it sees the device, dtype and norm, not the shape): fused where it is at least
    even everywhere and faster somewhere, unfused where it loses somewhere and wins nowhere,
    else the shapes on each side (a rule would need B, T or H)."""
    fused = [r for r in rows if r["model"] == "indrnn_fused" and r["indrnn_speedup"]]
    lines, wins = [], {}
    for r in fused:
        gain = 1 / r["indrnn_speedup"]
        target = FUSED_TARGETS.get((r["timed"], r["B"], r["T"], r["H"]))
        verdict = ("" if target is None or r["dtype"] != "bfloat16" or r["layers"] != 1 else
                   f" (target {target}x: {'met' if gain >= target else 'missed'})")
        lines.append(f"fused projection, {r['timed']}, {r['layers']} layer(s), {r['dtype']}, "
                     f"B={r['B']}, T={r['T']}, H={r['H']}: **{gain:.2f}x** the speed of GEMM + "
                     f"recurrence{verdict}")
        side = "faster" if gain >= 1 + EVEN else "slower" if gain <= 1 - EVEN else "even"
        wins.setdefault((r["layers"], r["timed"], r["dtype"]), []).append(
            (side, f"B={r['B']} T={r['T']} H={r['H']}"))
    for (layers, timed, dtype), cases in wins.items():
        by = {side: [c for s, c in cases if s == side] for side in ("faster", "even", "slower")}
        lines.append(f"**fused projection, {layers} layer(s), {timed}, {dtype}: faster at "
                     f"{len(by['faster'])} of {len(cases)} shapes** (" + "; ".join(
                         f"{side}: {', '.join(c) or 'none'}" for side, c in by.items()) + ")")
    for dtype in dict.fromkeys(r["dtype"] for r in fused):
        sides = {s for (_, _, d), cases in wins.items() if d == dtype for s, _ in cases}
        if "slower" not in sides and "faster" in sides:
            choice = "fused (at least even at every timed shape, faster at some)"
        elif "faster" not in sides:
            choice = "unfused (never faster by more than the noise)"
        else:
            choice = ("no per-dtype rule fits: fused wins at some shapes and loses at others "
                      "(see above); a rule would need the shape")
        lines.append(f"**use_fused_projection for {dtype} on this device: {choice}**")
    return lines


COLUMNS = ["dtype", "layers", "B", "T", "H", "model", "timed", "ms", "indrnn_speedup",
           "saved_MB", "peak_MB", "tiles"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--quick", action="store_true", help="small B and H (CPU smoke run)")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["float32"],
                   help="model and input dtype (the whole model is converted)")
    p.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--models", nargs="+", default=[m for m in MODELS if m != "indrnn_fused"],
                   choices=list(MODELS))
    p.add_argument("--grid", choices=list(GRIDS), help="shape grid (default: quick with "
                   "--quick, else gpu on CUDA, cpu on CPU)")
    p.add_argument("--forward-only", action="store_true",
                   help="time the forward under torch.no_grad instead of forward+backward")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.layers):
        raise ValueError(f"--layers must be >= 1, got {args.layers}")
    device = setup(args)
    grid = GRIDS[args.grid or ("quick" if args.quick else "gpu" if device.type == "cuda"
                               else "cpu")]
    models = ["indrnn", *[m for m in args.models if m != "indrnn"]]
    out = results_dir(device, args.out)

    cases = [(B, T, H, L, d) for (B, T, H) in grid_shapes(grid) for L in args.layers
             for d in args.dtypes]
    rows: list[dict] = []
    env = environment(device)
    for L in args.layers:  # first-call costs (imports, op registration) land outside the figures
        for d in args.dtypes:
            run_case(16, 4, grid["BH"][1], L, d, device, 0.01, models, args.forward_only)
    for B, T, H, L, d in progress(cases, "bench_layer"):
        rows += run_case(B, T, H, L, d, device, grid["budget_s"], models, args.forward_only)
        # Rewritten after every case, so a run cut short by a time limit keeps what it measured.
        md = write_results(out, "bench_layer", rows, COLUMNS, env, notes=[
            "indrnn_speedup = the model's time / IndRNN's time, same run and configuration; "
            "timed: forward + backward to the input and all parameters, or the forward alone "
            "under no_grad; saved_MB = bytes autograd keeps for backward; peak_MB = peak "
            "allocated during the call (CUDA allocator; on CPU, op outputs counted by a "
            "dispatch mode); tiles = the fused projection kernel's autotuned config (BLOCK_Bx"
            "BLOCK_H, BLOCK_K, CT steps per chunk, warps, Triton's num_stages).",
            *([f"float32 GEMMs: TF32 in cuBLAS (IndRNN's F.linear) {env['tf32_cublas']}, in "
               f"cuDNN (nn.RNN/GRU/LSTM) {env['tf32_cudnn']}"
               + (" (torch's defaults): the float32 rows are not like for like, TF32 favours "
                  "cuDNN." if env["tf32_cublas"] != env["tf32_cudnn"] else ".")]
              if "tf32_cudnn" in env else []),
            "\n".join(f"- {line}" for line in headline(rows)),
            *fused_lines(rows),
            *fused_tile_lines(rows),
        ])
    if not args.no_plots:
        plot_sweeps(rows, out, "bench_layer", grid, ys=["ms", "indrnn_speedup"],
                    panels="layers", series=["model", "dtype"],
                    title=f"IndRNN layer vs torch RNNs, "
                    f"{'forward' if args.forward_only else 'fwd+bwd'}, {env['device']}")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
