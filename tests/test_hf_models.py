"""The IndRNN models: outputs, padding, losses, save/load, checkpointing, torch.compile."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers.modeling_utils
from hf_helpers import (
    HEADS,
    INIT_OPTIONS,
    PAD,
    VOCAB,
    assert_loaded_or_fresh,
    cache_of,
    head_logits,
    nan_empty_like,
    padded_batch,
    random_tokens,
    tiny_model,
)
from transformers import AutoModel, AutoModelForSequenceClassification
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

import hf_integration
from hf_integration import (
    IndRNNCache,
    IndRNNConfig,
    IndRNNForCausalLM,
    IndRNNForSequenceClassification,
    IndRNNForTokenClassification,
    IndRNNModel,
)

OUTPUT_CLASSES = {
    IndRNNModel: BaseModelOutputWithPast,
    IndRNNForSequenceClassification: SequenceClassifierOutput,
    IndRNNForTokenClassification: TokenClassifierOutput,
    IndRNNForCausalLM: CausalLMOutputWithPast,
}
BIDIRECTIONAL_HEADS = [IndRNNModel, IndRNNForSequenceClassification, IndRNNForTokenClassification]


@pytest.mark.parametrize("cls", list(OUTPUT_CLASSES))
def test_output_class_shapes_and_tuple(cls):
    model = tiny_model(cls)
    ids = torch.randint(3, VOCAB, (2, 7))
    out = model(input_ids=ids, output_hidden_states=True)
    assert isinstance(out, OUTPUT_CLASSES[cls])
    logits = head_logits(model, input_ids=ids)
    want = {
        IndRNNModel: (2, 7, 12),
        IndRNNForSequenceClassification: (2, 3),
        IndRNNForTokenClassification: (2, 7, 3),
        IndRNNForCausalLM: (2, 7, VOCAB),
    }[cls]
    assert tuple(logits.shape) == want
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert out.hidden_states[0].shape == (2, 7, 12)  # the embeddings
    as_tuple = model(input_ids=ids, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], logits)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["unidirectional", "bidirectional"])
def test_hidden_states_are_the_input_then_every_layers_output(bidirectional):
    model = tiny_model(IndRNNModel, num_hidden_layers=3, bidirectional=bidirectional)
    ids, mask = padded_batch(random_tokens([4, 7]), "left")
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    embeds = model.embeddings(ids)
    _, _, layers = model.rnn(embeds, mask=mask, output_layers=True)
    assert len(out.hidden_states) == 4
    assert torch.equal(out.hidden_states[0], embeds)
    for hidden, layer in zip(out.hidden_states[1:], layers, strict=True):
        assert hidden.shape == (2, 7, 24 if bidirectional else 12)
        assert torch.equal(hidden, layer)
    assert out.hidden_states[-1] is out.last_hidden_state


@pytest.mark.parametrize("cls", list(OUTPUT_CLASSES))
def test_inputs_embeds_equal_input_ids(cls):
    model = tiny_model(cls)
    ids = torch.randint(3, VOCAB, (2, 6))
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(
        head_logits(model, inputs_embeds=embeds), head_logits(model, input_ids=ids)
    )


def test_continuous_inputs_model():
    model = tiny_model(IndRNNForSequenceClassification, input_size=2, num_labels=1)
    assert model.get_input_embeddings() is None
    x = torch.randn(4, 9, 2)
    out = model(inputs_embeds=x, labels=torch.randn(4))
    assert out.logits.shape == (4, 1) and out.loss.ndim == 0
    with pytest.raises(ValueError, match="input_ids"):
        model(input_ids=torch.zeros(4, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"inputs_embeds must have shape \(batch, time, 2\)"):
        model(inputs_embeds=torch.randn(4, 9, 3))


def test_input_errors_name_the_argument():
    model = tiny_model(IndRNNModel)
    ids = torch.randint(3, VOCAB, (2, 5))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(input_ids=ids, inputs_embeds=model.embeddings(ids))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()
    with pytest.raises(ValueError, match=r"attention_mask must have the \(batch, time\) shape"):
        model(input_ids=ids, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="bidirectional=False"):
        IndRNNForCausalLM(tiny_model(IndRNNModel, bidirectional=True).config)
    with pytest.raises(ValueError, match="cache"):
        model(input_ids=ids, cache=object(), use_cache=True)
    bidirectional = tiny_model(IndRNNModel, bidirectional=True)
    assert cache_of(bidirectional(input_ids=ids)) is None
    with pytest.raises(ValueError, match="bidirectional=False"):
        bidirectional(input_ids=ids, use_cache=True)


@pytest.mark.parametrize("cls", list(OUTPUT_CLASSES))
def test_attention_mask_wider_than_the_input_without_a_cache_raises(cls):
    model = tiny_model(cls)
    ids = torch.randint(3, VOCAB, (2, 5))
    want = r"shape of the input, \(2, 5\), got \(2, 7\).*longer mask is taken only with a cache"
    with pytest.raises(ValueError, match=want):
        model(input_ids=ids, attention_mask=torch.ones(2, 7, dtype=torch.long))


def test_attention_mask_covering_the_cached_steps_is_taken():
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :2] = 0  # left padding, seen by the first call only
    first = model(input_ids=ids[:, :4], attention_mask=mask[:, :4])
    second = model(input_ids=ids[:, 4:], attention_mask=mask, cache=cache_of(first))
    torch.testing.assert_close(second.logits,
                               model(input_ids=ids, attention_mask=mask).logits[:, 4:])
    # The causal LM with labels takes what the model takes (it raised on the mask's width
    # when the given cache held no state yet).
    ones = torch.ones(2, 7, dtype=torch.long)
    out = model(input_ids=ids[:, :4], attention_mask=ones, cache=IndRNNCache(model.config),
                labels=ids[:, :4])
    torch.testing.assert_close(out.loss, model(input_ids=ids[:, :4], labels=ids[:, :4]).loss)


def _positions(mask):
    """transformers' position_ids of a padded batch: 0, 1, ... over real steps, 1 at padding."""
    return (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)


@pytest.mark.parametrize("cls", list(OUTPUT_CLASSES))
def test_position_ids_that_follow_the_steps_change_nothing(cls):
    """position_ids were a TypeError (transformers' Mamba and RWKV accept them). Positions that
    follow the steps give the outputs without them; jumps and other shapes raise."""
    model = tiny_model(cls)
    ids, mask = padded_batch(random_tokens([6, 3]), "left")
    want = head_logits(model, input_ids=ids, attention_mask=mask)
    got = head_logits(model, input_ids=ids, attention_mask=mask, position_ids=_positions(mask))
    torch.testing.assert_close(got, want)
    full = torch.ones_like(mask)
    torch.testing.assert_close(
        head_logits(model, input_ids=ids, attention_mask=full, position_ids=torch.arange(6)[None]),
        head_logits(model, input_ids=ids, attention_mask=full))
    with pytest.raises(ValueError, match="position_ids jump inside a row"):
        model(input_ids=ids, attention_mask=full, position_ids=torch.tensor([[0, 1, 2, 4, 5, 6]]))
    for bad in (torch.arange(5), torch.zeros(3, 6, dtype=torch.long), [[0, 1, 2, 3, 4, 5]]):
        with pytest.raises(ValueError, match=r"position_ids must have shape \(2, 6\) or \(1, 6\)"):
            model(input_ids=ids, attention_mask=mask, position_ids=bad)


def _packed_rows(seqs_per_row):
    """Rows of sequences back to back (positions restarting at 0), right-padded to one width:
    (input_ids, attention_mask, position_ids)."""
    width = max(sum(len(s) for s in row) for row in seqs_per_row)
    ids = torch.full((len(seqs_per_row), width), PAD)
    mask = torch.zeros_like(ids)
    positions = torch.ones_like(ids)
    for b, row in enumerate(seqs_per_row):
        t = 0
        for seq in row:
            ids[b, t:t + len(seq)] = seq
            mask[b, t:t + len(seq)] = 1
            positions[b, t:t + len(seq)] = torch.arange(len(seq))
            t += len(seq)
    return ids, mask, positions


PACKED_OPTIONS = {"plain": {}, "bidirectional": dict(bidirectional=True),
                  "residual": dict(num_hidden_layers=3, residual=True, norm="layer"),
                  "dense": dict(hidden_size=8, dense_growth_rate=2, dense_block_config=[2])}


@pytest.mark.parametrize("cls, options", [
    (cls, name) for cls in (IndRNNModel, IndRNNForTokenClassification, IndRNNForCausalLM)
    for name in PACKED_OPTIONS if not (cls is IndRNNForCausalLM and name == "bidirectional")])
def test_packed_sequences_equal_each_sequence_alone(cls, options):
    """Sequences packed into rows (position_ids restarting at 0, as DataCollatorWithFlattening
    makes them) each run from a zero state: the outputs, every hidden state and the gradients
    are those of each sequence alone."""
    model = tiny_model(cls, **PACKED_OPTIONS[options])
    seqs = random_tokens([3, 5, 1, 4, 2])
    rows = [seqs[:3], seqs[3:]]
    ids, mask, positions = _packed_rows(rows)
    packed = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   output_hidden_states=True)
    for level, states in enumerate(packed.hidden_states):
        for b, row in enumerate(rows):
            t = 0
            for seq in row:
                alone = model(input_ids=seq[None], output_hidden_states=True)
                torch.testing.assert_close(states[b, t:t + len(seq)],
                                           alone.hidden_states[level][0])
                t += len(seq)
    # The gradients: those of the sequences as a padded batch.
    padded_ids, padded_mask = padded_batch(seqs, "right")
    head = (lambda out: out.last_hidden_state) if cls is IndRNNModel else (
        lambda out: out.logits)
    weight = torch.randn(head(packed).shape[-1])
    (head(packed) * weight * mask[..., None]).sum().backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    padded = model(input_ids=padded_ids, attention_mask=padded_mask)
    (head(padded) * weight * padded_mask[..., None]).sum().backward()
    for got, p in zip(packed_grads, model.parameters(), strict=True):
        torch.testing.assert_close(got, p.grad, atol=1e-5, rtol=1e-4)


def test_packed_sequence_starting_with_padding_starts_from_a_zero_state():
    """A sequence whose position-0 step is padding still starts there (it ran on from the
    sequence before); positions that jump across padding inside a sequence raise."""
    model = tiny_model(IndRNNModel)
    a, b = random_tokens([4, 2])
    ids = torch.cat([a, torch.tensor([PAD]), b])[None]
    mask = torch.tensor([[1, 1, 1, 1, 0, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
    torch.testing.assert_close(out[:, :4], model(input_ids=a[None]).last_hidden_state)
    torch.testing.assert_close(out[:, 5:], model(input_ids=b[None]).last_hidden_state)
    for gap in ([0, 1, 2, 3, 9, 5, 6], [0, 1, 2, 3, 9, 9, 6]):  # padding counted, then not
        jumped = torch.tensor([gap])
        if gap[5] == 5:
            model(input_ids=ids, attention_mask=mask, position_ids=jumped)
        else:
            with pytest.raises(ValueError, match="position_ids jump inside a row"):
                model(input_ids=ids, attention_mask=mask, position_ids=jumped)


def test_packed_causal_lm_loss_and_the_collator():
    """DataCollatorWithFlattening's batch: the loss is the padded batch's; labels = input_ids
    give the same loss (no target across a boundary), and so does a Trainer step's input."""
    from transformers import DataCollatorWithFlattening

    model = tiny_model(IndRNNForCausalLM)
    seqs = random_tokens([4, 2, 5])
    batch = DataCollatorWithFlattening()([{"input_ids": s.tolist()} for s in seqs])
    assert "attention_mask" not in batch and batch["position_ids"].shape == (1, 11)
    loss = model(**batch).loss
    ids, mask = padded_batch(seqs, "right")
    torch.testing.assert_close(loss, model(input_ids=ids, attention_mask=mask,
                                           labels=ids.masked_fill(mask == 0, -100)).loss)
    torch.testing.assert_close(model(input_ids=batch["input_ids"], labels=batch["input_ids"],
                                     position_ids=batch["position_ids"]).loss, loss)


@pytest.mark.parametrize("cls", list(OUTPUT_CLASSES))
def test_packed_sequences_refused_where_they_cannot_run(cls):
    """With a cache (a state carried over), by a sequence classifier (one output per row) and
    compiled (data-dependent shapes): a clear error, not sequences run into each other."""
    model = tiny_model(cls)
    ids, mask, positions = _packed_rows([random_tokens([3, 2])])
    if cls is IndRNNForSequenceClassification:
        with pytest.raises(ValueError, match="a sequence classifier pools one output per row"):
            model(input_ids=ids, attention_mask=mask, position_ids=positions)
    if cls in (IndRNNModel, IndRNNForCausalLM):
        for kwargs in (dict(use_cache=True), dict(cache=IndRNNCache(model.config))):
            with pytest.raises(ValueError, match="cannot be continued from or into a cache"):
                model(input_ids=ids, position_ids=positions, **kwargs)
    with pytest.raises(RuntimeError, match="packed sequences .* run in eager mode only"):
        torch.compile(model, fullgraph=True)(input_ids=ids, position_ids=positions)
    # A traced check would be fixed at trace time: positions cannot be traced.
    class Positions(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, position_ids):
            return self.model(input_ids=input_ids, position_ids=position_ids)[0]

    with pytest.raises(ValueError, match="position_ids cannot be traced with torch.jit.trace"):
        torch.jit.trace(Positions(), (ids, torch.arange(ids.shape[1])[None]))


def test_position_ids_continue_after_a_cache():
    model = tiny_model(IndRNNForCausalLM)
    ids, mask = padded_batch(random_tokens([7, 5]), "left")
    positions = _positions(mask)
    cache = cache_of(model(input_ids=ids[:, :4], attention_mask=mask[:, :4],
                           position_ids=positions[:, :4]))
    second = model(input_ids=ids[:, 4:], attention_mask=mask, cache=cache,
                   position_ids=positions[:, 4:])
    torch.testing.assert_close(second.logits,
                               model(input_ids=ids, attention_mask=mask).logits[:, 4:])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.long])
@pytest.mark.parametrize("cls", list(OUTPUT_CLASSES))
def test_inputs_embeds_of_another_dtype_say_how_to_convert(cls, dtype):
    model = tiny_model(cls)
    embeds = torch.ones(2, 5, 12, dtype=dtype)
    convert = r"inputs_embeds\.to\(torch\.float32\)"
    want = (rf"floating-point tensor.*got torch\.int64: convert it with {convert}"
            if dtype == torch.long else
            rf"inputs_embeds dtype \({dtype}\) does not match the model's weight dtype "
            rf"\(torch\.float32\): convert the input with {convert}, or the model with "
            rf"model\.to\({dtype}\)")
    with pytest.raises(ValueError, match=want):
        model(inputs_embeds=embeds)


def test_inputs_embeds_in_bfloat16_under_autocast_run():
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 5))
    embeds = model.get_input_embeddings()(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        from_bf16 = model(inputs_embeds=embeds.bfloat16()).logits
        from_fp32 = model(inputs_embeds=embeds).logits
    torch.testing.assert_close(from_bf16, from_fp32)


def _check_padding(cls, side, **overrides):
    model = tiny_model(cls, **overrides)
    seqs = random_tokens([5, 9, 2, 7])
    ids, mask = padded_batch(seqs, side)
    batched = head_logits(model, input_ids=ids, attention_mask=mask)
    for i, seq in enumerate(seqs):
        alone = head_logits(model, input_ids=seq[None])[0]
        if cls is IndRNNForSequenceClassification:
            torch.testing.assert_close(batched[i], alone)
        else:
            real = mask[i].bool()
            torch.testing.assert_close(batched[i][real], alone)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("cls", list(OUTPUT_CLASSES))
def test_padded_batch_equals_each_sequence_alone(cls, side):
    _check_padding(cls, side)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("cls", BIDIRECTIONAL_HEADS)
def test_padded_batch_bidirectional(cls, side):
    _check_padding(cls, side, bidirectional=True)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_mean_pooling(side):
    _check_padding(IndRNNForSequenceClassification, side, classifier_pooling="mean",
                   bidirectional=True)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("options", [{}, dict(bidirectional=True),
                                     dict(bidirectional=True, classifier_pooling="mean")],
                         ids=["last", "bidirectional", "mean"])
@pytest.mark.parametrize("cls", [IndRNNForSequenceClassification, IndRNNForTokenClassification])
def test_classifiers_without_a_mask_take_pad_tokens_as_padding(cls, options, side):
    """Without attention_mask the classifiers mask the config's pad_token_id (transformers'
    sequence classifiers pool at the last token that is not padding; the right-padded
    sequence used to be pooled at a pad step)."""
    model = tiny_model(cls, **options)
    ids, mask = padded_batch(random_tokens([5, 9, 2]), side)
    masked = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(model(input_ids=ids).logits, masked, rtol=0, atol=0)
    # A given mask wins (here: every step real), and without a pad id nothing is inferred.
    every_step = model(input_ids=ids, attention_mask=torch.ones_like(mask)).logits
    assert not torch.allclose(every_step, masked)
    model.config.pad_token_id = None
    torch.testing.assert_close(model(input_ids=ids).logits, every_step, rtol=0, atol=0)


def test_token_ids_beyond_the_vocabulary_name_the_id_and_the_size():
    """The CPU embedding's IndexError ("index out of range in self") becomes a message with the
    ids and vocab_size (e.g. a tokenizer's pad id = vocab_size)."""
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.tensor([[5, VOCAB]])
    with pytest.raises(ValueError, match=f"ids from 5 to {VOCAB}, but the embedding has "
                                         f"vocab_size={VOCAB} rows"):
        model(input_ids=ids)


def test_last_pooling_reads_last_and_first_real_steps():
    model = tiny_model(IndRNNForSequenceClassification, bidirectional=True)
    ids, mask = padded_batch(random_tokens([3, 6]), "right")
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = torch.cat([hidden[0, 2, :12], hidden[0, 0, 12:]])
    torch.testing.assert_close(
        model(input_ids=ids, attention_mask=mask).logits[0], model.classifier(pooled)
    )


def test_sequence_classification_losses():
    ids = torch.randint(3, VOCAB, (4, 6))
    single = tiny_model(IndRNNForSequenceClassification, num_labels=3)
    labels = torch.tensor([0, 2, 1, 2])
    out = single(input_ids=ids, labels=labels)
    assert single.config.problem_type == "single_label_classification"
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))

    multi = tiny_model(IndRNNForSequenceClassification, num_labels=3)
    targets = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
    out = multi(input_ids=ids, labels=targets)
    assert multi.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(
        out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets)
    )

    regression = tiny_model(IndRNNForSequenceClassification, num_labels=1)
    values = torch.randn(4)
    out = regression(input_ids=ids, labels=values)
    assert regression.config.problem_type == "regression"
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits[:, 0], values))


def test_class_id_labels_of_any_integer_width_and_label_shape_errors():
    """int32 class ids, which transformers' rule takes for single-label classification, failed
    in cross-entropy ("expected scalar type Long"); labels whose shape does not fit the problem
    broadcast in mse_loss (a warning, then a shape error) or failed deep in the BCE."""
    ids = torch.randint(3, VOCAB, (4, 6))
    labels = torch.tensor([0, 2, 1, 2])
    single = tiny_model(IndRNNForSequenceClassification, num_labels=3)
    loss = single(input_ids=ids, labels=labels.int()).loss
    torch.testing.assert_close(loss, single(input_ids=ids, labels=labels).loss)
    tagger = tiny_model(IndRNNForTokenClassification)
    tags = torch.randint(0, 3, (4, 6))
    torch.testing.assert_close(tagger(input_ids=ids, labels=tags.int()).loss,
                               tagger(input_ids=ids, labels=tags).loss)
    for problem, bad in [("regression", torch.randn(4)),
                         ("multi_label_classification", labels.to(torch.uint8)),
                         ("single_label_classification", labels[:3])]:
        model = tiny_model(IndRNNForSequenceClassification, num_labels=3, problem_type=problem)
        with pytest.raises(ValueError, match=f"labels must .* for {problem}"):
            model(input_ids=ids, labels=bad)
    with pytest.raises(TypeError, match="labels must hold class ids"):
        tagger(input_ids=ids, labels=tags.float())


def test_token_classification_and_lm_losses_ignore_minus_100():
    ids = torch.randint(3, VOCAB, (2, 6))
    tagger = tiny_model(IndRNNForTokenClassification)
    labels = torch.randint(0, 3, (2, 6))
    labels[0, 4:] = -100
    out = tagger(input_ids=ids, labels=labels)
    keep = labels != -100
    torch.testing.assert_close(
        out.loss, torch.nn.functional.cross_entropy(out.logits[keep], labels[keep])
    )

    lm = tiny_model(IndRNNForCausalLM)
    out = lm(input_ids=ids, labels=ids)
    torch.testing.assert_close(
        out.loss,
        torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB),
                                          ids[:, 1:].reshape(-1)),
    )


@pytest.mark.parametrize("auto_name", list(HEADS))
def test_save_load_round_trip_is_bitwise(auto_name, tmp_path):
    import transformers

    model = tiny_model(HEADS[auto_name], bidirectional=auto_name != "AutoModelForCausalLM")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = getattr(transformers, auto_name).from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    ids, mask = padded_batch(random_tokens([4, 8]), "left")
    assert torch.equal(
        head_logits(loaded, input_ids=ids, attention_mask=mask),
        head_logits(model, input_ids=ids, attention_mask=mask),
    )


@pytest.mark.parametrize("cls", [IndRNNForCausalLM, IndRNNForSequenceClassification])
def test_device_map_with_the_recurrent_weights_offloaded(cls, tmp_path):
    """`from_pretrained(device_map=..., offload_folder=...)` with the IndRNN weights on disk:
    the layers run `IndRNN.forward_layer`, not the `forward` accelerate hooks, so the model
    brings the weights in itself. Outputs, hidden states and cached generation are those of the
    model in memory (this failed: "weight_hh is on meta but pre is on cpu")."""
    model = tiny_model(cls, norm="batch", residual=True,
                       num_hidden_layers=3)
    model.save_pretrained(tmp_path / "model")
    head = "lm_head" if cls is IndRNNForCausalLM else "classifier"
    device_map = {"model.embeddings": "cpu", "model.rnn": "disk", "model.layers": "cpu",
                  head: "cpu", "dropout": "cpu"}
    loaded = cls.from_pretrained(tmp_path / "model", device_map=device_map,
                                 offload_folder=tmp_path / "offload").eval()
    assert loaded.hf_device_map["model.rnn"] == "disk"
    assert loaded.model.rnn.weight_hh_l0.device.type == "meta"
    ids, mask = padded_batch(random_tokens([4, 8]), "left")
    want = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    got = loaded(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert torch.equal(got.logits, want.logits)
    for g, w in zip(got.hidden_states, want.hidden_states, strict=True):
        assert torch.equal(g, w)
    if cls is IndRNNForCausalLM:
        kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=PAD)
        assert torch.equal(loaded.generate(ids, **kw), model.generate(ids, **kw))


@pytest.mark.parametrize("norm", ["layer", None, "batch"])
def test_causal_lm_in_training_sees_no_later_token_unless_batch_norm_warns(norm):
    """In training, logits before step 6 do not move when only later tokens change, with layer
    norm or none. Batch norm pools its statistics over every step of the batch, so they move:
    the model warns when built with it (the paper's per-step, per-position statistics are not
    implemented) and `indrnn-train text --preset paper` uses layer norm."""
    ids = torch.stack(random_tokens([10, 10, 10]))
    later = ids.clone()
    later[:, 6:] = torch.stack(random_tokens([4, 4, 4]))
    if norm == "batch":
        with pytest.warns(UserWarning, match="norm='batch'.*depends on later tokens"):
            lm = tiny_model(IndRNNForCausalLM, norm=norm)
    else:
        lm = tiny_model(IndRNNForCausalLM, norm=norm)
    lm.train()
    early = [lm(input_ids=v).logits[:, :6] for v in (ids, later)]
    assert torch.equal(*early) == (norm != "batch")
    from indrnn_train import DEFAULTS

    assert DEFAULTS["text"].norm == "layer"


def test_saved_folder_has_code_and_full_auto_map(tmp_path):
    import json

    tiny_model(IndRNNForTokenClassification).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", *HEADS}
    assert auto_map["AutoConfig"] == "configuration_indrnn.IndRNNConfig"
    for name in ("configuration_indrnn.py", "modeling_indrnn.py"):
        assert (tmp_path / name).exists()


def test_base_model_loads_into_head(tmp_path):
    base = tiny_model(IndRNNModel)
    base.save_pretrained(tmp_path)
    head = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    weight = head.classifier.weight  # not in the checkpoint: initialised by _init_weights
    assert torch.isfinite(weight).all() and 0.1 < weight.std() < 1.0  # initializer_range 0.5
    assert torch.equal(head.classifier.bias, torch.zeros(3))
    ids = torch.randint(3, VOCAB, (2, 5))
    assert torch.equal(head.model(input_ids=ids).last_hidden_state,
                       base(input_ids=ids).last_hidden_state)
    assert isinstance(AutoModel.from_config(base.config), IndRNNModel)


def test_tied_word_embeddings(tmp_path):
    lm = tiny_model(IndRNNForCausalLM, tie_word_embeddings=True)
    assert lm.lm_head.weight is lm.model.embeddings.weight
    lm.save_pretrained(tmp_path)
    loaded = IndRNNForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.model.embeddings.weight
    ids = torch.randint(3, VOCAB, (2, 5))
    assert torch.equal(loaded(input_ids=ids).logits, lm(input_ids=ids).logits)
    untied = tiny_model(IndRNNForCausalLM)
    assert untied.lm_head.weight is not untied.model.embeddings.weight


def test_state_dict_keys_are_those_of_existing_checkpoints():
    """Per-layer checkpointing blocks hold no parameters: checkpoints keep the keys of the
    IndRNN module (model.rnn.weight_ih_l0, ...) that earlier versions saved."""
    model = tiny_model(IndRNNForCausalLM, norm="batch")
    per_layer = [f"model.rnn.{name}_l{k}" for k in range(2)
                 for name in ("weight_ih", "weight_hh", "bias")]
    norms = [f"model.rnn.norms.{k}.{name}" for k in range(2)
             for name in ("weight", "running_mean", "running_var")]
    assert sorted(model.state_dict()) == sorted(
        ["model.embeddings.weight", *per_layer, *norms, "lm_head.weight"]
    )


def _count_layer_runs(model) -> list:
    """The index of every IndRNN layer run from now on, recomputations in backward included."""
    runs, forward_layer = [], model.model.rnn.forward_layer

    def counting(k, *args):
        runs.append(k)
        return forward_layer(k, *args)

    model.model.rnn.forward_layer = counting
    return runs


@pytest.mark.parametrize("case", ["sequence_classification", "causal_lm", "continuous",
                                  "norm_after_dropout_last", "dense"])
def test_gradient_checkpointing_per_layer_same_gradients(case):
    ids, mask = padded_batch(random_tokens([6, 9, 4]), "right")
    overrides = dict(num_hidden_layers=3, dropout=0.3)  # dropout: the recomputation's RNG
    if case == "norm_after_dropout_last":
        overrides.update(norm="batch", norm_position="after", dropout_last=0.4)
    if case == "dense":  # first, growth, transition: 3 layers, the growth one concatenates
        overrides.update(dense_growth_rate=4, dense_block_config=[1], dense_bottleneck=0,
                         norm="batch", norm_position="after")
    if case == "causal_lm":
        model = tiny_model(IndRNNForCausalLM, **overrides)
        inputs = {"input_ids": ids, "labels": ids}
    elif case in ("continuous", "norm_after_dropout_last", "dense"):
        model = tiny_model(IndRNNForSequenceClassification, input_size=3, num_labels=1,
                           **overrides)
        inputs = {"inputs_embeds": torch.randn(3, 9, 3), "labels": torch.randn(3)}
    else:
        model = tiny_model(IndRNNForSequenceClassification, **overrides)
        inputs = {"input_ids": ids, "labels": torch.tensor([0, 1, 2])}
    model.train()

    def grads():
        model.zero_grad()
        torch.manual_seed(1)
        model(attention_mask=mask, **inputs).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    runs = _count_layer_runs(model)
    plain = grads()
    assert runs == [0, 1, 2]
    for every_n_layers, recomputed in ((1, [2, 1, 0]), (2, [2, 0])):
        model.activation_checkpointing_enable(every_n_layers=every_n_layers)
        assert [layer.gradient_checkpointing for layer in model.model.layers] == [
            k % every_n_layers == 0 for k in range(3)
        ]
        runs.clear()
        checkpointed = grads()
        assert runs == [0, 1, 2, *recomputed]  # forward, then each checkpointed layer again
        assert plain.keys() == checkpointed.keys()
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], msg=name)
    model.activation_checkpointing_disable()
    runs.clear()
    grads()
    assert runs == [0, 1, 2]


def test_gradient_checkpointing_with_a_cache_updates_it_once():
    """The cache is written outside the checkpointed layers: the recomputation in backward
    leaves it as a run without checkpointing does."""
    model = tiny_model(IndRNNForCausalLM).train()
    ids = torch.randint(3, VOCAB, (2, 5))
    caches, losses = [], []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        with torch.no_grad():
            cache = cache_of(model(input_ids=ids[:, :2], use_cache=True))
        out = model(input_ids=ids[:, 2:], labels=ids[:, 2:], cache=cache)
        out.loss.backward()
        assert cache_of(out) is cache and cache.get_seq_length() == 5
        caches.append([layer.recurrent_states[0] for layer in cache.layers])
        losses.append(out.loss)
    assert torch.equal(losses[0], losses[1])
    for plain, checkpointed in zip(*caches, strict=True):
        assert torch.equal(plain, checkpointed)


@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_gradient_checkpointing_updates_batch_norm_statistics_once(padded, position):
    """The recomputation in backward must not move the running statistics a second time."""
    ids, mask = padded_batch(random_tokens([6, 9, 4] if padded else [9, 9, 9]), "right")
    labels = torch.tensor([0, 1, 2])
    models = [tiny_model(IndRNNForSequenceClassification, norm="batch",
                         norm_position=position).train() for _ in "ab"]
    models[1].activation_checkpointing_enable()
    for model in models:
        for _ in range(2):
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    plain, checkpointed = (dict(m.named_buffers()) for m in models)
    assert any("running_mean" in name for name in plain)
    for name, buffer in plain.items():
        torch.testing.assert_close(checkpointed[name], buffer, msg=name, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", ["continuous", "inputs_embeds"])
def test_reentrant_gradient_checkpointing_gives_every_layer_its_gradients(case):
    """Reentrant checkpointing has no backward for a block none of whose tensor inputs requires
    grad: continuous features and detached inputs_embeds must still train the IndRNN layers,
    with the gradients of a run without checkpointing, and leave the caller's tensor as it is."""
    if case == "continuous":
        model = tiny_model(IndRNNForSequenceClassification, input_size=3, num_labels=1,
                           num_hidden_layers=3)
        inputs = {"inputs_embeds": torch.randn(3, 7, 3), "labels": torch.randn(3)}
    else:
        model = tiny_model(IndRNNForCausalLM, num_hidden_layers=3)
        ids = torch.randint(3, VOCAB, (3, 7))
        inputs = {"inputs_embeds": model.get_input_embeddings()(ids).detach(), "labels": ids}
    model.train()

    def grads():
        model.zero_grad()
        model(**inputs).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert any(name.startswith("model.rnn.") for name in plain)
    for every_n_layers in (1, 2):
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": True}, every_n_layers=every_n_layers
        )
        checkpointed = grads()
        assert checkpointed.keys() == plain.keys()
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], msg=name)
    assert not inputs["inputs_embeds"].requires_grad


def test_continuous_model_checkpointing_does_not_warn_about_embeddings(monkeypatch):
    """transformers hooks the token embeddings for checkpointing and warns when a model has
    none; a continuous-input model has none by design."""
    messages = []
    monkeypatch.setattr(transformers.modeling_utils.logger, "warning_once",
                        lambda msg, *args, **kwargs: messages.append(msg))
    model = tiny_model(IndRNNForSequenceClassification, input_size=2, num_labels=1)
    model.activation_checkpointing_enable()
    assert not [m for m in messages if "input embeddings" in m]
    assert all(layer.gradient_checkpointing for layer in model.model.layers)


def test_resize_token_embeddings_of_a_continuous_model_says_it_has_none():
    model = tiny_model(IndRNNForSequenceClassification, input_size=2, num_labels=1)
    with pytest.raises(ValueError, match=r"needs token embeddings.*input_size=2"):
        model.resize_token_embeddings(10)
    model = tiny_model(IndRNNForSequenceClassification)
    model.resize_token_embeddings(VOCAB + 5)
    assert model.get_input_embeddings().weight.shape[0] == model.config.vocab_size == VOCAB + 5


def test_torch_compile_matches_eager():
    model = tiny_model(IndRNNForSequenceClassification, bidirectional=True)
    compiled = torch.compile(model)
    ids, mask = padded_batch(random_tokens([5, 8]), "left")
    labels = torch.tensor([1, 2])
    eager = model(input_ids=ids, attention_mask=mask, labels=labels)
    out = compiled(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logits, eager.logits)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # Without a mask the pads are masked too, in one graph (no data-dependent branch).
    whole = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(whole(input_ids=ids).logits, eager.logits)


def test_registration_on_import():
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

    config = AutoConfig.for_model("indrnn", vocab_size=VOCAB, hidden_size=8)
    assert isinstance(AutoModelForCausalLM.from_config(config), IndRNNForCausalLM)
    assert isinstance(AutoModelForTokenClassification.from_config(config),
                      IndRNNForTokenClassification)
    assert hf_integration.IndRNNForCausalLM._auto_class == "AutoModelForCausalLM"


def test_causal_lm_is_in_transformers_causal_lm_names_without_a_module_there():
    """The Trainer reads MODEL_FOR_CAUSAL_LM_MAPPING_NAMES to shift labels; the Auto mapping
    built on that table must still find the class without importing transformers.models.indrnn
    (which does not exist)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    )

    assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES["indrnn"] == "IndRNNForCausalLM"
    assert IndRNNConfig in MODEL_FOR_CAUSAL_LM_MAPPING
    assert MODEL_FOR_CAUSAL_LM_MAPPING[IndRNNConfig] is IndRNNForCausalLM
    assert len(MODEL_FOR_CAUSAL_LM_MAPPING) > 0
    assert "transformers.models.indrnn" not in sys.modules


DEEP_OPTIONS = [
    {"norm": "batch", "dropout": 0.1},
    {"norm": "batch", "norm_position": "after", "dropout_last": 0.2},
    {"norm": "layer", "norm_position": "after", "bidirectional": True},
    {"dense_growth_rate": 4, "dense_block_config": [2, 1], "dense_bottleneck": 2, "norm": "batch",
     "norm_position": "after", "bidirectional": True, "dropout": 0.1},
    {"norm": "layer", "residual": True, "num_hidden_layers": 3},
    {"norm": "batch", "bidirectional": True, "residual": True, "num_hidden_layers": 3},
]


@pytest.mark.parametrize("options", DEEP_OPTIONS)
def test_norm_residual_options_pad_and_round_trip(options, tmp_path):
    cls = IndRNNForTokenClassification
    model = tiny_model(cls, **options)
    model.train()
    ids = torch.randint(3, VOCAB, (4, 6))
    model(input_ids=ids, labels=ids % 3).loss.backward()  # updates batch-norm statistics
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch(random_tokens([3, 8, 5]), "left")
    assert torch.equal(head_logits(loaded, input_ids=ids, attention_mask=mask),
                       head_logits(model, input_ids=ids, attention_mask=mask))
    for side in ("left", "right"):
        batch_ids, batch_mask = padded_batch(random_tokens([3, 8, 5]), side)
        batched = head_logits(model, input_ids=batch_ids, attention_mask=batch_mask)
        for i in range(3):
            real = batch_mask[i].bool()
            torch.testing.assert_close(batched[i][real],
                                       head_logits(model, input_ids=batch_ids[i, real][None])[0])


def test_init_options_reach_the_layers():
    model = tiny_model(IndRNNModel, recurrent_max_abs=1.5, recurrent_init=[0.2, 0.3],
                       last_layer_recurrent_init="near_one")
    first, last = model.rnn.weight_hh_l0, model.rnn.weight_hh_l1
    assert 0.2 <= first.min() and first.max() <= 0.3
    assert 1 / 1.5 <= last.min() and last.max() <= 1.5


def test_both_kernel_paths_pad_and_continue(backend):
    """The models on the Triton kernels (interpreted on CPU) and on the torch CPU path."""
    classifier = tiny_model(IndRNNForSequenceClassification, bidirectional=True, hidden_size=4)
    seqs = random_tokens([2, 4])
    ids, mask = padded_batch(seqs, "left")
    batched = classifier(input_ids=ids, attention_mask=mask).logits
    for i, seq in enumerate(seqs):
        torch.testing.assert_close(batched[i], classifier(input_ids=seq[None]).logits[0])

    lm = tiny_model(IndRNNForCausalLM, hidden_size=4)
    ids = torch.randint(3, VOCAB, (2, 4))
    first = lm(input_ids=ids[:, :3])
    last = lm(input_ids=ids[:, 3:], cache=cache_of(first)).logits
    torch.testing.assert_close(last, lm(input_ids=ids).logits[:, 3:])


# ----------------------------------------------------------------------------------------------
# Weights a checkpoint lacks: initialised as in a freshly built model, loaded ones kept.
# ----------------------------------------------------------------------------------------------

LOAD_CASES = {
    "grown_by_a_layer": dict(num_hidden_layers=3),
    "norm_added": dict(norm="batch"),
    "hidden_size_changed": dict(hidden_size=16, ignore_mismatched_sizes=True),
    "rnn_keys_removed": {},
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
@pytest.mark.parametrize("cls", list(OUTPUT_CLASSES))
def test_weights_missing_from_a_checkpoint_are_initialised_like_a_new_model(
    cls, case, tmp_path, monkeypatch
):
    nan_empty_like(monkeypatch)
    model = tiny_model(cls, **INIT_OPTIONS)
    saved = {name: t.clone() for name, t in model.state_dict().items()}
    if case == "rnn_keys_removed":
        saved = {name: t for name, t in saved.items() if "rnn." not in name}
    model.save_pretrained(tmp_path, state_dict=dict(saved))  # it empties the dict it gets
    loaded = cls.from_pretrained(tmp_path, **LOAD_CASES[case])
    new = [name for name in loaded.state_dict()
           if name not in saved or saved[name].shape != loaded.state_dict()[name].shape]
    assert any("rnn." in name for name in new)  # the case does leave IndRNN tensors missing
    assert_loaded_or_fresh(loaded, saved)
    ids = torch.randint(3, VOCAB, (2, 5))
    assert torch.isfinite(head_logits(loaded.eval(), input_ids=ids)).all()


@pytest.mark.parametrize("cls", list(OUTPUT_CLASSES))
def test_model_built_on_meta_device_initialises_every_tensor(cls):
    config = tiny_model(cls, norm="batch", **INIT_OPTIONS).config
    with torch.device("meta"):
        model = cls(config)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.fill_(math.nan)  # what to_empty's memory may hold
    model.initialize_weights()
    assert_loaded_or_fresh(model, saved={})


# ----------------------------------------------------------------------------------------------
# Keyword arguments: transformers' names honoured, unknown ones rejected.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(OUTPUT_CLASSES))
def test_unknown_keyword_raises_type_error_naming_it(cls):
    model = tiny_model(cls)
    with pytest.raises(TypeError, match="labelz"):
        model(input_ids=torch.randint(3, VOCAB, (2, 5)), labelz=None)


@pytest.mark.parametrize("cls", list(OUTPUT_CLASSES))
def test_keywords_transformers_passes_are_accepted(cls):
    model = tiny_model(cls)
    ids = torch.randint(3, VOCAB, (2, 5))
    extra = {IndRNNModel: dict(cache_position=torch.arange(5)),
             IndRNNForCausalLM: dict(cache_position=torch.arange(5), logits_to_keep=1,
                                     num_items_in_batch=torch.tensor(8))}.get(
        cls, dict(num_items_in_batch=torch.tensor(8)))
    want = head_logits(model, input_ids=ids)
    got = head_logits(model, input_ids=ids, output_attentions=False, **extra)
    torch.testing.assert_close(got, want[:, -1:] if "logits_to_keep" in extra else want)
    with pytest.raises(ValueError, match="output_attentions=True: IndRNN models have no"):
        model(input_ids=ids, output_attentions=True)


MIDDLE_PADDING = [[1, 1, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0, 0]]


@pytest.mark.parametrize("side,labels_from", [("left", "collator"), ("right", "collator"),
                                               ("middle", "collator"), ("left", "input_ids")])
def test_causal_lm_loss_of_a_padded_batch_is_that_of_its_sequences(side, labels_from):
    """The causal LM's loss over a padded batch (with its attention_mask) is the mean over the
    unpadded sequences' targets. Left padding used to add each row's first real token as a
    target of the zero state before it (constant logits: ln(vocab) each); padding steps after
    a real one carry its state, so the target after them is the unpadded one. Labels that are
    the input ids keep the pads after a real step as targets (transformers' convention: the
    collators make them -100), so they are compared with left padding only."""
    model = tiny_model(IndRNNForCausalLM)
    if side == "middle":
        mask = torch.tensor(MIDDLE_PADDING)
        seqs = random_tokens(mask.sum(1).tolist())
        ids = torch.full(mask.shape, PAD)
        for row, seq in enumerate(seqs):
            ids[row, mask[row].bool()] = seq
    else:
        seqs = random_tokens([5, 9, 3])
        ids, mask = padded_batch(seqs, side)
    labels = ids.masked_fill(mask == 0, -100) if labels_from == "collator" else ids.clone()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    logits = [model(input_ids=seq[None]).logits[0, :-1] for seq in seqs]
    unpadded = F.cross_entropy(torch.cat(logits), torch.cat([seq[1:] for seq in seqs]))
    torch.testing.assert_close(loss, unpadded)


def test_shift_labels_are_the_targets_of_every_step():
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 6))
    targets = torch.randint(3, VOCAB, (2, 6))
    targets[0, 2] = -100
    out = model(input_ids=ids, shift_labels=targets)
    keep = targets != -100
    torch.testing.assert_close(
        out.loss, torch.nn.functional.cross_entropy(out.logits[keep], targets[keep])
    )
    # labels shifted by the model give the same loss as the same targets pre-shifted
    shifted = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1)
    torch.testing.assert_close(model(input_ids=ids, shift_labels=shifted).loss,
                               model(input_ids=ids, labels=ids).loss)
    # and shift_labels win over labels, as in transformers' causal LM loss
    torch.testing.assert_close(model(input_ids=ids, labels=ids, shift_labels=targets).loss,
                               out.loss)


@pytest.mark.parametrize("cls", [IndRNNForTokenClassification, IndRNNForCausalLM])
def test_num_items_in_batch_divides_the_summed_loss(cls):
    model = tiny_model(cls)
    ids = torch.randint(3, VOCAB, (2, 6))
    labels = ids % 3 if cls is IndRNNForTokenClassification else ids
    mean = model(input_ids=ids, labels=labels).loss
    count = 12 if cls is IndRNNForTokenClassification else 10  # targets in this batch
    summed = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(40)).loss
    torch.testing.assert_close(summed, mean * count / 40)


def test_cache_params_is_an_alias_of_cache():
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 7))
    for cls_model in (model, model.model):
        cache = IndRNNCache(model.config)
        cls_model(input_ids=ids[:, :4], cache_params=cache)
        assert cache.get_seq_length() == 4
    second = model(input_ids=ids[:, 4:], cache_params=cache_of(model(input_ids=ids[:, :4])))
    torch.testing.assert_close(second.logits, model(input_ids=ids).logits[:, 4:])
    with pytest.raises(ValueError, match="pass the cache once, as cache, got cache and "
                                         "cache_params"):
        model(input_ids=ids, cache=IndRNNCache(model.config),
              cache_params=IndRNNCache(model.config))


def test_dropout_last_replaces_the_heads_dropout():
    """dropout_last drops the last layer's output once per sequence inside the base model; the
    heads then drop nothing more. Unset, the heads drop with `dropout` as before."""
    assert tiny_model(IndRNNForCausalLM, dropout=0.3).dropout.p == 0.3
    model = tiny_model(IndRNNForCausalLM, dropout=0.3, dropout_last=0.5)
    assert model.dropout.p == 0.0 and model.model.rnn.dropout_last == 0.5
    base = tiny_model(IndRNNModel, dropout_last=0.5)
    ids = torch.randint(3, VOCAB, (4, 6))
    plain = base(input_ids=ids).last_hidden_state
    dropped = base.train()(input_ids=ids).last_hidden_state
    kept = (dropped != 0).any(1, keepdim=True)  # one mask per sequence and feature
    torch.testing.assert_close(dropped, 2.0 * plain * kept)
    assert ((plain != 0).any(1, keepdim=True) & ~kept).any()


def test_dense_models_hidden_states_and_cached_generation_steps():
    """A dense causal LM: one hidden state per IndRNN layer, and feeding a sequence in two
    calls through the cache gives the logits of one call."""
    model = tiny_model(IndRNNForCausalLM, dense_growth_rate=3, dense_block_config=[1, 1],
                       dense_bottleneck=2, embedding_size=5, tie_word_embeddings=True)
    rnn = model.model.rnn
    assert model.config.num_hidden_layers == rnn.num_layers == 7
    assert rnn.output_size == model.config.rnn_output_units == 5
    ids = torch.randint(3, VOCAB, (2, 7))
    out = model(input_ids=ids, output_hidden_states=True)
    # embeddings; first 12; bottleneck 6; growth 12 + 3; transition 7; 6; 7 + 3; transition 5
    assert [h.shape[-1] for h in out.hidden_states] == [5, 12, 6, 15, 7, 6, 10, 5]
    first = model(input_ids=ids[:, :4], use_cache=True)
    rest = model(input_ids=ids[:, 4:], cache=cache_of(first), use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), out.logits)
