"""Speed and memory of the fused IndRNN op against autograd through a naive per-step loop.

For each (B, T, H), dtype and mode (``fwd``, ``bwd``, ``fwdbwd``) it times, in one run:

- ``fused``: :func:`indrnn_triton.fused_indrnn` with ``method="auto"`` (Triton kernels on a GPU,
  the compiled CPU path on CPU); ``fused_sequential`` and ``fused_chunked`` force the method
  (the ``auto_picks`` column says which one ``"auto"`` chose);
- ``fused_torch`` (CPU only): the same op on its torch CPU path, a few torch ops per time step
  (the fallback when the compiled path cannot be built);
- ``naive_index``: autograd through ``for t in range(T): h = relu(pre[t] + b + u * h)``, the loop
  most users write. ``pre[t]``'s backward materialises a full (T, B, H) gradient at every step,
  so its backward costs O(T^2 B H);
- ``naive_unbind``: the same loop over ``for p in pre:`` (``unbind``), one gradient stack;
- ``copy``: ``dst.copy_(src)`` of one (T, B, H) tensor, the bandwidth the op is held against.

Achieved GB/s count the minimum bytes: forward reads pre and writes the output (2 T B H
elements), backward reads the output and its gradient and writes pre's gradient (3 T B H),
fwdbwd both (5 T B H). ``copy frac`` is that figure over the copy's GB/s (2 T B H elements moved).
Memory: ``saved MB`` are the bytes autograd keeps for backward; ``peak MB`` the peak allocated
during the call above what was allocated before it (see :func:`benchmarks.common.peak_bytes`).

    PYTHONPATH=. python benchmarks/bench_op.py                 # quick grid on CPU, full on GPU
    PYTHONPATH=. python benchmarks/bench_op.py --preset gpu --out /tmp/results
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

import indrnn_triton.op as op
from benchmarks.common import (
    add_common_args,
    autotuned,
    bench,
    bench_interleaved,
    environment,
    grid_shapes,
    peak_bytes,
    plot,
    plot_sweeps,
    progress,
    results_dir,
    saved_bytes,
    setup,
    tile_lines,
    write_results,
)
from indrnn_triton import fused_indrnn
from indrnn_triton.op import CHUNKED_MAX_ELEMS_PER_SM, CHUNKED_MIN_T, choose_method

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("fwd", "bwd", "fwdbwd")
# Elements of (T, B, H) moved at the minimum by each mode (see the module docstring).
MIN_ELEMS = {"fwd": 2, "bwd": 3, "fwdbwd": 5, "copy": 2}
# The case issue 2 sets the CPU target on (fused forward+backward >= 30x the naive loop).
TARGET_CASE = dict(T=1000, B=32, H=256, dtype="float32", mode="fwdbwd")
TARGET_NAMES = {"fused_torch": "the op's torch CPU path (`fused_torch`)",
                "naive_index": "autograd through `naive_index`",
                "naive_unbind": "autograd through `naive_unbind`"}

# Grids: a sweep over T at a fixed B x H, and a sweep over B x H at a fixed T. Naive loops are
# capped (largest T and B x H; naive_index also at T^2 B H elements of gradient materialisation)
# to keep a run within minutes.
PRESETS = {
    "quick": dict(
        T_sweep=(100, 300, 1000, 3000), BH=(32, 256), T=1000,
        BH_sweep=((8, 128), (32, 256), (64, 512)), extra=(), budget_s=0.5,
        naive_max_T=3000, naive_max_BH=64 * 512, naive_index_max_work=1000 * 1000 * 32 * 256,
    ),
    # Issue 10's target shapes alone, for a short GPU run: B x H = 65536 at T = 1024 (also the
    # B=64, H=1024 forward+backward target), B x H = 16384, and the two long sequences.
    "gpu_targets": dict(
        T_sweep=(), BH=(64, 1024), T=1024, BH_sweep=((64, 1024), (16, 1024)),
        extra=((4, 32768, 1024), (1, 100_000, 256)), budget_s=0.1,
        naive_max_T=1024, naive_max_BH=64 * 1024, naive_index_max_work=1024 * 1024 * 64 * 1024,
    ),
    "gpu": dict(
        T_sweep=(256, 1024, 4096), BH=(64, 1024), T=1024,
        BH_sweep=((16, 1024), (64, 512), (64, 1024), (128, 1024), (256, 1024)),
        # The issue-10 long-sequence rows: small B x H, T >= 16384 (chunked territory).
        extra=((64, 2048, 1024), (32, 1000, 256), (4, 32768, 1024), (1, 100_000, 256)),
        budget_s=0.1,
        naive_max_T=1024, naive_max_BH=64 * 1024, naive_index_max_work=1024 * 1024 * 64 * 1024,
    ),
}


def naive_index(pre, u, b):
    """The per-step loop as usually written: index the time step."""
    h = pre.new_zeros(pre.shape[1:])
    outs = []
    for t in range(pre.shape[0]):
        h = torch.relu(pre[t] + b + u * h)
        outs.append(h)
    return torch.stack(outs)


def naive_unbind(pre, u, b):
    """The per-step loop iterating over the time steps (``unbind``)."""
    h = pre.new_zeros(pre.shape[1:])
    outs = []
    for p in pre:
        h = torch.relu(p + b + u * h)
        outs.append(h)
    return torch.stack(outs)


def fused(pre, u, b):
    return fused_indrnn(pre, u, b)[0]


@contextmanager
def torch_cpu_path():
    """Send CPU tensors through the op's torch CPU path instead of the compiled one."""
    saved, op.cpu_uses_compiled = op.cpu_uses_compiled, False
    try:
        yield
    finally:
        op.cpu_uses_compiled = saved


def fused_sequential(pre, u, b):
    return fused_indrnn(pre, u, b, method="sequential")[0]


def fused_chunked(pre, u, b):
    return fused_indrnn(pre, u, b, method="chunked")[0]


METHODS = {"fused": fused, "fused_sequential": fused_sequential, "fused_chunked": fused_chunked,
           "fused_torch": fused, "naive_index": naive_index, "naive_unbind": naive_unbind}
FUSED = ("fused", "fused_sequential", "fused_chunked")


def auto_picks(B: int, T: int, H: int, dtype: torch.dtype, device: torch.device) -> str:
    """The method ``"auto"`` runs for this case ("cpu path" off the GPU)."""
    if device.type != "cuda":
        return "cpu path"
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return choose_method(B * H, T, dtype, sms)


def _timed(rows: list[dict]) -> dict[tuple, float]:
    """{(dtype, B, T, H, mode, method): ms} of the rows that were timed."""
    return {(r["dtype"], r["B"], r["T"], r["H"], r["mode"], r["method"]): r["ms"]
            for r in rows if r.get("ms") is not None}


def auto_check(rows: list[dict]) -> list[str]:
    """Per case and mode: is "auto" within 10 % of the faster of the two forced methods?"""
    lines, worst = [], 0.0
    timed = _timed(rows)
    for key, auto_ms in timed.items():
        if key[-1] != "fused":
            continue
        seq, chk = (timed.get(key[:-1] + (m,)) for m in ("fused_sequential", "fused_chunked"))
        if seq is None or chk is None:
            continue
        ratio = auto_ms / min(seq, chk)
        worst = max(worst, ratio)
        if ratio > 1.1:
            lines.append(f"auto is {ratio:.2f}x the better method at {key[:-1]}")
    if not worst:
        return ["**\"auto\" not checked**: no case and mode was timed with fused (\"auto\"), "
                "fused_sequential and fused_chunked all three."]
    verdict = "within" if worst <= 1.1 else "NOT within"
    return [f"**\"auto\" is {verdict} 10 % of the better of sequential/chunked on every timed "
            f"case (worst: {worst:.2f}x of the better)**", *lines]


def measured_thresholds(rows: list[dict], sm_count: int) -> dict[str, dict]:
    """The "auto" thresholds the timed grid supports, per dtype: the rule of
    :func:`indrnn_triton.op.choose_method` (chunked when T >= min_T and B x H <= max_per_sm x
    SMs, both whole numbers) with the (min_T, max_per_sm) that makes "auto" lose least to the
    better of the two forced methods over every case and mode where both were timed (worst ratio
    first, then the mean). Candidates are the grid's own values, B x H / SMs rounded up (so the
    printed integer keeps its grid shape), with max_per_sm 0 and min_T above every T: never
    chunked. Returns {dtype: {min_T, max_per_sm, worst, mean, cases, now_worst}}, where
    ``now_worst`` is the same figure for the thresholds in the code today."""
    timed = _timed(rows)
    cases: dict[str, list[tuple]] = {}
    for (dtype, B, T, H, mode, method), seq in timed.items():
        chk = timed.get((dtype, B, T, H, mode, "fused_chunked"))
        if method == "fused_sequential" and chk is not None:
            cases.setdefault(dtype, []).append((T, B * H, seq, chk))
    out = {}
    for dtype, cs in cases.items():
        def loss(min_t, max_per_sm, cs=cs):
            r = [(chk if t >= min_t and elements <= max_per_sm * sm_count else seq)
                 / min(seq, chk) for t, elements, seq, chk in cs]
            return max(r), sum(r) / len(r)

        ts = sorted({c[0] for c in cs})
        per_sms = sorted({0, *(-(-c[1] // sm_count) for c in cs)})
        # Ties go to the smallest max_per_sm, then the largest min_T: chunked only where the
        # measurement says it wins.
        (worst, mean), min_t, max_per_sm = min(
            (loss(t, m), -t, m) for t in [*ts, ts[-1] + 1] for m in per_sms)
        dt = DTYPES[dtype]
        now = loss(CHUNKED_MIN_T[dt], CHUNKED_MAX_ELEMS_PER_SM[dt])
        out[dtype] = dict(min_T=-min_t, max_per_sm=max_per_sm, worst=worst, mean=mean,
                          cases=len(cs), now_worst=now[0])
    return out


def threshold_lines(found: dict[str, dict], sm_count: int) -> list[str]:
    """The markdown lines for :func:`measured_thresholds`, and what to do for the dtypes
    ``choose_method`` has thresholds for that were not timed."""
    if not found:
        return ["**No \"auto\" thresholds derived**: no case and mode was timed with both "
                "fused_sequential and fused_chunked."]
    lines = []
    for dtype, f in found.items():
        dt = DTYPES[dtype]
        rule = ("never chunked" if f["max_per_sm"] == 0 else
                f"chunked when T >= {f['min_T']} and B x H x D <= {f['max_per_sm']} per SM")
        lines.append(
            f"**\"auto\" thresholds the grid supports ({dtype}, {sm_count} SMs): {rule}**; "
            f"\"auto\" would then be at worst {f['worst']:.2f}x (mean {f['mean']:.2f}x) the "
            f"better method over {f['cases']} timed cases and modes; with the code's thresholds "
            f"(T >= {CHUNKED_MIN_T[dt]}, {CHUNKED_MAX_ELEMS_PER_SM[dt]} per SM) at worst "
            f"{f['now_worst']:.2f}x. The candidates are the grid's own shapes: a boundary "
            "between two of them is known only to lie between them.")
    untimed = [str(d).removeprefix("torch.") for d in CHUNKED_MIN_T
               if str(d).removeprefix("torch.") not in found]
    if untimed:
        lines.append(
            f"Not timed: {', '.join(untimed)}. float16 moves the bytes of bfloat16 and float64 "
            "runs the float32 kernels' code with twice the bytes: give them those dtypes' "
            "thresholds, or time them (`--dtypes`).")
    return lines


def skip_reason(method: str, B: int, T: int, H: int, preset: dict,
                device: torch.device) -> str | None:
    if method in ("fused_sequential", "fused_chunked") and device.type != "cuda":
        return "GPU only (on CPU tensors every method is the CPU path)"
    if method in FUSED:
        return None
    if method == "fused_torch":
        return None if device.type == "cpu" else "CPU only"
    if T > preset["naive_max_T"]:
        return f"T > {preset['naive_max_T']}"
    if B * H > preset["naive_max_BH"]:
        return f"B x H > {preset['naive_max_BH']}"
    if method == "naive_index" and T * T * B * H > preset["naive_index_max_work"]:
        return "T^2 B H over the naive_index cap"
    return None


def mode_fn(method: str, mode: str, pre, u, b, g):
    """A no-argument callable running ``method`` in ``mode``."""
    if method == "fused_torch":
        with torch_cpu_path():
            fn = mode_fn("fused", mode, pre, u, b, g)

        def run_torch_path():
            with torch_cpu_path():
                return fn()
        return run_torch_path
    f = METHODS[method]
    inputs = (pre, u, b)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return f(*inputs)
        return run
    if mode == "fwdbwd":
        return lambda: torch.autograd.grad(f(*inputs), inputs, g)
    out = f(*inputs)
    return lambda: torch.autograd.grad(out, inputs, g, retain_graph=True)


def tuned_tiles(fn) -> str | None:
    """The sequential kernels' configs the autotuners picked for one more call of ``fn``
    (:func:`benchmarks.common.autotuned`), forward then backward."""
    if op.sequential is None:
        return None
    seq = op.sequential
    return autotuned(fn, {"fwd": seq._indrnn_fwd_kernel.fn, "bwd": seq._indrnn_bwd_kernel.fn})


def sequential_tile_lines(rows: list[dict]) -> list[str]:
    """:func:`benchmarks.common.tile_lines` of the sequential kernels."""
    if not any(r.get("tiles") for r in rows):
        return []
    from indrnn_triton.kernels.sequential import gpu_configs

    return tile_lines(rows, {"fwd": gpu_configs(), "bwd": gpu_configs()})


def copy_time(like: torch.Tensor, budget_s: float) -> float:
    """Milliseconds of a device-to-device ``copy_`` of a tensor shaped and typed like ``like``."""
    src, dst = torch.randn_like(like, requires_grad=False), torch.empty_like(like)
    return bench(lambda: dst.copy_(src), like.device, budget_s=budget_s)


def run_case(B, T, H, dtype, device, preset, methods) -> list[dict]:
    dt = DTYPES[dtype]
    torch.manual_seed(0)
    pre = torch.randn(T, B, H, dtype=dt, device=device, requires_grad=True)
    # Parameters stay float32, as in mixed-precision training (autocast casts only the GEMM).
    u = torch.rand(H, device=device, requires_grad=True)
    b = (0.1 * torch.randn(H, device=device)).requires_grad_()
    g = torch.randn(T, B, H, dtype=dt, device=device)
    n_bytes = T * B * H * pre.element_size()
    base = dict(dtype=dtype, B=B, T=T, H=H, BxH=B * H,
                auto_picks=auto_picks(B, T, H, dt, device))

    copy_ms = copy_time(pre, preset["budget_s"])
    copy_gbs = MIN_ELEMS["copy"] * n_bytes / copy_ms / 1e6
    rows = [dict(base, mode="copy", method="copy", ms=copy_ms, **{"GB/s": copy_gbs},
                 copy_frac=1.0)]
    for mode in MODES:
        fused_ms = None
        for method in methods:
            why = skip_reason(method, B, T, H, preset, device)
            if why:
                rows.append(dict(base, mode=mode, method=method, skipped=why))
                continue
            try:
                fn = mode_fn(method, mode, pre, u, b, g)
                ms = bench(fn, device, budget_s=preset["budget_s"])
                peak = peak_bytes(fn, device)
                tiles = tuned_tiles(fn) if device.type == "cuda" and method in FUSED else None
                saved = None if mode == "fwd" else saved_bytes(
                    lambda m=method: METHODS[m](pre, u, b))
            except Exception as e:  # noqa: BLE001 - one failing method must not end the run
                # A first GPU run has minutes: record the failure, keep timing the rest.
                traceback.print_exc()
                rows.append(dict(base, mode=mode, method=method,
                                 error=f"{type(e).__name__}: {e}"[:300]))
                continue
            gbs = MIN_ELEMS[mode] * n_bytes / ms / 1e6
            fused_ms = ms if method == "fused" else fused_ms
            rows.append(dict(
                base, mode=mode, method=method, ms=ms, **{"GB/s": gbs},
                copy_frac=gbs / copy_gbs,
                fused_speedup=None if fused_ms is None else ms / fused_ms,
                saved_MB=None if saved is None else saved / 2**20,
                peak_MB=peak / 2**20, tiles=tiles,
            ))
            del fn
    return rows


def target_ratios(device, dtypes_run: list[str], methods: list[str]) -> list[dict]:
    """The issue-2 case timed in alternation: fused forward+backward against each naive loop
    and, on CPU, the op's torch CPU path, call by call (naive_index costs seconds a call, so it
    gets fewer rounds)."""
    c = TARGET_CASE
    if c["dtype"] not in dtypes_run or "fused" not in methods:
        return []
    torch.manual_seed(0)
    pre = torch.randn(c["T"], c["B"], c["H"], device=device, requires_grad=True)
    u = torch.rand(c["H"], device=device, requires_grad=True)
    b = (0.1 * torch.randn(c["H"], device=device)).requires_grad_()
    g = torch.randn_like(pre)
    rounds = {"fused_torch": 15, "naive_index": 3, "naive_unbind": 15} if device.type == "cpu" \
        else {"naive_index": 5, "naive_unbind": 10}
    out = []
    for other in rounds:
        if other not in methods:
            continue
        fns = {m: mode_fn(m, c["mode"], pre, u, b, g) for m in ("fused", other)}
        ms = bench_interleaved(fns, device, rounds[other])
        out.append(dict(naive=other, fused_ms=ms["fused"], naive_ms=ms[other],
                        ratio=ms[other] / ms["fused"], rounds=rounds[other]))
    return out


def target_lines(ratios: list[dict]) -> list[str]:
    c = TARGET_CASE
    return [
        f"**fused forward+backward vs {TARGET_NAMES[r['naive']]} at T={c['T']}, "
        f"B={c['B']}, H={c['H']}, {c['dtype']}: {r['ratio']:.1f}x faster** "
        f"({r['fused_ms']:.1f} ms vs {r['naive_ms']:.1f} ms, medians of {r['rounds']} "
        f"alternating calls of each, same run)"
        for r in ratios
    ]


def copy_frac_lines(rows: list[dict]) -> list[str]:
    """Issue 14's CPU targets: fused forward+backward at the target shape as a fraction of the
    copy bandwidth, per dtype, next to the torch CPU path."""
    c = TARGET_CASE
    pick = {(r["dtype"], r["method"]): r for r in rows
            if (r["T"], r["B"], r["H"], r["mode"]) == (c["T"], c["B"], c["H"], "fwdbwd")
            and "ms" in r}
    return [
        f"**fused forward+backward at T={c['T']}, B={c['B']}, H={c['H']}, {dtype}: "
        f"{r['copy_frac']:.2f} of copy bandwidth** ({r['ms']:.1f} ms)"
        + (f"; torch CPU path {t['copy_frac']:.2f} ({t['ms']:.1f} ms)"
           if (t := pick.get((dtype, "fused_torch"))) else "")
        for (dtype, method), r in pick.items() if method == "fused"
    ]


COLUMNS = ["dtype", "B", "T", "H", "auto_picks", "mode", "method", "ms", "GB/s", "copy_frac",
           "fused_speedup", "saved_MB", "peak_MB", "tiles", "skipped", "error"]


def notes(rows: list[dict], env: dict) -> list[str]:
    """The lines above the table: the targets, "auto" against the forced methods, and the
    thresholds the grid supports."""
    sms = env.get("sm_count")
    return [
        *(target_lines(env.get("target_ratios", []))
          or ["(the T=1000, B=32, H=256 float32 case was not run)"]),
        *copy_frac_lines(rows),
        # On a GPU (the SM count is recorded there): the forced methods run only there.
        *(auto_check(rows) + threshold_lines(measured_thresholds(rows, sms), sms) if sms else []),
        *sequential_tile_lines(rows),
        "GB/s from the minimum bytes (fwd 2, bwd 3, fwdbwd 5 (T, B, H) tensors); copy_frac "
        "= that over the same run's copy_ GB/s; fused_speedup = this row's time / fused "
        "time; saved_MB = bytes autograd keeps for backward; peak_MB = peak allocated "
        "during the call (CUDA allocator; on CPU, op outputs counted by a dispatch mode); "
        "tiles = the sequential kernels' autotuned configs for the case (BLOCK_BxBLOCK_H, "
        "CHUNK steps in registers, STAGES of CHUNK steps in flight through shared memory, "
        "warps, Triton's num_stages).",
    ]


def plots(rows: list[dict], out, preset: dict, env: dict) -> None:
    """Time and GB/s against T and against B x H, and the roofline plot: the fused methods'
    fraction of copy bandwidth against B x H at the grid's T, one line per method and dtype."""
    title = f"fused IndRNN op, {env['device']}" + (f" ({env['gpu']})" if "gpu" in env else "")
    plot_sweeps(rows, out, "bench_op", preset, ys=["ms", "GB/s"], panels="mode",
                series=["method", "dtype"], title=title)
    fused = [r for r in rows if r.get("copy_frac") is not None and r["T"] == preset["T"]
             and r["method"] in (*FUSED, "fused_torch")]
    plot(fused, out / "bench_op_roofline.png", x="BxH", ys=["copy_frac"], panels="mode",
         series=["method", "dtype"], title=f"{title}, T={preset['T']}: fraction of copy_ "
         "bandwidth (1 = copy)", yscale="linear", hline=1.0)


def replot(path: Path) -> int:
    """Redraw the plots of a saved run from its JSON, next to it (its markdown, rewritten after
    every case, is left as measured), and print the notes the current code derives from it."""
    saved = json.loads(path.read_text())
    env, rows = saved["environment"], saved["rows"]
    plots(rows, path.parent, PRESETS[env.get("preset") or _preset_of(env)], env)
    print("\n\n".join(notes(rows, env)))
    return 0


def print_notes(paths: list[Path]) -> int:
    """Print the notes the current code derives from the rows of saved runs taken together
    (the environment, SM count included, of the first): e.g. the thresholds of gpu_check.sh's
    two bench_op grids (bench_op.json and targets/bench_op.json) at once."""
    saved = [json.loads(p.read_text()) for p in paths]
    rows = [r for run in saved for r in run["rows"]]
    print("\n\n".join(notes(rows, saved[0]["environment"])))
    return 0


def _preset_of(env: dict) -> str:
    """The preset a saved run used, for runs from before it was saved: its command line's, or
    the device's default."""
    words = env["command"].split()
    if "--preset" in words:
        return words[words.index("--preset") + 1]
    return "quick" if env["device"] == "cpu" else "gpu"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--preset", choices=PRESETS, help="grid (default: quick on CPU, gpu on CUDA)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=DTYPES)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--replot", type=Path, metavar="JSON",
                   help="measure nothing: redraw the plots of a saved bench_op.json in its folder "
                        "(e.g. after a run cut short by a time limit) and print its notes")
    p.add_argument("--notes", type=Path, nargs="+", metavar="JSON",
                   help="measure nothing: print the notes (targets, the auto check, the auto "
                        "thresholds) of the rows of one or more saved bench_op.json taken "
                        "together")
    args = p.parse_args(argv)
    if args.replot:
        return replot(args.replot)
    if args.notes:
        return print_notes(args.notes)
    device = setup(args)
    preset_name = args.preset or ("gpu" if device.type == "cuda" else "quick")
    preset = PRESETS[preset_name]
    out = results_dir(device, args.out)

    cases = [(B, T, H, d) for (B, T, H) in grid_shapes(preset) for d in args.dtypes]
    rows: list[dict] = []
    env = environment(device)
    env["preset"] = preset_name
    if device.type == "cuda":
        env["sm_count"] = torch.cuda.get_device_properties(device).multi_processor_count
    for d in args.dtypes:  # first-call costs (imports, op registration) land outside the figures
        run_case(16, 4, 256, d, device, dict(preset, budget_s=0.01), args.methods)
    env["target_ratios"] = target_ratios(device, args.dtypes, args.methods)
    for B, T, H, d in progress(cases, "bench_op"):
        rows += run_case(B, T, H, d, device, preset, args.methods)
        # Rewritten after every case, so a run cut short by a time limit keeps what it measured.
        md = write_results(out, "bench_op", rows, COLUMNS, env, notes=notes(rows, env))
    if not args.no_plots:
        plots(rows, out, preset, env)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
