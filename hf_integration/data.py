"""Data builders for the IndRNN papers' tasks, as ``datasets.Dataset`` objects.

- :func:`adding_problem`: the adding problem (Hochreiter & Schmidhuber; IndRNN paper section 4.1)
  generated from a seed.
- :func:`load_mnist`: sequential MNIST, one pixel per step (T = 784), optionally permuted with a
  fixed-seed permutation (pMNIST), from the Hub (``ylecun/mnist``) or a local copy in its schema.
- :func:`load_text`: byte-level language modelling on any file (byte b is token id b, as in
  :func:`hf_integration.tokenizer.byte_tokenizer`).

Every builder returns a :class:`TaskData` whose datasets yield the model's keyword arguments
(``inputs_embeds`` or ``input_ids``, and ``labels``) as torch tensors, ready for ``Trainer``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow
import torch

from .tokenizer import byte_tokenizer

MNIST_HUB_ID = "ylecun/mnist"
MNIST_SEQ_LEN = 28 * 28
ADDING_BASELINE_MSE = 1 / 6  # variance of the sum of two U(0, 1) values: predict 1 always
_PARQUET_SUFFIXES = (".parquet", ".arrow")
MNIST_LOCAL_FORMAT = (
    f"a local copy of {MNIST_HUB_ID}: a save_to_disk folder, a folder of .parquet/.arrow files "
    "or one such file, with an 'image' column of 28x28 images and an int 'label' column"
)


@dataclass
class TaskData:
    """Train and evaluation splits of one task, with what the model needs to know about them."""

    train: datasets.Dataset
    test: datasets.Dataset
    seq_len: int
    input_size: int | None = None  # continuous features per step; None for token inputs
    vocab_size: int | None = None
    num_labels: int | None = None
    tokenizer: object | None = None  # what turns text into the ids (token tasks)
    # Held out of the training split and evaluated during training (the schedule, the curves),
    # so that the test split decides nothing; None: the test split is evaluated instead.
    validation: datasets.Dataset | None = None


def adding_problem(num_samples: int, seq_len: int, seed: int) -> datasets.Dataset:
    """The adding problem as a ``datasets.Dataset`` of ``num_samples`` sequences of ``seq_len``.

    Each step has two channels: a value drawn from U(0, 1) and a marker that is 1 at exactly two
    steps (one in the first half of the sequence, one in the second half) and 0 elsewhere. The
    target is the sum of the two marked values. Predicting 1 always gives an MSE of 1/6 ~ 0.167.

    Rows read as ``inputs_embeds`` (seq_len, 2) float32 and ``labels`` float32 torch tensors.
    The dataset stores only each row's index: a row is drawn when it is read, as a function of
    (``seed``, index) alone (:func:`adding_draws`), so the same seed always gives the same data
    whatever order and batches the rows are read in, and memory does not grow with
    ``num_samples x seq_len`` (200000 sequences of T = 5000 would take 8 GB).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (one marker in each half), got {seq_len}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not 0 <= seed < 2**64 - 1_000_003:  # adding_task adds 1_000_003 for the test set
        raise ValueError(f"seed must be >= 0 and < 2**64 - 1000003, got {seed}")
    ds = datasets.Dataset.from_dict({"index": np.arange(num_samples, dtype=np.int64)})
    return ds.with_transform(_adding_rows(seq_len, seed))


# Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): the
# multipliers of its two multiply-high/low products and the Weyl increments of its key.
_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_LOW32 = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def philox4x32(counter, key: tuple[int, int], rounds: int = 10) -> tuple[np.ndarray, ...]:
    """The Philox4x32 block function, vectorised: ``counter`` is four arrays of 32-bit words
    (anything that broadcasts together), ``key`` two 32-bit words; returns the four output words
    as uint64 arrays holding 32-bit values. Ten rounds is the standard Philox4x32-10 of
    Random123, cuRAND and JAX (the tests check Random123's known-answer vectors)."""
    c0, c1, c2, c3 = (np.asarray(w, dtype=np.uint64) for w in counter)
    k0, k1 = int(key[0]), int(key[1])
    for _ in range(rounds):
        p0, p1 = c0 * _PHILOX_M[0], c2 * _PHILOX_M[1]  # 32 x 32 -> 64 bits: exact in uint64
        c0, c1, c2, c3 = ((p1 >> _32) ^ c1 ^ np.uint64(k0), p1 & _LOW32,
                          (p0 >> _32) ^ c3 ^ np.uint64(k1), p0 & _LOW32)
        k0, k1 = (k0 + _PHILOX_W[0]) & 0xFFFFFFFF, (k1 + _PHILOX_W[1]) & 0xFFFFFFFF
    return c0, c1, c2, c3


def adding_draws(seed: int, index, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The random draws of adding-problem rows ``index`` (an int array): the values (n, seq_len)
    float32 in [0, 1), and the two marked steps (n,) int64, the first uniform in [0, T // 2), the
    second in [T // 2, T).

    Every word comes from Philox4x32-10 keyed by ``seed`` (low and high 32 bits), at the counter
    (block, index low, index high, stream): the values from stream 0, four to a block, each the
    top 24 bits of a word times 2^-24; the steps from block 0 of stream 1, as floor(word x
    range / 2^32) (a bias below range / 2^32). A counter-based generator draws a whole batch of
    rows in a few array operations, where a seeded generator per row cost ~25 us to create.
    """
    index = np.asarray(index, dtype=np.uint64).reshape(-1, 1)
    key = (seed & 0xFFFFFFFF, seed >> 32)
    lo, hi = index & _LOW32, index >> _32
    blocks = np.arange((seq_len + 3) // 4, dtype=np.uint64)
    words = np.stack(philox4x32((blocks, lo, hi, 0), key), axis=-1).reshape(len(index), -1)
    values = (words[:, :seq_len] >> np.uint64(8)).astype(np.float32) * np.float32(2.0**-24)
    w0, w1, _, _ = philox4x32((0, lo[:, 0], hi[:, 0], 1), key)
    half = seq_len // 2
    first = ((w0 * np.uint64(half)) >> _32).astype(np.int64)
    second = half + ((w1 * np.uint64(seq_len - half)) >> _32).astype(np.int64)
    return values, first, second


def _adding_rows(seq_len: int, seed: int):
    def transform(batch):
        values, first, second = adding_draws(seed, batch["index"], seq_len)
        n = len(values)
        rows = np.arange(n)
        x = np.zeros((n, seq_len, 2), dtype=np.float32)
        x[:, :, 0] = values
        x[rows, first, 1] = 1.0
        x[rows, second, 1] = 1.0
        labels = values[rows, first] + values[rows, second]
        return {"inputs_embeds": torch.from_numpy(x), "labels": torch.from_numpy(labels)}

    return transform


def adding_task(seq_len: int, train_size: int, test_size: int, seed: int) -> TaskData:
    """Train and test sets of the adding problem, drawn from independent seeds."""
    # The test set takes its own seed stream so that changing train_size never changes it.
    train = adding_problem(train_size, seq_len, seed)
    test = adding_problem(test_size, seq_len, seed + 1_000_003)
    return TaskData(train=train, test=test, seq_len=seq_len, input_size=2, num_labels=1)


def pixel_permutation(seed: int, length: int = MNIST_SEQ_LEN) -> np.ndarray:
    """The fixed pixel order of permuted MNIST for a seed."""
    return np.random.default_rng(seed).permutation(length)


def _load_local(path: str) -> datasets.Dataset | datasets.DatasetDict:
    """A dataset saved with ``save_to_disk``, a folder of parquet/arrow files, or one such file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data {path!r} does not exist")
    try:
        return _read_local(path)
    except (pyarrow.ArrowException, datasets.exceptions.DatasetGenerationError, OSError) as err:
        # pyarrow reports a corrupt or truncated file as ArrowInvalid or OSError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--data {path!r} cannot be read ({reason}); expected "
                         f"{MNIST_LOCAL_FORMAT}") from None


def _read_local(path: str) -> datasets.Dataset | datasets.DatasetDict:
    if os.path.isdir(path):
        saved = ("dataset_dict.json", "dataset_info.json", "state.json")
        if any(os.path.exists(os.path.join(path, name)) for name in saved):
            return datasets.load_from_disk(path)
        files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
            if name.endswith(_PARQUET_SUFFIXES)
        )
        if not files:
            raise ValueError(
                f"--data {path!r}: no save_to_disk dataset and no .parquet/.arrow files in it"
            )
        by_split: dict[str, list[str]] = {}
        for f in files:
            by_split.setdefault(_split_of(os.path.relpath(f, path)), []).append(f)
        builder = "parquet" if files[0].endswith(".parquet") else "arrow"
        return datasets.load_dataset(builder, data_files=by_split)
    if path.endswith(_PARQUET_SUFFIXES):
        builder = "parquet" if path.endswith(".parquet") else "arrow"
        return datasets.load_dataset(builder, data_files=path, split="train")
    raise ValueError(
        f"--data {path!r}: expected a save_to_disk folder, a folder of .parquet/.arrow files, "
        "or a .parquet/.arrow file"
    )


def _split_of(relative_path: str) -> str:
    """"test" when a word of a data file's path inside the --data folder is "test": the Hub's
    ``test-00000-of-00001.parquet``, ``mnist_test.parquet``, a ``test/`` subfolder; else
    "train". Words, not substrings: ``latest.parquet`` is no test file."""
    words = re.split(r"[^a-z0-9]+", relative_path.lower())
    return "test" if "test" in words else "train"


def _train_test(
    loaded: datasets.Dataset | datasets.DatasetDict, test_fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded and "test" in loaded:
            return loaded["train"], loaded["test"]
        if len(loaded) != 1:
            raise ValueError(
                f"expected 'train' and 'test' splits (or a single split), got {list(loaded)}"
            )
        loaded = next(iter(loaded.values()))
    split = loaded.train_test_split(test_size=test_fraction, seed=seed)
    return split["train"], split["test"]


def _pixels(images, source: str) -> np.ndarray:
    """(N, 784) uint8 pixels of N 28x28 single-channel images; errors name ``source``."""
    pixels = [np.asarray(img, dtype=np.uint8) for img in images]
    for image in pixels:
        if image.shape != (28, 28):
            raise ValueError(
                f"{source}: MNIST images must be 28x28 with one channel (784 pixels), got an "
                f"image of shape {image.shape}"
            )
    return np.stack(pixels).reshape(len(pixels), MNIST_SEQ_LEN)


# How a pixel byte v becomes the input; recorded with a training run's flags so that --resume
# refuses a run trained on other inputs (until 2026-12-02 it was v / 255, in [0, 1]).
PIXEL_SCALING = "(v / 256 - 0.5) * 2"


def _pixels_transform(permutation: np.ndarray | None, source: str):
    def transform(batch):
        pixels = _pixels(batch["image"], source)
        if permutation is not None:
            pixels = pixels[:, permutation]
        # The authors' scaling (pixelMNIST/Data_gen.py): x / 256, centred, doubled, in [-1, 1).
        x = torch.from_numpy((pixels.astype(np.float32) / 256.0 - 0.5) * 2.0).unsqueeze(-1)
        return {"inputs_embeds": x, "labels": torch.as_tensor(batch["label"], dtype=torch.long)}

    return transform


def load_mnist(
    data: str | None = None,
    permute: bool = False,
    permutation_seed: int = 0,
    test_fraction: float = 1 / 7,
    seed: int = 0,
    validation_fraction: float = 0.0,
) -> TaskData:
    """Sequential (or permuted) MNIST: each image as 784 steps of one pixel, scaled as the
    authors' code does, (v / 256 - 0.5) * 2 in [-1, 1) for a byte v.

    Args:
        data: None to load ``ylecun/mnist`` with ``datasets.load_dataset`` (needs the Hub or its
            cache), or a local copy in the Hub schema (columns ``image``: a 28x28 PIL image, and
            ``label``: int): a ``save_to_disk`` folder, a folder of parquet/arrow files (files
            whose name or subfolder has the word "test", e.g. ``test-00000-of-00001.parquet``
            or ``test/0000.parquet``, form the test split), or a single parquet/arrow file.
        permute: apply the fixed pixel permutation of :func:`pixel_permutation` (pMNIST).
        permutation_seed: seed of that permutation.
        test_fraction: when the data has no "test" split, the fraction held out for testing.
        seed: seed of that hold-out split and of the validation split.
        validation_fraction: the fraction of the training split held out as
            ``TaskData.validation`` (the authors hold out 5 %); 0 for none.

    The datasets decode images lazily (``with_transform``) into ``inputs_embeds`` (784, 1)
    float32 and ``labels`` int64.
    """
    loaded = _load_hub_mnist() if data is None else _load_local(data)
    source = MNIST_HUB_ID if data is None else f"--data {data!r}"
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    for name, split in splits:
        where = f"{source} {name + ' split' if name else ''}".rstrip()
        missing = {"image", "label"} - set(split.column_names)
        if missing:
            raise ValueError(
                f"{where} needs columns 'image' and 'label' "
                f"(the {MNIST_HUB_ID} schema); missing {sorted(missing)}, found "
                f"{split.column_names}"
            )
        if len(split):  # fail before training on data of the wrong kind, not steps into it
            try:
                _pixels([split[0]["image"]], where)
            except OSError as err:  # PIL cannot decode the image bytes
                raise ValueError(f"{where}: the first image cannot be decoded ({err})") from None
    train, test = _train_test(loaded, test_fraction, seed)
    validation = None
    if validation_fraction:
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
        held = train.train_test_split(test_size=validation_fraction, seed=seed)
        train, validation = held["train"], held["test"]
    transform = _pixels_transform(pixel_permutation(permutation_seed) if permute else None,
                                  source)

    def prepared(split):
        return split.select_columns(["image", "label"]).with_transform(transform)

    return TaskData(
        train=prepared(train), test=prepared(test), seq_len=MNIST_SEQ_LEN, input_size=1,
        num_labels=10, validation=None if validation is None else prepared(validation),
    )


def _load_hub_mnist() -> datasets.DatasetDict:
    """``ylecun/mnist`` from the Hub (or its cache in offline mode), failing at once without a
    network instead of after the Hub client's retries."""
    hint = f"pass --data PATH, {MNIST_LOCAL_FORMAT}"
    if not datasets.config.HF_HUB_OFFLINE:
        import huggingface_hub

        try:  # one request, no retries
            huggingface_hub.HfApi().dataset_info(MNIST_HUB_ID, timeout=10)
        except Exception as err:  # no network, a proxy or DNS failure, an outage, a bad token
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"cannot reach {MNIST_HUB_ID} on the Hugging Face Hub "
                             f"({type(err).__name__}: {reason}); {hint}") from None
    try:
        return datasets.load_dataset(MNIST_HUB_ID)
    except ConnectionError:
        raise ValueError(f"HF_HUB_OFFLINE is set and {MNIST_HUB_ID} is not in the Hugging Face "
                         f"cache; {hint}") from None


def _byte_chunks(data: bytes, seq_len: int) -> datasets.Dataset:
    """Non-overlapping windows of ``seq_len`` bytes; the model shifts the labels itself."""
    n = len(data) // seq_len
    ids = np.frombuffer(data[: n * seq_len], dtype=np.uint8).astype(np.int64)
    ids = ids.reshape(n, seq_len)
    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int64"), length=seq_len),
            "labels": datasets.Sequence(datasets.Value("int64"), length=seq_len),
        }
    )
    ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids}, features=features)
    return ds.with_format("torch")


def load_text(path: str, seq_len: int, test_fraction: float = 0.1) -> TaskData:
    """Byte-level language modelling on a file, read as raw bytes.

    Any file is valid: its bytes are modelled exactly as stored (CRLF line ends, Latin-1 or
    binary data, NUL bytes), with no decoding and no newline translation. They are split in
    order: the first ``1 - test_fraction`` for training, the rest for evaluation, each cut into
    non-overlapping windows of ``seq_len`` bytes (``input_ids`` == ``labels``, int64 in
    [0, 256)). The task's tokenizer, :func:`hf_integration.tokenizer.byte_tokenizer`, gives
    text the same ids and decodes the model's output (its vocabulary adds ``<pad>``, id 256).
    The evaluation loss in nats per byte divided by ln 2 is the bits per character.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--data {path!r} is not a file")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    with open(path, "rb") as f:
        data = f.read()
    n_test = math.ceil(len(data) * test_fraction)
    train_bytes, test_bytes = data[: len(data) - n_test], data[len(data) - n_test :]
    if len(test_bytes) < seq_len or len(train_bytes) < seq_len:
        raise ValueError(
            f"--data {path!r} has {len(data)} bytes: too short for windows of seq_len={seq_len} "
            f"in both the train ({len(train_bytes)} bytes) and test ({len(test_bytes)} bytes) "
            "parts; use a longer file or a smaller --seq-len"
        )
    tokenizer = byte_tokenizer()
    return TaskData(
        train=_byte_chunks(train_bytes, seq_len),
        test=_byte_chunks(test_bytes, seq_len),
        seq_len=seq_len,
        vocab_size=len(tokenizer),
        tokenizer=tokenizer,
    )
