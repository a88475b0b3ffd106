"""IndRNN model configuration."""

from __future__ import annotations

import json
import math
import numbers
import os

import numpy as np
from transformers import PreTrainedConfig

_NORMS = (None, "batch", "layer")
_NORM_POSITIONS = ("before", "after")
_METHODS = ("auto", "sequential", "chunked")  # indrnn_triton.op.METHODS
_POOLINGS = ("last", "mean")
_INPUT_WEIGHT_INITS = ("kaiming_uniform", "xavier_uniform", "rnn_uniform", "normal")


# Read-only properties of the config and the fields they come from.
_DERIVED = {
    "head_dropout": "dropout and dropout_last",
    "rnn_output_units": "hidden_size and the dense_* fields",
    "layer_types": "num_hidden_layers",
}


_DEFAULT_LAYERS = 2  # num_hidden_layers when not given


class IndRNNConfig(PreTrainedConfig):
    r"""
    Configuration of the IndRNN models (`IndRNNModel` and its heads): a stack of IndRNN layers
    (Li et al., 2018: h_t = relu(W x_t + b + u * h_{t-1}), one recurrent weight per unit) over
    token embeddings or continuous input features.

    Args:
        vocab_size (`int`, defaults to 256):
            Number of token ids (token inputs). Ignored when `input_size` is set.
        input_size (`int`, *optional*):
            Number of continuous input features per step, e.g. 2 for the adding problem. When set,
            the model has no embedding table and reads `inputs_embeds` of shape
            (batch, time, input_size).
        embedding_size (`int`, *optional*):
            Size of the token embeddings; defaults to `hidden_size`.
        hidden_size (`int`, defaults to 128):
            Units per IndRNN layer and direction.
        num_hidden_layers (`int`, defaults to 2):
            Number of stacked IndRNN layers.
        bidirectional (`bool`, defaults to `False`):
            Run every layer in both directions (not for the causal LM).
        dropout (`float`, defaults to 0.0):
            Dropout between IndRNN layers (one mask per sequence), and before the heads unless
            `dropout_last` is set.
        dropout_last (`float`, *optional*):
            Dropout of the last IndRNN layer's output, one mask per sequence shared by all
            steps (the authors' `droplast`), inside the base model (`last_hidden_state` and the
            last hidden state include it); the heads then add no dropout of their own. `None`:
            the heads drop their input with `dropout` (the models' behaviour before this
            option).
        recurrent_max_abs (`float`, *optional*):
            Clip |u| to this bound inside the kernel; the papers use 2 ** (1 / T).
        recurrent_min_abs (`float`, defaults to 0.0):
            Raise |u| to at least this value.
        norm (`str`, *optional*):
            Normalisation of every layer: `None`, `"batch"` or `"layer"`, placed by
            `norm_position`.
        norm_position (`str`, defaults to `"before"`):
            `"before"`: of the pre-activations W x, before the recurrence (the authors'
            language model); `"after"`: of each layer's output, after the recurrence, with a
            shift of its own (the authors' sequential-MNIST and action-recognition networks).
            The default keeps the meaning of configs saved before this option existed.
        method (`str`, defaults to `"auto"`):
            Which recurrence kernels run on a GPU: `"auto"`, `"sequential"` or `"chunked"`
            (the time-parallel scan for small batches of long sequences); no effect on results.
        fused_projection (`bool`, *optional*):
            `True` computes each layer's input projection inside the recurrence kernel (needs
            `norm=None` and `residual=False`), `False` never, `None` lets the library choose.
        residual (`bool`, defaults to `False`):
            The Deep IndRNN paper's residual network; needs an odd `num_hidden_layers` >= 3
            (an input layer, then blocks of two layers).
        dense_growth_rate (`int`, *optional*):
            Build the Deep IndRNN paper's dense network (`indrnn_triton.DenseIndRNN`) with this
            growth rate: a first layer of `hidden_size` units, dense blocks of
            `dense_block_config` dense layers, a transition halving the features after each
            block. `num_hidden_layers` is then derived (every IndRNN layer counts, bottleneck
            and transition layers included) and the output has the last transition's units.
        dense_block_config (`list[int]`, defaults to `[8, 6, 4]`):
            Dense layers per block (with `dense_growth_rate`).
        dense_bottleneck (`int`, defaults to 4):
            Each dense layer starts with a bottleneck IndRNN layer of `dense_bottleneck *
            dense_growth_rate` units (0: none).
        dense_dropout_by_kind (`dict[str, float]`, *optional*):
            Dropout rates of some kinds of dense-network layer (`"first"`, `"bottleneck"`,
            `"growth"`, `"transition"`); the others use `dropout`, the last layer
            `dropout_last`. The authors' MNIST network: `{"first": 0.2, "growth": 0.2}` with
            `dropout=0.1`, `dropout_last=0.1`.
        classifier_pooling (`str`, defaults to `"last"`):
            How `IndRNNForSequenceClassification` pools a sequence: `"last"` takes the output at
            each sequence's last real step (and, for bidirectional models, the backward direction
            at the first real step); `"mean"` averages the outputs over the real steps.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of the head weights.
        embedding_init_std (`float`, defaults to 1.0):
            Standard deviation of the normal initialisation of the token embeddings (torch's
            default; the IndRNN input weights start deliberately small).
        recurrent_init (`list[float]`, *optional*):
            (low, high) of the uniform initialisation of the recurrent weights; default
            (0, recurrent_max_abs), or (0, 1) without a clip.
        last_layer_recurrent_init (`list[float]` or `str`, *optional*):
            (low, high) for the last layer's recurrent weights, or `"near_one"` for
            (1 / recurrent_max_abs, recurrent_max_abs), which helps very long sequences.
        input_weight_init (`str`, defaults to `"kaiming_uniform"`):
            Initialisation of the IndRNN input weights: `"kaiming_uniform"` (the authors'
            PyTorch code), `"xavier_uniform"`, `"rnn_uniform"` or `"normal"` (N(0,
            `input_weight_std`^2), the authors' adding-problem scripts).
        input_weight_std (`float`, defaults to 0.001):
            The standard deviation of `input_weight_init="normal"` (the authors' 0.001).
        use_cache (`bool`, defaults to `True`):
            Return the recurrent states for fast generation.
        tie_word_embeddings (`bool`, defaults to `False`):
            Share the causal LM's output weights with the token embeddings (needs
            `embedding_size == hidden_size`).

    Example:

    ```python
    >>> import hf_integration
    >>> from transformers import AutoConfig, AutoModelForSequenceClassification
    >>> config = AutoConfig.for_model("indrnn", input_size=2, hidden_size=16, num_labels=1)
    >>> model = AutoModelForSequenceClassification.from_config(config)
    ```
    """

    model_type = "indrnn"

    vocab_size: int = 256
    input_size: int | None = None
    embedding_size: int | None = None
    hidden_size: int = 128
    num_hidden_layers: int | None = None  # _DEFAULT_LAYERS, or derived, when not given
    bidirectional: bool = False
    dropout: float = 0.0
    dropout_last: float | None = None
    recurrent_max_abs: float | None = None
    recurrent_min_abs: float = 0.0
    norm: str | None = None
    norm_position: str = "before"
    method: str = "auto"
    fused_projection: bool | None = None
    residual: bool = False
    dense_growth_rate: int | None = None
    dense_block_config: list[int] | None = None
    dense_bottleneck: int = 4
    dense_dropout_by_kind: dict[str, float] | None = None
    classifier_pooling: str = "last"
    initializer_range: float = 0.02
    embedding_init_std: float = 1.0
    recurrent_init: list[float] | None = None
    last_layer_recurrent_init: list[float] | str | None = None
    input_weight_init: str = "kaiming_uniform"
    input_weight_std: float = 0.001
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_cache: bool = True
    tie_word_embeddings: bool = False

    def __setattr__(self, key, value):
        # Every assignment (the constructor's included) stores plain Python values, so that a
        # config built from numpy numbers (np.int64(8), np.float32(1.1)) serialises to JSON.
        if key in _DERIVED:  # a property (python's own message: "... has no setter")
            if value != getattr(self, key):
                raise ValueError(
                    f"{key} is derived from {_DERIVED[key]} and cannot be set; set those")
            return
        super().__setattr__(key, _to_python(value))

    def __post_init__(self, **kwargs):
        # A dense network derives its layer count: a count given must be the derived one (a
        # saved config.json holds the derived count).
        asked = self.num_hidden_layers
        if asked is None:
            self.num_hidden_layers = _DEFAULT_LAYERS
        super().__post_init__(**kwargs)
        self._validate_indrnn()
        self._check_dense_layer_count(asked)

    def _check_dense_layer_count(self, asked) -> None:
        if self.dense_growth_rate is not None and asked is not None and (
                asked != self.num_hidden_layers):
            raise ValueError(
                f"num_hidden_layers={asked!r} was given, but a dense network "
                f"(dense_growth_rate={self.dense_growth_rate}) derives it from "
                f"dense_block_config={self.dense_block_config} and dense_bottleneck="
                f"{self.dense_bottleneck}: {self.num_hidden_layers} layers. Leave "
                "num_hidden_layers out, or change dense_block_config")

    def validate(self) -> None:
        """Check every field again and derive the dependent ones (`embedding_size` when None,
        `num_hidden_layers` of a dense network), then run transformers' own checks.

        The constructor checks its arguments, but fields can change afterwards: transformers'
        `from_pretrained(path, field=value)` sets its overrides with setattr once the config
        is built, and a user may assign a field. `from_dict` (behind `from_pretrained`),
        `save_pretrained` and every model's constructor call this, so a bad value raises a
        ValueError naming the field before it is used or saved.
        """
        self._validate_indrnn()
        super().validate()

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        asked = kwargs.get("num_hidden_layers")  # transformers consumes the overrides
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result  # return_unused_kwargs
        config.validate()  # the keyword overrides were set after the constructor's checks
        config._check_dense_layer_count(asked)
        return result

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        # Check and serialise before anything touches the disk: a bad value or one that JSON
        # cannot hold raises here, naming the field, and leaves no folder or empty config.json
        # behind (a folder saved with a bad value would fail to load).
        self.validate()
        self._check_json_serialisable()
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def to_json_file(self, json_file_path, use_diff: bool = True):
        # Write a temporary file and rename it: an interrupted write never leaves a truncated
        # config.json that looks like a saved model.
        text = self.to_json_string(use_diff=use_diff)
        tmp_path = f"{json_file_path}.tmp"
        with open(tmp_path, "w", encoding="utf-8") as writer:
            writer.write(text)
        os.replace(tmp_path, json_file_path)

    def _check_json_serialisable(self) -> None:
        for key, value in self._encode_special_floats(self.to_diff_dict()).items():
            try:
                json.dumps(value)
            except TypeError as err:
                raise ValueError(
                    f"config field {key!r} = {value!r} cannot be saved to JSON ({err}); set it "
                    "to a Python int, float, str, bool, None, or a list/dict of them"
                ) from None

    @property
    def layer_types(self) -> list[str]:
        # Every layer keeps one recurrent state and no keys/values: the generation cache is a
        # DynamicCache of "linear_attention" layers built from this list.
        return ["linear_attention"] * self.num_hidden_layers

    @property
    def head_dropout(self) -> float:
        """The heads' dropout: `dropout`, or none when the base model applies `dropout_last`."""
        return self.dropout if self.dropout_last is None else 0.0

    @property
    def rnn_output_units(self) -> int:
        """Units per direction of the last IndRNN layer (what the heads read, D times)."""
        if self.dense_growth_rate is None:
            return self.hidden_size
        return self._dense_plan()[-1][1]

    def _dense_plan(self) -> list:
        # In a try block: transformers checks the imports of a remote-code file outside them,
        # and the model file gives the message for a missing indrnn_triton.
        try:
            from indrnn_triton.modules import dense_layer_plan
        except ModuleNotFoundError:
            raise

        return dense_layer_plan(self.hidden_size, self.dense_growth_rate,
                                self.dense_block_config, self.dense_bottleneck)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _validate_indrnn(self) -> None:
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "embedding_size"):
            _check_positive_int(name, getattr(self, name))
        if self.input_size is not None:
            _check_positive_int("input_size", self.input_size)
        for name in ("bidirectional", "residual", "use_cache", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        probabilities = {"dropout": self.dropout}
        if self.dropout_last is not None:
            probabilities["dropout_last"] = self.dropout_last
        for name, value in probabilities.items():
            if not 0.0 <= _check_real(name, value) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        if self.fused_projection is not None and not isinstance(self.fused_projection, bool):
            raise ValueError(f"fused_projection must be true, false or null, got "
                             f"{self.fused_projection!r}")
        if self.norm_position not in _NORM_POSITIONS:
            raise ValueError(
                f"norm_position must be one of {_NORM_POSITIONS}, got {self.norm_position!r}"
            )
        if self.recurrent_max_abs is not None:
            r_max = _check_real("recurrent_max_abs", self.recurrent_max_abs)
            if r_max <= 0:
                raise ValueError(
                    f"recurrent_max_abs must be > 0 (or None for no clip), got {r_max}"
                )
        r_min = _check_real("recurrent_min_abs", self.recurrent_min_abs)
        if r_min < 0:
            raise ValueError(f"recurrent_min_abs must be >= 0, got {r_min}")
        if self.recurrent_max_abs is not None and r_min > self.recurrent_max_abs:
            raise ValueError(
                f"recurrent_min_abs ({r_min}) must not exceed recurrent_max_abs "
                f"({self.recurrent_max_abs})"
            )
        if self.residual and (self.num_hidden_layers < 3 or self.num_hidden_layers % 2 == 0):
            raise ValueError(
                "residual=True needs an odd num_hidden_layers >= 3 (an input layer, then "
                f"residual blocks of 2 layers), got num_hidden_layers={self.num_hidden_layers}"
            )
        if self.dense_growth_rate is not None:
            self._validate_dense()
        elif self.dense_dropout_by_kind:
            raise ValueError("dense_dropout_by_kind applies to the dense network only: set "
                             "dense_growth_rate too")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if self.classifier_pooling not in _POOLINGS:
            raise ValueError(
                f"classifier_pooling must be one of {_POOLINGS}, got {self.classifier_pooling!r}"
            )
        for name in ("initializer_range", "embedding_init_std"):
            if _check_real(name, getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if _check_real("input_weight_std", self.input_weight_std) <= 0:
            raise ValueError(f"input_weight_std must be > 0, got {self.input_weight_std}")
        if self.input_weight_init not in _INPUT_WEIGHT_INITS:
            raise ValueError(
                f"input_weight_init must be one of {_INPUT_WEIGHT_INITS}, got "
                f"{self.input_weight_init!r}"
            )
        if self.recurrent_init is not None:
            self.recurrent_init = _check_range("recurrent_init", self.recurrent_init)
        if self.last_layer_recurrent_init == "near_one":
            if self.recurrent_max_abs is None or self.recurrent_max_abs < 1:
                raise ValueError(
                    "last_layer_recurrent_init='near_one' draws from [1/r, r] with r = "
                    f"recurrent_max_abs, which must be >= 1, got {self.recurrent_max_abs}"
                )
        elif self.last_layer_recurrent_init is not None:
            self.last_layer_recurrent_init = _check_range(
                "last_layer_recurrent_init", self.last_layer_recurrent_init
            )
        if self.tie_word_embeddings and self.input_size is None:
            if self.embedding_size != self.rnn_output_units:
                raise ValueError(
                    "tie_word_embeddings=True needs embedding_size == the last layer's units "
                    f"({self.rnn_output_units}; hidden_size without dense layers), got "
                    f"embedding_size={self.embedding_size}"
                )

    def _validate_dense(self) -> None:
        _check_positive_int("dense_growth_rate", self.dense_growth_rate)
        if self.dense_block_config is None:
            self.dense_block_config = [8, 6, 4]  # the authors' default (8,6,4)
        blocks = self.dense_block_config
        if (isinstance(blocks, str) or not isinstance(blocks, (list, tuple)) or not blocks):
            raise ValueError(f"dense_block_config must be a non-empty list of positive ints, "
                             f"got {blocks!r}")
        for n in blocks:
            _check_positive_int("dense_block_config entries", n)
        self.dense_block_config = list(blocks)
        if isinstance(self.dense_bottleneck, bool) or not isinstance(
                self.dense_bottleneck, numbers.Integral) or self.dense_bottleneck < 0:
            raise ValueError(f"dense_bottleneck must be an int >= 0, got {self.dense_bottleneck!r}")
        if self.residual:
            raise ValueError("residual=True and dense_growth_rate exclude each other: choose "
                             "the residual or the dense network")
        self.num_hidden_layers = len(self._dense_plan())
        rates = self.dense_dropout_by_kind
        if rates is not None:
            kinds = ("first", "bottleneck", "growth", "transition")
            if not isinstance(rates, dict) or any(k not in kinds for k in rates):
                raise ValueError(f"dense_dropout_by_kind must be a dict whose keys are among "
                                 f"{', '.join(kinds)}, got {rates!r}")
            for kind, p in rates.items():
                if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
                    raise ValueError(f"dense_dropout_by_kind[{kind!r}] must be a probability in "
                                     f"[0, 1), got {p!r}")
            self.dense_dropout_by_kind = {k: float(p) for k, p in rates.items()}


def _to_python(value):
    """numpy scalars and arrays (also inside lists, tuples and dicts) as Python values."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_python(v) for v in value)
    if isinstance(value, dict):
        return {_to_python(k): _to_python(v) for k, v in value.items()}
    return value


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_range(name: str, value) -> list[float]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair [low, high], got {value!r}")
    low, high = (_check_real(name, v) for v in value)
    if low > high:
        raise ValueError(f"{name} must have low <= high, got {value!r}")
    return [low, high]


def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


__all__ = ["IndRNNConfig"]
