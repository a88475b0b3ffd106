"""Numerics the op and the modules promise on every path: padding values never matter, NaN at a
real step propagates as torch.relu's does, strided and expanded (H,) vectors are read as values,
bounds beyond a dtype's range, forward-mode AD refused, batch norm with all-padding batches.

Op-level tests take the ``backend`` fixture: the torch CPU path and the interpreted Triton
kernels. Every buffer the op allocates starts as NaN (``poison``).
"""

import math

import pytest
import torch
from torch.autograd import forward_ad

import indrnn_triton.op as op
from indrnn_triton import IndRNN, IndRNNCell, fused_indrnn, fused_indrnn_linear, indrnn_reference
from indrnn_triton.functional import indrnn_layer, indrnn_recurrence

pytestmark = pytest.mark.usefixtures("poison")

T, B, H = 7, 3, 5


def _leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def _run(fn, leaves, g_out, g_hn, **kw):
    out, h_n = fn(*leaves, **kw)
    (out.double() * g_out).sum().add((h_n.double() * g_hn).sum()).backward()
    return out.detach(), h_n.detach(), [None if t is None else t.grad for t in leaves]


def _masks(batch_first=False):
    """Left padding on row 0, right padding on row 1, an all-padding row 2, a hole in row 0."""
    m = torch.ones(T, B, dtype=torch.bool)
    m[:3, 0] = False
    m[5, 0] = False
    m[4:, 1] = False
    m[:, 2] = False
    return m.T.contiguous() if batch_first else m


# ----------------------------------------------------------------------------------------------
# Padding never changes anything (issue 9, item 4).
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("junk", [math.nan, math.inf, -math.inf, 1e38],
                         ids=["nan", "inf", "-inf", "1e38"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_padding_values_change_nothing(backend, junk, bidirectional, dtype):
    D = 2 if bidirectional else 1
    mask = _masks()
    pre = torch.randn(T, B, D * H).to(dtype)
    dirty = pre.masked_fill(~mask.unsqueeze(-1), junk)
    u = (torch.rand(D * H) * 2.2 - 1.1).to(dtype)
    b = (torch.randn(D * H) * 0.1).to(dtype)
    h0 = torch.rand(D, B, H)
    g_out = torch.randn(T, B, D * H, dtype=torch.float64)
    g_hn = torch.randn(D, B, H, dtype=torch.float64)
    kw = dict(mask=mask, bidirectional=bidirectional, recurrent_max_abs=1.0)
    clean = _run(indrnn_recurrence, _leaves(pre, u, b, h0), g_out, g_hn, **kw)
    junky = _run(indrnn_recurrence, _leaves(dirty, u, b, h0), g_out, g_hn, **kw)
    torch.testing.assert_close(junky[0], clean[0], rtol=0, atol=0)
    torch.testing.assert_close(junky[1], clean[1], rtol=0, atol=0)
    for name, got, want in zip(("pre", "weight_hh", "bias", "h0"), junky[2], clean[2]):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    assert torch.isfinite(junky[0]).all() and torch.isfinite(junky[2][0]).all()


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_module_padding_values_change_nothing(backend, norm, batch_first):
    """NaN features at padding steps of the input change no output, state or gradient of any
    parameter (the projection's weight gradient and batch-norm statistics included)."""
    rnn = IndRNN(4, H, num_layers=3, bidirectional=True, norm=norm, residual=True,
                 batch_first=batch_first, recurrent_max_abs=1.2)
    mask = _masks(batch_first)
    x = torch.randn((B, T, 4) if batch_first else (T, B, 4))
    results = []
    for inp in (x, x.masked_fill(~mask.unsqueeze(-1), math.nan)):
        inp = inp.clone().requires_grad_()
        rnn.zero_grad()
        out, h_n = rnn(inp, mask=mask)
        (out[mask].sin().sum() + h_n.cos().sum()).backward()
        results.append((out[mask].detach(), h_n.detach(), inp.grad,
                        [p.grad.clone() for p in rnn.parameters()]))
    (out_a, hn_a, gx_a, gp_a), (out_b, hn_b, gx_b, gp_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    torch.testing.assert_close(hn_b, hn_a, rtol=0, atol=0)
    torch.testing.assert_close(gx_b, gx_a, rtol=0, atol=0)
    assert torch.equal(gx_b[~mask], torch.zeros_like(gx_b[~mask]))
    for (name, _), a, b in zip(rnn.named_parameters(), gp_a, gp_b, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_functional_layer_padding_values_change_nothing():
    mask = _masks()
    x = torch.randn(T, B, 4)
    w = torch.randn(H, 4, requires_grad=True)
    u = torch.rand(H)
    grads = []
    for inp in (x, x.masked_fill(~mask.unsqueeze(-1), math.inf)):
        w.grad = None
        out, h_n = indrnn_layer(inp, w, u, mask=mask)
        (out.sum() + h_n.sum()).backward()
        grads.append((out, w.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# NaN at a real step propagates on every path, as torch.relu (item 5).
# ----------------------------------------------------------------------------------------------


def _assert_same_nans_and_close(got, want, name):
    got, want = got.double(), want.double()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"NaN pattern of {name}"
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("where", ["pre", "weight_hh", "bias", "h0"])
@pytest.mark.parametrize("clip", [False, True], ids=["noclip", "clip"])
def test_nan_at_a_real_step_propagates_like_the_reference(backend, where, clip):
    pre = torch.randn(T, B, H)
    u = torch.rand(H) * 1.8 - 0.9
    b = torch.randn(H) * 0.1
    h0 = torch.rand(B, H)
    target = {"pre": pre[2, 1], "weight_hh": u, "bias": b, "h0": h0[1]}[where]
    target[3] = math.nan
    kw = dict(recurrent_max_abs=0.8, recurrent_min_abs=0.1) if clip else {}
    g_out, g_hn = torch.randn(T, B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    got = _run(fused_indrnn, _leaves(pre, u, b, h0), g_out, g_hn, **kw)
    ref = _run(indrnn_reference, _leaves(*(t.double() for t in (pre, u, b, h0))), g_out, g_hn,
               **kw)
    assert torch.isnan(got[0]).any(), "a NaN input must give a NaN output"
    _assert_same_nans_and_close(got[0], ref[0], "output")
    _assert_same_nans_and_close(got[1], ref[1], "h_n")
    for name, a, w in zip(("pre", "weight_hh", "bias", "h0"), got[2], ref[2]):
        _assert_same_nans_and_close(a, w, f"grad of {name}")


# ----------------------------------------------------------------------------------------------
# Strided and expanded (H,) vectors and states (item 3).
# ----------------------------------------------------------------------------------------------


# (base shape, view): a vector of n elements that is a view of ``base``, never a packed array.
STRIDED = {
    "column": (lambda n: (n, 2), lambda t: t[:, 0]),
    "diagonal": (lambda n: (n, n), lambda t: t.diagonal()),
    "expanded": (lambda n: (), lambda t, n: t.expand(n)),
    "every_other": (lambda n: (2 * n,), lambda t: t[::2]),
}


@pytest.mark.parametrize("kind", list(STRIDED))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_strided_and_expanded_vectors_are_read_by_value(backend, kind, bidirectional):
    """weight_hh, bias and h0 as strided or zero-stride views (the leaves are their bases, so
    the views reach the op as they are): same outputs and gradients as packed copies."""
    D = 2 if bidirectional else 1
    n = D * H
    base_shape, view = STRIDED[kind]
    if kind == "expanded":
        view_n = lambda t: view(t, n)  # noqa: E731
        view_h = lambda t: t.expand(D, B, H)  # noqa: E731
        h_base = torch.tensor(0.3)
    else:
        view_n = view
        # A (D, B, H) view of (B, D, 2H): transposed, every other element.
        view_h = lambda t: t.transpose(0, 1)[..., ::2]  # noqa: E731
        h_base = torch.rand(B, D, 2 * H)
    u_base = torch.rand(base_shape(n)) * 1.6 - 0.8
    b_base = torch.randn(base_shape(n)) * 0.1
    pre = torch.randn(T, B, n)
    g_out = torch.randn(T, B, n, dtype=torch.float64)
    g_hn = torch.randn(D, B, H, dtype=torch.float64)
    kw = dict(bidirectional=bidirectional, mask=_masks())

    def strided(p, u, b, h, **kw):
        assert not view_n(u).is_contiguous() and not view_h(h).is_contiguous()
        return indrnn_recurrence(p, view_n(u), view_n(b), view_h(h), **kw)

    def packed(p, u, b, h, **kw):
        return indrnn_recurrence(p, view_n(u).contiguous(), view_n(b).contiguous(),
                                 view_h(h).contiguous(), **kw)

    got = _run(strided, _leaves(pre, u_base, b_base, h_base), g_out, g_hn, **kw)
    want = _run(packed, _leaves(pre, u_base, b_base, h_base), g_out, g_hn, **kw)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    for name, a, w in zip(("pre", "weight_hh", "bias", "h0"), got[2], want[2]):
        torch.testing.assert_close(a, w, rtol=1e-6, atol=1e-6, msg=name)


def test_expanded_vectors_as_parameters_of_the_op(backend):
    """The issue's case: weight_hh and bias broadcast from one number, gradients flow back."""
    u = torch.tensor(0.9, requires_grad=True)
    b = torch.tensor(0.1, requires_grad=True)
    pre = torch.randn(T, B, H)
    out, h_n = fused_indrnn(pre, u.expand(H), b.expand(H))
    ref_out, ref_hn = indrnn_reference(pre.double(), u.detach().double().expand(H),
                                       b.detach().double().expand(H))
    torch.testing.assert_close(out, ref_out.float())
    (out.sum() + h_n.sum()).backward()
    u64 = u.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_()
    o, hn = indrnn_reference(pre.double(), u64.expand(H), b64.expand(H))
    (o.sum() + hn.sum()).backward()
    torch.testing.assert_close(u.grad.double(), u64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad.double(), b64.grad, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Clip bounds beyond the dtype's range (item 15).
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_clip_bound_beyond_the_dtype_range_clips_nothing(backend, dtype):
    pre = torch.randn(T, B, H).to(dtype)
    u = (torch.rand(H) * 2 - 1).to(dtype)
    leaves = _leaves(pre, u)
    out, h_n = fused_indrnn(*leaves, recurrent_max_abs=1e300)
    want_out, want_hn = fused_indrnn(pre, u)
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    torch.testing.assert_close(h_n, want_hn, rtol=0, atol=0)
    (out.float().sum() + h_n.sum()).backward()
    plain = _leaves(pre, u)
    o, hn = fused_indrnn(*plain)
    (o.float().sum() + hn.sum()).backward()
    torch.testing.assert_close(leaves[1].grad, plain[1].grad, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# float16 range (item 9): documented limit, pinned here.
# ----------------------------------------------------------------------------------------------


def test_float16_state_beyond_range_saturates_output_but_not_h_n(backend):
    """The state is float32 (h_n finite); the float16 output saturates to inf past 65504, and
    gradients through those steps are not finite: the documented float16 limit (README,
    Numerics). bfloat16 has float32's range and stays finite."""
    pre = torch.full((4, 1, 2), 5e4)
    u = torch.ones(2)
    out, h_n = fused_indrnn(pre.half(), u.half())
    assert torch.isinf(out[1:]).all() and torch.isfinite(h_n).all()
    out_bf, h_bf = fused_indrnn(pre.bfloat16(), u.bfloat16())
    assert torch.isfinite(out_bf).all()
    torch.testing.assert_close(h_bf, h_n, rtol=1e-2, atol=0)


# ----------------------------------------------------------------------------------------------
# Forward-mode AD and torch.func transforms raise (item 6).
# ----------------------------------------------------------------------------------------------


def _op_sum(pre, u):
    return fused_indrnn(pre, u)[0].sum()


@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "grad", "vjp", "vmap", "jacrev"])
def test_torch_func_transforms_raise_a_clear_error(transform):
    pre, u = torch.randn(T, B, H), torch.rand(H)
    calls = {
        "jvp": lambda: torch.func.jvp(lambda p: _op_sum(p, u), (pre,), (torch.ones_like(pre),)),
        "jacfwd": lambda: torch.func.jacfwd(_op_sum, argnums=1)(pre, u),
        "grad": lambda: torch.func.grad(_op_sum)(pre, u),
        "vjp": lambda: torch.func.vjp(_op_sum, pre, u),
        "vmap": lambda: torch.func.vmap(_op_sum, in_dims=(0, None))(pre.unsqueeze(0), u),
        "jacrev": lambda: torch.func.jacrev(_op_sum)(pre, u),
    }
    with pytest.raises(NotImplementedError, match="torch.func transforms.*reverse-mode"):
        calls[transform]()


@pytest.mark.parametrize("op_name", ["fused_indrnn", "fused_indrnn_linear"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("transform", ["jvp", "jacfwd"])
def test_compiled_forward_mode_transforms_raise_a_clear_error(backend, transform, op_name):
    """Inside torch.compile the wrapper's check cannot run: a compiled torch.func.jvp returned
    a zero tangent (aot_eager, inductor) or failed on a data pointer (eager), and later, where
    torch.compile fell back to eager inside the transform, a zero tangent on the eager backend.
    The fake implementation, the eager dispatch to the custom op and the kernels' entry now
    refuse."""
    pre, u = torch.randn(T, B, H), torch.rand(H)
    w = torch.eye(H)

    def op_sum(p, u):
        if op_name == "fused_indrnn":
            return _op_sum(p, u)
        return fused_indrnn_linear(p, w, u)[0].sum()

    calls = {
        "jvp": lambda p, t: torch.func.jvp(lambda q: op_sum(q, u), (p,), (t,)),
        "jacfwd": lambda p, t: torch.func.jacfwd(op_sum, argnums=1)(p, u),
    }
    torch._dynamo.reset()
    with pytest.raises(NotImplementedError,
                       match="does not support (torch.func transforms|forward-mode AD)"):
        torch.compile(calls[transform], backend=backend)(pre, torch.ones_like(pre))


@pytest.mark.parametrize("op_name", ["fused_indrnn", "fused_indrnn_linear"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("where", ["dual input", "level inside", "level open, plain input"])
def test_compiled_functions_refuse_an_open_forward_ad_level(where, backend, op_name):
    """Dual tensors passed into a compiled function came out with no tangent, and a dual level
    opened inside one gave a None tangent: the compiled graph runs the custom op, which cannot
    see tangents, so it refuses any open forward-AD level (also with plain inputs)."""
    pre, u, w = torch.randn(T, B, H), torch.rand(H), torch.eye(H)

    def f(q):
        return (fused_indrnn(q, u) if op_name == "fused_indrnn"
                else fused_indrnn_linear(q, w, u))[0]

    def inside(q):
        with forward_ad.dual_level():
            return forward_ad.unpack_dual(f(forward_ad.make_dual(q, torch.ones_like(q)))).tangent

    torch._dynamo.reset()
    with pytest.raises(NotImplementedError, match="does not support forward-mode AD"):
        if where == "level inside":
            torch.compile(inside, backend=backend)(pre)
        else:
            with forward_ad.dual_level():
                q = pre if where.endswith("plain input") else forward_ad.make_dual(
                    pre, torch.ones_like(pre))
                torch.compile(f, backend=backend)(q)


def test_forward_ad_dual_tensors_raise_a_clear_error():
    pre, u = torch.randn(T, B, H), torch.rand(H)
    with forward_ad.dual_level():
        dual_u = forward_ad.make_dual(u, torch.ones_like(u))
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            fused_indrnn(pre, dual_u)
        # Inside a dual level, tensors without a tangent still run.
        out, _ = fused_indrnn(pre, u)
    torch.testing.assert_close(out, fused_indrnn(pre, u)[0])


def test_module_under_forward_ad_raises():
    rnn = IndRNN(4, H)
    x = torch.randn(T, B, 4)
    with forward_ad.dual_level():
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            rnn(forward_ad.make_dual(x, torch.ones_like(x)))


def test_autograd_functional_jacobian_still_works():
    """The reverse-mode route the error message points to gives the float64 reference's
    Jacobian."""
    pre, u = torch.randn(3, 2, 2, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    got = torch.autograd.functional.jacobian(lambda p: fused_indrnn(p, u)[0], pre)
    want = torch.autograd.functional.jacobian(lambda p: indrnn_reference(p, u)[0], pre)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("path", ["compiled", "torch", "triton"])
def test_batched_output_gradients_equal_one_at_a_time(monkeypatch, path):
    """vmap over the backward (is_grads_batched, a vectorized jacobian) reached the kernels with
    batched tensors: "Cannot access data pointer of Tensor that doesn't have storage" on the
    compiled CPU path, "Batching rule not implemented" on the torch one, then a
    NotImplementedError. The eager backward now hands a batch to the custom op, which torch
    runs once per gradient: the float64 reference's Jacobian, and each row of a batch equal to
    its own backward."""
    monkeypatch.setattr(op, "cpu_uses_compiled", path == "compiled")
    monkeypatch.setattr(op, "cpu_uses_triton", path == "triton")
    pre = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    u = torch.rand(3, dtype=torch.float64) * 2 - 1
    kw = dict(recurrent_max_abs=0.9, mask=torch.tensor([[1, 1, 1, 0, 1]] * 2).T.bool())
    got = torch.autograd.functional.jacobian(lambda p: fused_indrnn(p, u, **kw)[0], pre,
                                             vectorize=True)
    want = torch.autograd.functional.jacobian(lambda p: indrnn_reference(p, u, **kw)[0], pre)
    torch.testing.assert_close(got, want)
    out, h_n = fused_indrnn(pre, u, **kw)
    grads = torch.randn(4, *out.shape, dtype=out.dtype)
    (batch,) = torch.autograd.grad(out, pre, grads, is_grads_batched=True, retain_graph=True)
    for g, b in zip(grads, batch, strict=True):
        assert torch.equal(b, torch.autograd.grad(out, pre, g, retain_graph=True)[0])


def test_clip_bounds_beyond_the_dtype_clip_nothing_everywhere():
    """A recurrent_max_abs above float32's range clips nothing (README): so in the reference
    too (it failed converting the bound), and modules initialise their weights within the
    dtype (uniform_ failed converting the default (0, r) range; also float16 beyond 65504)."""
    pre, u = torch.randn(T, B, H), torch.rand(H) * 3
    torch.testing.assert_close(indrnn_reference(pre, u, recurrent_max_abs=1e39)[0],
                               indrnn_reference(pre, u)[0], rtol=0, atol=0)
    for dtype, r in ((torch.float32, 1e39), (torch.float16, 1e5)):
        rnn = IndRNN(4, H, recurrent_max_abs=r, dtype=dtype)
        assert torch.isfinite(rnn.weight_hh_l0).all()
    cell = IndRNNCell(4, H, recurrent_max_abs=1e39)
    assert torch.isfinite(cell.weight_hh).all()


# ----------------------------------------------------------------------------------------------
# torch.compile with dynamic shapes (item 14).
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_compile_dynamic_fullgraph_changing_t_and_b():
    rnn = IndRNN(4, H, num_layers=2, recurrent_max_abs=1.1, recurrent_min_abs=0.05,
                 norm="batch")
    compiled = torch.compile(rnn, dynamic=True, fullgraph=True)
    for t, b in ((5, 2), (9, 3), (4, 6)):
        x = torch.randn(t, b, 4)
        mask = torch.rand(t, b) < 0.8
        out_c, h_c = compiled(x, mask=mask)
        out, h_n = rnn(x, mask=mask)
        torch.testing.assert_close(out_c, out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h_c, h_n, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Batch norm with an all-padding batch (item 7).
# ----------------------------------------------------------------------------------------------


def test_batches_of_fewer_than_two_real_steps_leave_batch_norm_statistics_unchanged():
    """No real step: no statistics; one: no unbiased variance (it pulled running_var towards 0;
    torch.nn.BatchNorm1d refuses one value per feature in training)."""
    rnn = IndRNN(4, H, norm="batch")
    bn = rnn.norms[0]
    rnn(torch.randn(T, B, 4))  # move the statistics away from their start
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    for _ in range(10):
        out, _ = rnn(torch.randn(T, B, 4), mask=torch.zeros(T, B, dtype=torch.bool))
        assert torch.isfinite(out).all()
    torch.testing.assert_close(bn.running_mean, mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, var, rtol=0, atol=0)
    mask = torch.zeros(T, B, dtype=torch.bool)
    mask[0, 0] = True
    out, _ = rnn(torch.randn(T, B, 4), mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(bn.running_var, var, rtol=0, atol=0)
    # Two real steps anywhere in the batch update them again.
    mask[T - 1, B - 1] = True
    rnn(torch.randn(T, B, 4), mask=mask)
    assert not torch.equal(bn.running_mean, mean) and not torch.equal(bn.running_var, var)


# ----------------------------------------------------------------------------------------------
# Module construction and input checks (items 2 and 17).
# ----------------------------------------------------------------------------------------------


def _nan_empty(*size, **kwargs):
    """torch.empty that returns what uninitialised memory can hold, so a skipped init shows."""
    if len(size) == 1 and not isinstance(size[0], int):
        size = tuple(size[0])
    return torch.full(size, math.nan, **kwargs)


@pytest.mark.parametrize("init", ["returns_new", "does_nothing", "in_place", "torch_init"])
def test_callable_input_weight_init_never_leaves_garbage(init, monkeypatch):
    monkeypatch.setattr(torch, "empty", _nan_empty)
    fns = {
        "returns_new": lambda w: torch.full_like(w, 0.25),
        "does_nothing": lambda w: None,
        "in_place": lambda w: w.fill_(0.5),
        "torch_init": lambda w: torch.nn.init.constant_(w, 0.75),
    }
    rnn = IndRNN(4, H, num_layers=2, input_weight_init=fns[init])
    for k in range(2):
        w = getattr(rnn, f"weight_ih_l{k}")
        assert torch.isfinite(w).all()
        if init == "returns_new":
            assert torch.all(w == 0.25)
        elif init == "in_place":
            assert torch.all(w == 0.5)
        elif init == "torch_init":
            assert torch.all(w == 0.75)
        else:  # the default, kaiming_uniform(a=8): bound sqrt(6 / ((1 + 64) * fan_in))
            bound = math.sqrt(6 / (65 * w.shape[1]))
            assert w.abs().max() <= bound and w.abs().max() > 0
    cell = IndRNNCell(4, H, input_weight_init=fns[init])
    assert torch.isfinite(cell.weight_ih).all()


def test_callable_input_weight_init_returning_a_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"input_weight_init returned a tensor of shape \(3,\)"):
        IndRNN(4, H, input_weight_init=lambda w: torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.int64], ids=str)
def test_input_dtype_mismatch_says_how_to_convert(dtype):
    rnn, cell = IndRNN(4, H), IndRNNCell(4, H)
    x = torch.ones(T, B, 4).to(dtype)
    expect = "floating-point" if dtype == torch.int64 else r"does not match the weight dtype"
    with pytest.raises(TypeError, match=expect) as info:
        rnn(x)
    assert "x.to(torch.float32)" in str(info.value)
    with pytest.raises(TypeError, match=expect):
        cell(x[0])


def test_autocast_still_takes_other_input_dtypes():
    rnn = IndRNN(4, H)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = rnn(torch.randn(T, B, 4, dtype=torch.float16))
        assert out.dtype == torch.bfloat16
        with pytest.raises(TypeError, match="does not match the weight dtype"):
            rnn(torch.randn(T, B, 4, dtype=torch.float64))  # autocast leaves float64 alone


# ----------------------------------------------------------------------------------------------
# Through the Hugging Face models: NaN-filled, left-padded inputs_embeds (item 4).
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["sequence", "token", "causal"])
@pytest.mark.parametrize("norm", [None, "batch"])
def test_hf_model_nan_inputs_embeds_at_padding_change_nothing(backend, head, norm):
    from hf_integration import (
        IndRNNConfig,
        IndRNNForCausalLM,
        IndRNNForSequenceClassification,
        IndRNNForTokenClassification,
    )

    cls = {"sequence": IndRNNForSequenceClassification, "token": IndRNNForTokenClassification,
           "causal": IndRNNForCausalLM}[head]
    config = IndRNNConfig(vocab_size=20, embedding_size=6, hidden_size=8, num_hidden_layers=2,
                          num_labels=3, norm=norm, recurrent_max_abs=1.2)
    torch.manual_seed(0)
    model = cls(config).train()
    attention_mask = (torch.arange(T) >= torch.tensor([0, 2, 5])[:, None]).long()  # left padding
    embeds = torch.randn(B, T, 6)
    labels = (torch.arange(B) % 3 if head == "sequence"
              else torch.randint(0, 3, (B, T)).masked_fill(attention_mask == 0, -100))
    results = []
    for inputs in (embeds, embeds.masked_fill(attention_mask[..., None] == 0, math.nan)):
        inputs = inputs.clone().requires_grad_()
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        out = model(inputs_embeds=inputs, attention_mask=attention_mask, labels=labels)
        out.loss.backward()
        results.append((out.loss.detach(), inputs.grad,
                        {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}))
    (loss_a, gx_a, gp_a), (loss_b, gx_b, gp_b) = results
    assert torch.isfinite(loss_b)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    torch.testing.assert_close(gx_b, gx_a, rtol=0, atol=0)
    assert gp_a.keys() == gp_b.keys() and any("rnn" in n for n in gp_a)
    for name in gp_a:
        torch.testing.assert_close(gp_b[name], gp_a[name], rtol=0, atol=0, msg=name)
