"""Reproduce the IndRNN papers' sequential / permuted MNIST results with the authors' recipe.

NOT RUN YET: this needs a GPU (each image is 784 time steps; ~1900 steps per epoch at batch 32)
and a copy of MNIST, which the project's machines cannot fetch. ``--dry-run`` prints every
setting of every configuration and trains each for a few steps on a small synthetic stand-in
(random 28x28 images in the MNIST schema, narrower layers), so the code path is tested.

The recipe, from the authors' scripts (``pixelMNIST/opts.py``, ``run*.sh``): batch norm AFTER
the recurrence (``bn_after``), Adam lr 2e-4, batch 32, |u| <= 5^(1/784) (MAG 5) with the
recurrent weights clamped to it after every step (``constrain_U``), every gradient element
clamped to +-10, weight decay 1e-4 on all but the recurrent weights and biases, the last
layer's recurrent weights initialised in [5^(-1/784), 5^(1/784)]; one pixel per step; pMNIST
with one fixed pixel permutation (``--permutation-seed``). The configurations and the published
test errors (MNIST / pMNIST, %):

- ``plain6``: 6 layers x 128, dropout 0.1 after every layer (1.0 / 4.0, CVPR 2018);
- ``plain12``: 12 layers x 128 (0.63 / 3.16, Deep IndRNN);
- ``residual``: 11 layers x 128 = an input layer and 5 residual blocks (0.61 / 2.98);
- ``dense``: first layer 96 (6 x growth), growth rate 16, blocks (8, 6, 4), bottleneck 4,
  a transition after every block (0.52 / 2.8). The authors drop 0.2 after the first and the
  growth layers and 0.1 after bottleneck, transition and last layers: ``--dense-dropout
  first=0.2 growth=0.2``, ``--dropout 0.1`` (the other kinds) and ``--dropout-last 0.1``.

The authors divide the lr by 10 when the validation accuracy stops improving and restart from
the best weights; the default ``--lr-scheduler plateau`` divides the lr by 10 when the loss of
the validation split (5 % of the training images, as theirs) has not improved for 5 evaluations
(``indrnn-train --plateau-patience``), without the restart.

Each (task, configuration) is one ``indrnn-train mnist|pmnist`` run (Trainer, save, reload,
re-evaluate). The data come from the Hub (``ylecun/mnist``) or a local copy in the Hub schema
given with ``--data`` (a ``save_to_disk`` folder or parquet files), e.g. made on a machine with
network by ``datasets.load_dataset("ylecun/mnist").save_to_disk("mnist")``.

    python benchmarks/reproduce_mnist.py --dry-run                     # settings + smoke test
    python benchmarks/reproduce_mnist.py --data ./mnist --out benchmarks/results/gpu
    python benchmarks/reproduce_mnist.py --configs dense --tasks pmnist --data ./mnist
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_integration import train  # noqa: E402

# The authors' recipe, common to every configuration.
RECIPE = ["--norm", "batch", "--norm-position", "after", "--learning-rate", "2e-4",
          "--batch-size", "32", "--recurrent-max-mag", "5", "--grad-clip-value", "10",
          "--weight-decay", "1e-4", "--last-layer-init-near-one"]

CONFIGS = {
    "plain6": ["--num-layers", "6", "--hidden-size", "128", "--dropout", "0.1",
               "--dropout-last", "0.1"],
    "plain12": ["--num-layers", "12", "--hidden-size", "128", "--dropout", "0.1",
                "--dropout-last", "0.1"],
    "residual": ["--num-layers", "11", "--hidden-size", "128", "--residual", "--dropout", "0.1",
                 "--dropout-last", "0.1"],
    "dense": ["--hidden-size", "96", "--dense-growth-rate", "16", "--dense-blocks", "8", "6", "4",
              "--dense-bottleneck", "4", "--dropout", "0.1", "--dense-dropout", "first=0.2",
              "growth=0.2", "--dropout-last", "0.1"],
}

PAPER_ERROR = {  # test error %, (MNIST, pMNIST)
    "plain6": {"mnist": 1.0, "pmnist": 4.0},
    "plain12": {"mnist": 0.63, "pmnist": 3.16},
    "residual": {"mnist": 0.61, "pmnist": 2.98},
    "dense": {"mnist": 0.52, "pmnist": 2.8},
}

# The dry run's stand-in: same layers, norms and recipe, narrower, a few steps on 16 images.
STAND_IN = ["--max-steps", "2", "--eval-steps", "2", "--batch-size", "4", "--test-size", "4",
            "--save-steps", "0", "--no-progress"]
STAND_IN_WIDTH = {"dense": ["--hidden-size", "6", "--dense-growth-rate", "2"]}
SETTINGS = ("task", "seq_len", "num_layers", "hidden_size", "residual", "dense_growth_rate",
            "dense_blocks", "dense_bottleneck", "dense_dropout", "norm", "norm_position",
            "dropout", "dropout_last", "recurrent_max_mag", "recurrent_max_abs",
            "last_layer_init_near_one", "no_constrain", "grad_clip_value", "max_grad_norm",
            "weight_decay", "learning_rate", "lr_scheduler", "batch_size", "max_steps",
            "eval_steps", "permutation_seed", "seed")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=("mnist", "pmnist"), default=["mnist", "pmnist"])
    p.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS))
    p.add_argument("--data", default=None,
                   help="local copy of ylecun/mnist (default: load it from the Hub)")
    p.add_argument("--max-steps", type=int, default=150_000, help="~80 epochs at batch 32")
    p.add_argument("--eval-steps", type=int, default=5000)
    p.add_argument("--lr-scheduler", default="plateau",
                   choices=("constant", "linear", "cosine", "plateau"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/gpu")
    p.add_argument("--dry-run", action="store_true",
                   help="print every configuration's settings, then train each for 2 steps on "
                   "a synthetic stand-in (narrower layers, 16 random images); writes nothing "
                   "to --out")
    return p.parse_args(argv)


def run_argv(args, task: str, config: str, out_dir: str) -> list[str]:
    argv = [task, *RECIPE, *CONFIGS[config], "--max-steps", str(args.max_steps),
            "--eval-steps", str(args.eval_steps), "--lr-scheduler", args.lr_scheduler,
            "--seed", str(args.seed), "--output-dir", out_dir]
    return argv + (["--data", args.data] if args.data else [])


def settings(parsed) -> str:
    return "\n".join(f"    {k:25s} {getattr(parsed, k)}" for k in SETTINGS)


def synthetic_mnist(folder: str) -> str:
    """16 random 28x28 images with labels, in the ylecun/mnist schema, via save_to_disk."""
    import datasets
    import numpy as np
    from PIL import Image

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    rng = np.random.default_rng(0)

    def split(n):
        images = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8))
                  for _ in range(n)]
        labels = [int(v) for v in rng.integers(0, 10, n)]
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    path = os.path.join(folder, "mnist")
    datasets.DatasetDict({"train": split(8), "test": split(8)}).save_to_disk(path)
    return path


def dry_run(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_mnist(tmp)
        for task in args.tasks:
            for config in args.configs:
                argv = run_argv(args, task, config, os.path.join(tmp, f"{task}_{config}"))
                print(f"{task} / {config}: indrnn-train {' '.join(argv)}\n"
                      f"{settings(train.parse_args(argv))}", flush=True)
                small = [*argv, "--data", data, *STAND_IN,
                         *STAND_IN_WIDTH.get(config, ["--hidden-size", "8"])]
                results = train.run(train.parse_args(small))
                print(f"  stand-in: {results['model']}: {results['steps']} steps, test error "
                      f"{results['final_metric']:.1f} % on random images\n", flush=True)
                rows.append({"task": task, "config": config, "steps": results["steps"],
                             "model": results["model"]})
    return rows


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for task in args.tasks:
        for config in args.configs:
            argv = run_argv(args, task, config, os.path.join(args.out, f"{task}_{config}_model"))
            results = train.run(train.parse_args(argv))
            rows.append({"task": task, "config": config,
                         "paper_error_%": PAPER_ERROR[config][task],
                         "test_error_%": results["final_metric"], "steps": results["steps"],
                         "train_seconds": results["train_seconds"], "device": results["device"],
                         "command": "indrnn-train " + " ".join(argv)})
            with open(os.path.join(args.out, "mnist_results.json"), "w") as f:
                json.dump(rows, f, indent=1)
    for r in rows:
        print(f"{r['task']} {r['config']}: test error {r['test_error_%']:.2f} % (paper "
              f"{r['paper_error_%']} %), {r['steps']} steps, {r['train_seconds']:.0f} s on "
              f"{r['device']}")
    return rows


if __name__ == "__main__":
    main()
