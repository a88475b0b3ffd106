"""``indrnn-train``: train an IndRNN on the papers' tasks with the Hugging Face ``Trainer``.

    indrnn-train adding                     # the quick start: adding problem, T = 100, on CPU
    indrnn-train adding --seq-len 500 --learning-rate 2e-4 --max-steps 20000
    indrnn-train pmnist --data ./mnist      # a local copy of ylecun/mnist (save_to_disk/parquet)
    indrnn-train text --data input.txt      # byte-level LM, reports bits per character
    torchrun --nproc_per_node=2 -m hf_integration.train adding   # data parallel (CPU or GPU)

It trains, evaluates, writes the model (``save_pretrained``, loadable with
``trust_remote_code=True``), a model card, ``metrics.json`` and ``learning_curve.png`` to
``--output-dir``, reloads the saved model with ``AutoModel*.from_pretrained``, evaluates it
again, and prints a summary. Run ``indrnn-train --help`` for every option and its default.

Every ``--save-steps`` steps it writes a Trainer checkpoint (``checkpoint-STEP``: weights,
optimizer, scheduler, RNG states) and keeps the last ``--save-total-limit``; ``--resume``
continues from the latest one with the same result as an uninterrupted run. SIGINT (Ctrl-C) or
SIGTERM ends the current step, writes a checkpoint, the model and ``metrics.json``, and exits
with 128 + the signal number. A non-finite loss or weights stop the run with exit code 1 and
keep the last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass

import numpy as np
import torch

TASKS = ("adding", "mnist", "pmnist", "text")
# Long runs (mnist: 100 000 steps) lose at most this many steps to a crash; short ones (the
# adding quick start: 2000) write a checkpoint or two.
DEFAULT_SAVE_STEPS = 1000
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers' checkpoint folder names


@dataclass(frozen=True)
class TaskDefaults:
    seq_len: int | None
    hidden_size: int
    num_layers: int
    norm: str | None
    norm_position: str
    dropout: float
    learning_rate: float
    batch_size: int
    max_steps: int
    eval_steps: int
    lr_scheduler: str
    max_grad_norm: float
    grad_clip_value: float
    weight_decay: float
    recurrent_max_mag: float
    note: str


# The papers' settings, except where `note` says otherwise (the adding quick start is tuned to
# finish on 2 CPU cores in a few minutes; the paper's own settings are one flag away).
DEFAULTS = {
    "adding": TaskDefaults(
        seq_len=100, hidden_size=128, num_layers=2, norm=None, norm_position="after", dropout=0.0,
        learning_rate=2e-3, batch_size=50, max_steps=2000, eval_steps=100,
        lr_scheduler="linear", max_grad_norm=0.0, grad_clip_value=10.0, weight_decay=0.0,
        recurrent_max_mag=2.0,
        note="IndRNN paper: 2 layers x 128, batch 50, MSE, |u| <= 2^(1/T), gradients clamped "
        "to +-10, no weight decay (the authors' adding script); the paper's Adam lr "
        "is 2e-4 held constant, the default here is 2e-3 decayed linearly over 2000 steps so "
        "that T = 100 converges in minutes on 2 CPU cores (paper: --learning-rate 2e-4 "
        "--lr-scheduler constant)",
    ),
    "mnist": TaskDefaults(
        seq_len=784, hidden_size=128, num_layers=6, norm="batch", norm_position="after",
        dropout=0.1, learning_rate=2e-4, batch_size=32, max_steps=100_000, eval_steps=2000,
        lr_scheduler="constant", max_grad_norm=0.0, grad_clip_value=10.0, weight_decay=1e-4,
        recurrent_max_mag=5.0,
        note="IndRNN paper and the authors' script: 6 layers x 128, batch norm after every "
        "layer, dropout 0.1, Adam 2e-4, batch 32, |u| <= 5^(1/784), gradients clamped to +-10, "
        "weight decay 1e-4 except recurrent weights and biases; the authors also divide the lr "
        "by 10 on plateaus",
    ),
    "pmnist": TaskDefaults(
        seq_len=784, hidden_size=128, num_layers=6, norm="batch", norm_position="after",
        dropout=0.1, learning_rate=2e-4, batch_size=32, max_steps=100_000, eval_steps=2000,
        lr_scheduler="constant", max_grad_norm=0.0, grad_clip_value=10.0, weight_decay=1e-4,
        recurrent_max_mag=5.0,
        note="as mnist, with the pixels in a fixed random order (--permutation-seed)",
    ),
    "text": TaskDefaults(
        seq_len=50, hidden_size=2000, num_layers=6, norm="batch", norm_position="before",
        dropout=0.25,
        learning_rate=2e-4, batch_size=128, max_steps=50_000, eval_steps=1000,
        lr_scheduler="constant", max_grad_norm=0.0, grad_clip_value=10.0, weight_decay=1e-4,
        recurrent_max_mag=2.0,
        note="Deep IndRNN paper, char-level PTB: 6 layers x 2000, T = 50, batch norm before the "
        "recurrence, Adam 2e-4, |u| <= 2^(1/T), gradients clamped to +-10, weight decay 1e-4",
    ),
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _optional_finite_float(text: str) -> float | None:
    return None if text.lower() == "none" else _finite_float(text)


def _defaults_help() -> str:
    lines = ["per-task defaults (any flag overrides them):"]
    for task, d in DEFAULTS.items():
        lines.append(
            f"  {task:7s} T={d.seq_len or 'from data'} layers={d.num_layers} "
            f"hidden={d.hidden_size} norm={d.norm} ({d.norm_position}) dropout={d.dropout} "
            f"lr={d.learning_rate} "
            f"({d.lr_scheduler}) batch={d.batch_size} steps={d.max_steps}"
        )
        lines.append(textwrap.fill(d.note, width=96, break_on_hyphens=False,
                                   initial_indent=" " * 10,
                                   subsequent_indent=" " * 10))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="indrnn-train",
        description="Train an IndRNN (indrnn-triton) on the papers' tasks with transformers' "
        "Trainer; save, reload and evaluate it.",
        epilog=_defaults_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", nargs="?", default="adding", choices=TASKS,
                   help="adding (default): the adding problem; mnist / pmnist: sequential / "
                   "permuted MNIST, one pixel per step; text: byte-level LM on --data")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="mnist/pmnist: a local copy of ylecun/mnist (save_to_disk folder, "
                   "parquet/arrow folder or file; default: load it from the Hub); text: the "
                   "file to model, read as raw bytes (required)")
    g.add_argument("--seq-len", "-T", type=int, default=None,
                   help="sequence length T (adding default 100, text default 50; MNIST is 784)")
    g.add_argument("--train-size", type=_positive_int, default=None,
                   help="adding: training sequences (default batch-size x max-steps x "
                   "processes: every step sees new sequences, as in the paper)")
    g.add_argument("--test-size", type=_positive_int, default=None,
                   help="adding: test sequences generated (default 1000); other tasks: evaluate "
                   "on at most this many test examples (default: all)")
    g.add_argument("--permutation-seed", type=_nonnegative_int, default=0,
                   help="pmnist: seed of the fixed pixel permutation (default 0)")
    g.add_argument("--test-fraction", type=_finite_float, default=0.1,
                   help="text (and MNIST data without a test split): fraction held out for "
                   "testing (default 0.1)")
    m = p.add_argument_group("model")
    m.add_argument("--hidden-size", type=_positive_int, default=None,
                   help="units per layer (default: per task, below)")
    m.add_argument("--num-layers", type=_positive_int, default=None,
                   help="IndRNN layers (default: per task, below)")
    m.add_argument("--norm", choices=("none", "batch", "layer"), default=None,
                   help="normalisation of every layer (default: per task, below)")
    m.add_argument("--norm-position", choices=("before", "after"), default=None,
                   help="normalise each layer's pre-activations before the recurrence, or its "
                   "output after it (default: per task as in the authors' scripts: after for "
                   "adding and MNIST, before for text)")
    m.add_argument("--dropout", type=_finite_float, default=None,
                   help="dropout between layers (default: per task, below)")
    m.add_argument("--dropout-last", type=_finite_float, default=None,
                   help="dropout of the last layer's output, one mask per sequence (the "
                   "authors' droplast); default: the head drops its input with --dropout")
    m.add_argument("--residual", action="store_true",
                   help="residual IndRNN (needs an odd --num-layers >= 3)")
    m.add_argument("--dense-growth-rate", type=_positive_int, default=None,
                   help="the Deep IndRNN paper's dense network with this growth rate "
                   "(--hidden-size: its first layer; --num-layers is then derived)")
    m.add_argument("--dense-blocks", type=_positive_int, nargs="+", default=[8, 6, 4],
                   help="dense layers per block (default 8 6 4, the authors')")
    m.add_argument("--dense-bottleneck", type=_nonnegative_int, default=4,
                   help="bottleneck layer of BOTTLENECK x growth-rate units at the start of "
                   "each dense layer (default 4, the authors'; 0: none)")
    m.add_argument("--bidirectional", action="store_true",
                   help="bidirectional layers (classification tasks only)")
    m.add_argument("--recurrent-max-mag", type=_finite_float, default=None,
                   help="clip |u| to MAG^(1/T), the papers' way of giving the bound (default: "
                   "per task as in the authors' scripts: 2 for adding and text, 5 for MNIST)")
    m.add_argument("--recurrent-max-abs", type=_optional_finite_float, default=None,
                   help="clip |u| to this bound instead ('none' for no clip)")
    m.add_argument("--recurrent-min-abs", type=_finite_float, default=0.0,
                   help="raise |u| to at least this value (default 0)")
    m.add_argument("--last-layer-init-near-one", action="store_true",
                   help="initialise the last layer's recurrent weights uniformly in "
                   "[1/r, r], r the clip bound (helps the adding problem at T = 5000)")
    t = p.add_argument_group("training")
    t.add_argument("--learning-rate", "--lr", type=_finite_float, default=None,
                   help="Adam learning rate (default: per task, below)")
    t.add_argument("--lr-scheduler", choices=("constant", "linear", "cosine"), default=None,
                   help="learning-rate schedule (Trainer's lr_scheduler_type; default: per task, "
                   "below)")
    t.add_argument("--warmup-steps", type=_nonnegative_int, default=0,
                   help="lr warmup steps (default 0)")
    t.add_argument("--batch-size", type=_positive_int, default=None,
                   help="training batch size per device (default: per task, below)")
    t.add_argument("--eval-batch-size", type=_positive_int, default=None,
                   help="evaluation batch size per device (default 10 x --batch-size)")
    t.add_argument("--max-steps", type=_positive_int, default=None,
                   help="optimizer steps (default: per task, below)")
    t.add_argument("--eval-steps", type=_positive_int, default=None,
                   help="evaluate on the test set every this many steps, for the learning curve "
                   "(default: per task: adding 100, mnist 2000, text 1000)")
    t.add_argument("--logging-steps", type=_positive_int, default=None,
                   help="log the training loss every this many steps (default eval-steps / 4)")
    t.add_argument("--max-grad-norm", type=_finite_float, default=None,
                   help="clip the gradient norm (default 0: no norm clipping; the authors clamp "
                   "each element instead, --grad-clip-value)")
    t.add_argument("--grad-clip-value", type=_finite_float, default=None,
                   help="clamp every gradient element to [-V, V] before each step (default: 10, "
                   "the authors' gradclipvalue; 0: off)")
    t.add_argument("--weight-decay", type=_finite_float, default=None,
                   help="Adam L2 weight decay of every parameter but the recurrent weights and "
                   "biases (default: per task as in the authors' scripts: 1e-4 for MNIST and "
                   "text, 0 for adding)")
    t.add_argument("--no-constrain", action="store_true",
                   help="do not clamp the recurrent weights to the clip bound after each step "
                   "(default: clamp them, as the authors do, so a weight at the bound keeps "
                   "learning; off: the kernel's clip alone, which gives a weight beyond the "
                   "bound zero gradient)")
    t.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of the model init and the data (default 0)")
    t.add_argument("--cpu", action="store_true",
                   help="train on the CPU even when CUDA is available (set automatically "
                   "under torchrun without CUDA, so that the Trainer runs DDP with gloo)")
    t.add_argument("--cpu-threads", type=_positive_int, default=1,
                   help="torch threads when training on the CPU (default 1: the CPU path runs "
                   "many small ops per time step; on 2 busy cores 2 threads trained the adding "
                   "model 3x slower; raise it for large batches or hidden sizes)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", default=None,
                   help="where the model, card, metrics, curve and checkpoints go (default "
                   "out/indrnn-TASK)")
    o.add_argument("--save-steps", type=_nonnegative_int, default=DEFAULT_SAVE_STEPS,
                   help="write a resumable checkpoint (OUTPUT_DIR/checkpoint-STEP) every this "
                   f"many steps and at the end (default {DEFAULT_SAVE_STEPS}; 0: only on "
                   "SIGINT/SIGTERM)")
    o.add_argument("--save-total-limit", type=_positive_int, default=2,
                   help="keep only the newest this many checkpoints (default 2)")
    o.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --output-dir, with the "
                   "same flags (starts from step 0 when there is none)")
    o.add_argument("--overwrite-output-dir", action="store_true",
                   help="delete the checkpoints of an earlier run in --output-dir and start over")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv`` and fill the task's defaults; errors exit with code 2 and a message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = " ".join(["indrnn-train", *(sys.argv[1:] if argv is None else argv)])
    d = DEFAULTS[args.task]
    if args.task in ("mnist", "pmnist"):
        if args.seq_len not in (None, 784):
            parser.error(f"--seq-len is fixed at 784 for {args.task} (one pixel per step), "
                         f"got {args.seq_len}")
    if args.task == "text" and args.data is None:
        parser.error("the text task needs --data PATH, the file to model (read as raw bytes)")
    if args.task == "adding" and args.data is not None:
        parser.error("--data is not used by the adding task (its data is generated)")
    for name in ("seq_len", "hidden_size", "num_layers", "norm_position", "dropout",
                 "learning_rate",
                 "batch_size", "max_steps", "eval_steps", "lr_scheduler", "max_grad_norm",
                 "grad_clip_value", "weight_decay"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(d, name))
    if args.norm is None:
        args.norm = d.norm
    elif args.norm == "none":
        args.norm = None
    if args.seq_len < 2:
        parser.error(f"--seq-len must be >= 2, got {args.seq_len}")
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.dropout_last is not None and not 0.0 <= args.dropout_last < 1.0:
        parser.error(f"--dropout-last must be in [0, 1), got {args.dropout_last}")
    if args.learning_rate <= 0:
        parser.error(f"--learning-rate must be > 0, got {args.learning_rate}")
    for flag in ("max_grad_norm", "grad_clip_value", "weight_decay"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if args.warmup_steps < 0:
        parser.error(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if not 0.0 < args.test_fraction < 1.0:
        parser.error(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if args.bidirectional and args.task == "text":
        parser.error("--bidirectional is not possible for the text task (a causal LM)")
    if args.residual and args.dense_growth_rate is not None:
        parser.error("--residual and --dense-growth-rate exclude each other")
    if args.dense_growth_rate is not None:  # the dense network's IndRNN layers, all kinds
        from indrnn_triton.modules import dense_layer_plan

        args.num_layers = len(dense_layer_plan(args.hidden_size, args.dense_growth_rate,
                                               args.dense_blocks, args.dense_bottleneck))
    if args.residual and (args.num_layers < 3 or args.num_layers % 2 == 0):
        parser.error(f"--residual needs an odd --num-layers >= 3, got {args.num_layers}")
    if args.recurrent_max_mag is not None and "--recurrent-max-abs" in _flags(argv):
        parser.error("--recurrent-max-mag and --recurrent-max-abs both give the clip bound: "
                     "pass one")
    if args.recurrent_max_abs is None and "--recurrent-max-abs" not in _flags(argv):
        if args.recurrent_max_mag is None:
            args.recurrent_max_mag = d.recurrent_max_mag
        if args.recurrent_max_mag <= 0:
            parser.error(f"--recurrent-max-mag must be > 0, got {args.recurrent_max_mag}")
        args.recurrent_max_abs = args.recurrent_max_mag ** (1 / args.seq_len)
    if args.recurrent_max_abs is not None and args.recurrent_max_abs <= 0:
        parser.error(f"--recurrent-max-abs must be > 0 or 'none', got {args.recurrent_max_abs}")
    if args.recurrent_min_abs < 0:
        parser.error(f"--recurrent-min-abs must be >= 0, got {args.recurrent_min_abs}")
    if args.recurrent_max_abs is not None and args.recurrent_min_abs > args.recurrent_max_abs:
        parser.error(f"--recurrent-min-abs ({args.recurrent_min_abs}) must not exceed "
                     f"--recurrent-max-abs ({args.recurrent_max_abs})")
    if args.resume and args.overwrite_output_dir:
        parser.error("--resume and --overwrite-output-dir exclude each other")
    if args.last_layer_init_near_one and (args.recurrent_max_abs or 0) < 1:
        parser.error("--last-layer-init-near-one needs --recurrent-max-abs >= 1")
    if args.logging_steps is None:
        args.logging_steps = max(1, args.eval_steps // 4)
    if args.eval_batch_size is None:
        args.eval_batch_size = 10 * args.batch_size
    if args.train_size is None:  # every step sees new sequences, on every process
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        args.train_size = args.batch_size * args.max_steps * world_size
    if args.output_dir is None:
        args.output_dir = os.path.join("out", f"indrnn-{args.task}")
    return args


def _flags(argv) -> list[str]:
    argv = sys.argv[1:] if argv is None else argv
    return [a.split("=", 1)[0] for a in argv]


class UsageError(Exception):
    """A problem the user fixes on the command line: reported in one line, exit code 2."""


def checkpoints(output_dir: str) -> list[str]:
    """The complete checkpoints in ``output_dir``, oldest first.

    A checkpoint is complete once the Trainer has written ``trainer_state.json``, its last file:
    a folder that a kill interrupted mid-save is not resumed from.
    """
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, "trainer_state.json")):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def check_output_dir(args) -> None:
    """Fail before any training when ``--output-dir`` cannot take the results, or holds the
    checkpoints of an earlier run that neither ``--resume`` nor ``--overwrite-output-dir``
    says what to do with."""
    out = args.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--output-dir {out!r} is a file; expected a folder (new or existing)")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"--output-dir {out!r} is not writable: {err.strerror or err}") from None
    found = checkpoints(out)
    if found and not (args.resume or args.overwrite_output_dir):
        raise UsageError(
            f"--output-dir {out!r} holds checkpoints of an earlier run (newest: "
            f"{os.path.basename(found[-1])}): pass --resume to continue it, "
            "--overwrite-output-dir to start over, or choose another --output-dir"
        )


def build_task(args):
    """The task's data (hf_integration.data.TaskData); data errors name the flag."""
    from . import data

    if args.task == "adding":
        return data.adding_task(args.seq_len, args.train_size, args.test_size or 1000, args.seed)
    if args.task in ("mnist", "pmnist"):
        task = data.load_mnist(args.data, permute=args.task == "pmnist",
                               permutation_seed=args.permutation_seed,
                               test_fraction=args.test_fraction, seed=args.seed)
    else:
        task = data.load_text(args.data, args.seq_len, test_fraction=args.test_fraction)
    if args.test_size is not None and args.test_size < len(task.test):
        task.test = task.test.select(range(args.test_size))
    return task


def build_config(args, task):
    from .configuration_indrnn import IndRNNConfig

    kwargs = dict(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        bidirectional=args.bidirectional,
        dropout=args.dropout,
        recurrent_max_abs=args.recurrent_max_abs,
        recurrent_min_abs=args.recurrent_min_abs,
        norm=args.norm,
        norm_position=args.norm_position,
        dropout_last=args.dropout_last,
        residual=args.residual,
    )
    if args.dense_growth_rate is not None:
        kwargs.update(dense_growth_rate=args.dense_growth_rate,
                      dense_block_config=args.dense_blocks,
                      dense_bottleneck=args.dense_bottleneck)
    if args.last_layer_init_near_one:
        kwargs["last_layer_recurrent_init"] = "near_one"
    if task.input_size is not None:
        kwargs["input_size"] = task.input_size
    else:
        kwargs["vocab_size"] = task.vocab_size
    if task.num_labels is not None:
        kwargs["num_labels"] = task.num_labels
        kwargs["problem_type"] = (
            "regression" if task.num_labels == 1 else "single_label_classification"
        )
    return IndRNNConfig(**kwargs)


def auto_class(task_name: str):
    """The Auto class of the task's head ("indrnn" is registered by importing hf_integration,
    the package this module lives in)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if task_name == "text" else AutoModelForSequenceClassification


def kernel_path(device: torch.device) -> str:
    """Which implementation of the fused op runs for tensors on ``device``."""
    from indrnn_triton import op

    if device.type == "cuda":
        return "Triton (CUDA kernels)"
    if op.cpu_uses_triton:
        return "Triton (interpreter, TRITON_INTERPRET=1)"
    return "CPU (torch path, indrnn_triton.cpu)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {threads} torch thread(s))"


@dataclass(frozen=True)
class Metric:
    """How a task's result is read from ``Trainer.evaluate()`` and compared."""

    name: str
    lower_is_better: bool = True

    def value(self, task_name: str, eval_metrics: dict) -> float:
        if task_name == "adding":
            return eval_metrics["eval_loss"]
        if task_name == "text":
            return eval_metrics["eval_loss"] / math.log(2)
        return 100.0 * (1.0 - eval_metrics["eval_accuracy"])


METRICS = {
    "adding": Metric("test MSE"),
    "mnist": Metric("test error %"),
    "pmnist": Metric("test error %"),
    "text": Metric("test bits per character"),
}


def baseline(args, task) -> tuple[float, str]:
    """The trivial predictor's score on the test set, and what it is."""
    if args.task == "adding":
        labels = task.test[:]["labels"].numpy()
        return float(np.mean((labels - 1.0) ** 2)), "always predict 1; 1/6 = 0.167 expected"
    if args.task == "text":
        train = _column(task.train, "input_ids").ravel()
        test = _column(task.test, "input_ids").ravel()
        p = (np.bincount(train, minlength=256) + 1) / (train.size + 256)
        return float(-np.mean(np.log2(p[test]))), "byte frequencies of the training text"
    labels = _column(task.test, "label")
    majority = np.bincount(labels).argmax()
    return float(100.0 * np.mean(labels != majority)), "always predict the commonest digit"


def _column(dataset, name: str) -> np.ndarray:
    """One column as a numpy array, without running the dataset's transform."""
    return dataset.with_format(None).select_columns([name]).with_format("numpy")[:][name]


def _accuracy(eval_pred) -> dict:
    predictions, labels = eval_pred
    return {"accuracy": float(np.mean(np.asarray(predictions) == np.asarray(labels)))}


def _argmax_logits(logits, labels):
    return logits.argmax(-1)


def use_cpu(args, environ=os.environ) -> bool:
    """Train on the CPU: asked for, or under torchrun (WORLD_SIZE > 1) without CUDA.

    The Trainer only builds a gloo process group on CPU when ``use_cpu`` is set; without it every
    torchrun process would train a model of its own.
    """
    distributed = int(environ.get("WORLD_SIZE", "1")) > 1
    return args.cpu or (distributed and not torch.cuda.is_available())


def training_arguments(args):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,  # torch.optim.Adam's L2 (run() passes the class)
        max_grad_norm=args.max_grad_norm,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=use_cpu(args),
        disable_tqdm=args.no_progress,
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available() and not use_cpu(args),
        ddp_find_unused_parameters=False,
    )


class TrainingStopped(Exception):
    """The run ended before ``--max-steps``; ``exit_code`` is what ``indrnn-train`` returns."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class RunGuard:
    """Stops a run cleanly on SIGINT/SIGTERM, and before a non-finite loss or weights are saved.

    A signal only sets a flag: the step in flight finishes, then the Trainer writes a checkpoint
    and stops, so the run can resume exactly. A second signal interrupts at once (the default
    behaviour). A non-finite training loss, or non-finite weights at a checkpoint, stop the run
    without saving, so the newest checkpoint stays the last good one.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: int | None = None
        self.bad_loss: float | None = None  # the first non-finite training loss seen
        self.diverged_at: int | None = None  # the step whose loss or weights were not finite
        self._previous = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():  # signal.signal's rule
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame):
        self.signal = signum
        for sig, handler in self._previous.items():  # a second signal acts at once
            signal.signal(sig, handler)

    def callback(self):
        from transformers import TrainerCallback

        guard = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                guard.step_end(args, state, control, model)

        return Callback()

    def step_end(self, args, state, control, model) -> None:
        flags = torch.tensor([self.bad_loss is not None, self.signal or 0], dtype=torch.float32)
        if args.world_size > 1:  # every process stops at the same step, or DDP would hang
            import torch.distributed as dist

            flags = flags.to(args.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad_loss, signum = bool(flags[0]), int(flags[1])
        if signum:
            self.signal = self.signal or signum
            control.should_save = control.should_training_stop = True
        if bad_loss or (control.should_save and not _finite_weights(model)):
            self.diverged_at = state.global_step
            control.should_save = control.should_evaluate = False
            control.should_training_stop = True


def _finite_weights(model) -> bool:
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def guarded_trainer(guard: RunGuard, callbacks=(), **kwargs):
    """A ``Trainer`` that reports a non-finite training loss to ``guard``, with ``callbacks``
    and the authors' weight-decay groups (:func:`hf_integration.recipe.decays`)."""
    from transformers import Trainer

    from .recipe import decays

    class GuardedTrainer(Trainer):
        def get_decay_parameter_names(self, model):
            return [name for name, _ in model.named_parameters() if decays(name)]

        def training_step(self, *args, **kw):
            loss = super().training_step(*args, **kw)
            # One host sync per step, as the Trainer's own NaN filter of the logged loss does.
            if guard.bad_loss is None and not torch.isfinite(loss):
                guard.bad_loss = loss.item()
            return loss

    return GuardedTrainer(callbacks=[guard.callback(), *callbacks], **kwargs)


def recipe_callbacks(args) -> list:
    """The authors' per-step gradient clamp and recurrent-weight constraint, as asked."""
    from .recipe import ClampGradientsCallback, ConstrainRecurrentWeightsCallback

    callbacks = [ClampGradientsCallback(args.grad_clip_value)] if args.grad_clip_value else []
    if not args.no_constrain:
        callbacks.append(ConstrainRecurrentWeightsCallback())
    return callbacks


def plot_learning_curve(log_history: list[dict], args, metric: Metric, base: float, path: str):
    """Training loss and test metric against steps, with the baseline, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The training loss is on the metric's scale for adding (MSE) and text (nats -> bits); the
    # classification curves show the test error only.
    scale = {"adding": 1.0, "text": 1 / math.log(2)}.get(args.task)
    train = [] if scale is None else [
        (e["step"], e["loss"] * scale) for e in log_history if "loss" in e
    ]
    evals = [(e["step"], metric.value(args.task, e)) for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train, strict=True), label="train", alpha=0.6)
    if evals:
        ax.plot(*zip(*evals, strict=True), label="test", marker=".")
    ax.axhline(base, color="gray", linestyle="--", label=f"baseline ({base:.3g})")
    if args.task == "adding":
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric.name.removeprefix("test ") if train else metric.name)
    ax.set_title(f"IndRNN {args.num_layers}x{args.hidden_size}, {args.task}, T={args.seq_len}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_card(args, results: dict) -> str:
    d = DEFAULTS[args.task]
    cls = auto_class(args.task).__name__
    metric = results["metric"]
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- indrnn",
        "- indrnn-triton",
        "- recurrent-neural-network",
        f"- {args.task}",
        "---",
        "",
        f"# IndRNN on the {args.task} task",
        "",
        f"An IndRNN ({args.num_layers} layers x {args.hidden_size} units) trained with "
        f"`indrnn-train` (indrnn-triton: a fused IndRNN for PyTorch) on the {args.task} task "
        f"(T = {args.seq_len}).",
        "",
        "## Results",
        "",
        f"| {metric} | baseline ({results['baseline_name']}) | steps | wall time |",
        "|---|---|---|---|",
        f"| {results['final_metric']:.4g} | {results['baseline']:.4g} | {results['steps']} | "
        f"{results['train_seconds']:.0f} s train on {results['device']} |",
        "",
        "## Training",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Kernel path: {results['kernel_path']}. Settings: "
        + ", ".join(f"{k}={v}" for k, v in results["settings"].items())
        + ".",
        "",
        f"Defaults for this task: {d.note}.",
        "",
        "## Use",
        "",
        "```python",
        "# with the project installed (pip install indrnn-triton):",
        "import hf_integration",
        f"from transformers import {cls}",
        f'model = {cls}.from_pretrained("{args.output_dir}")',
        "# or without importing it (the code is saved with the weights):",
        f'model = {cls}.from_pretrained("{args.output_dir}", trust_remote_code=True)',
        "```",
        "",
    ]
    return "\n".join(lines)


def summary(results: dict) -> str:
    r = results
    better = "beats" if r["final_metric"] < r["baseline"] else "does NOT beat"
    rows = [
        ("task", f"{r['task']}  (T = {r['seq_len']})"),
        ("model", r["model"]),
        ("device", r["device"]),
        ("kernel path", r["kernel_path"]),
        ("steps", f"{r['steps']}  (batch {r['batch_size']} x {r['world_size']} process(es))"),
        ("wall time", f"{r['train_seconds']:.1f} s training, {r['total_seconds']:.1f} s in all"),
        (r["metric"], f"{r['final_metric']:.4g}  ({better} the baseline {r['baseline']:.4g}: "
                      f"{r['baseline_name']})"),
        ("reloaded", f"{r['reloaded_metric']:.4g}  (AutoModel*.from_pretrained, "
                     "trust_remote_code=True)"),
        ("saved to", r["output_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    bar = "=" * 72
    body = "\n".join(f"  {k:<{width}} : {v}" for k, v in rows)
    return f"{bar}\n  indrnn-train summary\n{bar}\n{body}\n{bar}"


def run(args) -> dict:
    """Train, evaluate, save, reload, re-evaluate; return the results (also in metrics.json)."""
    start = time.perf_counter()
    import transformers
    from transformers import Trainer, default_data_collator

    if use_cpu(args) or not torch.cuda.is_available():
        torch.set_num_threads(args.cpu_threads)
    if args.no_progress:  # also the bars of every checkpoint's "Writing model shards"
        transformers.utils.logging.disable_progress_bar()
    transformers.set_seed(args.seed)
    task = build_task(args)
    config = build_config(args, task)
    cls = auto_class(args.task)
    model = cls.from_config(config)
    metric = METRICS[args.task]
    classify = args.task in ("mnist", "pmnist")
    trainer_kwargs = dict(
        train_dataset=task.train,
        eval_dataset=task.test,
        data_collator=default_data_collator,
        compute_metrics=_accuracy if classify else None,
        preprocess_logits_for_metrics=_argmax_logits if classify else None,
    )
    targs = training_arguments(args)
    guard = RunGuard()
    # Adam with L2 weight decay (added to the gradient), as the authors' scripts; AdamW's
    # decoupled decay would be another recipe.
    trainer = guarded_trainer(guard, callbacks=recipe_callbacks(args), model=model, args=targs,
                              optimizer_cls_and_kwargs=(torch.optim.Adam,
                                                        {"lr": args.learning_rate}),
                              **trainer_kwargs)
    resume_from = _checkpoint_to_resume(args, trainer)
    with guard:
        train_out = trainer.train(resume_from_checkpoint=resume_from)
    if guard.diverged_at is not None:
        raise TrainingStopped(_diverged_message(args, guard), exit_code=1)
    if guard.signal is not None:
        _save_interrupted(args, trainer, guard.signal)
        name = signal.Signals(guard.signal).name
        raise TrainingStopped(
            f"{name} at step {trainer.state.global_step}: saved the model, metrics.json and "
            f"{os.path.basename(checkpoints(args.output_dir)[-1])} in {args.output_dir}; "
            "continue with the same command and --resume",
            exit_code=128 + guard.signal,
        )
    final = trainer.evaluate()
    device = trainer.args.device
    trainer.save_model(args.output_dir)
    trainer.accelerator.wait_for_everyone()

    reloaded = cls.from_pretrained(args.output_dir, trust_remote_code=True)
    re_trainer = Trainer(model=reloaded, args=targs, **trainer_kwargs)
    re_final = re_trainer.evaluate()

    base, base_name = baseline(args, task)
    results = {
        "task": args.task,
        "seq_len": args.seq_len,
        "model": f"{type(model).__name__}: {args.num_layers} x {args.hidden_size}"
        + (f", norm={args.norm}" if args.norm else "")
        + (", residual" if args.residual else "")
        + (f", dense (growth {args.dense_growth_rate}, blocks {args.dense_blocks}, "
           f"bottleneck {args.dense_bottleneck}, {model.config.num_hidden_layers} IndRNN layers)"
           if args.dense_growth_rate is not None else "")
        + (", bidirectional" if args.bidirectional else "")
        + f", {sum(p.numel() for p in model.parameters()):,} parameters",
        "device": device_name(device),
        "kernel_path": kernel_path(device),
        "world_size": trainer.args.world_size,
        "steps": trainer.state.global_step,
        "batch_size": args.batch_size,
        "train_seconds": train_out.metrics["train_runtime"],
        "metric": metric.name,
        "final_metric": metric.value(args.task, final),
        "reloaded_metric": metric.value(args.task, re_final),
        "baseline": base,
        "baseline_name": base_name,
        "eval": final,
        "eval_reloaded": re_final,
        "train": train_out.metrics,
        "settings": {
            k: getattr(args, k)
            for k in ("seq_len", "hidden_size", "num_layers", "norm", "norm_position", "dropout",
                      "dropout_last", "residual", "dense_growth_rate", "dense_blocks",
                      "dense_bottleneck",
                      "bidirectional", "recurrent_max_abs", "recurrent_min_abs",
                      "last_layer_init_near_one", "learning_rate", "lr_scheduler",
                      "warmup_steps", "batch_size", "max_steps", "max_grad_norm",
                      "grad_clip_value", "weight_decay", "recurrent_max_mag", "no_constrain",
                      "train_size", "seed")
        },
        "command": args.command,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "output_dir": args.output_dir,
    }
    results["total_seconds"] = time.perf_counter() - start
    if trainer.is_world_process_zero():
        try:
            plot_learning_curve(trainer.state.log_history, args, metric, base,
                                os.path.join(args.output_dir, "learning_curve.png"))
        except ImportError as err:  # a dependency, but machines without pip access may lack it
            print(f"indrnn-train: no learning_curve.png ({err}; pip install matplotlib)",
                  file=sys.stderr)
        with open(os.path.join(args.output_dir, "README.md"), "w") as f:
            f.write(model_card(args, results))
        with open(os.path.join(args.output_dir, "log_history.json"), "w") as f:
            json.dump(trainer.state.log_history, f, indent=1)
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
            json.dump(results, f, indent=2, default=str)
        print(summary(results), flush=True)
    return results


def _checkpoint_to_resume(args, trainer) -> str | None:
    """The checkpoint ``--resume`` continues from; with ``--overwrite-output-dir``, delete the
    earlier run's checkpoints first (the main process, before the others look)."""
    with trainer.args.main_process_first(desc="checkpoints"):
        if args.overwrite_output_dir and trainer.is_world_process_zero():
            for path in checkpoints(args.output_dir):
                shutil.rmtree(path)
        found = checkpoints(args.output_dir)
    if not args.resume:
        return None
    if not found:
        if trainer.is_world_process_zero():
            print(f"indrnn-train: --resume: no checkpoint in {args.output_dir}; starting at "
                  "step 0", file=sys.stderr)
        return None
    _check_same_model(found[-1], trainer.model.config)
    return found[-1]


def _check_same_model(checkpoint: str, config) -> None:
    """``--resume`` with model flags that differ from the checkpoint's is a usage error, not a
    state-dict traceback (or a silently different model)."""
    saved = type(config).from_pretrained(checkpoint).to_diff_dict()
    current = config.to_diff_dict()
    ignored = {"transformers_version", "architectures", "auto_map", "dtype"}
    differ = [f"{k}={saved.get(k)!r} there, {current.get(k)!r} here"
              for k in sorted(set(saved) | set(current))
              if k not in ignored and saved.get(k) != current.get(k)]
    if differ:
        raise UsageError(f"--resume: {checkpoint} holds a different model ({'; '.join(differ)}); "
                         "resume with the flags of the run that wrote it")


def _diverged_message(args, guard: RunGuard) -> str:
    what = (f"the training loss became {guard.bad_loss}" if guard.bad_loss is not None
            else "the weights became non-finite")
    found = checkpoints(args.output_dir)
    kept = (f"the last good checkpoint is {found[-1]}" if found
            else "no checkpoint was written before it (see --save-steps)")
    return (f"{what} at step {guard.diverged_at} (--learning-rate {args.learning_rate}; try a "
            f"smaller one, or --max-grad-norm); the run stopped without saving the model; "
            f"{kept}")


def _save_interrupted(args, trainer, signum: int) -> None:
    """The model and what is known of the run so far, next to the checkpoint just written."""
    trainer.save_model(args.output_dir)
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return
    log = trainer.state.log_history
    evals = [e for e in log if "eval_loss" in e]
    metric = METRICS[args.task]
    partial = {
        "task": args.task,
        "interrupted": signal.Signals(signum).name,
        "steps": trainer.state.global_step,
        "max_steps": args.max_steps,
        "checkpoint": checkpoints(args.output_dir)[-1],
        "metric": metric.name,
        "last_eval_step": evals[-1]["step"] if evals else None,
        "last_eval_metric": metric.value(args.task, evals[-1]) if evals else None,
        "command": args.command,
        "output_dir": args.output_dir,
    }
    with open(os.path.join(args.output_dir, "log_history.json"), "w") as f:
        json.dump(log, f, indent=1)
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(partial, f, indent=2, default=str)


def main(argv=None) -> int:
    """Entry point of ``indrnn-train`` and ``python -m hf_integration.train``."""
    args = parse_args(argv)
    try:
        check_output_dir(args)
        run(args)
    except UsageError as err:
        print(f"indrnn-train: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"indrnn-train: {'error: ' if err.exit_code == 1 else ''}{err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside the training loop: nothing to save
        print("indrnn-train: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except (FileNotFoundError, ValueError) as err:
        if "--data" in str(err):  # a data problem the user can fix: no traceback
            print(f"indrnn-train: error: {err}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
