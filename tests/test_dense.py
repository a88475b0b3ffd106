"""DenseIndRNN: layer plan and shapes, padding, bidirectional, and float64 parity (outputs, h_n,
every gradient) with a plain PyTorch composition of the same layers on indrnn_reference."""

import pytest
import torch
from test_modules import _reference_norm, padding_mask, randomise_

from indrnn_triton import DenseIndRNN, indrnn_reference

F64 = dict(dtype=torch.float64)
T, B, IN = 6, 3, 2


def dense_reference(rnn: DenseIndRNN, x, hx=None, mask=None):
    """The dense network written out: first layer, then per block the dense layers (optional
    bottleneck, growth layer, concatenation), then a transition; (T, B, I) input, eval-mode
    dropout."""
    m = None if mask is None else mask != 0
    D = rnn.num_directions
    h_ns = []

    def layer(k, inp):
        pre = inp @ getattr(rnn, f"weight_ih_l{k}").t()
        if rnn.norm is not None and rnn.norm_position == "before":
            pre = _reference_norm(rnn, k, pre, m)
        H = pre.shape[-1] // D
        u, b = getattr(rnn, f"weight_hh_l{k}"), getattr(rnn, f"bias_l{k}")
        outs = []
        for d in range(D):
            s = slice(d * H, (d + 1) * H)
            o, h = indrnn_reference(pre[..., s], u[s], None if b is None else b[s],
                                    None if hx is None else hx[k][d],
                                    recurrent_max_abs=rnn.recurrent_max_abs, mask=m,
                                    reverse=d == 1)
            outs.append(o)
            h_ns.append(h)
        out = torch.cat(outs, -1)
        if rnn.norm is not None and rnn.norm_position == "after":
            out = _reference_norm(rnn, k, out, m)
        return out

    k, stream = 0, layer(0, x)
    for layers in rnn.block_config:
        for _ in range(layers):
            inp = stream
            if rnn.bottleneck:
                k += 1
                inp = layer(k, stream)
            k += 1
            stream = torch.cat([stream, layer(k, inp)], -1)
        k += 1
        stream = layer(k, stream)
    assert k == rnn.num_layers - 1
    return stream, [torch.stack(h_ns[i * D:(i + 1) * D]) for i in range(rnn.num_layers)]


CASES = {
    "bottleneck_batch_norm_after_bidirectional_padded": (
        dict(bottleneck=2, norm="batch", norm_position="after", bidirectional=True),
        dict(mask=True)),
    "no_bottleneck_layer_norm_before_hx": (dict(bottleneck=0, norm="layer"), dict(hx=True)),
    "bottleneck_batch_norm_eval_clip": (
        dict(bottleneck=3, norm="batch", recurrent_max_abs=1.05), dict(eval=True, mask=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dense_stack_matches_the_plain_composition_in_float64(case):
    kwargs, opts = CASES[case]
    rnn = randomise_(DenseIndRNN(IN, 5, growth_rate=3, block_config=(2, 1), **kwargs, **F64))
    if opts.get("eval"):
        rnn.eval()
    x = torch.randn(T, B, IN, **F64, requires_grad=True)
    mask = padding_mask([T, 2, 4], T) if opts.get("mask") else None
    hx = None
    if opts.get("hx"):
        hx = [torch.randn(rnn.num_directions, B, units, **F64, requires_grad=True)
              for _, units in rnn.layer_sizes]
    out, h_n = rnn(x, hx, mask=mask)
    ref_out, ref_h_n = dense_reference(rnn, x, hx, mask)
    assert out.shape == (T, B, rnn.output_size)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-9)
    for got, want in zip(h_n, ref_h_n, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)
    leaves = [x, *(hx or []), *rnn.parameters()]
    g = torch.randn_like(out)
    loss = (out * g).sum() + sum(h.sum() for h in h_n)
    ref_loss = (ref_out * g).sum() + sum(h.sum() for h in ref_h_n)
    grads = torch.autograd.grad(loss, leaves)
    ref_grads = torch.autograd.grad(ref_loss, leaves)
    names = ["x", *(f"hx[{k}]" for k in range(len(hx or []))),
             *(n for n, _ in rnn.named_parameters())]
    for name, a, b in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=lambda s, n=name: f"{n}: {s}")
    assert all(a.abs().sum() > 0 for a in grads[:1])


def test_layer_plan_sizes_and_shapes():
    rnn = DenseIndRNN(1, 96, growth_rate=16, block_config=(8, 6, 4), bottleneck=4)
    # The authors' sequential-MNIST dense network: 96 -> +8x16 -> 112 -> +6x16 -> 104
    # -> +4x16 -> 84 features out, 2 IndRNN layers per dense layer.
    assert rnn.num_layers == 1 + 2 * 18 + 3 and rnn.output_size == 84
    assert [units for kind, (_, units) in zip(rnn.layer_kinds, rnn.layer_sizes, strict=True)
            if kind == "transition"] == [112, 104, 84]
    bi = DenseIndRNN(IN, 4, growth_rate=2, block_config=(1,), batch_first=True,
                     bidirectional=True)
    out, h_n, layers = bi(torch.randn(B, T, IN), output_layers=True)
    assert out.shape == (B, T, 2 * 3) and bi.output_size == 6
    assert [tuple(h.shape) for h in h_n] == [(2, B, 4), (2, B, 8), (2, B, 2), (2, B, 3)]
    assert [y.shape[-1] for y in layers] == [8, 16, 12, 6]  # the growth layer concatenates


@pytest.mark.parametrize("left", [False, True], ids=["right_padding", "left_padding"])
def test_padded_batch_equals_each_sequence_alone(left):
    rnn = randomise_(DenseIndRNN(IN, 4, growth_rate=2, block_config=(2,), bottleneck=2,
                                 bidirectional=True, norm="layer", norm_position="after",
                                 batch_first=True, recurrent_max_abs=1.2, **F64))
    lengths = [T, 3, 1]
    x = torch.randn(B, T, IN, **F64)
    x[padding_mask(lengths, T, left=left, batch_first=True) == 0] = float("nan")
    mask = padding_mask(lengths, T, left=left, batch_first=True)
    out, h_n = rnn(x, mask=mask)
    for i, n in enumerate(lengths):
        real = torch.arange(T - n, T) if left else torch.arange(n)
        out_i, h_i = rnn(x[i:i + 1, real])
        torch.testing.assert_close(out[i, real], out_i[0], atol=1e-12, rtol=1e-10)
        for a, b in zip(h_n, h_i, strict=True):
            torch.testing.assert_close(a[:, i], b[:, 0], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(("kwargs", "call", "match"), [
    (dict(growth_rate=0), None, "growth_rate must be >= 1"),
    (dict(block_config=()), None, "block_config must be a non-empty sequence"),
    (dict(block_config=(2, 0)), None, "block_config must be a non-empty sequence"),
    (dict(bottleneck=-1), None, r"bottleneck must be an int >= 0"),
    (dict(), dict(x=torch.randn(T, IN)), "DenseIndRNN takes no unbatched sequence"),
    (dict(), dict(hx=torch.zeros(4, B, 3)), "hx must be None or a sequence of num_layers"),
    (dict(), dict(hx=[torch.zeros(1, B, 1)] * 4), "num_layers = 3 tensors .* got 4 tensors"),
    (dict(), dict(hx=[torch.zeros(1, B, 1)] * 3), r"hx\[0\] must have shape \(D, B, H_k\)"),
    (dict(dropout_by_kind={"last": 0.1}), None, "dropout_by_kind keys must be among"),
    (dict(dropout_by_kind={"growth": 1.0}), None,
     r"dropout_by_kind\['growth'\] must be a probability in \[0, 1\)"),
    (dict(dropout_by_kind=[("growth", 0.1)]), None, "dropout_by_kind must be a mapping"),
])
def test_errors_name_the_argument(kwargs, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rnn = DenseIndRNN(IN, 3, **(dict(growth_rate=2, block_config=(1,), bottleneck=0)
                                    | kwargs))
        rnn(**(dict(x=torch.randn(T, B, IN)) | (call or {})))


def test_growth_layer_needs_the_shortcut_of_its_bottleneck():
    rnn = DenseIndRNN(IN, 3, growth_rate=2, block_config=(1,), bottleneck=2)
    out, _, carry = rnn.forward_layer(1, rnn.forward_layer(0, torch.randn(T, B, IN))[0])
    assert carry is not None
    with pytest.raises(ValueError, match="layer 2 of a DenseIndRNN concatenates"):
        rnn.forward_layer(2, out)


def test_dropout_rate_per_kind_of_layer(monkeypatch):
    """dropout_by_kind sets the rate of the kinds it names, dropout the others, dropout_last the
    last layer; each layer's output goes through dropout at its rate (recorded at the call),
    in training only."""
    import indrnn_triton.modules as modules

    calls = []
    real = modules.dropout_over_time

    def record(x, p, training, batch_first):
        calls.append((p, training))
        return real(x, p, training, batch_first)

    monkeypatch.setattr(modules, "dropout_over_time", record)
    rnn = DenseIndRNN(IN, 4, growth_rate=2, block_config=(2, 1), bottleneck=1, dropout=0.1,
                      dropout_last=0.05, dropout_by_kind={"first": 0.3, "growth": 0.2})
    want = {"first": 0.3, "growth": 0.2, "bottleneck": 0.1, "transition": 0.1}
    expected = [want[kind] for kind in rnn.layer_kinds[:-1]] + [0.05]
    assert [rnn.layer_dropout(k) for k in range(rnn.num_layers)] == expected
    assert "dropout_by_kind={'first': 0.3, 'growth': 0.2}" in repr(rnn)
    for training in (True, False):
        calls.clear()
        rnn.train(training)
        rnn(torch.randn(T, B, IN))
        assert calls == [(p, training) for p in expected]
