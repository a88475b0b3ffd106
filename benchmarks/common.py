"""Shared timing, memory and result-writing code for the benchmark scripts.

Timing: ``triton.testing.do_bench`` (median) on a GPU; on CPU the median of repeated
wall-clock runs after one warm-up call. Memory: the bytes autograd keeps for backward (from
``saved_tensors_hooks``) and the peak allocated during a call above what was allocated before it
(CUDA allocator statistics; on CPU a TorchDispatchMode count of op outputs). Results go to
``benchmarks/results/<device>/`` as JSON, a markdown table and PNG plots.
"""

from __future__ import annotations

import json
import math
import platform
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def pick_device(name: str | None) -> torch.device:
    """``--device`` value -> torch.device; default: CUDA when available, else CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def device_slug(device: torch.device) -> str:
    """Folder name for a device: ``cpu`` or the CUDA device name, e.g. ``nvidia-h200``."""
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def results_dir(device: torch.device, out: Path | None = None) -> Path:
    """``out`` if given, else ``benchmarks/results/<device-slug>/``; created."""
    path = Path(out) if out is not None else RESULTS / device_slug(device)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn: Callable[[], object], device: torch.device, *, min_reps: int = 5,
          budget_s: float = 1.0) -> float:
    """Median time of ``fn()`` in milliseconds.

    GPU: ``triton.testing.do_bench`` with a ``budget_s`` repetition window. CPU: one warm-up call,
    then wall-clock runs until ``min_reps`` runs and ``budget_s`` seconds are both reached; a call
    slower than the budget is timed once more, and one slower than 4 budgets not again (the
    warm-up time is returned: first-call costs are negligible at that length).
    """
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(
            fn, warmup=max(1, int(budget_s * 250)), rep=max(1, int(budget_s * 1000)),
            return_mode="median",
        ))
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    if warm > 4 * budget_s:
        return 1e3 * warm
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if warm > budget_s or (len(times) >= min_reps and elapsed >= budget_s):
            break
        if elapsed > 4 * budget_s and len(times) >= 3:
            break
    return 1e3 * statistics.median(times)


def bench_calls(fn: Callable[[], object], device: torch.device, *, budget_s: float = 1.0,
                batch: int = 20) -> float:
    """Median wall-clock milliseconds per call of ``fn`` called back to back, ``batch`` calls
    between two device synchronisations: what a loop of calls costs, host work included.

    For fixed per-call costs on a GPU. :func:`bench` (``triton.testing.do_bench``) flushes the L2
    cache with a kernel before each timed call and times it with CUDA events, so host work that
    overlaps that flush (up to its ~0.1 ms) is invisible there.
    """
    fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < budget_s:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / batch)
        if time.perf_counter() - start > 4 * budget_s and len(times) >= 3:
            break
    return 1e3 * statistics.median(times)


def bench_interleaved(fns: dict[str, Callable[[], object]], device: torch.device,
                      rounds: int) -> dict[str, float]:
    """Median milliseconds of each function, timed in alternation: ``rounds`` rounds of one call
    of each (a :func:`bench` each on a GPU), so load that comes and goes on a shared machine
    falls on all of them alike. One untimed warm-up call each first."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            if device.type == "cuda":
                times[name].append(bench(fn, device, budget_s=0.05))
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(ts) for name, ts in times.items()}


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak tensor memory allocated during ``fn()`` above what was allocated before it.

    CUDA: the caching allocator's statistics. CPU (whose allocator keeps none): every tensor an
    op returns is counted until its storage is freed, by bench_memory's TorchDispatchMode; a
    custom op counts as its outputs (the fused op's (B, H) scratch is not seen).
    """
    if device.type != "cuda":
        from benchmarks.bench_memory import TensorMemory

        with TensorMemory() as mode:
            fn()
        return mode.peak
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def config_name(config) -> str:
    """A Triton autotune config as ``BLOCK_BxBLOCK_H``, then its other parameters, warps and
    Triton's num_stages (``2x256 CHUNK8 STAGES1 w4 s3``): the ``tiles`` column's notation."""
    k = dict(config.kwargs)
    return " ".join([f"{k.pop('BLOCK_B')}x{k.pop('BLOCK_H')}", *(f"{n}{v}" for n, v in k.items()),
                     f"w{config.num_warps}", f"s{config.num_stages}"])


def autotuned(fn: Callable[[], object], tuners: dict) -> str | None:
    """The configs the autotuners ``{kernel name: Autotuner}`` picked for one more call of
    ``fn`` ("fwd 2x256 CHUNK8 STAGES1 w4; bwd ..."), or None where ``fn`` launched none of
    them (another method, the CPU path): which configs win where, so that a GPU run can
    prune the autotune lists."""
    for tuner in tuners.values():
        tuner.best_config = None
    fn()
    picked = [f"{name} {config_name(t.best_config)}" for name, t in tuners.items()
              if t.best_config is not None]
    return "; ".join(picked) or None


def tile_lines(rows: list[dict], lists: dict[str, list]) -> list[str]:
    """Per kernel and dtype, the configs the autotuners picked over the rows (their ``tiles``
    column, from :func:`autotuned`) and the configs of the kernel's GPU list ``lists[kernel]``
    they never picked: the candidates for pruning the list, where the grid covers the shapes
    they were kept for."""
    picked: dict[tuple[str, str], Counter] = {}
    for r in rows:
        for part in filter(None, (r.get("tiles") or "").split("; ")):
            kernel, name = part.split(" ", 1)
            picked.setdefault((kernel, r["dtype"]), Counter())[name] += 1
    lines = []
    for (kernel, dtype), counts in sorted(picked.items()):
        never = [n for n in map(config_name, lists[kernel]) if n not in counts]
        lines.append(f"**{kernel} tiles picked, {dtype}** (rows): "
                     + ", ".join(f"{name} x{n}" for name, n in counts.most_common())
                     + f"; never picked: {', '.join(never) or 'none'}")
    return lines


def progress(items: list, desc: str) -> Iterable:
    """tqdm progress bar on stderr (tqdm ships with transformers); plain iteration without it."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, file=sys.stderr, dynamic_ncols=True)


def environment(device: torch.device) -> dict:
    """What the figures were measured on."""
    env = dict(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        device=device_slug(device), python=platform.python_version(), torch=torch.__version__,
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        cpu_threads=torch.get_num_threads(), platform=platform.platform(),
    )
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        # float32 GEMMs: TF32 or full precision, for cuBLAS (F.linear) and for cuDNN's RNNs
        # (cuDNN defaults to TF32, cuBLAS not: a float32 comparison with nn.LSTM is only like
        # for like when both are the same).
        env["tf32_cublas"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return env


def add_common_args(p) -> None:
    """--device, --out, --no-plots: the options every benchmark script takes."""
    p.add_argument("--device", help="cpu or cuda[:i] (default: cuda when available)")
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/results/<device>)")
    p.add_argument("--no-plots", action="store_true", help="write JSON and markdown only")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine OpenMP threads that "
                        "wait for a descheduled peer make timings erratic); 0 = torch default")


def setup(args) -> torch.device:
    """Apply the common options; return the device."""
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device)


def grid_shapes(grid: dict) -> list[tuple[int, int, int]]:
    """(B, T, H) of a grid: a sweep over T (``T_sweep``) at a fixed (B, H) (``BH``), a sweep over
    B x H (``BH_sweep``) at a fixed ``T``, and ``extra`` shapes; each once, in a stable order."""
    B, H = grid["BH"]
    shapes = [(B, T, H) for T in grid["T_sweep"]]
    shapes += [(b, grid["T"], h) for b, h in grid["BH_sweep"]]
    shapes += list(grid.get("extra", ()))
    return list(dict.fromkeys(shapes))


def plot_sweeps(rows: list[dict], out: Path, name: str, grid: dict, *, ys: list[str],
                panels: str, series: list[str], title: str) -> None:
    """``<name>_vs_T.png`` (the T sweep) and ``<name>_vs_BxH.png`` (the B x H sweep)."""
    timed = [r for r in rows if r.get("ms") is not None]
    B, H = grid["BH"]
    plot([r for r in timed if (r["B"], r["H"]) == (B, H)], out / f"{name}_vs_T.png", x="T",
         ys=ys, panels=panels, series=series, title=f"{title}, B={B}, H={H}")
    plot([r for r in timed if r["T"] == grid["T"]], out / f"{name}_vs_BxH.png", x="BxH",
         ys=ys, panels=panels, series=series, title=f"{title}, T={grid['T']}")


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, *, x: str, ys: list[str], panels: str, series: list[str],
         title: str, yscale: str = "log", hline: float | None = None) -> None:
    """One column of panels per value of ``panels``, one row per metric in ``ys``, one line per
    combination of the ``series`` fields; x on a log axis, y on ``yscale`` (a linear one starts
    at 0), and a dashed reference line at ``hline`` if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel_keys = list(dict.fromkeys(r[panels] for r in rows))
    if not panel_keys:
        return
    fig, axes = plt.subplots(len(ys), len(panel_keys), squeeze=False,
                             figsize=(4.5 * len(panel_keys), 3.2 * len(ys)))
    for j, pk in enumerate(panel_keys):
        sel = [r for r in rows if r[panels] == pk]
        for i, y in enumerate(ys):
            ax = axes[i][j]
            for key in dict.fromkeys(tuple(r[s] for s in series) for r in sel):
                pts = sorted((r[x], r[y]) for r in sel
                             if tuple(r[s] for s in series) == key and r.get(y) is not None)
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=" ".join(map(str, key)))
            ax.set_xscale("log", base=2)
            ax.set_yscale(yscale)
            if hline is not None:
                ax.axhline(hline, color="gray", linestyle="--", linewidth=1)
            if yscale == "linear":
                ax.set_ylim(0, max(ax.get_ylim()[1], 1.05 * (hline or 0)))
            ax.set_xlabel(x)
            ax.set_ylabel(y)
            ax.set_title(f"{panels}={pk}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][j].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(out: Path, name: str, rows: list[dict], columns: list[str], env: dict,
                  notes: list[str] = ()) -> str:
    """Write ``<name>.json`` and ``<name>.md`` under ``out``; return the markdown text."""
    md = "\n\n".join([
        f"# {name} on {env['device']}",
        f"Measured {env['date']} with `{env['command']}` (torch {env['torch']}, "
        f"triton {env['triton']}, {env['cpu_threads']} CPU threads"
        + (f", {env['gpu']}" if "gpu" in env else "") + ").",
        *notes,
        markdown_table(rows, columns),
    ]) + "\n"
    (out / f"{name}.json").write_text(json.dumps(dict(environment=env, rows=rows), indent=1))
    (out / f"{name}.md").write_text(md)
    return md
