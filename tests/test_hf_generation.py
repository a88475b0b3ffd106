"""generate() with the recurrent-state cache, and the text pipelines."""

import copy
from unittest.mock import patch

import pytest
import torch
import transformers.generation.utils
from hf_helpers import VOCAB, cache_of, padded_batch, random_tokens, tiny_model
from transformers import ByT5Tokenizer, CompileConfig, DynamicCache, GenerationConfig, pipeline

from hf_integration import IndRNNCache, IndRNNForCausalLM, IndRNNForSequenceClassification

NEW = 6


def _generate(model, ids, **kwargs):
    kwargs.setdefault("do_sample", False)
    return model.generate(ids, max_new_tokens=NEW, pad_token_id=0, **kwargs)


@pytest.mark.parametrize("make_cache", [IndRNNCache, lambda config: DynamicCache(config=config)])
def test_cached_forward_equals_full_prefix(make_cache):
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 9))
    full = model(input_ids=ids).logits
    cache = make_cache(model.config)
    first = model(input_ids=ids[:, :5], cache=cache, use_cache=True)
    assert cache_of(first) is cache
    logits = [first.logits]
    for t in range(5, 9):
        logits.append(model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(logits, 1), full)
    if isinstance(cache, IndRNNCache):
        assert cache.get_seq_length() == 9


def test_default_cache_is_created_and_continues():
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 7))
    first = model(input_ids=ids[:, :4])
    assert isinstance(cache_of(first), IndRNNCache)
    second = model(input_ids=ids[:, 4:], cache=cache_of(first))
    torch.testing.assert_close(second.logits, model(input_ids=ids).logits[:, 4:])
    assert cache_of(model(input_ids=ids, use_cache=False)) is None
    model.train()  # no cache by default in training, but a given cache is used and updated
    assert cache_of(model(input_ids=ids)) is None
    cache = IndRNNCache(model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :4], cache=cache)
        torch.testing.assert_close(model(input_ids=ids[:, 4:], cache=cache).logits,
                                   model(input_ids=ids).logits[:, 4:])


def test_greedy_equals_recomputing_the_prefix():
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (3, 5))
    cached = _generate(model, ids)
    assert cached.shape == (3, 5 + NEW)
    assert torch.equal(cached, _generate(model, ids, use_cache=False))
    manual = ids
    for _ in range(NEW):
        next_token = model(input_ids=manual, use_cache=False).logits[:, -1].argmax(-1)
        manual = torch.cat([manual, next_token[:, None]], 1)
    assert torch.equal(cached, manual)
    assert len(set(cached[:, 5:].flatten().tolist())) > 1  # not a degenerate constant output


def test_beam_search_equals_recomputing_the_prefix():
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 4))
    kwargs = dict(num_beams=3, num_return_sequences=3, output_scores=True,
                  return_dict_in_generate=True)
    cached = _generate(model, ids, **kwargs)
    recomputed = _generate(model, ids, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, recomputed.sequences)
    torch.testing.assert_close(cached.sequences_scores, recomputed.sequences_scores)


def test_left_padded_batch_generates_like_each_prompt_alone():
    model = tiny_model(IndRNNForCausalLM)
    prompts = random_tokens([3, 7, 5])
    ids, mask = padded_batch(prompts, "left")
    batched = _generate(model, ids, attention_mask=mask)
    for i, prompt in enumerate(prompts):
        alone = _generate(model, prompt[None])
        assert torch.equal(batched[i, ids.shape[1]:], alone[0, len(prompt):])


def test_each_new_token_is_one_step():
    """Constant per-token cost: after the prompt, every forward sees exactly one new token."""
    model = tiny_model(IndRNNForCausalLM)
    lengths, states = [], []

    def record(module, args, kwargs):
        lengths.append(kwargs["inputs_embeds"].shape[1] if args == () else args[0].shape[1])

    model.model.register_forward_pre_hook(record, with_kwargs=True)
    for layer in model.model.layers:  # args: hidden_states, h0, mask, shortcut
        layer.register_forward_pre_hook(lambda m, args: states.append(args[1]))
    _generate(model, torch.randint(3, VOCAB, (2, 10)))
    assert lengths == [10] + [1] * (NEW - 1)
    assert states[:2] == [None, None]
    assert all(s is not None and s.shape == (1, 2, 12) for s in states[2:])


def test_cached_state_stays_float32_in_bfloat16():
    model = tiny_model(IndRNNForCausalLM).to(torch.bfloat16)
    ids = torch.randint(3, VOCAB, (2, 6))
    out = model(input_ids=ids, use_cache=True)
    cache = cache_of(out)
    assert out.logits.dtype == torch.bfloat16
    for layer in cache.layers:
        assert layer.recurrent_states[0].dtype == torch.float32
        assert layer.recurrent_states[0].shape == (2, 1, 12)
    generated = _generate(model, ids)
    assert generated.shape == (2, 6 + NEW)


@pytest.fixture(scope="module")
def tokenizer():
    return ByT5Tokenizer()


def test_text_generation_pipeline(tokenizer):
    model = tiny_model(IndRNNForCausalLM, eos_token_id=tokenizer.eos_token_id)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator("hello", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("hello")
    # The pipeline encodes the prompt with the tokenizer's special tokens (ByT5's "</s>").
    ids = tokenizer("hello", return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert text == tokenizer.decode(expected[0], skip_special_tokens=True)


def test_text_classification_pipeline(tokenizer):
    model = tiny_model(IndRNNForSequenceClassification,
                       id2label={0: "neg", 1: "pos", 2: "mixed"})
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer)
    results = classifier(["good", "a longer sentence"])
    batch = tokenizer(["good", "a longer sentence"], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    assert len(results) == 2
    for result, p in zip(results, probs, strict=True):
        assert result["label"] == model.config.id2label[int(p.argmax())]
        assert result["score"] == pytest.approx(float(p.max()), rel=1e-5)


def test_generate_from_inputs_embeds():
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 5))
    from_ids = _generate(model, ids)
    from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(ids),
                                 max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    assert torch.equal(from_embeds[:, -NEW:], from_ids[:, -NEW:])


def test_generate_does_not_ask_to_remove_cache_position(monkeypatch):
    """generate() builds cache_position, and warns that a custom model should stop reading it,
    when the forward names it; the recurrent state carries the position."""
    messages = []
    monkeypatch.setattr(transformers.generation.utils.logger, "warning_once",
                        lambda msg, *args, **kwargs: messages.append(msg))
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 5))
    tokens = _generate(model, ids)
    assert not [m for m in messages if "cache_position" in m]
    # still the tokens of recomputing the prefix, and cache_position still accepted
    assert torch.equal(tokens, _generate(model, ids, use_cache=False))
    model(input_ids=ids, cache_position=torch.arange(5))


@pytest.mark.slow
def test_cached_generation_with_a_compiled_forward():
    """generate() through torch.compile(model.forward), the cache passed between compiled calls,
    gives the eager tokens, for a left-padded batch too."""
    model = tiny_model(IndRNNForCausalLM)
    ids, mask = padded_batch(random_tokens([5, 8, 3]), "left")
    eager = _generate(model, ids, attention_mask=mask)
    model.forward = torch.compile(model.forward)
    compiled = _generate(model, ids, attention_mask=mask)
    assert compiled.shape == (3, 8 + NEW)
    assert torch.equal(compiled, eager)


def test_generate_compiles_the_decode_step_once_without_int_inputs():
    """With an IndRNNCache, transformers' generate() compiles the decode step (on a GPU, or
    with compile_config._compile_all_devices): one graph, with no graph break and no int input.
    The step count was a Python int read in the graph: it recompiled at the second step, and
    then, an int input, made mode="reduce-overhead" record a CUDA graph at every step."""
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 5))
    graphs = []

    def backend(graph, example_inputs):
        graphs.append([type(x) for x in example_inputs])
        return graph.forward

    compile_config = CompileConfig(backend=backend, fullgraph=True, mode=None)
    compile_config._compile_all_devices = True
    cache = IndRNNCache(model.config)
    torch._dynamo.reset()
    compiled = _generate(model, ids, cache=cache, compile_config=compile_config)
    assert torch.equal(compiled, _generate(model, ids))
    assert len(graphs) == 1 and all(issubclass(t, torch.Tensor) for t in graphs[0])
    assert cache.get_seq_length() == 5 + NEW - 1
    cache.reset()
    assert cache.seen_steps == 0


@pytest.mark.parametrize("prompt", ["input_ids", "input_ids_keyword", "inputs_embeds"])
def test_generate_with_an_empty_prompt_says_it_is_empty(prompt):
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.zeros(2, 0, dtype=torch.long)
    args, kwargs = {
        "input_ids": ((ids,), {}),
        "input_ids_keyword": ((), {"input_ids": ids}),
        "inputs_embeds": ((), {"inputs_embeds": torch.zeros(2, 0, 12)}),
    }[prompt]
    with pytest.raises(ValueError, match=r"the prompt is empty.*shape \(2, 0"):
        model.generate(*args, max_new_tokens=NEW, pad_token_id=0, **kwargs)


def _cache_after(model, prefix_ids, mask=None, repeats=1):
    """The cache after a forward over the prefix (each row repeated for beam search)."""
    cache = IndRNNCache(model.config)
    mask = None if mask is None else mask.repeat_interleave(repeats, 0)
    with torch.no_grad():
        model(input_ids=prefix_ids.repeat_interleave(repeats, 0), attention_mask=mask,
              cache=cache)
    return cache


@pytest.mark.parametrize("prompt", ["input_ids", "inputs_embeds"])
@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam"])
def test_continuing_from_a_cache_equals_one_uninterrupted_call(prompt, num_beams):
    model = tiny_model(IndRNNForCausalLM)
    ids, mask = padded_batch(random_tokens([6, 9]), "left")
    kwargs = dict(attention_mask=mask, num_beams=num_beams)
    if prompt == "inputs_embeds":
        kwargs["inputs_embeds"] = model.get_input_embeddings()(ids)
    given_ids = ids if prompt == "input_ids" else None
    whole = _generate(model, given_ids, **kwargs)
    cache = _cache_after(model, ids[:, :5], mask[:, :5], repeats=num_beams)
    continued = _generate(model, given_ids, cache=cache, **kwargs)
    assert torch.equal(continued, whole)
    assert cache.get_seq_length() == 9 + NEW - 1  # the last token is returned, not fed


@pytest.mark.parametrize("seen", [2, 5, 7], ids=lambda n: f"seen{n}")
@pytest.mark.parametrize("padding", ["left", "none"])
def test_continuing_with_only_the_new_steps_and_the_whole_mask(padding, seen):
    """Fewer, as many or more new steps than seen ones. generate() drops an all-ones mask
    before it prepares the inputs: new steps that outnumbered the seen ones were taken for the
    whole sequence and all but the last (new - seen) skipped (silently other tokens), and
    fewer new steps than seen ones raised that the cache had seen the whole prompt."""
    model = tiny_model(IndRNNForCausalLM)
    lengths = [6, 9] if padding == "left" else [9, 9]
    ids, mask = padded_batch(random_tokens(lengths), "left")
    whole = _generate(model, ids, attention_mask=mask)
    cache = _cache_after(model, ids[:, :seen], mask[:, :seen])
    continued = _generate(model, ids[:, seen:], attention_mask=mask, cache=cache)
    assert torch.equal(continued, whole[:, seen:])
    assert cache.get_seq_length() == 9 + NEW - 1


@pytest.mark.parametrize("cache", ["none", "empty", "seen", "seen_whole_prompt"])
@pytest.mark.parametrize("padding", ["left", "none"])
def test_chunked_prefill_generates_the_tokens_of_one_prefill(padding, cache):
    """prefill_chunk_size feeds the prompt in chunks: without a cache (transformers chunks only
    into a cache it is given, and builds none for this model), into an empty cache, and after
    steps a cache has seen (the prompt given as the new steps); the whole sequence after seen
    steps is refused, since its chunks would feed the seen steps again."""
    model = tiny_model(IndRNNForCausalLM)
    ids, mask = padded_batch(random_tokens([9, 11] if padding == "left" else [11, 11]), "left")
    whole = _generate(model, ids, attention_mask=mask)
    kwargs = dict(attention_mask=mask, prefill_chunk_size=3)
    if cache == "none":
        assert torch.equal(_generate(model, ids, **kwargs), whole)
    elif cache == "empty":
        given = IndRNNCache(model.config)
        assert torch.equal(_generate(model, ids, cache=given, **kwargs), whole)
        assert given.get_seq_length() == 11 + NEW - 1
    elif cache == "seen":
        given = _cache_after(model, ids[:, :4], mask[:, :4])
        assert torch.equal(_generate(model, ids[:, 4:], cache=given, **kwargs), whole[:, 4:])
    else:
        given = _cache_after(model, ids[:, :4], mask[:, :4])
        with pytest.raises(ValueError, match="prefill_chunk_size with a cache that has seen"):
            _generate(model, ids, cache=given, **kwargs)
        embeds = model.get_input_embeddings()(ids)
        with pytest.raises(ValueError, match="inputs_embeds are the whole sequence"):
            _generate(model, None, inputs_embeds=embeds, cache=given, **kwargs)


def test_chunked_prefill_with_the_generation_config_given_positionally():
    """generate(ids, GenerationConfig(prefill_chunk_size=...)): the config given second,
    positionally, was not read: no cache was made (transformers' "Cannot use prefill chunking
    without a cache"), and the whole sequence after seen steps was not refused (the seen steps
    fed again). An empty cache other than IndRNNCache is refused, naming it."""
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 10))
    whole = _generate(model, ids)
    config = GenerationConfig(prefill_chunk_size=3, max_new_tokens=NEW, do_sample=False,
                              pad_token_id=0)
    assert torch.equal(model.generate(ids, config), whole)
    given = _cache_after(model, ids[:, :4])
    with pytest.raises(ValueError, match="prefill_chunk_size with a cache that has seen"):
        model.generate(ids, config, cache=given)
    with pytest.raises(ValueError, match="needs an IndRNNCache.* got a DynamicCache"):
        model.generate(ids, config, cache=DynamicCache(config=model.config))


def test_stop_strings_with_the_tokenizer(tokenizer):
    """generate(stop_strings=..., tokenizer=...) passes the tokenizer on to the forward, which
    refused it. Generation stops right after the first stop string, the tokens before it
    those of the unstopped generation."""
    model = tiny_model(IndRNNForCausalLM, vocab_size=len(tokenizer))
    ids = tokenizer("hello", return_tensors="pt").input_ids
    free = _generate(model, ids)[0, ids.shape[1]:]
    stop = tokenizer.decode(free[2:4])
    stopped = model.generate(ids, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                             stop_strings=[stop], tokenizer=tokenizer)[0, ids.shape[1]:]
    assert stop in tokenizer.decode(stopped)
    assert len(stopped) <= 4 and torch.equal(stopped, free[:len(stopped)])


@pytest.mark.parametrize("make_cache", [IndRNNCache, lambda config: DynamicCache(config=config)],
                         ids=["IndRNNCache", "DynamicCache"])
def test_reset_cache_takes_another_batch_size(make_cache):
    """reset() zeroes the states in place; the next batch of another size failed with a size
    mismatch inside transformers' cache layer."""
    model = tiny_model(IndRNNForCausalLM)
    cache = make_cache(model.config)
    with torch.no_grad():
        model(input_ids=torch.randint(3, VOCAB, (3, 4)), cache=cache)
        cache.reset()
        ids = torch.randint(3, VOCAB, (2, 5))
        out = model(input_ids=ids, cache=cache)
        torch.testing.assert_close(out.logits, model(input_ids=ids).logits)
        step = torch.randint(3, VOCAB, (2, 1))
        torch.testing.assert_close(model(input_ids=step, cache=cache).logits[:, -1],
                                   model(input_ids=torch.cat([ids, step], 1)).logits[:, -1])


def test_cache_rows_repeated_and_selected():
    """batch_repeat_interleave and batch_select_indices act on the states (transformers' linear
    attention layers have neither), and match a cache built on those rows; batch_size counts
    the rows; crop, which cannot roll a recurrent state back unless it records, raises saying
    so."""
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 6))
    cache = _cache_after(model, ids)
    assert cache.batch_size == 2 and IndRNNCache(model.config).batch_size == -1
    copy = _cache_after(model, ids)
    copy.reset()
    assert copy.batch_size == -1
    cache.batch_repeat_interleave(3)
    assert cache.batch_size == 6
    built = _cache_after(model, ids.repeat_interleave(3, 0))
    for got, want in zip(cache.layers, built.layers, strict=True):
        torch.testing.assert_close(got.recurrent_states[0], want.recurrent_states[0])
    cache.batch_select_indices(torch.tensor([4, 0]))
    built = _cache_after(model, ids[[1, 0]])
    for got, want in zip(cache.layers, built.layers, strict=True):
        torch.testing.assert_close(got.recurrent_states[0], want.recurrent_states[0])
    with pytest.raises(ValueError, match="cropped only after cache.activate_past_recording"):
        cache.crop(-1)


def _states(cache):
    return [layer.recurrent_states[0] if layer.has_previous_state[0] else None
            for layer in cache.layers]


def _assert_same_states(got, want):
    assert got.get_seq_length() == want.get_seq_length()
    for a, b in zip(_states(got), _states(want), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("max_rollback", [None, 3])
def test_recording_cache_crops_back_to_each_recorded_step(max_rollback):
    """After activate_past_recording(), crop(-n) returns the cache to the state it had n steps
    ago, as a cache fed only the steps before: the next step's logits are the prefix's. The
    recorded call's outputs (split into single steps inside) equal an unrecorded call's."""
    model = tiny_model(IndRNNForCausalLM)
    ids, mask = padded_batch(random_tokens([7, 5]), "left")
    cache = IndRNNCache(model.config)
    assert cache_of(model(input_ids=ids[:, :1])).is_compileable
    cache.activate_past_recording(max_rollback)
    assert cache.is_recording_past() and not cache.is_compileable  # no auto-compiled decode
    with torch.no_grad():
        out = model(input_ids=ids[:, :4], attention_mask=mask[:, :4], cache=cache,
                    output_hidden_states=True)
        plain = model(input_ids=ids[:, :4], attention_mask=mask[:, :4],
                      output_hidden_states=True)
        torch.testing.assert_close(out.logits, plain.logits)
        for got, want in zip(out.hidden_states, plain.hidden_states, strict=True):
            torch.testing.assert_close(got, want)
        for t in range(4, 7):
            model(input_ids=ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache)
    oldest = 0 if max_rollback is None else 7 - max_rollback
    for steps_back in range(0, 7 - oldest + 1):
        cropped = copy.deepcopy(cache)
        cropped.crop(-steps_back)
        kept = 7 - steps_back
        if kept:
            _assert_same_states(cropped, _cache_after(model, ids[:, :kept], mask[:, :kept]))
        else:
            assert cropped.get_seq_length() == 0 and _states(cropped) == [None, None]
        if kept < 7:
            with torch.no_grad():  # and it continues from there
                step = model(input_ids=ids[:, kept:kept + 1], cache=cropped,
                             attention_mask=mask[:, :kept + 1]).logits[:, -1]
                full = model(input_ids=ids[:, :kept + 1],
                             attention_mask=mask[:, :kept + 1]).logits
            torch.testing.assert_close(step, full[:, -1])
    if max_rollback is not None:
        with pytest.raises(ValueError, match="steps 4 to 7 only .at most max_rollback=3 back"):
            cache.crop(-4)
    # A crop drops the states after it and keeps the earlier ones; recording goes on.
    cache.crop(-2)
    other = torch.randint(3, VOCAB, (2, 2))
    with torch.no_grad():
        model(input_ids=other, attention_mask=mask, cache=cache)
    cache.crop(-3)
    _assert_same_states(cache, _cache_after(model, ids[:, :4], mask[:, :4]))
    if max_rollback is None:
        cache.crop(-4)
        assert cache.get_seq_length() == 0 and _states(cache) == [None, None]
    else:
        with pytest.raises(ValueError, match=r"returns to step 3, but the cache has the states "
                                             r"of steps 4 only \(at most max_rollback=3"):
            cache.crop(-1)


def test_recording_cache_crop_after_reset_and_row_selection():
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (3, 5))
    cache = IndRNNCache(model.config)
    cache.activate_past_recording()
    with torch.no_grad():
        model(input_ids=ids, cache=cache)
    cache.batch_select_indices(torch.tensor([2, 0]))
    cache.crop(-2)
    _assert_same_states(cache, _cache_after(model, ids[[2, 0], :3]))
    cache.reset()
    with torch.no_grad():
        model(input_ids=ids[:1], cache=cache)
    cache.crop(-1)
    _assert_same_states(cache, _cache_after(model, ids[:1, :4]))


def test_a_cache_pickled_before_the_step_count_became_a_property_keeps_its_count():
    """Such a cache holds its count as the attribute "seen_steps", which the property hid:
    it loaded as having seen 0 steps, and generate() fed the seen steps again on its states."""
    import pickle

    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 6))
    cache = _cache_after(model, ids[:, :4])
    state = dict(vars(cache))
    state["seen_steps"] = state.pop("_steps")  # the attributes of the earlier version
    state.pop("_step_counter")
    old = IndRNNCache.__new__(IndRNNCache)
    old.__dict__.update(state)
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.get_seq_length() == 4
    assert torch.equal(_generate(model, ids, cache=loaded), _generate(model, ids))
    # One pickled with a counter, before the flag saying whether it holds compiled steps.
    state = dict(vars(_cache_after(model, ids[:, :3])))
    state.pop("_counted_compiled", None)
    state["_step_counter"] = torch.tensor(1)  # a compiled step
    old.__dict__.clear()
    old.__dict__.update(state)
    assert pickle.loads(pickle.dumps(old)).get_seq_length() == 4


def test_crop_and_recording_arguments_are_checked():
    cache = IndRNNCache(tiny_model(IndRNNForCausalLM).config)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="max_rollback must be a positive int or None"):
            cache.activate_past_recording(bad)
    cache.activate_past_recording()
    for bad in (1, 2.0, True):
        with pytest.raises(ValueError, match="negative int"):
            cache.crop(bad)
    with pytest.raises(ValueError, match="returns to step -1"):
        cache.crop(-1)
    cache.crop(0)


def _checked_draft(draft):
    """Make each of the draft model's rounds also run from scratch (no cache) and check that
    it proposes the same tokens: a cache cropped to wrong states would propose others, which
    the main model's check alone would not show (its tokens are its own whatever the draft
    proposes). Returns the list of rounds run."""
    real = draft.generate
    rounds = []

    def generate(*args, **kwargs):
        out = real(*args, **kwargs)
        fresh = real(*args, **{k: v for k, v in kwargs.items() if k != "cache"})
        assert torch.equal(out.sequences, fresh.sequences)
        rounds.append(out.sequences.shape[1])
        return out

    draft.generate = generate
    return rounds


def test_as_the_draft_model_of_assisted_generation():
    """transformers' assisted generation with an IndRNN draft model (the main model must be
    stateless): its cache is cropped back to the tokens the main model accepts, and the tokens
    are the main model's own greedy ones. Before, the draft model failed on the main model's
    position_ids, and its cache could not be cropped."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = 12
    crops = []
    real_crop = IndRNNCache.crop

    def counted_crop(cache, tokens_to_remove):
        crops.append(tokens_to_remove)
        real_crop(cache, tokens_to_remove)

    for seed in range(3):
        draft = tiny_model(IndRNNForCausalLM, vocab_size=vocab)
        rounds = _checked_draft(draft)
        torch.manual_seed(seed)
        main = LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)).eval()
        with torch.no_grad():  # a main model that often takes the draft's token
            main.lm_head.weight.copy_(
                draft.lm_head.weight @ torch.randn(12, 16) * 0.3 + main.lm_head.weight)
        ids = torch.randint(1, vocab, (1, 3 + 2 * seed))
        want = main.generate(ids, max_new_tokens=14, do_sample=False)
        for threshold in (0.0, 0.4):
            draft.generation_config.assistant_confidence_threshold = threshold
            draft.generation_config.num_assistant_tokens = 3
            with patch.object(IndRNNCache, "crop", counted_crop):
                got = main.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=14,
                                    do_sample=False, assistant_model=draft)
            assert torch.equal(got, want)
        assert len(rounds) > 6
    # Drafts rejected from their first token to fully accepted ones.
    assert {0, -1, -2, -3} <= set(crops)


def _bpe_tokenizer():
    """A small byte-level BPE tokenizer trained here (nothing to download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        ["the cat sat on the mat and the dog ate the hat", "a bat and a rat met a cat"] * 20,
        trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>", "<pad>", "<s>", "</s>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def test_as_the_draft_model_with_another_tokenizer():
    """transformers' universal assisted generation: the IndRNN draft reads bytes, the main model
    BPE tokens. Its cache is cropped further back than the draft (re-read tokens), and the
    tokens are still the main model's greedy ones. Its recorded states were trimmed to the
    draft's length, so those crops fed the whole sequence again from the start each round."""
    from transformers import LlamaConfig, LlamaForCausalLM

    main_tok, draft_tok = _bpe_tokenizer(), ByT5Tokenizer()
    draft = tiny_model(IndRNNForCausalLM)
    main = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(main_tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=1, bos_token_id=2,
        eos_token_id=3)).eval()
    crops = []
    real_crop = IndRNNCache.crop

    def counted_crop(cache, tokens_to_remove):
        seen = cache.get_seq_length()
        # Memory: the last max_rollback steps' states, and one per 16 steps before.
        assert len(cache._past) <= cache.max_rollback + 2 + seen // 16
        real_crop(cache, tokens_to_remove)
        crops.append((tokens_to_remove, seen + tokens_to_remove, cache.get_seq_length()))

    rounds = _checked_draft(draft)
    draft.generation_config.num_assistant_tokens = 4
    draft.generation_config.assistant_confidence_threshold = 0.0
    for prompt in ["the cat sat", "a rat met the", "dog ate"]:
        ids = main_tok(prompt, return_tensors="pt").input_ids
        want = main.generate(ids, max_new_tokens=12, do_sample=False)
        with patch.object(IndRNNCache, "crop", counted_crop):
            got = main.generate(ids, max_new_tokens=12, do_sample=False, assistant_model=draft,
                                tokenizer=main_tok, assistant_tokenizer=draft_tok)
        assert torch.equal(got, want)
    # Crops further back than the draft (4 tokens and the 2 steps before): the draft's cache
    # keeps a state every 16 steps before those, so they land at most 15 steps before where
    # asked, and the steps fed again are those few, not the whole sequence.
    assert min(removed for removed, _, _ in crops) < -6 and len(rounds) > 6
    assert all(asked - 16 < landed <= asked for _, asked, landed in crops)


def test_a_draft_models_cache_cropped_beyond_its_records_feeds_the_steps_again():
    """A draft model's generate() records only its round's last steps; a crop further back
    returns to an earlier state (here the start), and the next round, given the whole
    sequence as transformers' assisted generation gives it, feeds the steps from there."""
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (1, 9))
    draft_config = GenerationConfig(  # as transformers' AssistedCandidateGenerator sets it
        is_assistant=True, max_new_tokens=2, do_sample=False, return_dict_in_generate=True,
        output_scores=True, assistant_confidence_threshold=0.0, pad_token_id=0)
    cache = cache_of(model.generate(ids, generation_config=draft_config))
    assert cache.get_seq_length() == 10  # the prompt and the first drafted token
    cache.crop(-2)  # recorded: back to step 8
    assert cache.get_seq_length() == 8
    cache.crop(-5)  # step 3 was inside the prompt's call: back to the start
    assert cache.get_seq_length() == 0
    sequence = torch.cat([ids[:, :3], torch.randint(3, VOCAB, (1, 4))], 1)
    got = model.generate(sequence, generation_config=draft_config, cache=cache).sequences
    want = model.generate(sequence, generation_config=draft_config).sequences
    assert torch.equal(got, want) and cache.get_seq_length() == 7 + 1
    # A cache of the user's own never returns anywhere but where it is asked to.
    mine = IndRNNCache(model.config)
    mine.activate_past_recording(2)
    with torch.no_grad():
        model(input_ids=ids, cache=mine)
    with pytest.raises(ValueError, match="returns to step 5, but the cache has the states of "
                                         "steps 7 to 9 only"):
        mine.crop(-4)


def test_use_cache_false_with_a_cache_that_has_seen_steps_raises():
    """It fed the whole sequence again on top of the cache's state at every step."""
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 5))
    with pytest.raises(ValueError, match="use_cache=False with a cache that has seen 3 steps"):
        _generate(model, ids, cache=_cache_after(model, ids[:, :3]), use_cache=False)


def test_continuing_from_a_cache_that_has_seen_the_whole_prompt_raises():
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 5))
    cache = _cache_after(model, ids)
    with pytest.raises(ValueError, match="the cache has seen 5 steps but the prompt has 5"):
        _generate(model, ids, cache=cache)


def test_continuing_generate_from_a_dynamic_cache_that_holds_steps_raises():
    """generate() feeds the whole prompt and trims what the cache holds; a DynamicCache of
    recurrent states cannot say how many steps that is, and the held steps ran twice (silently
    other tokens). An empty one is fine, and the forward continues from either."""
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 9))
    whole = _generate(model, ids)
    assert torch.equal(_generate(model, ids, cache=DynamicCache(config=model.config)), whole)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :5], cache=cache)
    with pytest.raises(ValueError, match="only as an IndRNNCache.*this cache is a DynamicCache"):
        _generate(model, ids, cache=cache)
