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
optimizer, scheduler, RNG states, and the run's flags in ``indrnn-train.json``) and keeps the
last ``--save-total-limit``; ``--resume`` continues from the latest one with the same result as
an uninterrupted run, and refuses training flags that differ from the checkpoint's. The output
folder is marked as a run's by its ``indrnn-train.json``; ``--overwrite-output-dir`` removes
only what an earlier run wrote there. SIGINT (Ctrl-C) or
SIGTERM ends the current step, writes a checkpoint, the model and ``metrics.json``, and exits
with 128 + the signal number. A non-finite loss or weights stop the run with exit code 1 and
keep the last good checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

# The flags and defaults live in the light front end that the indrnn-train script imports; they
# are re-exported here for ``python -m hf_integration.train`` and for code that trains in-process.
from indrnn_train import DEFAULTS, TASKS, build_parser, describe_defaults, parse_args  # noqa: F401

from .modeling_indrnn import INSTALL_HINT

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers' checkpoint folder names
# Written at the start of every run in --output-dir, and with the weights in every checkpoint:
# what wrote the folder (the mark of an indrnn-train folder) and the run's training settings.
RECORD = "indrnn-train.json"
# What a run writes in --output-dir besides its checkpoints and RECORD: save_pretrained's model
# and code files (shards, and the text task's tokenizer, included), the Trainer's arguments, and
# the run's own card, metrics and curve. --overwrite-output-dir removes these and nothing else.
OUTPUT_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "modeling_indrnn.py", "configuration_indrnn.py", "training_args.bin",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "README.md", "metrics.json", "log_history.json", "learning_curve.png",
})
SHARD = re.compile(r"^model-\d+-of-\d+\.safetensors$")


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


def _written_by_a_run(name: str) -> bool:
    return (name == RECORD or name in OUTPUT_FILES or bool(CHECKPOINT.match(name))
            or bool(SHARD.match(name)))


def earlier_run_files(output_dir: str) -> list[str]:
    """The names in ``output_dir`` that an earlier run wrote, if it is a run's folder: one with
    RECORD, or with complete checkpoints (folders of versions before RECORD); else [].

    Only these names, never the folder nor a file of another name, are what
    ``--overwrite-output-dir`` removes: the folder may also hold the user's own files."""
    if not os.path.isdir(output_dir):
        return []
    names = os.listdir(output_dir)
    if RECORD not in names and not checkpoints(output_dir):
        return []
    return sorted(name for name in names if _written_by_a_run(name))


def check_output_dir(args) -> None:
    """Fail before any training when ``--output-dir`` cannot take the results; holds files that
    are not an earlier run's but that a run would overwrite (a project's README.md or
    config.json); or holds an earlier run that neither ``--resume`` nor
    ``--overwrite-output-dir`` says what to do with. With ``--resume``, also check the
    checkpoint it would continue from (:func:`check_resumable`)."""
    out = args.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--output-dir {out!r} is a file; expected a folder (new or existing)")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"--output-dir {out!r} is not writable: {err.strerror or err}") from None
    earlier = earlier_run_files(out)
    if not earlier:
        clash = sorted(name for name in os.listdir(out) if _written_by_a_run(name))
        if clash:
            raise UsageError(
                f"--output-dir {out!r} holds files that no indrnn-train run wrote there (no "
                f"{RECORD}) and that a run would overwrite: {', '.join(clash)}; choose a new or "
                "empty --output-dir (files of other names in it are left alone)")
        return
    found = checkpoints(out)
    results = [name for name in earlier if name != RECORD and not CHECKPOINT.match(name)]
    if args.overwrite_output_dir:
        return
    if found and not args.resume:
        raise UsageError(
            f"--output-dir {out!r} holds checkpoints of an earlier run (newest: "
            f"{os.path.basename(found[-1])}): pass --resume to continue it, "
            "--overwrite-output-dir to start over, or choose another --output-dir"
        )
    if not found and results:
        raise UsageError(
            f"--output-dir {out!r} holds the results of an earlier run ({', '.join(results)}) "
            f"and no checkpoint{' to resume from' if args.resume else ''}: pass "
            "--overwrite-output-dir to replace them, or choose another --output-dir")
    if found:
        check_resumable(found, args)


def resume_settings(args) -> dict:
    """The settings a resumed run must share with the run that wrote its checkpoint.

    The checkpoint brings the optimizer (its lr and weight decay included), the schedule's
    state, the RNG states and the position in the data; the flags below decide what these mean
    (the data, its order, the schedule's shape, the step's gradient clamp and constraint), so a
    resumed run could not honour a changed one: it would be silently a mix of two runs. The
    model's flags are checked against the checkpoint's config (:func:`_check_same_model`).
    Safe to change, and left out: how often the run evaluates (except with the plateau
    schedule, which steps at each evaluation on the evaluated split's loss: then eval steps and
    test size count too), logs and saves, how many checkpoints it keeps, the evaluation batch
    size, the progress bar, and the CPU settings (threads, denormals, malloc, --cpu: the same steps,
    rounded differently)."""
    names = ["task", "seq_len", "seed", "learning_rate", "lr_scheduler", "warmup_steps",
             "batch_size", "max_steps", "max_grad_norm", "grad_clip_value", "weight_decay",
             "no_constrain"]
    names += {"adding": ["train_size"], "text": ["test_fraction"],
              "pmnist": ["test_fraction", "permutation_seed", "validation_fraction"]}.get(
        args.task, ["test_fraction", "validation_fraction"])  # the data flags each task reads
    settings = {name: getattr(args, name) for name in names}
    if args.task != "adding":
        settings["data"] = None if args.data is None else os.path.abspath(args.data)
    if args.task in ("mnist", "pmnist"):
        from .data import PIXEL_SCALING

        settings["pixel_scaling"] = PIXEL_SCALING
    settings["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    if args.lr_scheduler == "plateau":
        settings.update(plateau_patience=args.plateau_patience, eval_steps=args.eval_steps,
                        test_size=args.test_size)
    if args.lr_step_size is not None:  # --lr-scheduler step
        settings["lr_step_size"] = args.lr_step_size
    return settings


def _flag(name: str) -> str:
    return {"task": "the task", "world_size": "processes (WORLD_SIZE)",
            "pixel_scaling": "the pixel scaling (an earlier indrnn-train's)"}.get(
        name, "--" + name.replace("_", "-"))


def check_resumable(found: list[str], args) -> None:
    """``--resume`` from the newest checkpoint of ``found``: a one-line error, before any data
    is read, when a file of it cannot be read (a disk that filled up, a copy cut short) or when
    it was written with other training flags (:func:`resume_settings`)."""
    newest = found[-1]
    damaged = damaged_file(newest)
    if damaged:
        previous = (f"continue from {os.path.basename(found[-2])}" if len(found) > 1
                    else "start again at step 0")
        raise UsageError(f"--resume: the newest checkpoint {newest} is damaged ({damaged}); "
                         f"remove that folder to {previous} with the same command")
    path = os.path.join(newest, RECORD)
    if not os.path.isfile(path):
        print(f"indrnn-train: --resume: {newest} was written before indrnn-train recorded its "
              "training flags; resuming without checking them", file=sys.stderr)
        return
    with open(path) as f:
        saved = json.load(f).get("settings", {})
    current = resume_settings(args)
    differ = [f"{_flag(k)} {saved.get(k)!r} there, {current.get(k)!r} here"
              for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if differ:
        raise UsageError(
            f"--resume: {newest} was trained with other flags ({'; '.join(differ)}); the "
            "optimizer, schedule and data come from the checkpoint, so the run cannot follow "
            "them: resume with the flags of the run that wrote it, or start a new run "
            "(--overwrite-output-dir or another --output-dir)")


def damaged_file(checkpoint: str) -> str | None:
    """The first file of ``checkpoint`` that does not read as its format, with the reason, or
    None. JSON parses; safetensors headers match the file; torch.save files (zip archives) pass
    their CRC checks, which read them once, as the resume will."""
    from safetensors import SafetensorError, safe_open

    for name in sorted(os.listdir(checkpoint)):
        path = os.path.join(checkpoint, name)
        try:
            if name.endswith(".json"):
                with open(path) as f:
                    json.load(f)
            elif name.endswith(".safetensors"):
                with safe_open(path, "pt"):
                    pass
            elif name.endswith((".pt", ".pth", ".bin")):
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    return f"{name}: bad CRC in {bad}"
        except (OSError, ValueError, zipfile.BadZipFile, SafetensorError) as err:
            return f"{name}: {err}"
    return None


def build_task(args):
    """The task's data (hf_integration.data.TaskData); data errors name the flag."""
    from . import data

    if args.task == "adding":
        return data.adding_task(args.seq_len, args.train_size, args.test_size or 1000, args.seed)
    if args.task in ("mnist", "pmnist"):
        task = data.load_mnist(args.data, permute=args.task == "pmnist",
                               permutation_seed=args.permutation_seed,
                               test_fraction=args.test_fraction, seed=args.seed,
                               validation_fraction=args.validation_fraction)
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
                      dense_bottleneck=args.dense_bottleneck,
                      dense_dropout_by_kind=args.dense_dropout)
    if args.last_layer_init_near_one:
        kwargs["last_layer_recurrent_init"] = "near_one"
    kwargs.update(input_weight_init=args.input_weight_init,
                  input_weight_std=args.input_weight_std)
    if task.input_size is not None:
        kwargs["input_size"] = task.input_size
    else:
        kwargs["vocab_size"] = task.vocab_size
    if task.tokenizer is not None:  # generate() and pipelines pad batches with its <pad>
        kwargs["pad_token_id"] = task.tokenizer.pad_token_id
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
    if op.cpu_uses_compiled and op.cpu_compiled.library() is not None:
        return "CPU (compiled kernels, indrnn_triton/csrc)"
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

    # "step" is no lr_scheduler_type: the trainer builds it (guarded_trainer's step_size).
    schedule = dict(lr_scheduler_type="constant" if args.lr_scheduler == "step"
                    else args.lr_scheduler)
    if args.lr_scheduler == "plateau":  # divide by 10 when the evaluated loss stops improving
        schedule = dict(lr_scheduler_type="reduce_lr_on_plateau",
                        lr_scheduler_kwargs={"mode": "min", "factor": 0.1, "eps": 0.0,
                                             "threshold": 1e-4, "threshold_mode": "rel",
                                             "patience": args.plateau_patience},
                        metric_for_best_model="loss", greater_is_better=False)
    return TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate,
        **schedule,
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
        bad_loss, signum = self.bad_loss is not None, self.signal or 0
        if args.world_size > 1:  # every process stops at the same step, or DDP would hang
            import torch.distributed as dist

            flags = torch.tensor([bad_loss, signum], dtype=torch.float32, device=args.device)
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


def run_record(args) -> dict:
    """What RECORD holds: the tool, the command and :func:`resume_settings`."""
    return {"written_by": "indrnn-train", "command": args.command,
            "settings": resume_settings(args)}


def write_record(folder: str, record: dict) -> None:
    with open(os.path.join(folder, RECORD), "w") as f:
        json.dump(record, f, indent=1)


def guarded_trainer(guard: RunGuard, callbacks=(), record: dict | None = None,
                    step_size: int | None = None, **kwargs):
    """A ``Trainer`` that reports a non-finite training loss to ``guard``, with ``callbacks``
    and the authors' weight-decay groups (:func:`hf_integration.recipe.decays`); it writes
    ``record`` (RECORD) with every model it saves, so each checkpoint carries the settings
    ``--resume`` checks (written with the weights, before the Trainer's trainer_state.json, the
    file that makes a checkpoint complete); and it keeps no "best" checkpoint. With
    ``step_size``, the lr is divided by 10 every ``step_size`` optimizer steps (torch's StepLR,
    saved and restored with the checkpoints like the Trainer's own schedules)."""
    from transformers import Trainer

    from .recipe import decays

    class GuardedTrainer(Trainer):
        def get_decay_parameter_names(self, model):
            return [name for name, _ in model.named_parameters() if decays(name)]

        def save_model(self, output_dir=None, *args, **kw):
            super().save_model(output_dir, *args, **kw)
            if record is not None and self.args.should_save:
                write_record(output_dir or self.args.output_dir, record)

        def _determine_best_metric(self, metrics, trial):
            # The plateau schedule sets metric_for_best_model only because the Trainer's
            # ReduceLROnPlateau reads its metric from there. A tracked best checkpoint would be
            # kept by every rotation in place of a newer one, and with save_total_limit=1 the
            # end of train() deletes every other checkpoint, the newest (the one a signal just
            # wrote, the one --resume needs) included. So nothing is tracked.
            self.state.best_global_step = None
            self.state.best_model_checkpoint = None
            return False

        def create_scheduler(self, num_training_steps, optimizer=None):
            if step_size is not None and self.lr_scheduler is None:
                self.lr_scheduler = torch.optim.lr_scheduler.StepLR(
                    optimizer or self.optimizer, step_size=step_size, gamma=0.1)
                self._created_lr_scheduler = True
            return super().create_scheduler(num_training_steps, optimizer)

        def training_step(self, *args, **kw):
            loss = super().training_step(*args, **kw)
            # One host sync per step, as the Trainer's own NaN filter of the logged loss does.
            if guard.bad_loss is None and not torch.isfinite(loss):
                guard.bad_loss = loss.item()
            return loss

    return GuardedTrainer(callbacks=[guard.callback(), *callbacks], **kwargs)


def optimizer(args) -> tuple[type, dict]:
    """The Trainer's ``optimizer_cls_and_kwargs``: Adam with L2 weight decay (added to the
    gradient, the Trainer's ``weight_decay`` groups), as the authors' scripts; AdamW's decoupled
    decay would be another recipe. The fused implementation, one kernel for every parameter
    (CPU and CUDA; the same update up to rounding): for the adding quick start's 8 tensors a
    step took 0.17 ms against 0.52 ms for the loop over parameters torch picks by default on
    CPU."""
    return torch.optim.Adam, {"lr": args.learning_rate, "fused": True}


def recipe_callbacks(args) -> list:
    """The authors' per-step gradient clamp and recurrent-weight constraint, as asked."""
    from .recipe import ClampGradientsCallback, ConstrainRecurrentWeightsCallback

    callbacks = [ClampGradientsCallback(args.grad_clip_value)] if args.grad_clip_value else []
    if not args.no_constrain:
        callbacks.append(ConstrainRecurrentWeightsCallback())
    return callbacks


def plot_learning_curve(log_history: list[dict], args, metric: Metric, base: float, path: str,
                        evaluated: str = "test"):
    """Training loss and the metric of the split ``evaluated`` during training against steps,
    with the baseline, in one PNG."""
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
        ax.plot(*zip(*evals, strict=True), label=evaluated, marker=".")
    ax.axhline(base, color="gray", linestyle="--", label=f"baseline ({base:.3g})")
    if args.task == "adding":
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    name = metric.name.removeprefix("test ")
    ax.set_ylabel(name if train else f"{evaluated} {name}")
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
        *([f"Evaluated during training on a validation split, "
           f"{results['validation_fraction']:.0%} of the training data held out; the test split "
           "was used for the figures above only.", ""] if results["validation"] else []),
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
        f"The code is saved with the weights, but {INSTALL_HINT}.",
        "",
        "```python",
        f"from transformers import {cls}",
        f'model = {cls}.from_pretrained("{args.output_dir}", trust_remote_code=True)',
        "# or, where the project's hf_integration package is importable:",
        "import hf_integration",
        f'model = {cls}.from_pretrained("{args.output_dir}")',
        "```",
        "",
    ]
    if args.task == "text":
        lines += [
            "The folder also holds the tokenizer the model was trained with (byte b is id b):",
            "",
            "```python",
            "from transformers import pipeline",
            f'generate = pipeline("text-generation", model="{args.output_dir}", '
            "trust_remote_code=True)",
            'print(generate("The ", max_new_tokens=100)[0]["generated_text"])',
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


_TORCH_THREADS = torch.get_num_threads()  # torch's default (physical cores), before any run


def cpu_threads(setting, available: int | None = None, idle: float | None = None) -> int:
    """``--cpu-threads``: a count, or "auto": the cores torch would use (``available``, by
    default torch's thread count when this module was imported) that are idle now (``idle``,
    by default :func:`idle_cores`), at least 1. OpenMP threads that share a core with another
    job wait for each other at every parallel region, so a busy core is better left out."""
    if setting != "auto":
        return int(setting)
    available = _TORCH_THREADS if available is None else available
    idle = idle_cores() if idle is None else idle
    return max(1, min(available, round(idle)))


def idle_cores(window: float = 0.2) -> float:
    """How many of the machine's cores were idle over the next ``window`` seconds (Linux's
    /proc/stat); elsewhere the core count minus the 1-minute load average."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields[:8])  # idle + iowait, all but guest time

    cores = os.cpu_count() or 1
    try:
        idle0, total0 = sample()
        time.sleep(window)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        try:
            return max(0.0, cores - os.getloadavg()[0])
        except OSError:
            return 1.0
    return cores * (idle1 - idle0) / max(1, total1 - total0)


def flushes_denormals() -> bool:
    """Whether this thread's float32 arithmetic flushes denormals to zero right now."""
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


# glibc's mallopt parameters (malloc.h), and the values keep_freed_memory sets: allocations below
# 32 MiB (the most glibc's own adaptive threshold would reach) come from the heap, and up to
# 256 MiB of freed memory stays at its top instead of going back to the system.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_BELOW_BYTES = 32 << 20
KEEP_FREED_BYTES = 256 << 20


def keep_freed_memory(environ=os.environ) -> bool:
    """Have glibc's malloc keep freed memory for reuse, for the rest of the process.

    By default glibc returns the top of its heap to the system whenever more than twice the
    largest recently freed block is free there, and a training step frees most of what it
    allocated: the next step's tensors then land on fresh pages, each a page fault to zero
    (~600 faults per step of the adding quick start, gone with this). Peak memory is unchanged;
    up to KEEP_FREED_BYTES of it stays with the process between steps. Returns whether the
    thresholds were set: not off glibc, nor when GLIBC_TUNABLES already sets glibc's malloc
    tunables (the user's choice wins)."""
    if platform.libc_ver()[0] != "glibc" or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BELOW_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


def run(args) -> dict:
    """Train, evaluate, save, reload, re-evaluate; return the results (also in metrics.json).

    On the CPU it sets torch's thread count (``--cpu-threads``, kept afterwards), has glibc keep
    freed memory for reuse (:func:`keep_freed_memory`, kept afterwards; ``--keep-malloc-defaults``
    turns that off) and flushes denormals to zero for the run (``--keep-denormals`` turns that
    off); the caller's denormal mode comes back when it returns."""
    on_cpu = use_cpu(args) or not torch.cuda.is_available()
    if not on_cpu:
        return _run(args)
    torch.set_num_threads(cpu_threads(args.cpu_threads))
    if not args.keep_malloc_defaults:
        keep_freed_memory()
    before = flushes_denormals()
    torch.set_flush_denormal(not args.keep_denormals)
    try:
        return _run(args)
    finally:
        torch.set_flush_denormal(before)


def _run(args) -> dict:
    start = time.perf_counter()
    import transformers
    from transformers import Trainer, default_data_collator

    if args.no_progress:  # also the bars of every checkpoint's "Writing model shards"
        transformers.utils.logging.disable_progress_bar()
    transformers.set_seed(args.seed)
    described = describe_defaults(args)
    if described and int(os.environ.get("RANK", "0")) == 0:
        print(f"indrnn-train: {described}", flush=True)
    task = build_task(args)
    config = build_config(args, task)
    cls = auto_class(args.task)
    model = cls.from_config(config)
    metric = METRICS[args.task]
    classify = args.task in ("mnist", "pmnist")
    trainer_kwargs = dict(
        train_dataset=task.train,
        eval_dataset=task.test if task.validation is None else task.validation,
        data_collator=default_data_collator,
        # the text task's tokenizer: saved with the model and in every checkpoint
        processing_class=task.tokenizer,
        compute_metrics=_accuracy if classify else None,
        preprocess_logits_for_metrics=_argmax_logits if classify else None,
    )
    targs = training_arguments(args)
    guard = RunGuard()
    trainer = guarded_trainer(guard, callbacks=recipe_callbacks(args), record=run_record(args),
                              step_size=args.lr_step_size,  # None unless --lr-scheduler step
                              model=model, args=targs, optimizer_cls_and_kwargs=optimizer(args),
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
    validation = None if task.validation is None else trainer.evaluate()
    final = _evaluate_test(trainer, task)
    device = trainer.args.device
    trainer.save_model(args.output_dir)
    trainer.accelerator.wait_for_everyone()

    reloaded = cls.from_pretrained(args.output_dir, trust_remote_code=True)
    re_trainer = Trainer(model=reloaded, args=targs, **trainer_kwargs)
    re_final = _evaluate_test(re_trainer, task)

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
        # The split evaluated during training, when it is not the test split.
        "validation": validation,
        "validation_fraction": args.validation_fraction,
        "train": train_out.metrics,
        "settings": {
            k: getattr(args, k)
            for k in ("seq_len", "hidden_size", "num_layers", "norm", "norm_position", "dropout",
                      "dropout_last", "residual", "dense_growth_rate", "dense_blocks",
                      "dense_bottleneck",
                      "bidirectional", "recurrent_max_abs", "recurrent_min_abs",
                      "last_layer_init_near_one", "input_weight_init", "input_weight_std",
                      "learning_rate", "lr_scheduler",
                      "warmup_steps", "batch_size", "max_steps", "max_grad_norm",
                      "grad_clip_value", "weight_decay", "recurrent_max_mag", "no_constrain",
                      "train_size", "seed", "preset")
        },
        "command": args.command,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "output_dir": args.output_dir,
    }
    results["total_seconds"] = time.perf_counter() - start
    if trainer.is_world_process_zero():
        try:
            plot_learning_curve(trainer.state.log_history, args, metric, base,
                                os.path.join(args.output_dir, "learning_curve.png"),
                                evaluated="test" if task.validation is None else "validation")
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


def _evaluate_test(trainer, task) -> dict:
    """The test split's metrics, under the ``eval_`` keys of ``metrics.json``. With a validation
    split (the one evaluated during training) they are logged as ``test_``, so that the
    learning curve and the schedule's history keep to the validation split."""
    if task.validation is None:
        return trainer.evaluate()
    test = trainer.evaluate(task.test, metric_key_prefix="test")
    return {"eval" + k.removeprefix("test"): v for k, v in test.items()}


def _checkpoint_to_resume(args, trainer) -> str | None:
    """The checkpoint ``--resume`` continues from. First (the main process, before the others
    look) ``--overwrite-output-dir`` removes what an earlier run wrote (:func:`earlier_run_files`:
    its checkpoints, model, card, metrics; not the folder, not files of other names), and the
    folder gets this run's RECORD, which marks it as a run's folder even if the run saves
    nothing else (a diverged run)."""
    with trainer.args.main_process_first(desc="checkpoints"):
        if trainer.is_world_process_zero():
            if args.overwrite_output_dir:
                for name in earlier_run_files(args.output_dir):
                    path = os.path.join(args.output_dir, name)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path)
                    else:
                        os.remove(path)
            write_record(args.output_dir, run_record(args))
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
    """Entry point of ``python -m hf_integration.train`` (``indrnn-train`` is
    ``indrnn_train.main``, which parses before it imports this module)."""
    return execute(parse_args(argv))


def execute(args) -> int:
    """Run parsed arguments; problems the user can fix are one-line errors with exit code 2."""
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
