"""ONNX export of the IndRNN ops (``indrnn_triton.onnx``): export with
``torch.onnx.export(dynamo=True)`` and the package's translations, run in onnxruntime at other
batch sizes and lengths than the traced ones, compare with PyTorch."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hf_helpers import PAD, padded_batch, random_tokens, tiny_model

import hf_integration
from indrnn_triton import IndRNN, fused_indrnn
from indrnn_triton.onnx import export_onnx

# Each test exports a model: 1 to 4 s each, about a minute in all on 2 CPU cores.
pytestmark = pytest.mark.slow

_ORT_TYPES = {torch.bfloat16: onnx.TensorProto.BFLOAT16}


def _ort_value(t: torch.Tensor):
    """An onnxruntime input; bfloat16 (which numpy lacks) passed as its raw 16-bit words."""
    t = t.detach().contiguous()
    if t.dtype in _ORT_TYPES:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            t.view(torch.int16).numpy(), _ORT_TYPES[t.dtype])
    return ort.OrtValue.ortvalue_from_numpy(t.numpy())


def _to_torch(value) -> torch.Tensor:
    if value.data_type() == "tensor(bfloat16)":  # OrtValue.numpy() refuses it: copy the bytes
        raw = (ctypes.c_char * value.tensor_size_in_bytes()).from_address(value.data_ptr())
        return torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).reshape(value.shape())
    return torch.from_numpy(np.array(value.numpy()))


def run_onnx(path, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run the model at ``path`` on CPU with its graph inputs fed in order."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(inputs), names
    feeds = {n: _ort_value(t) for n, t in zip(names, inputs)}
    outputs = session.run_with_ort_values(None, feeds)
    return [_to_torch(o) for o in outputs]


def check_export(tmp_path, model, args, dynamic_shapes, test_inputs, *, kwargs=None,
                 atol=1e-5, rtol=1e-5):
    """Export ``model`` on ``args``/``kwargs``; run the ONNX model on ``test_inputs`` (the
    tensors of a call at other sizes, in the order of the graph's inputs: positional, then
    keyword) and compare each output with the model's own, dtypes included."""
    model = model.eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, args, path, kwargs=kwargs, dynamic_shapes=dynamic_shapes,
                verbose=False)
    onnx.checker.check_model(str(path), full_check=True)
    n_args = len(args)
    with torch.no_grad():
        expected = model(*test_inputs[:n_args],
                         **dict(zip((kwargs or {}).keys(), test_inputs[n_args:])))
    expected = [t for t in torch.utils._pytree.tree_leaves(expected)]
    got = run_onnx(path, list(test_inputs))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e, atol=atol, rtol=rtol)
    return path


def lengths_mask(lengths, T, batch_first, dtype=torch.bool):
    """Right-padding mask, (B, T) or (T, B), with each sequence's length."""
    m = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return (m if batch_first else m.T).to(dtype)


# ----------------------------------------------------------------------------------------------
# The recurrence op alone.
# ----------------------------------------------------------------------------------------------


class Recurrence(torch.nn.Module):
    """``indrnn_triton::indrnn_forward`` on its input with own u and bias: through
    ``fused_indrnn`` (one direction), or the op itself (``bidirectional``, or bounds
    ``fused_indrnn`` would refuse, such as an infinite one)."""

    def __init__(self, DH, *, bias=True, u_range=(0.0, 1.2), direct=False, **options):
        super().__init__()
        lo, hi = u_range
        self.u = torch.nn.Parameter(torch.rand(DH) * (hi - lo) + lo)
        self.b = torch.nn.Parameter(torch.randn(DH) * 0.2) if bias else None
        self.direct, self.options = direct, options

    def forward(self, pre, h0=None, mask=None):
        o = self.options
        u = self.u.to(pre.dtype)
        b = None if self.b is None else self.b.to(pre.dtype)
        if self.direct:
            return torch.ops.indrnn_triton.indrnn_forward(
                pre, u, b, h0, mask, o.get("recurrent_max_abs"),
                o.get("recurrent_min_abs", 0.0), o.get("reverse", False),
                o.get("batch_first", False), o.get("bidirectional", False))
        return fused_indrnn(pre, u, b, h0, mask=mask, **o)


def _op_inputs(T, B, DH, *, D=1, h0=False, mask=False, batch_first=False, dtype=torch.float32,
               mask_dtype=torch.bool) -> dict[str, torch.Tensor]:
    """pre (and h0, mask) for the op, by name; the mask pads sequences 1.. to shorter
    lengths."""
    inputs = {"pre": torch.randn(*((B, T) if batch_first else (T, B)), DH).to(dtype)}
    if h0:
        inputs["h0"] = torch.rand(*((D,) if D == 2 else ()), B, DH // D)
    if mask:
        lengths = [T] + [max(1, T - 2 - i) for i in range(B - 1)]
        inputs["mask"] = lengths_mask(lengths, T, batch_first, mask_dtype)
    return inputs


def _op_dynamic_shapes(inputs, batch_first, D=1):
    t, b = (1, 0) if batch_first else (0, 1)
    shapes = {"pre": {t: "time", b: "batch"}, "h0": {1 if D == 2 else 0: "batch"},
              "mask": {t: "time", b: "batch"}}
    return {name: shapes[name] for name in inputs}


def _check_op(tmp_path, model, *, D=1, batch_first=False, tol=None, **shape):
    example = _op_inputs(7, 3, D * 6, D=D, batch_first=batch_first, **shape)
    test = _op_inputs(13, 5, D * 6, D=D, batch_first=batch_first, **shape)
    pre = example.pop("pre")
    check_export(tmp_path, model, (pre,), _op_dynamic_shapes({"pre": pre, **example},
                                                             batch_first, D),
                 list(test.values()), kwargs=example, **(tol or {}))


OP_CASES = {
    "plain": dict(),
    "no_bias": dict(bias=False),
    "h0": dict(h0=True),
    "mask": dict(mask=True),
    "int_mask": dict(mask=True, mask_dtype=torch.int64),
    "all_clip": dict(h0=True, mask=True, recurrent_max_abs=1.0, recurrent_min_abs=0.3,
                     u_range=(-1.5, 1.5)),
    "reverse": dict(h0=True, mask=True, reverse=True),
    "batch_first": dict(h0=True, mask=True, batch_first=True, recurrent_max_abs=0.9),
    "reverse_batch_first": dict(mask=True, reverse=True, batch_first=True),
    "huge_bound": dict(recurrent_max_abs=1e300, u_range=(0.5, 1.1)),
    "inf_bound": dict(direct=True, recurrent_max_abs=math.inf, u_range=(0.5, 1.1)),
    "min_only": dict(direct=True, recurrent_min_abs=0.5, u_range=(-1.0, 1.0)),
    "bidirectional": dict(direct=True, bidirectional=True, h0=True, mask=True,
                          recurrent_max_abs=1.0),
    "bidirectional_reverse_bf": dict(direct=True, bidirectional=True, reverse=True,
                                     batch_first=True, mask=True),
    "bidirectional_plain": dict(direct=True, bidirectional=True, bias=False),
    "method": dict(mask=True, method="chunked"),  # a GPU-only choice, recorded and ignored
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_op(tmp_path, case):
    torch.manual_seed(0)
    options = dict(OP_CASES[case])
    shape = {k: options.pop(k) for k in ("h0", "mask", "mask_dtype") if k in options}
    D = 2 if options.get("bidirectional") else 1
    model = Recurrence(D * 6, **options)
    _check_op(tmp_path, model, D=D, batch_first=options.get("batch_first", False), **shape)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_op_dtypes(tmp_path, dtype, bidirectional):
    """16-bit inputs: the state runs in float32, h_n is float32, the output in the input's
    dtype; float64 runs in float64."""
    torch.manual_seed(0)
    D = 2 if bidirectional else 1
    model = Recurrence(D * 6, direct=True, bidirectional=bidirectional, recurrent_max_abs=1.0)
    # 16-bit: both sides round the same float32 states, so torch's default 16-bit tolerances
    # (atol 1e-5 with rtol 1e-3 for float16, 1.6e-2 for bfloat16) hold.
    tol = None if dtype == torch.float64 else dict(atol=None, rtol=None)
    _check_op(tmp_path, model, D=D, h0=True, mask=True, dtype=dtype, tol=tol)


# ----------------------------------------------------------------------------------------------
# The modules.
# ----------------------------------------------------------------------------------------------


def _module_inputs(rnn, B, T, *, hx, mask):
    dtype = rnn.weight_ih_l0.dtype
    x = torch.randn(*((B, T) if rnn.batch_first else (T, B)), rnn.input_size, dtype=dtype)
    inputs = [x]
    if hx:
        D = 2 if rnn.bidirectional else 1
        inputs.append(torch.rand(rnn.num_layers * D, B, rnn.hidden_size, dtype=dtype))
    if mask:
        lengths = [T] + [max(1, T - 3 - 2 * i) for i in range(B - 1)]
        inputs.append(lengths_mask(lengths, T, rnn.batch_first))
    return inputs


def _module_dynamic_shapes(rnn, hx, mask):
    t, b = (1, 0) if rnn.batch_first else (0, 1)
    shapes = {"x": {t: "time", b: "batch"}}
    if hx:
        shapes["hx"] = {1: "batch"}
    if mask:
        shapes["mask"] = {t: "time", b: "batch"}
    return shapes


def _randomize_(module):
    """Give biases and norm parameters values other than their initial 0 and 1 (which the
    exporter's optimizer would fold and merge, hiding any mix-up between layers)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "bias" in name or "norms" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return module


def _check_module(tmp_path, rnn, *, hx=True, mask=True, atol=1e-5, **sizes):
    torch.manual_seed(1)
    _randomize_(rnn)
    names = ["x"] + (["hx"] if hx else []) + (["mask"] if mask else [])
    example = _module_inputs(rnn, 3, 7, hx=hx, mask=mask)
    test = _module_inputs(rnn, sizes.get("B", 5), sizes.get("T", 12), hx=hx, mask=mask)
    check_export(tmp_path, rnn, (example[0],), _module_dynamic_shapes(rnn, hx, mask), test,
                 kwargs=dict(zip(names[1:], example[1:])), atol=atol)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_indrnn(tmp_path, bidirectional, batch_first):
    torch.manual_seed(0)
    rnn = IndRNN(4, 8, num_layers=2, batch_first=batch_first, bidirectional=bidirectional,
                 recurrent_max_abs=1.2, recurrent_min_abs=0.1, norm="layer")
    _check_module(tmp_path, rnn)


@pytest.mark.parametrize("B,T", [(1, 1), (2, 40)])
def test_indrnn_sizes(tmp_path, B, T):
    """A single step and a single sequence, and a long one, from a graph traced at (3, 7)."""
    torch.manual_seed(0)
    rnn = IndRNN(4, 8, num_layers=2, batch_first=True, bidirectional=True,
                 recurrent_max_abs=2 ** (1 / 40))
    _check_module(tmp_path, rnn, B=B, T=T)


def test_indrnn_no_state_no_mask_batch_norm(tmp_path):
    """No hx, no mask; batch norm after the recurrence (eval mode: running statistics)."""
    torch.manual_seed(0)
    rnn = IndRNN(4, 8, num_layers=2, bidirectional=True, norm="batch", norm_position="after")
    with torch.no_grad():
        for norm in rnn.norms:
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    _check_module(tmp_path, rnn, hx=False, mask=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_indrnn_fused_projection(tmp_path, bidirectional, dtype):
    """fused_projection=True records ``indrnn_triton::indrnn_linear_forward``. In float64 the
    Scan ran in float32 (the MatMul's result has no dtype while traced): an invalid model."""
    torch.manual_seed(0)
    rnn = IndRNN(4, 8, num_layers=2, batch_first=True, bidirectional=bidirectional,
                 recurrent_max_abs=1.2, fused_projection=True, dtype=dtype)
    program = torch.export.export(rnn.eval(), (torch.randn(3, 7, 4, dtype=dtype),))
    targets = {n.target for n in program.graph.nodes}
    assert torch.ops.indrnn_triton.indrnn_linear_forward.default in targets
    _check_module(tmp_path, rnn)


def test_indrnn_float16(tmp_path):
    """A float16 model: the projection and norm in float16 (onnxruntime's CPU kernels),
    the recurrence in float32."""
    torch.manual_seed(0)
    rnn = IndRNN(4, 8, num_layers=2, batch_first=True, bidirectional=True,
                 recurrent_max_abs=1.2, norm="layer")
    rnn = _randomize_(rnn).half()
    example = [torch.randn(3, 7, 4).half()]
    test = [torch.randn(5, 12, 4).half()]
    check_export(tmp_path, rnn, tuple(example), ({0: "batch", 1: "time"},), test,
                 atol=1e-2, rtol=1e-2)


# ----------------------------------------------------------------------------------------------
# Hugging Face model.
# ----------------------------------------------------------------------------------------------


def test_hf_sequence_classification(tmp_path):
    class Logits(torch.nn.Module):
        """The logits alone: the model's output object is not an ONNX output."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    model = Logits(tiny_model(hf_integration.IndRNNForSequenceClassification))
    g = torch.Generator().manual_seed(0)
    example = padded_batch(random_tokens([7, 5, 3], g), "right")
    test = padded_batch(random_tokens([12, 9, 4, 1, 12], g), "right")
    assert PAD == 0
    dims = {0: "batch", 1: "time"}
    check_export(tmp_path, model, example, (dims, dims), list(test))


@pytest.mark.parametrize("opset_version", [18, 23])
def test_opset_versions(tmp_path, opset_version):
    """The translations target opset 18 and export at later opsets too (default: 20)."""
    torch.manual_seed(0)
    rnn = _randomize_(IndRNN(4, 8, num_layers=2, batch_first=True, bidirectional=True))
    example, test = torch.randn(3, 7, 4), torch.randn(5, 12, 4)
    path = tmp_path / "model.onnx"
    export_onnx(rnn.eval(), (example,), path, dynamic_shapes=({0: "batch", 1: "time"},),
                opset_version=opset_version, verbose=False)
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == opset_version
    assert [n.op_type for n in model.graph.node].count("Scan") == 2  # one per layer
    assert not model.functions  # the exporter inlined the Scan functions
    with torch.no_grad():
        expected = rnn(test)
    for g, e in zip(run_onnx(path, [test]), expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_hf_causal_lm_generates_from_its_cache(tmp_path):
    """The causal LM exported with an IndRNNCache argument: the cache's layer states and step
    count become ONNX inputs and outputs. From zero states, the prompt and then one token at a
    time in onnxruntime give generate()'s logits and greedy tokens, at another batch size and
    prompt length than the traced ones."""
    model = tiny_model(hf_integration.IndRNNForCausalLM)
    g = torch.Generator().manual_seed(0)
    ids = torch.stack(random_tokens([5, 5, 5], g))
    with torch.no_grad():
        cache = model(input_ids=ids[:, :3]).cache  # its structure: every layer holds a state
    states = {0: "batch"}
    path = tmp_path / "lm.onnx"
    export_onnx(model, (), path, kwargs={"input_ids": ids[:, 3:], "cache": cache},
                dynamic_shapes={"input_ids": {0: "batch", 1: "time"},
                                "cache": [states, states, None]}, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == 4  # input_ids, two layer states, the step count

    prompt = torch.stack(random_tokens([9, 9], g))
    expected = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0,
                              output_logits=True, return_dict_in_generate=True)
    feed = [prompt.numpy(), *(np.zeros((2, 1, 12), np.float32),) * 2, np.array(0)]
    logits = []
    for _ in range(4):
        out_logits, *state, steps = session.run(None, dict(zip(names, feed)))
        logits.append(torch.from_numpy(out_logits[:, -1]))
        feed = [out_logits[:, -1:].argmax(-1), *state, steps]
    assert int(steps) == 9 + 3
    torch.testing.assert_close(torch.stack(logits), torch.stack(expected.logits),
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.stack(logits).argmax(-1).T, expected.sequences[:, 9:])
