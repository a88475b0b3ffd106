"""IndRNN models for Hugging Face transformers: the base model and its heads.

This file is also saved next to the weights by ``save_pretrained`` and loaded from there with
``trust_remote_code=True``, so it imports only transformers, torch, ``indrnn_triton`` and its
sibling ``configuration_indrnn``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import (
    Cache,
    DynamicCache,
    LinearAttentionCacheLayerMixin,
    LinearAttentionLayer,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .configuration_indrnn import IndRNNConfig

# Where the folder is used without this project: transformers' own message for a missing import
# ("pip install indrnn_triton") names a package that PyPI did not have when this was written.
INSTALL_HINT = (
    "this model's code (modeling_indrnn.py) runs on the indrnn-triton package (import name "
    "indrnn_triton), which was not on PyPI when it was written: install it from the project's "
    "source repository (pip install -e . in a clone of it), or with pip install indrnn-triton "
    "where a release has been published since"
)
try:  # transformers' check of a remote-code file's imports skips try blocks
    from indrnn_triton import DenseIndRNN, IndRNN
    from indrnn_triton.modules import _NORM_CLASSES, _shape_of
except ModuleNotFoundError as err:
    if err.name != "indrnn_triton":
        raise
    raise ImportError(f"No module named 'indrnn_triton': {INSTALL_HINT}") from err

# transformers renamed the cache argument and output field from `past_key_values` to `cache`
# (5.2x); the models accept both names and fill whichever field this version's outputs have.
_CACHE_FIELD = (
    "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
)

# Every Auto class the models support, written into config.json by save_pretrained so that the
# folder loads with trust_remote_code=True in a process that never imported hf_integration.
AUTO_MAP = {
    "AutoConfig": "configuration_indrnn.IndRNNConfig",
    "AutoModel": "modeling_indrnn.IndRNNModel",
    "AutoModelForSequenceClassification": "modeling_indrnn.IndRNNForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_indrnn.IndRNNForTokenClassification",
    "AutoModelForCausalLM": "modeling_indrnn.IndRNNForCausalLM",
}


class IndRNNCache(DynamicCache):
    """The generation cache: one float32 recurrent state per IndRNN layer, in the
    "linear_attention" layers that `DynamicCache` builds from `config.layer_types`.

    It also counts the steps it has absorbed, because generate() asks the cache for its length
    and a cache of linear-attention layers alone cannot answer that in transformers 5.1x.

    A recurrent state cannot be rolled back by itself: `crop` works after
    `activate_past_recording()`, which keeps the states of the steps fed since (see there).
    """

    # While recording: [(seen_steps, [state or None per layer])], oldest first, from the step
    # recording began (or the last crop) on; None when not recording. Class attributes, so
    # that a cache made without __init__ (a pytree's, an unpickled one) has them too.
    _past = None
    max_rollback = None
    _refeeds = False  # a draft model's cache: see crop()
    # While recording: the token ids fed, (batch, seen_steps), or None if some were embeddings.
    _fed_ids = None
    # The step count is `_steps`, plus the steps of compiled calls in `_step_counter` (which
    # holds some only when `_counted_compiled`).
    _steps = 0
    _step_counter = None
    _counted_compiled = False

    def __init__(self, config: IndRNNConfig):
        super().__init__(config=config)

    def __setstate__(self, state):
        # A cache pickled before the count became a property holds it as "seen_steps"; one
        # pickled before `_counted_compiled` may hold compiled steps in its counter.
        state = dict(state)
        if "seen_steps" in state:
            state["_steps"] = state.pop("seen_steps")
        if state.get("_step_counter") is not None and "_counted_compiled" not in state:
            state["_counted_compiled"] = True  # its counter may hold compiled steps
        self.__dict__.update(state)

    @property
    def seen_steps(self) -> int:
        """The steps this cache has absorbed (after compiled steps, reading it waits for the
        GPU). In a graph torch.export traces, a 0-dim int64 tensor."""
        if not self._counted_compiled:
            return self._steps
        return self._steps + int(self._step_counter)

    @seen_steps.setter
    def seen_steps(self, steps) -> None:
        self._steps = steps
        if self._counted_compiled:
            self._step_counter.zero_()
            self._counted_compiled = False

    def _count(self, steps: int, device: torch.device) -> None:
        """Add a forward's steps. A call that torch.compile traces adds them to a 0-dim int64
        tensor on the states' device, in place, as the states are updated: a Python int
        there would be an input of the graph, which recompiles for its second value and
        then, under mode="reduce-overhead" (transformers' generate() compiles the decode
        step so on a GPU when the cache is an IndRNNCache), records a new CUDA graph at every
        step. Like transformers' static caches' lengths, the tensor is made outside the
        graph, at an eager call, with a static address."""
        if not isinstance(self._steps, int) or torch.compiler.is_exporting():
            # A graph torch.export traces (or its decompositions) carries the count as a
            # tensor: not +=, which would change it in place (see IndRNNModel._write_states).
            self._steps = self._steps + steps
        elif torch.compiler.is_compiling():
            if self._step_counter is None:  # a cache that no eager call has updated yet
                self._step_counter = torch.zeros((), dtype=torch.int64, device=device)
            self._step_counter.add_(steps)
            self._counted_compiled = True
        else:
            self._steps += steps
            counter = self._step_counter
            if counter is not None and counter.device != device:  # states made again elsewhere
                self.seen_steps = self.seen_steps
                counter = self._step_counter = None
            if counter is None and not torch.jit.is_tracing():
                self._step_counter = _new_step_counter(device)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.seen_steps)

    def reset(self):
        super().reset()  # zeroed in place; the next step may take another batch size
        self.seen_steps = 0
        if self._past is not None:
            self._past = [self._snapshot()]
            self._fed_ids = torch.zeros(1, 0, dtype=torch.long)

    @property
    def batch_size(self) -> int:
        """The rows of the held states, or -1 before the first step (and after reset())."""
        held = [layer.recurrent_states[0] for layer in self.layers if layer.has_previous_state[0]]
        return held[0].shape[0] if held else -1

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each row `repeats` times in place (`input_ids.repeat_interleave(repeats, 0)`'s
        rows), e.g. a prompt's cache for `generate(num_beams=repeats)`."""
        self._map_rows(lambda state: state.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows `indices` (in that order) in place."""
        self._map_rows(lambda state: state[indices.to(state.device)])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_rows(lambda state: state.index_select(0, beam_idx.to(state.device)))

    def _map_rows(self, rows) -> None:
        """Apply `rows` to the held states and to the recorded ones."""
        for layer in self.layers:
            if layer.is_recurrent_states_initialized[0]:
                layer.recurrent_states[0] = rows(layer.recurrent_states[0])
        for _, states in self._past or ():
            states[:] = [None if state is None else rows(state) for state in states]
        if self._fed_ids is not None:
            self._fed_ids = rows(self._fed_ids)

    def activate_past_recording(self, max_rollback: int | None = None) -> None:
        """Keep the state after each step fed from now on, so that `crop` can return to it.

        Up to the last `max_rollback` steps are kept (None: all since recording began or the
        last crop). To have a state after every step, the model feeds the recorded steps of a
        call one at a time: a call of T steps runs its first T - max_rollback steps in one
        go, then one call per step. transformers' assisted generation records the draft
        model's cache this way (this model's generate() does it with the draft length).
        """
        if max_rollback is not None and (isinstance(max_rollback, bool)
                                         or not isinstance(max_rollback, int) or max_rollback < 1):
            raise ValueError(f"max_rollback must be a positive int or None, got {max_rollback!r}")
        self.max_rollback = max_rollback
        if self._past is None:
            self._past = [self._snapshot()]
            self._fed_ids = (torch.zeros(1, 0, dtype=torch.long) if self.seen_steps == 0
                             else None)  # the ids of earlier steps are unknown
        self._trim_past()

    def is_recording_past(self, layer_idx: int = 0) -> bool:
        return self._past is not None

    @property
    def is_compileable(self) -> bool:
        # Recording runs a call's steps one by one and reads the count: not for a compiled
        # step. transformers compiles a draft model's decode on a GPU when its cache says yes.
        return self._past is None and super().is_compileable

    def _recorded_steps(self, seq_len: int) -> int:
        """How many of a call's last `seq_len` steps must run one at a time to be recorded."""
        if self._past is None:
            return 0
        return seq_len if self.max_rollback is None else min(seq_len, self.max_rollback)

    def _snapshot(self):
        return (self.seen_steps, [layer.recurrent_states[0].clone()
                                  if layer.has_previous_state[0] else None
                                  for layer in self.layers])

    def _record(self) -> None:
        """Called by the model after each step it feeds while recording."""
        self._past.append(self._snapshot())
        self._trim_past()

    def _trim_past(self) -> None:
        if self.max_rollback is None:
            return
        if not self._refeeds:
            del self._past[:max(0, len(self._past) - self.max_rollback - 1)]
            return
        # A draft model's cache also keeps the states older than max_rollback at every
        # _DRAFT_CHECKPOINT-th step: a crop further back (another tokenizer re-reads tens of
        # bytes) returns to one of those and feeds a few steps again, not the whole sequence,
        # and memory grows by one state per that many steps.
        oldest = self.seen_steps - self.max_rollback
        self._past = [entry for entry in self._past
                      if entry[0] >= oldest or entry[0] % _DRAFT_CHECKPOINT == 0]

    def crop(self, tokens_to_remove: int) -> None:
        """Return to the state before the last `-tokens_to_remove` steps (a negative int or
        0, as transformers' caches take it). The recorded states after that step are
        dropped; recording goes on from there.

        A draft model's generate() (assisted generation) lets the cache return further back
        when it lacks the state asked for: to the latest recorded step before it, or to the
        start. Its caller passes the whole sequence each round, and generate() feeds the steps
        the cache has not seen, so nothing is lost; `get_seq_length()` tells where it is.
        """
        if isinstance(tokens_to_remove, bool) or not isinstance(tokens_to_remove, int) or (
                tokens_to_remove > 0):
            raise ValueError(f"crop takes the steps to remove as a negative int (or 0), got "
                             f"{tokens_to_remove!r}")
        if self._past is None:
            raise ValueError(
                "an IndRNNCache can be cropped only after cache.activate_past_recording(), "
                "which keeps the states of the steps fed afterwards: its recurrent states cannot "
                "be rolled back otherwise. Or keep a copy (copy.deepcopy(cache), under "
                "torch.no_grad()) of the cache at the step to return to")
        target = int(self.seen_steps) + tokens_to_remove
        kept = [entry for entry in self._past if entry[0] <= target]
        if target < 0 or not ((kept and kept[-1][0] == target) or self._refeeds):
            raise ValueError(
                f"crop({tokens_to_remove}) returns to step {target}, but the cache has the "
                f"states of steps {_step_ranges([steps for steps, _ in self._past])} only"
                + ("" if self.max_rollback is None else
                   f" (at most max_rollback={self.max_rollback} back)"))
        if not kept:
            kept = [(0, [None] * len(self.layers))]
        steps, states = kept[-1]
        for layer, state in zip(self.layers, states, strict=True):
            if state is None:
                if layer.is_recurrent_states_initialized[0]:
                    layer.recurrent_states[0].zero_()
                layer.has_previous_state[0] = False
            else:
                layer.update_recurrent_state(state.clone(), 0)
                layer.has_previous_state[0] = True
        self.seen_steps = steps
        self._past = kept
        if self._fed_ids is not None:
            self._fed_ids = self._fed_ids[:, :steps]

    def _record_ids(self, input_ids) -> None:
        """Keep the ids a recorded call feeds (None for embeddings: no ids known from then)."""
        if self._fed_ids is not None:
            self._fed_ids = None if input_ids is None else torch.cat(
                [self._fed_ids.to(input_ids.device).expand(input_ids.shape[0], -1), input_ids],
                dim=1)

    def _first_changed_step(self, input_ids) -> int | None:
        """The first step this cache has seen whose id differs in `input_ids` (the whole
        sequence), or None if it holds those ids (or does not know them)."""
        seen = self.seen_steps
        fed = self._fed_ids
        if (fed is None or input_ids is None or fed.shape != (input_ids.shape[0], seen)
                or input_ids.shape[1] < seen):
            return None
        changed = (input_ids[:, :seen] != fed.to(input_ids.device)).any(dim=0).nonzero()
        return int(changed[0]) if len(changed) else None


_DRAFT_CHECKPOINT = 16


def _new_step_counter(device) -> torch.Tensor | None:
    """A step counter at a static address, or None under a tracing mode (export's
    decompositions), where the zeros are no plain tensor."""
    counter = torch.zeros((), dtype=torch.int64, device=device)
    if type(counter) is not torch.Tensor:
        return None
    torch._dynamo.mark_static_address(counter)
    return counter


def _step_ranges(steps: list[int]) -> str:
    """[0, 3, 4, 5] as "0, 3 to 5"."""
    runs = []
    for step in steps:
        if runs and step == runs[-1][1] + 1:
            runs[-1][1] = step
        else:
            runs.append([step, step])
    return ", ".join(str(a) if a == b else f"{a} to {b}" for a, b in runs)


# A cache crosses a torch.export graph's boundary as a pytree: its tensors become the graph's
# inputs and outputs, and the rest (the context) is fixed when the graph is traced, a call
# with another context being refused. transformers' generic flattening would put `seen_steps`
# in the context, so an exported decode step would run at one position only. Here the context
# is the layer count and which layers hold a state, and the step count travels as a 0-dim int64
# tensor that the graph updates. A cache that comes out of an exported graph (not traced) gets
# its count back as an int.
def _flatten_cache(cache: IndRNNCache) -> tuple[list[torch.Tensor], list]:
    held = [bool(layer.has_previous_state[0]) for layer in cache.layers]
    states = [layer.recurrent_states[0] for layer, h in zip(cache.layers, held) if h]
    steps = cache._steps
    if not isinstance(steps, torch.Tensor):
        steps = torch.full((), steps, dtype=torch.int64)
    if cache._counted_compiled:
        # Tensor arithmetic, not seen_steps' int(): the cache may be a fake copy (export keeps
        # its example inputs so), whose counter has no value.
        steps = steps + cache._step_counter.to(steps.device)
    return [*states, steps], [len(held), held]


def _unflatten_cache(leaves, context) -> IndRNNCache:
    num_layers, held = context
    *states, steps = leaves
    cache = IndRNNCache.__new__(IndRNNCache)
    DynamicCache.__init__(cache, config=None)
    cache.layers = [LinearAttentionLayer() for _ in range(num_layers)]
    cache.layer_class_to_replicate = None  # as a cache built from a config
    states = iter(states)
    for layer, h in zip(cache.layers, held):
        if h:
            state = next(states)
            layer.recurrent_states[0] = state
            if isinstance(state, torch.Tensor):  # tree_map may put anything in the leaves
                layer.dtype, layer.device = state.dtype, state.device
            layer.is_recurrent_states_initialized[0] = True
            layer.has_previous_state[0] = True
    concrete = (isinstance(steps, torch.Tensor) and steps.numel() == 1
                and not torch.compiler.is_compiling()
                and not torch._subclasses.fake_tensor.is_fake(steps))
    cache.seen_steps = int(steps) if concrete else steps
    if concrete:  # as an eager call's cache, e.g. the one a program run returns
        held = [layer.recurrent_states[0] for layer in cache.layers if layer.has_previous_state[0]]
        cache._step_counter = _new_step_counter(held[0].device if held else steps.device)
    return cache


def _flatten_cache_with_keys(cache: IndRNNCache):
    leaves, context = _flatten_cache(cache)
    return [(torch.utils._pytree.SequenceKey(i), leaf) for i, leaf in enumerate(leaves)], context


# torch.export.save pickles a program's example inputs, a cache among them: torch.load
# (weights_only, the default) then refused the class, fell back to a full unpickling and failed
# in its own log message of that fallback. The classes only hold tensors, ints and dicts.
torch.serialization.add_safe_globals([IndRNNCache, LinearAttentionLayer])

torch.utils._pytree.register_pytree_node(
    IndRNNCache, _flatten_cache, _unflatten_cache,
    serialized_type_name=f"{IndRNNCache.__module__}.{IndRNNCache.__qualname__}",
    flatten_with_keys_fn=_flatten_cache_with_keys,
)


class IndRNNPreTrainedModel(PreTrainedModel):
    config_class = IndRNNConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["IndRNN"]
    supports_gradient_checkpointing = True
    # The state of a recurrent model cannot be rolled back token by token.
    _is_stateful = True
    # Whether the Trainer passes `num_items_in_batch` (its count of targets over all gradient-
    # accumulation steps) and leaves the loss undivided by the accumulation steps. The token
    # losses (causal LM, token classification) take it, so that k micro-batches give the update
    # of one batch k times larger whatever the targets per micro-batch; the sequence
    # classifier's loss stays a mean over rows, which the Trainer then divides by k.
    accepts_loss_kwargs = False

    def __init__(self, config: IndRNNConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        # The config may have changed since its constructor checked it (a field assigned, a
        # dense_block_config whose derived num_hidden_layers is stale): check it, and derive
        # again, before any layer is built from it.
        config.validate()

    def _init_weights(self, module):
        # transformers calls this for every module whose tensors a checkpoint did not fully
        # load (and for every module of a new model); the `init` functions skip the tensors
        # that were loaded. The IndRNN stack and its norms take the scheme and config options
        # of a freshly built IndRNN; a norm is reached on its own when its IndRNN was loaded
        # whole (e.g. norm="batch" added to a checkpoint without norms).
        if isinstance(module, (IndRNN, *_NORM_CLASSES.values())):
            module.reset_parameters(init=init)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.embedding_init_std)
        elif isinstance(module, nn.Linear) and getattr(module, "_indrnn_head", False):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)

    def get_input_embeddings(self):
        # The token embeddings live on the base model (None for continuous inputs).
        return self.base_model.embeddings

    def set_input_embeddings(self, new_embeddings):
        self.base_model.embeddings = new_embeddings

    def enable_input_require_grads(self):
        # transformers calls this from activation_checkpointing_enable() to hook the token
        # embeddings, and warns when a model has none. A continuous-input model has none by
        # design; IndRNNModel.forward gives reentrant checkpointing the input that requires
        # grad instead (see `_needs_input_grad`).
        if self.get_input_embeddings() is None:
            return
        super().enable_input_require_grads()

    def resize_token_embeddings(self, *args, **kwargs):
        if self.get_input_embeddings() is None:
            raise ValueError(
                f"resize_token_embeddings() needs token embeddings, but this model reads "
                f"continuous inputs (config.input_size={self.config.input_size}): it has no "
                f"vocabulary to resize"
            )
        return super().resize_token_embeddings(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.validate()  # before transformers creates the folder: a bad field saves nothing
        self.config.auto_map = {**AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)


def _head(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    linear = nn.Linear(in_features, out_features, bias=bias)
    linear._indrnn_head = True
    return linear


def _pair(value):
    """JSON stores the (low, high) init ranges as lists; IndRNN takes tuples."""
    return tuple(value) if isinstance(value, list) else value


def _cache_argument(cache, past_key_values=None, cache_params=None):
    """The one cache given under any of its names: `cache` (transformers 5.2x),
    `past_key_values` (before) or `cache_params` (the older recurrent models' name)."""
    given = {name: value for name, value in (("cache", cache), ("past_key_values", past_key_values),
                                             ("cache_params", cache_params)) if value is not None}
    if len(given) > 1:
        raise ValueError(f"pass the cache once, as cache, got {' and '.join(given)}")
    return next(iter(given.values()), None)


def _check_no_attentions(output_attentions) -> None:
    # Accepted because transformers' callers may pass it; there are no attention weights.
    if output_attentions:
        raise ValueError("output_attentions=True: IndRNN models have no attention weights")


def _class_ids(labels: torch.Tensor) -> torch.Tensor:
    """Class-id labels as cross-entropy takes them: int64 (int32 ids, which transformers'
    problem-type rule counts as class ids, failed with "expected scalar type Long")."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold class ids (an integer dtype), got {labels.dtype}")
    return labels.long()


def _token_loss(logits, targets, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy over every step with a target (-100: none), as transformers computes it:
    the mean, or the sum divided by `num_items_in_batch` when given (the Trainer's count of
    targets over all gradient-accumulation steps)."""
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), _class_ids(targets).reshape(-1),
        ignore_index=-100,
        reduction=reduction,
    )
    if num_items_in_batch is None:
        return loss
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def _without_targets_before_the_first_real_step(targets, attention_mask, steps: int):
    """`targets` (batch, steps), the target of each step's logits, with -100 where that step
    comes before the row's first real one. Such a step has seen nothing (its state is the zero
    initial state: constant logits), so the target it predicts is one the same sequence
    unpadded never has (its first token); with left padding (the byte tokenizer's side) it
    added a constant ln(vocab) per padded row to the loss. Later padding steps carry the last
    real step's state, so the targets after them stay: a padded batch has the loss of its
    sequences unpadded. The mask may cover earlier steps (a cache's); its last `steps` columns
    are this call's, and target i is that of this call's step i."""
    seen = attention_mask.bool().cummax(dim=1).values[:, attention_mask.shape[1] - steps:]
    return targets.masked_fill(~seen[:, : targets.shape[1]], -100)


class IndRNNLayer(GradientCheckpointingLayer):
    """Layer `index` of the model's IndRNN stack as its own block, the unit that
    `activation_checkpointing_enable(every_n_layers=...)` checkpoints.

    The parameters stay in the `IndRNN` module (`rnn.weight_ih_l{index}`, ...), where
    checkpoints have always stored them; this block holds a plain reference to that module,
    not a submodule, so that they are not listed under a second name. So `rnn.forward` never
    runs in the model: a forward hook registered on `model.rnn` does not fire (hook the layers
    instead), and `IndRNNModel` runs accelerate's `device_map` hook of `model.rnn` itself.
    """

    def __init__(self, rnn: IndRNN, index: int):
        super().__init__()
        self.index = index
        self._rnn = (rnn,)

    def forward(self, hidden_states, h0, mask, shortcut):
        """`IndRNN.forward_layer` of this layer: returns (output, h_n, shortcut)."""
        return self._rnn[0].forward_layer(self.index, hidden_states, h0, mask, shortcut)

    def extra_repr(self) -> str:
        return f"index={self.index}"


def _needs_input_grad(layer: IndRNNLayer, hidden_states: torch.Tensor) -> bool:
    """Whether `layer` is about to run under reentrant activation checkpointing with an input
    that does not require grad (continuous features, detached `inputs_embeds`, or the output
    of frozen layers).

    Reentrant checkpointing (`use_reentrant=True`, torch's default when it is not given) has a
    backward only when one of the block's tensor inputs requires grad: otherwise the layer's
    weights silently get no gradient. transformers only makes the token embeddings' output
    require grad, which does not cover these inputs. Non-reentrant checkpointing needs nothing.
    """
    if not (layer.gradient_checkpointing and layer.training and torch.is_grad_enabled()):
        return False
    if hidden_states.requires_grad:
        return False
    checkpoint_kwargs = getattr(layer._gradient_checkpointing_func, "keywords", {})
    return checkpoint_kwargs.get("use_reentrant") is not False


class IndRNNModel(IndRNNPreTrainedModel):
    """Token embeddings (or continuous input features) through a stack of IndRNN layers."""

    def __init__(self, config: IndRNNConfig):
        super().__init__(config)
        if config.input_size is None:
            self.embeddings = nn.Embedding(config.vocab_size, config.embedding_size)
            rnn_input_size = config.embedding_size
        else:
            self.embeddings = None
            rnn_input_size = config.input_size
        options = dict(
            batch_first=True,
            dropout=config.dropout,
            bidirectional=config.bidirectional,
            recurrent_max_abs=config.recurrent_max_abs,
            recurrent_min_abs=config.recurrent_min_abs,
            norm=config.norm,
            norm_position=config.norm_position,
            dropout_last=config.dropout_last or 0.0,
            method=config.method,
            fused_projection=config.fused_projection,
            recurrent_init=_pair(config.recurrent_init),
            last_layer_recurrent_init=_pair(config.last_layer_recurrent_init),
            input_weight_init=config.input_weight_init,
            input_weight_std=config.input_weight_std,
        )
        if config.dense_growth_rate is None:
            self.rnn = IndRNN(rnn_input_size, config.hidden_size,
                              num_layers=config.num_hidden_layers, residual=config.residual,
                              **options)
        else:
            self.rnn = DenseIndRNN(rnn_input_size, config.hidden_size, config.dense_growth_rate,
                                   config.dense_block_config, config.dense_bottleneck,
                                   dropout_by_kind=config.dense_dropout_by_kind, **options)
        self.rnn_input_size = rnn_input_size
        self.layers = nn.ModuleList(IndRNNLayer(self.rnn, k) for k in range(self.rnn.num_layers))
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        cache_params: Cache | None = None,
        cache_position: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> tuple | BaseModelOutputWithPast:
        r"""
        Args:
            input_ids: (batch, time) token ids; or give `inputs_embeds`.
            attention_mask: (batch, time), 1 for real steps and 0 for padding (left or right):
                the state passes padded steps unchanged. With a `cache` (cached generation) it
                may also cover the earlier steps the cache holds; its last `time` columns are
                used. Without a cache a mask of another width is an error.
            inputs_embeds: (batch, time, embedding_size) embeddings, or (batch, time,
                input_size) features when the config has `input_size`.
            cache: an `IndRNNCache(model.config)` (or a `DynamicCache(config=model.config)`)
                holding one float32 recurrent state per layer; read as the initial state and
                updated in place when `use_cache`. Created here when `use_cache` and None.
            use_cache: update and return the cache (default: when a cache is given, else
                `config.use_cache` outside training for unidirectional models).
            output_hidden_states: also return `hidden_states`, num_hidden_layers + 1 tensors:
                the IndRNN stack's input, then each layer's output ((batch, time, 2 *
                hidden_size) for bidirectional layers; with dense layers each growth layer's
                output is the concatenation it hands on).
            past_key_values, cache_params: other names of `cache` (before transformers 5.2x;
                transformers' older recurrent models).
            cache_position: accepted for transformers' callers and unused: the recurrent
                state carries the position.
            output_attentions: only None or False (no attention weights).
            position_ids: (batch, time) or (1, time). The recurrent state carries the
                position, so they matter only where they restart at 0 after a real step of the
                row: packed sequences (`DataCollatorWithFlattening`), each then run from a zero
                state (as a padded batch of the sequences, inside; eagerly only, with no
                cache, and use_cache defaulting to False). Otherwise they must go up by one
                from a real step to the next (or by the steps between them); a jump raises.

        Any other keyword is a TypeError.
        """
        cache = _cache_argument(cache, past_key_values, cache_params)
        _check_no_attentions(output_attentions)
        output_hidden_states = (
            output_hidden_states
            if output_hidden_states is not None
            else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        explicit_use_cache = use_cache
        if use_cache is None:
            use_cache = cache is not None or (
                self.config.use_cache and not self.training and not self.config.bidirectional
            )
        if self.config.bidirectional and (use_cache or cache is not None):
            raise ValueError(
                "cache and use_cache=True continue a sequence step by step, which needs "
                "bidirectional=False (the backward direction reads the whole sequence)"
            )

        inputs_embeds = self._embed(input_ids, inputs_embeds)
        batch_size, seq_len = inputs_embeds.shape[:2]
        mask = _step_mask(attention_mask, batch_size, seq_len, cached=cache is not None)
        starts = _sequence_starts(position_ids, mask, batch_size, seq_len)
        if starts is not None:
            starts = starts.to(inputs_embeds.device)
            if cache is not None or explicit_use_cache:
                raise ValueError(
                    "packed sequences (position_ids restarting at 0 inside a row) cannot be "
                    "continued from or into a cache: pass use_cache=False and no cache")
            return self._packed_forward(inputs_embeds, mask, starts, output_hidden_states,
                                        return_dict)
        if use_cache and cache is None:
            cache = IndRNNCache(self.config)
        states = self._read_states(cache, batch_size)
        recorded = cache._recorded_steps(seq_len) if isinstance(cache, IndRNNCache) else 0
        if not (use_cache and recorded):
            hidden_states, all_hidden_states, last_states = self._run_layers(
                inputs_embeds, mask, states, output_hidden_states)
            if use_cache:
                self._write_states(cache, last_states)
                if isinstance(cache, IndRNNCache):
                    cache._count(seq_len, last_states[0].device)
        else:
            # A cache recording its past keeps the state after each of the last `recorded`
            # steps: those run one at a time, after the others in one go (whose end state is
            # the one `recorded` steps back).
            pieces = [(0, seq_len - recorded)] if recorded < seq_len else []
            pieces += [(t, t + 1) for t in range(seq_len - recorded, seq_len)]
            outputs = []
            cache._record_ids(input_ids)
            for start, stop in pieces:
                outputs.append(self._run_layers(
                    inputs_embeds[:, start:stop], None if mask is None else mask[:, start:stop],
                    states, output_hidden_states))
                states = outputs[-1][2]
                self._write_states(cache, states)
                cache._count(stop - start, states[0].device)
                cache._record()
            hidden_states = torch.cat([out[0] for out in outputs], dim=1)
            all_hidden_states = ([torch.cat(level, dim=1) for level in
                                  zip(*(out[1] for out in outputs))]
                                 if output_hidden_states else None)
            last_states = states

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            **{_CACHE_FIELD: cache if use_cache else None},
        )
        return output if return_dict else output.to_tuple()

    def _packed_forward(self, inputs_embeds, mask, starts, output_hidden_states, return_dict):
        """Packed rows (sequences back to back, `starts` where each begins again) run as a
        right-padded batch of the sequences, each from a zero state, and go back into the rows.
        Every step belongs to one sequence, so the rows are filled whole."""
        place, (sequences, longest) = _unpacked_layout(starts)
        batch_size, seq_len = inputs_embeds.shape[:2]
        flat = inputs_embeds.flatten(0, 1)
        unpacked = flat.new_zeros(sequences * longest, flat.shape[1]).index_copy(0, place, flat)
        real = torch.zeros(sequences * longest, dtype=torch.bool, device=flat.device)
        real[place] = True if mask is None else mask.flatten()
        hidden_states, all_hidden_states, _ = self._run_layers(
            unpacked.view(sequences, longest, -1), real.view(sequences, longest),
            [None] * self.config.num_hidden_layers, output_hidden_states)

        def packed(unpacked_states):
            return unpacked_states.flatten(0, 1)[place].view(batch_size, seq_len, -1)

        output = BaseModelOutputWithPast(
            last_hidden_state=packed(hidden_states),
            hidden_states=((inputs_embeds, *map(packed, all_hidden_states[1:]))
                           if output_hidden_states else None),
            **{_CACHE_FIELD: None},
        )
        return output if return_dict else output.to_tuple()

    def _run_layers(self, inputs_embeds, mask, states, output_hidden_states: bool):
        """The IndRNN stack on (batch, time, features) from the states `states`: returns the
        last layer's output, every layer's output (or None) and each layer's h_n."""
        # The layers run the IndRNN module's weights through `forward_layer`, never its
        # `forward`, where accelerate attaches the hook of a `device_map` (weights offloaded to
        # CPU or disk brought in, inputs moved to the module's device): run that hook here.
        hook = getattr(self.rnn, "_hf_hook", None)
        if hook is not None:
            (inputs_embeds, mask, states), _ = hook.pre_forward(
                self.rnn, inputs_embeds, mask, states)

        # One IndRNNLayer call per layer: each is a block that activation checkpointing may
        # recompute in backward. The cache is written by the caller, outside the blocks, so a
        # recomputation never updates it a second time.
        hidden_states, shortcut = inputs_embeds, None
        all_hidden_states = [inputs_embeds] if output_hidden_states else None
        last_states = []
        for layer, h0 in zip(self.layers, states, strict=True):
            if _needs_input_grad(layer, hidden_states):
                # A new leaf: the caller's tensor keeps requires_grad=False.
                hidden_states = hidden_states.detach().requires_grad_()
            hidden_states, h_n, shortcut = layer(hidden_states, h0, mask, shortcut)
            last_states.append(h_n)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
        if hook is not None:
            hidden_states, all_hidden_states, last_states = hook.post_forward(
                self.rnn, (hidden_states, all_hidden_states, last_states))
        return hidden_states, all_hidden_states, last_states

    def _embed(self, input_ids, inputs_embeds) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            if self.embeddings is None:
                raise ValueError(
                    f"input_ids needs a token model, but this config has input_size="
                    f"{self.config.input_size}: pass inputs_embeds of shape (batch, time, "
                    f"{self.config.input_size}) instead"
                )
            if input_ids.dim() != 2:
                raise ValueError(
                    f"input_ids must have shape (batch, time), got {tuple(input_ids.shape)}"
                )
            try:
                return self.embeddings(input_ids)
            except IndexError as e:  # the CPU embedding's message names no id and no size
                raise ValueError(
                    f"input_ids holds ids from {int(input_ids.min())} to {int(input_ids.max())}, "
                    f"but the embedding has vocab_size={self.embeddings.num_embeddings} rows "
                    "(ids 0 to vocab_size - 1): a tokenizer's padding or special ids need "
                    "vocab_size=len(tokenizer)"
                ) from e
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.rnn_input_size:
            raise ValueError(
                f"inputs_embeds must have shape (batch, time, {self.rnn_input_size}), got "
                f"{tuple(inputs_embeds.shape)}"
            )
        _check_embeds_dtype(inputs_embeds, self.rnn.weight_ih_l0.dtype)
        return inputs_embeds

    def _cache_layers(self, cache: Cache) -> list:
        layers = getattr(cache, "layers", [])
        if len(layers) != self.config.num_hidden_layers or not all(
            isinstance(layer, LinearAttentionCacheLayerMixin) for layer in layers
        ):
            raise ValueError(
                "cache must hold one recurrent-state layer per IndRNN layer: build it with "
                "IndRNNCache(model.config)"
            )
        return layers

    def _holds_state(self, cache: Cache | None) -> bool:
        """Whether ``cache`` holds a state from earlier steps (the next steps start from it)."""
        return cache is not None and any(
            layer.has_previous_state[0] for layer in self._cache_layers(cache))

    def _read_states(self, cache: Cache | None, batch_size: int) -> list:
        """Each layer's cached state as its (directions, batch, hidden) h0, or Nones."""
        if cache is None:
            return [None] * self.config.num_hidden_layers
        layers = self._cache_layers(cache)
        if not all(layer.has_previous_state[0] for layer in layers):
            return [None] * len(layers)
        states = [layer.recurrent_states[0] for layer in layers]
        if states[0].shape[0] != batch_size:
            raise ValueError(
                f"cache holds states for batch size {states[0].shape[0]}, but the input has "
                f"batch size {batch_size} (generate() with num_beams or num_return_sequences "
                f"n repeats each row n times: build the cache on input_ids.repeat_interleave(n, 0))"
            )
        # Copies: the cache is updated in place after this call, while autograd may still
        # need each h0 (training with a cache).
        return [state.transpose(0, 1).clone(memory_format=torch.contiguous_format)
                for state in states]

    def _write_states(self, cache: Cache, last_states: list) -> None:
        # Stored batch-first, (batch, directions, hidden) per layer, so that the cache's beam
        # reordering (index_select on dim 0) applies; kept in the float32 the kernel returns.
        for layer, h_n in zip(self._cache_layers(cache), last_states, strict=True):
            state = layer.recurrent_states[0]
            if state is not None and not layer.has_previous_state[0] and (
                    state.shape != (h_n.shape[1], h_n.shape[0], h_n.shape[2])
                    or state.device != h_n.device):
                # A reset cache (reset() zeroes the states in place) taking another batch
                # size or device: the states are made again.
                layer.recurrent_states[0] = None
                layer.is_recurrent_states_initialized[0] = False
            if torch.compiler.is_exporting():
                # An exported program returns the new cache and leaves the one it is given as
                # it was: an in-place copy would change the given states but not its step
                # count, which crosses the graph as a new tensor.
                layer.recurrent_states[0] = h_n.transpose(0, 1)
                layer.is_recurrent_states_initialized[0] = True
            else:
                layer.update_recurrent_state(h_n.transpose(0, 1), 0)
            # LinearAttentionLayer only sets this flag from update_conv_state; without it the
            # next step would start again from zeros.
            layer.has_previous_state[0] = True


def _check_embeds_dtype(inputs_embeds: torch.Tensor, weight_dtype: torch.dtype) -> None:
    """The input/weight dtype check torch.nn.RNN makes, before F.linear's own message about
    m1 and m2. Under autocast a float16/bfloat16/float32 input is cast like the weights."""
    if inputs_embeds.dtype == weight_dtype:
        return
    if not inputs_embeds.dtype.is_floating_point:
        raise ValueError(
            f"inputs_embeds must be a floating-point tensor like the model's weights "
            f"({weight_dtype}), got {inputs_embeds.dtype}: convert it with "
            f"inputs_embeds.to({weight_dtype}) (token ids go in input_ids)"
        )
    if inputs_embeds.dtype != torch.float64 and torch.is_autocast_enabled(
        inputs_embeds.device.type
    ):
        return
    raise ValueError(
        f"inputs_embeds dtype ({inputs_embeds.dtype}) does not match the model's weight dtype "
        f"({weight_dtype}): convert the input with inputs_embeds.to({weight_dtype}), or the "
        f"model with model.to({inputs_embeds.dtype})"
    )


def _step_mask(
    attention_mask, batch_size: int, seq_len: int, cached: bool = False
) -> torch.Tensor | None:
    """The (batch, time) bool mask of the steps being run. With a cache (cached generation)
    the mask may also cover earlier steps, which the cache holds: its last `seq_len` columns
    are this call's."""
    if attention_mask is None:
        return None
    if (
        attention_mask.dim() != 2
        or attention_mask.shape[0] != batch_size
        or attention_mask.shape[1] < seq_len
        or (attention_mask.shape[1] > seq_len and not cached)
    ):
        raise ValueError(
            f"attention_mask must have the (batch, time) shape of the input, ({batch_size}, "
            f"{seq_len}), got {tuple(attention_mask.shape)}"
            + ("" if cached else " (a longer mask is taken only with a cache of the earlier steps)")
        )
    return attention_mask[:, attention_mask.shape[1] - seq_len :].bool()


def _sequence_starts(position_ids, mask, batch_size: int, seq_len: int):
    """Where packed sequences start again inside a row: the (batch, time) bool tensor of the
    steps at position 0 after a real step of their row, or None for positions that follow
    the steps (or none given). Positions that jump otherwise raise.

    `DataCollatorWithFlattening` packs sequences into one row, each starting at position 0.
    """
    if position_ids is None:
        return None
    if (not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2
            or position_ids.shape[0] not in (1, batch_size) or position_ids.shape[1] != seq_len):
        raise ValueError(f"position_ids must have shape ({batch_size}, {seq_len}) or (1, "
                         f"{seq_len}), got {_shape_of(position_ids)}")
    position_ids = position_ids.expand(batch_size, seq_len)
    if mask is not None:  # a collator's CPU positions for a model on a GPU
        position_ids = position_ids.to(mask.device)
    real = (torch.ones(batch_size, seq_len, dtype=torch.bool, device=position_ids.device)
            if mask is None else mask)
    # A sequence starts at a step at position 0 after a real step of its row, real or padding
    # (its padding then passes a zero state on). Left padding's steps before the first real
    # one are no sequence of their own.
    starts = (position_ids == 0) & ((real.cumsum(1) - real.long()) > 0)
    # Between a real step and the real step before it in the same sequence, the position goes
    # up by one, or by the steps between them (padding counted or not).
    steps = torch.arange(seq_len, device=position_ids.device).expand(batch_size, seq_len)
    last_real = torch.where(real, steps, -1).cummax(1).values
    before = nn.functional.pad(last_real[:, :-1], (1, 0), value=-1)
    sequence = starts.cumsum(1)
    prior = before.clamp(min=0)
    rise = position_ids - position_ids.gather(1, prior)
    jumps = (real & (before >= 0) & (sequence == sequence.gather(1, prior))
             & (rise != 1) & (rise != steps - before))
    if torch.jit.is_tracing():  # the check would be fixed at trace time, never made again
        raise ValueError("position_ids cannot be traced with torch.jit.trace: leave them out "
                         "(the recurrent state carries the position)")
    if torch.compiler.is_compiling():
        torch._assert_async(~(jumps.any() | starts.any()),
                            "position_ids jump or restart inside a row: packed sequences "
                            "(position_ids restarting at 0) run in eager mode only")
        return None
    jumped, restarted = torch.stack([jumps.any(), starts.any()]).tolist()  # one host sync
    if jumped:
        raise ValueError("position_ids jump inside a row: between two real steps they must go "
                         "up by one, or restart at 0 where a packed sequence begins")
    return starts if restarted else None


def _unpacked_layout(starts: torch.Tensor):
    """For packed rows with sequences starting at `starts` (and each row's step 0): the place
    of each (batch, time) step, flattened, in a (sequences, longest) right-padded layout, and
    that layout's shape."""
    starts = starts.clone()
    starts[:, 0] = True
    flat = starts.flatten()
    sequence = flat.cumsum(0) - 1
    first = flat.nonzero().squeeze(1)
    lengths = torch.diff(first, append=torch.tensor([flat.numel()], device=first.device))
    longest = int(lengths.max())
    step = torch.arange(flat.numel(), device=flat.device) - first[sequence]
    return sequence * longest + step, (first.numel(), longest)


def _mask_from_pads(config, input_ids, attention_mask):
    """The classifiers' mask: the given one, or without one, input_ids that are not
    `config.pad_token_id`. transformers' own sequence classifiers likewise pool at the last
    token that is not padding when no mask is given; here the pads are masked throughout, so
    left padding, mean pooling and the backward direction are exact as well. Always a mask,
    even without pads (the same result as none): no host sync and no data-dependent branch
    under torch.compile."""
    if attention_mask is not None or input_ids is None or config.pad_token_id is None:
        return attention_mask
    return input_ids != config.pad_token_id


class IndRNNForSequenceClassification(IndRNNPreTrainedModel):
    """IndRNN with a linear head on one vector per sequence (`config.classifier_pooling`).

    `config.problem_type` chooses the loss: "regression" (MSE), "single_label_classification"
    (cross-entropy) or "multi_label_classification" (BCE with logits); when unset it is
    inferred from `num_labels` and the labels' dtype, as in transformers' own models.
    """

    def __init__(self, config: IndRNNConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = IndRNNModel(config)
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = _head(config.rnn_output_units * config.num_directions, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> tuple | SequenceClassifierOutput:
        r"""
        attention_mask: as in `IndRNNModel.forward`. Without it, input_ids equal to
            `config.pad_token_id` are padding (transformers' own sequence classifiers likewise
            pool at the last token that is not padding): pass a mask where that id is also a
            real token (e.g. a pad id set to the eos id).
        labels: (batch,) class ids, (batch, num_labels) multi-hot targets, or (batch,) /
            (batch, num_labels) regression targets.
        num_items_in_batch: accepted for the Trainer and unused, as in transformers' own
            sequence classifiers (one target per sequence: the loss is a mean).
        Other arguments as in `IndRNNModel.forward`; any other keyword is a TypeError.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        attention_mask = _mask_from_pads(self.config, input_ids, attention_mask)
        given = input_ids if input_ids is not None else inputs_embeds
        if position_ids is not None and given is not None and given.dim() >= 2:
            shape = given.shape[:2]  # refused before the model runs the packed rows
            if _sequence_starts(position_ids, _step_mask(attention_mask, *shape),
                                *shape) is not None:
                raise ValueError(
                    "position_ids restart inside a row (packed sequences), but a sequence "
                    "classifier pools one output per row: give the sequences as a padded batch")
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            output_attentions=output_attentions,
            position_ids=position_ids,
        )
        pooled = self._pool(outputs.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else self._loss(logits, labels)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states
        )
        return output if return_dict else output.to_tuple()

    def _pool(self, hidden_states: torch.Tensor, attention_mask) -> torch.Tensor:
        batch_size, seq_len = hidden_states.shape[:2]
        mask = _step_mask(attention_mask, batch_size, seq_len)
        if self.config.classifier_pooling == "mean":
            if mask is None:
                return hidden_states.mean(1)
            weights = mask.unsqueeze(-1).to(hidden_states.dtype)
            return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1)
        steps = torch.arange(seq_len, device=hidden_states.device).expand(batch_size, seq_len)
        if mask is None:
            last = torch.full((batch_size,), seq_len - 1, device=hidden_states.device)
            first = torch.zeros_like(last)
        else:
            last = torch.where(mask, steps, -1).amax(1).clamp(min=0)
            first = torch.where(mask, steps, seq_len).amin(1).clamp(max=seq_len - 1)
        rows = torch.arange(batch_size, device=hidden_states.device)
        hidden = self.config.rnn_output_units
        forward = hidden_states[rows, last, :hidden]
        if not self.config.bidirectional:
            return forward
        # The backward direction has read the whole sequence at its first real step.
        return torch.cat([forward, hidden_states[rows, first, hidden:]], dim=-1)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        logits = logits.float()
        problem = self.config.problem_type
        if problem == "single_label_classification":
            if labels.numel() != logits.shape[0]:
                raise ValueError(f"labels must hold one class id per sequence for "
                                 f"{problem}: {logits.shape[0]}, got shape {tuple(labels.shape)}")
            return nn.functional.cross_entropy(logits.view(-1, self.num_labels),
                                               _class_ids(labels).view(-1))
        if problem == "regression" and self.num_labels == 1:
            if labels.numel() != logits.shape[0]:
                raise ValueError(f"labels must hold one value per sequence for regression "
                                 f"with num_labels=1: {logits.shape[0]}, got shape "
                                 f"{tuple(labels.shape)}")
            return nn.functional.mse_loss(logits.squeeze(-1), labels.float().view(-1))
        if problem in ("regression", "multi_label_classification"):
            if labels.shape != logits.shape:  # mse_loss would broadcast (batch,) over (batch, n)
                raise ValueError(f"labels must have shape (batch, num_labels) = "
                                 f"{tuple(logits.shape)} for {problem}, got {tuple(labels.shape)}")
            if problem == "regression":
                return nn.functional.mse_loss(logits, labels.float())
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        raise ValueError(
            "problem_type must be 'regression', 'single_label_classification' or "
            f"'multi_label_classification', got {self.config.problem_type!r}"
        )


class IndRNNForTokenClassification(IndRNNPreTrainedModel):
    """IndRNN with a linear head on every step (tagging); labels -100 are ignored."""

    accepts_loss_kwargs = True

    def __init__(self, config: IndRNNConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = IndRNNModel(config)
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = _head(config.rnn_output_units * config.num_directions, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> tuple | TokenClassifierOutput:
        r"""
        attention_mask: as in `IndRNNModel.forward`. Without it, input_ids equal to
            `config.pad_token_id` are padding: pass a mask where that id is also a real token.
        labels: (batch, time) class ids; -100 marks steps without a label (e.g. padding).
        num_items_in_batch: the loss is the sum over labelled steps divided by this (the
            Trainer's count over all gradient-accumulation steps) instead of their mean.
        Other arguments as in `IndRNNModel.forward`; any other keyword is a TypeError.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        attention_mask = _mask_from_pads(self.config, input_ids, attention_mask)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            output_attentions=output_attentions,
            position_ids=position_ids,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None if labels is None else _token_loss(logits, labels, num_items_in_batch)
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states
        )
        return output if return_dict else output.to_tuple()


def _uncounted_cache_error(cache) -> ValueError:
    # generate() feeds the whole prompt and the cache must say how much of it it holds; a
    # DynamicCache of recurrent states cannot, and the held steps would run twice.
    return ValueError(
        "generate() continues from a cache that already holds steps only as an "
        "IndRNNCache(model.config), which counts them; this cache is a "
        f"{type(cache).__name__}. Build the prompt's cache with IndRNNCache, or continue "
        "with the model's forward, which takes either"
    )


# generate()'s note to prepare_inputs_for_generation that the prompt is new steps, all fed.
_WHOLE_PROMPT = -1


def _unseen_steps(seen: int, input_ids, attention_mask, inputs_embeds) -> int | None:
    """How many of the prompt's last steps a cache that has seen `seen` steps must still read,
    or None to feed the prompt whole.

    generate() continuing from a cache gets either the whole sequence (the steps the cache has
    seen, then new ones), or only the new steps with an attention mask over the whole
    sequence. transformers 5.2x trims the whole-sequence form itself only for caches with
    attention layers; a recurrent state fed the seen steps again would absorb them twice.
    """
    if inputs_embeds is not None:
        length = inputs_embeds.shape[1]  # always the whole sequence
    elif attention_mask is None or attention_mask.shape[1] == input_ids.shape[1]:
        length = input_ids.shape[1]
    else:
        return None  # only the new steps
    if length <= seen:
        raise ValueError(
            f"the cache has seen {seen} steps but the prompt has {length}: pass the whole "
            f"sequence (the {seen} steps the cache has seen, then at least one new step), or "
            f"only the new steps with an attention_mask over the whole sequence"
        )
    return length - seen


BATCH_NORM_LEAK = (
    "IndRNNForCausalLM with norm='batch': batch norm's training statistics pool every step of "
    "the batch, so in training the output at a step depends on later tokens, the ones the "
    "model is to predict. The Deep IndRNN paper's language models take statistics per time "
    "step and position, which indrnn_triton does not implement; norm='layer' (or None) has no "
    "such dependence. Evaluation and generation use the running statistics and are causal."
)


class IndRNNForCausalLM(IndRNNPreTrainedModel, GenerationMixin):
    """IndRNN language model; `generate()` carries one float32 recurrent state per layer."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    accepts_loss_kwargs = True

    def __init__(self, config: IndRNNConfig):
        if config.bidirectional:
            raise ValueError("IndRNNForCausalLM needs bidirectional=False, got True")
        if config.input_size is not None:
            raise ValueError(
                f"IndRNNForCausalLM needs token inputs: input_size must be None, got "
                f"{config.input_size}"
            )
        if config.norm == "batch":
            warnings.warn(BATCH_NORM_LEAK, stacklevel=2)
        super().__init__(config)
        self.model = IndRNNModel(config)
        self.dropout = nn.Dropout(config.head_dropout)
        self.lm_head = _head(config.rnn_output_units, config.vocab_size, bias=False)
        self.post_init()

    def generate(self, inputs=None, *args, **kwargs):
        prompt = kwargs.get("inputs_embeds")
        if prompt is None:
            prompt = inputs if inputs is not None else kwargs.get("input_ids")
        if isinstance(prompt, torch.Tensor) and prompt.dim() >= 2 and prompt.shape[1] == 0:
            # transformers would fail with an IndexError deep inside generate().
            raise ValueError(
                f"the prompt is empty: generate() needs at least one step, got a prompt of "
                f"shape {tuple(prompt.shape)} (start from a token such as bos_token_id)"
            )
        cache = _cache_argument(kwargs.get("cache"), kwargs.get("past_key_values"))
        # generate(inputs, generation_config, ...): the config may come second, positionally.
        config = kwargs.get("generation_config") or (args[0] if args else None)
        config = config or self.generation_config
        chunk_size = kwargs.get("prefill_chunk_size", getattr(config, "prefill_chunk_size", None))
        if getattr(config, "is_assistant", False):
            # The draft model of transformers' assisted generation: its cache is cropped back
            # to the tokens the main model accepted, so it records the states of this round's
            # steps (the draft, and the two steps fed before it when the drafts share the main
            # model's tokenizer).
            if cache is None:
                cache = kwargs["cache"] = IndRNNCache(self.config)
            if isinstance(cache, IndRNNCache):
                # A crop further back (a different assistant tokenizer re-reads a few tokens)
                # returns to an earlier state, and the next round feeds the steps from there.
                cache._refeeds = True
                draft = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
                cache.activate_past_recording(None if draft is None else draft + 2)
                # With another tokenizer, transformers re-reads the last tokens, which may
                # change ids the cache has seen without cropping back to them.
                changed = cache._first_changed_step(
                    kwargs.get("input_ids") if inputs is None else inputs)
                if changed is not None:
                    cache.crop(changed - cache.seen_steps)
        if not isinstance(cache, IndRNNCache) and self.model._holds_state(cache):
            raise _uncounted_cache_error(cache)
        if chunk_size is not None and cache is not None and not isinstance(cache, IndRNNCache):
            # transformers asks such a cache for its length, which recurrent layers lack.
            raise ValueError(f"prefill_chunk_size needs an IndRNNCache(model.config) or no cache "
                             f"(one is then made), got a {type(cache).__name__}")
        if isinstance(cache, IndRNNCache) and cache.seen_steps:
            if kwargs.get("use_cache", config.use_cache) is False:
                raise ValueError(
                    f"use_cache=False with a cache that has seen {cache.seen_steps} steps: "
                    "generate() continues from the cache by updating it, which needs use_cache")
            # How much of the prompt the cache has not seen, read here: generate() drops an
            # all-ones attention_mask before prepare_inputs_for_generation, and with it the
            # sign that only the new steps were given.
            unseen = _unseen_steps(cache.seen_steps,
                                   kwargs.get("input_ids") if inputs is None else inputs,
                                   kwargs.get("attention_mask"), kwargs.get("inputs_embeds"))
            if unseen is not None and chunk_size is not None:
                given = ("inputs_embeds are" if kwargs.get("inputs_embeds") is not None
                         else "this prompt is")
                raise ValueError(
                    "prefill_chunk_size with a cache that has seen steps needs only the new "
                    "steps, as input_ids with an attention_mask over the whole sequence: "
                    f"{given} the whole sequence, whose chunks would feed the seen steps again")
            kwargs["_unseen_prompt_steps"] = _WHOLE_PROMPT if unseen is None else unseen
        elif chunk_size is not None:
            # Each chunk is new. transformers chunks the prefill only into a cache it is given:
            # it builds none for this model, whose forward makes one.
            if cache is None and kwargs.get("use_cache", config.use_cache) is not False:
                kwargs["cache"] = IndRNNCache(self.config)
            kwargs["_unseen_prompt_steps"] = _WHOLE_PROMPT
        return super().generate(inputs, *args, **kwargs)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build its own DynamicCache: forward creates an IndRNNCache.
        return False

    def prepare_inputs_for_generation(
        self, input_ids, attention_mask=None, inputs_embeds=None, _unseen_prompt_steps=None,
        **kwargs
    ):
        # generate(stop_strings=..., tokenizer=tok) passes its tokenizer on to the forward.
        kwargs.pop("tokenizer", None)
        cache = _cache_argument(kwargs.get("cache"), kwargs.get("past_key_values"))
        if _unseen_prompt_steps is not None:
            # Set by generate() (this model's), which has read the prompt whole: the number
            # of the prompt's last steps to feed, or _WHOLE_PROMPT (also each prefill chunk).
            # The prefill is the call without a next_sequence_length (each later step has 1);
            # for a draft model (assisted generation) is_first_iteration is False there.
            if (kwargs.get("next_sequence_length") is None
                    and _unseen_prompt_steps != _WHOLE_PROMPT):
                kwargs["next_sequence_length"] = _unseen_prompt_steps
        elif (
            kwargs.get("is_first_iteration")
            and not isinstance(cache, IndRNNCache)
            and self.model._holds_state(cache)
        ):
            raise _uncounted_cache_error(cache)
        elif (
            kwargs.get("is_first_iteration")
            and kwargs.get("next_sequence_length") is None
            and isinstance(cache, IndRNNCache)
            and cache.seen_steps
        ):
            kwargs["next_sequence_length"] = _unseen_steps(
                cache.seen_steps, input_ids, attention_mask, inputs_embeds
            )
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        # The recurrence takes the plain (batch, time) mask, never the per-layer-type masks some
        # transformers versions build for attention layers.
        if attention_mask is not None:
            model_inputs["attention_mask"] = attention_mask
        # Positions mean nothing to the state (a draft model of assisted generation is also
        # given the main model's): not checked at every step.
        model_inputs.pop("position_ids", None)
        return model_inputs

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        cache_params: Cache | None = None,
        output_attentions: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> tuple | CausalLMOutputWithPast:
        r"""
        labels: (batch, time) token ids, shifted inside the model (labels = input_ids works);
            -100 marks positions without a target. With an `attention_mask`, a target predicted
            from a step before the row's first real step (left padding: the first real token)
            is left out, as it is absent from the sequence unpadded; the targets at padding
            positions are kept (the collators make them -100).
        shift_labels (keyword only): (batch, time) targets already shifted, one per step of
            the logits (the Trainer passes them under context parallelism); used instead of
            `labels`. Taken from `**kwargs`, as in transformers' own models: the Trainer
            looks for labels among the signature's names containing "label".
        cache_position (keyword only): accepted and unused, as in `IndRNNModel.forward`. Kept
            out of the signature: generate() (transformers 5.24) builds it only for a custom
            model whose forward names it, and warns that such a model should drop it;
            earlier versions may pass it to every model.
        num_items_in_batch: the loss is the sum over targets divided by this (the Trainer's
            count over all gradient-accumulation steps) instead of their mean.
        logits_to_keep: compute logits for the last this-many steps only (0: all steps).
        Other arguments as in `IndRNNModel.forward`; any other keyword is a TypeError.
        """
        shift_labels = kwargs.pop("shift_labels", None)
        kwargs.pop("cache_position", None)
        if kwargs:
            raise TypeError(
                f"IndRNNForCausalLM.forward() got unexpected keyword argument(s): "
                f"{', '.join(sorted(kwargs))}"
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cache = _cache_argument(cache, past_key_values, cache_params)
        # Read before the forward updates the cache: whether the steps start from a state.
        from_state = self.model._holds_state(cache)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            output_attentions=output_attentions,
            position_ids=position_ids,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden_states = hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(self.dropout(hidden_states))
        loss = None
        if shift_labels is not None or labels is not None:
            targets, step_logits = ((shift_labels, logits) if shift_labels is not None
                                    else (labels[:, 1:], logits[:, :-1]))
            if attention_mask is not None and not from_state:
                targets = _without_targets_before_the_first_real_step(
                    targets, attention_mask, outputs.last_hidden_state.shape[1])
            shape = outputs.last_hidden_state.shape[:2]
            starts = None if from_state or position_ids is None else _sequence_starts(
                position_ids, _step_mask(attention_mask, *shape, cached=cache is not None),
                *shape)
            if starts is not None:
                # Packed sequences: no target across a boundary, as labels = input_ids gives
                # (DataCollatorWithFlattening marks them -100 itself).
                ends = nn.functional.pad(starts[:, 1:], (0, 1))  # each sequence's last step
                targets = targets.masked_fill(ends[:, : targets.shape[1]].to(targets.device),
                                              -100)
            loss = _token_loss(step_logits, targets, num_items_in_batch)
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD)},
        )
        return output if return_dict else output.to_tuple()


# The Trainer shifts the labels of its label-smoothed loss (label_smoothing_factor > 0) only for
# the class names in this static table of transformers' own causal LMs, which registering with
# AutoModelForCausalLM does not extend: without the entry it would smooth logits[t] against
# labels[t]. Set here, not at the package's registration, so that a folder loaded with
# trust_remote_code=True gets it too. Every reader of the table compares class names or model
# types, and the lazy Auto mappings built on it skip model types missing from transformers'
# own config table, so no transformers.models.indrnn module is ever imported.
MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(IndRNNConfig.model_type, IndRNNForCausalLM.__name__)

__all__ = [
    "IndRNNCache",
    "IndRNNPreTrainedModel",
    "IndRNNModel",
    "IndRNNForSequenceClassification",
    "IndRNNForTokenClassification",
    "IndRNNForCausalLM",
]
