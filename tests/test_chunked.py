"""The chunked (time-parallel) kernels beyond the op tests every backend runs (tests/test_op.py
and tests/test_numerics.py run with the ``chunked`` backend too): chunk boundaries, weights at
the clip bounds, all-padding chunks, overflow of a chunk's product of u, a long sequence, and
the ``method`` argument and ``"auto"`` heuristic.

Under the interpreter a chunk is 8 steps (``chunked.MIN_CHUNK``), so T = 33 spans five chunks
with a one-step last chunk and T = 7 is shorter than one chunk.
"""

import functools

import pytest
import test_op
import torch
from test_op import check_against_reference, make_inputs, make_mask

import indrnn_triton.op as op
from indrnn_triton import fused_indrnn
from indrnn_triton.functional import indrnn_layer, indrnn_recurrence
from indrnn_triton.op import _forward_op, choose_method

pytestmark = pytest.mark.usefixtures("poison")


@pytest.fixture
def chunked(monkeypatch):
    """fused_indrnn through the chunked Triton kernels (interpreted), with method="chunked"."""
    if op.kernels is None or not op.kernels.INTERPRET:
        pytest.skip("TRITON_INTERPRET=0: the kernels are built for the GPU (tests/test_cuda.py)")
    monkeypatch.setattr(op, "cpu_uses_triton", True)
    monkeypatch.setattr(test_op, "fused_indrnn", functools.partial(fused_indrnn, method="chunked"))
    return op.chunked


def _count_chunked_calls(monkeypatch) -> list[str]:
    """Record each call of the chunked forward and backward launchers."""
    calls = []
    for name in ("triton_forward", "triton_backward"):
        orig = getattr(op.chunked, name)

        def counted(*args, orig=orig, name=name):
            calls.append(name)
            return orig(*args)

        monkeypatch.setattr(op.chunked, name, counted)
    return calls


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 3, 5), (8, 1, 5), (33, 3, 130), (17, 1, 66)],
                         ids=lambda s: "T{}-B{}-H{}".format(*s))
def test_chunk_boundaries_match_reference(chunked, shape):
    """T = 1, T shorter than a chunk, exactly one chunk, several chunks with a 1-step tail,
    H not a multiple of the hidden block; every flag on."""
    T, B, H = shape
    pre, u, b, h0, kw = make_inputs(T, B, H, torch.float32, h0=True, bias=True,
                                    batch_first=True, clip="both")
    mask = make_mask("right", T, B, batch_first=True)
    check_against_reference(pre, u, b, h0, mask=mask, reverse=True, batch_first=True, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=str)
def test_weights_of_both_signs_zero_and_at_the_clip_bounds(chunked, dtype):
    """u in {0, ±m, ±r, inside, outside}: the clip's kept/clipped edges and a zero weight (the
    map's bounds then collapse) in every dtype."""
    T, B = 21, 2
    u = torch.tensor([-1.2, -0.9, -0.5, -0.2, -0.1, 0.0, 0.1, 0.2, 0.5, 0.9, 1.2], dtype=dtype)
    H = u.numel()
    pre = torch.randn(T, B, H).to(dtype)
    b = (torch.randn(H) * 0.1).to(dtype)
    h0 = torch.rand(B, H).to(dtype)
    check_against_reference(pre, u, b, h0, recurrent_max_abs=0.9, recurrent_min_abs=0.2)


def test_all_padding_chunks_rows_and_steps(chunked):
    """A row with no real step, whole chunks of padding (identity maps) and steps where every
    row is padding, forwards and reversed."""
    T, B, H = 30, 3, 5
    mask = torch.rand(T, B) < 0.6
    mask[:, 1] = False  # a row of padding only
    mask[8:16] = False  # a whole chunk (steps 8..15) of padding
    mask[3] = False  # one all-padding step
    mask[0, 0] = True
    for reverse in (False, True):
        pre, u, b, h0, kw = make_inputs(T, B, H, torch.float32, h0=True, bias=True,
                                        batch_first=False, clip="max")
        check_against_reference(pre, u, b, h0, mask=mask, reverse=reverse, **kw)


def test_product_of_u_overflowing_a_chunk_falls_back_to_steps(chunked, monkeypatch):
    """|u| = 50 without a clip: over the first 32-step chunk (20 real steps, 12 of padding) the
    composed factors U and P are 50^20, while the recurrence stays bounded (h sits on the fixed
    point h = 1 of h = relu(1 - u + u h) up to step 32, the first of the next chunk, which
    depends on the carried state; then it is reset and alternates between 0.5 and 0).
    Applying that map would cancel two ~1e34 terms into rounding noise (h = 0 instead of 1
    entering step 32); the carry passes must walk the chunk step by step instead."""
    monkeypatch.setattr(chunked, "MIN_CHUNK", 32)
    T, B = 40, 2
    u = torch.tensor([50.0, -50.0, 0.5])
    steps = torch.arange(T)[:, None, None].expand(T, B, 3)
    fixed = (1 - u).expand(T, B, 3)
    late = torch.where(steps % 2 == 1, torch.tensor(-100.0), torch.tensor(0.5))
    pre = torch.where(steps <= 32, fixed, late).contiguous()
    mask = (torch.arange(T) < 20) | (torch.arange(T) >= 32)
    mask = mask[:, None].expand(T, B)
    h0 = torch.ones(B, 3)
    check_against_reference(pre, u, None, h0, mask=mask)


@pytest.mark.slow
def test_long_sequence_chunked_equals_sequential_to_float32_rounding(chunked, monkeypatch):
    """T = 2048 with the papers' clip r = 2^(1/T) (u at and inside the bound, both signs):
    chunked kernels against the sequential CPU path, forward and all four gradients."""
    monkeypatch.setattr(chunked, "MIN_CHUNK", 128)
    T, B, H = 2048, 1, 4
    r = 2 ** (1 / T)
    pre = torch.rand(T, B, H) - 0.3
    u = torch.tensor([1.5, r, 0.999, -r])
    b = torch.full((H,), 0.01)
    h0 = torch.rand(B, H)
    kw = dict(recurrent_max_abs=r)
    results = []
    for use_triton in (True, False):
        monkeypatch.setattr(op, "cpu_uses_triton", use_triton)
        leaves = [t.clone().requires_grad_() for t in (pre, u, b, h0)]
        out, h_n = fused_indrnn(*leaves, method="chunked", **kw)
        g = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        ((out * g).sum() + h_n.sum()).backward()
        results.append([out, h_n] + [t.grad for t in leaves])
    for name, got, want in zip(("out", "h_n", "pre", "u", "b", "h0"), *results):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * want.abs().max().item(),
                                   msg=name)


@pytest.mark.parametrize("batch_first", [False, True])
def test_two_directions_in_one_chunked_launch(chunked, batch_first):
    """The op's two-direction form through the chunked kernels equals it through the CPU path
    (float64, tight), each direction on its strided half."""
    T, B, H = 19, 3, 70
    pre = torch.randn((B, T, 2 * H) if batch_first else (T, B, 2 * H), dtype=torch.float64)
    u = torch.rand(2 * H, dtype=torch.float64) * 2.4 - 1.2
    b = torch.randn(2 * H, dtype=torch.float64)
    h0 = torch.rand(2, B, H, dtype=torch.float64)
    mask = make_mask("left", T, B, batch_first)
    grads = []
    for use_triton in (True, False):
        op.cpu_uses_triton = use_triton  # restored by the fixture's monkeypatch
        leaves = [t.clone().requires_grad_() for t in (pre, u, b, h0)]
        out, h_n = _forward_op(*leaves, mask, 0.9, 0.1, False, batch_first, True, "chunked")
        g = torch.cos(torch.arange(out.numel(), dtype=torch.float64)).reshape(out.shape)
        ((out * g).sum() + h_n.sum()).backward()
        grads.append([out, h_n] + [t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_functional_layers_pass_method_through(chunked, monkeypatch):
    calls = _count_chunked_calls(monkeypatch)
    T, B, n_in, H = 9, 2, 3, 4
    x = torch.randn(T, B, n_in, requires_grad=True)
    w = torch.randn(2 * H, n_in)
    out, _ = indrnn_layer(x, w, torch.rand(2 * H), bidirectional=True, method="chunked")
    out.sum().backward()
    assert calls == ["triton_forward", "triton_backward"]
    calls.clear()
    pre = torch.randn(T, B, H)
    indrnn_recurrence(pre, torch.rand(H), method="chunked")
    indrnn_recurrence(pre, torch.rand(H), method="sequential")
    assert calls == ["triton_forward"]


def test_chunked_on_cpu_without_the_interpreter_is_the_cpu_path():
    """op.cpu_uses_triton is False (the default outside TRITON_INTERPRET=1): every method runs
    the torch CPU path, bit for bit."""
    pre, u, b, h0, kw = make_inputs(12, 2, 5, torch.float32, h0=True, bias=True,
                                    batch_first=False, clip="max")
    want = fused_indrnn(pre, u, b, h0, method="sequential", **kw)
    for method in ("chunked", "auto"):
        torch.testing.assert_close(fused_indrnn(pre, u, b, h0, method=method, **kw), want,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("method", ["Chunked", "parallel", "", None, 1])
def test_bad_method_raises_clear_error(method):
    with pytest.raises(ValueError, match="method must be one of 'auto', 'sequential', 'chunked'"):
        fused_indrnn(torch.randn(3, 2, 4), torch.rand(4), method=method)
    with pytest.raises(ValueError, match="method must be one of"):
        indrnn_recurrence(torch.randn(3, 2, 8), torch.rand(8), bidirectional=True, method=method)


@pytest.mark.parametrize(
    "elements,T,dtype,sms,want",
    [
        (16384, 1024, torch.float32, 132, "chunked"),  # B=16, H=1024 on an H200
        (4 * 1024, 32768, torch.float32, 132, "chunked"),  # B=4, H=1024, T=32768
        (256, 100_000, torch.bfloat16, 132, "chunked"),  # B=1, H=256, T=100000
        (65536, 1024, torch.float32, 132, "sequential"),  # ~500 per SM: fp32 keeps up
        (65536, 1024, torch.bfloat16, 132, "chunked"),  # 16-bit falls behind earlier
        (65536, 1024, torch.float32, 264, "chunked"),  # scales with the SM count
        (262144, 1024, torch.bfloat16, 132, "sequential"),
        (16384, 255, torch.float32, 132, "sequential"),  # too short for chunks to pay
        (16384, 256, torch.float32, 132, "chunked"),
        (33792, 1024, torch.float64, 132, "chunked"),  # the fp32 threshold, inclusive
        (33793, 1024, torch.float64, 132, "sequential"),
    ],
)
def test_auto_heuristic(elements, T, dtype, sms, want):
    assert choose_method(elements, T, dtype, sms) == want


def test_chunk_length_fills_the_gpu_and_respects_the_minimum(chunked, monkeypatch):
    monkeypatch.setattr(chunked, "MIN_CHUNK", 64)
    monkeypatch.setattr(chunked, "CHUNK", 8)
    monkeypatch.setattr(chunked, "PROGRAMS_PER_SM", 16)
    # 16 tiles on 132 SMs: 132 chunks wanted; T = 32768 gives 249 steps, rounded up to 256.
    assert chunked.chunk_length(32768, 16, 132) == 256
    # Many tiles: one chunk would do, the whole sequence.
    assert chunked.chunk_length(1000, 10**6, 132) == 1000
    # Few steps: never below MIN_CHUNK.
    assert chunked.chunk_length(100, 1, 132) == 64
