"""transformers' model conventions, in the style of its common model tests.

`IndRNNModelTester` builds a tiny config and inputs (a left-padded batch, labels for each head);
`TestIndRNNModelCommon` has one test per convention, run for every head class (the generation
tests for the generative one).
"""

import pytest
import torch
from hf_helpers import INIT_OPTIONS, assert_loaded_or_fresh, nan_empty_like

from hf_integration import (
    IndRNNCache,
    IndRNNConfig,
    IndRNNForCausalLM,
    IndRNNForSequenceClassification,
    IndRNNForTokenClassification,
    IndRNNModel,
)

ALL_MODEL_CLASSES = [
    IndRNNModel,
    IndRNNForSequenceClassification,
    IndRNNForTokenClassification,
    IndRNNForCausalLM,
]
GENERATIVE_MODEL_CLASSES = [IndRNNForCausalLM]


class IndRNNModelTester:
    batch_size, seq_length, vocab_size, num_labels = 3, 6, 50, 3
    hidden_size, num_hidden_layers = 8, 2

    def get_config(self, **overrides) -> IndRNNConfig:
        kwargs = dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                      num_hidden_layers=self.num_hidden_layers, num_labels=self.num_labels,
                      recurrent_max_abs=1.5, pad_token_id=0, initializer_range=0.5)
        return IndRNNConfig(**{**kwargs, **overrides})

    def prepare_inputs(self) -> dict:
        """Token ids and an attention mask with left padding of 0, 2 and 4 steps."""
        g = torch.Generator().manual_seed(0)
        input_ids = torch.randint(1, self.vocab_size, (self.batch_size, self.seq_length),
                                  generator=g)
        steps = torch.arange(self.seq_length)
        mask = (steps >= torch.tensor([0, 2, 4])[:, None]).long()
        return {"input_ids": input_ids.masked_fill(mask == 0, 0), "attention_mask": mask}

    def labels_for(self, model_class, inputs) -> torch.Tensor | None:
        if model_class is IndRNNForSequenceClassification:
            return torch.arange(self.batch_size) % self.num_labels
        if model_class is IndRNNForTokenClassification:
            return (inputs["input_ids"] % self.num_labels).masked_fill(
                inputs["attention_mask"] == 0, -100)
        if model_class is IndRNNForCausalLM:
            return inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        return None

    def create_model(self, model_class, **overrides):
        torch.manual_seed(0)
        return model_class(self.get_config(**overrides)).eval()


def _inputs_of_shape(batch_size: int, seq_length: int, vocab_size: int) -> dict:
    """Token ids and an attention mask, the first row unpadded and the others left-padded."""
    g = torch.Generator().manual_seed(batch_size * 100 + seq_length)
    input_ids = torch.randint(1, vocab_size, (batch_size, seq_length), generator=g)
    pads = torch.arange(batch_size) % seq_length
    mask = (torch.arange(seq_length) >= pads[:, None]).long()
    return {"input_ids": input_ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def _assert_same_outputs(got, expected) -> None:
    """Every tensor of two model outputs equal, caches compared by their states and counts."""
    assert type(got) is type(expected) and got.keys() == expected.keys()
    for key in expected:
        if isinstance(expected[key], IndRNNCache):
            assert got[key].get_seq_length() == expected[key].get_seq_length()
            for g, e in zip(got[key].layers, expected[key].layers, strict=True):
                torch.testing.assert_close(g.recurrent_states[0], e.recurrent_states[0])
        else:
            torch.testing.assert_close(got[key], expected[key], msg=key)


def _main_output(model, outputs) -> torch.Tensor:
    return outputs.last_hidden_state if isinstance(model, IndRNNModel) else outputs.logits


def _training_loss(model, inputs, labels) -> torch.Tensor:
    outputs = model(**inputs, labels=labels) if labels is not None else model(**inputs)
    return outputs.loss if labels is not None else outputs.last_hidden_state.square().mean()


class TestIndRNNModelCommon:
    tester = IndRNNModelTester()

    @pytest.fixture(params=ALL_MODEL_CLASSES, ids=lambda cls: cls.__name__)
    def model_class(self, request):
        return request.param

    def test_save_load(self, model_class, tmp_path):
        model = self.tester.create_model(model_class)
        inputs = self.tester.prepare_inputs()
        model.save_pretrained(tmp_path)
        loaded = model_class.from_pretrained(tmp_path).eval()
        assert torch.equal(_main_output(loaded, loaded(**inputs)),
                           _main_output(model, model(**inputs)))

    def test_torch_export_with_dynamic_batch_and_time_saved_and_loaded(self, model_class,
                                                                        tmp_path):
        # One program for every batch size and length (left padding included), the returned
        # cache too, equal to eager at shapes other than the traced one after a save and load.
        model = self.tester.create_model(model_class)
        inputs = self.tester.prepare_inputs()
        batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
        program = torch.export.export(
            model, (), dict(inputs), dynamic_shapes={k: {0: batch, 1: time} for k in inputs},
            strict=False)
        torch.export.save(program, tmp_path / "model.pt2")
        exported = torch.export.load(tmp_path / "model.pt2").module()
        for shape in [(3, 6), (1, 2), (5, 11)]:
            other = _inputs_of_shape(*shape, self.tester.vocab_size)
            with torch.no_grad():
                _assert_same_outputs(exported(**other), model(**other))

    @pytest.mark.parametrize("generative_class", GENERATIVE_MODEL_CLASSES,
                             ids=lambda cls: cls.__name__)
    def test_exported_step_returns_the_new_cache_and_leaves_the_given_one(self,
                                                                         generative_class):
        # The states were copied into the given cache in place while its step count, a new
        # tensor, was not: a cache half updated. The program is now a function of its cache.
        model = self.tester.create_model(generative_class)
        ids = _inputs_of_shape(2, 7, self.tester.vocab_size)["input_ids"]
        with torch.no_grad():
            cache = model(input_ids=ids[:, :5]).cache
        held = [layer.recurrent_states[0].clone() for layer in cache.layers]
        program = torch.export.export(model, (), {"input_ids": ids[:, 5:6], "cache": cache},
                                      strict=False)
        out = program.module()(input_ids=ids[:, 5:6], cache=cache)
        assert cache.get_seq_length() == 5
        for layer, state in zip(cache.layers, held, strict=True):
            assert torch.equal(layer.recurrent_states[0], state)
        with torch.no_grad():
            expected = model(input_ids=ids[:, 5:6], cache=cache)
        _assert_same_outputs(out, expected)
        assert out.cache.get_seq_length() == 6 and isinstance(out.cache.seen_steps, int)

    def test_cache_pytree_round_trip_and_maps(self):
        cache = IndRNNCache(self.tester.get_config())
        with torch.no_grad():
            IndRNNForCausalLM(self.tester.get_config())(
                **self.tester.prepare_inputs(), cache=cache)
        leaves, spec = torch.utils._pytree.tree_flatten(cache)
        rebuilt = torch.utils._pytree.tree_unflatten(leaves, spec)
        assert type(rebuilt) is IndRNNCache and rebuilt.get_seq_length() == 6
        assert rebuilt.layer_class_to_replicate is None
        for got, want in zip(rebuilt.layers, cache.layers, strict=True):
            assert got.recurrent_states[0] is want.recurrent_states[0]
        shapes = torch.utils._pytree.tree_map(lambda t: t.shape, cache)  # any leaf values
        assert shapes.layers[0].recurrent_states[0] == (3, 1, self.tester.hidden_size)

    def test_hidden_states_output(self, model_class):
        model = self.tester.create_model(model_class, num_hidden_layers=3)
        inputs = self.tester.prepare_inputs()
        outputs = model(**inputs, output_hidden_states=True)
        assert len(outputs.hidden_states) == 3 + 1
        for hidden in outputs.hidden_states[1:]:
            assert hidden.shape == (self.tester.batch_size, self.tester.seq_length,
                                    self.tester.hidden_size)
        base = model if isinstance(model, IndRNNModel) else model.model
        assert torch.equal(outputs.hidden_states[-1], base(**inputs).last_hidden_state)
        assert model(**inputs).hidden_states is None

    def test_gradient_checkpointing_on_off_equal(self, model_class):
        model = self.tester.create_model(model_class, dropout=0.2).train()
        inputs = self.tester.prepare_inputs()
        labels = self.tester.labels_for(model_class, inputs)
        results = []
        for on in (False, True):
            if on:
                model.activation_checkpointing_enable()
            model.zero_grad()
            torch.manual_seed(1)
            loss = _training_loss(model, inputs, labels)
            loss.backward()
            results.append((loss, {n: p.grad.clone() for n, p in model.named_parameters()}))
        (loss_off, grads_off), (loss_on, grads_on) = results
        torch.testing.assert_close(loss_on, loss_off)
        assert grads_on.keys() == grads_off.keys()
        for name, grad in grads_off.items():
            torch.testing.assert_close(grads_on[name], grad, msg=name)

    def test_resize_tokens_embeddings(self, model_class):
        model = self.tester.create_model(model_class)
        inputs = self.tester.prepare_inputs()
        before = _main_output(model, model(**inputs))
        vocab = self.tester.vocab_size
        model.resize_token_embeddings(vocab + 7)
        assert model.config.vocab_size == vocab + 7
        assert model.get_input_embeddings().weight.shape[0] == vocab + 7
        new_ids = dict(inputs, input_ids=torch.full_like(inputs["input_ids"], vocab + 6))
        after = _main_output(model, model(**new_ids))  # the new ids are embedded
        assert torch.isfinite(after).all()
        after = _main_output(model, model(**inputs))
        if model_class is IndRNNForCausalLM:
            assert model.get_output_embeddings().weight.shape[0] == vocab + 7
            after = after[..., :vocab]
        assert torch.equal(after, before)

    def test_missing_weights_initialised(self, model_class, tmp_path, monkeypatch):
        nan_empty_like(monkeypatch)
        model = self.tester.create_model(model_class, **INIT_OPTIONS)
        saved = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        model.save_pretrained(tmp_path)
        grown = model_class.from_pretrained(tmp_path, num_hidden_layers=3, norm="layer")
        assert len(grown.state_dict()) > len(saved)
        assert_loaded_or_fresh(grown, saved)

    def test_unknown_keyword_is_rejected(self, model_class):
        model = self.tester.create_model(model_class)
        with pytest.raises(TypeError, match="not_an_argument"):
            model(**self.tester.prepare_inputs(), not_an_argument=1)

    def test_padding_equals_each_sequence_alone(self, model_class):
        model = self.tester.create_model(model_class)
        inputs = self.tester.prepare_inputs()
        batched = _main_output(model, model(**inputs))
        for row, mask in enumerate(inputs["attention_mask"].bool()):
            alone = _main_output(model, model(input_ids=inputs["input_ids"][row, mask][None]))
            per_sequence = model_class is IndRNNForSequenceClassification
            got = batched[row] if per_sequence else batched[row, mask]
            torch.testing.assert_close(got, alone[0])

    def test_training_reaches_every_parameter(self, model_class):
        model = self.tester.create_model(model_class, norm="batch").train()
        inputs = self.tester.prepare_inputs()
        _training_loss(model, inputs, self.tester.labels_for(model_class, inputs)).backward()
        for name, param in model.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), name

    @pytest.mark.parametrize("generative_class", GENERATIVE_MODEL_CLASSES,
                             ids=lambda cls: cls.__name__)
    @pytest.mark.parametrize("num_beams", [1, 2], ids=["greedy", "beam"])
    def test_continue_generation_from_cache(self, generative_class, num_beams):
        model = self.tester.create_model(generative_class)
        inputs = self.tester.prepare_inputs()
        kwargs = dict(max_new_tokens=4, do_sample=False, num_beams=num_beams, pad_token_id=0)
        whole = model.generate(**inputs, **kwargs)
        cache = IndRNNCache(model.config)
        with torch.no_grad():
            model(**{k: v[:, :3].repeat_interleave(num_beams, 0) for k, v in inputs.items()},
                  cache=cache)
        assert torch.equal(model.generate(**inputs, cache=cache, **kwargs), whole)

    @pytest.mark.parametrize("generative_class", GENERATIVE_MODEL_CLASSES,
                             ids=lambda cls: cls.__name__)
    def test_exported_prefill_and_decode_generate_as_the_model(self, generative_class,
                                                                tmp_path):
        # transformers' exporter splits generation into a prefill and a one-token decode
        # graph. The decode graph must take the cache at every step count: the count crosses
        # the graph as a tensor, not as a constant of the traced pytree (then only the traced
        # step ran). Greedy tokens and each step's logits equal generate(), for other prompt
        # lengths and batch sizes than the traced ones, after a save and load.
        exporters = pytest.importorskip("transformers.exporters")
        model = self.tester.create_model(generative_class)
        exported = exporters.DynamoExporter().export_for_generation(
            model, self.tester.prepare_inputs(), exporters.DynamoConfig(dynamic=True))
        exported.save_pretrained(tmp_path)
        runners = exporters.ExportedModel.from_pretrained(tmp_path, trust_remote_code=True).runners
        for shape in [(2, 3), (4, 9)]:
            inputs = _inputs_of_shape(*shape, self.tester.vocab_size)
            expected = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0,
                                      output_logits=True, return_dict_in_generate=True)
            out = runners["prefill"](**inputs)
            mask, logits = inputs["attention_mask"], [out.logits[:, -1]]
            for _ in range(4):
                token = logits[-1].argmax(-1, keepdim=True)
                mask = torch.cat([mask, torch.ones_like(token)], 1)
                out = runners["decode"](input_ids=token, attention_mask=mask, cache=out.cache)
                logits.append(out.logits[:, -1])
            assert out.cache.get_seq_length() == shape[1] + 4
            torch.testing.assert_close(torch.stack(logits), torch.stack(expected.logits))
            assert torch.equal(torch.stack(logits).argmax(-1).T, expected.sequences[:, shape[1]:])

    @pytest.mark.parametrize("generative_class", GENERATIVE_MODEL_CLASSES,
                             ids=lambda cls: cls.__name__)
    def test_shift_labels(self, generative_class):
        model = self.tester.create_model(generative_class)
        inputs = self.tester.prepare_inputs()
        labels = self.tester.labels_for(generative_class, inputs)
        shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
        torch.testing.assert_close(model(**inputs, shift_labels=shifted).loss,
                                   model(**inputs, labels=labels).loss)
