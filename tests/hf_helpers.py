"""Small models and inputs shared by the tests/test_hf_*.py files."""

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
