"""fused_indrnn_linear (the input projection fused with the recurrence) against float64
F.linear + the reference loop: outputs, h_n and all five gradients.

Tests taking the ``backend`` fixture run on the torch CPU path (F.linear then the CPU
recurrence) and on the fused Triton kernel through Triton's interpreter. Every buffer the op
allocates starts as NaN (``poison``).
"""

import pytest
import torch
import torch.nn.functional as F
from test_op import FLAGS, TOL, make_mask, rel_err

import indrnn_triton._alloc as alloc
from indrnn_triton import fused_indrnn, fused_indrnn_linear, indrnn_reference
from indrnn_triton.functional import indrnn_layer, use_fused_projection
from indrnn_triton.fused_linear import _linear_forward_op

pytestmark = pytest.mark.usefixtures("poison")
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
LEAVES = ("x", "weight_ih", "weight_hh", "bias", "h0")


def make_inputs(T, B, K, H, dtype, *, h0=True, bias=True, batch_first=False, clip=None, D=1):
    x = torch.randn((B, T, K) if batch_first else (T, B, K)).to(dtype)
    w = (torch.randn(D * H, K) / K**0.5).to(dtype)
    # Some weights outside the clip range, some below the minimum, both signs.
    # Parameters and h0 in float32 as in mixed-precision training (float64 for float64 checks).
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    u = (torch.rand(D * H) * 2.4 - 1.2).to(pdt)
    b = (torch.randn(D * H) * 0.1).to(pdt) if bias else None
    h = (torch.rand(D, B, H) if D == 2 else torch.rand(B, H)).to(pdt) if h0 else None
    kw = {}
    if clip in ("max", "both"):
        kw["recurrent_max_abs"] = 0.9
    if clip == "both":
        kw["recurrent_min_abs"] = 0.2
    return [x, w, u, b, h], kw


def reference(x, w, u, b, h0, *, mask=None, batch_first=False, bidirectional=False, reverse=False,
              **kw):
    """F.linear, then the reference loop per direction (the second one reversed)."""
    pre = F.linear(x, w)
    if not bidirectional:
        return indrnn_reference(pre, u, b, h0, mask=mask, reverse=reverse,
                                batch_first=batch_first, **kw)
    H = u.shape[0] // 2
    runs = [indrnn_reference(pre[..., d * H:(d + 1) * H], u[d * H:(d + 1) * H],
                             None if b is None else b[d * H:(d + 1) * H],
                             None if h0 is None else h0[d], mask=mask, reverse=d == 1,
                             batch_first=batch_first, **kw) for d in range(2)]
    return torch.cat([r[0] for r in runs], -1), torch.stack([r[1] for r in runs])


def check(inputs, *, bidirectional=False, **kw):
    """The op (or its two-direction form) against the float64 reference, forward and the
    gradients of every given tensor, for a random gradient of the output and of h_n."""
    x = inputs[0]
    leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    if bidirectional:
        out, h_n = indrnn_layer(*leaves, bidirectional=True, fused_projection=True, **kw)
    else:
        out, h_n = fused_indrnn_linear(*leaves, **kw)
    assert out.dtype == x.dtype and out.is_contiguous()
    assert out.shape == (*x.shape[:2], leaves[1].shape[0])
    assert h_n.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None
                  for t in leaves]
    ref_out, ref_hn = reference(*ref_leaves, bidirectional=bidirectional, **kw)
    tol = TOL[x.dtype]
    assert rel_err(out, ref_out) < tol, "output"
    assert rel_err(h_n, ref_hn) < tol, "h_n"
    g_out, g_hn = torch.randn_like(ref_out), torch.randn_like(ref_hn)
    ((out.double() * g_out).sum() + (h_n.double() * g_hn).sum()).backward()
    ((ref_out * g_out).sum() + (ref_hn * g_hn).sum()).backward()
    for name, got, want in zip(LEAVES, leaves, ref_leaves):
        if got is None:
            continue
        assert got.grad is not None and got.grad.dtype == got.dtype, name
        assert torch.isfinite(got.grad).all(), name
        assert rel_err(got.grad, want.grad) < tol, f"grad of {name}"


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference_every_flag_and_dtype(backend, dtype, flags):
    T, B, K, H = 7, 3, 17, 5  # T: one full chunk and a tail; B: a partial batch block
    inputs, kw = make_inputs(T, B, K, H, dtype, h0=flags["h0"], bias=flags["bias"],
                             batch_first=flags["batch_first"], clip=flags["clip"])
    mask = make_mask(flags["mask"], T, B, flags["batch_first"])
    check(inputs, mask=mask, reverse=flags["reverse"], batch_first=flags["batch_first"], **kw)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (9, 3, 3, 70), (6, 2, 17, 33), (5, 3, 130, 20)],
                         ids=lambda s: "T{}-B{}-K{}-H{}".format(*s))
def test_matches_reference_input_sizes(backend, shape):
    """K (the I of x) = 1, 3, 17, 130: K blocks with a tail; H over several hidden blocks;
    every flag on."""
    T, B, K, H = shape
    inputs, kw = make_inputs(T, B, K, H, torch.float32, clip="both")
    check(inputs, mask=make_mask("left", T, B, False), reverse=True, **kw)


@pytest.mark.parametrize("batch_first", [False, True])
def test_bidirectional_one_launch(backend, batch_first):
    """Both directions in one call: the second half of weight_ih's rows runs backwards."""
    T, B, K, H = 7, 3, 6, 70
    inputs, kw = make_inputs(T, B, K, H, torch.float64, batch_first=batch_first, clip="both", D=2)
    check(inputs, bidirectional=True, mask=make_mask("random", T, B, batch_first),
          batch_first=batch_first, **kw)


def test_strided_x_and_weight_are_read_in_place(backend):
    """x a slice of a wider tensor / a transposed (B, T, I) tensor; weight_ih transposed."""
    T, B, K, H = 7, 3, 9, 5
    (_, _, u, b, h0), kw = make_inputs(T, B, K, H, torch.float32)
    wide = torch.randn(T, B, 2 * K)
    w = torch.randn(K, H).T
    for x in (wide[..., K:], torch.randn(B, T, K).transpose(0, 1), wide[..., ::2]):
        assert not x.is_contiguous() and not w.is_contiguous()
        check([x, w, u, b, h0], mask=make_mask("random", T, B, False), **kw)


def test_padding_values_reach_nothing(backend):
    """NaN in x at padding steps (all-padding sequences included) changes no output and no
    gradient: the result equals the one with zeros there, and every gradient is finite."""
    T, B, K, H = 6, 3, 5, 7
    (x, w, u, b, h0), kw = make_inputs(T, B, K, H, torch.float32, clip="max")
    mask = torch.ones(T, B, dtype=torch.bool)
    mask[3:, 0] = False
    mask[:, 2] = False  # a sequence of padding only: output = h0 at every step, h_n = h0
    results = []
    for fill in (0.0, float("nan")):
        xf = x.masked_fill(~mask.unsqueeze(-1), fill)
        leaves = [t.clone().requires_grad_() for t in (xf, w, u, b, h0)]
        out, h_n = fused_indrnn_linear(*leaves, mask=mask, **kw)
        (out.sum() + h_n.sum()).backward()
        results.append((out, h_n, *[t.grad.masked_fill(t.grad.isnan(), 0) if i == 0 else t.grad
                                    for i, t in enumerate(leaves)]))
        assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in leaves[1:])
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    torch.testing.assert_close(results[0][0][:, 2], h0[2].expand(T, H))


def test_nan_at_a_real_step_propagates_as_unfused(backend):
    """NaN in x at a real step: NaN in exactly the outputs where fused_indrnn(F.linear(x))
    has it (the ReLU keeps NaN, as torch.relu)."""
    T, B, K, H = 7, 2, 4, 6
    (x, w, u, b, h0), _ = make_inputs(T, B, K, H, torch.float32)
    x[2, 0, 1] = float("nan")
    out, h_n = fused_indrnn_linear(x, w, u, b, h0)
    want, want_hn = fused_indrnn(F.linear(x, w), u, b, h0)
    assert out.isnan().any()
    assert torch.equal(out.isnan(), want.isnan()) and torch.equal(h_n.isnan(), want_hn.isnan())


def test_float64_states_beyond_float32_range(backend):
    """float64 states past float32's largest value (3.4e38): the kernel's clamp bounds are
    float64's, not float32's (they once capped every state at 3.4e38)."""
    T, B, K, H = 7, 2, 3, 5
    (x, w, u, b, h0), _ = make_inputs(T, B, K, H, torch.float64)
    x, w, h0 = x * 1e150, w * 1e150, h0 * 1e300
    out, h_n = fused_indrnn_linear(x, w, u, b, h0)
    want, want_hn = indrnn_reference(F.linear(x, w), u, b, h0)
    assert want.abs().max() > 1e299
    assert rel_err(out, want) < 1e-12 and rel_err(h_n, want_hn) < 1e-12


def test_no_grad_allocates_only_output_and_h_n(backend, monkeypatch):
    """In inference the Triton path writes no pre: F.linear is not called and the op allocates
    the output and h_n only. (The CPU path computes pre with F.linear by design.)"""
    T, B, K, H = 5, 2, 3, 4
    (x, w, u, b, h0), _ = make_inputs(T, B, K, H, torch.float32)
    shapes = []
    empty = alloc.empty
    def recording_empty(*size, **kwargs):
        t = empty(*size, **kwargs)
        shapes.append(tuple(t.shape))
        return t

    monkeypatch.setattr(alloc, "empty", recording_empty)
    if backend == "triton":
        def no_linear(*a, **k):
            raise AssertionError("F.linear called: pre written to memory")
        monkeypatch.setattr(F, "linear", no_linear)
    with torch.no_grad():
        fused_indrnn_linear(x, w, u, b, h0)
    if backend == "triton":
        assert sorted(shapes) == [(B, H), (T, B, H)]


def test_saves_x_output_and_h0_not_pre():
    T, B, K, H = 5, 2, 6, 4
    (x, w, u, b, h0), _ = make_inputs(T, B, K, H, torch.float32)
    leaves = [t.requires_grad_() for t in (x, w, u, b, h0)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out, _ = fused_indrnn_linear(*leaves)
    big = [t for t in saved if t.numel() >= T * B * H]
    assert len(big) == 2 and any(t is x for t in big) and any(t.shape == out.shape for t in big)


def test_autocast_runs_the_projection_in_the_autocast_dtype():
    """Under CPU autocast (bfloat16): x and weight_ih cast as F.linear would, output bf16,
    equal to the unfused layer under the same autocast; gradients reach the fp32 leaves."""
    T, B, K, H = 6, 2, 5, 4
    (x, w, u, b, h0), _ = make_inputs(T, B, K, H, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (x, w, u, b, h0)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = fused_indrnn_linear(*leaves)
        want, want_hn = fused_indrnn(F.linear(x, w), u, b, h0)
    assert out.dtype == torch.bfloat16 == want.dtype
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h_n, want_hn)
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in leaves)


def test_autocast_leaves_float64_alone():
    """Autocast casts float32/16-bit tensors, never float64 (F.linear under autocast keeps a
    float64 projection): the fused layer stays float64 and equals the unfused one."""
    T, B, K, H = 6, 2, 5, 4
    (x, w, u, b, h0), _ = make_inputs(T, B, K, H, torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.linear(x, w).dtype == torch.float64
        out, h_n = fused_indrnn_linear(x, w, u, b, h0)
        want, want_hn = fused_indrnn(F.linear(x, w), u, b, h0)
    assert out.dtype == torch.float64 == h_n.dtype
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, want_hn, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_of", ["both", "output", "h_n"])
def test_eager_path_equals_the_custom_op(backend, loss_of):
    """Eager calls skip the custom op's dispatch (fused_linear._EagerLinear, tens of
    microseconds a call): outputs and the five gradients equal the registered op's bit for bit,
    also when autograd hands the backward no gradient for an unused output; no_grad runs the
    implementation alone."""
    torch.manual_seed(3)
    inputs, kw = make_inputs(7, 3, 5, 6, torch.float32, clip="both")
    mask = make_mask("left", 7, 3, False)
    results = []
    for via in ("eager", "custom_op"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        if via == "eager":
            out, h_n = fused_indrnn_linear(*leaves, mask=mask, **kw)
            assert out.grad_fn.name().endswith("_EagerLinearBackward")
        else:
            out, h_n = _linear_forward_op(*leaves, mask, kw["recurrent_max_abs"],
                                          kw["recurrent_min_abs"], False, False, False)
        loss = {"both": out.square().sum() + h_n.sum(), "output": out.square().sum(),
                "h_n": h_n.sum()}[loss_of]
        loss.backward()
        results.append([out, h_n] + [t.grad for t in leaves])
    for name, a, c in zip(("out", "h_n", *LEAVES), *results, strict=True):
        assert torch.equal(a, c), name
    with torch.no_grad():
        out, h_n = fused_indrnn_linear(*inputs, mask=mask, **kw)
    assert out.grad_fn is None
    assert torch.equal(out, results[0][0]) and torch.equal(h_n, results[0][1])


@pytest.mark.parametrize("via", ["fused_indrnn_linear", "custom_op"])
def test_double_backward_raises_and_batched_backward_loops(backend, via):
    """No double-backward formula, on the eager path as on the custom op: an error, never a
    gradient treated as a constant. A vmap batch of output gradients (a vectorized Jacobian)
    equals the float64 reference's Jacobian in x and weight_ih."""
    inputs, kw = make_inputs(4, 2, 3, 5, torch.float64, h0=False, clip="max")
    leaves = [t.requires_grad_() if t is not None else None for t in inputs]

    def run(x, w):
        if via == "custom_op":
            return _linear_forward_op(x, w, *leaves[2:], None, kw["recurrent_max_abs"], 0.0,
                                      False, False, False)[0]
        return fused_indrnn_linear(x, w, *leaves[2:], **kw)[0]

    (g,) = torch.autograd.grad(run(*leaves[:2]).sum(), leaves[0], create_graph=True)
    assert g.requires_grad
    with pytest.raises(NotImplementedError, match="first-order gradients only"):
        g.square().sum().backward()
    got = torch.autograd.functional.jacobian(run, tuple(leaves[:2]), vectorize=True)
    want = torch.autograd.functional.jacobian(
        lambda x, w: reference(x, w, *leaves[2:], **kw)[0], tuple(leaves[:2]))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_opcheck(backend):
    T, B, K, H = 5, 3, 4, 6
    (x, w, u, b, h0), _ = make_inputs(T, B, K, H, torch.float32)
    (x2, w2, u2, b2, h2), _ = make_inputs(T, B, K, H, torch.float32, batch_first=True, D=2)
    mask = make_mask("random", T, B, False)
    for args in [
        (x, w, u, b, h0, mask, 0.9, 0.1, True, False, False),
        (x2, w2, u2, None, h2, None, None, 0.0, False, True, True),
    ]:
        args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                     else a for a in args)
        torch.library.opcheck(_linear_forward_op, args)


def test_torch_compile_fullgraph_matches_eager():
    T, B, K, H = 6, 3, 4, 5
    (x, w, u, b, h0), _ = make_inputs(T, B, K, H, torch.float32, batch_first=True)
    mask = make_mask("left", T, B, True)

    def f(x, w, u, b, h0):
        out, h_n = fused_indrnn_linear(x, w, u, b, h0, mask=mask, batch_first=True,
                                       recurrent_max_abs=0.9)
        return out.square().sum() + h_n.sum()

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    leaves_e = [t.clone().requires_grad_() for t in (x, w, u, b, h0)]
    leaves_c = [t.clone().requires_grad_() for t in (x, w, u, b, h0)]
    loss_e, loss_c = f(*leaves_e), compiled(*leaves_c)
    torch.testing.assert_close(loss_c, loss_e)
    loss_e.backward()
    loss_c.backward()
    for a, c in zip(leaves_e, leaves_c):
        torch.testing.assert_close(c.grad, a.grad)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_fused_equals_unfused(backend, bidirectional):
    """indrnn_layer with fused_projection=True equals the GEMM + recurrence path: output, h_n
    and every gradient, with a mask, h0 and batch-first input."""
    T, B, K, H = 7, 3, 5, 6
    D = 2 if bidirectional else 1
    (x, w, u, b, _), kw = make_inputs(T, B, K, H, torch.float64, batch_first=True, clip="max", D=D)
    h0 = torch.rand(D, B, H, dtype=torch.float64)
    mask = make_mask("right", T, B, True)
    runs = []
    for fused in (False, True):
        leaves = [t.clone().requires_grad_() for t in (x, w, u, b, h0)]
        out, h_n = indrnn_layer(*leaves, mask=mask, batch_first=True,
                                bidirectional=bidirectional, fused_projection=fused, **kw)
        (out.sin().sum() + h_n.cos().sum()).backward()
        runs.append((out, h_n, *[t.grad for t in leaves]))
    for a, c in zip(*runs):
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-12)


def test_bench_layer_reports_where_the_fused_projection_wins(monkeypatch):
    """bench_layer's notes for issue 11: the fused layer's speedup over GEMM + recurrence per
    case, the bfloat16 one-layer targets met or missed, per layer count, timing and dtype where
    it wins, loses or is even (within 5 %), and per dtype the choice use_fused_projection can
    express."""
    import os

    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import bench_layer
    from benchmarks.bench_layer import fused_lines, headline

    def row(model, dtype, B, T, timed, ms, base, layers=1):
        return dict(model=model, dtype=dtype, layers=layers, B=B, T=T, H=512, timed=timed,
                    ms=ms, indrnn_speedup=None if model == "indrnn" else ms / base)

    rows = []
    for dtype, B, T, timed, fused_ms, layers in [
            ("bfloat16", 64, 1024, "forward", 1.0, 1), ("bfloat16", 16, 1024, "forward", 3.0, 1),
            ("bfloat16", 64, 1024, "forward+backward", 2.0, 1),
            ("bfloat16", 64, 1024, "forward+backward", 1.0, 2),
            ("float32", 64, 1024, "forward", 1.5, 1), ("float32", 16, 1024, "forward", 1.96, 1),
            ("float16", 64, 1024, "forward", 2.02, 1)]:
        rows += [row("indrnn", dtype, B, T, timed, 2.0, None, layers),
                 row("indrnn_fused", dtype, B, T, timed, fused_ms, 2.0, layers)]
    lines = fused_lines(rows)
    assert "bfloat16, B=64, T=1024, H=512: **2.00x** the speed of GEMM + recurrence (target " \
           "1.3x: met)" in lines[0]
    assert "**0.67x**" in lines[1] and "target" not in lines[1]  # no target at B = 16
    assert "(target 1.1x: missed)" in lines[2] and "**1.00x**" in lines[2]
    assert "2 layer(s)" in lines[3] and "target" not in lines[3]  # the targets are 1 layer's
    assert "float32" in lines[4] and "target" not in lines[4]  # and bfloat16's
    assert ("**fused projection, 1 layer(s), forward, bfloat16: faster at 1 of 2 shapes** "
            "(faster: B=64 T=1024 H=512; even: none; slower: B=16 T=1024 H=512)") in lines
    assert ("**fused projection, 1 layer(s), forward, float32: faster at 1 of 2 shapes** "
            "(faster: B=64 T=1024 H=512; even: B=16 T=1024 H=512; slower: none)") in lines
    assert "**use_fused_projection for bfloat16 on this device: no per-dtype rule fits" in \
        "\n".join(lines)
    assert "**use_fused_projection for float32 on this device: fused (" in "\n".join(lines)
    assert "**use_fused_projection for float16 on this device: unfused (" in "\n".join(lines)
    assert not any("indrnn_fused" in line for line in headline(rows))
    # The baseline is pinned to the unfused path whatever the heuristic picks.
    monkeypatch.setattr("indrnn_triton.modules.use_fused_projection", lambda *a, **k: True)
    assert bench_layer.MODELS["indrnn"](8, 1).fused_projection is False
    assert bench_layer.MODELS["indrnn_fused"](8, 1).fused_projection is True


def test_bench_layer_reports_the_fused_kernel_tile(monkeypatch):
    """bench_layer's ``tiles`` column: the config the fused kernel's autotuner picked for the
    case (None where the kernel did not run), and the notes' picked / never picked configs."""
    import os

    import indrnn_triton.op as op
    from indrnn_triton.kernels import fused_linear as fl

    if not fl.INTERPRET:
        pytest.skip("needs the interpreter-built kernels")
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.bench_layer import fused_tile_lines, fused_tiles
    from benchmarks.common import config_name

    x, w, u = torch.randn(5, 3, 6), torch.randn(8, 6), torch.rand(8)
    [config] = fl._fused_linear_fwd_kernel.fn.configs
    monkeypatch.setattr(op, "cpu_uses_triton", True)
    assert fused_tiles(lambda: fused_indrnn_linear(x, w, u)) == f"fused {config_name(config)}"
    monkeypatch.setattr(op, "cpu_uses_triton", False)
    assert fused_tiles(lambda: fused_indrnn_linear(x, w, u)) is None
    names = [config_name(c) for c in fl.gpu_configs()]
    [line] = fused_tile_lines([dict(dtype="bfloat16", tiles=f"fused {names[1]}"),
                               dict(dtype="bfloat16", tiles=None)])
    assert line == (f"**fused tiles picked, bfloat16** (rows): {names[1]} x1; never picked: "
                    f"{', '.join(n for n in names if n != names[1])}")


def test_fused_projection_heuristic_is_unfused_until_measured():
    """Documented choice: no GPU measurement yet, so the default is the unfused path on every
    device and dtype; a norm between GEMM and recurrence needs pre, so never fused."""
    for device in ("cpu", "cuda"):
        for dtype in (torch.float32, torch.bfloat16):
            assert use_fused_projection(None, torch.device(device), dtype, has_norm=False) is False
    assert use_fused_projection(True, torch.device("cpu"), torch.float32, has_norm=False)
    assert not use_fused_projection(False, torch.device("cuda"), torch.float32, has_norm=False)
    with pytest.raises(ValueError, match="fused_projection=True cannot apply norm"):
        use_fused_projection(True, torch.device("cpu"), torch.float32, has_norm=True)
    with pytest.raises(TypeError, match="fused_projection must be True, False or None"):
        use_fused_projection(1, torch.device("cpu"), torch.float32, has_norm=False)


def test_layer_forced_fused_with_norm_raises():
    x, w, u = torch.randn(4, 2, 3), torch.randn(5, 3), torch.rand(5)
    with pytest.raises(ValueError, match="fused_projection=True cannot apply norm"):
        indrnn_layer(x, w, u, norm=lambda p: p, fused_projection=True)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(x=torch.randn(4, 2)), ValueError, "x must have 3 dimensions"),
        (dict(x=torch.randint(0, 3, (4, 2, 3))), TypeError, "x must be float32"),
        (dict(weight_ih=torch.randn(5)), ValueError, "weight_ih must have 2 dimensions"),
        (dict(weight_ih=torch.randn(5, 4)), ValueError,
         r"weight_ih must have shape \(D\*H, I\) with I = 3"),
        (dict(weight_ih=torch.randn(5, 3, dtype=torch.float64)), TypeError,
         "weight_ih must have x's dtype torch.float32"),
        (dict(weight_ih=torch.randn(5, 3, device="meta")), ValueError, "weight_ih is on meta"),
        (dict(weight_hh=torch.rand(4)), ValueError, r"weight_hh must have shape \(H,\) = \(5,\)"),
        (dict(bias=torch.rand(6)), ValueError, r"bias must have shape \(H,\) = \(5,\)"),
        (dict(h0=torch.rand(3, 5)), ValueError, r"h0 must have shape \(B, H\) = \(2, 5\)"),
        (dict(mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, "mask must have shape"),
        (dict(recurrent_max_abs=-1.0), ValueError, "recurrent_max_abs must be > 0"),
        (dict(reverse=1), TypeError, "reverse must be a bool"),
    ],
)
def test_bad_input_raises_clear_error(change, exc, match):
    args = dict(x=torch.randn(4, 2, 3), weight_ih=torch.randn(5, 3), weight_hh=torch.rand(5),
                bias=None, h0=None)
    args.update(change)
    kwargs = {k: args.pop(k) for k in list(args) if k not in LEAVES}
    with pytest.raises(exc, match=match):
        fused_indrnn_linear(*[args[k] for k in LEAVES], **kwargs)


def _gpu_config_ids():
    import indrnn_triton.kernels.fused_linear as fl

    return [f"B{c.kwargs['BLOCK_B']}-H{c.kwargs['BLOCK_H']}-K{c.kwargs['BLOCK_K']}-"
            f"CT{c.kwargs['CT']}" for c in fl.gpu_configs()]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_gpu_config_ids())), ids=_gpu_config_ids())
def test_every_gpu_autotune_config_interpreted(monkeypatch, index):
    """Each GPU config through the interpreter, every flag on, T not a multiple of CT, B, H and
    K not multiples of the blocks."""
    import indrnn_triton.kernels.fused_linear as fl
    import indrnn_triton.op as op

    if not fl.INTERPRET:
        pytest.skip("TRITON_INTERPRET=0: the kernels are built for the GPU")
    tuner = fl._fused_linear_fwd_kernel.fn
    monkeypatch.setattr(tuner, "configs", [fl.gpu_configs()[index]])
    monkeypatch.setattr(tuner, "cache", {})
    monkeypatch.setattr(op, "cpu_uses_triton", True)
    T, B, K, H = 37, 3, 40, 70
    inputs, kw = make_inputs(T, B, K, H, torch.float32, batch_first=True, clip="both")
    check(inputs, mask=make_mask("right", T, B, True), reverse=True, batch_first=True, **kw)
