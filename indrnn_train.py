"""The front end of ``indrnn-train``: its flags, the per-task defaults and their checks.

This module imports only the standard library, so that ``indrnn-train --help`` and a bad flag
answer at once; torch, transformers and datasets are imported by ``hf_integration.train`` once
the arguments are valid. It lives outside ``hf_integration`` because importing that package
registers the models with transformers' Auto classes, which imports both.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from dataclasses import dataclass, replace

TASKS = ("adding", "mnist", "pmnist", "text")
# Long runs (mnist: 100 000 steps) lose at most this many steps to a crash; short ones (the
# adding quick start: 2000) write a checkpoint or two.
DEFAULT_SAVE_STEPS = 1000
# transformers.set_seed (numpy's global generator) takes seeds in [0, 2**32).
MAX_SEED = 2**32 - 1
# One adding sequence of this length is already 17 GB of float32; longer ones overflow numpy's
# array sizes before they could overflow a machine's memory.
MAX_SEQ_LEN = 2**31 - 1
# The recurrent weights are float32: a larger clip bound is not a number they can hold (and the
# near-one init's uniform_(1/r, r) refuses it); 'none' is the way to ask for no clip.
FLOAT32_MAX = 3.4028234663852886e38


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
    test_size: int | None = None  # evaluate on at most this many test examples; None: all
    # the last layer's recurrent weights start uniformly in [1/r, r] (the authors' adding script)
    last_layer_init_near_one: bool = False


_MNIST = TaskDefaults(
    seq_len=784, hidden_size=128, num_layers=6, norm="batch", norm_position="after",
    dropout=0.1, learning_rate=2e-4, batch_size=32, max_steps=100_000, eval_steps=2000,
    lr_scheduler="plateau", max_grad_norm=0.0, grad_clip_value=10.0, weight_decay=1e-4,
    recurrent_max_mag=5.0,
    note="IndRNN paper and the authors' script: 6 layers x 128, batch norm after every "
    "layer, dropout 0.1, Adam 2e-4 divided by 10 when the validation loss (5 %% of the "
    "training images, held out) stops improving, batch 32, "
    "|u| <= 5^(1/784), gradients clamped to +-10, weight decay 1e-4 except recurrent weights "
    "and biases",
)

# The papers' settings, except where `note` says otherwise (the adding quick start is tuned to
# finish on 2 CPU cores in a few minutes; the paper's own settings are one flag away).
DEFAULTS = {
    "adding": TaskDefaults(
        seq_len=100, hidden_size=128, num_layers=2, norm=None, norm_position="after", dropout=0.0,
        learning_rate=2e-3, batch_size=50, max_steps=2000, eval_steps=100,
        lr_scheduler="linear", max_grad_norm=0.0, grad_clip_value=10.0, weight_decay=0.0,
        recurrent_max_mag=2.0, last_layer_init_near_one=True,
        note="IndRNN paper: 2 layers x 128, batch 50, MSE, |u| <= 2^(1/T), gradients clamped "
        "to +-10, no weight decay, the last layer's recurrent weights initialised in [1/r, r] "
        "(the authors' adding script); the paper's Adam lr "
        "is 2e-4, divided by 10 every 20000 steps, the default here is 2e-3 decayed linearly "
        "over 2000 steps so that T = 100 converges in minutes on 2 CPU cores (paper: "
        "--learning-rate 2e-4 --lr-scheduler step); batch 50 as batzner's "
        "TensorFlow code (the authors' Theano script: 32)",
    ),
    "mnist": _MNIST,
    # The same network and recipe, on the pixels in a fixed random order.
    "pmnist": replace(_MNIST, note="as mnist, with the pixels in a fixed random order "
                                   "(--permutation-seed)"),
    "text": TaskDefaults(
        seq_len=50, hidden_size=2000, num_layers=6, norm="layer", norm_position="before",
        dropout=0.25,
        learning_rate=2e-4, batch_size=128, max_steps=50_000, eval_steps=1000,
        lr_scheduler="constant", max_grad_norm=0.0, grad_clip_value=10.0, weight_decay=1e-4,
        recurrent_max_mag=2.0,
        note="Deep IndRNN paper, char-level PTB: 6 layers x 2000, T = 50, a norm before the "
        "recurrence, Adam 2e-4, |u| <= 2^(1/T), gradients clamped to +-10, weight decay 1e-4; "
        "layer norm where the paper has batch norm with statistics per time step and position: "
        "pooled over the window, batch norm would let training see the tokens it predicts",
    ),
}

# Tasks whose defaults depend on the device (--preset): "paper" is DEFAULTS, "cpu" is this. The
# paper's text model (25 M parameters, batch 128) took 356 s for 20 steps on 2 CPU cores and 25 s
# per evaluation; this one learns in minutes there.
CPU_DEFAULTS = {
    "text": TaskDefaults(
        seq_len=50, hidden_size=256, num_layers=2, norm=None, norm_position="before",
        dropout=0.0, learning_rate=2e-3, batch_size=32, max_steps=1000, eval_steps=200,
        lr_scheduler="linear", max_grad_norm=0.0, grad_clip_value=10.0, weight_decay=1e-4,
        recurrent_max_mag=2.0, test_size=1000,
        note="cpu preset (the default without CUDA): 2 layers x 256, Adam 2e-3 decayed linearly "
        "over 1000 steps, each evaluation on at most 1000 test windows (50 KB); --preset paper "
        "for the paper's settings",
    ),
}
# The defaults a preset sets (also the fields a flag overrides).
_DEFAULT_FIELDS = ("seq_len", "hidden_size", "num_layers", "norm", "norm_position", "dropout",
                   "learning_rate", "batch_size", "max_steps", "eval_steps", "lr_scheduler",
                   "max_grad_norm", "grad_clip_value", "weight_decay", "test_size",
                   "last_layer_init_near_one")


DENSE_KINDS = ("first", "bottleneck", "growth", "transition")


def _kind_rate(text: str) -> tuple[str, float]:
    kind, sep, rate = text.partition("=")
    if not sep or kind not in DENSE_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected KIND=P with KIND one of {', '.join(DENSE_KINDS)}, got {text!r}")
    try:
        p = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability after '=', got {text!r}") \
            from None
    if not 0.0 <= p < 1.0:
        raise argparse.ArgumentTypeError(f"the rate must be in [0, 1), got {text!r}")
    return kind, p


def _threads(text: str) -> int | str:
    return text if text == "auto" else _positive_int(text)


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
        if task in CPU_DEFAULTS:
            c = CPU_DEFAULTS[task]
            lines.append(
                f"  {task:7s} T={c.seq_len} layers={c.num_layers} hidden={c.hidden_size} "
                f"norm={c.norm} dropout={c.dropout} lr={c.learning_rate} ({c.lr_scheduler}) "
                f"batch={c.batch_size} steps={c.max_steps} test-size={c.test_size}"
            )
            lines.append(textwrap.fill(c.note, width=96, break_on_hyphens=False,
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
                   "on at most this many test examples (default: all; text --preset cpu: 1000)")
    g.add_argument("--permutation-seed", type=_nonnegative_int, default=0,
                   help="pmnist: seed of the fixed pixel permutation (default 0)")
    g.add_argument("--validation-fraction", type=_finite_float, default=None,
                   help="mnist, pmnist: fraction of the training split held out for validation, "
                   "evaluated during training (the plateau schedule watches it) so that the test "
                   "split decides nothing (default 0.05, the authors'; 0: evaluate the test split "
                   "during training)")
    g.add_argument("--test-fraction", type=_finite_float, default=0.1,
                   help="text (and MNIST data without a test split): fraction held out for "
                   "testing (default 0.1)")
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=("cpu", "paper"), default=None,
                   help="text: the defaults below: cpu (a small model that learns in minutes on "
                   "a CPU) or paper (the Deep IndRNN paper's 6 x 2000); default: paper when "
                   "CUDA is available (and --cpu is not given), else cpu")
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
    m.add_argument("--dense-dropout", type=_kind_rate, nargs="+", default=None,
                   metavar="KIND=P",
                   help="dropout of some kinds of dense-network layer, e.g. first=0.2 "
                   "growth=0.2 (kinds: first, bottleneck, growth, transition; the others use "
                   "--dropout, the last layer --dropout-last)")
    m.add_argument("--bidirectional", action="store_true",
                   help="bidirectional layers (classification tasks only)")
    m.add_argument("--recurrent-max-mag", type=_finite_float, default=None,
                   help="clip |u| to MAG^(1/T), the papers' way of giving the bound (default: "
                   "per task as in the authors' scripts: 2 for adding and text, 5 for MNIST)")
    m.add_argument("--recurrent-max-abs", type=_optional_finite_float, default=None,
                   help="clip |u| to this bound instead ('none' for no clip)")
    m.add_argument("--recurrent-min-abs", type=_finite_float, default=0.0,
                   help="raise |u| to at least this value (default 0)")
    m.add_argument("--last-layer-init-near-one", action=argparse.BooleanOptionalAction,
                   default=None,
                   help="initialise the last layer's recurrent weights uniformly in "
                   "[1/r, r], r the clip bound (helps the adding problem at T = 5000; "
                   "default: per task: on for adding as in the authors' script, where the clip "
                   "bound r is >= 1, off for the others)")
    m.add_argument("--input-weight-init", default="kaiming_uniform",
                   choices=("kaiming_uniform", "xavier_uniform", "rnn_uniform", "normal"),
                   help="initialisation of the input weights (default kaiming_uniform, as the "
                   "authors' PyTorch code; normal: N(0, --input-weight-std^2), as their adding "
                   "scripts)")
    m.add_argument("--input-weight-std", type=_finite_float, default=0.001,
                   help="standard deviation of --input-weight-init normal (default 0.001, the "
                   "authors')")
    t = p.add_argument_group("training")
    t.add_argument("--learning-rate", "--lr", type=_finite_float, default=None,
                   help="Adam learning rate (default: per task, below)")
    t.add_argument("--lr-scheduler", choices=("constant", "linear", "cosine", "plateau", "step"),
                   default=None,
                   help="learning-rate schedule (Trainer's lr_scheduler_type; plateau: divide the "
                   "lr by 10 at the evaluation that makes more than --plateau-patience in a row "
                   "without an evaluation loss (the validation split's, else the test split's) "
                   "0.01%% below the best so far, then count again from 0: "
                   "torch's ReduceLROnPlateau, the authors' MNIST schedule in its PyTorch form, "
                   "except that theirs watches a validation split's accuracy and reloads the "
                   "best model at each drop (README); step: divide the lr by 10 every "
                   "--lr-step-size steps, the IndRNN paper's adding-problem schedule; default: "
                   "per task, below)")
    t.add_argument("--lr-step-size", type=_positive_int, default=None,
                   help="step: optimizer steps between two divisions of the lr by 10 (default "
                   "20000, the paper's)")
    t.add_argument("--plateau-patience", type=_positive_int, default=5,
                   help="evaluations in a row without a better evaluation loss that plateau lets "
                   "pass: the next one without divides the lr (default 5: the 6th)")
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
                   help=f"seed of the model init and the data, 0 to {MAX_SEED} (default 0)")
    t.add_argument("--cpu", action="store_true",
                   help="train on the CPU even when CUDA is available (set automatically "
                   "under torchrun without CUDA, so that the Trainer runs DDP with gloo)")
    t.add_argument("--cpu-threads", type=_threads, default=1,
                   help="torch threads when training on the CPU, or auto: the cores torch "
                   "would use that are idle when the run starts (measured over 0.2 s), at "
                   "least 1. Default 1: on our 2-core virtual machine 2 threads trained the "
                   "adding quick start 1.36x faster than 1 at one time and 1.4x slower 45 "
                   "minutes later, with both cores idle (threads wait for each other at every "
                   "parallel region, and for a core the host gives to someone else); on cores "
                   "busy with other jobs they were 3x slower")
    t.add_argument("--keep-denormals", action="store_true",
                   help="on the CPU, compute with denormal floats instead of flushing them to "
                   "zero (torch.set_flush_denormal). Off by default: the backward through time "
                   "multiplies gradients by |u| < 1 at every step, the tiny values it reaches "
                   "make every float32 op that touches them many times slower (the adding quick "
                   "start's forward+backward ran 1.7x slower), and values below 1.2e-38 do not "
                   "change training")
    t.add_argument("--keep-malloc-defaults", action="store_true",
                   help="on the CPU, leave glibc's malloc thresholds as they are. Off by default: "
                   "the run has glibc serve blocks below 32 MiB from its heap and keep up to "
                   "256 MiB of freed memory for the next step instead of returning it to the "
                   "system after every step (each reuse would be fresh pages: ~600 page faults "
                   "per step of the adding quick start). Peak memory is unchanged. Also off when "
                   "GLIBC_TUNABLES sets glibc.malloc tunables")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", default=None,
                   help="where the model, card, metrics, curve and checkpoints go: a new or "
                   "empty folder, or an earlier run's (marked by its indrnn-train.json); files "
                   "of its own that a run would overwrite (README.md, config.json, ...) are "
                   "refused (default out/indrnn-TASK)")
    o.add_argument("--save-steps", type=_nonnegative_int, default=DEFAULT_SAVE_STEPS,
                   help="write a resumable checkpoint (OUTPUT_DIR/checkpoint-STEP) every this "
                   f"many steps and at the end (default {DEFAULT_SAVE_STEPS}; 0: only on "
                   "SIGINT/SIGTERM)")
    o.add_argument("--save-total-limit", type=_positive_int, default=2,
                   help="keep only the newest this many checkpoints (default 2)")
    o.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --output-dir, with the "
                   "same flags: a changed training or data flag (seed, lr, weight decay, batch "
                   "size, steps, schedule, gradient clamp, constraint, data) or model flag is "
                   "refused; display, logging, saving, CPU and (but with --lr-scheduler plateau) "
                   "evaluation flags may change (starts from step 0 when there is no "
                   "checkpoint)")
    o.add_argument("--overwrite-output-dir", action="store_true",
                   help="remove what an earlier run wrote in --output-dir (checkpoints, model, "
                   "card, metrics; files of other names stay) and start over")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv`` and fill the task's defaults; errors exit with code 2 and a message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = " ".join(["indrnn-train", *(sys.argv[1:] if argv is None else argv)])
    if args.preset is not None and args.task not in CPU_DEFAULTS:
        parser.error(f"--preset applies to the {' and '.join(CPU_DEFAULTS)} task only; the "
                     f"{args.task} defaults do not depend on the device")
    if args.task in ("mnist", "pmnist"):
        if args.seq_len not in (None, 784):
            parser.error(f"--seq-len is fixed at 784 for {args.task} (one pixel per step), "
                         f"got {args.seq_len}")
    if args.task == "text" and args.data is None:
        parser.error("the text task needs --data PATH, the file to model (read as raw bytes)")
    if args.task == "adding" and args.data is not None:
        parser.error("--data is not used by the adding task (its data is generated)")
    if args.data is not None and not os.path.exists(args.data):
        parser.error(f"--data {args.data!r} does not exist")
    if args.task == "text" and not os.path.isfile(args.data):
        parser.error(f"--data {args.data!r} is not a file (the text task reads one file)")
    unset = [name for name in _DEFAULT_FIELDS if getattr(args, name) is None]
    if args.norm == "none":
        args.norm = None
    _fill(args, DEFAULTS[args.task], unset)
    if args.seq_len < 2:
        parser.error(f"--seq-len must be >= 2, got {args.seq_len}")
    if args.seq_len > MAX_SEQ_LEN:
        parser.error(f"--seq-len must be at most {MAX_SEQ_LEN} (2**31 - 1), got {args.seq_len}")
    if args.seed > MAX_SEED:
        parser.error(f"--seed must be at most {MAX_SEED} (2**32 - 1, the range of "
                     f"transformers.set_seed), got {args.seed}")
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
    if args.lr_step_size is not None and args.lr_scheduler != "step":
        parser.error(f"--lr-step-size applies to --lr-scheduler step, got --lr-scheduler "
                     f"{args.lr_scheduler}")
    if args.lr_scheduler == "step":
        if args.warmup_steps:
            parser.error("--warmup-steps does not apply to --lr-scheduler step")
        args.lr_step_size = args.lr_step_size or 20_000
    if args.lr_scheduler == "plateau" and args.warmup_steps:
        parser.error("--warmup-steps does not apply to --lr-scheduler plateau (the Trainer's "
                     "reduce-on-plateau schedule has no warmup)")
    if not 0.0 < args.test_fraction < 1.0:
        parser.error(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if args.validation_fraction is None:
        args.validation_fraction = 0.05 if args.task in ("mnist", "pmnist") else 0.0
    elif args.task not in ("mnist", "pmnist") and args.validation_fraction:
        parser.error(f"--validation-fraction applies to mnist and pmnist; {args.task} evaluates "
                     "its test split")
    elif not 0.0 <= args.validation_fraction < 1.0:
        parser.error(f"--validation-fraction must be in [0, 1), got {args.validation_fraction}")
    if args.bidirectional and args.task == "text":
        parser.error("--bidirectional is not possible for the text task (a causal LM)")
    if args.residual and args.dense_growth_rate is not None:
        parser.error("--residual and --dense-growth-rate exclude each other")
    if args.dense_growth_rate is not None and "num_layers" not in unset:
        parser.error(f"--num-layers {args.num_layers} with --dense-growth-rate: the dense "
                     "network's layer count comes from --dense-blocks and --dense-bottleneck; "
                     "leave --num-layers out")
    if args.dense_dropout is not None:
        if args.dense_growth_rate is None:
            parser.error("--dense-dropout applies to the dense network: give "
                         "--dense-growth-rate too")
        args.dense_dropout = dict(args.dense_dropout)
    if args.recurrent_max_mag is not None and "--recurrent-max-abs" in _flags(argv):
        parser.error("--recurrent-max-mag and --recurrent-max-abs both give the clip bound: "
                     "pass one")
    if args.recurrent_max_abs is None and "--recurrent-max-abs" not in _flags(argv):
        if args.recurrent_max_mag is None:
            args.recurrent_max_mag = DEFAULTS[args.task].recurrent_max_mag
        if args.recurrent_max_mag <= 0:
            parser.error(f"--recurrent-max-mag must be > 0, got {args.recurrent_max_mag}")
        args.recurrent_max_abs = args.recurrent_max_mag ** (1 / args.seq_len)
        if args.recurrent_max_abs > FLOAT32_MAX:
            parser.error(f"--recurrent-max-mag {args.recurrent_max_mag:g} gives the clip bound "
                         f"MAG^(1/T) = {args.recurrent_max_abs:.3g}, beyond float32's largest "
                         f"value {FLOAT32_MAX:.3g}; use a smaller MAG, or --recurrent-max-abs "
                         "none for no clip")
    if args.recurrent_max_abs is not None and args.recurrent_max_abs <= 0:
        parser.error(f"--recurrent-max-abs must be > 0 or 'none', got {args.recurrent_max_abs}")
    if args.recurrent_max_abs is not None and args.recurrent_max_abs > FLOAT32_MAX:
        parser.error(f"--recurrent-max-abs must be at most {FLOAT32_MAX:.3g} (float32's largest "
                     f"value; 'none' for no clip), got {args.recurrent_max_abs:g}")
    if args.input_weight_std <= 0:
        parser.error(f"--input-weight-std must be > 0, got {args.input_weight_std}")
    if args.recurrent_min_abs < 0:
        parser.error(f"--recurrent-min-abs must be >= 0, got {args.recurrent_min_abs}")
    if args.recurrent_max_abs is not None and args.recurrent_min_abs > args.recurrent_max_abs:
        parser.error(f"--recurrent-min-abs ({args.recurrent_min_abs}) must not exceed "
                     f"--recurrent-max-abs ({args.recurrent_max_abs})")
    if args.resume and args.overwrite_output_dir:
        parser.error("--resume and --overwrite-output-dir exclude each other")
    if args.last_layer_init_near_one and (args.recurrent_max_abs or 0) < 1:
        if "last_layer_init_near_one" not in unset:
            parser.error("--last-layer-init-near-one needs --recurrent-max-abs >= 1")
        args.last_layer_init_near_one = False  # the task's default, where it cannot apply
    if args.task in CPU_DEFAULTS:  # asks torch about the device: only once the flags are valid
        if args.preset is None:
            args.preset = "paper" if _cuda_available(args) else "cpu"
        if args.preset == "cpu":
            _fill(args, CPU_DEFAULTS[args.task], unset)
    if args.dense_growth_rate is not None:  # the dense network's IndRNN layers, all kinds
        from indrnn_triton.modules import dense_layer_plan

        args.num_layers = len(dense_layer_plan(args.hidden_size, args.dense_growth_rate,
                                               args.dense_blocks, args.dense_bottleneck))
    if args.residual and (args.num_layers < 3 or args.num_layers % 2 == 0):
        parser.error(f"--residual needs an odd --num-layers >= 3, got {args.num_layers}")
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


def _fill(args: argparse.Namespace, defaults: TaskDefaults, names: list[str]) -> None:
    for name in names:
        setattr(args, name, getattr(defaults, name))


def _cuda_available(args: argparse.Namespace) -> bool:
    if args.cpu:
        return False
    import torch

    return torch.cuda.is_available()


def describe_defaults(args: argparse.Namespace) -> str | None:
    """The preset of a task whose defaults depend on the device, in one line (None for the
    other tasks)."""
    if args.task not in CPU_DEFAULTS:
        return None
    other = "cpu" if args.preset == "paper" else "paper"
    return (f"{args.task}: --preset {args.preset} (default: paper with CUDA, cpu without): "
            f"{args.num_layers} layers x {args.hidden_size}, batch {args.batch_size}, "
            f"{args.max_steps} steps, evaluating on {args.test_size or 'all the'} test windows "
            f"(flags override each value; --preset {other} for the other defaults)")


def _flags(argv) -> list[str]:
    argv = sys.argv[1:] if argv is None else argv
    return [a.split("=", 1)[0] for a in argv]


def main(argv=None) -> int:
    """Entry point of ``indrnn-train``: parse, then train with ``hf_integration.train``."""
    args = parse_args(argv)
    from hf_integration import train

    return train.execute(args)


if __name__ == "__main__":
    sys.exit(main())
