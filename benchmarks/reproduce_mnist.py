"""Reproduce the IndRNN paper's sequential / permuted MNIST results (Li et al., CVPR 2018).

NOT RUN YET: this needs a GPU (each image is 784 time steps; 6 layers; ~1900 steps per epoch at
batch 32). It has not been run on the project's 2-core CPU machines; run it when a GPU is
available and commit the outputs under benchmarks/results/gpu/.

The recipe (the paper's 6-layer IndRNN): 6 IndRNN layers x 128 units, batch norm after every
layer, dropout 0.1, Adam lr 2e-4, batch 32, |u| <= 2^(1/784), one pixel per step (T = 784);
pMNIST uses one fixed pixel permutation (``--permutation-seed``). Published test error: MNIST
1.0 %, pMNIST 4.0 % (12 layers: 0.63 / 3.16; residual: 0.61 / 2.98). The paper divides the lr by
10 when the accuracy plateaus; here ``--lr-scheduler`` (default: cosine over the run) stands in
for that.

Each task is one ``indrnn-train mnist|pmnist`` run (Trainer, save, reload, re-evaluate). The
data come from the Hub (``ylecun/mnist``) or, on a machine without network, from a local copy in
the Hub schema given with ``--data`` (a ``save_to_disk`` folder or parquet files), e.g. made on a
machine with network by ``datasets.load_dataset("ylecun/mnist").save_to_disk("mnist")``.

    python benchmarks/reproduce_mnist.py --data ./mnist --out benchmarks/results/gpu
    python benchmarks/reproduce_mnist.py --tasks pmnist --max-steps 200000 --data ./mnist
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_integration import train  # noqa: E402

PAPER_ERROR = {"mnist": 1.0, "pmnist": 4.0}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=("mnist", "pmnist"), default=["mnist", "pmnist"])
    p.add_argument("--data", default=None,
                   help="local copy of ylecun/mnist (default: load it from the Hub)")
    p.add_argument("--num-layers", type=int, default=6)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--residual", action="store_true",
                   help="the residual IndRNN (use an odd --num-layers, e.g. 11)")
    p.add_argument("--max-steps", type=int, default=150_000, help="~80 epochs at batch 32")
    p.add_argument("--eval-steps", type=int, default=5000)
    p.add_argument("--lr-scheduler", default="cosine", choices=("constant", "linear", "cosine"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/gpu")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for task in args.tasks:
        argv = [
            task, "--num-layers", str(args.num_layers), "--hidden-size", str(args.hidden_size),
            "--norm", "batch", "--dropout", "0.1", "--learning-rate", "2e-4",
            "--batch-size", "32", "--max-steps", str(args.max_steps),
            "--eval-steps", str(args.eval_steps), "--lr-scheduler", args.lr_scheduler,
            "--seed", str(args.seed), "--output-dir", os.path.join(args.out, f"{task}_model"),
        ]
        if args.data:
            argv += ["--data", args.data]
        if args.residual:
            argv.append("--residual")
        results = train.run(train.parse_args(argv))
        rows.append({"task": task, "paper_error_%": PAPER_ERROR[task],
                     "test_error_%": results["final_metric"], "steps": results["steps"],
                     "train_seconds": results["train_seconds"], "device": results["device"],
                     "command": "indrnn-train " + " ".join(argv)})
        with open(os.path.join(args.out, "mnist_results.json"), "w") as f:
            json.dump(rows, f, indent=1)
    for r in rows:
        print(f"{r['task']}: test error {r['test_error_%']:.2f} % (paper {r['paper_error_%']} %), "
              f"{r['steps']} steps, {r['train_seconds']:.0f} s on {r['device']}")


if __name__ == "__main__":
    main()
