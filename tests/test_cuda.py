"""The Triton kernels on a CUDA GPU against the float64 reference (run by benchmarks/gpu_check.sh).

Run with TRITON_INTERPRET=0 exported (tests/conftest.py otherwise sets it to 1 and the kernels
would be interpreted). Every buffer the op allocates is filled with NaN first, so an element a
kernel never writes fails the comparison. Compiles are kept few: every test pins the autotuner to
one config, except the config sweep, which runs each config once.
"""


import pytest
import torch

import indrnn_triton.op as op
from indrnn_triton import fused_indrnn, indrnn_reference
from indrnn_triton.functional import indrnn_recurrence

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.usefixtures("poison"),  # every buffer the op allocates starts as NaN
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        op.kernels is not None and op.kernels.INTERPRET,
        reason="TRITON_INTERPRET=1 interprets the kernels: export TRITON_INTERPRET=0",
    ),
]
tk = op.sequential
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
FLAGS = {
    "plain": {},
    "h0": dict(h0=True),
    "no_bias": dict(bias=False),
    "mask_right": dict(mask="right"),
    "mask_left": dict(mask="left"),
    "reverse": dict(reverse=True),
    "clip": dict(clip=True),
    "batch_first": dict(batch_first=True),
    "all": dict(h0=True, mask="right", reverse=True, clip=True, batch_first=True),
}




def _tuners():
    """The autotuners of the forward and backward kernels (under their heuristics wrappers)."""
    return tk._indrnn_fwd_kernel.fn, tk._indrnn_bwd_kernel.fn


def _pin(monkeypatch, fwd_config, bwd_config=None):
    """Make the autotuners use one config each (no tuning run, one compile per variant)."""
    for tuner, config in zip(_tuners(), (fwd_config, bwd_config or fwd_config), strict=True):
        monkeypatch.setattr(tuner, "configs", [config])
        monkeypatch.setattr(tuner, "cache", {})


@pytest.fixture
def pinned(monkeypatch):
    """One small config of each kernel's own list: several B and H blocks on awkward shapes."""
    _pin(monkeypatch, *(min(t.configs, key=lambda c: (c.kwargs["BLOCK_H"], -c.kwargs["BLOCK_B"]))
                        for t in _tuners()))


def _mask(kind, T, B, device):
    lengths = torch.randint(1, T + 1, (B,), device=device)
    lengths[0] = T
    steps = torch.arange(T, device=device)[:, None]
    return steps < lengths if kind == "right" else steps >= T - lengths


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-6)).item()


def _check(dtype, T, B, H, f, *, grad=True, dev="cuda", method="auto"):
    g = torch.Generator(device=dev).manual_seed(0)
    bf = f.get("batch_first", False)
    shape = (B, T, H) if bf else (T, B, H)
    pre = torch.randn(shape, device=dev, generator=g).to(dtype).requires_grad_()
    u = (torch.rand(H, device=dev, generator=g) * 2.4 - 1.2).requires_grad_()
    bias = (0.1 * torch.randn(H, device=dev, generator=g)).requires_grad_() \
        if f.get("bias", True) else None
    h0 = torch.rand(B, H, device=dev, generator=g).requires_grad_() if f.get("h0") else None
    mask = None
    if f.get("mask"):
        mask = _mask(f["mask"], T, B, dev)
        mask = mask.T.contiguous() if bf else mask
    kw = dict(mask=mask, reverse=f.get("reverse", False), batch_first=bf,
              recurrent_max_abs=1.0 if f.get("clip") else None,
              recurrent_min_abs=0.1 if f.get("clip") else 0.0)
    out, h_n = fused_indrnn(pre, u, bias, h0, method=method, **kw)
    leaves = [t for t in (pre, u, bias, h0) if t is not None]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    it = iter(ref_leaves)
    r_pre, r_u = next(it), next(it)
    r_bias = next(it) if bias is not None else None
    r_h0 = next(it) if h0 is not None else None
    ref_out, ref_hn = indrnn_reference(r_pre, r_u, r_bias, r_h0, **kw)
    assert out.dtype == dtype and h_n.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all()
    tol = TOL[dtype]
    assert _rel_err(out, ref_out) < tol
    assert _rel_err(h_n, ref_hn) < tol
    if not grad:
        return
    g_out = torch.randn(out.shape, device=dev, generator=g)
    g_hn = torch.randn(h_n.shape, device=dev, generator=g)
    grads = torch.autograd.grad((out.float() * g_out).sum() + (h_n * g_hn).sum(), leaves)
    ref_grads = torch.autograd.grad(
        (ref_out * g_out.double()).sum() + (ref_hn * g_hn.double()).sum(), ref_leaves)
    for name, a, b in zip(("pre", "weight_hh", "bias", "h0"), grads, ref_grads, strict=False):
        assert torch.isfinite(a).all(), name
        assert _rel_err(a, b) < (tol if a.numel() < 4096 else 2 * tol), name


@pytest.mark.parametrize("flags", list(FLAGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernels_match_reference(pinned, dtype, flags):
    _check(dtype, 33, 3, 130, FLAGS[flags])


@pytest.mark.parametrize("flags", list(FLAGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_chunked_kernels_match_reference(dtype, flags):
    """The chunked kernels compiled: several 64-step chunks and a partial one, partial blocks."""
    _check(dtype, 300, 3, 300, FLAGS[flags], method="chunked")


def test_chunked_long_sequence_matches_sequential():
    """T = 20000 with the papers' clip: chunked equals sequential to float32 rounding."""
    T, B, H = 20000, 2, 256
    g = torch.Generator(device="cuda").manual_seed(0)
    pre = torch.rand(T, B, H, device="cuda", generator=g) - 0.3
    u = torch.rand(H, device="cuda", generator=g) * 0.2 + 0.9
    r = 2 ** (1 / T)
    outs = [fused_indrnn(pre, u, recurrent_max_abs=r, method=m) for m in ("sequential", "chunked")]
    for a, b in zip(*outs):
        assert _rel_err(a, b) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_several_tiles_and_long_sequence(pinned, dtype):
    # "auto" would pick the chunked method for 17 x 1030 on a large GPU: the pinned sequential
    # tiles are what this checks.
    _check(dtype, 300, 17, 1030, FLAGS["all"], method="sequential")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bidirectional_launch_matches_two_references(pinned, dtype):
    """Both directions in one launch: the second half of the features runs from T-1 to 0."""
    T, B, H = 33, 3, 130
    g = torch.Generator(device="cuda").manual_seed(0)
    pre = torch.randn(T, B, 2 * H, device="cuda", generator=g).to(dtype).requires_grad_()
    u = (torch.rand(2 * H, device="cuda", generator=g) * 2.4 - 1.2).requires_grad_()
    bias = (0.1 * torch.randn(2 * H, device="cuda", generator=g)).requires_grad_()
    h0 = torch.rand(2, B, H, device="cuda", generator=g).requires_grad_()
    mask = _mask("right", T, B, "cuda")
    kw = dict(recurrent_max_abs=1.0, recurrent_min_abs=0.1, mask=mask)
    out, h_n = indrnn_recurrence(pre, u, bias, h0, bidirectional=True, **kw)
    leaves = (pre, u, bias, h0)
    refs = [t.detach().double().requires_grad_() for t in leaves]
    halves = [indrnn_reference(refs[0][..., d * H:(d + 1) * H], refs[1][d * H:(d + 1) * H],
                               refs[2][d * H:(d + 1) * H], refs[3][d], reverse=d == 1, **kw)
              for d in (0, 1)]
    ref_out = torch.cat([o for o, _ in halves], -1)
    ref_hn = torch.stack([h for _, h in halves])
    tol = TOL[dtype]
    assert _rel_err(out.cpu(), ref_out) < tol and _rel_err(h_n.cpu(), ref_hn) < tol
    g_out = torch.randn(out.shape, device="cuda", generator=g)
    grads = torch.autograd.grad((out.float() * g_out).sum() + h_n.sum(), leaves)
    ref_grads = torch.autograd.grad((ref_out * g_out.double()).sum() + ref_hn.sum(), refs)
    for name, a, b in zip(("pre", "weight_hh", "bias", "h0"), grads, ref_grads, strict=True):
        assert _rel_err(a, b) < tol, name


def test_every_autotune_config(monkeypatch):
    """Each config of the real (non-interpreter) lists, with every flag on, in float32."""
    fwd, bwd = (list(t.configs) for t in _tuners())
    assert len(fwd) == len(bwd)
    for fwd_config, bwd_config in zip(fwd, bwd, strict=True):
        _pin(monkeypatch, fwd_config, bwd_config)
        _check(torch.float32, 7, 5, 300, FLAGS["all"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_staged_configs_16_bit(monkeypatch, dtype):
    """The configs whose time loop Triton's pipeliner stages through shared memory (STAGES > 1,
    cp.async), in the 16-bit dtypes (test_every_autotune_config runs every config in float32):
    one tile of 4 elements per thread (8-byte copies) and one of 8 (16-byte copies), every flag
    on. T = 203 runs the pipeline's prologue, many full iterations and a partial last chunk;
    H = 300 leaves a partial feature block. Few compiles: gpu_check.sh gives this file 140 s."""
    per_thread = {}  # elements per thread -> the first staged config with that many
    for c in tk.gpu_configs():
        if c.kwargs["STAGES"] > 1:
            n = c.kwargs["BLOCK_B"] * c.kwargs["BLOCK_H"] // (32 * c.num_warps)
            per_thread.setdefault(n, c)
    assert set(per_thread) == {4, 8}
    for config in per_thread.values():
        _pin(monkeypatch, config)
        _check(dtype, 203, 3, 300, FLAGS["all"])


def test_int64_offsets_over_2_pow_31_elements(pinned):
    """T*B*H > 2^31 elements (bf16, 4.8 GB a tensor): rows at the far end of memory must be
    right, which needs 64-bit offsets. Rows are independent, so a slice is checked."""
    T, B, H = 9, 16384, 16400
    assert T * B * H > 2**31
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip(f"needs 40 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    pre = torch.randn(T, B, H, device="cuda", dtype=torch.bfloat16).requires_grad_()
    u = torch.rand(H, device="cuda", requires_grad=True)
    out, h_n = fused_indrnn(pre, u)
    g = torch.ones_like(out)
    (grad_pre,) = torch.autograd.grad(out, (pre,), g)
    rows = slice(B - 3, B)
    ref_pre = pre.detach()[:, rows].double().requires_grad_()
    ref_out, ref_hn = indrnn_reference(ref_pre, u.detach().double())
    (ref_grad,) = torch.autograd.grad(ref_out, (ref_pre,), g[:, rows].double())
    tol = TOL[torch.bfloat16]
    assert _rel_err(out[:, rows], ref_out) < tol
    assert _rel_err(h_n[rows], ref_hn) < tol
    assert _rel_err(grad_pre[:, rows], ref_grad) < tol
    assert torch.isfinite(grad_pre[-1]).all()


def test_chunked_int64_offsets_over_2_pow_31_elements():
    """The chunked kernels past 2^31 elements along time (B=1, H=16400, T=131100, bf16, 4.3 GB a
    tensor): the last 1000 steps of the far features against the float64 reference started
    from the kernel's own output 1000 steps before the end; outputs, h_n and the gradient of
    pre there (which depends only on later steps)."""
    T, B, H = 131_100, 1, 16_400
    assert T * B * H > 2**31
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip(f"needs 40 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    g = torch.Generator(device="cuda").manual_seed(0)
    pre = torch.randn(T, B, H, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    u = torch.rand(H, device="cuda", generator=g)  # [0, 1): bounded states over 131100 steps
    out, h_n = fused_indrnn(pre, u, method="chunked")
    (grad_pre,) = torch.autograd.grad(out, (pre,), torch.ones_like(out))
    n, feats = 1000, slice(H - 4, H)
    h0 = out.detach()[T - n - 1, :, feats].double()
    ref_pre = pre.detach()[T - n:, :, feats].double().requires_grad_()
    ref_out, ref_hn = indrnn_reference(ref_pre, u[feats].double(), None, h0)
    (ref_grad,) = torch.autograd.grad(ref_out, (ref_pre,), torch.ones_like(ref_out))
    tol = TOL[torch.bfloat16]
    assert _rel_err(out[T - n:, :, feats], ref_out) < tol
    assert _rel_err(h_n[:, feats], ref_hn) < tol
    assert _rel_err(grad_pre[T - n:, :, feats], ref_grad) < tol
    assert torch.isfinite(grad_pre[0]).all()


def test_module_on_cuda_matches_float64_cpu():
    """A 3-layer bidirectional IndRNN with batch norm, residual blocks and a padding mask, on the
    autotuned CUDA kernels, against the same module in float64 on the CPU path."""
    from indrnn_triton import IndRNN

    torch.manual_seed(0)
    B, T = 6, 70
    rnn = IndRNN(5, 48, num_layers=3, batch_first=True, bidirectional=True, norm="batch",
                 residual=True, recurrent_max_abs=2 ** (1 / T))
    ref = IndRNN(5, 48, num_layers=3, batch_first=True, bidirectional=True, norm="batch",
                 residual=True, recurrent_max_abs=2 ** (1 / T), dtype=torch.float64)
    ref.load_state_dict(rnn.state_dict())
    rnn.cuda()
    x = torch.randn(B, T, 5)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    mask = torch.arange(T)[None] < lengths[:, None]
    out, h_n = rnn(x.cuda().requires_grad_(), mask=mask.cuda())
    r_out, r_hn = ref(x.double(), mask=mask)
    assert _rel_err(out.cpu(), r_out) < 1e-4 and _rel_err(h_n.cpu(), r_hn) < 1e-4
    g = torch.randn(out.shape)
    (out * g.cuda()).sum().backward()
    (r_out * g.double()).sum().backward()
    for (name, p), (_, rp) in zip(rnn.named_parameters(), ref.named_parameters(), strict=True):
        assert _rel_err(p.grad.cpu(), rp.grad) < 1e-3, name


def test_compiled_op_on_cuda(pinned):
    """torch.compile(fullgraph=True) with the Triton kernels as the custom op's CUDA kernel."""

    def f(pre, u, b):
        out, h_n = fused_indrnn(pre, u, b, recurrent_max_abs=1.0)
        return out.float().square().sum() + h_n.sum()

    g = torch.Generator(device="cuda").manual_seed(0)
    args = [torch.randn(40, 4, 96, device="cuda", generator=g).requires_grad_(),
            torch.rand(96, device="cuda", generator=g).requires_grad_(),
            torch.randn(96, device="cuda", generator=g).requires_grad_()]
    eager = f(*args)
    eager_grads = torch.autograd.grad(eager, args)
    compiled = torch.compile(f, fullgraph=True)(*args)
    compiled_grads = torch.autograd.grad(compiled, args)
    assert _rel_err(compiled, eager) < 1e-5
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        assert _rel_err(a, b) < 1e-5


def test_exported_layers_on_cuda_equal_eager(pinned, tmp_path):
    """torch.export of bfloat16 IndRNNs on CUDA, both ops (a layer with the fused projection,
    then one with the GEMM and the recurrence), dynamic batch and time, saved and loaded: the
    program's outputs and gradients equal the eager modules' at another shape."""
    from indrnn_triton import IndRNN

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            kw = dict(bidirectional=True, batch_first=True, recurrent_max_abs=1.2,
                      device="cuda", dtype=torch.bfloat16)
            self.fused = IndRNN(17, 40, fused_projection=True, **kw)
            self.unfused = IndRNN(80, 24, fused_projection=False, **kw)

        def forward(self, x):
            out, h_fused = self.fused(x)
            out, h_unfused = self.unfused(out)
            return out, h_fused, h_unfused

    torch.manual_seed(0)
    stack = Stack()
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    x = torch.randn(3, 20, 17, device="cuda", dtype=torch.bfloat16)
    program = torch.export.export(stack, (x,), dynamic_shapes=({0: batch, 1: time},))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"indrnn_triton.indrnn_linear_forward.default",
            "indrnn_triton.indrnn_forward.default"} <= ops, ops
    torch.export.save(program, tmp_path / "stack.pt2")
    exported = torch.export.load(tmp_path / "stack.pt2").module()
    x = torch.randn(5, 77, 17, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    results = []
    for model in (exported, stack):
        out, h_fused, h_unfused = model(x)
        params = [dict(model.named_parameters())[n] for n, _ in stack.named_parameters()]
        loss = out.float().square().sum() + h_fused.sum() + h_unfused.sum()
        results.append((out, h_fused, h_unfused, *torch.autograd.grad(loss, [x, *params])))
    for got, want in zip(*results, strict=True):
        assert _rel_err(got.float(), want.float()) < 1e-6


def test_reduce_overhead_compile_replays_cuda_graphs(pinned):
    """torch.compile(mode="reduce-overhead") captures the op (forward and backward) in CUDA
    graphs: replays on new inputs copied into the same tensors match eager, so no per-call
    host work (allocation, autotuning, a .item()) breaks capture or replay."""

    def f(pre, u, b):
        out, h_n = fused_indrnn(pre, u, b, recurrent_max_abs=1.0)
        return out.float().square().sum() + h_n.sum()

    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    g = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(4):  # warm-up, record, then replays
        args = [torch.randn(40, 4, 96, device="cuda", generator=g).requires_grad_(),
                torch.rand(96, device="cuda", generator=g).requires_grad_(),
                torch.randn(96, device="cuda", generator=g).requires_grad_()]
        eager = f(*args)
        eager_grads = torch.autograd.grad(eager, args)
        got = compiled(*args)
        got_grads = torch.autograd.grad(got, args)
        assert _rel_err(got, eager) < 1e-5
        for a, b in zip(got_grads, eager_grads, strict=True):
            assert _rel_err(a, b) < 1e-5


def test_eager_path_on_cuda_equals_the_custom_op(pinned):
    """Eager calls skip the custom op's dispatch (op._EagerRecurrence) on CUDA too: outputs and
    gradients equal the registered op's, bit for bit."""
    g = torch.Generator(device="cuda").manual_seed(2)
    base = [torch.randn(33, 3, 70, device="cuda", generator=g),
            torch.rand(70, device="cuda", generator=g), torch.randn(70, device="cuda", generator=g)]
    results = []
    for via in ("eager", "custom_op"):
        leaves = [t.clone().requires_grad_() for t in base]
        if via == "eager":
            out, h_n = fused_indrnn(*leaves, recurrent_max_abs=1.0)
            assert out.grad_fn.name().endswith("_EagerRecurrenceBackward")
        else:
            out, h_n = op._forward_op(*leaves, None, None, 1.0, 0.0, False, False, False, "auto")
        (out.square().sum() + h_n.sum()).backward()
        results.append([out, h_n] + [t.grad for t in leaves])
    for a, c in zip(*results, strict=True):
        assert torch.equal(a, c)


def _cuda_causal_lm(dtype=torch.float32):
    """A small IndRNN causal LM on the GPU (eval), with greedy tokens that vary."""
    pytest.importorskip("transformers")
    from hf_integration import IndRNNConfig, IndRNNForCausalLM

    torch.manual_seed(0)
    config = IndRNNConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2,
                          recurrent_max_abs=2 ** (1 / 32), initializer_range=0.5, pad_token_id=0)
    return IndRNNForCausalLM(config).to("cuda", dtype).eval()


def test_hf_causal_lm_bf16_generation_on_cuda():
    """bfloat16 causal LM on the GPU: cached greedy tokens equal recomputing the whole prefix
    at every step, and the cached state stays float32."""
    model = _cuda_causal_lm(torch.bfloat16)
    ids = torch.randint(3, 300, (3, 9), device="cuda")
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kw)
        recomputed = model.generate(ids, use_cache=False, **kw)
        out = model(input_ids=ids, use_cache=True)
    assert cached.shape == (3, 21)
    assert torch.equal(cached, recomputed)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    assert out.logits.dtype == torch.bfloat16
    for layer in cache.layers:
        assert layer.recurrent_states[0].dtype == torch.float32


def test_hf_packed_sequences_on_cuda_with_the_collators_cpu_positions():
    """DataCollatorWithFlattening's batch (CPU position_ids, restarting at 0) for a causal LM
    on the GPU: each sequence's logits are its own, and the loss is the padded batch's."""
    model = _cuda_causal_lm()
    from transformers import DataCollatorWithFlattening  # after the importorskip

    seqs = [torch.randint(3, 300, (n,)).tolist() for n in (5, 2, 9)]
    batch = DataCollatorWithFlattening()([{"input_ids": s} for s in seqs])
    out = model(input_ids=batch["input_ids"].cuda(), labels=batch["labels"].cuda(),
                position_ids=batch["position_ids"])
    t = 0
    for seq in seqs:
        alone = model(input_ids=torch.tensor([seq], device="cuda")).logits
        torch.testing.assert_close(out.logits[:, t:t + len(seq)], alone, atol=1e-4, rtol=1e-4)
        t += len(seq)
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)], mask[i, :len(seq)] = torch.tensor(seq), 1
    padded = model(input_ids=ids.cuda(), attention_mask=mask.cuda(),
                   labels=ids.masked_fill(mask == 0, -100).cuda())
    torch.testing.assert_close(out.loss, padded.loss, atol=1e-4, rtol=1e-4)


def test_hf_generate_compiled_decode_with_cuda_graphs():
    """With an IndRNNCache on the GPU, transformers' generate() compiles the decode step
    (mode="reduce-overhead": CUDA graphs). The tokens are the eager ones, from one compiled
    frame, with no CUDA graph skipped (the states and the step count are updated in place at
    static addresses)."""
    model = _cuda_causal_lm(torch.bfloat16)
    config = model.config
    from torch._dynamo.utils import counters

    from hf_integration import IndRNNCache  # after the importorskip

    ids = torch.randint(3, 300, (3, 9), device="cuda")
    kw = dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
    eager = model.generate(ids, disable_compile=True, cache=IndRNNCache(config), **kw)
    torch._dynamo.reset()
    counters.clear()
    cache = IndRNNCache(config)
    compiled = model.generate(ids, cache=cache, **kw)
    assert hasattr(model, "_compiled_call")  # transformers compiled the decode step
    assert torch.equal(compiled, eager)
    assert cache.get_seq_length() == 9 + 16 - 1
    assert counters["frames"]["ok"] == 1 and counters["inductor"]["cudagraph_skips"] == 0


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("flags", ["plain", "all"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_projection_kernel_matches_reference(monkeypatch, dtype, flags, bidirectional):
    """fused_indrnn_linear compiled (the projection tile and the in-tile scan on tensor cores)
    against F.linear + the float64 reference, outputs and all five gradients, awkward I, T, H."""
    from indrnn_triton.functional import indrnn_layer

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    f = FLAGS[flags]
    T, B, n_in, H = 70, 3, 17, 130
    D = 2 if bidirectional else 1
    g = torch.Generator(device="cuda").manual_seed(0)
    bf = f.get("batch_first", False)
    x = torch.randn((B, T, n_in) if bf else (T, B, n_in), device="cuda", generator=g).to(dtype)
    w = (torch.randn(D * H, n_in, device="cuda", generator=g) * n_in ** -0.5).to(dtype)
    u = torch.rand(D * H, device="cuda", generator=g) * 2.4 - 1.2
    b = 0.1 * torch.randn(D * H, device="cuda", generator=g)
    h0 = torch.rand(D, B, H, device="cuda", generator=g) if f.get("h0") else None
    mask = None
    if f.get("mask"):
        mask = _mask(f["mask"], T, B, "cuda")
        mask = mask.T.contiguous() if bf else mask
    kw = dict(mask=mask, batch_first=bf, bidirectional=bidirectional,
              recurrent_max_abs=1.0 if f.get("clip") else None,
              recurrent_min_abs=0.1 if f.get("clip") else 0.0)
    leaves = [t.requires_grad_() for t in (x, w, u, b) + ((h0,) if h0 is not None else ())]
    out, h_n = indrnn_layer(*leaves[:4], h0, fused_projection=True, **kw)
    # The reference: float64 on the CPU (F.linear, then the recurrence's CPU path).
    ref = [t.detach().cpu().double().requires_grad_() for t in leaves]
    ref_kw = dict(kw, mask=None if mask is None else mask.cpu())
    ref_out, ref_hn = indrnn_layer(*ref[:4], ref[4] if h0 is not None else None,
                                   fused_projection=False, **ref_kw)
    tol = TOL[dtype]
    assert _rel_err(out.cpu(), ref_out) < tol and _rel_err(h_n.cpu(), ref_hn) < tol
    g_out = torch.randn(out.shape, device="cuda", generator=g)
    grads = torch.autograd.grad((out.float() * g_out).sum() + h_n.sum(), leaves)
    ref_grads = torch.autograd.grad((ref_out * g_out.cpu().double()).sum() + ref_hn.sum(), ref)
    for name, a, r in zip(("x", "weight_ih", "weight_hh", "bias", "h0"), grads, ref_grads,
                          strict=False):
        assert torch.isfinite(a).all(), name
        assert _rel_err(a.cpu(), r) < 2 * tol, name
