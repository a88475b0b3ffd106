"""Small models and inputs shared by the tests/test_hf_*.py files."""

import math

import torch

import hf_integration
from hf_integration import IndRNNConfig

VOCAB = 384  # ByT5Tokenizer: 3 special ids, 256 bytes, 125 extra ids
PAD = 0

HEADS = {
    "AutoModel": hf_integration.IndRNNModel,
    "AutoModelForSequenceClassification": hf_integration.IndRNNForSequenceClassification,
    "AutoModelForTokenClassification": hf_integration.IndRNNForTokenClassification,
    "AutoModelForCausalLM": hf_integration.IndRNNForCausalLM,
}


def tiny_config(**overrides) -> IndRNNConfig:
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=12,
        num_hidden_layers=2,
        recurrent_max_abs=2 ** (1 / 12),
        pad_token_id=PAD,
        num_labels=3,
        initializer_range=0.5,  # a random model whose greedy tokens are not all the same
    )
    if "dense_growth_rate" in overrides:
        del kwargs["num_hidden_layers"]  # derived from the dense blocks
    kwargs.update(overrides)
    return IndRNNConfig(**kwargs)


def tiny_model(cls, **overrides):
    torch.manual_seed(0)
    return cls(tiny_config(**overrides)).eval()


def head_logits(model, **inputs) -> torch.Tensor:
    out = model(**inputs)
    return out.last_hidden_state if isinstance(model, hf_integration.IndRNNModel) else out.logits


def cache_of(output):
    """The returned cache, whichever name this transformers version gives the field."""
    return output.cache if hasattr(output, "cache") else output.past_key_values


def padded_batch(seqs, side: str):
    """Pad 1-D token tensors to one length on `side`; returns (input_ids, attention_mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, span] = s
        mask[i, span] = 1
    return ids, mask


def random_tokens(lengths, generator=None):
    return [torch.randint(3, VOCAB, (n,), generator=generator) for n in lengths]


# Weights a checkpoint lacks: initialised as in a freshly built model, loaded ones kept.

INIT_OPTIONS = dict(recurrent_max_abs=1.5, recurrent_init=[0.2, 0.3],
                    last_layer_recurrent_init="near_one", input_weight_init="rnn_uniform")


def nan_empty_like(monkeypatch):
    """Tensors transformers materialises for missing keys start as NaN instead of whatever
    memory held, so a tensor left uninitialised fails the checks every time."""
    empty_like = torch.empty_like

    def nan_filled(*args, **kwargs):
        t = empty_like(*args, **kwargs)
        return t.fill_(math.nan) if t.dtype.is_floating_point else t

    monkeypatch.setattr(torch, "empty_like", nan_filled)


def assert_fresh(name: str, tensor: torch.Tensor, config) -> None:
    """`tensor` is finite and in the range a config with INIT_OPTIONS draws `name` from."""
    assert torch.isfinite(tensor).all(), name
    layer = name.rsplit("_l", 1)[-1]
    if "rnn.weight_ih" in name:  # rnn_uniform: U(-1/sqrt(H), 1/sqrt(H))
        bound = 1 / math.sqrt(config.hidden_size)
        assert tensor.abs().max() <= bound and tensor.std() > bound / 4, name
    elif "rnn.weight_hh" in name:
        last = int(layer) == config.num_hidden_layers - 1
        low, high = (1 / 1.5, 1.5) if last else (0.2, 0.3)
        assert low <= tensor.min() and tensor.max() <= high and tensor.std() > 0, name
    elif "rnn.bias" in name or name.endswith("running_mean") or name.endswith("classifier.bias"):
        assert torch.equal(tensor, torch.zeros_like(tensor)), name
    elif ".norms." in name:  # the norms' scales and running variances
        assert torch.equal(tensor, torch.ones_like(tensor)), name
    else:  # embeddings (std 1) and heads (std initializer_range 0.5)
        assert 0.1 < tensor.std() < 2, name


def assert_loaded_or_fresh(model, saved: dict) -> None:
    for name, tensor in model.state_dict().items():
        if name in saved and saved[name].shape == tensor.shape:
            assert torch.equal(tensor, saved[name]), f"{name} was loaded but changed"
        else:
            assert_fresh(name, tensor, model.config)
