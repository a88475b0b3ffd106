"""``IndRNN`` and ``IndRNNCell``: ``torch.nn.RNN``-style modules on the fused IndRNN recurrence."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .functional import (
    batch_norm_over_steps,
    check_norm_position,
    dropout_over_time,
    indrnn_layer,
    indrnn_recurrence,
    padding_free_input,
    use_fused_projection,
)
from .op import _check_real, check_clip, check_method, fused_indrnn
from .reference import clip_recurrent_weight

_NORMS = (None, "batch", "layer")
_INPUT_INITS = ("kaiming_uniform", "xavier_uniform", "rnn_uniform", "normal")

InitRange = tuple[float, float]


# ----------------------------------------------------------------------------------------------
# Argument checks shared by both modules.
# ----------------------------------------------------------------------------------------------


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _probability(name: str, value) -> float:
    value = _check_real(name, value, allow_none=False)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value}")
    return value


def _init_range(name: str, value, default: InitRange) -> InitRange:
    if value is None:
        return default
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) pair or None, got {value!r}")
    low = _check_real(f"{name}[0]", value[0], allow_none=False)
    high = _check_real(f"{name}[1]", value[1], allow_none=False)
    if low > high:
        raise ValueError(f"{name} must have low <= high, got ({low}, {high})")
    return low, high


def _input_init(value) -> str | Callable[[Tensor], object]:
    if callable(value) or value in _INPUT_INITS:
        return value
    raise ValueError(
        f"input_weight_init must be one of {_INPUT_INITS} or a callable, got {value!r}"
    )


def _in_range(bounds: InitRange, dtype: torch.dtype) -> InitRange:
    """An init range within ``dtype``'s finite numbers: the default (0, recurrent_max_abs)
    with a bound beyond them (which clips nothing) made uniform_ fail to convert it."""
    top = torch.finfo(dtype).max
    return max(bounds[0], -top), min(bounds[1], top)


def _input_std(value) -> float:
    std = _check_real("input_weight_std", value, allow_none=False)
    if std <= 0:
        raise ValueError(f"input_weight_std must be > 0, got {std}")
    return std


def _init_input_weight_(weight: Tensor, scheme, hidden_size: int, init=nn.init,
                        std: float = 0.001) -> None:
    if callable(scheme):
        # The default first, so a callable that neither fills the tensor in place nor returns
        # one leaves the authors' initialisation, never uninitialised memory; a returned tensor
        # is used (torch.nn.init style functions return the tensor they filled).
        _init_input_weight_(weight, "kaiming_uniform", hidden_size)
        result = scheme(weight)
        if isinstance(result, Tensor) and result is not weight:
            if result.shape != weight.shape:
                raise ValueError(
                    f"input_weight_init returned a tensor of shape {tuple(result.shape)}; "
                    f"it must fill its argument in place or return shape {tuple(weight.shape)}"
                )
            weight.copy_(result)
    elif scheme == "kaiming_uniform":
        # The IndRNN authors' choice for every input-to-hidden ("fc") weight.
        init.kaiming_uniform_(weight, a=8, mode="fan_in")
    elif scheme == "xavier_uniform":
        init.xavier_uniform_(weight)
    elif scheme == "normal":  # N(0, std^2): the authors' adding-problem scripts, std 0.001
        init.normal_(weight, 0.0, std)
    else:  # "rnn_uniform": torch.nn.RNN's U(-1/sqrt(H), 1/sqrt(H))
        bound = 1.0 / math.sqrt(hidden_size)
        init.uniform_(weight, -bound, bound)


def _check_state(name: str, h: Tensor, want: tuple[int, ...], layout: str, device) -> None:
    if not isinstance(h, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(h).__name__}")
    if tuple(h.shape) != want:
        raise ValueError(f"{name} must have shape {layout} = {want}, got {tuple(h.shape)}")
    if not h.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {h.dtype}")
    if h.device != device:
        raise ValueError(f"{name} is on {h.device} but the input is on {device}")


def _check_input_dtype(name: str, x: Tensor, weight: Tensor) -> None:
    """x must be a float tensor of the weights' dtype, unless autocast chooses the dtype."""
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}: convert it "
                        f"with {name}.to({weight.dtype})")
    # Autocast casts both sides of the projection, except float64 tensors, which it leaves.
    autocast = torch.is_autocast_enabled(x.device.type) and torch.float64 not in (x.dtype,
                                                                                   weight.dtype)
    if x.dtype != weight.dtype and not autocast:
        raise TypeError(
            f"{name} dtype ({x.dtype}) does not match the weight dtype ({weight.dtype}). "
            f"Convert the input: {name}.to({weight.dtype}), or the model: "
            f"model.to({x.dtype})"
        )


# ----------------------------------------------------------------------------------------------
# Normalisation of the pre-activations, over real steps only.
# ----------------------------------------------------------------------------------------------


class _StepNorm(nn.Module):
    """The parameters both norms share: a scale ``weight`` (starts at 1) and, with ``shift``,
    a ``bias`` (starts at 0)."""

    def __init__(self, num_features: int, shift: bool, device, dtype):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory)) if shift else None

    def reset_parameters(self, init=nn.init) -> None:
        init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)


class _StepBatchNorm(_StepNorm):
    """Batch norm of (T, B, F) features; statistics over real (unmasked) steps only."""

    def __init__(self, num_features: int, momentum: float, eps: float, shift: bool, device,
                 dtype):
        super().__init__(num_features, shift, device, dtype)
        factory = dict(device=device, dtype=dtype)
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return batch_norm_over_steps(x, mask, self.weight, self.running_mean, self.running_var,
                                     training=self.training, momentum=self.momentum,
                                     eps=self.eps, bias=self.bias)

    def reset_parameters(self, init=nn.init) -> None:
        super().reset_parameters(init)
        init.zeros_(self.running_mean)
        init.ones_(self.running_var)


class _StepLayerNorm(_StepNorm):
    """Layer norm of each step's D*H features (padding needs no special care)."""

    def __init__(self, num_features: int, momentum: float, eps: float, shift: bool, device,
                 dtype):
        super().__init__(num_features, shift, device, dtype)
        self.eps = eps

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


_NORM_CLASSES = {"batch": _StepBatchNorm, "layer": _StepLayerNorm}


# ----------------------------------------------------------------------------------------------
# The modules.
# ----------------------------------------------------------------------------------------------


class IndRNN(nn.Module):
    r"""A multi-layer IndRNN, ``h_t = relu(W x_t + b + clip(u) ⊙ h_{t-1})``, on the fused op.

    Used like ``torch.nn.RNN``::

        rnn = IndRNN(32, 128, num_layers=2, batch_first=True, bidirectional=True,
                     recurrent_max_abs=2 ** (1 / T), norm="batch")
        output, h_n = rnn(x)              # x: (B, T, 32), or a PackedSequence
        output, h_n = rnn(x, mask=mask)   # mask: (B, T), False = padding

    Layer k computes ``pre_k = W_k x_k`` with ONE GEMM (``F.linear``, no bias) for all steps
    and both directions, then runs the fused recurrence (bias added in the kernel; the state
    stays float32 across all steps); ``norm`` normalises the pre-activations before the
    recurrence or its output after it (``norm_position``). A bidirectional
    layer's recurrence reads the two halves of the GEMM output in place and writes the two
    halves of one output buffer (see :func:`indrnn_triton.functional.indrnn_recurrence`): no
    flip, no concatenation of (T, B, H) tensors, forwards or backwards.

    Args:
        input_size: features I of the input.
        hidden_size: hidden units H per direction.
        num_layers: stacked layers; layer k > 0 takes the D*H outputs of layer k-1.
        bias: a per-unit bias (added in the kernel, inside the ReLU). With
            ``norm_position="before"`` it is the only shift (the norms have a scale, no
            shift); with ``"after"`` each norm also gets a shift (``norms[k].bias``), see
            ``norm_position``. False: no bias and no norm shift.
        batch_first: input, output and mask are (B, T, ...) instead of (T, B, ...). h_n and hx
            stay (num_layers*D, B, H), as in ``torch.nn.RNN``.
        dropout: probability of dropping features of each layer's output before the next layer
            (not after the last), in training only, with ONE mask per sequence shared by all
            time steps (the papers' choice).
        bidirectional: D = 2: a second direction runs from T-1 down to 0; the output holds the
            forward direction's H features, then the backward direction's.
        recurrent_max_abs: r: every recurrent weight is clipped to [-r, r] inside the kernel
            (the papers use r = 2 ** (1 / T), or MAG ** (1 / T)); None for no clip.
            :meth:`constrain_` clamps the parameters themselves.
        recurrent_min_abs: m: |u| is raised to at least m inside the kernel (0 stays 0).
        norm: None, ``"batch"`` or ``"layer"``: normalise every layer, where ``norm_position``
            says. ``"batch"``: statistics per feature over the real steps of the batch only
            (never padding), running statistics (momentum ``norm_momentum``) in eval mode.
            ``"layer"``: over the D*H features of each step.
        residual: the Deep IndRNN paper's pre-activation residual network (the authors'
            ``ResidualNet``: ``fc0``, blocks of ``[norm, recurrence, dropout, fc] x 2`` plus an
            identity shortcut, then a last ``norm, recurrence``). In this layer-wise form the
            shortcut adds pre-activations two layers apart: for even k >= 2,
            ``pre_k = W_k x_k + pre_{k-2}`` (in the same GEMM, by ``addmm``), where
            ``pre_{k-2}`` is taken before its norm. num_layers must therefore be odd and >= 3
            (1 + 2 per residual block, e.g. 11 = 5 blocks); all pre-activations have D*H
            features, so any input_size works.
        device, dtype: factory arguments of the parameters.

    Keyword-only options:
        norm_position: where ``norm`` goes (default ``"before"``, this module's behaviour
            since its first release; the authors' own default is ``"after"``):

            - ``"before"``: on the pre-activations, ``h = relu(norm(W x) + b + u * h)``: the
              authors' language-model networks ("bn_before"). Scale only: the bias ``b``,
              added right after the norm, is the shift.
            - ``"after"``: on the layer's output, ``output = norm(relu(W x + b + u * h))``:
              the authors' default ("bn_after"), used by their sequential-MNIST,
              action-recognition and dense networks and every one of their run scripts but
              the language model's. ``b`` stays inside the ReLU (the authors' ``fc`` bias)
              and the norm gets its own shift ``norms[k].bias`` (the authors' affine batch
              norm): after a ReLU the features are no longer zero-centred, and a layer's
              output must be able to carry an offset. For layers 0..L-2 that shift is
              redundant with the next layer's bias (``W (n + s) + b = W n + (W s + b)``);
              for the last layer it is the output's offset, which a head without a bias
              (e.g. a tied language-model head) would otherwise lack. h_n and ``hx`` are the
              recurrence's states, never normalised; at padding positions the output is the
              normalised carried state.
        dropout_last: probability of dropping features of the LAST layer's output, in
            training, with one mask per sequence (the authors' ``droplast``; default 0).
            ``dropout`` covers the other layers' outputs.

    Keyword-only initialisation options (each overridable; defaults follow the authors' code):
        recurrent_init: (low, high) for the recurrent weights, uniform. Default (0, r) with
            r = recurrent_max_abs, or (0, 1) without a clip.
        last_layer_recurrent_init: (low, high) for the LAST layer's recurrent weights, or
            ``"near_one"`` for (1/r, r) (needs recurrent_max_abs >= 1): weights near 1 keep
            information over the whole sequence, which is what made T = 5000 adding-problem
            runs converge. Default: same as ``recurrent_init``.
        input_weight_init: ``"kaiming_uniform"`` (default: ``kaiming_uniform_(a=8,
            mode="fan_in")``, the authors' choice, a deliberately small range),
            ``"xavier_uniform"``, ``"rnn_uniform"`` (U(-1/sqrt(H), 1/sqrt(H)) as nn.RNN),
            ``"normal"`` (N(0, input_weight_std^2), the authors' adding-problem scripts), or a
            callable ``f(weight)`` for each ``weight_ih_l{k}``, after the default: it fills
            the weight in place, or returns a tensor of the weight's shape to copy in.
        input_weight_std: the standard deviation of ``"normal"`` (default 0.001, the
            authors').
        Biases (and norm shifts) start at 0, norm scales at 1.
        norm_momentum, norm_eps: of the batch / layer norm.

    Keyword-only execution options (no effect on the maths):
        method: ``"auto"`` (default), ``"sequential"`` or ``"chunked"``: which recurrence
            kernels run on a GPU (see :func:`indrnn_triton.fused_indrnn`).
        fused_projection: ``True`` runs each layer's projection inside the recurrence kernel
            (:func:`indrnn_triton.fused_indrnn_linear`: pre never goes to memory; needs
            ``norm=None`` and ``residual=False``), ``False`` the GEMM then the recurrence,
            ``None`` (default) lets :func:`indrnn_triton.functional.use_fused_projection`
            choose (today the unfused path, until measured on a GPU).

    Parameters (per layer k, both directions stacked, forward direction first):
        ``weight_ih_l{k}`` (D*H, I_k) with I_0 = input_size, I_k = D*H;
        ``weight_hh_l{k}`` (D*H,); ``bias_l{k}`` (D*H,) (None without ``bias``);
        ``norms[k].weight`` (D*H,), with ``norm_position="after"`` and ``bias``
        ``norms[k].bias`` (D*H,), and, for batch norm, ``norms[k].running_mean`` /
        ``running_var``.

    Inputs: ``x, hx=None, mask=None, *, output_layers=False``
        x: (T, B, input_size), (B, T, input_size) with ``batch_first``, or a PackedSequence
            (then the output is a PackedSequence too; pass no mask). One unbatched sequence
            (T, input_size) is taken too, as ``torch.nn.RNN`` does: hx is then
            (num_layers*D, H), mask (T,), and the outputs have no batch dimension.
        hx: (num_layers*D, B, H) initial states in any float dtype (index k*D + d for layer k,
            direction d), or None for zeros.
        mask: (T, B), or (B, T) with ``batch_first``; bool or integers, nonzero = real step.
            On padding the state is carried (as in the op), so left and right padding both
            work and h_n is the state after each sequence's last real step (first, for the
            backward direction). At padding positions the output repeats the carried state.
        output_layers: also return every layer's output (below).

    Outputs: ``output, h_n``, or ``output, h_n, layer_outputs`` with ``output_layers=True``
        output: (T, B, D*H) / (B, T, D*H) in the input's dtype (or the autocast dtype).
        h_n: (num_layers*D, B, H) float32 (float64 for float64 inputs).
        layer_outputs: a tuple of num_layers tensors, layer k's output in the layout of
            ``output`` (a PackedSequence for a packed input; the last one is ``output``). These
            are the tensors the stack computes anyway: asking for them keeps them alive, it
            computes nothing more.

    :meth:`forward_layer` runs one layer alone; ``forward`` chains them.

    Copies of (T, B, ·) tensors: none in the recurrence. Each layer allocates its GEMM output
    and its recurrence output (the one saved for backward); ``norm`` adds its own output (and
    a batch norm's statistics pass), ``dropout`` / ``dropout_last`` in training a masked
    copy, a PackedSequence
    input one pad copy of the input and one pack copy of the output.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        recurrent_max_abs: float | None = None,
        recurrent_min_abs: float = 0.0,
        norm: str | None = None,
        residual: bool = False,
        device=None,
        dtype=None,
        *,
        recurrent_init: InitRange | None = None,
        last_layer_recurrent_init: InitRange | str | None = None,
        input_weight_init: str | Callable[[Tensor], object] = "kaiming_uniform",
        input_weight_std: float = 0.001,
        norm_momentum: float = 0.1,
        norm_eps: float = 1e-5,
        norm_position: str = "before",
        dropout_last: float = 0.0,
        method: str = "auto",
        fused_projection: bool | None = None,
    ):
        super().__init__()
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.bias = _bool("bias", bias)
        self.batch_first = _bool("batch_first", batch_first)
        self.bidirectional = _bool("bidirectional", bidirectional)
        self.residual = _bool("residual", residual)
        self.dropout = _probability("dropout", dropout)
        self.dropout_last = _probability("dropout_last", dropout_last)
        if dropout > 0 and self.num_layers == 1:
            warnings.warn(
                f"dropout={dropout} has no effect with num_layers=1: it applies between layers",
                stacklevel=2,
            )
        self.recurrent_max_abs, self.recurrent_min_abs = check_clip(recurrent_max_abs,
                                                                      recurrent_min_abs)
        if norm not in _NORMS:
            raise ValueError(f"norm must be None, 'batch' or 'layer', got {norm!r}")
        self.norm = norm
        self.norm_position = check_norm_position(norm_position)
        self.method = check_method(method)
        if fused_projection is not None and not isinstance(fused_projection, bool):
            raise TypeError(f"fused_projection must be True, False or None, got "
                            f"{fused_projection!r}")
        if fused_projection and (norm is not None or residual):
            raise ValueError("fused_projection=True needs norm=None and residual=False: a norm "
                             "or a residual shortcut of the pre-activations needs them in memory")
        self.fused_projection = fused_projection
        if self.residual and (self.num_layers < 3 or self.num_layers % 2 == 0):
            raise ValueError(
                "residual=True needs an odd num_layers >= 3 (one input layer, then residual "
                f"blocks of 2 layers), got num_layers={self.num_layers}"
            )
        r = 1.0 if self.recurrent_max_abs is None else self.recurrent_max_abs
        self.recurrent_init = _init_range("recurrent_init", recurrent_init, (0.0, r))
        if last_layer_recurrent_init == "near_one":
            if self.recurrent_max_abs is None or self.recurrent_max_abs < 1.0:
                raise ValueError(
                    "last_layer_recurrent_init='near_one' draws from [1/r, r] with "
                    f"r = recurrent_max_abs, which must be >= 1, got {self.recurrent_max_abs}"
                )
            last_layer_recurrent_init = (1.0 / r, r)
        self.last_layer_recurrent_init = _init_range(
            "last_layer_recurrent_init", last_layer_recurrent_init, self.recurrent_init
        )
        self.input_weight_init = _input_init(input_weight_init)
        self.input_weight_std = _input_std(input_weight_std)
        norm_momentum = _check_real("norm_momentum", norm_momentum, allow_none=False)
        norm_eps = _check_real("norm_eps", norm_eps, allow_none=False)
        if not 0.0 <= norm_momentum <= 1.0 or norm_eps <= 0:
            raise ValueError(
                f"norm_momentum must be in [0, 1] and norm_eps > 0, got {norm_momentum}, "
                f"{norm_eps}"
            )

        factory = dict(device=device, dtype=dtype)
        D = self.num_directions
        # Layer k: I_k input features, H_k units per direction (all H in a plain stack).
        self.layer_sizes = self._layer_sizes()
        for k, (fan_in, units) in enumerate(self.layer_sizes):
            DH = D * units
            self.register_parameter(f"weight_ih_l{k}",
                                    nn.Parameter(torch.empty(DH, fan_in, **factory)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(DH, **factory)))
            self.register_parameter(
                f"bias_l{k}", nn.Parameter(torch.empty(DH, **factory)) if self.bias else None
            )
        self.norms = None
        if norm is not None:
            self.norms = nn.ModuleList(
                _NORM_CLASSES[norm](D * units, norm_momentum, norm_eps,
                                    self.bias and self.norm_position == "after", device, dtype)
                for _, units in self.layer_sizes
            )
        self.reset_parameters()

    def _layer_sizes(self) -> list[tuple[int, int]]:
        """(I_k, H_k) of every layer: input features and units per direction."""
        DH = self.num_directions * self.hidden_size
        return [(self.input_size if k == 0 else DH, self.hidden_size)
                for k in range(self.num_layers)]

    @property
    def output_size(self) -> int:
        """Features of the output: D * H of the last layer."""
        return self.num_directions * self.layer_sizes[-1][1]

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self, init=nn.init) -> None:
        """(Re)initialise every parameter and norm statistic as described in the class docstring.

        ``init``: where the in-place init functions come from (``uniform_``, ``zeros_``,
        ``ones_``, ``kaiming_uniform_``, ``xavier_uniform_`` with ``torch.nn.init``'s
        signatures). The Hugging Face models pass ``transformers.initialization``, whose
        functions leave alone the tensors a checkpoint has loaded.
        """
        with torch.no_grad():
            for k, (_, units) in enumerate(self.layer_sizes):
                _init_input_weight_(getattr(self, f"weight_ih_l{k}"), self.input_weight_init,
                                    units, init, self.input_weight_std)
                last = k == self.num_layers - 1
                weight_hh = getattr(self, f"weight_hh_l{k}")
                low, high = _in_range(self.last_layer_recurrent_init if last
                                      else self.recurrent_init, weight_hh.dtype)
                init.uniform_(weight_hh, low, high)
                if self.bias:
                    init.zeros_(getattr(self, f"bias_l{k}"))
            for norm in self.norms or ():
                norm.reset_parameters(init)

    @torch.no_grad()
    def constrain_(self) -> IndRNN:
        """Clamp every recurrent weight in place to the configured clip range; returns self.

        The authors' style: call it after each optimizer step to keep the parameters
        themselves bounded (the kernel clips the weights it uses either way).
        """
        for k in range(self.num_layers):
            _constrain_(getattr(self, f"weight_hh_l{k}"), self.recurrent_max_abs,
                        self.recurrent_min_abs)
        return self

    def _check_inputs(self, x: Tensor, hx: Tensor | None, mask: Tensor | None) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor or a PackedSequence, got {type(x).__name__}")
        layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"x must have shape {layout}, or (T, input_size) for one unbatched sequence, "
                f"with input_size = {self.input_size}, got {tuple(x.shape)}"
            )
        _check_input_dtype("x", x, self.weight_ih_l0)
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
        if hx is not None:
            self._check_hx(hx, B, x.device)
        self._check_mask(mask, x)

    def _check_mask(self, mask: Tensor | None, x: Tensor) -> None:
        """mask: None, or bool/integer (T, B) ((B, T) with batch_first) on x's device."""
        if mask is None:
            return
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
        want, name = ((B, T), "(B, T)") if self.batch_first else ((T, B), "(T, B)")
        if tuple(mask.shape) != want:
            raise ValueError(f"mask must have shape {name} = {want}, got {tuple(mask.shape)}")
        if mask.dtype.is_floating_point or mask.dtype.is_complex:
            raise TypeError(f"mask must be bool or an integer dtype, got {mask.dtype}")
        if mask.device != x.device:
            raise ValueError(f"mask is on {mask.device} but the input is on {x.device}")

    def flatten_parameters(self) -> None:
        """Nothing to do, kept for code written for ``torch.nn.RNN`` (which packs its weights
        into one buffer for cuDNN): each weight is its own contiguous tensor already."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Each layer's parameters, ``[weight_ih_l{k}, weight_hh_l{k}, bias_l{k}]`` (no bias
        without ``bias``); both directions are in each tensor, unlike ``torch.nn.RNN``'s
        list per layer and direction."""
        return [[getattr(self, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias")
                 if getattr(self, f"{name}_l{k}", None) is not None]
                for k in range(self.num_layers)]

    def _check_hx(self, hx, B: int, device) -> None:
        want = (self.num_layers * self.num_directions, B, self.hidden_size)
        _check_state("hx", hx, want, "(num_layers*D, B, H)", device)

    def _layer_state(self, hx, k: int):
        """Layer k's (D, B, H_k) part of ``hx``."""
        D = self.num_directions
        return hx[k * D:(k + 1) * D]

    def _final_state(self, h_ns: list[Tensor]):
        """h_n from the layers' (D, B, H_k) states."""
        return torch.cat(h_ns) if len(h_ns) > 1 else h_ns[0]

    def _padded_from_packed(self, x: PackedSequence) -> tuple[Tensor, Tensor, Tensor]:
        padded, lengths = pad_packed_sequence(x, batch_first=self.batch_first)
        lengths = lengths.to(padded.device)
        steps = torch.arange(padded.shape[1 if self.batch_first else 0], device=padded.device)
        mask = steps[None, :] < lengths[:, None]  # (B, T)
        return padded, lengths, mask if self.batch_first else mask.t()

    def _packed_from_padded(self, out: Tensor, lengths: Tensor, x: PackedSequence):
        # Put the batch in the input's sorted order, so the packed data lines up with the input's
        # batch_sizes and the input's sorted / unsorted indices apply to the output unchanged.
        if x.sorted_indices is not None:
            out = out.index_select(0 if self.batch_first else 1, x.sorted_indices)
            lengths = lengths.index_select(0, x.sorted_indices)
        data = pack_padded_sequence(out, lengths.cpu(), batch_first=self.batch_first).data
        return PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices)

    def forward(
        self,
        x: Tensor | PackedSequence,
        hx: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        output_layers: bool = False,
    ) -> tuple:
        _bool("output_layers", output_layers)
        if isinstance(x, Tensor) and x.dim() == 2:
            # One unbatched sequence (T, input_size), as torch.nn.RNN takes it whatever
            # batch_first says; hx is then (num_layers*D, H) and mask (T,).
            if x.shape[1] != self.input_size:
                raise ValueError(f"x must have shape (T, input_size) with input_size = "
                                 f"{self.input_size} for one unbatched sequence, got "
                                 f"{tuple(x.shape)}")
            want = (self.num_layers * self.num_directions, self.hidden_size)
            if hx is not None and (not isinstance(hx, Tensor) or tuple(hx.shape) != want):
                raise ValueError(f"hx must have shape (num_layers*D, H) = {want} for an "
                                 f"unbatched (T, input_size) x, got {_shape_of(hx)}")
            if mask is not None and (not isinstance(mask, Tensor) or tuple(mask.shape) != (
                    x.shape[0],)):
                raise ValueError(f"mask must have shape (T,) = ({x.shape[0]},) for an unbatched "
                                 f"(T, input_size) x, got {_shape_of(mask)}")
            b = 0 if self.batch_first else 1
            out, h_n, layers = self._forward(x.unsqueeze(b),
                                             None if hx is None else hx.unsqueeze(1),
                                             None if mask is None else mask.unsqueeze(b),
                                             output_layers)
            out, h_n, layers = out.squeeze(b), h_n.squeeze(1), tuple(y.squeeze(b) for y in layers)
        else:
            out, h_n, layers = self._forward(x, hx, mask, output_layers)
        return (out, h_n, layers) if output_layers else (out, h_n)

    def _forward(
        self, x: Tensor | PackedSequence, hx: Tensor | None, mask: Tensor | None,
        output_layers: bool,
    ) -> tuple[Tensor | PackedSequence, Tensor, tuple]:
        packed = x if isinstance(x, PackedSequence) else None
        if packed is not None:
            if mask is not None:
                raise ValueError("mask must be None for a PackedSequence input (its lengths "
                                 "give the padding)")
            if packed.data.dim() != 2 or packed.data.shape[-1] != self.input_size:
                raise ValueError(f"x, a PackedSequence, must hold (steps, input_size) data with "
                                 f"input_size = {self.input_size}, got data of shape "
                                 f"{tuple(packed.data.shape)}")
            x, lengths, mask = self._padded_from_packed(packed)
        self._check_inputs(x, hx, mask)
        h_ns, layers = [], []
        layer_in, shortcut = x, None
        for k in range(self.num_layers):
            layer_in, h_n, shortcut = self._layer(
                k, layer_in, None if hx is None else self._layer_state(hx, k), mask, shortcut
            )
            h_ns.append(h_n)
            if output_layers:
                layers.append(layer_in)
        h_n = self._final_state(h_ns)
        if packed is not None:
            layers = [self._packed_from_padded(y, lengths, packed) for y in layers]
            return self._packed_from_padded(layer_in, lengths, packed), h_n, tuple(layers)
        return layer_in, h_n, tuple(layers)

    def forward_layer(
        self,
        k: int,
        x: Tensor,
        h0: Tensor | None = None,
        mask: Tensor | None = None,
        shortcut: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Layer ``k`` alone: dropout of its input (k > 0, in training), the GEMM (plus the
        residual shortcut), the recurrence with the norm before or after it, and for the last
        layer ``dropout_last`` of its output (in training). Chaining the layers from 0 to
        num_layers - 1 is :meth:`forward` on a padded tensor; running them one at a time lets
        a caller wrap each one, e.g. in activation checkpointing (the Hugging Face models do).

        Args:
            k: the layer, 0 <= k < num_layers.
            x: its input, (T, B, I_k), or (B, T, I_k) with ``batch_first``: the stack's input
                for k = 0 (I_0 = input_size), else layer k-1's output (I_k = D*H).
            h0: (D, B, H) initial states of this layer, or None for zeros.
            mask: as in :meth:`forward`, for a padded tensor.
            shortcut: with ``residual``, the ``shortcut`` layer k-1 returned (None for k = 0).

        Returns:
            ``(output, h_n, shortcut)``: output as x with D*H features; h_n (D, B, H) float32;
            shortcut: the pre-activations to hand to layer k+1 (None without ``residual``).
        """
        self._check_layer_input(k, x, mask)
        return self._layer(k, x, h0, mask, shortcut)

    def _layer(self, k: int, x: Tensor, h0, mask, shortcut) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`forward_layer` on checked arguments (:meth:`forward` checks the stack's
        input once, and each layer's input is the layer before's output)."""
        adds_shortcut = self.residual and k >= 2 and k % 2 == 0
        if adds_shortcut and shortcut is None:
            raise ValueError(f"shortcut must be the one layer {k - 1} returned: layer {k} of a "
                             "residual IndRNN adds it, got None")
        if k > 0:
            x = dropout_over_time(x, self.dropout, self.training, self.batch_first)
        weight_ih = getattr(self, f"weight_ih_l{k}")
        if not adds_shortcut and use_fused_projection(
            self.fused_projection, x.device, x.dtype,
            has_norm=self.norms is not None or self.residual,
        ):
            # The projection inside the recurrence kernel: pre never goes to memory (the op
            # keeps padding values out of the weight gradient itself).
            out, h_n = indrnn_layer(
                x, weight_ih, getattr(self, f"weight_hh_l{k}"), getattr(self, f"bias_l{k}"), h0,
                recurrent_max_abs=self.recurrent_max_abs,
                recurrent_min_abs=self.recurrent_min_abs, mask=mask,
                batch_first=self.batch_first, bidirectional=self.bidirectional,
                fused_projection=True,
            )
        else:
            if k == 0:
                # Later layers read outputs, which are finite at padding (the carried state).
                x = padding_free_input(x, mask)
            if adds_shortcut:
                # The shortcut is added by the GEMM itself: pre = pre_{k-2} + x W^T.
                pre = torch.addmm(shortcut.flatten(0, 1), x.flatten(0, 1),
                                  weight_ih.t()).view(shortcut.shape)
            else:
                pre = F.linear(x, weight_ih)
            if self.residual and k % 2 == 0:
                shortcut = pre
            out, h_n = self._recurrence(k, pre, h0, mask)
        if k == self.num_layers - 1:
            out = dropout_over_time(out, self.dropout_last, self.training, self.batch_first)
        return out, h_n, shortcut

    def _check_layer_input(self, k, x, mask) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_layers:
            raise ValueError(f"k must be a layer index in [0, {self.num_layers}), got {k!r}")
        want = self.layer_sizes[k][0]
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != want:
            layout = "(B, T, I_k)" if self.batch_first else "(T, B, I_k)"
            raise ValueError(f"x must have shape {layout} with I_{k} = {want} for layer {k}, "
                             f"got {_shape_of(x)}")
        _check_input_dtype("x", x, getattr(self, f"weight_ih_l{k}"))
        self._check_mask(mask, x)

    def _recurrence(self, k: int, pre: Tensor, h0, mask) -> tuple[Tensor, Tensor]:
        """Layer k from its pre-activations: the norm where ``norm_position`` puts it, around
        the fused recurrence."""
        norm = None if self.norms is None else self.norms[k]
        if norm is not None and self.norm_position == "before":
            pre = norm(pre, mask)
        out, h_n = indrnn_recurrence(
            pre, getattr(self, f"weight_hh_l{k}"), getattr(self, f"bias_l{k}"), h0,
            recurrent_max_abs=self.recurrent_max_abs, recurrent_min_abs=self.recurrent_min_abs,
            mask=mask, batch_first=self.batch_first, bidirectional=self.bidirectional,
            method=self.method,
        )
        if norm is not None and self.norm_position == "after":
            out = norm(out, mask)
        return out, h_n

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False),
                              ("recurrent_max_abs", None), ("recurrent_min_abs", 0.0),
                              ("norm", None), ("residual", False), ("norm_position", "before"),
                              ("dropout_last", 0.0), ("method", "auto"),
                              ("fused_projection", None)):
            value = getattr(self, name)
            if value != default:
                s += f", {name}={value!r}"
        return s


def dense_layer_plan(hidden_size: int, growth_rate: int, block_config, bottleneck: int
                     ) -> list[tuple[str, int]]:
    """The layers of a :class:`DenseIndRNN` in order, as ``(kind, units per direction)``:
    ``"first"``, then per dense layer an optional ``"bottleneck"`` and a ``"growth"`` layer,
    and a ``"transition"`` halving the features after every block (the last one included)."""
    plan, features = [("first", hidden_size)], hidden_size
    for layers in block_config:
        for _ in range(layers):
            if bottleneck:
                plan.append(("bottleneck", bottleneck * growth_rate))
            plan.append(("growth", growth_rate))
            features += growth_rate
        features //= 2
        plan.append(("transition", features))
    return plan


DENSE_LAYER_KINDS = ("first", "bottleneck", "growth", "transition")


def _dropout_by_kind(value) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError("dropout_by_kind must be a mapping from layer kind to a probability, "
                        f"got {type(value).__name__}")
    unknown = [k for k in value if k not in DENSE_LAYER_KINDS]
    if unknown:
        raise ValueError(f"dropout_by_kind keys must be among {', '.join(DENSE_LAYER_KINDS)}, "
                         f"got {unknown[0]!r}")
    return {k: _probability(f"dropout_by_kind[{k!r}]", v) for k, v in value.items()}


class DenseIndRNN(IndRNN):
    r"""The Deep IndRNN paper's dense IndRNN (the authors' ``DenseNet``), on the same layers as
    :class:`IndRNN` (one GEMM, the norm before or after, the fused recurrence per layer).

    The stack, with F the features carried (per direction)::

        first layer      input_size -> hidden_size                        F = hidden_size
        for each block (block_config[i] dense layers):
            dense layer  [bottleneck F -> bottleneck*growth_rate,] -> growth_rate,
                         output: concat(its input, the growth_rate new)   F += growth_rate
            transition   F -> F // 2                                      F = F // 2

    Each dense layer therefore reads the concatenation of the block's input and every earlier
    dense layer's new features. A transition follows every block, the last one included (the
    authors' ``--add_last_layer``, in every one of their run scripts): the output has
    D * F features (:attr:`output_size`). The authors' sequential-MNIST network is
    ``DenseIndRNN(1, 96, growth_rate=16, block_config=(8, 6, 4), bottleneck=4,
    norm="batch", norm_position="after")``.

    Layers are numbered in that order (``layer_kinds[k]`` says which is which); parameters,
    norms and options are those of :class:`IndRNN` (layer k has ``D * H_k`` units,
    ``layer_sizes[k] = (I_k, H_k)``), without ``num_layers`` and ``residual``. ``dropout``
    drops each layer's new output (one mask per sequence) before it is concatenated or read,
    for every layer but the last, which ``dropout_last`` covers. ``dropout_by_kind`` gives
    some kinds of layer their own rate (keys ``"first"``, ``"bottleneck"``, ``"growth"``,
    ``"transition"``; a kind not named uses ``dropout``); the authors' MNIST network drops 0.2
    after the first and growth layers and 0.1 after the others::

        DenseIndRNN(..., dropout=0.1, dropout_last=0.1,
                    dropout_by_kind={"first": 0.2, "growth": 0.2})

    ``bottleneck=0``: each dense layer is one IndRNN layer, F -> growth_rate.

    Input and output as :class:`IndRNN` (batched only), except the states: ``hx`` is None or a
    sequence of num_layers tensors (D, B, H_k), and h_n is such a tuple. In
    :meth:`forward_layer` the ``shortcut`` slot carries a dense layer's input from its
    bottleneck layer to its growth layer, which concatenates it with its own output.

    Copies: each dense layer concatenates (T, B, D*F) features (``torch.cat``, as the authors).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        growth_rate: int,
        block_config=(8, 6, 4),
        bottleneck: int = 4,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        recurrent_max_abs: float | None = None,
        recurrent_min_abs: float = 0.0,
        norm: str | None = None,
        device=None,
        dtype=None,
        *,
        dropout_by_kind: Mapping[str, float] | None = None,
        **options,
    ):
        self.dropout_by_kind = _dropout_by_kind(dropout_by_kind)
        self.growth_rate = _positive_int("growth_rate", growth_rate)
        if (not isinstance(block_config, (tuple, list)) or not block_config
                or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1
                       for n in block_config)):
            raise ValueError(f"block_config must be a non-empty sequence of positive ints (dense "
                             f"layers per block), got {block_config!r}")
        self.block_config = tuple(int(n) for n in block_config)
        if isinstance(bottleneck, bool) or not isinstance(bottleneck, numbers.Integral) \
                or bottleneck < 0:
            raise ValueError(f"bottleneck must be an int >= 0 (0: none), got {bottleneck!r}")
        self.bottleneck = int(bottleneck)
        plan = dense_layer_plan(_positive_int("hidden_size", hidden_size), self.growth_rate,
                                self.block_config, self.bottleneck)
        self.layer_kinds = tuple(kind for kind, _ in plan)
        self._plan = plan
        if options.get("fused_projection"):
            raise ValueError("fused_projection=True is not available for DenseIndRNN (its "
                             "layers run the GEMM, then the recurrence)")
        super().__init__(input_size, hidden_size, len(plan), bias, batch_first, dropout,
                         bidirectional, recurrent_max_abs, recurrent_min_abs, norm, False,
                         device, dtype, **options)

    def _layer_sizes(self) -> list[tuple[int, int]]:
        D, sizes = self.num_directions, []
        carried, previous = None, None  # F of the stream, units of the previous layer
        for kind, units in self._plan:
            if kind == "first":
                fan_in = self.input_size
            elif kind == "growth" and self.bottleneck:
                fan_in = D * previous
            else:
                fan_in = D * carried
            sizes.append((fan_in, units))
            carried = {"growth": (carried or 0) + units, "bottleneck": carried}.get(kind, units)
            previous = units
        return sizes

    def _check_hx(self, hx, B: int, device) -> None:
        if not isinstance(hx, (tuple, list)) or len(hx) != self.num_layers:
            got = f"{len(hx)} tensors" if isinstance(hx, (tuple, list)) else _shape_of(hx)
            raise ValueError(f"hx must be None or a sequence of num_layers = {self.num_layers} "
                             f"tensors (D, B, H_k), got {got}")
        for k, (h, (_, units)) in enumerate(zip(hx, self.layer_sizes, strict=True)):
            _check_state(f"hx[{k}]", h, (self.num_directions, B, units), "(D, B, H_k)", device)

    def _layer_state(self, hx, k: int):
        return hx[k]

    def _final_state(self, h_ns: list[Tensor]) -> tuple[Tensor, ...]:
        return tuple(h_ns)

    def forward(self, x, hx=None, mask=None, *, output_layers: bool = False) -> tuple:
        if isinstance(x, Tensor) and x.dim() == 2:
            raise ValueError("x must be batched, (T, B, input_size) or (B, T, input_size): "
                             f"DenseIndRNN takes no unbatched sequence, got {tuple(x.shape)}")
        return super().forward(x, hx, mask, output_layers=output_layers)

    def _layer(self, k: int, x: Tensor, h0, mask, shortcut) -> tuple[Tensor, Tensor, Tensor | None]:
        """Layer ``k`` alone (:meth:`IndRNN.forward_layer` checks the arguments, then calls
        this): the GEMM, the recurrence with its norm, dropout of its output, then what its kind
        hands on: a growth layer returns the concatenation of its dense layer's input and its
        output; a bottleneck layer returns its output and, as ``shortcut``, its input, which the
        growth layer after it must be given."""
        kind = self.layer_kinds[k]
        if kind == "growth" and self.bottleneck and shortcut is None:
            raise ValueError(f"shortcut must be the one layer {k - 1} returned: layer {k} of a "
                             "DenseIndRNN concatenates its dense layer's input, got None")
        # Later layers read outputs, which are finite at padding (the carried state).
        x_in = padding_free_input(x, mask) if k == 0 else x
        out, h_n = self._recurrence(k, F.linear(x_in, getattr(self, f"weight_ih_l{k}")), h0,
                                    mask)
        out = dropout_over_time(out, self.layer_dropout(k), self.training, self.batch_first)
        if kind == "bottleneck":
            return out, h_n, x
        if kind == "growth":
            return torch.cat([shortcut if self.bottleneck else x, out], -1), h_n, None
        return out, h_n, None

    def layer_dropout(self, k: int) -> float:
        """The dropout rate of layer ``k``'s output in training."""
        if k == self.num_layers - 1:
            return self.dropout_last
        return self.dropout_by_kind.get(self.layer_kinds[k], self.dropout)

    def extra_repr(self) -> str:
        s = super().extra_repr().replace(f", num_layers={self.num_layers}", "")
        s += (f", growth_rate={self.growth_rate}, block_config={self.block_config}, "
              f"bottleneck={self.bottleneck}")
        return s + (f", dropout_by_kind={self.dropout_by_kind}" if self.dropout_by_kind else "")


class IndRNNCell(nn.Module):
    """One IndRNN step, ``h = relu(W x_t + b + clip(u) ⊙ h)``: one direction of one layer.

    Same maths, options and initialisation as a unidirectional single-layer :class:`IndRNN`
    (``recurrent_init`` default (0, r), ``input_weight_init`` default the authors'
    ``kaiming_uniform_(a=8)``). Parameters: ``weight_ih`` (H, I), ``weight_hh`` (H,), ``bias``
    (H,). For whole sequences use :class:`IndRNN`: it runs all steps in one kernel.

    ``h = cell(x_t, h)``: x_t (B, input_size); h (B, H) in any float dtype, or None for zeros.
    Unbatched as in ``torch.nn.RNNCell``: x_t (input_size,), h (H,), returns (H,).
    Returns the new state (B, H) in float32 (float64 for float64 inputs): the state is kept in
    float32 between steps, as inside the fused kernel.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        recurrent_max_abs: float | None = None,
        recurrent_min_abs: float = 0.0,
        device=None,
        dtype=None,
        *,
        recurrent_init: InitRange | None = None,
        input_weight_init: str | Callable[[Tensor], object] = "kaiming_uniform",
        input_weight_std: float = 0.001,
    ):
        super().__init__()
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.recurrent_max_abs, self.recurrent_min_abs = check_clip(recurrent_max_abs,
                                                                      recurrent_min_abs)
        r = 1.0 if self.recurrent_max_abs is None else self.recurrent_max_abs
        self.recurrent_init = _init_range("recurrent_init", recurrent_init, (0.0, r))
        self.input_weight_init = _input_init(input_weight_init)
        self.input_weight_std = _input_std(input_weight_std)
        factory = dict(device=device, dtype=dtype)
        self.weight_ih = nn.Parameter(torch.empty(self.hidden_size, self.input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(self.hidden_size, **factory))
        self.bias = (nn.Parameter(torch.empty(self.hidden_size, **factory))
                     if _bool("bias", bias) else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            _init_input_weight_(self.weight_ih, self.input_weight_init, self.hidden_size,
                                std=self.input_weight_std)
            nn.init.uniform_(self.weight_hh, *_in_range(self.recurrent_init, self.weight_hh.dtype))
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    @torch.no_grad()
    def constrain_(self) -> IndRNNCell:
        """Clamp the recurrent weights in place to the configured clip range; returns self."""
        _constrain_(self.weight_hh, self.recurrent_max_abs, self.recurrent_min_abs)
        return self

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 1 and x.shape[0] == self.input_size:
            # Unbatched, as torch.nn.RNNCell: x (input_size,), h (H,), returns (H,).
            if h is not None and (not isinstance(h, Tensor) or h.dim() != 1):
                raise ValueError(f"h must have shape (H,) for an unbatched (input_size,) x, "
                                 f"got {_shape_of(h)}")
            return self(x.unsqueeze(0), None if h is None else h.unsqueeze(0)).squeeze(0)
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"x must have shape (B, input_size), or (input_size,) unbatched, with "
                f"input_size = {self.input_size}, got {tuple(x.shape)}"
            )
        _check_input_dtype("x", x, self.weight_ih)
        if h is not None:
            _check_state("h", h, (x.shape[0], self.hidden_size), "(B, H)", x.device)
        pre = F.linear(x, self.weight_ih).unsqueeze(0)
        _, h_n = fused_indrnn(pre, self.weight_hh, self.bias, h,
                              recurrent_max_abs=self.recurrent_max_abs,
                              recurrent_min_abs=self.recurrent_min_abs)
        return h_n

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is None:
            s += ", bias=False"
        if self.recurrent_max_abs is not None:
            s += f", recurrent_max_abs={self.recurrent_max_abs!r}"
        if self.recurrent_min_abs:
            s += f", recurrent_min_abs={self.recurrent_min_abs!r}"
        return s


def _shape_of(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _bound_inside(value: float, dtype: torch.dtype, *, upper: bool) -> float:
    """``value`` rounded to ``dtype`` on the inside of the clip range: the largest ``dtype``
    number not above it for the upper bound, the smallest not below it for the lower one."""
    exact = torch.tensor(value, dtype=torch.float64)
    rounded = exact.clamp(max=torch.finfo(dtype).max).to(dtype)  # 16-bit: no overflow error
    if (rounded.double() > exact) if upper else (rounded.double() < exact):
        rounded = torch.nextafter(rounded, torch.full_like(rounded, 0.0 if upper else math.inf))
    return rounded.item()


def _constrain_(weight_hh: Tensor, r_max: float | None, r_min: float) -> None:
    """Clamp in place to the clip range with bounds rounded inwards to the weight's dtype: a
    16-bit clamp to r itself can round r up (bfloat16 0.8 -> 0.80078125), leaving a weight the
    kernels (which clip in float32) see beyond the bound, with zero gradient for good."""
    dtype = weight_hh.dtype
    r_max = None if r_max is None else _bound_inside(r_max, dtype, upper=True)
    r_min = _bound_inside(r_min, dtype, upper=False) if r_min > 0 else r_min
    weight_hh.copy_(clip_recurrent_weight(weight_hh, r_max, r_min))
