"""IndRNNConfig: defaults, serialisation, Auto registration and validation errors."""

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from hf_integration import (
    IndRNNConfig,
    IndRNNForCausalLM,
    IndRNNForSequenceClassification,
    IndRNNModel,
)


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
        norm_position="after", dropout_last=0.2,
    )
    assert isinstance(config, IndRNNConfig)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, IndRNNConfig)
    for name in ("input_size", "hidden_size", "recurrent_max_abs", "num_labels", "norm",
                 "classifier_pooling", "embedding_size", "norm_position", "dropout_last"):
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
        ("norm_position", "middle"),
        ("dense_growth_rate", 0),
        ("dropout_last", 1.0),
        ("dropout_last", "0.1"),
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


@pytest.mark.parametrize("field", ["head_dropout", "rnn_output_units", "layer_types"])
def test_derived_fields_cannot_be_set(field, tmp_path):
    """The read-only properties raised python's "property ... has no setter" AttributeError as
    constructor arguments; now a ValueError saying where they come from. Setting the value they
    already have (a round trip of to_dict with them added) is harmless."""
    with pytest.raises(ValueError, match=f"{field} is derived from .* cannot be set"):
        IndRNNConfig(**{field: {"layer_types": ["other"]}.get(field, 3)})
    config = IndRNNConfig(dropout=0.2)
    setattr(config, field, getattr(config, field))
    assert config.head_dropout == 0.2 and field not in config.to_dict()


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
    config = IndRNNConfig(input_weight_init="normal", input_weight_std=0.02)
    config.save_pretrained(tmp_path)
    loaded = IndRNNConfig.from_pretrained(tmp_path)
    assert (loaded.input_weight_init, loaded.input_weight_std) == ("normal", 0.02)
    torch.manual_seed(0)
    weight = IndRNNModel(IndRNNConfig(hidden_size=256, input_size=256, input_weight_init="normal",
                                      input_weight_std=0.02)).rnn.weight_ih_l0
    assert weight.std().item() == pytest.approx(0.02, rel=0.05)


# ---------------------------------------------------------------- numpy numbers and failed saves


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_size": np.int64(8), "num_hidden_layers": np.int32(2), "vocab_size": np.uint8(40)},
        {"input_size": np.int16(2), "embedding_size": np.int64(4), "num_labels": np.int64(3)},
        {"dropout": np.float32(0.25), "recurrent_max_abs": np.float32(1.5),
         "recurrent_min_abs": np.float64(0.5), "initializer_range": np.float16(0.02)},
        {"recurrent_init": (np.float32(0.0), np.float64(0.5)),
         "last_layer_recurrent_init": np.array([0.5, 1.0], dtype=np.float32)},
        {"bidirectional": np.bool_(True), "pad_token_id": np.int64(0),
         "eos_token_id": [np.int64(1), np.int64(2)]},
    ],
)
def test_numpy_numbers_become_python_numbers_and_save(tmp_path, kwargs):
    config = IndRNNConfig(**kwargs)
    for name in kwargs:
        value = getattr(config, name)
        for item in value if isinstance(value, list) else [value]:
            assert type(item) in (int, float, bool), (name, type(item))
    IndRNNModel(config).save_pretrained(tmp_path)  # config.json, then the weights
    assert (tmp_path / "model.safetensors").is_file()
    loaded = IndRNNConfig.from_pretrained(tmp_path)
    for name, value in kwargs.items():
        expected = np.asarray(value).tolist()
        assert getattr(loaded, name) == pytest.approx(expected), name


def test_numpy_numbers_assigned_after_construction_are_converted(tmp_path):
    config = IndRNNConfig()
    config.hidden_size = np.int64(16)
    config.extra = {"steps": np.int64(3), "scale": np.float32(0.5)}
    assert type(config.hidden_size) is int
    assert type(config.extra["steps"]) is int and type(config.extra["scale"]) is float
    config.save_pretrained(tmp_path)
    assert IndRNNConfig.from_pretrained(tmp_path).extra == {"steps": 3, "scale": 0.5}


@pytest.mark.parametrize(
    "field, value",
    [
        ("hidden_size", np.array([8])),
        ("hidden_size", np.float64(8.0)),
        ("recurrent_max_abs", np.float32("nan")),
        ("recurrent_init", np.array([[0.0, 0.5]])),
    ],
)
def test_numpy_values_that_are_not_valid_numbers_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        IndRNNConfig(**{field: value})


def test_unserialisable_field_fails_before_anything_is_written(tmp_path):
    config = IndRNNConfig(hidden_size=8)
    config.note = {1, 2}  # a set: JSON cannot hold it
    with pytest.raises(ValueError, match="config field 'note'.*cannot be saved to JSON"):
        config.save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_interrupted_config_write_leaves_no_config_json(tmp_path, monkeypatch):
    config = IndRNNConfig(hidden_size=8)

    def interrupted(self, use_diff=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(IndRNNConfig, "to_json_string", interrupted)
    with pytest.raises(KeyboardInterrupt):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()  # before: an empty config.json


@pytest.mark.parametrize("overrides, match", [
    (dict(dense_block_config=[2, 0]), "dense_block_config entries must be a positive int"),
    (dict(dense_block_config="8,6,4"), "dense_block_config must be a non-empty list"),
    (dict(dense_bottleneck=-1), "dense_bottleneck must be an int >= 0"),
    (dict(residual=True, num_hidden_layers=3), "residual=True and dense_growth_rate exclude"),
    (dict(tie_word_embeddings=True), r"embedding_size == the last layer's units \(6"),
    (dict(dense_dropout_by_kind={"last": 0.1}), "dense_dropout_by_kind must be a dict whose"),
    (dict(dense_dropout_by_kind={"growth": 1}), r"dense_dropout_by_kind\['growth'\] must be"),
    (dict(dense_growth_rate=None, dense_dropout_by_kind={"growth": 0.1}),
     "applies to the dense network only"),
])
def test_dense_fields_are_checked(overrides, match):
    with pytest.raises(ValueError, match=match):
        IndRNNConfig(**(dict(hidden_size=8, dense_growth_rate=2, dense_block_config=[2])
                        | overrides))


def test_dense_config_derives_the_layer_count_and_round_trips(tmp_path):
    config = IndRNNConfig(hidden_size=8, dense_growth_rate=2)
    assert config.dense_block_config == [8, 6, 4]  # the authors' default
    assert config.num_hidden_layers == 1 + 2 * 18 + 3
    assert len(config.layer_types) == config.num_hidden_layers
    config.save_pretrained(tmp_path)
    loaded = IndRNNConfig.from_pretrained(tmp_path)
    assert (loaded.num_hidden_layers, loaded.dense_block_config) == (40, [8, 6, 4])
    config = IndRNNConfig(hidden_size=8, dense_growth_rate=2, dense_block_config=[1],
                          dense_dropout_by_kind={"first": 0.2, "growth": 0.25})
    config.save_pretrained(tmp_path)
    loaded = IndRNNConfig.from_pretrained(tmp_path)
    assert loaded.dense_dropout_by_kind == {"first": 0.2, "growth": 0.25}


# ------------------------------------------- fields changed after construction: overrides, setattr


BAD_OVERRIDES = [
    ("classifier_pooling", "Mean"),
    ("dropout", 1.5),
    ("hidden_size", -3),
    ("recurrent_max_abs", -1.0),
    ("norm", "group"),
    ("input_weight_init", "foo"),
    ("input_weight_std", 0.0),
    ("embedding_init_std", -1.0),
]


@pytest.mark.parametrize("field, value", BAD_OVERRIDES)
def test_from_pretrained_overrides_are_checked(field, value, tmp_path):
    """transformers sets from_pretrained's keyword overrides with setattr after the constructor
    has checked the saved fields: they are checked too."""
    IndRNNConfig(hidden_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=field):
        AutoConfig.from_pretrained(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=field):
        IndRNNConfig.from_pretrained(tmp_path, return_unused_kwargs=True, **{field: value})


def test_model_from_pretrained_overrides_are_checked_and_applied(tmp_path):
    IndRNNForSequenceClassification(IndRNNConfig(hidden_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="classifier_pooling must be one of"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, classifier_pooling="Mean")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, classifier_pooling="mean")
    assert model.config.classifier_pooling == "mean"


def test_dense_override_derives_the_layer_count_again(tmp_path):
    dense = dict(hidden_size=8, dense_growth_rate=2, dense_bottleneck=0)
    IndRNNConfig(dense_block_config=[2], **dense).save_pretrained(tmp_path)
    expected = IndRNNConfig(dense_block_config=[1], **dense).num_hidden_layers
    config = AutoConfig.from_pretrained(tmp_path, dense_block_config=[1])
    assert config.num_hidden_layers == expected == 3
    assert len(config.layer_types) == expected
    model = IndRNNForCausalLM(config)
    out = model(input_ids=torch.randint(0, 30, (1, 4)), output_hidden_states=True)
    assert len(out.hidden_states) == expected + 1


def test_dense_layer_count_given_that_is_not_the_derived_one_raises(tmp_path):
    """A dense network derives num_hidden_layers; one given that differs was silently replaced
    (`from_pretrained(dense_folder, num_hidden_layers=2)` gave 9 layers)."""
    dense = dict(hidden_size=8, dense_growth_rate=2, dense_bottleneck=0, dense_block_config=[1])
    assert IndRNNConfig(**dense).num_hidden_layers == 3
    assert IndRNNConfig(num_hidden_layers=3, **dense).num_hidden_layers == 3
    for asked in (2, 5):  # 2 is the default of a network that is not dense
        with pytest.raises(ValueError, match=rf"num_hidden_layers={asked} was given.*: 3 layers"):
            IndRNNConfig(num_hidden_layers=asked, **dense)
    IndRNNConfig(**dense).save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path, num_hidden_layers=3).num_hidden_layers == 3
    for asked in (2, 4):  # the default too: an override is always the user's
        with pytest.raises(ValueError, match=f"num_hidden_layers={asked} was given"):
            AutoConfig.from_pretrained(tmp_path, num_hidden_layers=asked)


@pytest.mark.parametrize("field, value", BAD_OVERRIDES)
def test_field_assigned_after_construction_is_checked_by_save_and_model(field, value, tmp_path):
    model = IndRNNModel(IndRNNConfig(hidden_size=8))
    config = model.config
    setattr(config, field, value)
    with pytest.raises(ValueError, match=field):
        config.save_pretrained(tmp_path / "config")
    with pytest.raises(ValueError, match=field):
        model.save_pretrained(tmp_path / "model")
    assert not list(tmp_path.iterdir())  # checked before anything is written
    with pytest.raises(ValueError, match=field):
        IndRNNModel(config)


def test_dense_field_assigned_after_construction_is_derived_by_the_model():
    config = IndRNNConfig(hidden_size=8, dense_growth_rate=2, dense_block_config=[2],
                          dense_bottleneck=0)
    config.dense_block_config = [1]
    model = IndRNNModel(config)
    assert config.num_hidden_layers == len(model.layers) == 3
    out = model(input_ids=torch.randint(0, 30, (1, 4)), output_hidden_states=True)
    assert len(out.hidden_states) == 4
