"""The fused op against the float64 reference: forward, h_n and all four gradients.

Every test that takes the ``backend`` fixture runs three times: on the compiled CPU path, on the
torch CPU path and on the Triton kernels through Triton's interpreter. All output buffers are
filled with NaN before the kernels run (see ``poison``), so an element a kernel never writes
fails the comparison.
"""

import itertools
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from indrnn_triton import fused_indrnn, fused_indrnn_linear, indrnn_reference
from indrnn_triton.functional import indrnn_layer
from indrnn_triton.op import _forward_op

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative error (max |a - b| / max |b|) allowed per dtype, forward and gradients.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
SHAPES = [(1, 1, 1), (7, 3, 5), (33, 3, 130), (7, 1, 130)]  # (T, B, H): H not a block multiple


# Every buffer the op allocates starts as NaN (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("poison")


def make_mask(kind, T, B, batch_first, dtype=torch.bool):
    """Right or left padding with per-sequence lengths in [0, T] (length 0 included), or random."""
    if kind is None:
        return None
    if kind == "random":
        m = torch.rand(T, B) < 0.7
    else:
        lengths = torch.randint(0, T + 1, (B,))
        lengths[0] = T
        if B > 1:
            lengths[-1] = 0 if T > 1 else T
        steps = torch.arange(T)[:, None]
        m = steps < lengths[None, :] if kind == "right" else steps >= (T - lengths)[None, :]
    m = m.to(dtype)
    return m.T.contiguous() if batch_first else m


def make_inputs(T, B, H, dtype, *, h0, bias, batch_first, clip):
    shape = (B, T, H) if batch_first else (T, B, H)
    pre = torch.randn(shape).to(dtype)
    # Some weights outside the clip range, some below the minimum, both signs.
    u = (torch.rand(H) * 2.4 - 1.2).to(dtype)
    b = (torch.randn(H) * 0.1).to(dtype) if bias else None
    h = torch.rand(B, H).to(dtype) if h0 else None
    kw = {}
    if clip in ("max", "both"):
        kw["recurrent_max_abs"] = 0.9
    if clip == "both":
        kw["recurrent_min_abs"] = 0.2
    return pre, u, b, h, kw


def rel_err(a, b):
    a, b = a.double(), b.double()
    scale = b.abs().max().clamp_min(1e-6)
    return ((a - b).abs().max() / scale).item()


def check_against_reference(pre, u, b, h0, *, mask=None, **kw):
    dtype = pre.dtype
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (pre, u, b, h0)]
    out, h_n = fused_indrnn(*leaves, mask=mask, **kw)
    assert out.dtype == dtype and out.shape == pre.shape and out.is_contiguous()
    assert h_n.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)

    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in leaves]
    ref_out, ref_hn = indrnn_reference(*ref_leaves, mask=mask, **kw)
    tol = TOL[dtype]
    assert rel_err(out, ref_out) < tol, "output"
    assert rel_err(h_n, ref_hn) < tol, "h_n"

    g_out = torch.randn_like(ref_out)
    g_hn = torch.randn_like(ref_hn)
    (out.double() * g_out).sum().add((h_n.double() * g_hn).sum()).backward()
    (ref_out * g_out).sum().add((ref_hn * g_hn).sum()).backward()
    for name, got, want in zip(("pre", "weight_hh", "bias", "h0"), leaves, ref_leaves):
        if got is None:
            continue
        assert got.grad is not None and got.grad.dtype == got.dtype, name
        assert torch.isfinite(got.grad).all(), name
        assert rel_err(got.grad, want.grad) < tol, f"grad of {name}"


# Flag combinations: every value of every flag appears, including the pairs that interact
# (mask with reverse, mask with batch_first, clipping with h0).
FLAGS = [
    dict(h0=False, bias=False, mask=None, reverse=False, batch_first=False, clip=None),
    dict(h0=True, bias=True, mask=None, reverse=False, batch_first=False, clip="max"),
    dict(h0=True, bias=True, mask="right", reverse=False, batch_first=True, clip="both"),
    dict(h0=False, bias=True, mask="left", reverse=True, batch_first=False, clip="max"),
    dict(h0=True, bias=False, mask="random", reverse=True, batch_first=True, clip=None),
    dict(h0=True, bias=True, mask="right", reverse=True, batch_first=False, clip="both"),
]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-H{}".format(*s))
def test_matches_reference(backend, shape, dtype, flags):
    T, B, H = shape
    pre, u, b, h0, kw = make_inputs(T, B, H, dtype, h0=flags["h0"], bias=flags["bias"],
                                    batch_first=flags["batch_first"], clip=flags["clip"])
    mask = make_mask(flags["mask"], T, B, flags["batch_first"])
    check_against_reference(pre, u, b, h0, mask=mask, reverse=flags["reverse"],
                            batch_first=flags["batch_first"], **kw)


def _gpu_config_ids():
    import indrnn_triton.kernels.sequential as tk

    return [f"B{c.kwargs['BLOCK_B']}-H{c.kwargs['BLOCK_H']}-w{c.num_warps}-C{c.kwargs['CHUNK']}"
            f"-S{c.kwargs['STAGES']}" for c in tk.gpu_configs()]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_gpu_config_ids())), ids=_gpu_config_ids())
def test_every_gpu_autotune_config_interpreted(monkeypatch, index):
    """Each config of the GPU autotune list through Triton's interpreter, every flag on, with
    T not a multiple of CHUNK and H not a multiple of BLOCK_H (tests/test_cuda.py runs the same
    list compiled, on a GPU)."""
    import indrnn_triton.kernels.sequential as tk
    import indrnn_triton.op as op

    if not tk.INTERPRET:
        pytest.skip("TRITON_INTERPRET=0: the kernels are built for the GPU")
    config = tk.gpu_configs()[index]
    for tuner in (tk._indrnn_fwd_kernel.fn, tk._indrnn_bwd_kernel.fn):
        monkeypatch.setattr(tuner, "configs", [config])
        monkeypatch.setattr(tuner, "cache", {})
    monkeypatch.setattr(op, "cpu_uses_triton", True)
    pre, u, b, h0, kw = make_inputs(37, 3, 130, torch.float32, h0=True, bias=True,
                                    batch_first=True, clip="both")
    mask = make_mask("right", 37, 3, batch_first=True)
    check_against_reference(pre, u, b, h0, mask=mask, reverse=True, batch_first=True, **kw)


def test_batch_class_rounds_up_to_a_power_of_two():
    from indrnn_triton.kernels.common import batch_class

    got = [batch_class(b) for b in (0, 1, 2, 3, 4, 5, 8, 9, 64, 65, 1000)]
    assert got == [1, 1, 2, 4, 4, 8, 8, 16, 64, 128, 1024]


def test_sequential_tuners_prune_tiles_wider_or_taller_than_the_input():
    """Tiles are kept up to max(128, next power of two of H) wide and up to the batch size
    class tall; an empty result falls back to the first config."""
    from indrnn_triton.kernels import sequential as tk

    configs = tk.gpu_configs()

    def kept(H, b_class, cs=configs):
        return {(c.kwargs["BLOCK_B"], c.kwargs["BLOCK_H"])
                for c in tk._prune(cs, dict(H=H, B_CLASS=b_class))}

    assert kept(64, 1) == {(1, 128)}
    assert kept(1024, 1) == {(1, 128), (1, 256), (1, 512), (1, 1024)}
    assert kept(1024, 2) == kept(1024, 1) | {(2, 128), (2, 256)}
    assert kept(300, 64) == {(1, 128), (1, 256), (1, 512), (2, 128), (2, 256), (4, 128)}
    wide = [c for c in configs if c.kwargs["BLOCK_H"] == 1024]
    assert tk._prune(wide, dict(H=64, B_CLASS=1)) == wide[:1]


def _ranked_tuners(monkeypatch, kernel):
    """The autotuners of one kernel family with two configs each and their timing replaced by a
    fixed ranking (first config fastest): the interpreter cannot time kernels, and this still
    goes through the real key, pruning and cache. Returns (tuners, configs, timed), ``timed``
    collecting (tuner, config) per timing."""
    import indrnn_triton.op as op
    from indrnn_triton.kernels import fused_linear as fl
    from indrnn_triton.kernels import sequential as tk

    if not tk.INTERPRET:
        pytest.skip("TRITON_INTERPRET=0: the kernels are built for the GPU")
    if kernel == "sequential":
        tuners = (tk._indrnn_fwd_kernel.fn, tk._indrnn_bwd_kernel.fn)
        # Two tiles that both survive the pruning at H = 70 (BLOCK_H <= 128).
        configs = [c for c in tk.gpu_configs() if c.kwargs["BLOCK_H"] == 128][:2]
    else:
        tuners = (fl._fused_linear_fwd_kernel.fn,)
        configs = [c for c in fl.gpu_configs() if c.kwargs["BLOCK_B"] <= 4][:2]
    assert len(configs) == 2
    timed = []
    for tuner in tuners:
        monkeypatch.setattr(tuner, "configs", configs)
        monkeypatch.setattr(tuner, "cache", {})

        def bench(*args, config, _tuner=tuner, **meta):
            timed.append((_tuner, config))
            return [float(configs.index(config))]

        monkeypatch.setattr(tuner, "_bench", bench)
    monkeypatch.setattr(op, "cpu_uses_triton", True)
    return tuners, configs, timed


def _run_layer(kernel, T, B, H, K=6, bidirectional=False):
    """One differentiated call of the kernel family under test (the fused projection kernel has
    no backward of its own: its forward is called alone)."""
    D = 2 if bidirectional else 1
    x, w = torch.randn(T, B, K), torch.randn(D * H, K)
    u = torch.rand(D * H, requires_grad=True)
    out, h_n = indrnn_layer(x.requires_grad_(kernel == "sequential"), w, u,
                            bidirectional=bidirectional, method="sequential",
                            fused_projection=kernel == "fused_linear")
    if kernel == "sequential":
        grads = torch.autograd.grad(out.sum() + h_n.sum(), (x, u))
        assert all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kernel", ["sequential", "fused_linear"])
def test_autotuners_tune_once_per_batch_class(monkeypatch, kernel):
    """The tile tuned for one batch size is not reused for a batch of another power-of-two class
    (it was: the key was H alone), and sizes of one class share a tuning run."""
    tuners, configs, timed = _ranked_tuners(monkeypatch, kernel)
    for B in (3, 4, 5, 40, 64):
        _run_layer(kernel, 5, B, 70)
    for tuner in tuners:
        classes = sorted(key[tuner.keys.index("B_CLASS")] for key in tuner.cache)
        assert classes == [4, 8, 64], tuner.keys
        assert all(best is configs[0] for best in tuner.cache.values())
        # One tuning run (both configs timed) per class.
        assert sum(t is tuner for t, _ in timed) == 2 * 3


@pytest.mark.parametrize("kernel", ["sequential", "fused_linear"])
def test_autotuners_tune_short_and_long_sequences_apart(monkeypatch, kernel):
    """A tile tuned on a short sequence (a warm-up, a generation prompt: launch latency and
    pipeline fill) is not reused for a long one at the same H and batch class (it was: T was
    not in the key); lengths of one class share a tuning run. The class boundary is lowered to
    8 steps here, for the interpreter."""
    from indrnn_triton.kernels import common

    monkeypatch.setattr(common, "LONG_T", 8)
    tuners, configs, timed = _ranked_tuners(monkeypatch, kernel)
    for T in (2, 5, 8, 13):
        _run_layer(kernel, T, 4, 70)
    for tuner in tuners:
        assert sorted(key[tuner.keys.index("T_CLASS")] for key in tuner.cache) == [0, 1]
        assert sum(t is tuner for t, _ in timed) == 2 * 2


@pytest.mark.parametrize("kernel", ["sequential", "fused_linear"])
def test_autotuners_tune_bidirectional_launches_apart(monkeypatch, kernel):
    """A bidirectional launch (twice the programs) gets its own tuning run rather than the tile
    tuned for one direction at the same H and batch class (it reused it: BIDIR was not in the
    key); the fused projection kernel also tunes TF32 and full-precision float32 apart."""
    tuners, configs, timed = _ranked_tuners(monkeypatch, kernel)
    _run_layer(kernel, 5, 4, 70)
    _run_layer(kernel, 5, 4, 70, bidirectional=True)
    _run_layer(kernel, 5, 3, 70, bidirectional=True)  # the same class: no new run
    runs = 2
    if kernel == "fused_linear":
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = not tf32
        try:
            _run_layer(kernel, 5, 4, 70)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        runs = 3
    for tuner in tuners:
        assert len(tuner.cache) == runs, (tuner.keys, list(tuner.cache))
        bidir = {key[tuner.keys.index("BIDIR")] for key in tuner.cache}
        assert bidir == {False, True}
        if kernel == "fused_linear":
            precisions = {key[tuner.keys.index("PRECISION")] for key in tuner.cache}
            assert precisions == {"ieee", "tf32"}
        assert sum(t is tuner for t, _ in timed) == 2 * runs


def test_bench_calls_times_batches_of_back_to_back_calls(monkeypatch):
    """bench_overhead's GPU timer: one warm-up call, then whole batches of calls between two
    synchronisations (at least 5), and the median time per call."""
    import time

    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.common import bench_calls

    calls = []

    def fn():
        calls.append(None)
        time.sleep(0.002)

    ms = bench_calls(fn, torch.device("cpu"), budget_s=0.05, batch=4)
    assert (len(calls) - 1) % 4 == 0 and len(calls) - 1 >= 5 * 4
    assert ms >= 2.0


def test_bench_op_reports_the_tiles_the_autotuners_picked(monkeypatch):
    """bench_op's ``tiles`` column: the sequential kernels' configs of the timed call, forward
    then backward; None when neither kernel ran (here the CPU path)."""
    import indrnn_triton.op as op

    if not op.sequential or not op.sequential.INTERPRET:
        pytest.skip("needs the interpreter-built kernels")
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.bench_op import tuned_tiles

    pre = torch.randn(6, 3, 70, requires_grad=True)
    u = torch.rand(70, requires_grad=True)

    def step():
        out, h_n = fused_indrnn(pre, u, None)
        torch.autograd.grad(out.sum(), (pre, u))

    [config] = op.sequential._indrnn_fwd_kernel.fn.configs
    k = config.kwargs
    name = f"{k['BLOCK_B']}x{k['BLOCK_H']} CHUNK{k['CHUNK']} STAGES{k['STAGES']} " \
           f"w{config.num_warps} s{config.num_stages}"
    monkeypatch.setattr(op, "cpu_uses_triton", True)
    assert tuned_tiles(step) == f"fwd {name}; bwd {name}"
    with torch.no_grad():
        assert tuned_tiles(lambda: fused_indrnn(pre, u, None)) == f"fwd {name}"
    monkeypatch.setattr(op, "cpu_uses_triton", False)
    assert tuned_tiles(step) is None


def _bench_op(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import benchmarks.bench_op as bench_op

    return bench_op


def _timed_grid(winner):
    """bench_op rows for a grid of (B, T, H), every mode, with the two forced methods timed so
    that ``winner(B, T, H)`` ("chunked" or "sequential") is 2x faster."""
    rows = []
    for B, T, H in [(1, 1024, 256), (4, 1024, 1024), (1, 16384, 256), (4, 16384, 1024),
                    (64, 16384, 1024), (64, 1024, 1024)]:
        for mode in ("fwd", "bwd", "fwdbwd"):
            fast = winner(B, T, H)
            for method in ("fused_sequential", "fused_chunked"):
                ms = 1.0 if method.endswith(fast) else 2.0
                rows.append(dict(dtype="float32", B=B, T=T, H=H, BxH=B * H, mode=mode,
                                 method=method, ms=ms * T, copy_frac=0.5 / ms))
    return rows


def test_bench_op_derives_the_auto_thresholds_from_the_grid(monkeypatch):
    """The thresholds bench_op writes for "auto": the rule that loses least to the better
    method over the timed grid, with the code's current thresholds scored beside it."""
    bench_op = _bench_op(monkeypatch)
    sms = 4
    # Chunked wins at T >= 16384 for B x H <= 4096 (1024 per SM), sequential elsewhere.
    rows = _timed_grid(lambda B, T, H: "chunked" if T > 1024 and B * H <= 4096 else "sequential")
    found = bench_op.measured_thresholds(rows, sms)["float32"]
    assert (found["min_T"], found["max_per_sm"], found["worst"]) == (16384, 1024, 1.0)
    assert found["cases"] == 6 * 3
    # The code's rule (T >= 256, 256 per SM here) sends (1, 1024, 256) to chunked and
    # (4, 16384, 1024) to sequential: 2x the better method at worst.
    assert (bench_op.CHUNKED_MIN_T[torch.float32],
            bench_op.CHUNKED_MAX_ELEMS_PER_SM[torch.float32]) == (256, 256)
    assert found["now_worst"] == 2.0
    line = bench_op.threshold_lines({"float32": found}, sms)[0]
    assert "chunked when T >= 16384 and B x H x D <= 1024 per SM" in line
    never = bench_op.measured_thresholds(_timed_grid(lambda *a: "sequential"), sms)["float32"]
    assert (never["max_per_sm"], never["worst"]) == (0.0, 1.0)
    assert "never chunked" in bench_op.threshold_lines({"float32": never}, sms)[0]
    # Rows without both forced methods (a CPU run) give nothing to derive.
    cpu = [dict(r, method="fused") for r in rows if r["method"] == "fused_sequential"]
    assert bench_op.measured_thresholds(cpu, sms) == {}


@pytest.mark.parametrize("sms", [132, 114, 4])
@pytest.mark.parametrize("limit", [1024, 16384, 65536])
def test_bench_op_thresholds_written_into_the_code_send_each_shape_to_its_winner(
        monkeypatch, sms, limit):
    """The printed thresholds, set in op.py, make choose_method pick the faster method at every
    grid shape: at 132 SMs B x H = 16384 is 124.1 per SM, which printed as 124 would have sent
    the boundary shape to the slower method."""
    import indrnn_triton.op as op

    bench_op = _bench_op(monkeypatch)

    def winner(B, T, H):
        return "chunked" if T > 1024 and B * H <= limit else "sequential"

    rows = _timed_grid(winner)
    found = bench_op.measured_thresholds(rows, sms)["float32"]
    assert found["worst"] == 1.0
    [line, _untimed] = bench_op.threshold_lines({"float32": found}, sms)
    min_t, per_sm = map(int, re.search(r"T >= (\d+) and B x H x D <= (\d+) per SM",
                                       line).groups())
    monkeypatch.setitem(op.CHUNKED_MIN_T, torch.float32, min_t)
    monkeypatch.setitem(op.CHUNKED_MAX_ELEMS_PER_SM, torch.float32, per_sm)
    for r in rows:
        assert op.choose_method(r["B"] * r["H"], r["T"], torch.float32, sms) == winner(
            r["B"], r["T"], r["H"]), r


def test_bench_op_notes_say_what_could_not_be_derived(monkeypatch, tmp_path, capsys):
    """A GPU run without both forced methods says so; the dtypes the code has thresholds for but
    the run did not time are named; ``--notes`` derives them from several saved runs at once."""
    import json

    bench_op = _bench_op(monkeypatch)
    env = dict(device="nvidia-test", sm_count=4, command="bench_op.py")
    seq_only = [r for r in _timed_grid(lambda *a: "sequential")
                if r["method"] == "fused_sequential"]
    text = "\n".join(bench_op.notes(seq_only, env))
    assert "No \"auto\" thresholds derived" in text and "\"auto\" not checked" in text
    rows = _timed_grid(lambda B, T, H: "chunked" if B * H <= 1024 else "sequential")
    untimed = bench_op.threshold_lines(bench_op.measured_thresholds(rows, 4), 4)[-1]
    assert untimed.startswith("Not timed: float64, float16, bfloat16.")
    # Two saved runs: the forced methods in different files (as if one step was cut short).
    for name, method in (("a", "fused_sequential"), ("b", "fused_chunked")):
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(
            environment=env, rows=[r for r in rows if r["method"] == method])))
    assert bench_op.main(["--notes", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "chunked when T >= 1024 and B x H x D <= 64 per SM" in capsys.readouterr().out


def test_bench_op_lists_the_tiles_picked_and_never_picked(monkeypatch):
    """The notes count the sequential kernels' tiles per kernel and dtype from the ``tiles``
    column, and name the GPU configs never picked (the candidates for pruning the list)."""
    from indrnn_triton.kernels.sequential import gpu_configs

    bench_op = _bench_op(monkeypatch)
    from benchmarks.common import config_name

    names = [config_name(c) for c in gpu_configs()]
    assert len(set(names)) == len(names)  # the notation tells every config apart
    rows = [dict(dtype="float32", tiles=f"fwd {names[0]}; bwd {names[1]}"),
            dict(dtype="float32", tiles=f"fwd {names[0]}"),
            dict(dtype="bfloat16", tiles=f"fwd {names[2]}"), dict(dtype="float32", tiles=None)]
    lines = bench_op.sequential_tile_lines(rows)
    assert [line.split(":")[0] for line in lines] == [
        "**bwd tiles picked, float32** (rows)", "**fwd tiles picked, bfloat16** (rows)",
        "**fwd tiles picked, float32** (rows)"]
    assert f"(rows): {names[0]} x2; never picked: {', '.join(names[1:])}" in lines[2]
    assert bench_op.sequential_tile_lines([dict(dtype="float32", tiles=None)]) == []


def test_bench_op_records_a_failing_method_and_times_the_rest(monkeypatch):
    """One method raising (a kernel never run on this GPU) leaves an error row; the other
    methods and modes of the case are still timed."""
    bench_op = _bench_op(monkeypatch)

    def broken(pre, u, b):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(bench_op.METHODS, "naive_unbind", broken)
    preset = dict(bench_op.PRESETS["quick"], budget_s=0.01)
    rows = bench_op.run_case(2, 5, 8, "float32", torch.device("cpu"), preset,
                             ["naive_unbind", "fused"])
    errors = [r for r in rows if "error" in r]
    assert [(r["mode"], r["method"]) for r in errors] == [
        (m, "naive_unbind") for m in ("fwd", "bwd", "fwdbwd")]
    assert all("illegal memory access" in r["error"] for r in errors)
    assert [r["mode"] for r in rows if r["method"] == "fused" and r["ms"] > 0] == [
        "fwd", "bwd", "fwdbwd"]


def test_bench_op_replot_redraws_a_saved_run(monkeypatch, tmp_path, capsys):
    """``bench_op.py --replot JSON``: the time, GB/s and roofline plots of a saved run next to
    its JSON, its markdown untouched, and the notes (thresholds included) printed."""
    import json

    bench_op = _bench_op(monkeypatch)
    rows = _timed_grid(lambda B, T, H: "chunked" if B * H <= 1024 else "sequential")
    rows += [dict(r, method="copy", mode="copy", ms=0.1, copy_frac=1.0) for r in rows[::6]]
    env = dict(device="nvidia-test", gpu="Test GPU", command="bench_op.py --preset gpu",
               sm_count=4, date="2026-12-02 00:00 UTC")
    path = tmp_path / "bench_op.json"
    path.write_text(json.dumps(dict(environment=env, rows=rows)))
    (tmp_path / "bench_op.md").write_text("as measured")
    assert bench_op.main(["--replot", str(path)]) == 0
    for name in ("bench_op_vs_T.png", "bench_op_vs_BxH.png", "bench_op_roofline.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (tmp_path / "bench_op.md").read_text() == "as measured"
    printed = capsys.readouterr().out
    assert "chunked when T >= 1024 and B x H x D <= 64 per SM" in printed


@pytest.mark.parametrize(
    "h0,bias,mask,reverse,batch_first,clip",
    list(itertools.product([False, True], [False, True], [None, "right", "left", "random"],
                           [False, True], [False, True], [None, "max", "both"])),
)
def test_every_flag_combination_float64(h0, bias, mask, reverse, batch_first, clip):
    """The full product of flags on the CPU path, in float64 (tight tolerance)."""
    T, B, H = 6, 3, 4
    pre, u, b, h, kw = make_inputs(T, B, H, torch.float64, h0=h0, bias=bias,
                                   batch_first=batch_first, clip=clip)
    m = make_mask(mask, T, B, batch_first)
    check_against_reference(pre, u, b, h, mask=m, reverse=reverse, batch_first=batch_first, **kw)


@pytest.mark.parametrize("mask_dtype", [torch.uint8, torch.int32, torch.int64])
def test_integer_mask_equals_bool_mask(backend, mask_dtype):
    T, B, H = 9, 3, 5
    pre, u, b, h0, _ = make_inputs(T, B, H, torch.float32, h0=True, bias=True,
                                   batch_first=False, clip=None)
    m = make_mask("left", T, B, False)
    want = fused_indrnn(pre, u, b, h0, mask=m)
    got = fused_indrnn(pre, u, b, h0, mask=m.to(mask_dtype))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_padding_carries_state_and_h_n_is_last_real_step(backend):
    """Right-padded sequences: h_n equals the state after each sequence's last real step."""
    T, B, H = 8, 3, 5
    pre, u, b, _, _ = make_inputs(T, B, H, torch.float32, h0=False, bias=True,
                                  batch_first=False, clip=None)
    lengths = [8, 5, 1]
    mask = torch.arange(T)[:, None] < torch.tensor(lengths)[None, :]
    out, h_n = fused_indrnn(pre, u, b, mask=mask)
    for i, n in enumerate(lengths):
        alone, alone_hn = fused_indrnn(pre[:n, i : i + 1], u, b)
        torch.testing.assert_close(out[:n, i : i + 1], alone)
        torch.testing.assert_close(h_n[i], alone_hn[0])
        # Padding repeats the carried state.
        torch.testing.assert_close(out[n:, i], alone[-1, 0].expand(T - n, H))


def test_strided_inputs_are_read_in_place(backend):
    """Non-contiguous pre (a slice of a wider GEMM output, or a transposed tensor) and mask."""
    T, B, H = 7, 3, 5
    wide = torch.randn(T, B, 2 * H)
    u, b = torch.rand(H), torch.randn(H)
    mask = make_mask("random", B, T, False).T  # (T, B) view of a (B, T) tensor
    for pre in (wide[..., H:], torch.randn(B, T, H).transpose(0, 1), wide[..., ::2]):
        assert not pre.is_contiguous()
        check_against_reference(pre, u, b, None, mask=mask, recurrent_max_abs=0.9)


def test_gradcheck_float64(backend):
    T, B, H = 4, 2, 3
    pre, u, b, h0, kw = make_inputs(T, B, H, torch.float64, h0=True, bias=True,
                                    batch_first=False, clip="both")
    # Keep weights away from the clip boundaries, where the derivative jumps.
    u = torch.tensor([0.5, -0.95, 0.1], dtype=torch.float64)
    mask = make_mask("random", T, B, False)
    args = [t.requires_grad_() for t in (pre, u, b, h0)]
    assert torch.autograd.gradcheck(
        lambda *a: fused_indrnn(*a, mask=mask, reverse=True, **kw), args
    )


def test_backward_is_deterministic(backend):
    T, B, H = 9, 3, 70
    pre, u, b, h0, kw = make_inputs(T, B, H, torch.float32, h0=True, bias=True,
                                    batch_first=False, clip="max")
    grads = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (pre, u, b, h0)]
        out, h_n = fused_indrnn(*leaves, **kw)
        (out.sin().sum() + h_n.cos().sum()).backward()
        grads.append([t.grad for t in leaves])
    for g1, g2 in zip(*grads):
        assert torch.equal(g1, g2)


@pytest.mark.parametrize("with_h0", [False, True])
def test_empty_sequence(backend, with_h0):
    B, H = 3, 4
    pre = torch.randn(0, B, H, requires_grad=True)
    u = torch.rand(H, requires_grad=True)
    h0 = torch.rand(B, H, requires_grad=True) if with_h0 else None
    out, h_n = fused_indrnn(pre, u, None, h0)
    assert out.shape == (0, B, H)
    torch.testing.assert_close(h_n, h0 if with_h0 else torch.zeros(B, H), rtol=0, atol=0)
    h_n.sum().backward()
    assert torch.equal(u.grad, torch.zeros(H))
    if with_h0:
        assert torch.equal(h0.grad, torch.ones(B, H))


def test_long_sequence_with_paper_clip_stays_finite():
    """T = 100000 with |u| <= 2^(1/T), the papers' bound: no overflow over the whole sequence."""
    T, B, H = 100_000, 2, 8
    r = 2 ** (1 / T)
    pre = torch.rand(T, B, H, requires_grad=True)
    u = torch.full((H,), 1.5, requires_grad=True)  # clipped to r
    out, h_n = fused_indrnn(pre, u, recurrent_max_abs=r)
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all()
    # With u = r ~ 1 and positive inputs the state grows about linearly, not exponentially.
    assert h_n.max() < 2 * T
    out.sum().backward()
    assert torch.isfinite(pre.grad).all()
    assert torch.equal(u.grad, torch.zeros(H))  # every weight was clipped


def test_h_n_keeps_float32_state_for_low_precision():
    """h_n is the fp32 kernel state, not the rounded output."""
    T, B, H = 5, 2, 3
    pre = torch.randn(T, B, H) + 10
    u = torch.full((H,), 0.999)
    out, h_n = fused_indrnn(pre.bfloat16(), u)
    assert h_n.dtype == torch.float32
    ref_out, ref_hn = fused_indrnn(pre.bfloat16().float(), u)
    torch.testing.assert_close(h_n, ref_hn)
    assert not torch.equal(h_n, out[-1].float())


def test_opcheck(backend):
    T, B, H = 5, 3, 4
    pre, u, b, h0, _ = make_inputs(T, B, H, torch.float32, h0=True, bias=True,
                                   batch_first=False, clip=None)
    mask = make_mask("random", T, B, False)
    for args in [
        (pre, u, b, h0, mask, 0.9, 0.1, True, False, False),
        (pre.transpose(0, 1).contiguous(), u, None, None, None, None, 0.0, False, True, False),
    ]:
        args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                     else a for a in args)
        torch.library.opcheck(_forward_op, args)


def test_torch_compile_fullgraph_matches_eager():
    T, B, H = 6, 3, 5
    pre, u, b, h0, _ = make_inputs(T, B, H, torch.float32, h0=True, bias=True,
                                   batch_first=True, clip=None)
    mask = make_mask("left", T, B, True)

    def f(pre, u, b, h0):
        out, h_n = fused_indrnn(pre, u, b, h0, mask=mask, batch_first=True,
                                recurrent_max_abs=0.9)
        return out.square().sum() + h_n.sum()

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    leaves_e = [t.clone().requires_grad_() for t in (pre, u, b, h0)]
    leaves_c = [t.clone().requires_grad_() for t in (pre, u, b, h0)]
    loss_e, loss_c = f(*leaves_e), compiled(*leaves_c)
    torch.testing.assert_close(loss_c, loss_e)
    loss_e.backward()
    loss_c.backward()
    for a, c in zip(leaves_e, leaves_c):
        torch.testing.assert_close(c.grad, a.grad)


@pytest.mark.parametrize("interpret", ["1", "0"])
def test_triton_interpret_env_selects_the_kernels(interpret):
    """TRITON_INTERPRET=1 before import sends CPU tensors through the Triton kernels."""
    code = (
        "import torch, indrnn_triton.op as op\n"
        "from indrnn_triton import fused_indrnn, indrnn_reference\n"
        "x, u = torch.randn(5, 2, 3), torch.rand(3)\n"
        "torch.testing.assert_close(fused_indrnn(x, u)[0], indrnn_reference(x, u)[0])\n"
        "print(op.cpu_uses_triton)\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": interpret}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(interpret == "1")


# ---------------------------------------------------------------------------- bad input

T_, B_, H_ = 4, 2, 3


def _good():
    return dict(pre=torch.randn(T_, B_, H_), weight_hh=torch.rand(H_), bias=torch.rand(H_),
                h0=torch.rand(B_, H_))


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(pre=torch.randn(T_, B_)), ValueError, "pre must have 3 dimensions"),
        (dict(pre=[[1.0]]), TypeError, "pre must be a torch.Tensor"),
        (dict(pre=torch.randint(0, 3, (T_, B_, H_))), TypeError, "pre must be float32"),
        (dict(pre=torch.randn(T_, B_, H_, dtype=torch.complex64)), TypeError, "pre must be"),
        (dict(weight_hh=torch.rand(H_ + 1)), ValueError, r"weight_hh must have shape \(H,\)"),
        (dict(weight_hh=torch.rand(H_, H_)), ValueError, "weight_hh must have 1 dimensions"),
        (dict(weight_hh=torch.ones(H_, dtype=torch.int64)), TypeError, "weight_hh must be"),
        (dict(bias=torch.rand(H_ + 2)), ValueError, r"bias must have shape \(H,\)"),
        (dict(bias=torch.rand(1, H_)), ValueError, "bias must have 1 dimensions"),
        (dict(h0=torch.rand(B_ + 1, H_)), ValueError, r"h0 must have shape \(B, H\)"),
        (dict(h0=torch.rand(B_, H_ + 1)), ValueError, r"h0 must have shape \(B, H\)"),
        (dict(h0=torch.rand(B_)), ValueError, "h0 must have 2 dimensions"),
        (dict(mask=torch.ones(B_, T_, dtype=torch.bool)), ValueError, r"mask must have shape"),
        (dict(mask=torch.ones(T_, B_, 1, dtype=torch.bool)), ValueError, r"mask must have shape"),
        (dict(mask=torch.ones(T_, B_)), TypeError, "mask must be bool or an integer"),
        # A quantized mask's stored integers are not the numbers it holds (zero_point 10 stores
        # every 0 as 10): refused, not read as "all real steps".
        (dict(mask=torch.quantize_per_tensor(torch.zeros(T_, B_), 1.0, 10, torch.quint8)),
         TypeError, "mask must be bool or an integer dtype .* got torch.quint8"),
        (dict(mask=torch.ones(T_, B_, dtype=torch.bool, device="meta")), ValueError,
         "mask is on meta"),
        (dict(weight_hh=torch.rand(H_, device="meta")), ValueError, "weight_hh is on meta"),
        (dict(recurrent_max_abs=0.0), ValueError, "recurrent_max_abs must be > 0"),
        (dict(recurrent_max_abs=-1.0), ValueError, "recurrent_max_abs must be > 0"),
        (dict(recurrent_max_abs=math.inf), ValueError, "recurrent_max_abs must be finite"),
        (dict(recurrent_max_abs=math.nan), ValueError, "recurrent_max_abs must be finite"),
        (dict(recurrent_max_abs="2"), TypeError, "recurrent_max_abs must be a real number"),
        (dict(recurrent_min_abs=-0.1), ValueError, "recurrent_min_abs must be >= 0"),
        (dict(recurrent_min_abs=None), TypeError, "recurrent_min_abs must be a real number"),
        (dict(recurrent_min_abs=2.0, recurrent_max_abs=1.0), ValueError,
         r"recurrent_min_abs \(2.0\) must not exceed recurrent_max_abs \(1.0\)"),
        (dict(reverse=1), TypeError, "reverse must be a bool"),
        (dict(batch_first="yes"), TypeError, "batch_first must be a bool"),
    ],
)
def test_bad_input_raises_clear_error(change, exc, match):
    args = {**_good(), **change}
    kwargs = {k: args.pop(k) for k in list(args) if k not in ("pre", "weight_hh", "bias", "h0")}
    with pytest.raises(exc, match=match):
        fused_indrnn(args["pre"], args["weight_hh"], args["bias"], args["h0"], **kwargs)


def test_batch_first_mask_shape_is_checked():
    pre = torch.randn(B_, T_, H_)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\) = \(2, 4\)"):
        fused_indrnn(pre, torch.rand(H_), mask=torch.ones(T_, B_, dtype=torch.bool),
                     batch_first=True)


@pytest.mark.parametrize("batch_first", [False, True])
def test_two_directions_in_one_launch(backend, batch_first):
    """The op's two-direction form (one kernel launch, a direction grid axis) equals the
    reference run forwards on the first half of the features and backwards on the second."""
    T, B, H = 7, 3, 70  # two H blocks per direction in the interpreter
    pre = torch.randn((B, T, 2 * H) if batch_first else (T, B, 2 * H), dtype=torch.float64)
    u = torch.rand(2 * H, dtype=torch.float64) * 2.4 - 1.2
    b = torch.randn(2 * H, dtype=torch.float64)
    h0 = torch.rand(2, B, H, dtype=torch.float64)
    mask = make_mask("left", T, B, batch_first)
    leaves = [t.clone().requires_grad_() for t in (pre, u, b, h0)]
    out, h_n = _forward_op(*leaves, mask, 0.9, 0.1, False, batch_first, True)
    assert out.shape == pre.shape and h_n.shape == (2, B, H)
    ref_leaves = [t.clone().requires_grad_() for t in (pre, u, b, h0)]
    p, w, bb, h = ref_leaves
    refs = [
        indrnn_reference(p[..., d * H:(d + 1) * H], w[d * H:(d + 1) * H],
                         bb[d * H:(d + 1) * H], h[d], mask=mask, reverse=d == 1,
                         batch_first=batch_first, recurrent_max_abs=0.9, recurrent_min_abs=0.1)
        for d in range(2)
    ]
    ref_out = torch.cat([r[0] for r in refs], dim=-1)
    ref_hn = torch.stack([r[1] for r in refs])
    assert rel_err(out, ref_out) < 1e-10 and rel_err(h_n, ref_hn) < 1e-10
    g_out, g_hn = torch.randn_like(out), torch.randn_like(h_n)
    ((out * g_out).sum() + (h_n * g_hn).sum()).backward()
    ((ref_out * g_out).sum() + (ref_hn * g_hn).sum()).backward()
    for got, want in zip(leaves, ref_leaves):
        assert rel_err(got.grad, want.grad) < 1e-10


@pytest.mark.parametrize("used", ["out", "h_n"])
def test_a_loss_on_one_output_only(backend, used):
    """An unused output's gradient reaches the backward as None on the eager path (the custom
    op's autograd fills zeros instead): both give the reference's gradients."""
    T, B, H = 7, 3, 10
    pre, u, b, h0, kw = make_inputs(T, B, H, torch.float32, h0=True, bias=True,
                                    batch_first=False, clip="both")
    mask = make_mask("random", T, B, False)
    got, want = [], []
    for fn, dt, store in ((fused_indrnn, torch.float32, got), (indrnn_reference, torch.float64,
                                                                 want)):
        leaves = [t.detach().to(dt).requires_grad_() for t in (pre, u, b, h0)]
        out, h_n = fn(*leaves, mask=mask, **kw)
        (out.square().sum() if used == "out" else h_n.sum()).backward()
        store.extend(t.grad for t in leaves)
    for name, g, w in zip(("pre", "weight_hh", "bias", "h0"), got, want):
        assert rel_err(g, w) < TOL[torch.float32], name


def test_eager_calls_skip_the_dispatcher_and_match_the_custom_op(monkeypatch):
    """Plain tensors in eager mode run the implementation through a torch.autograd.Function
    (or alone under no_grad); FakeTensor mode, meta tensors and torch.compile go through the
    registered custom op. Both give identical outputs and gradients."""
    import indrnn_triton.op as op_module

    calls = []
    real_op = op_module._forward_op

    def counting_op(*args):
        calls.append("custom_op")
        return real_op(*args)

    pre, u, b, h0, kw = make_inputs(6, 2, 5, torch.float32, h0=True, bias=True,
                                    batch_first=False, clip="max")
    results = {}
    for via in ("eager", "custom_op"):
        if via == "custom_op":
            monkeypatch.setattr(op_module, "_EagerRecurrence", None)  # any use would fail
            leaves = [t.clone().requires_grad_() for t in (pre, u, b, h0)]
            out, h_n = real_op(*leaves, None, kw["recurrent_max_abs"], 0.0, False, False,
                               False, "auto")
        else:
            monkeypatch.setattr(op_module, "_forward_op", counting_op)
            leaves = [t.clone().requires_grad_() for t in (pre, u, b, h0)]
            out, h_n = fused_indrnn(*leaves, **kw)
            assert calls == [] and out.grad_fn.name().endswith("_EagerRecurrenceBackward")
            with torch.no_grad():
                assert torch.equal(fused_indrnn(*leaves, **kw)[0], out)
            assert calls == []
        (out.square().sum() + h_n.sum()).backward()
        results[via] = [out, h_n] + [t.grad for t in leaves]
    for a, c in zip(results["eager"], results["custom_op"]):
        assert torch.equal(a, c)

    monkeypatch.setattr(op_module, "_forward_op", counting_op)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (pre, u, b)]
        out, _ = fused_indrnn(*fake)
        assert out.shape == pre.shape
    meta_out, _ = fused_indrnn(pre.to("meta"), u.to("meta"), b.to("meta"))
    assert meta_out.device.type == "meta"
    assert calls == ["custom_op", "custom_op"]


@pytest.mark.parametrize("via", ["fused_indrnn", "custom_op", "fused_indrnn_linear"])
def test_double_backward_raises(via):
    """There is no double-backward formula: differentiating a create_graph=True gradient raises
    on the eager paths and the custom op, rather than treating the gradient as constant, and
    says so (torch's own message asked to register a formula)."""
    pre, u, b, _, _ = make_inputs(4, 2, 3, torch.float64, h0=False, bias=True,
                                  batch_first=False, clip=None)
    leaves = [t.requires_grad_() for t in (pre, u, b)]
    if via == "custom_op":
        out, _ = _forward_op(*leaves, None, None, None, 0.0, False, False, False, "auto")
    elif via == "fused_indrnn_linear":
        w = torch.eye(3, dtype=torch.float64, requires_grad=True)
        out, _ = fused_indrnn_linear(leaves[0], w, *leaves[1:])
    else:
        out, _ = fused_indrnn(*leaves)
    (g,) = torch.autograd.grad(out.sum(), leaves[0], create_graph=True)
    assert g.requires_grad
    with pytest.raises(NotImplementedError, match="first-order gradients only"):
        g.square().sum().backward()
