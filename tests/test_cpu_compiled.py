"""The compiled CPU path (indrnn_triton/csrc): padding and NaN numerics, thread-count
independence, and the fallback to the torch CPU path when the kernels cannot be built.

Its agreement with the float64 reference over every flag, dtype and layout is tested by the
``backend`` fixture's "compiled" run of tests/test_op.py.
"""

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

import indrnn_triton.cpu_compiled as cc
import indrnn_triton.op as op
from indrnn_triton import fused_indrnn, indrnn_reference
from indrnn_triton.op import _forward_op

pytestmark = pytest.mark.usefixtures("poison")


@pytest.fixture(autouse=True)
def _compiled(monkeypatch):
    if cc.library() is None:
        pytest.fail("the compiled CPU kernels did not build (see the warning)")
    monkeypatch.setattr(op, "cpu_uses_compiled", True)


def _run_bidirectional(pre, u, b, h0, mask, **flags):
    """Output, h_n and the four gradients of the two-direction op under a fixed random loss."""
    leaves = [t.clone().requires_grad_() for t in (pre, u, b, h0)]
    out, h_n = _forward_op(*leaves, mask, flags.get("r_max"), flags.get("r_min", 0.0), False,
                           flags.get("batch_first", False), True)
    g = torch.Generator().manual_seed(1)
    loss = (out.float() * torch.randn(out.shape, generator=g)).sum() + (
        h_n * torch.randn(h_n.shape, generator=g)).sum()
    loss.backward()
    return [out.detach(), h_n.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e38])
def test_padding_values_change_nothing(dtype, value):
    """Whatever pre holds at padding steps, the output (the carried state there), h_n and every
    gradient are bit for bit those of zeros there."""
    T, B, H = 7, 4, 6
    pre = torch.randn(T, B, 2 * H).to(dtype)
    u, b, h0 = torch.rand(2 * H) * 2 - 1, torch.randn(2 * H), torch.rand(2, B, H)
    mask = torch.rand(T, B) < 0.6
    clean = pre.clone()
    clean[~mask] = 0
    dirty = pre.clone()
    dirty[~mask] = value
    want = _run_bidirectional(clean, u, b, h0, mask, r_max=0.9)
    got = _run_bidirectional(dirty, u, b, h0, mask, r_max=0.9)
    for name, g, w in zip(("out", "h_n", "pre", "u", "bias", "h0"), got, want):
        assert torch.equal(g, w), name


def test_nan_at_a_real_step_propagates_as_relu():
    """relu(NaN) = NaN: a NaN in pre reaches the output from its step on, as in the
    reference; the other units are untouched."""
    T, B, H = 6, 2, 3
    pre = torch.rand(T, B, H) + 0.1
    pre[2, 1, 0] = math.nan
    u = torch.full((H,), 0.5)
    out, h_n = fused_indrnn(pre, u)
    ref_out, ref_hn = indrnn_reference(pre.double(), u.double())
    torch.testing.assert_close(out, ref_out.float(), equal_nan=True)
    torch.testing.assert_close(h_n, ref_hn.float(), equal_nan=True)
    assert out[2:, 1, 0].isnan().all() and not out[:2].isnan().any()
    assert not out[:, :, 1:].isnan().any()


@pytest.mark.parametrize("clip", [{}, {"recurrent_max_abs": 0.9},
                                  {"recurrent_max_abs": 0.9, "recurrent_min_abs": 0.2}])
def test_nan_weight_propagates(clip):
    """clamp(NaN) = NaN, as torch.clamp: a NaN weight makes its unit's state NaN."""
    pre = torch.rand(5, 2, 3) + 0.1
    u = torch.tensor([0.5, math.nan, -0.5])
    out, _ = fused_indrnn(pre, u, **clip)
    assert out[1:, :, 1].isnan().all()
    assert not out[:, :, [0, 2]].isnan().any()


def test_bound_above_dtype_range_clips_nothing():
    """recurrent_max_abs beyond float32's range (inf once rounded to float32) leaves u and its
    gradient alone, as no clip does."""
    pre = torch.rand(2, 2, 3) * 0.1
    u = torch.tensor([3e38, 1e38, 0.5])  # near float32's maximum; u h stays finite at T = 2
    grads = []
    for bound in (None, 1e39):
        w = u.clone().requires_grad_()
        out, h_n = fused_indrnn(pre, w, recurrent_max_abs=bound)
        (out.sum() + h_n.sum()).backward()
        grads.append((out.detach(), w.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert (grads[1][1] != 0).all()


@pytest.mark.parametrize("batch_first", [False, True])
def test_threads_change_nothing(batch_first):
    """A shape large enough to run on several threads gives bit for bit the single-thread
    results (du and db are summed over the batch in a fixed order), which match the float64
    reference."""
    T, B, H = 40, 6, 160  # T B 2H above the kernels' threshold for going parallel
    shape = (B, T, 2 * H) if batch_first else (T, B, 2 * H)
    pre = torch.randn(shape)
    u, b, h0 = torch.rand(2 * H) * 2.4 - 1.2, torch.randn(2 * H), torch.rand(2, B, H)
    mask = torch.rand(B, T) < 0.8 if batch_first else torch.rand(T, B) < 0.8
    flags = dict(r_max=0.95, r_min=0.1, batch_first=batch_first)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run_bidirectional(pre, u, b, h0, mask, **flags)
        torch.set_num_threads(2)
        two = _run_bidirectional(pre, u, b, h0, mask, **flags)
    finally:
        torch.set_num_threads(threads)
    for g, w in zip(two, one):
        assert torch.equal(g, w)
    ref = _run_bidirectional(pre.double(), u.double(), b.double(), h0.double(), mask, **flags)
    for g, w in zip(one, ref):
        assert ((g.double() - w).abs().max() / w.abs().max()) < 2e-5


def test_build_failure_falls_back_with_one_warning(monkeypatch):
    """A failed build warns once per process and every call then takes the torch CPU path."""
    def broken_build():
        raise RuntimeError("error: no compiler here")

    monkeypatch.setattr(cc, "_build", broken_build)
    monkeypatch.setattr(cc, "_lib", None)
    monkeypatch.setattr(cc, "_failed", False)
    pre, u = torch.randn(5, 2, 3), torch.rand(3)
    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            p, w = pre.clone().requires_grad_(), u.clone().requires_grad_()
            out, h_n = fused_indrnn(p, w)
            (out.sum() + h_n.sum()).backward()
            results.append((out, h_n, p.grad, w.grad))
    ours = [w for w in caught if "compiled CPU kernels" in str(w.message)]
    assert len(ours) == 1 and "error: no compiler here" in str(ours[0].message)
    monkeypatch.setattr(op, "cpu_uses_compiled", False)
    p, w = pre.clone().requires_grad_(), u.clone().requires_grad_()
    out, h_n = fused_indrnn(p, w)
    (out.sum() + h_n.sum()).backward()
    for got in results:
        for g, want in zip(got, (out, h_n, p.grad, w.grad)):
            assert torch.equal(g, want)


@pytest.mark.parametrize("listed", [True, False])
def test_write_prefetches_only_where_the_cpu_has_prefetchw(tmp_path, monkeypatch, listed):
    """-mprfchw (PREFETCHW, "3dnowprefetch" in /proc/cpuinfo) only for a CPU that lists it; the
    AVX2 flags whatever the list says, when torch runs AVX2 or AVX-512 kernels."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma f16c"
                       + (" 3dnowprefetch" if listed else "") + " bmi2\n")
    assert ("3dnowprefetch" in cc.cpu_features(str(cpuinfo))) == listed
    assert cc.cpu_features(str(tmp_path / "absent")) == set()
    real = cc.cpu_features
    monkeypatch.setattr(cc, "cpu_features", lambda: real(str(cpuinfo)))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    flags, isa = cc._flags()
    assert isa == "avx2" and {"-mavx2", "-mfma", "-mf16c"} <= set(flags)
    assert ("-mprfchw" in flags) == listed
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    flags, isa = cc._flags()
    assert isa == "base" and not {"-mavx2", "-mprfchw"} & set(flags)


@pytest.mark.slow
def test_broken_compiler_in_a_fresh_process_falls_back(tmp_path):
    """The real failure: CXX is a compiler that fails and the extension cache is empty. The op
    still works (torch CPU path) and says so once."""
    code = (
        "import torch\n"
        "from indrnn_triton import fused_indrnn, indrnn_reference\n"
        "x, u = torch.randn(5, 2, 3), torch.rand(3)\n"
        "for _ in range(2):\n"
        "    torch.testing.assert_close(fused_indrnn(x, u)[0], indrnn_reference(x, u)[0])\n"
        "import indrnn_triton.cpu_compiled as cc\n"
        "print(cc.library())\n"
    )
    env = {**os.environ, "CXX": "false", "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "None"
    assert res.stderr.count("could not build the compiled CPU kernels") == 1, res.stderr


@pytest.mark.parametrize("stream", [False, True], ids=["cached", "streaming"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_16bit_stores_round_as_torch(dtype, stream, monkeypatch):
    """The SIMD loops convert float32 results to float16 (F16C) and bfloat16 (integer code) in
    8 lanes at a time, the generic loops one value at a time. With u = 0 the output is exactly
    relu(x + b) in float32 then rounded, so both must give torch's conversion bit for bit: ties,
    subnormals, overflow to infinity and NaN included, in the vector body and the scalar head and
    tail (H = 37 and a row offset that misaligns the streaming stores)."""
    monkeypatch.setattr(cc, "STREAM_MIN_BYTES", 0 if stream else 1 << 62)
    T, B, H = 5, 3, 37
    info = torch.finfo(dtype)
    base = torch.randn(T, B, H + 1).to(dtype)
    # exact halfway cases, the subnormal range, values that round past the largest finite one
    b = torch.randn(H, dtype=torch.float64)
    b[:8] = (torch.arange(8) - 4) * info.eps / 2
    b[8:16] = info.tiny * torch.linspace(-2, 2, 8, dtype=torch.float64)
    # finite in float32 (the state stays finite: u h = 0), rounded to infinity by the store
    b[16:20] = info.max * torch.tensor([0.9999, 1.0, 1.001, 1.002], dtype=torch.float64)
    b[20] = math.nan
    b = b.float()
    x = base[..., 1:]  # a row offset of one element: the stores start unaligned
    u = torch.zeros(H)
    for batch_first in (False, True):
        xs = x.transpose(0, 1) if batch_first else x
        out, _ = fused_indrnn(xs, u, b, batch_first=batch_first)
        want = torch.relu(xs.float() + b).to(dtype)
        assert torch.equal(out.isnan(), want.isnan())
        keep = ~want.isnan()
        assert torch.equal(out[keep].view(torch.int16), want[keep].view(torch.int16))
