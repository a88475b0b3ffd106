"""Reproduce the IndRNN paper's adding-problem experiment (Li et al., CVPR 2018, figure 2).

The paper's settings: 2 IndRNN layers x 128 units, Adam with lr 2e-4 (divided by 10 every 20000
steps, ``--lr-scheduler step``: constant over the default 20000 steps), batch 50 (batzner's
TensorFlow reproduction; the authors' Theano script uses 32), MSE, |u| <= 2^(1/T), for T = 100,
500, 1000 and 5000; IndRNN converges at all four lengths (the baseline of always predicting 1 has
MSE ~ 0.167). The defaults are the authors' recipe (their adding script and their PyTorch training
scripts): the clip bound as a magnitude, MAG = 2 (r = 2^(1/T)); the last layer's recurrent weights
initialised near 1, uniformly in [1/r, r], at every length (``--near-one-from``; a well-known
TensorFlow reproduction failed at T = 5000 without it); every gradient element clamped to +-10 each
step (``--grad-clip-value``); the recurrent weights clamped to [-r, r] after each step
(``--no-constrain`` turns it off); no weight decay. (The authors' Theano adding script clips the
gradient messages inside the recurrence at 10; the fused op has no such hook, and the clamp of the
parameter gradients is the authors' PyTorch form of it.)

Every length is one ``indrnn-train adding`` run (hf_integration.train: Trainer, save, reload);
this script collects the test-MSE curves into one PNG like the paper's figure 2, plus a JSON and
a markdown table of the numbers.

    python benchmarks/reproduce_adding.py --lengths 1000 --max-steps 1200 \\
        --out benchmarks/results/cpu-recipe               # what ran on 2 shared CPU cores
    python benchmarks/reproduce_adding.py --out benchmarks/results/gpu  # all four, on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_integration import train  # noqa: E402
from hf_integration.data import ADDING_BASELINE_MSE  # noqa: E402

PAPER_LENGTHS = (100, 500, 1000, 5000)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=list(PAPER_LENGTHS),
                   help="sequence lengths T to train")
    p.add_argument("--max-steps", type=int, nargs="+", default=[20000],
                   help="training steps: one value for every length, or one per length")
    p.add_argument("--eval-steps", type=int, default=100, help="test-MSE interval (steps)")
    p.add_argument("--test-size", type=int, default=1000, help="test sequences per length")
    p.add_argument("--learning-rate", type=float, default=2e-4, help="Adam lr (paper: 2e-4)")
    p.add_argument("--batch-size", type=int, default=50, help="batch size (paper: 50)")
    p.add_argument("--magnitude", type=float, default=2.0,
                   help="clip bound r = MAGNITUDE^(1/T) (the authors' MAG)")
    p.add_argument("--near-one-from", type=int, default=0,
                   help="initialise the last layer's recurrent weights in [1/r, r] for T >= this "
                   "(0: always, as the authors' script; a huge value: never)")
    p.add_argument("--grad-clip-value", type=float, default=10.0,
                   help="clamp every gradient element to [-V, V] each step (0: off)")
    p.add_argument("--no-constrain", action="store_true",
                   help="do not clamp the recurrent weights to [-r, r] after each step")
    p.add_argument("--max-grad-norm", type=float, default=0.0,
                   help="clip the gradient norm to this (0: no norm clipping, as the authors)")
    p.add_argument("--input-weight-init", default="kaiming_uniform",
                   choices=("kaiming_uniform", "normal"),
                   help="input weights: kaiming_uniform_(a=8) (default, the authors' PyTorch "
                   "scripts) or normal, N(0, 0.001^2) (the authors' Theano adding script)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-threads", type=int, default=1, help="torch threads on the CPU")
    p.add_argument("--out", default="benchmarks/results/cpu",
                   help="folder for adding_curves.png, adding_results.json and adding_results.md")
    p.add_argument("--resume", action="store_true",
                   help="keep the lengths already in OUT/adding_results.json and train only the "
                   "others, continuing an interrupted length from its newest checkpoint (a long "
                   "series can run in parts); off: start a new series")
    p.add_argument("--keep-models", action="store_true",
                   help="keep each length's saved model under OUT/models/ (off: deleted)")
    args = p.parse_args(argv)
    if len(args.max_steps) not in (1, len(args.lengths)):
        p.error(f"--max-steps takes 1 value or one per length ({len(args.lengths)}), "
                f"got {len(args.max_steps)}")
    if min(args.lengths) < 2:
        p.error(f"--lengths must all be >= 2, got {args.lengths}")
    return args


def train_one(args, seq_len: int, max_steps: int) -> dict:
    out_dir = os.path.join(args.out, "models", f"adding_T{seq_len}")
    argv = [
        "adding", "--seq-len", str(seq_len), "--max-steps", str(max_steps),
        "--learning-rate", str(args.learning_rate), "--lr-scheduler", "step",
        "--batch-size", str(args.batch_size), "--eval-steps", str(args.eval_steps),
        "--test-size", str(args.test_size), "--seed", str(args.seed),
        "--cpu-threads", str(args.cpu_threads), "--output-dir", out_dir, "--no-progress",
        "--max-grad-norm", str(args.max_grad_norm), "--recurrent-max-mag", str(args.magnitude),
        "--grad-clip-value", str(args.grad_clip_value), "--weight-decay", "0",
        "--input-weight-init", args.input_weight_init,
    ]
    if args.no_constrain:
        argv.append("--no-constrain")
    argv.append("--last-layer-init-near-one" if seq_len >= args.near_one_from
                else "--no-last-layer-init-near-one")
    # A length that Ctrl-C stopped left its checkpoints in out_dir: --resume continues it;
    # a new series starts it over.
    resume = args.resume and train.checkpoints(out_dir)
    targs = train.parse_args([*argv, "--resume" if resume else "--overwrite-output-dir"])
    start = time.perf_counter()
    train.check_output_dir(targs)
    results = train.run(targs)
    with open(os.path.join(out_dir, "log_history.json")) as f:
        history = json.load(f)
    if not args.keep_models:
        shutil.rmtree(out_dir)
    # One point per step: the final evaluate() repeats the last step's evaluation.
    curve = sorted({e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}.items())
    first_below = next((s for s, mse in curve if mse <= 0.01), None)
    return {
        "seq_len": seq_len,
        "steps": results["steps"],
        "final_test_mse": results["final_metric"],
        "reloaded_test_mse": results["reloaded_metric"],
        "best_test_mse": min(mse for _, mse in curve),
        "first_step_test_mse_below_0.01": first_below,
        "baseline_mse": results["baseline"],
        "train_seconds": results["train_seconds"],
        "total_seconds": time.perf_counter() - start,
        "device": results["device"],
        "kernel_path": results["kernel_path"],
        "last_layer_init_near_one": seq_len >= args.near_one_from,
        "input_weight_init": args.input_weight_init,
        "max_grad_norm": args.max_grad_norm,
        "magnitude": args.magnitude,
        "grad_clip_value": args.grad_clip_value,
        "constrain": not args.no_constrain,
        "command": "indrnn-train " + " ".join(argv),
        "curve": curve,
    }


def plot(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for run in runs:
        steps, mse = zip(*run["curve"], strict=True)
        ax.plot(steps, mse, label=f"IndRNN T={run['seq_len']}")
    ax.axhline(ADDING_BASELINE_MSE, color="gray", linestyle="--", label="baseline (predict 1)")
    ax.set_yscale("log")
    ax.set_xlabel("training step (batch 50)")
    ax.set_ylabel("test MSE")
    device = runs[0]["device"].split(" (")[0]
    ax.set_title(f"Adding problem, 2 x 128 IndRNN, Adam 2e-4, batch 50, on {device}",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def worst_of_last_fifth(curve) -> float:
    """The highest test MSE over the last 20 % of the run's evaluations: whether the MSE
    stays low, not only whether it once was."""
    mse = [m for _, m in curve]
    return max(mse[int(0.8 * len(mse)):])


def table(runs: list[dict]) -> str:
    lines = [
        "# Adding problem, the IndRNN paper's settings",
        "",
        "2 IndRNN layers x 128, Adam lr 2e-4 (constant), batch 50, MSE, |u| <= MAG^(1/T), new "
        "training sequences every step, 1000 test sequences. Columns: the gradient-norm clip "
        "(none: the authors'), the element-wise gradient clamp (grad clamp), whether the "
        "recurrent weights were clamped to the bound after each step (constrain), and whether "
        "the last layer's recurrent weights started in [1/r, r]. Runs from before these "
        "options existed show '-' (MAG 2, no clamp, no constraint). Train time is the "
        "Trainer's, on the machine named (shared machines run slower).",
        "",
        "Worst of last 20 %: the highest test MSE over the last fifth of the evaluations "
        "(the paper's criterion is that the MSE converges and stays low).",
        "",
        "| T | steps | final test MSE | best | worst of last 20 % | first step <= 0.01 | "
        "baseline | train time | device | last layer near 1 | norm clip | MAG | grad clamp | "
        "constrain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['seq_len']} | {r['steps']} | {r['final_test_mse']:.4g} | "
            f"{r['best_test_mse']:.4g} | {worst_of_last_fifth(r['curve']):.4g} | "
            f"{r['first_step_test_mse_below_0.01'] or 'not reached'} | "
            f"{r['baseline_mse']:.3f} | {r['train_seconds']:.0f} s | {r['device']} | "
            f"{'yes' if r['last_layer_init_near_one'] else 'no'} | "
            f"{r.get('max_grad_norm') or 'none'} | {r.get('magnitude', '-')} | "
            f"{r.get('grad_clip_value', '-')} | {_yes_no(r.get('constrain'))} |"
        )
    return "\n".join(lines) + "\n"


def _yes_no(flag: bool | None) -> str:
    return "-" if flag is None else "yes" if flag else "no"


def main(argv=None) -> int:
    """Train the series; problems are one-line messages with ``indrnn-train``'s exit codes (2:
    a usage error; 128 + the signal when Ctrl-C or SIGTERM stopped a length, whose checkpoint
    the same command with --resume continues from)."""
    try:
        series(parse_args(argv))
    except train.UsageError as err:
        print(f"reproduce_adding: error: {err}", file=sys.stderr)
        return 2
    except train.TrainingStopped as err:
        print(f"reproduce_adding: {'error: ' if err.exit_code == 1 else ''}{err}",
              file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # outside a length's training loop: nothing to save
        print("reproduce_adding: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0


def series(args) -> None:
    os.makedirs(args.out, exist_ok=True)
    steps = args.max_steps * len(args.lengths) if len(args.max_steps) == 1 else args.max_steps
    results_json = os.path.join(args.out, "adding_results.json")
    runs = []
    if args.resume and os.path.exists(results_json):
        with open(results_json) as f:
            runs = json.load(f)
    done = {r["seq_len"] for r in runs}
    for seq_len, max_steps in zip(args.lengths, steps, strict=True):
        if seq_len in done:
            continue
        runs.append(train_one(args, seq_len, max_steps))
        runs.sort(key=lambda r: r["seq_len"])
        # Write after every length, so a long run that is stopped keeps what it finished.
        with open(results_json, "w") as f:
            json.dump(runs, f, indent=1)
        with open(os.path.join(args.out, "adding_results.md"), "w") as f:
            f.write(table(runs))
        plot(runs, os.path.join(args.out, "adding_curves.png"))
    if not args.keep_models:
        shutil.rmtree(os.path.join(args.out, "models"), ignore_errors=True)
    print(table(runs))


if __name__ == "__main__":
    sys.exit(main())
