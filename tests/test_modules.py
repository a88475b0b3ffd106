"""IndRNN / IndRNNCell / functional: parity with a plain PyTorch model, padding, streaming, errors.

The plain model (``reference_forward``) is built from :func:`indrnn_reference` (a Python loop per
direction), ``torch.cat`` of the directions, and batch norm written with boolean indexing, so it
shares no code with the module's fused path. Parity runs in float64, gradients included.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from indrnn_triton import DenseIndRNN, IndRNN, IndRNNCell, indrnn_reference
from indrnn_triton.functional import dropout_over_time, indrnn_layer, indrnn_recurrence
from indrnn_triton.op import _forward_op

F64 = dict(dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# The plain PyTorch model.
# ----------------------------------------------------------------------------------------------


def _reference_norm(rnn: IndRNN, k: int, x, m):
    """Layer k's norm of (T, B, F) features x, real steps m, with boolean indexing."""
    norm = rnn.norms[k]
    if rnn.norm == "batch":
        if rnn.training:
            real = x[m] if m is not None else x.reshape(-1, x.shape[-1])
            mean, var = real.mean(0), real.var(0, unbiased=False)
        else:
            mean, var = norm.running_mean, norm.running_var
    else:
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
    y = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight
    return y if norm.bias is None else y + norm.bias


def reference_forward(rnn: IndRNN, x, hx=None, mask=None, output_layers=False):
    """What ``rnn(x, hx, mask, output_layers=...)`` computes, in plain PyTorch (dropout: eval
    mode only)."""
    assert not (rnn.training and (rnn.dropout > 0 or rnn.dropout_last > 0))
    bf = rnn.batch_first
    inp = x.transpose(0, 1) if bf else x
    m = None if mask is None else (mask.t() if bf else mask) != 0
    D, H = rnn.num_directions, rnn.hidden_size
    h_ns, stream, layers = [], None, []
    for k in range(rnn.num_layers):
        pre = inp @ getattr(rnn, f"weight_ih_l{k}").t()
        if rnn.residual and k % 2 == 0:
            if k >= 2:
                pre = pre + stream
            stream = pre
        if rnn.norm is not None and rnn.norm_position == "before":
            pre = _reference_norm(rnn, k, pre, m)
        u, b = getattr(rnn, f"weight_hh_l{k}"), getattr(rnn, f"bias_l{k}")
        outs = []
        for d in range(D):
            s = slice(d * H, (d + 1) * H)
            o, h = indrnn_reference(
                pre[..., s], u[s], None if b is None else b[s],
                None if hx is None else hx[k * D + d],
                recurrent_max_abs=rnn.recurrent_max_abs,
                recurrent_min_abs=rnn.recurrent_min_abs, mask=m, reverse=d == 1,
            )
            outs.append(o)
            h_ns.append(h)
        inp = torch.cat(outs, -1)
        if rnn.norm is not None and rnn.norm_position == "after":
            inp = _reference_norm(rnn, k, inp, m)
        layers.append(inp.transpose(0, 1) if bf else inp)
    if output_layers:
        return layers[-1], torch.stack(h_ns), tuple(layers)
    return layers[-1], torch.stack(h_ns)


# ----------------------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------------------


def randomise_(rnn, weight_hh_range=(-0.2, 1.1)):
    """Parameters (and running statistics) drawn so every code path sees non-trivial values."""
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if "weight_hh" in name:
                p.uniform_(*weight_hh_range)
            elif "weight_ih" in name:
                p.normal_(0, 0.6)
            elif "norms" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.3)
        for name, buf in rnn.named_buffers():
            if "running_mean" in name:
                buf.normal_(0, 0.5)
            elif "running_var" in name:
                buf.uniform_(0.5, 2.0)
    return rnn


def padding_mask(lengths, T, *, left=False, batch_first=False, dtype=torch.bool):
    """(T, B) (or (B, T)) mask with the given lengths, padding at the end (or the start)."""
    t = torch.arange(T)[:, None]
    L = torch.tensor(lengths)[None, :]
    mask = (t >= T - L) if left else (t < L)
    mask = mask.t() if batch_first else mask
    return mask.to(dtype)


def check_parity(rnn, x, hx=None, mask=None, atol=1e-10):
    """Outputs, h_n and the gradients of every parameter, x and hx agree with the plain model."""
    leaves = [x] + ([hx] if hx is not None else []) + list(rnn.parameters())
    for t in leaves:
        t.requires_grad_(True)
    out, h_n = rnn(x, hx, mask=mask)
    rnn_ref_state = {k: v.clone() for k, v in rnn.named_buffers()}
    ref_out, ref_h_n = reference_forward(rnn, x, hx, mask)
    assert out.shape == ref_out.shape and h_n.shape == ref_h_n.shape
    assert h_n.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=1e-9)
    torch.testing.assert_close(h_n, ref_h_n, atol=atol, rtol=1e-9)
    g_out, g_h = torch.randn_like(out), torch.randn_like(h_n)
    grads = torch.autograd.grad((out * g_out).sum() + (h_n * g_h).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_out * g_out).sum() + (ref_h_n * g_h).sum(), leaves)
    names = ["x"] + (["hx"] if hx is not None else []) + [n for n, _ in rnn.named_parameters()]
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=atol, rtol=1e-9, msg=lambda s, n=name: f"{n}: {s}")
    assert any(g.abs().sum() > 0 for g in grads)
    return rnn_ref_state


T, B, IN, H = 7, 4, 5, 6


def make_input(batch_first=False, T=T, B=B, IN=IN):
    return torch.randn((B, T, IN) if batch_first else (T, B, IN), **F64)


# ----------------------------------------------------------------------------------------------
# Parity.
# ----------------------------------------------------------------------------------------------

PARITY_CASES = {
    "one_layer": (dict(), dict()),
    "two_layers_batch_first_hx": (dict(num_layers=2, batch_first=True), dict(hx=True)),
    "bidirectional_right_padding": (dict(num_layers=2, bidirectional=True), dict(mask="right")),
    "bidirectional_left_padding_batch_first_hx": (
        dict(num_layers=2, bidirectional=True, batch_first=True), dict(mask="left", hx=True)
    ),
    "clip_max_and_min": (
        dict(num_layers=2, recurrent_max_abs=0.9, recurrent_min_abs=0.3), dict(clip=True)
    ),
    "bidirectional_clip_int_mask": (
        dict(bidirectional=True, recurrent_max_abs=0.8, recurrent_min_abs=0.1),
        dict(clip=True, mask="right", mask_dtype=torch.int32),
    ),
    "no_bias_layer_norm": (dict(num_layers=2, bias=False, norm="layer"), dict()),
    "batch_norm_train_mask": (
        dict(num_layers=2, norm="batch", bidirectional=True), dict(mask="right")
    ),
    "batch_norm_train_batch_first": (dict(num_layers=2, norm="batch", batch_first=True), dict()),
    "batch_norm_eval": (dict(num_layers=2, norm="batch"), dict(eval=True, mask="left")),
    "batch_norm_eval_no_mask": (dict(norm="batch", bidirectional=True), dict(eval=True)),
    "residual_batch_norm_mask": (
        dict(num_layers=3, residual=True, norm="batch", bidirectional=True), dict(mask="left")
    ),
    "residual_layer_norm_batch_first_hx": (
        dict(num_layers=5, residual=True, norm="layer", batch_first=True), dict(hx=True)
    ),
    "residual_no_norm": (dict(num_layers=3, residual=True), dict(mask="right")),
    "dropout_eval": (
        dict(num_layers=3, dropout=0.5, bidirectional=True), dict(eval=True, mask="right")
    ),
    "batch_norm_after_train_mask": (
        dict(num_layers=2, norm="batch", norm_position="after", bidirectional=True),
        dict(mask="left"),
    ),
    "batch_norm_after_eval_batch_first_hx": (
        dict(num_layers=2, norm="batch", norm_position="after", batch_first=True),
        dict(eval=True, mask="right", hx=True),
    ),
    "batch_norm_after_no_bias": (
        dict(num_layers=2, norm="batch", norm_position="after", bias=False), dict(mask="right")
    ),
    "layer_norm_after_residual": (
        dict(num_layers=3, norm="layer", norm_position="after", residual=True),
        dict(mask="right"),
    ),
    "dropout_last_eval": (
        dict(num_layers=2, dropout=0.3, dropout_last=0.5, norm="batch",
             norm_position="after"), dict(eval=True, mask="right")
    ),
}


def run_parity_case(module_kwargs, opts, T=T, B=B, IN=IN, H=H):
    rnn = IndRNN(IN, H, **module_kwargs, **F64)
    randomise_(rnn, (-1.5, 1.5) if opts.get("clip") else (-0.2, 1.1))
    if opts.get("eval"):
        rnn.eval()
    bf = rnn.batch_first
    x = make_input(bf, T, B, IN)
    hx = torch.randn(rnn.num_layers * rnn.num_directions, B, H, **F64) if opts.get("hx") else None
    mask = None
    if "mask" in opts:
        lengths = [T, 1, T - 2, 3][:B]
        mask = padding_mask(lengths, T, left=opts["mask"] == "left", batch_first=bf,
                            dtype=opts.get("mask_dtype", torch.bool))
    check_parity(rnn, x, hx, mask)


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_with_plain_model(case):
    run_parity_case(*PARITY_CASES[case])


@pytest.mark.parametrize("T_,B_", [(1, 1), (1, 3), (9, 1), (2, 2)])
def test_parity_awkward_shapes(T_, B_):
    opts = dict(hx=True)
    run_parity_case(dict(num_layers=3, bidirectional=True, residual=True, norm="layer"), opts,
                    T=T_, B=B_, IN=1, H=1)
    run_parity_case(dict(num_layers=2, bidirectional=True, batch_first=True), opts, T=T_, B=B_)


@pytest.mark.parametrize(
    "case", ["bidirectional_left_padding_batch_first_hx", "residual_batch_norm_mask",
             "bidirectional_clip_int_mask"]
)
def test_parity_with_plain_model_both_backends(case, backend):
    # Tiny shapes: the Triton kernels run through the interpreter here.
    run_parity_case(*PARITY_CASES[case], T=4, B=3, IN=3, H=3)


@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequence_matches_padded_reference(batch_first):
    rnn = randomise_(IndRNN(IN, H, num_layers=2, bidirectional=True, batch_first=batch_first,
                            norm="batch", **F64))
    lengths = [3, T, 1, 5]
    x = make_input(batch_first)
    mask = padding_mask(lengths, T, batch_first=batch_first)
    x = x * mask.unsqueeze(-1)
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                  enforce_sorted=False)
    hx = torch.randn(4, B, H, **F64)
    out, h_n = rnn(packed, hx)
    assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)
    assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
    ref_out, ref_h_n = reference_forward(rnn, x, hx, mask)
    ref_packed = pack_padded_sequence(ref_out, torch.tensor(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
    torch.testing.assert_close(out.data, ref_packed.data, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(h_n, ref_h_n, atol=1e-10, rtol=1e-9)
    grad = torch.randn_like(out.data)
    params = list(rnn.parameters())
    got = torch.autograd.grad((out.data * grad).sum(), params)
    want = torch.autograd.grad((ref_packed.data * grad).sum(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-9)


LAYER_OUTPUT_CASES = {
    "bidirectional_batch_first_left_padding": dict(num_layers=2, bidirectional=True,
                                                   batch_first=True),
    "residual_batch_norm_right_padding": dict(num_layers=3, residual=True, norm="batch"),
}


@pytest.mark.parametrize("case", list(LAYER_OUTPUT_CASES))
def test_output_layers_returns_each_layers_output(case):
    rnn = randomise_(IndRNN(IN, H, **LAYER_OUTPUT_CASES[case], **F64))
    bf = rnn.batch_first
    x = make_input(bf)
    hx = torch.randn(rnn.num_layers * rnn.num_directions, B, H, **F64)
    mask = padding_mask([T, 1, T - 2, 3], T, left=bf, batch_first=bf)
    out, h_n, layers = rnn(x, hx, mask, output_layers=True)
    ref_out, ref_h_n, ref_layers = reference_forward(rnn, x, hx, mask, output_layers=True)
    assert len(layers) == rnn.num_layers and layers[-1] is out
    for layer, ref in zip(layers, ref_layers, strict=True):
        torch.testing.assert_close(layer, ref, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(h_n, ref_h_n, atol=1e-10, rtol=1e-9)
    plain = rnn(x, hx, mask)
    assert len(plain) == 2
    torch.testing.assert_close(plain[0], out, atol=0, rtol=0)


def test_output_layers_packed_and_unbatched():
    rnn = randomise_(IndRNN(IN, H, num_layers=2, bidirectional=True, **F64))
    x = make_input()
    lengths = [T, 1, T - 2, 3]
    _, _, padded = rnn(x, mask=padding_mask(lengths, T), output_layers=True)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    _, _, layers = rnn(packed, output_layers=True)
    for layer, want in zip(layers, padded, strict=True):
        want = pack_padded_sequence(want, torch.tensor(lengths), enforce_sorted=False)
        torch.testing.assert_close(layer.data, want.data, atol=1e-12, rtol=0)
    _, _, one = rnn(x[:, 0], output_layers=True)
    _, _, batch_of_one = rnn(x[:, :1], output_layers=True)
    for layer, want in zip(one, batch_of_one, strict=True):
        assert torch.equal(layer, want[:, 0])


def test_forward_layer_chained_equals_forward():
    rnn = randomise_(IndRNN(IN, H, num_layers=5, residual=True, norm="layer", batch_first=True,
                            **F64))
    x = make_input(batch_first=True)
    hx = torch.randn(5, B, H, **F64)
    mask = padding_mask([T, 1, T - 2, 3], T, batch_first=True)
    out, h_n = rnn(x, hx, mask)
    layer_in, shortcut = x, None
    for k in range(5):
        layer_in, layer_h_n, shortcut = rnn.forward_layer(k, layer_in, hx[k:k + 1], mask,
                                                          shortcut)
        assert torch.equal(layer_h_n, h_n[k:k + 1])
    assert torch.equal(layer_in, out)
    with pytest.raises(ValueError, match=r"k must be a layer index in \[0, 5\), got 5"):
        rnn.forward_layer(5, out)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, I_k\) with I_1 = 6"):
        rnn.forward_layer(1, x)
    with pytest.raises(ValueError, match="shortcut must be the one layer 1 returned"):
        rnn.forward_layer(2, out)


def test_packed_sequence_sorted_input():
    rnn = randomise_(IndRNN(IN, H, bidirectional=True, **F64))
    lengths = [T, 4, 2, 2]
    x = make_input() * padding_mask(lengths, T).unsqueeze(-1)
    packed = pack_padded_sequence(x, torch.tensor(lengths))
    out, h_n = rnn(packed)
    assert out.sorted_indices is None
    ref_out, ref_h_n = reference_forward(rnn, x, None, padding_mask(lengths, T))
    torch.testing.assert_close(out.data, pack_padded_sequence(ref_out, torch.tensor(lengths)).data)
    torch.testing.assert_close(h_n, ref_h_n)


def test_functional_layer_matches_reference():
    x = make_input().requires_grad_()
    w_ih = torch.randn(2 * H, IN, **F64, requires_grad=True)
    u = torch.empty(2 * H, **F64).uniform_(-0.5, 1.2).requires_grad_()
    b = torch.randn(2 * H, **F64, requires_grad=True)
    h0 = torch.randn(2, B, H, **F64, requires_grad=True)
    mask = padding_mask([T, 2, 5, 1], T, left=True)
    out, h_n = indrnn_layer(x, w_ih, u, b, h0, recurrent_max_abs=1.0, mask=mask,
                            bidirectional=True)
    pre = x @ w_ih.t()
    ref = [indrnn_reference(pre[..., d * H:(d + 1) * H], u[d * H:(d + 1) * H],
                            b[d * H:(d + 1) * H], h0[d], recurrent_max_abs=1.0, mask=mask,
                            reverse=d == 1) for d in range(2)]
    ref_out = torch.cat([r[0] for r in ref], -1)
    ref_h_n = torch.stack([r[1] for r in ref])
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h_n, ref_h_n)
    g = torch.randn_like(out)
    leaves = [x, w_ih, u, b, h0]
    got = torch.autograd.grad((out * g).sum() + h_n.sum(), leaves)
    want = torch.autograd.grad((ref_out * g).sum() + ref_h_n.sum(), leaves)
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w)


def test_functional_layer_norm_after_normalises_the_output_not_the_state():
    x, mask = make_input(), padding_mask([T, 2, 5, 1], T)
    w_ih, u = torch.randn(2 * H, IN, **F64), torch.empty(2 * H, **F64).uniform_(-0.5, 1.2)
    norm = lambda y: (y - 1.0) * 2.0  # noqa: E731  (any function shows where it is applied)
    out, h_n = indrnn_layer(x, w_ih, u, mask=mask, bidirectional=True, norm=norm,
                            norm_position="after")
    plain_out, plain_h_n = indrnn_layer(x, w_ih, u, mask=mask, bidirectional=True)
    torch.testing.assert_close(out, norm(plain_out))
    torch.testing.assert_close(h_n, plain_h_n)
    before, _ = indrnn_layer(x, w_ih, u, mask=mask, bidirectional=True, norm=norm)
    torch.testing.assert_close(before, indrnn_layer(x, w_ih * 2.0, u, -2.0 * torch.ones(2 * H,
                               **F64), mask=mask, bidirectional=True)[0])
    with pytest.raises(ValueError, match="norm_position must be one of"):
        indrnn_layer(x, w_ih, u, norm=norm, norm_position="inside")


# ----------------------------------------------------------------------------------------------
# Padding, streaming, the cell.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("left", [False, True], ids=["right_padding", "left_padding"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_padded_batch_equals_each_sequence_alone(left, batch_first):
    rnn = randomise_(IndRNN(IN, H, num_layers=2, bidirectional=True, norm="layer",
                            batch_first=batch_first, recurrent_max_abs=1.2, **F64))
    lengths = [T, 3, 1, 5]
    x = make_input(batch_first)
    mask = padding_mask(lengths, T, left=left, batch_first=batch_first)
    out, h_n = rnn(x, mask=mask)
    time_dim = 1 if batch_first else 0
    for i, n in enumerate(lengths):
        real = torch.arange(T - n, T) if left else torch.arange(n)
        x_i = x.select(1 - time_dim, i).index_select(0, real).unsqueeze(1 - time_dim)
        out_i, h_i = rnn(x_i)
        got = out.select(1 - time_dim, i).index_select(0, real)
        torch.testing.assert_close(got, out_i.squeeze(1 - time_dim), atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(h_n[:, i], h_i[:, 0], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("position", ["before", "after"])
def test_batch_statistics_ignore_padding(position):
    rnn = randomise_(IndRNN(IN, H, num_layers=2, norm="batch", bidirectional=True,
                            norm_position=position, **F64))
    mask = padding_mask([T, 2, 4, 1], T)
    x = make_input()
    garbage = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, 1e3))
    out, h_n = rnn(x, mask=mask)
    out_g, h_n_g = rnn(garbage, mask=mask)
    torch.testing.assert_close(out_g[mask], out[mask])
    torch.testing.assert_close(h_n_g, h_n)


@pytest.mark.parametrize("masked", [True, False])
def test_batch_norm_running_statistics_over_real_steps(masked):
    rnn = randomise_(IndRNN(IN, H, norm="batch", **F64))
    bn = rnn.norms[0]
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    mask = padding_mask([T, 2, 4, 1] if masked else [T] * B, T)
    x = make_input()
    rnn(x, mask=mask if masked else None)
    real = (x @ rnn.weight_ih_l0.t())[mask].detach()
    torch.testing.assert_close(bn.running_mean, 0.1 * real.mean(0))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * real.var(0, unbiased=True))


def test_batch_norm_after_running_statistics_are_those_of_the_real_outputs():
    rnn = randomise_(IndRNN(IN, H, norm="batch", norm_position="after", **F64))
    bn = rnn.norms[0]
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    mask = padding_mask([T, 2, 4, 1], T)
    x = make_input()
    rnn(x, mask=mask)
    with torch.no_grad():
        state, _ = indrnn_layer(x, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_l0, mask=mask)
    real = state[mask]
    torch.testing.assert_close(bn.running_mean, 0.1 * real.mean(0))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * real.var(0, unbiased=True))


def test_streaming_two_halves_equals_one_run():
    rnn = randomise_(IndRNN(IN, H, num_layers=2, recurrent_max_abs=1.1, **F64))
    x = make_input(T=9)
    out, h_n = rnn(x)
    out_a, h_a = rnn(x[:4])
    out_b, h_b = rnn(x[4:], h_a)
    torch.testing.assert_close(torch.cat([out_a, out_b]), out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(h_b, h_n, atol=1e-12, rtol=1e-10)


def test_cell_stepped_over_time_equals_one_layer():
    rnn = randomise_(IndRNN(IN, H, recurrent_max_abs=0.9, recurrent_min_abs=0.1, **F64),
                     (-1.5, 1.5))
    cell = IndRNNCell(IN, H, recurrent_max_abs=0.9, recurrent_min_abs=0.1, **F64)
    with torch.no_grad():
        cell.weight_ih.copy_(rnn.weight_ih_l0)
        cell.weight_hh.copy_(rnn.weight_hh_l0)
        cell.bias.copy_(rnn.bias_l0)
    x = make_input()
    h0 = torch.randn(B, H, **F64)
    out, h_n = rnn(x, h0.unsqueeze(0))
    h, steps = h0, []
    for t in range(T):
        h = cell(x[t], h)
        steps.append(h)
    torch.testing.assert_close(torch.stack(steps), out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(h, h_n[0], atol=1e-12, rtol=1e-10)
    g = torch.randn_like(out)
    want = torch.autograd.grad((out * g).sum(), [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_l0])
    got = torch.autograd.grad((torch.stack(steps) * g).sum(), list(cell.parameters()))
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_sequence_equals_a_batch_of_one(batch_first):
    """(T, input_size) input, (L*D, H) hx and (T,) mask, as torch.nn.RNN takes them."""
    rnn = randomise_(IndRNN(IN, H, num_layers=2, bidirectional=True, norm="batch",
                            batch_first=batch_first, recurrent_max_abs=1.1))
    x = torch.randn(T, IN)
    hx = torch.rand(4, H)
    mask = torch.arange(T) < T - 2
    b = 0 if batch_first else 1
    out, h_n = rnn(x, hx, mask=mask)
    want_out, want_hn = rnn(x.unsqueeze(b), hx.unsqueeze(1), mask=mask.unsqueeze(b))
    assert out.shape == (T, 2 * H) and h_n.shape == (4, H)
    torch.testing.assert_close(out, want_out.squeeze(b), rtol=0, atol=0)
    torch.testing.assert_close(h_n, want_hn.squeeze(1), rtol=0, atol=0)
    out.sum().backward()  # gradients flow through the unbatched path
    assert rnn.weight_hh_l0.grad is not None


def test_unbatched_cell_step():
    cell = IndRNNCell(IN, H, recurrent_max_abs=1.0)
    x, h = torch.randn(IN), torch.rand(H)
    got = cell(x, h)
    assert got.shape == (H,)
    torch.testing.assert_close(got, cell(x[None], h[None])[0], rtol=0, atol=0)
    assert cell(x).shape == (H,)


def test_cell_without_state_starts_from_zeros():
    cell = randomise_(IndRNNCell(IN, H, **F64))
    x = torch.randn(B, IN, **F64)
    torch.testing.assert_close(cell(x), cell(x, torch.zeros(B, H, **F64)))
    torch.testing.assert_close(cell(x), torch.relu(x @ cell.weight_ih.t() + cell.bias))


# ----------------------------------------------------------------------------------------------
# Dropout, initialisation, constrain_.
# ----------------------------------------------------------------------------------------------


def test_dropout_mask_is_shared_over_time_and_only_in_training():
    # With u = 0 each step is independent; a constant input then gives identical steps in every
    # layer exactly when the dropout mask is the same at every step.
    rnn = randomise_(IndRNN(IN, 32, num_layers=3, dropout=0.5, **F64))
    with torch.no_grad():
        for k in range(3):
            getattr(rnn, f"weight_hh_l{k}").zero_()
    x = torch.randn(1, B, IN, **F64).expand(T, B, IN)
    out_train, _ = rnn(x)
    torch.testing.assert_close(out_train, out_train[:1].expand_as(out_train), atol=0, rtol=0)
    rnn.eval()
    out_eval, _ = rnn(x)
    assert not torch.allclose(out_train, out_eval)
    torch.testing.assert_close(out_eval, reference_forward(rnn, x)[0])


def test_dropout_last_drops_the_last_output_once_per_sequence_in_training_only():
    # u = 0: each step depends on its own input only, so a constant input gives identical
    # steps exactly when the last layer's dropout mask is shared by all steps.
    rnn = randomise_(IndRNN(IN, 64, num_layers=2, dropout_last=0.5, **F64))
    with torch.no_grad():
        for k in range(2):
            getattr(rnn, f"weight_hh_l{k}").zero_()
        rnn.weight_ih_l1.zero_()
        rnn.bias_l1.fill_(1.0)  # every output of the last layer is 1 without dropout
    x = torch.randn(1, B, IN, **F64).expand(T, B, IN)
    out_train, _, layers = rnn(x, output_layers=True)
    torch.testing.assert_close(out_train, out_train[:1].expand_as(out_train), atol=0, rtol=0)
    rnn.eval()
    out_eval, _ = rnn(x)
    torch.testing.assert_close(out_eval, torch.ones_like(out_eval))
    dropped = out_train == 0
    assert 0.3 < dropped.double().mean() < 0.7
    torch.testing.assert_close(out_train[~dropped], 2.0 * out_eval[~dropped])
    assert layers[-1] is out_train
    torch.testing.assert_close(out_eval, reference_forward(rnn, x)[0])


def test_dropout_over_time_values():
    x = torch.rand(5, 8, 64, **F64) + 0.5
    y = dropout_over_time(x, 0.25, training=True)
    kept = y != 0
    assert torch.equal(kept, kept[:1].expand_as(kept))
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert 0.55 < kept.double().mean() < 0.95
    y_bf = dropout_over_time(x, 0.25, training=True, batch_first=True)
    assert torch.equal(y_bf != 0, (y_bf != 0)[:, :1].expand_as(y_bf))
    assert dropout_over_time(x, 0.25, training=False) is x


def test_default_initialisation():
    r = 2 ** (1 / 16)
    rnn = IndRNN(IN, 64, num_layers=3, recurrent_max_abs=r, last_layer_recurrent_init="near_one")
    for k in range(2):
        u = getattr(rnn, f"weight_hh_l{k}")
        assert u.min() >= 0 and u.max() <= r and u.max() > 0.5 * r
    last = rnn.weight_hh_l2
    assert last.min() >= 1 / r and last.max() <= r
    assert torch.all(rnn.bias_l0 == 0)
    bound = (2 / (1 + 8 ** 2)) ** 0.5 * (3 / IN) ** 0.5  # kaiming_uniform_(a=8), fan_in = IN
    assert rnn.weight_ih_l0.abs().max() <= bound and rnn.weight_ih_l0.abs().max() > 0.5 * bound
    unclipped = IndRNN(IN, 64)
    assert unclipped.weight_hh_l0.min() >= 0 and unclipped.weight_hh_l0.max() <= 1


def test_initialisation_overrides():
    rnn = IndRNN(IN, 16, num_layers=2, recurrent_init=(0.5, 0.6),
                 last_layer_recurrent_init=(0.9, 0.95), input_weight_init=torch.nn.init.ones_)
    assert rnn.weight_hh_l0.min() >= 0.5 and rnn.weight_hh_l0.max() <= 0.6
    assert rnn.weight_hh_l1.min() >= 0.9 and rnn.weight_hh_l1.max() <= 0.95
    assert torch.all(rnn.weight_ih_l1 == 1)
    cell = IndRNNCell(IN, 16, recurrent_init=(0.2, 0.3), input_weight_init="rnn_uniform")
    assert cell.weight_hh.min() >= 0.2 and cell.weight_hh.max() <= 0.3
    assert cell.weight_ih.abs().max() <= 16 ** -0.5


def test_normal_input_weight_init_is_the_authors_adding_init():
    """"normal": N(0, input_weight_std^2), std 0.001 by default (the authors' adding scripts),
    for every layer of IndRNN and DenseIndRNN and for IndRNNCell."""
    torch.manual_seed(0)
    modules = [IndRNN(256, 256, num_layers=2, input_weight_init="normal"),
               DenseIndRNN(256, 256, growth_rate=64, block_config=(1,), bottleneck=0,
                           input_weight_init="normal", input_weight_std=0.05),
               IndRNNCell(256, 256, input_weight_init="normal", input_weight_std=0.2)]
    for module, std in zip(modules, (0.001, 0.05, 0.2), strict=True):
        weights = [p for n, p in module.named_parameters() if "weight_ih" in n]
        assert weights
        for w in weights:
            assert abs(w.mean().item()) < 0.1 * std
            assert w.std().item() == pytest.approx(std, rel=0.05)
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="input_weight_std must be"):
            IndRNN(IN, H, input_weight_init="normal", input_weight_std=bad)


def test_constrain_clamps_recurrent_weights_in_place():
    rnn = IndRNN(IN, H, num_layers=2, bidirectional=True, recurrent_max_abs=0.8,
                 recurrent_min_abs=0.2)
    with torch.no_grad():
        rnn.weight_hh_l1.copy_(torch.linspace(-2, 2, 2 * H))
    before = rnn.weight_hh_l1.clone()
    assert rnn.constrain_() is rnn
    u = rnn.weight_hh_l1
    assert u.abs().max() <= 0.8 and u.abs().min() >= 0.2
    torch.testing.assert_close(u, torch.sign(before) * before.abs().clamp(0.2, 0.8))
    cell = IndRNNCell(IN, H, recurrent_max_abs=0.5)
    with torch.no_grad():
        cell.weight_hh.fill_(3.0)
    cell.constrain_()
    assert torch.all(cell.weight_hh == 0.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("r_max,r_min", [(0.8, 0.0), (2 ** (1 / 100), 0.0), (2 ** (1 / 784), 0.0),
                                         (0.9, 0.3), (0.9, 2 ** -10 * 1.3)])
def test_constrained_16_bit_weights_stay_inside_the_bounds_and_keep_training(backend, dtype,
                                                                             r_max, r_min):
    """constrain_() rounds the bounds into the range in the weight's own dtype: a 16-bit clamp
    to r itself could round r up (bfloat16 0.8 -> 0.80078125), and the kernels, clipping in
    float32, then saw the weight beyond the bound and gave it zero gradient for good."""
    rnn = IndRNN(2, 4, recurrent_max_abs=r_max, recurrent_min_abs=r_min, dtype=dtype)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(torch.tensor([3.0, -3.0, 1e-6, -1e-6]))
        rnn.weight_ih_l0.fill_(0.5)  # every state positive: every weight has a gradient
        rnn.bias_l0.fill_(0.1)
    rnn.constrain_()
    u = rnn.weight_hh_l0.detach().double()
    assert (u.abs() <= r_max).all() and (u.abs() >= r_min).all(), u
    # As close to the bounds as the dtype allows: the next number out is beyond them.
    out_max = torch.nextafter(u[:1].to(dtype), torch.tensor([math.inf], dtype=dtype))
    assert out_max.double().item() > r_max
    if r_min > 0:
        out_min = torch.nextafter(u[2:3].to(dtype), torch.tensor([0.0], dtype=dtype))
        assert out_min.double().item() < r_min
    x = torch.rand(5, 3, 2, dtype=dtype)
    out, h_n = rnn(x)
    (grad,) = torch.autograd.grad(out.float().sum(), rnn.weight_hh_l0)
    assert (grad != 0).all(), grad


# ----------------------------------------------------------------------------------------------
# torch.compile, autocast, and the absence of (T, B, H) copies.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_activation_checkpointing_updates_batch_norm_statistics_once(use_reentrant, masked,
                                                                     position):
    """Under torch.utils.checkpoint (both kinds) the recomputation in backward gives the same
    gradients and leaves the running statistics as one forward left them."""
    kw = dict(num_layers=3, bidirectional=True, residual=True, norm="batch",
              recurrent_max_abs=1.1, norm_position=position)
    plain = randomise_(IndRNN(IN, H, **kw))
    ckpt = IndRNN(IN, H, **kw)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(T, B, IN, requires_grad=True)  # the reentrant kind needs an input that does
    mask = padding_mask([T, 2, 5, 3], T) if masked else None
    g = torch.randn(T, B, 2 * H)
    for _ in range(2):
        (plain(x, mask=mask)[0] * g).sum().backward()
        out = checkpoint(lambda x: ckpt(x, mask=mask)[0], x, use_reentrant=use_reentrant)
        (out * g).sum().backward()
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_torch_compile_fullgraph():
    rnn = randomise_(IndRNN(IN, H, num_layers=3, bidirectional=True, residual=True, norm="batch",
                            recurrent_max_abs=1.1))
    x = torch.randn(T, B, IN)
    mask = padding_mask([T, 2, 5, 3], T)
    compiled = torch.compile(rnn, fullgraph=True)
    out_c, h_c = compiled(x, mask=mask)
    out, h_n = rnn(x, mask=mask)
    torch.testing.assert_close(out_c, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_c, h_n, atol=1e-5, rtol=1e-5)
    params = list(rnn.parameters())
    g = torch.randn_like(out)
    got = torch.autograd.grad((out_c * g).sum() + h_c.sum(), params)
    want = torch.autograd.grad((out * g).sum() + h_n.sum(), params)
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_torch_jit_trace(grad, masked):
    """torch.jit.trace records the custom op (the eager path's in-place writes into its
    buffers are invisible to the tracer: a trace under no_grad once returned uninitialised
    memory). The trace, run on another input, equals eager mode, values and gradients. With a
    mask, the trace's own check (a second trace without grad) failed: the zeroing of padding
    steps depended on the grad mode."""
    rnn = randomise_(IndRNN(IN, H, num_layers=2, bidirectional=True, recurrent_max_abs=1.1))
    rnn.eval()
    x, x2 = torch.randn(T, B, IN), torch.randn(T, B, IN)
    hx = torch.rand(2 * 2, B, H)
    args = (x, hx, padding_mask([T, 2, 5, 3], T)) if masked else (x,)
    with torch.set_grad_enabled(grad), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shape checks
        traced = torch.jit.trace(rnn, args)
    out_t, h_t = traced(x2, *args[1:])
    out, h_n = rnn(x2, *args[1:])
    torch.testing.assert_close(out_t, out, rtol=0, atol=0)
    torch.testing.assert_close(h_t, h_n, rtol=0, atol=0)
    if grad:
        params = list(rnn.parameters())
        got = torch.autograd.grad(out_t.square().sum() + h_t.sum(), params)
        want = torch.autograd.grad(out.square().sum() + h_n.sum(), params)
        for a, w in zip(got, want, strict=True):
            torch.testing.assert_close(a, w, rtol=1e-6, atol=1e-6)


def test_torch_export_dynamic_shapes_saved_and_loaded(tmp_path):
    """torch.export with dynamic batch and time, saved and loaded in the .pt2 format: the
    program equals eager mode at other shapes (one step, one row included), values and the
    gradients of the input and every parameter."""
    rnn = randomise_(IndRNN(IN, H, num_layers=3, bidirectional=True, residual=True,
                            norm="layer", batch_first=True, recurrent_max_abs=1.1))
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    x, mask = torch.randn(B, T, IN), padding_mask([T, 2, 5, 3], T).T
    program = torch.export.export(rnn, (x,), {"mask": mask},
                                  dynamic_shapes={"x": {0: batch, 1: time},
                                                  "mask": {0: batch, 1: time}})
    torch.export.save(program, tmp_path / "rnn.pt2")
    exported = torch.export.load(tmp_path / "rnn.pt2").module()
    for b, t in [(3, 11), (1, 1), (2, 1), (1, 4)]:
        x = torch.randn(b, t, IN, requires_grad=True)
        mask = padding_mask([t] + [max(t - 2, 1)] * (b - 1), t).T
        results = []
        for model in (exported, rnn):
            out, h_n = model(x, mask=mask)
            params = [dict(model.named_parameters())[n] for n, _ in rnn.named_parameters()]
            grads = torch.autograd.grad(out.square().sum() + h_n.sum(), [x, *params])
            results.append((out, h_n, *grads))
        for got, want in zip(*results, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("options", [dict(num_layers=2, norm="layer"),
                                     dict(num_layers=3, norm="batch", residual=True)])
def test_autocast_bfloat16(options, masked):
    rnn = randomise_(IndRNN(IN, H, bidirectional=True, recurrent_max_abs=1.0, **options))
    x = torch.randn(T, B, IN)
    mask = padding_mask([T, 2, 5, 3], T) if masked else None
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out, h_n = rnn(x, mask=mask)
    assert out.dtype == torch.bfloat16 and h_n.dtype == torch.float32
    ref_out, ref_h_n = rnn(x, mask=mask)
    scale = ref_out.abs().max().item()
    torch.testing.assert_close(out.float(), ref_out, atol=3e-2 * scale, rtol=3e-2)
    torch.testing.assert_close(h_n, ref_h_n, atol=3e-2 * scale, rtol=3e-2)
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rnn.parameters())


@pytest.mark.parametrize("batch_first", [False, True])
def test_bidirectional_op_registration(batch_first):
    # Schema, autograd registration, fake tensor and AOT dispatch of the private two-direction
    # op, on a strided (non-contiguous) pre, with and without the optional inputs.
    pre = torch.randn(5, 3, 8, **F64)
    pre = pre.transpose(0, 1) if batch_first else pre
    u = torch.empty(8, **F64).uniform_(-1, 1.2)
    b, h0 = torch.randn(8, **F64), torch.randn(2, 3, 4, **F64)
    mask = padding_mask([5, 2, 3], 5, batch_first=batch_first)
    for args in [(pre, u, b, h0, mask, 1.0, 0.1, False, batch_first, True),
                 (pre, u, None, None, None, None, 0.0, False, batch_first, True)]:
        args = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                else a for a in args]
        torch.library.opcheck(_forward_op, args)
        assert torch.autograd.gradcheck(lambda *t, a=args: _forward_op(
            *t, *a[len(t):]), [t for t in args[:4] if t is not None])


class _LargeOutputs(TorchDispatchMode):
    """Records the ops that produce a new (not aliasing) tensor of at least ``numel`` elements."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves(args)
                  if isinstance(a, torch.Tensor)}
        for r in torch.utils._pytree.tree_leaves(result):
            if (isinstance(r, torch.Tensor) and r.numel() >= self.numel
                    and r.untyped_storage().data_ptr() not in inputs):
                self.ops.append(func.__name__.split(".")[0])
        return result


@pytest.mark.parametrize("batch_first", [False, True])
def test_bidirectional_layer_makes_no_time_sized_copies(batch_first):
    rnn = IndRNN(IN, H, bidirectional=True, batch_first=batch_first)
    x = torch.randn((B, T, IN) if batch_first else (T, B, IN), requires_grad=True)
    mask = padding_mask([T, 2, 5, 3], T, batch_first=batch_first)
    numel = T * B * min(IN, H)
    with _LargeOutputs(numel) as mode:
        out, h_n = rnn(x, mask=mask)
    forward_ops = sorted(mode.ops)
    grad = torch.ones_like(out)
    with _LargeOutputs(numel) as mode:
        out.backward(grad)
    # Forward: the GEMM (T, B, 2H) and the recurrence's output, plus the input zeroed at
    # padding steps (so that padding values cannot reach the weight gradient). Backward: the
    # recurrence's gradient of pre (T, B, 2H), the GEMM's gradient of x and its masking;
    # nothing is flipped or concatenated, no gradient is scattered into a zero-filled buffer.
    assert forward_ops == ["indrnn_forward", "masked_fill", "mm"]
    assert sorted(mode.ops) == ["indrnn_backward", "masked_fill", "mm"]
    # Without autograd (inference) the input is read as it is.
    with torch.no_grad(), _LargeOutputs(numel) as mode:
        rnn(x, mask=mask)
    assert sorted(mode.ops) == ["indrnn_forward", "mm"]


# ----------------------------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------------------------


def _rnn(**kw):
    return IndRNN(IN, H, **kw)


CONSTRUCTOR_ERRORS = [
    (dict(input_size=0), ValueError, "input_size must be >= 1"),
    (dict(hidden_size=2.5), TypeError, "hidden_size must be an int"),
    (dict(num_layers=0), ValueError, "num_layers must be >= 1"),
    (dict(bias=1), TypeError, "bias must be a bool"),
    (dict(dropout=1.0), ValueError, r"dropout must be a probability in \[0, 1\)"),
    (dict(dropout="0.1"), TypeError, "dropout must be a real number"),
    (dict(norm="group"), ValueError, "norm must be None, 'batch' or 'layer', got 'group'"),
    (dict(residual=True, num_layers=2), ValueError, "residual=True needs an odd num_layers >= 3"),
    (dict(residual=True), ValueError, "residual=True needs an odd num_layers >= 3"),
    (dict(recurrent_max_abs=0.0), ValueError, "recurrent_max_abs must be > 0"),
    (dict(recurrent_min_abs=-1.0), ValueError, "recurrent_min_abs must be >= 0"),
    (dict(recurrent_max_abs=0.5, recurrent_min_abs=0.6), ValueError, "must not exceed"),
    (dict(recurrent_init=(1.0, 0.0)), ValueError, "recurrent_init must have low <= high"),
    (dict(recurrent_init=0.5), TypeError, r"recurrent_init must be a \(low, high\) pair"),
    (dict(last_layer_recurrent_init="near_one"), ValueError, "recurrent_max_abs, which must"),
    (dict(input_weight_init="orthogonal"), ValueError, "input_weight_init must be one of"),
    (dict(norm="batch", norm_eps=0.0), ValueError, "norm_eps > 0"),
    (dict(norm="batch", norm_position="middle"), ValueError,
     r"norm_position must be one of \('before', 'after'\), got 'middle'"),
    (dict(dropout_last=1.0), ValueError, r"dropout_last must be a probability in \[0, 1\)"),
]


@pytest.mark.parametrize("kwargs,exc,match", CONSTRUCTOR_ERRORS,
                         ids=[next(iter(c[0])) + str(i) for i, c in enumerate(CONSTRUCTOR_ERRORS)])
def test_constructor_errors(kwargs, exc, match):
    kw = dict(input_size=IN, hidden_size=H) | kwargs
    with pytest.raises(exc, match=match):
        IndRNN(**kw)


FORWARD_ERRORS = [
    (dict(), dict(x=torch.randn(T, B, IN + 1)), ValueError,
     r"x must have shape \(T, B, input_size\), or \(T, input_size\) for one unbatched "
     r"sequence, with input_size = 5, got \(7, 4, 6\)"),
    (dict(batch_first=True), dict(x=torch.randn(B, T, 1, IN)), ValueError,
     r"x must have shape \(B, T, input_size\), or \(T, input_size\)"),
    (dict(), dict(x=torch.randn(IN)), ValueError, r"got \(5,\)"),
    (dict(batch_first=True), dict(x=torch.randn(T, IN + 1)), ValueError,
     r"x must have shape \(T, input_size\) with input_size = 5 for one unbatched sequence, "
     r"got \(7, 6\)"),
    (dict(num_layers=2), dict(x=torch.randn(T, IN), hx=torch.zeros(2, 1, H)), ValueError,
     r"hx must have shape \(num_layers\*D, H\) = \(2, 6\) for an unbatched \(T, input_size\) "
     r"x, got \(2, 1, 6\)"),
    # The unbatched shapes are named as given (were the batched ones made from them).
    (dict(num_layers=2), dict(x=torch.randn(T, IN), hx=torch.zeros(3, H)), ValueError,
     r"hx must have shape \(num_layers\*D, H\) = \(2, 6\) for an unbatched .* got \(3, 6\)"),
    (dict(), dict(x=torch.randn(T, IN), mask=torch.ones(T, 1, dtype=torch.bool)), ValueError,
     r"mask must have shape \(T,\) = \(7,\) for an unbatched \(T, input_size\) x, got "
     r"\(7, 1\)"),
    (dict(), dict(x=torch.randn(T, IN), mask=torch.ones(T + 1, dtype=torch.bool)), ValueError,
     r"mask must have shape \(T,\) = \(7,\) for an unbatched .* got \(8,\)"),
    (dict(), dict(x=pack_padded_sequence(torch.randn(T, B, IN + 1), [T, 5, 3, 2])), ValueError,
     r"x, a PackedSequence, must hold \(steps, input_size\) data with input_size = 5, got "
     r"data of shape \(17, 6\)"),
    (dict(), dict(x=[1.0]), TypeError, "x must be a torch.Tensor or a PackedSequence"),
    (dict(num_layers=2, bidirectional=True), dict(hx=torch.zeros(2, B, H)), ValueError,
     r"hx must have shape \(num_layers\*D, B, H\) = \(4, 4, 6\), got \(2, 4, 6\)"),
    (dict(), dict(hx=torch.zeros(1, B, H, dtype=torch.int64)), TypeError,
     "hx must be a floating-point tensor"),
    (dict(), dict(mask=torch.ones(B, T, dtype=torch.bool)), ValueError,
     r"mask must have shape \(T, B\) = \(7, 4\), got \(4, 7\)"),
    (dict(batch_first=True), dict(mask=torch.ones(T, B, dtype=torch.bool)), ValueError,
     r"mask must have shape \(B, T\) = \(4, 7\), got \(7, 4\)"),
    (dict(), dict(mask=torch.ones(T, B)), TypeError, "mask must be bool or an integer dtype"),
    # Was torch's "Tensor on device cpu is not on the expected device meta!" from masked_fill.
    (dict(), dict(mask=torch.ones(T, B, dtype=torch.bool, device="meta")), ValueError,
     "mask is on meta but the input is on cpu"),
]


@pytest.mark.parametrize("module_kwargs,call,exc,match", FORWARD_ERRORS,
                         ids=[f"case{i}" for i in range(len(FORWARD_ERRORS))])
def test_forward_errors(module_kwargs, call, exc, match):
    rnn = _rnn(**module_kwargs)
    bf = module_kwargs.get("batch_first", False)
    call = dict(x=torch.randn((B, T, IN) if bf else (T, B, IN))) | call
    with pytest.raises(exc, match=match):
        rnn(**call)


@pytest.mark.parametrize("dense", [False, True], ids=["IndRNN", "DenseIndRNN"])
@pytest.mark.parametrize("call, exc, match", [
    (dict(mask=torch.ones(3, 3, dtype=torch.bool)), ValueError,
     r"mask must have shape \(T, B\) = \(7, 4\), got \(3, 3\)"),
    (dict(mask=torch.ones(B, T, dtype=torch.bool)), ValueError,
     r"mask must have shape \(T, B\) = \(7, 4\), got \(4, 7\)"),
    (dict(mask=torch.ones(T, B)), TypeError, "mask must be bool or an integer dtype"),
    (dict(x=torch.randn(T, B, IN, dtype=torch.float64)), TypeError,
     r"x dtype \(torch.float64\) does not match the weight dtype \(torch.float32\)"),
    (dict(x=torch.ones(T, B, IN, dtype=torch.int64)), TypeError,
     "x must be a floating-point tensor"),
])
def test_forward_layer_checks_its_arguments(dense, call, exc, match):
    """forward_layer, public for per-layer checkpointing, checked x's size only: a bad mask or
    dtype failed inside masked_fill or F.linear with torch's messages."""
    rnn = DenseIndRNN(IN, H, growth_rate=2, block_config=(1,)) if dense else _rnn(num_layers=2)
    call = dict(x=torch.randn(T, B, IN)) | call
    with pytest.raises(exc, match=match):
        rnn.forward_layer(0, call.pop("x"), None, **call)


def test_torch_rnn_attributes():
    """flatten_parameters() (called by code written for nn.RNN, e.g. under DataParallel) does
    nothing; all_weights lists each layer's parameters."""
    rnn = _rnn(num_layers=2, bidirectional=True)
    x = torch.randn(T, B, IN)
    before = rnn(x)
    rnn.flatten_parameters()
    for a, b in zip(rnn(x), before, strict=True):
        assert torch.equal(a, b)
    assert [[p is getattr(rnn, f"{n}_l{k}") for p, n in zip(ps, ("weight_ih", "weight_hh", "bias"))]
            for k, ps in enumerate(rnn.all_weights)] == [[True] * 3] * 2
    assert [len(ps) for ps in _rnn(bias=False).all_weights] == [2]


def test_packed_input_with_mask_is_an_error():
    packed = pack_padded_sequence(torch.randn(T, B, IN), torch.tensor([T, 3, 2, 1]))
    with pytest.raises(ValueError, match="mask must be None for a PackedSequence"):
        _rnn()(packed, mask=torch.ones(T, B, dtype=torch.bool))


def test_cell_errors():
    cell = IndRNNCell(IN, H)
    with pytest.raises(ValueError, match=r"x must have shape \(B, input_size\), or "
                                         r"\(input_size,\) unbatched, with input_size = 5"):
        cell(torch.randn(B, IN + 1))
    with pytest.raises(ValueError, match=r"got \(6,\)"):
        cell(torch.randn(IN + 1))
    with pytest.raises(ValueError, match=r"h must have shape \(H,\) for an unbatched"):
        cell(torch.randn(IN), torch.zeros(1, H))
    with pytest.raises(ValueError, match=r"h must have shape \(B, H\) = \(4, 6\), got \(4, 5\)"):
        cell(torch.randn(B, IN), torch.zeros(B, H - 1))
    with pytest.raises(ValueError, match="recurrent_max_abs must be > 0"):
        IndRNNCell(IN, H, recurrent_max_abs=-1.0)


def test_functional_errors():
    x = torch.randn(T, B, IN)
    with pytest.raises(ValueError, match=r"weight_ih must have shape \(D\*H, I\) with I = 5"):
        indrnn_layer(x, torch.randn(H, IN + 1), torch.rand(H))
    with pytest.raises(ValueError, match=r"weight_hh must have shape \(D\*H,\) = \(12,\)"):
        indrnn_layer(x, torch.randn(2 * H, IN), torch.rand(H), bidirectional=True)
    with pytest.raises(ValueError, match=r"h0 must have shape \(D, B, H\) = \(2, 4, 6\)"):
        indrnn_recurrence(torch.randn(T, B, 2 * H), torch.rand(2 * H),
                          h0=torch.zeros(B, H), bidirectional=True)
    # indrnn_layer checks h0 and mask itself, before its projection reads them, on both of its
    # paths: a (3, B, H) h0 was once cut to its first state by the fused path, and a mask of the
    # wrong layout failed inside the unfused path's masked_fill with a broadcast error.
    for fused in (False, True):
        for h0 in (torch.zeros(3, B, H), torch.zeros(B, H)):
            with pytest.raises(ValueError, match=r"h0 must have shape \(D, B, H\) = \(1, 4, 6\)"):
                indrnn_layer(x, torch.randn(H, IN), torch.rand(H), h0=h0, fused_projection=fused)
        with pytest.raises(ValueError, match=r"mask must have shape \(T, B\) = \(7, 4\)"):
            indrnn_layer(x.requires_grad_(), torch.randn(H, IN), torch.rand(H),
                         mask=torch.ones(B, T, dtype=torch.bool), fused_projection=fused)
        x = x.detach()
    with pytest.raises(ValueError, match="pre's last dimension must be 2\\*H"):
        indrnn_recurrence(torch.randn(T, B, 5), torch.rand(5), bidirectional=True)
    with pytest.raises(ValueError, match=r"mask must have shape \(T, B\)"):
        indrnn_recurrence(torch.randn(T, B, 2 * H), torch.rand(2 * H),
                          mask=torch.ones(T, B + 1, dtype=torch.bool), bidirectional=True)
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\)"):
        dropout_over_time(x, 1.5, training=True)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout=0.2 has no effect with num_layers=1"):
        IndRNN(IN, H, dropout=0.2)


def test_training_steps_follow_the_plain_model():
    # Liger-style convergence check: a few optimizer steps (with constrain_ after each, the
    # authors' style) give the same losses and weights as training the plain model.
    torch.manual_seed(1)
    kwargs = dict(num_layers=3, bidirectional=True, residual=True, norm="batch",
                  recurrent_max_abs=2 ** (1 / T), last_layer_recurrent_init="near_one", **F64)
    rnn, plain = IndRNN(IN, H, **kwargs), IndRNN(IN, H, **kwargs)
    plain.load_state_dict(rnn.state_dict())
    head = torch.randn(2 * H, 1, **F64) * 0.1
    x = make_input()
    mask = padding_mask([T, 3, 5, 6], T, left=True)
    target = torch.randn(B, 1, **F64)
    losses = {}
    for name, model, forward in (("fused", rnn, lambda: rnn(x, mask=mask)),
                                 ("plain", plain, lambda: reference_forward(plain, x, None, mask))):
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        losses[name] = []
        for _ in range(6):
            out, _ = forward()
            loss = F.mse_loss(out[-1] @ head, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.constrain_()
            losses[name].append(loss.item())
    torch.testing.assert_close(losses["fused"], losses["plain"], atol=1e-9, rtol=1e-9)
    assert losses["fused"][-1] < 0.5 * losses["fused"][0]
    for (name, p), q in zip(rnn.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-9, rtol=1e-9, msg=name)


def test_output_at_padding_repeats_the_carried_state():
    """As in the op: a padded position's output is each layer's carried state."""
    rnn = IndRNN(IN, H, num_layers=2, bidirectional=True, norm="layer", **F64)
    x = torch.randn(T, 2, IN, **F64)
    mask = padding_mask([T, 3], T)
    out, _ = rnn(x, mask=mask)
    fwd, bwd = out[..., :H], out[..., H:]
    # Right padding: the forward direction holds its state after the last real step, the
    # backward direction its initial state (zeros) until the first real step from the end.
    torch.testing.assert_close(fwd[3:, 1], fwd[2, 1].expand(T - 3, H), rtol=0, atol=0)
    torch.testing.assert_close(bwd[3:, 1], torch.zeros(T - 3, H, **F64), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Execution options: the recurrence method and the fused projection change no result.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
def test_method_and_fused_projection_change_no_result(backend, bidirectional):
    """IndRNN(method=...) reaches the op (the chunked kernels under the interpreter), and
    fused_projection=True (the projection inside the kernel) equals the GEMM + recurrence."""
    kw = dict(num_layers=2, bidirectional=bidirectional, recurrent_max_abs=1.1, batch_first=True)
    plain = randomise_(IndRNN(IN, H, **kw))
    x = torch.randn(B, T, IN, requires_grad=True)
    mask = padding_mask([T, 2, 5, 3], T, batch_first=True)
    g = torch.randn(B, T, (2 if bidirectional else 1) * H)
    out, h_n = plain(x, mask=mask)
    want = torch.autograd.grad((out * g).sum() + h_n.sum(), [x, *plain.parameters()])
    for options in (dict(method="chunked"), dict(method="sequential"),
                    dict(fused_projection=True)):
        other = IndRNN(IN, H, **kw, **options)
        other.load_state_dict(plain.state_dict())
        o, hn = other(x, mask=mask)
        torch.testing.assert_close(o, out, rtol=1e-5, atol=1e-5, msg=str(options))
        torch.testing.assert_close(hn, h_n, rtol=1e-5, atol=1e-5, msg=str(options))
        got = torch.autograd.grad((o * g).sum() + hn.sum(), [x, *other.parameters()])
        for a, w in zip(got, want, strict=True):
            torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-5, msg=str(options))


def test_execution_option_errors():
    with pytest.raises(ValueError, match="method must be one of 'auto', 'sequential', 'chunked'"):
        IndRNN(IN, H, method="parallel")
    with pytest.raises(TypeError, match="fused_projection must be True, False or None"):
        IndRNN(IN, H, fused_projection="yes")
    with pytest.raises(ValueError, match="fused_projection=True needs norm=None"):
        IndRNN(IN, H, norm="batch", fused_projection=True)
    assert "method='chunked'" in repr(IndRNN(IN, H, method="chunked"))
