"""indrnn-train: the data builders, the CLI end to end on tiny settings, and its argument errors."""

import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    pipeline,
)

import indrnn_train
from hf_integration import data, train
from hf_integration.tokenizer import byte_tokenizer

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- adding problem


def test_adding_problem_shapes_dtypes_and_targets():
    n, T = 64, 17
    ds = data.adding_problem(n, T, seed=3)
    assert len(ds) == n and set(ds[0]) == {"inputs_embeds", "labels"}
    batch = ds[:]
    x, y = batch["inputs_embeds"], batch["labels"]
    assert x.shape == (n, T, 2) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.float32
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) == {0.0, 1.0}
    for i in range(n):  # recompute every target from the two channels, one row at a time
        marked = [t for t in range(T) if markers[i, t] == 1.0]
        assert len(marked) == 2
        assert marked[0] < T // 2 <= marked[1], marked
        assert y[i].item() == pytest.approx(values[i, marked[0]].item()
                                            + values[i, marked[1]].item(), abs=1e-6)


def test_adding_problem_positions_cover_both_halves():
    T = 10
    x = data.adding_problem(2000, T, seed=0)[:]["inputs_embeds"]
    positions = x[..., 1].nonzero()[:, 1]
    assert set(positions.tolist()) == set(range(T))


def test_adding_problem_seeds():
    a = data.adding_problem(8, 12, seed=5)[:]
    b = data.adding_problem(8, 12, seed=5)[:]
    c = data.adding_problem(8, 12, seed=6)[:]
    assert torch.equal(a["inputs_embeds"], b["inputs_embeds"])
    assert torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["inputs_embeds"], c["inputs_embeds"])


def test_adding_rows_do_not_depend_on_how_they_are_read():
    ds = data.adding_problem(10, 9, seed=2)
    whole = ds[:]["inputs_embeds"]
    assert torch.equal(ds[7]["inputs_embeds"], whole[7])
    assert torch.equal(ds.__getitems__([7, 3])[1]["inputs_embeds"], whole[3])
    assert torch.equal(data.adding_problem(4, 9, seed=2)[:]["inputs_embeds"], whole[:4])
    assert not torch.equal(whole[0], whole[1])


def test_adding_problem_of_long_sequences_stores_only_indices():
    ds = data.adding_problem(200_000, 5000, seed=0)  # 8 GB if it were stored
    assert ds.data.nbytes < 4_000_000
    assert ds[199_999]["inputs_embeds"].shape == (5000, 2)


def test_adding_task_test_set_is_independent_of_train_size():
    small = data.adding_task(seq_len=9, train_size=10, test_size=20, seed=1)
    large = data.adding_task(seq_len=9, train_size=30, test_size=20, seed=1)
    assert torch.equal(small.test[:]["inputs_embeds"], large.test[:]["inputs_embeds"])
    assert not torch.equal(small.train[:]["inputs_embeds"], small.test[:10]["inputs_embeds"])
    assert (small.input_size, small.num_labels, small.seq_len) == (2, 1, 9)


def test_adding_baseline_is_about_one_sixth():
    y = data.adding_problem(20000, 4, seed=0)[:]["labels"].double()
    assert ((y - 1) ** 2).mean().item() == pytest.approx(data.ADDING_BASELINE_MSE, abs=0.005)


# Random123's known-answer vectors for Philox4x32-10 (tests/kat_vectors in its distribution):
# counter words, key words, output words.
PHILOX_KAT = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000",
     "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff",
     "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0",
     "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_philox_matches_the_random123_known_answers(counter, key, expected):
    words = lambda text: [int(w, 16) for w in text.split()]  # noqa: E731
    # as scalars, and broadcast over a batch whose other rows differ
    out = data.philox4x32(words(counter), words(key))
    assert [int(w) for w in out] == words(expected)
    c = words(counter)
    batch = data.philox4x32((np.array([c[0], c[0] ^ 1]), c[1], c[2], c[3]), words(key))
    assert [int(w[0]) for w in batch] == words(expected)
    assert [int(w[1]) for w in batch] != words(expected)


def test_adding_draws_are_uniform():
    """Values U(0, 1) at every step, markers uniform over each half: moments and a chi-square
    over the positions of 20000 rows (thresholds at about 5 standard deviations)."""
    T, n = 10, 20_000
    values, first, second = data.adding_draws(7, np.arange(n), T)
    assert values.dtype == np.float32 and values.shape == (n, T)
    assert abs(values.mean() - 0.5) < 5 * (1 / 12 / values.size) ** 0.5
    assert abs(values.var() - 1 / 12) < 0.002
    # neighbouring steps and neighbouring rows are uncorrelated
    assert abs(np.corrcoef(values[:, 0], values[:, 1])[0, 1]) < 0.04
    assert abs(np.corrcoef(values[:-1, 3], values[1:, 3])[0, 1]) < 0.04
    for steps, lo, hi in ((first, 0, T // 2), (second, T // 2, T)):
        counts = np.bincount(steps - lo, minlength=hi - lo)
        assert counts.size == hi - lo  # nothing outside [lo, hi)
        expected = n / (hi - lo)
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 30, counts  # 4 degrees of freedom: P(chi2 > 30) ~ 5e-6


def test_adding_rows_come_from_the_draws_and_index_only():
    """Row i of the dataset is adding_draws(seed, i): values in channel 0, the two marked steps
    in channel 1, their sum as the label; reading rows 3 and 900 of a larger dataset gives the
    same rows as the first reads of a smaller one."""
    ds = data.adding_problem(1000, 11, seed=4)
    rows = ds.__getitems__([900, 3])
    values, first, second = data.adding_draws(4, [900, 3], 11)
    for k, row in enumerate(rows):
        x = row["inputs_embeds"].numpy()
        assert np.array_equal(x[:, 0], values[k])
        assert np.flatnonzero(x[:, 1]).tolist() == [first[k], second[k]]
        assert row["labels"].item() == np.float32(values[k, first[k]] + values[k, second[k]])
    assert torch.equal(data.adding_problem(4, 11, seed=4)[3]["inputs_embeds"],
                       rows[1]["inputs_embeds"])


@pytest.mark.parametrize("seq_len", [0, 1])
def test_adding_problem_rejects_short_sequences(seq_len):
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        data.adding_problem(4, seq_len, seed=0)


@pytest.mark.parametrize("seed", [-1, 2**64 - 1_000_003])
def test_adding_problem_rejects_a_seed_out_of_range(seed):
    with pytest.raises(ValueError, match=rf"seed must be >= 0 and < 2\*\*64 - 1000003, got {seed}"):
        data.adding_problem(4, 5, seed=seed)


def test_adding_problem_takes_64_bit_seeds():
    a = data.adding_problem(3, 5, seed=2**40)[:]["inputs_embeds"]
    b = data.adding_problem(3, 5, seed=2**40 + 2**32)[:]["inputs_embeds"]  # same low word
    assert not torch.equal(a, b)


# ---------------------------------------------------------------------------- MNIST


def _mnist_split(n: int, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
    )
    labels = [int(v) for v in rng.integers(0, 10, n)]
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """A tiny copy of ylecun/mnist in its schema (image: 28x28 PIL, label), via save_to_disk."""
    path = tmp_path_factory.mktemp("mnist") / "mnist"
    datasets.DatasetDict({"train": _mnist_split(12, 0), "test": _mnist_split(6, 1)}).save_to_disk(
        str(path)
    )
    return path


def _pixels(split: datasets.Dataset) -> np.ndarray:
    """The authors' scaling of the bytes (pixelMNIST/Data_gen.py): v / 256, centred, doubled."""
    return np.stack([(np.asarray(img, dtype=np.float32).reshape(-1) / 256 - 0.5) * 2
                     for img in split["image"]])


def test_mnist_from_save_to_disk(mnist_dir):
    task = data.load_mnist(str(mnist_dir))
    assert (len(task.train), len(task.test)) == (12, 6)
    assert (task.seq_len, task.input_size, task.num_labels) == (784, 1, 10)
    batch = task.test[:]
    assert batch["inputs_embeds"].shape == (6, 784, 1)
    assert batch["inputs_embeds"].dtype == torch.float32
    assert batch["labels"].dtype == torch.int64
    raw = datasets.load_from_disk(str(mnist_dir))["test"]
    expected = _pixels(raw)  # row-major pixel order, scaled to [-1, 1)
    np.testing.assert_allclose(batch["inputs_embeds"][..., 0].numpy(), expected, rtol=0, atol=0)
    assert batch["labels"].tolist() == raw["label"][:]


def test_pmnist_applies_a_fixed_permutation(mnist_dir):
    perm = data.pixel_permutation(7)
    assert sorted(perm.tolist()) == list(range(784))
    assert not np.array_equal(perm, np.arange(784))
    assert np.array_equal(perm, data.pixel_permutation(7))
    assert not np.array_equal(perm, data.pixel_permutation(8))
    plain = data.load_mnist(str(mnist_dir)).train[:4]["inputs_embeds"]
    permuted = data.load_mnist(str(mnist_dir), permute=True, permutation_seed=7).train[:4]
    assert torch.equal(permuted["inputs_embeds"], plain[:, torch.from_numpy(perm)])


def test_mnist_from_parquet_files(tmp_path, mnist_dir):
    saved = datasets.load_from_disk(str(mnist_dir))
    saved["train"].to_parquet(str(tmp_path / "train-00000.parquet"))
    saved["test"].to_parquet(str(tmp_path / "test-00000.parquet"))
    task = data.load_mnist(str(tmp_path))
    assert (len(task.train), len(task.test)) == (12, 6)
    np.testing.assert_array_equal(task.test[:]["inputs_embeds"][..., 0].numpy(),
                                  _pixels(saved["test"]))
    single = data.load_mnist(str(tmp_path / "train-00000.parquet"), test_fraction=0.25)
    assert (len(single.train), len(single.test)) == (9, 3)


@pytest.mark.parametrize("names", [("train/0000.parquet", "test/0000.parquet"),
                                   ("mnist_latest_train.parquet", "mnist_test.parquet")])
def test_mnist_test_split_is_the_files_named_test(tmp_path, mnist_dir, names):
    """The test split is the files whose path has the word "test": a test/ subfolder (once
    merged into training, the split then re-cut at random), not "latest"."""
    saved = datasets.load_from_disk(str(mnist_dir))
    for split, name in zip(("train", "test"), names, strict=True):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        saved[split].to_parquet(str(tmp_path / name))
    task = data.load_mnist(str(tmp_path))
    assert (len(task.train), len(task.test)) == (12, 6)
    np.testing.assert_array_equal(task.test[:]["inputs_embeds"][..., 0].numpy(),
                                  _pixels(saved["test"]))


def test_mnist_validation_split_is_held_out_of_the_training_split(mnist_dir):
    """validation_fraction: that share of the training images, disjoint from the rest of
    training and seeded; the test split is untouched."""
    whole = data.load_mnist(str(mnist_dir))
    task = data.load_mnist(str(mnist_dir), validation_fraction=0.25, seed=3)
    assert (len(task.train), len(task.validation), len(task.test)) == (9, 3, 6)
    assert whole.validation is None
    assert task.validation[:]["inputs_embeds"].shape == (3, 784, 1)
    rows = {tuple(r.flatten().tolist())
            for r in whole.train[:]["inputs_embeds"]}
    train = {tuple(r.flatten().tolist()) for r in task.train[:]["inputs_embeds"]}
    held = {tuple(r.flatten().tolist()) for r in task.validation[:]["inputs_embeds"]}
    assert train | held == rows and not train & held
    again = data.load_mnist(str(mnist_dir), validation_fraction=0.25, seed=3)
    assert torch.equal(again.validation[:]["inputs_embeds"], task.validation[:]["inputs_embeds"])
    assert torch.equal(task.test[:]["inputs_embeds"], whole.test[:]["inputs_embeds"])


def test_mnist_rejects_wrong_schema(tmp_path):
    datasets.Dataset.from_dict({"pixels": [[0] * 784], "label": [1]}).save_to_disk(
        str(tmp_path / "bad")
    )
    with pytest.raises(ValueError, match="columns 'image' and 'label'"):
        data.load_mnist(str(tmp_path / "bad"), test_fraction=0.5)


def test_mnist_missing_path_names_data_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        data.load_mnist(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------- text

TEXT = "the quick brown fox jumps over the lazy dog.\nsphinx of black quartz, judge my vow!\n" * 6


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_text_windows_are_the_file_bytes(text_file):
    T = 16
    task = data.load_text(str(text_file), seq_len=T, test_fraction=0.25)
    raw = TEXT.encode("utf-8")
    n_test = int(np.ceil(len(raw) * 0.25))
    train_bytes, test_bytes = raw[: len(raw) - n_test], raw[len(raw) - n_test:]
    batch = task.train[:]
    assert batch["input_ids"].dtype == torch.int64
    assert batch["input_ids"].shape == (len(train_bytes) // T, T)
    assert torch.equal(batch["input_ids"], batch["labels"])
    train_ids = batch["input_ids"]
    assert bytes(train_ids.flatten().tolist()) == train_bytes[: len(train_ids) * T]
    test_ids = task.test[:]["input_ids"]
    assert bytes(test_ids.flatten().tolist()) == test_bytes[: len(test_ids) * T]
    assert (task.vocab_size, task.seq_len) == (257, T)  # 256 bytes and <pad>


# Every byte that UTF-8 text can hold: ASCII with controls, 2-, 3- and 4-byte characters.
ALL_UTF8 = "".join(map(chr, [*range(0x800), *range(0x800, 0x10000, 61), 0xFFFF, 0x10000,
                             0x10FFFF, 0x40000, 0x80000, 0xC0000, 0xF0000]))
ALL_UTF8 = "".join(c for c in ALL_UTF8 if not 0xD800 <= ord(c) < 0xE000)  # no lone surrogates


def test_byte_tokenizer_ids_are_the_utf8_bytes_and_decode_back():
    """The text task's tokenizer maps byte b to id b (what the model trains on) and back, adds
    no special token, and pads with id 256 on the left."""
    tok = byte_tokenizer()
    raw = ALL_UTF8.encode("utf-8")
    assert set(raw) == set(range(256)) - {0xC0, 0xC1, *range(0xF5, 0x100)}  # all UTF-8 can hold
    assert tok(ALL_UTF8).input_ids == list(raw)
    assert tok.decode(list(raw)) == ALL_UTF8
    assert sorted(tok.get_vocab().values()) == list(range(257))
    assert tok.convert_ids_to_tokens(256) == "<pad>" and tok.pad_token_id == 256
    batch = tok(["ab", "c"], padding=True)
    assert batch.input_ids == [[97, 98], [256, 99]] and batch.attention_mask[1] == [0, 1]
    assert tok.decode([104, 0xC3]) == "h\ufffd"  # a cut UTF-8 character: U+FFFD, not an error
    # The pad token's text is text: "<pad>" in a prompt (HTML, code, logs) is its five bytes,
    # not id 256, which training never sees; after a save and reload too.
    text = "x <pad>y"
    assert tok(text).input_ids == list(text.encode("utf-8"))
    with tempfile.TemporaryDirectory() as folder:
        tok.save_pretrained(folder)
        assert AutoTokenizer.from_pretrained(folder)(text).input_ids == list(text.encode("utf-8"))
    # Pre-split words are encoded back to back (the README says so): spaces go in the words.
    words = tok(["hello", " wörld"], is_split_into_words=True)
    assert words.input_ids == list("hello wörld".encode())
    assert words.word_ids() == [0] * 5 + [1] * 7


def test_text_ids_are_the_tokenizers_ids(text_file):
    """The ids the text model trains on are those its saved tokenizer gives the same text."""
    task = data.load_text(str(text_file), seq_len=16, test_fraction=0.25)
    ids = task.train[:4]["input_ids"].flatten().tolist()
    text = TEXT.encode("utf-8")[: len(ids)].decode("utf-8")
    assert task.tokenizer(text).input_ids == ids
    assert task.tokenizer.decode(ids) == text
    assert len(task.tokenizer) == task.vocab_size


def test_text_too_short_names_data_flag(text_file):
    with pytest.raises(ValueError, match="--data .* too short"):
        data.load_text(str(text_file), seq_len=10_000)


@pytest.mark.parametrize(
    "raw",
    [
        b"line one\r\nline two\r\n" * 20,  # CRLF stays CRLF
        "caf\xe9 na\xefve \xe0 la cr\xe8me\n".encode("latin-1") * 20,  # not UTF-8
        bytes(range(256)) * 2,  # binary, every byte value
        b"\x00" * 400,  # all NUL
    ],
    ids=["crlf", "latin-1", "binary", "all-nul"],
)
def test_text_is_the_file_bytes_exactly(tmp_path, raw):
    path = tmp_path / "data.bin"
    path.write_bytes(raw)
    T = 8
    task = data.load_text(str(path), seq_len=T, test_fraction=0.25)
    n_test = int(np.ceil(len(raw) * 0.25))
    train_part, test_part = raw[: len(raw) - n_test], raw[len(raw) - n_test:]
    for split, part in ((task.train, train_part), (task.test, test_part)):
        ids = split[:]["input_ids"]
        assert bytes(ids.flatten().tolist()) == part[: len(ids) * T]
        assert len(ids) == len(part) // T


# ---------------------------------------------------------------------------- CLI arguments


def _exit_message(capsys, argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        train.parse_args(argv)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sudoku"], "invalid choice: 'sudoku'"),
        (["text"], "the text task needs --data"),
        (["adding", "--seq-len", "1"], "--seq-len must be >= 2, got 1"),
        (["adding", "-T", "0"], "--seq-len must be >= 2, got 0"),
        (["mnist", "--seq-len", "100"], "--seq-len is fixed at 784"),
        (["adding", "--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["adding", "--dropout-last", "1"], "--dropout-last must be in [0, 1)"),
        (["adding", "--norm-position", "middle"], "--norm-position: invalid choice"),
        (["adding", "--batch-size", "0"], "--batch-size: must be a positive integer"),
        (["adding", "--residual", "--num-layers", "2"], "--residual needs an odd"),
        (["text", "--data", str(REPO / "README.md"), "--bidirectional"],
         "--bidirectional is not possible"),
        (["adding", "--data", "x"], "--data is not used by the adding task"),
        (["adding", "--seed", "-3"], "--seed: must be an integer >= 0, got -3"),
        (["adding", "--learning-rate", "inf"], "--lr: must be a finite number, got inf"),
        (["adding", "--lr", "nan"], "--lr: must be a finite number, got nan"),
        (["adding", "--lr", "0"], "--learning-rate must be > 0, got 0.0"),
        (["adding", "--dropout", "nan"], "--dropout: must be a finite number, got nan"),
        (["adding", "--max-grad-norm", "inf"], "--max-grad-norm: must be a finite number"),
        (["adding", "--test-fraction", "nan"], "--test-fraction: must be a finite number"),
        (["adding", "--warmup-steps", "-1"], "--warmup-steps: must be an integer >= 0, got -1"),
        (["pmnist", "--permutation-seed", "-1"], "--permutation-seed: must be an integer >= 0"),
        (["adding", "--recurrent-max-abs", "nan"], "--recurrent-max-abs: must be a finite number"),
        (["adding", "--recurrent-max-abs", "inf"], "--recurrent-max-abs: must be a finite number"),
        (["adding", "--recurrent-min-abs", "-1"], "--recurrent-min-abs must be >= 0, got -1.0"),
        (["adding", "--recurrent-min-abs", "nan"], "--recurrent-min-abs: must be a finite number"),
        (["adding", "--recurrent-min-abs", "1.5"],  # the default max is 2^(1/100)
         "--recurrent-min-abs (1.5) must not exceed --recurrent-max-abs (1.00695"),
        (["adding", "--resume", "--overwrite-output-dir"], "exclude each other"),
        (["adding", "--save-steps", "-1"], "--save-steps: must be an integer >= 0, got -1"),
        (["adding", "--save-total-limit", "0"], "--save-total-limit: must be a positive integer"),
        (["adding", "--seed", str(2**32)], "--seed must be at most 4294967295 (2**32 - 1"),
        (["adding", "--seq-len", "99999999999999999999"],
         "--seq-len must be at most 2147483647 (2**31 - 1), got 99999999999999999999"),
        (["adding", "--recurrent-max-abs", "1e300"],
         "--recurrent-max-abs must be at most 3.4e+38 (float32's largest value; 'none' for no "
         "clip), got 1e+300"),
        (["adding", "-T", "2", "--recurrent-max-mag", "1e308"],
         "--recurrent-max-mag 1e+308 gives the clip bound MAG^(1/T) = 1e+154, beyond float32"),
    ],
)
def test_bad_arguments_exit_with_a_message(capsys, argv, message):
    code, err = _exit_message(capsys, argv)
    assert code == 2
    assert message in err


def test_defaults_follow_the_task_and_flags_override():
    args = train.parse_args([])
    d = train.DEFAULTS["adding"]
    assert args.task == "adding"
    assert (args.seq_len, args.num_layers, args.hidden_size) == (d.seq_len, 2, 128)
    assert args.recurrent_max_abs == pytest.approx(2 ** (1 / d.seq_len))
    assert args.train_size == d.batch_size * d.max_steps  # new sequences at every step
    args = train.parse_args(["pmnist", "--hidden-size", "64", "--recurrent-max-abs", "none"])
    assert (args.seq_len, args.num_layers, args.norm, args.dropout) == (784, 6, "batch", 0.1)
    assert args.hidden_size == 64 and args.recurrent_max_abs is None
    args = train.parse_args(["adding", "-T", "500", "--norm", "layer"])
    assert args.recurrent_max_abs == pytest.approx(2 ** (1 / 500)) and args.norm == "layer"


def test_last_layer_near_one_init_is_the_adding_default_where_it_applies(capsys):
    """On for adding (the authors' script), off for the other tasks; --no-... turns it off; a
    clip bound below 1 (or none) turns the default off but refuses the explicit flag."""
    assert train.parse_args(["adding"]).last_layer_init_near_one is True
    assert train.parse_args(["adding", "--no-last-layer-init-near-one"]
                            ).last_layer_init_near_one is False
    assert train.parse_args(["pmnist"]).last_layer_init_near_one is False
    assert train.parse_args(["pmnist", "--last-layer-init-near-one"]).last_layer_init_near_one
    for bound in ("0.9", "none"):
        args = train.parse_args(["adding", "--recurrent-max-abs", bound])
        assert args.last_layer_init_near_one is False
        code, message = _exit_message(capsys, ["adding", "--recurrent-max-abs", bound,
                                               "--last-layer-init-near-one"])
        assert code == 2 and "needs --recurrent-max-abs >= 1" in message
    config = train.build_config(train.parse_args(["adding", "-T", "10"]),
                                data.adding_task(10, 4, 8, seed=0))
    assert config.last_layer_recurrent_init == "near_one"


def test_input_weight_init_flags_reach_the_config(capsys):
    """--input-weight-init normal --input-weight-std S: the authors' adding-problem init of the
    input weights, N(0, 0.001^2) by default; a std <= 0 is a usage error."""
    task = data.adding_task(10, 4, 8, seed=0)
    config = train.build_config(train.parse_args(["adding", "-T", "10"]), task)
    assert config.input_weight_init == "kaiming_uniform"
    args = train.parse_args(["adding", "-T", "10", "--input-weight-init", "normal"])
    config = train.build_config(args, task)
    assert (config.input_weight_init, config.input_weight_std) == ("normal", 0.001)
    args = train.parse_args(["adding", "--input-weight-init", "normal", "--input-weight-std",
                             "0.01"])
    assert args.input_weight_std == 0.01
    code, message = _exit_message(capsys, ["adding", "--input-weight-std", "0"])
    assert code == 2 and "--input-weight-std must be > 0, got 0.0" in message


def test_norm_position_follows_the_authors_script_of_each_task(tmp_path):
    """bn_after in the authors' MNIST (and every other) script, bn_before in the LM's."""
    assert train.parse_args(["mnist"]).norm_position == "after"
    assert train.parse_args(["pmnist"]).norm_position == "after"
    text = tmp_path / "x.txt"
    text.write_bytes(b"some text")
    for preset in ("cpu", "paper"):
        args = train.parse_args(["text", "--data", str(text), "--preset", preset])
        assert args.norm_position == "before"
    args = train.parse_args(["mnist", "--norm-position", "before", "--dropout-last", "0.2"])
    assert (args.norm_position, args.dropout_last) == ("before", 0.2)
    config = train.build_config(args, data.TaskData(None, None, 784, input_size=1,
                                                    num_labels=10))
    assert (config.norm_position, config.dropout_last) == ("before", 0.2)


def test_help_lists_every_flag_and_the_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data", "--seq-len", "--hidden-size", "--num-layers", "--norm", "--dropout",
                 "--recurrent-max-abs", "--last-layer-init-near-one", "--learning-rate",
                 "--lr-scheduler", "--batch-size", "--max-steps", "--eval-steps",
                 "--max-grad-norm", "--seed", "--cpu", "--output-dir"):
        assert flag in out
    d = train.DEFAULTS["adding"]
    assert f"adding  T={d.seq_len}" in out and f"lr={d.learning_rate}" in out
    assert "paper" in out
    c = indrnn_train.CPU_DEFAULTS["text"]
    assert f"text    T={c.seq_len} layers={c.num_layers} hidden={c.hidden_size}" in out
    assert "--preset" in out and f"test-size={c.test_size}" in out
    # torch's ReduceLROnPlateau rule, which the plateau test below checks
    assert "makes more than --plateau-patience in a row" in " ".join(out.split())


@pytest.mark.parametrize(("cuda", "argv", "preset"), [
    (False, [], "cpu"), (True, [], "paper"), (True, ["--cpu"], "cpu"),
    (False, ["--preset", "paper"], "paper"), (True, ["--preset", "cpu"], "cpu"),
])
def test_text_defaults_follow_the_device_unless_a_preset_is_given(monkeypatch, text_file, cuda,
                                                                  argv, preset):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    args = train.parse_args(["text", "--data", str(text_file), *argv])
    d = (train.DEFAULTS if preset == "paper" else indrnn_train.CPU_DEFAULTS)["text"]
    assert args.preset == preset
    assert (args.hidden_size, args.num_layers, args.batch_size, args.max_steps, args.test_size,
            args.norm) == (d.hidden_size, d.num_layers, d.batch_size, d.max_steps, d.test_size,
                           d.norm)
    assert f"--preset {preset}" in indrnn_train.describe_defaults(args)
    # a flag still overrides the preset's value
    args = train.parse_args(["text", "--data", str(text_file), *argv, "--hidden-size", "64",
                             "--norm", "none", "--test-size", "7"])
    assert (args.hidden_size, args.norm, args.test_size) == (64, None, 7)


def test_cpu_text_preset_is_small_and_bounds_evaluation():
    cpu, paper = indrnn_train.CPU_DEFAULTS["text"], train.DEFAULTS["text"]
    assert cpu.hidden_size * cpu.num_layers < paper.hidden_size * paper.num_layers / 10
    assert cpu.test_size is not None and paper.test_size is None


def test_preset_is_refused_for_tasks_without_presets(capsys):
    code, err = _exit_message(capsys, ["adding", "--preset", "paper"])
    assert code == 2 and "--preset applies to the text task only" in err


@pytest.mark.parametrize(
    ("environ", "cuda", "expected"),
    [({}, False, False), ({"WORLD_SIZE": "2"}, False, True), ({"WORLD_SIZE": "2"}, True, False),
     ({"WORLD_SIZE": "1"}, False, False)],
)
def test_use_cpu_under_torchrun_without_cuda(monkeypatch, environ, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert train.use_cpu(train.parse_args([]), environ) is expected
    assert train.use_cpu(train.parse_args(["--cpu"]), environ) is True


# ---------------------------------------------------------------------------- CLI end to end

TINY = ["--hidden-size", "8", "--max-steps", "6", "--eval-steps", "3", "--batch-size", "4",
        "--no-progress"]


def _check_outputs(out: Path, stdout: str, task: str, metric: str) -> dict:
    for name in ("config.json", "model.safetensors", "modeling_indrnn.py",
                 "configuration_indrnn.py", "README.md", "metrics.json", "learning_curve.png"):
        assert (out / name).is_file(), name
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["steps"] == 6 and metrics["metric"] == metric
    assert metrics["kernel_path"].startswith("CPU")
    assert np.isfinite(metrics["final_metric"])
    # The reloaded model (trust_remote_code) gives the same evaluation.
    assert metrics["reloaded_metric"] == pytest.approx(metrics["final_metric"], rel=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "indrnn"
    assert "AutoModelForSequenceClassification" in config["auto_map"]
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "trust_remote_code=True" in card
    assert "install it from the project's source repository" in card  # not on PyPI
    assert "indrnn-train summary" in stdout
    for label in ("task", "device", "kernel path", "steps", "wall time", metric, "reloaded"):
        assert f"  {label} " in stdout, label
    return metrics


def test_cli_adding_end_to_end(tmp_path, capsys):
    out = tmp_path / "adding"
    assert train.main(["adding", "-T", "10", "--test-size", "40", *TINY,
                       "--output-dir", str(out)]) == 0
    metrics = _check_outputs(out, capsys.readouterr().out, "adding", "test MSE")
    assert metrics["seq_len"] == 10
    assert metrics["settings"]["recurrent_max_abs"] == pytest.approx(2 ** 0.1)
    assert metrics["baseline"] == pytest.approx(data.ADDING_BASELINE_MSE, abs=0.08)
    # The saved folder loads the way the Hub serves it and predicts the test targets' scale.
    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
    x = data.adding_task(10, 4, 40, seed=0).test[:8]["inputs_embeds"]
    with torch.no_grad():
        assert model(inputs_embeds=x).logits.shape == (8, 1)
    log = json.loads((out / "log_history.json").read_text())
    assert [e["step"] for e in log if "eval_loss" in e][:2] == [3, 6]


@pytest.mark.parametrize("keep", [False, True], ids=["flush", "keep-denormals"])
def test_cpu_run_flushes_denormals_and_restores_the_callers_mode(tmp_path, capsys, monkeypatch,
                                                                 keep):
    """On the CPU the run computes with denormals flushed to zero unless --keep-denormals; the
    mode seen inside the training step is recorded, and the caller's mode is back afterwards."""
    import transformers

    seen = []
    original = transformers.Trainer.training_step

    def record(self, *args, **kwargs):
        seen.append(train.flushes_denormals())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", record)
    assert not train.flushes_denormals()
    flags = ["adding", "-T", "6", "--test-size", "20", *TINY, "--output-dir", str(tmp_path)]
    assert train.main(flags + (["--keep-denormals"] if keep else [])) == 0
    assert seen and set(seen) == {not keep}
    assert not train.flushes_denormals()


KEEP_FREED_SCRIPT = """
import ctypes, resource, sys
from hf_integration import train
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
MB = 1 << 20
# glibc's adaptive thresholds at their largest, whatever the imports did: a 32 MiB block freed
# (mmap threshold 32 MiB, trim threshold 64 MiB).
libc.free(libc.malloc(32 * MB))
if sys.argv[1] == "keep":
    assert train.keep_freed_memory()
faults = []
for _ in range(8):  # a "step": six 20 MiB buffers written, then all freed (malloc itself, so
    # that no allocation of the interpreter's lands between them)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [libc.malloc(20 * MB) for _ in range(6)]
    for p in buffers:
        ctypes.memset(p, 1, 20 * MB)
    for p in buffers:
        libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[4:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds")
def test_keep_freed_memory_ends_the_page_faults_of_repeated_steps():
    """A step that frees 120 MiB at the top of the heap: with glibc's defaults, even at their
    largest adaptive thresholds, it goes back to the system (over the 64 MiB trim threshold)
    and every step faults its 30720 pages in again; with keep_freed_memory it is reused. The
    buffers come from malloc directly: with tensors, where the interpreter's own allocations
    land between them decides whether glibc can trim at all, which differs from one process to
    the next (a first version of this test with torch tensors faulted in some and not others)."""
    def faults(mode):
        result = subprocess.run([sys.executable, "-c", KEEP_FREED_SCRIPT, mode], cwd=REPO,
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "GLIBC_TUNABLES": ""})
        assert result.returncode == 0, result.stderr
        return int(result.stdout.split()[-1])

    assert faults("default") > 4 * 25_000
    assert faults("keep") < 4 * 100


def test_keep_freed_memory_leaves_glibc_tunables_to_the_user():
    assert not train.keep_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})


@pytest.mark.parametrize("keep", [False, True], ids=["keep-freed", "keep-malloc-defaults"])
def test_cpu_run_keeps_freed_memory_unless_told_not_to(tmp_path, capsys, monkeypatch, keep):
    calls = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append(1) or True)
    flags = ["adding", "-T", "6", "--test-size", "20", *TINY, "--output-dir", str(tmp_path)]
    assert train.main(flags + (["--keep-malloc-defaults"] if keep else [])) == 0
    assert calls == ([] if keep else [1])


def test_plateau_schedule_divides_the_lr_by_ten_when_the_test_loss_stalls(tmp_path, capsys):
    """--lr-scheduler plateau is the Trainer's reduce-on-plateau on the test loss, factor 0.1:
    with patience 1 and a test loss that cannot improve (lr so small that nothing changes),
    the logged lr drops tenfold step by step; warmup is refused; MNIST uses it by default."""
    assert train.parse_args(["pmnist"]).lr_scheduler == "plateau"
    out = tmp_path / "plateau"
    assert train.main(["adding", "-T", "6", "--test-size", "20", "--hidden-size", "8",
                       "--max-steps", "12", "--eval-steps", "2", "--logging-steps", "2",
                       "--batch-size", "4", "--no-progress", "--learning-rate", "1e-30",
                       "--lr-scheduler", "plateau", "--plateau-patience", "1",
                       "--output-dir", str(out)]) == 0
    log = json.loads((out / "log_history.json").read_text())
    lrs = [e["learning_rate"] for e in log if "learning_rate" in e]
    # Evaluations at steps 2, 4, ...: the first sets the best; with patience 1 the second one
    # without a better loss (step 6) divides the lr, logged from step 8; then again at 10.
    assert lrs == pytest.approx([1e-30, 1e-30, 1e-30, 1e-31, 1e-31, 1e-32])
    code, message = _exit_message(capsys, ["adding", "--lr-scheduler", "plateau",
                                           "--warmup-steps", "5"])
    assert code == 2 and "--warmup-steps does not apply" in message


def _spin_until(stop: float) -> None:
    while time.monotonic() < stop:
        pass


def test_cpu_threads_auto_leaves_busy_cores_out(capsys):
    """--cpu-threads auto: torch's cores that are idle (rounded), at least 1; a number is
    taken as given (default 1); anything else is refused. A busy core shows as busy."""
    assert train.parse_args(["adding"]).cpu_threads == 1
    assert train.parse_args(["adding", "--cpu-threads", "auto"]).cpu_threads == "auto"
    assert train.parse_args(["adding", "--cpu-threads", "3"]).cpu_threads == 3
    assert train.cpu_threads(3) == 3
    assert train.cpu_threads("auto", available=2, idle=1.8) == 2
    assert train.cpu_threads("auto", available=2, idle=1.3) == 1
    assert train.cpu_threads("auto", available=2, idle=0.0) == 1
    assert train.cpu_threads("auto", available=16, idle=40.0) == 16
    assert 1 <= train.cpu_threads("auto") <= train._TORCH_THREADS
    cores = os.cpu_count()
    assert 0.0 <= train.idle_cores(0.05) <= cores + 1e-9
    stop = time.monotonic() + 1.0
    spin = multiprocessing.get_context("fork").Process(target=_spin_until, args=(stop,))
    spin.start()
    try:
        time.sleep(0.2)
        assert train.idle_cores(0.3) <= cores - 0.5  # the spinning process's core is busy
    finally:
        spin.join()
    for bad in ("0", "two"):
        code, err = _exit_message(capsys, ["adding", "--cpu-threads", bad])
        assert code == 2 and "--cpu-threads" in err


def test_cli_pmnist_end_to_end_on_local_data(tmp_path, capsys, mnist_dir, monkeypatch):
    """The authors' 5 % validation split is what the run evaluates while training (and what the
    plateau schedule watches); the test split is evaluated once, at the end."""
    evaluated = []
    evaluate = transformers.Trainer.evaluate

    def record(self, eval_dataset=None, *args, **kwargs):
        evaluated.append(len(eval_dataset if eval_dataset is not None else self.eval_dataset))
        return evaluate(self, eval_dataset, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "evaluate", record)
    out = tmp_path / "pmnist"
    assert train.main(["pmnist", "--data", str(mnist_dir), "--num-layers", "2", *TINY,
                       "--output-dir", str(out)]) == 0
    metrics = _check_outputs(out, capsys.readouterr().out, "pmnist", "test error %")
    assert metrics["seq_len"] == 784 and metrics["settings"]["norm"] == "batch"
    assert 0 <= metrics["final_metric"] <= 100
    # 12 training images: 1 held out (5 %, rounded up); the test split has 6.
    assert metrics["validation_fraction"] == 0.05 and "eval_accuracy" in metrics["validation"]
    assert evaluated == [1, 1, 1, 6, 6]  # steps 3 and 6, the final validation, test, reloaded
    assert metrics["final_metric"] == pytest.approx(
        100 * (1 - metrics["eval"]["eval_accuracy"]))
    log = json.loads((out / "log_history.json").read_text())
    assert [e["step"] for e in log if "test_loss" in e] == [6]
    assert "validation split" in (out / "README.md").read_text()
    for argv, message in ((["adding", "--validation-fraction", "0.1"], "applies to mnist"),
                          (["mnist", "--validation-fraction", "1"], "must be in [0, 1)")):
        code, err = _exit_message(capsys, argv)
        assert code == 2 and message in err, err


def test_cli_text_end_to_end(tmp_path, capsys, text_file):
    out = tmp_path / "text"
    assert train.main(["text", "--data", str(text_file), "-T", "12", "--num-layers", "2",
                       "--norm", "none", *TINY, "--output-dir", str(out)]) == 0
    stdout = capsys.readouterr().out
    metrics = _check_outputs(out, stdout, "text", "test bits per character")
    assert "indrnn-train: text: --preset cpu" in stdout  # this machine has no CUDA
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 257 and "AutoModelForCausalLM" in config["auto_map"]
    # bits per character = the evaluation loss (nats per byte) / ln 2
    assert metrics["final_metric"] == pytest.approx(metrics["eval"]["eval_loss"] / np.log(2))
    assert 0 < metrics["baseline"] < 8

    # The folder holds its tokenizer: a text-generation pipeline needs nothing else, feeds the
    # prompt's bytes alone and returns the text of the bytes the model generates after them.
    assert (out / "tokenizer.json").is_file()
    # --overwrite-output-dir removes every file a run writes (here the most: a tokenizer too).
    assert train.earlier_run_files(str(out)) == sorted(p.name for p in out.iterdir())
    generate = pipeline("text-generation", model=str(out))
    prompt = "the quick "
    text = generate(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([list(prompt.encode())])
    new = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    new_bytes = bytes(i for i in new if i != 256)  # the pipeline skips <pad>, a special token
    assert text == prompt + new_bytes.decode("utf-8", errors="replace")


def test_cli_missing_data_file_exits_with_a_message(tmp_path, capsys):
    for argv in (["text", "--data", str(tmp_path / "missing.txt")],
                 ["mnist", "--data", str(tmp_path / "missing")]):
        code, err = _exit_message(capsys, [*argv, "--output-dir", str(tmp_path / "o")])
        assert code == 2 and f"--data '{tmp_path / 'missing'}" in err
    code, err = _exit_message(capsys, ["text", "--data", str(tmp_path)])
    assert code == 2 and "is not a file" in err


def test_console_entry_point_exit_code():
    """`python -m hf_integration.train` fails cleanly on a bad task."""
    result = subprocess.run([sys.executable, "-m", "hf_integration.train", "sudoku"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "invalid choice: 'sudoku'" in result.stderr
    assert "Traceback" not in result.stderr


# What the indrnn-train script runs (pyproject's entry point), then the heavy modules it loaded.
ENTRY_POINT = r"""
import re, sys
from pathlib import Path
line = re.search(r'^indrnn-train = "(.+):(.+)"$', Path("pyproject.toml").read_text(), re.M)
module = __import__(line[1])
try:
    code = getattr(module, line[2])(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted({"torch", "transformers", "datasets", "numpy"} & set(sys.modules))
print("HEAVY", heavy, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [(["--help"], 0, ""), (["sudoku"], 2, "invalid choice: 'sudoku'"),
     (["adding", "--lr", "0"], 2, "--learning-rate must be > 0"),
     (["text"], 2, "the text task needs --data"),
     (["text", "--data", "missing.txt"], 2, "--data 'missing.txt' does not exist"),
     (["text", "--data", "README.md", "--dropout", "2"], 2, "--dropout must be in [0, 1)")],
)
def test_help_and_argument_errors_import_no_heavy_module(argv, code, message):
    """`indrnn-train --help` and bad flags answer before torch, transformers and datasets are
    imported (they took 4-10 s to load on 2 busy cores)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", ENTRY_POINT, *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "HEAVY []" in result.stderr
    if argv == ["--help"]:
        assert "--preset" in result.stdout


@pytest.mark.slow
def test_cli_under_torchrun_on_cpu_runs_ddp(tmp_path):
    """Two processes on a CPU-only machine: the CLI sets use_cpu, so the Trainer runs DDP."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "hf_integration.train",
               "adding", "-T", "8", "--test-size", "40", *TINY, "--output-dir", str(out)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 6
    assert metrics["reloaded_metric"] == pytest.approx(metrics["final_metric"], rel=1e-5)
    assert result.stdout.count("indrnn-train summary") == 1  # printed by rank 0 only
    assert "(batch 4 x 2 process(es))" in result.stdout


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_adding_tiny_series_and_resume(tmp_path, capsys):
    script = _load_script("reproduce_adding")
    common = ["--max-steps", "4", "--eval-steps", "2", "--test-size", "20", "--batch-size", "8",
              "--near-one-from", "6", "--out", str(tmp_path)]
    script.main(["--lengths", "4", *common])
    script.main(["--lengths", "4", "6", "--resume", "--max-grad-norm", "5",
                 "--input-weight-init", "normal", *common])
    runs = json.loads((tmp_path / "adding_results.json").read_text())
    assert [r["seq_len"] for r in runs] == [4, 6]
    assert [r["max_grad_norm"] for r in runs] == [0.0, 5.0]
    assert "--max-grad-norm 5.0" in runs[1]["command"]
    assert [r["input_weight_init"] for r in runs] == ["kaiming_uniform", "normal"]
    assert "--input-weight-init normal" in runs[1]["command"]
    assert [r["last_layer_init_near_one"] for r in runs] == [False, True]
    assert all(r["steps"] == 4 and [s for s, _ in r["curve"]] == [2, 4] for r in runs)
    assert "--learning-rate 0.0002 --lr-scheduler step" in runs[0]["command"]
    assert (tmp_path / "adding_curves.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "adding_results.md").read_text()
    assert "| 6 | 4 |" in table and table.rstrip().endswith("| yes | 5.0 | 2.0 | 10.0 | yes |")
    # The authors' recipe by default: MAG 2, gradient clamp 10, recurrent weights constrained.
    assert "--recurrent-max-mag 2.0 --grad-clip-value 10.0" in runs[0]["command"]
    assert "--no-constrain" not in runs[0]["command"] and runs[0]["constrain"]
    assert not (tmp_path / "models").exists()


def test_reproduce_adding_ctrl_c_is_a_message_and_resume_continues_the_length(tmp_path,
                                                                              capsys,
                                                                              monkeypatch):
    script = _load_script("reproduce_adding")
    guarded_trainer, steps = train.guarded_trainer, []

    def interrupted_at_step_3(guard, **kwargs):
        trainer = guarded_trainer(guard, **kwargs)
        training_step = trainer.training_step

        def step(*args, **kw):
            steps.append(trainer.state.global_step)
            if trainer.state.global_step == 3 and guard.signal is None:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, through the handler
            return training_step(*args, **kw)

        trainer.training_step = step
        return trainer

    monkeypatch.setattr(train, "guarded_trainer", interrupted_at_step_3)
    argv = ["--lengths", "4", "--max-steps", "6", "--eval-steps", "2", "--test-size", "20",
            "--batch-size", "8", "--out", str(tmp_path)]
    assert script.main(argv) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "Traceback" not in err and "reproduce_adding: SIGINT at step 4" in err
    assert steps == [0, 1, 2, 3]
    assert script.main([*argv, "--resume"]) == 0
    assert steps[4:] == [4, 5]  # from checkpoint-4, not from step 0
    (run,) = json.loads((tmp_path / "adding_results.json").read_text())
    assert run["steps"] == 6 and [s for s, _ in run["curve"]] == [2, 4, 6]


def test_reproduce_mnist_recipe_builds_the_authors_arguments(monkeypatch, mnist_dir, tmp_path):
    script = _load_script("reproduce_mnist")
    seen = []
    monkeypatch.setattr(script.train, "run", lambda args: seen.append(args) or {
        "final_metric": 50.0, "steps": args.max_steps, "train_seconds": 1.0, "device": "cpu"})
    script.main(["--tasks", "pmnist", "--data", str(mnist_dir), "--max-steps", "3",
                 "--out", str(tmp_path)])
    plain6, plain12, residual, dense = seen
    for args in seen:  # the authors' recipe
        assert (args.task, args.norm, args.norm_position) == ("pmnist", "batch", "after")
        assert (args.learning_rate, args.batch_size, args.seq_len) == (2e-4, 32, 784)
        assert args.recurrent_max_abs == pytest.approx(5 ** (1 / 784))
        assert (args.grad_clip_value, args.weight_decay, args.no_constrain) == (10.0, 1e-4, False)
        assert args.last_layer_init_near_one
    assert (plain6.num_layers, plain6.hidden_size, plain6.dropout) == (6, 128, 0.1)
    assert plain12.num_layers == 12 and residual.residual and residual.num_layers == 11
    assert (dense.dense_growth_rate, dense.dense_blocks, dense.dense_bottleneck) == (16, [8, 6, 4],
                                                                                   4)
    assert (dense.hidden_size, dense.num_layers, dense.dropout, dense.dropout_last) == (
        96, 40, 0.1, 0.1)
    assert dense.dense_dropout == {"first": 0.2, "growth": 0.2}  # the authors' five rates
    assert all(args.lr_scheduler == "plateau" for args in seen)
    rows = json.loads((tmp_path / "mnist_results.json").read_text())
    assert [r["paper_error_%"] for r in rows] == [4.0, 3.16, 2.98, 2.8]


def test_reproduce_mnist_dry_run_prints_settings_and_trains_every_configuration(capsys):
    rows = _load_script("reproduce_mnist").main(["--dry-run", "--tasks", "pmnist"])
    out = capsys.readouterr().out
    assert [(r["config"], r["steps"]) for r in rows] == [
        ("plain6", 2), ("plain12", 2), ("residual", 2), ("dense", 2)]
    assert "40 IndRNN layers" in rows[-1]["model"]
    for setting in ("norm_position             after", "recurrent_max_mag         5.0",
                    "grad_clip_value           10.0", "weight_decay              0.0001",
                    "dense_blocks              [8, 6, 4]", "max_steps                 150000"):
        assert setting in out, setting


def test_cli_without_matplotlib_still_saves_everything_else(tmp_path, capsys, monkeypatch):
    def no_matplotlib(*args, **kwargs):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(train, "plot_learning_curve", no_matplotlib)
    out = tmp_path / "adding"
    assert train.main(["adding", "-T", "6", "--test-size", "20", *TINY,
                       "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "no learning_curve.png" in captured.err and "pip install matplotlib" in captured.err
    assert not (out / "learning_curve.png").exists()
    assert (out / "metrics.json").is_file() and "indrnn-train summary" in captured.out


# ---------------------------------------------------------------------------- checkpoints, resume


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _checkpoint_names(out: Path) -> list[str]:
    return [Path(p).name for p in train.checkpoints(str(out))]


def test_killed_then_resumed_run_ends_with_the_same_weights(tmp_path, capsys, monkeypatch):
    """SIGTERM at step 3 saves checkpoint-4 and exits 143; --resume then ends bit for bit where
    an uninterrupted run ends (dropout and batch norm: RNG, data order and running statistics
    are restored too)."""
    flags = ["adding", "-T", "6", "--test-size", "20", "--dropout", "0.2", "--norm", "batch",
             *TINY, "--save-steps", "2", "--save-total-limit", "2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train.main([*flags, "--output-dir", str(whole)]) == 0
    assert _checkpoint_names(whole) == ["checkpoint-4", "checkpoint-6"]  # every 2, newest 2

    guarded_trainer = train.guarded_trainer

    def signalled_at_step_3(guard, **kwargs):
        trainer = guarded_trainer(guard, **kwargs)
        training_step = trainer.training_step

        def step(*args, **kw):
            if trainer.state.global_step == 3 and guard.signal is None:
                os.kill(os.getpid(), signal.SIGTERM)  # the real signal, through the handler
            return training_step(*args, **kw)

        trainer.training_step = step
        return trainer

    monkeypatch.setattr(train, "guarded_trainer", signalled_at_step_3)
    assert train.main([*flags, "--output-dir", str(parts)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "SIGTERM at step 4" in err and "--resume" in err
    assert _checkpoint_names(parts) == ["checkpoint-2", "checkpoint-4"]
    stopped = json.loads((parts / "metrics.json").read_text())
    assert stopped["interrupted"] == "SIGTERM" and stopped["steps"] == 4
    interrupted_weights = _weights(parts)
    assert all(torch.equal(interrupted_weights[k], v)
               for k, v in _weights(parts / "checkpoint-4").items())

    monkeypatch.setattr(train, "guarded_trainer", guarded_trainer)
    assert train.main([*flags, "--output-dir", str(parts), "--resume"]) == 0
    expected, resumed = _weights(whole), _weights(parts)
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name
    assert any(not torch.equal(interrupted_weights[k], v) for k, v in expected.items())
    metrics = json.loads((parts / "metrics.json").read_text())
    assert metrics["steps"] == 6 and "interrupted" not in metrics
    assert metrics["final_metric"] == json.loads((whole / "metrics.json").read_text())[
        "final_metric"]


def test_sigint_to_the_cli_saves_model_and_metrics_then_exits_130(tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hf_integration.train", "adding", "-T", "6",
               "--test-size", "20", "--hidden-size", "8", "--batch-size", "4",
               "--max-steps", "100000", "--eval-steps", "1000", "--save-steps", "5",
               "--no-progress", "--output-dir", str(out)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint-5" / "trainer_state.json").is_file():  # training has begun
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint-5 within 120 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "Traceback" not in stderr and "SIGINT at step" in stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] == "SIGINT"
    assert Path(metrics["checkpoint"]).name == f"checkpoint-{metrics['steps']}"
    assert _checkpoint_names(out)[-1] == f"checkpoint-{metrics['steps']}"
    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # The same command without --resume refuses to start over the unfinished run.
    assert train.main(command[3:]) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints of an earlier run" in err and "--resume" in err


def test_overwrite_output_dir_deletes_earlier_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    stale = out / "checkpoint-50"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text("{}")
    flags = ["adding", "-T", "6", "--test-size", "20", *TINY, "--save-steps", "0",
             "--output-dir", str(out)]
    assert train.main(flags) == 2
    assert "checkpoint-50" in capsys.readouterr().err and stale.is_dir()
    assert train.main([*flags, "--overwrite-output-dir"]) == 0
    assert not stale.exists() and _checkpoint_names(out) == []


def test_resume_without_a_checkpoint_starts_at_step_0(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(["adding", "-T", "6", "--test-size", "20", *TINY, "--resume",
                       "--output-dir", str(out)]) == 0
    assert "no checkpoint in" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6


def test_resume_with_other_model_flags_is_a_one_line_error(tmp_path, capsys):
    flags = ["adding", "-T", "6", "--test-size", "20", *TINY, "--max-steps", "2",
             "--save-steps", "2", "--output-dir", str(tmp_path / "run")]
    assert train.main(flags) == 0
    err = _one_line_error(capsys, [*flags, "--resume", "--hidden-size", "16"])
    assert "holds a different model" in err and "hidden_size=8 there, 16 here" in err


def test_incomplete_checkpoint_is_not_resumed_from(tmp_path):
    for step, complete in ((4, True), (8, False)):  # checkpoint-8: a save cut short by a kill
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert _checkpoint_names(tmp_path) == ["checkpoint-4"]


FINISHED = ["adding", "-T", "6", "--test-size", "20", *TINY, "--max-steps", "4",
            "--save-steps", "2"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step run of FINISHED (checkpoint-2, checkpoint-4), to copy and resume."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train.main([*FINISHED, "--output-dir", str(out)]) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


def test_resume_with_other_training_flags_is_a_one_line_error_naming_each(finished_run,
                                                                         tmp_path, capsys):
    """The optimizer (lr, weight decay), schedule and data position come from the checkpoint:
    a changed flag of them would be ignored or would mix two runs, so it is refused; flags that
    do not change the steps are not."""
    out = _copy(finished_run, tmp_path)
    flags = [*FINISHED, "--output-dir", str(out), "--resume"]
    err = _one_line_error(capsys, [*flags, "--learning-rate", "0.05", "--seed", "7"])
    assert f"--resume: {out / 'checkpoint-4'} was trained with other flags" in err
    assert "--learning-rate 0.002 there, 0.05 here" in err and "--seed 0 there, 7 here" in err
    err = _one_line_error(capsys, [*flags, "--max-steps", "8", "--weight-decay", "0.5"])
    assert "--max-steps 4 there, 8 here" in err and "--weight-decay 0.0 there, 0.5 here" in err
    assert "--train-size 16 there, 32 here" in err  # the adding data: batch x steps
    err = _one_line_error(capsys, [*flags, "--lr-scheduler", "constant", "--no-constrain",
                                   "--grad-clip-value", "1"])
    for flag in ("--lr-scheduler 'linear' there, 'constant' here",
                 "--no-constrain False there, True here",
                 "--grad-clip-value 10.0 there, 1.0 here"):
        assert flag in err
    assert train.main([*flags, "--eval-steps", "1", "--logging-steps", "1", "--save-steps", "1",
                       "--save-total-limit", "3", "--eval-batch-size", "7"]) == 0


def test_resume_of_an_mnist_run_with_other_pixel_scaling_is_refused(tmp_path):
    """The pixels became (v / 256 - 0.5) * 2 (the authors'), from v / 255: a checkpoint whose
    record lacks the scaling was trained on other inputs, and --resume names it."""
    args = train.parse_args(["mnist", "--output-dir", str(tmp_path)])
    settings = train.resume_settings(args)
    assert settings["pixel_scaling"] == data.PIXEL_SCALING == "(v / 256 - 0.5) * 2"
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    earlier = {k: v for k, v in settings.items() if k != "pixel_scaling"}
    (checkpoint / train.RECORD).write_text(json.dumps({"settings": earlier}))
    with pytest.raises(train.UsageError, match=r"the pixel scaling \(an earlier indrnn-train's\)"
                       r" None there, '\(v / 256 - 0.5\) \* 2' here"):
        train.check_resumable([str(checkpoint)], args)
    (checkpoint / train.RECORD).write_text(json.dumps({"settings": settings}))
    train.check_resumable([str(checkpoint)], args)


def test_step_schedule_divides_the_lr_by_10_every_step_size_steps_and_resumes(tmp_path,
                                                                               capsys):
    """--lr-scheduler step (the IndRNN paper's adding-problem schedule, 2e-4 / 10 every 20000
    steps): the logged lr falls tenfold every --lr-step-size steps, and a run resumed from a
    checkpoint goes on with the same decay as one uninterrupted run."""
    flags = ["adding", "-T", "6", "--test-size", "20", *TINY, "--learning-rate", "1e-2",
             "--lr-scheduler", "step", "--lr-step-size", "2", "--logging-steps", "1",
             "--save-steps", "2"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train.main([*flags, "--output-dir", str(whole)]) == 0

    def lrs(out):
        log = json.loads((out / "log_history.json").read_text())
        return [e["learning_rate"] for e in log if "learning_rate" in e]

    want = [1e-2 * 0.1 ** ((step - 1) // 2) for step in range(1, 7)]  # the lr of each step
    assert lrs(whole) == pytest.approx(want, rel=1e-6)
    shutil.copytree(whole, cut)  # as if stopped after checkpoint-4
    shutil.rmtree(cut / "checkpoint-6")
    assert train.main([*flags, "--output-dir", str(cut), "--resume"]) == 0
    assert lrs(cut)[-2:] == pytest.approx(want[-2:], rel=1e-6)
    for argv, message in ((["--lr-step-size", "5"], "--lr-step-size applies to --lr-scheduler"),
                          (["--lr-scheduler", "step", "--warmup-steps", "3"],
                           "--warmup-steps does not apply to --lr-scheduler step")):
        code, err = _exit_message(capsys, ["adding", *argv])
        assert code == 2 and message in err, err
    assert train.parse_args(["adding", "--lr-scheduler", "step"]).lr_step_size == 20_000


@pytest.mark.parametrize("limit, kept", [(1, ["checkpoint-8"]),
                                         (2, ["checkpoint-6", "checkpoint-8"])])
def test_plateau_schedule_keeps_the_newest_checkpoints(tmp_path, capsys, limit, kept):
    """The plateau schedule needs metric_for_best_model, which made the Trainer keep the
    checkpoint of the best test loss (step 2 here: nothing changes at lr 1e-30) in place of
    newer ones, and with --save-total-limit 1 delete every other one at the end."""
    out = tmp_path / "run"
    assert train.main(["adding", "-T", "6", "--test-size", "20", *TINY, "--max-steps", "8",
                       "--eval-steps", "2", "--save-steps", "2", "--learning-rate", "1e-30",
                       "--lr-scheduler", "plateau", "--save-total-limit", str(limit),
                       "--output-dir", str(out)]) == 0
    assert _checkpoint_names(out) == kept


def test_output_dir_with_files_of_its_own_is_refused(tmp_path, capsys):
    """`--output-dir .` in a project would overwrite its README.md: a folder with files a run
    writes, and no sign that a run wrote them, is refused, even with --overwrite-output-dir."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project\n")
    (project / "config.json").write_text("{}")
    for extra in ([], ["--overwrite-output-dir"]):
        err = _one_line_error(capsys, ["adding", *TINY, "--output-dir", str(project), *extra])
        assert "holds files that no indrnn-train run wrote there" in err
        assert "README.md, config.json" in err
    assert (project / "README.md").read_text() == "my project\n"
    (project / "README.md").unlink()
    (project / "config.json").unlink()
    (project / "notes.txt").write_text("mine")  # files of other names are left alone
    assert train.main(["adding", "-T", "6", "--test-size", "20", *TINY, "--save-steps", "0",
                       "--output-dir", str(project)]) == 0
    assert (project / "notes.txt").read_text() == "mine"
    assert (project / train.RECORD).is_file() and (project / "metrics.json").is_file()


def test_overwrite_output_dir_removes_only_what_the_earlier_run_wrote(tmp_path, capsys):
    """A run that saves nothing (it diverges) into an earlier run's folder must not leave the
    earlier model and metrics there as if they were its own; the user's files stay."""
    out = tmp_path / "run"
    flags = ["adding", "-T", "6", "--test-size", "20", *TINY, "--save-steps", "0",
             "--output-dir", str(out)]
    assert train.main(flags) == 0
    (out / "tokenizer.json").write_text("{}")  # as a text run's, in an earlier run
    (out / "notes.txt").write_text("mine")
    err = _one_line_error(capsys, flags)  # no checkpoint, but the earlier run's results
    assert "holds the results of an earlier run" in err and "metrics.json" in err
    assert train.main([*flags, "--overwrite-output-dir", "--learning-rate", "1e30",
                       "--warmup-steps", "4", "--lr-scheduler", "linear"]) == 1
    assert sorted(p.name for p in out.iterdir()) == [train.RECORD, "notes.txt"]
    record = json.loads((out / train.RECORD).read_text())
    assert record["settings"]["learning_rate"] == 1e30 and "--overwrite-output-dir" in record[
        "command"]


@pytest.mark.parametrize("name", ["trainer_state.json", "config.json", "model.safetensors",
                                  "optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_resume_from_a_damaged_checkpoint_is_a_one_line_error(finished_run, tmp_path, capsys,
                                                              name):
    out = _copy(finished_run, tmp_path)
    path = out / "checkpoint-4" / name
    with open(path, "r+b") as f:  # a copy cut short, a disk that filled up
        f.truncate(path.stat().st_size // 2)
    err = _one_line_error(capsys, [*FINISHED, "--output-dir", str(out), "--resume"])
    assert f"the newest checkpoint {out / 'checkpoint-4'} is damaged ({name}: " in err
    assert "remove that folder to continue from checkpoint-2 with the same command" in err


# ---------------------------------------------------------------------------- divergence


def test_non_finite_loss_stops_with_exit_1_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # The lr warms up from 0: step 1 and 2 are finite, then 1e30 overflows the loss at step 3.
    out = tmp_path / "run"
    code = train.main(["adding", "-T", "6", "--test-size", "20", *TINY, "--max-steps", "8",
                       "--learning-rate", "1e30", "--warmup-steps", "4", "--lr-scheduler",
                       "linear", "--save-steps", "1", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "the training loss became" in err and "at step 3" in err and "--learning-rate" in err
    assert f"the last good checkpoint is {out / 'checkpoint-2'}" in err
    assert _checkpoint_names(out) == ["checkpoint-1", "checkpoint-2"]
    assert all(torch.isfinite(v).all() for v in _weights(out / "checkpoint-2").values())
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()


def test_guard_refuses_to_checkpoint_non_finite_weights():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    model = torch.nn.Linear(2, 2)
    guard = train.RunGuard()
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    control = TrainerControl(should_save=True)
    guard.step_end(args, TrainerState(global_step=5), control, model)
    assert control.should_save and not control.should_training_stop  # finite: saved
    with torch.no_grad():
        model.weight[0, 1] = float("nan")
    guard.step_end(args, TrainerState(global_step=6), control, model)
    assert not control.should_save and control.should_training_stop
    assert guard.diverged_at == 6


# ---------------------------------------------------------------------------- one-line errors


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("indrnn-train")]
    assert line.startswith("indrnn-train: error: ") and err.rstrip().endswith(line), err
    return line


def _random_bytes_parquet(folder: Path, mnist_dir: Path) -> Path:
    (folder / "x.parquet").write_bytes(np.random.default_rng(0).bytes(3000))
    return folder / "x.parquet"


def _corrupt_parquet(folder: Path, mnist_dir: Path) -> Path:
    good = folder / "good.parquet"
    datasets.load_from_disk(str(mnist_dir))["train"].to_parquet(str(good))
    raw = bytearray(good.read_bytes())
    raw[100:-200] = bytes(len(raw) - 300)  # header and footer kept, the pages zeroed
    (folder / "train-0.parquet").write_bytes(bytes(raw))
    good.unlink()
    return folder


def _corrupt_save_to_disk(folder: Path, mnist_dir: Path) -> Path:
    datasets.load_from_disk(str(mnist_dir)).save_to_disk(str(folder))
    for arrow in (folder / "train").glob("*.arrow"):
        arrow.write_bytes(b"not an arrow file" * 10)
    return folder


@pytest.mark.parametrize(
    "make",
    [
        _random_bytes_parquet,
        _corrupt_parquet,
        _corrupt_save_to_disk,
    ],
    ids=["random-bytes", "zeroed-pages", "corrupt-save-to-disk"],
)
def test_corrupt_mnist_data_is_a_one_line_error(tmp_path, capsys, mnist_dir, make):
    (tmp_path / "data").mkdir()
    path = make(tmp_path / "data", mnist_dir)
    err = _one_line_error(capsys, ["mnist", "--data", str(path), *TINY,
                                   "--output-dir", str(tmp_path / "out")])
    assert f"--data {str(path)!r} cannot be read" in err


def test_mnist_images_of_the_wrong_size_are_a_one_line_error(tmp_path, capsys):
    small = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(np.zeros((20, 20), np.uint8))] * 4, "label": [1, 2, 3, 4]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    small.save_to_disk(str(tmp_path / "small"))
    err = _one_line_error(capsys, ["mnist", "--data", str(tmp_path / "small"), *TINY,
                                   "--output-dir", str(tmp_path / "out")])
    assert "must be 28x28" in err and "(20, 20)" in err and "--data" in err


@pytest.mark.parametrize("where", ["is-a-file", "under-a-file"])
def test_unusable_output_dir_fails_before_training(tmp_path, capsys, monkeypatch, where):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" if where == "is-a-file" else tmp_path / "file" / "run"
    monkeypatch.setattr(train, "run", lambda args: pytest.fail("training started"))
    err = _one_line_error(capsys, ["adding", "--output-dir", str(out)])
    expected = "is a file; expected a folder" if where == "is-a-file" else "is not writable"
    assert f"--output-dir {str(out)!r} {expected}" in err


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],  # port 9: refused at once
    ids=["offline-mode", "no-network"],
)
def test_mnist_without_data_or_network_fails_fast_naming_data(tmp_path, env):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "empty-cache"),
           **env}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "hf_integration.train", "mnist",
                             "--no-progress", "--output-dir", str(tmp_path / "out")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-3000:]
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("indrnn-train: error: ") and "Traceback" not in result.stderr
    assert "pass --data PATH" in err and "save_to_disk" in err and "28x28" in err
    assert "Retry" not in result.stderr and elapsed < 60  # before: 5 retries, 23 s and more


def test_ctrl_c_outside_the_training_loop_exits_130_without_a_traceback(tmp_path, capsys,
                                                                       monkeypatch):
    def interrupted(args):  # e.g. while the data loads, before any step
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run", interrupted)
    assert train.main(["adding", "--output-dir", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.strip() == "indrnn-train: interrupted"


# ---------------------------------------------------------------------------- the authors' recipe


def test_recipe_defaults_follow_the_authors_scripts(tmp_path):
    """MAG 2 (adding, text) or 5 (MNIST) as r = MAG^(1/T); gradients clamped to +-10; weight
    decay 1e-4 except for the adding problem; recurrent weights clamped after each step."""
    text = tmp_path / "x.txt"
    text.write_bytes(b"some text")
    for argv, mag, decay in ((["adding", "-T", "500"], 2.0, 0.0), (["mnist"], 5.0, 1e-4),
                             (["pmnist"], 5.0, 1e-4), (["text", "--data", str(text)], 2.0, 1e-4),
                             (["text", "--data", str(text), "--preset", "paper"], 2.0, 1e-4)):
        args = train.parse_args(argv)
        assert args.recurrent_max_abs == pytest.approx(mag ** (1 / args.seq_len))
        assert (args.recurrent_max_mag, args.weight_decay) == (mag, decay)
        assert args.grad_clip_value == 10.0 and args.max_grad_norm == 0.0
        assert not args.no_constrain
    args = train.parse_args(["adding", "-T", "100", "--recurrent-max-mag", "3",
                             "--grad-clip-value", "0", "--weight-decay", "0.01", "--no-constrain"])
    assert args.recurrent_max_abs == pytest.approx(3 ** (1 / 100))
    assert (args.grad_clip_value, args.weight_decay, args.no_constrain) == (0.0, 0.01, True)
    assert train.recipe_callbacks(args) == []
    assert train.parse_args(["adding", "--recurrent-max-abs", "1.5"]).recurrent_max_abs == 1.5


@pytest.mark.parametrize(("argv", "message"), [
    (["adding", "--recurrent-max-mag", "2", "--recurrent-max-abs", "1.1"], "both give the clip"),
    (["adding", "--recurrent-max-mag", "0"], "--recurrent-max-mag must be > 0, got 0.0"),
    (["adding", "--grad-clip-value", "-1"], "--grad-clip-value must be >= 0, got -1.0"),
    (["adding", "--weight-decay=-1e-4"], "--weight-decay must be >= 0, got -0.0001"),
    (["adding", "--max-grad-norm", "-1"], "--max-grad-norm must be >= 0, got -1.0"),
    (["adding", "--residual", "--num-layers", "3", "--dense-growth-rate", "4"],
     "--residual and --dense-growth-rate exclude each other"),
])
def test_recipe_flag_errors(capsys, argv, message):
    code, err = _exit_message(capsys, argv)
    assert code == 2 and message in err


def test_optimizer_is_fused_adam_with_l2_decay_except_recurrent_weights_and_biases(tmp_path):
    args = train.parse_args(["mnist", "--hidden-size", "4", "--num-layers", "2",
                             "--dropout-last", "0.1", "--output-dir", str(tmp_path)])
    task = data.TaskData(None, None, 784, input_size=1, num_labels=10)
    model = train.auto_class("mnist").from_config(train.build_config(args, task))
    trainer = train.guarded_trainer(
        train.RunGuard(), callbacks=train.recipe_callbacks(args), model=model,
        args=train.training_arguments(args), eval_dataset=datasets.Dataset.from_dict({"x": [0]}),
        optimizer_cls_and_kwargs=train.optimizer(args))
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["fused"] and optimizer.defaults["lr"] == args.learning_rate
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"])
              for g in optimizer.param_groups}
    assert set(groups) == {1e-4, 0.0}
    assert all("weight_hh" in n or "bias" in n for n in groups[0.0])
    assert {"model.rnn.weight_hh_l0", "model.rnn.bias_l1", "model.rnn.norms.0.bias",
            "classifier.bias"} <= set(groups[0.0])
    assert {"model.rnn.weight_ih_l0", "model.rnn.norms.1.weight",
            "classifier.weight"} <= set(groups[1e-4])
    kinds = {type(c).__name__ for c in trainer.callback_handler.callbacks}
    assert {"ClampGradientsCallback", "ConstrainRecurrentWeightsCallback"} <= kinds


def test_dense_flags_build_a_dense_model():
    args = train.parse_args(["mnist", "--hidden-size", "6", "--dense-growth-rate", "2",
                             "--dense-blocks", "2", "1", "--dense-bottleneck", "0"])
    config = train.build_config(args, data.TaskData(None, None, 784, input_size=1,
                                                    num_labels=10))
    assert (config.dense_growth_rate, config.dense_block_config) == (2, [2, 1])
    assert config.num_hidden_layers == 1 + 3 + 2
    model = train.auto_class("mnist").from_config(config)
    assert type(model.model.rnn).__name__ == "DenseIndRNN"
    assert model.model.rnn.norm_position == "after"


def test_num_layers_with_the_dense_network_is_refused(capsys):
    """The dense network derives its layer count; an explicit --num-layers was ignored."""
    code, err = _exit_message(capsys, ["mnist", "--dense-growth-rate", "2", "--num-layers", "3"])
    assert code == 2 and "--num-layers 3 with --dense-growth-rate" in err, err


def test_dense_dropout_flag_sets_rates_per_kind_of_layer(capsys):
    args = train.parse_args(["mnist", "--hidden-size", "6", "--dense-growth-rate", "2",
                             "--dense-blocks", "1", "--dropout", "0.1", "--dropout-last",
                             "0.05", "--dense-dropout", "first=0.2", "growth=0.3"])
    assert args.dense_dropout == {"first": 0.2, "growth": 0.3}
    config = train.build_config(args, data.TaskData(None, None, 784, input_size=1,
                                                    num_labels=10))
    rnn = train.auto_class("mnist").from_config(config).model.rnn
    rates = dict(zip(rnn.layer_kinds, (rnn.layer_dropout(k) for k in range(rnn.num_layers))))
    assert rates == {"first": 0.2, "bottleneck": 0.1, "growth": 0.3, "transition": 0.05}
    for argv, message in ((["--dense-dropout", "growth=0.2"], "give --dense-growth-rate too"),
                          (["--dense-growth-rate", "2", "--dense-dropout", "last=0.1"],
                           "KIND one of first, bottleneck, growth, transition"),
                          (["--dense-growth-rate", "2", "--dense-dropout", "growth=1.5"],
                           "the rate must be in [0, 1)")):
        code, err = _exit_message(capsys, ["mnist", *argv])
        assert code == 2 and message in err, err
