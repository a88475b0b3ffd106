"""IndRNNConfig: defaults, serialisation, Auto registration and validation errors."""

import pytest
from transformers import AutoConfig

from hf_integration import IndRNNConfig


def test_defaults_and_layer_types():
    config = IndRNNConfig(hidden_size=16, num_hidden_layers=3)
    assert config.model_type == "indrnn"
    assert config.embedding_size == 16  # defaults to hidden_size
    assert config.layer_types == ["linear_attention"] * 3
    assert config.num_directions == 1
    assert IndRNNConfig(bidirectional=True).num_directions == 2


def test_auto_config_round_trip(tmp_path):
    config = AutoConfig.for_model(
        "indrnn", input_size=2, hidden_size=16, num_hidden_layers=2,
        recurrent_max_abs=2 ** (1 / 500), num_labels=1, norm="layer", classifier_pooling="mean",
    )
    assert isinstance(config, IndRNNConfig)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, IndRNNConfig)
    for name in ("input_size", "hidden_size", "recurrent_max_abs", "num_labels", "norm",
                 "classifier_pooling", "embedding_size"):
        assert getattr(loaded, name) == getattr(config, name), name


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("input_size", -2),
        ("embedding_size", 2.5),
        ("hidden_size", 0),
        ("num_hidden_layers", True),
        ("bidirectional", "yes"),
        ("residual", 1),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("recurrent_max_abs", 0.0),
        ("recurrent_max_abs", float("inf")),
        ("recurrent_min_abs", -1.0),
        ("norm", "group"),
        ("classifier_pooling", "max"),
        ("initializer_range", -1.0),
        ("embedding_init_std", "big"),
        ("use_cache", "no"),
        ("input_weight_init", "orthogonal"),
        ("recurrent_init", [0.5]),
        ("recurrent_init", [1.0, 0.0]),
        ("last_layer_recurrent_init", "far"),
        ("last_layer_recurrent_init", "near_one"),  # needs recurrent_max_abs >= 1
    ],
)
def test_invalid_field_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        IndRNNConfig(**{field: value})


def test_min_above_max_names_both():
    with pytest.raises(ValueError, match="recurrent_min_abs.*recurrent_max_abs"):
        IndRNNConfig(recurrent_max_abs=1.0, recurrent_min_abs=1.5)


def test_tied_embeddings_need_matching_sizes():
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        IndRNNConfig(tie_word_embeddings=True, hidden_size=16, embedding_size=8)
    IndRNNConfig(tie_word_embeddings=True, hidden_size=16)


def test_residual_needs_odd_depth():
    with pytest.raises(ValueError, match="residual=True needs an odd num_hidden_layers"):
        IndRNNConfig(residual=True, num_hidden_layers=2)
    IndRNNConfig(residual=True, num_hidden_layers=3)


def test_init_ranges_survive_json(tmp_path):
    config = IndRNNConfig(recurrent_max_abs=1.1, recurrent_init=(0.1, 0.5),
                          last_layer_recurrent_init="near_one", input_weight_init="rnn_uniform")
    config.save_pretrained(tmp_path)
    loaded = IndRNNConfig.from_pretrained(tmp_path)
    assert loaded.recurrent_init == [0.1, 0.5]
    assert loaded.last_layer_recurrent_init == "near_one"
    assert loaded.input_weight_init == "rnn_uniform"
