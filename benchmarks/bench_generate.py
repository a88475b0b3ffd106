"""Per-token cost of generation with an IndRNN causal LM on CPU (2 layers x 256 by default).

Times (1) one cached forward step (one new token, the recurrent state carried in the cache),
the model's own share, and (2) ``generate()`` per new token, greedy, everything included.
Random weights and tokens: only the time matters.

Each figure is measured for two CPU paths of the op, alternately in one run:

- ``compiled``: what CPU tensors take today (the compiled CPU kernels, called eagerly through
  ``op.recurrence`` without the custom op's dispatch);
- ``torch-ops``: the path before issue 14, for comparison: the torch-ops CPU implementation,
  entered through the registered custom op.

    PYTHONPATH=. python benchmarks/bench_generate.py        # writes results/cpu/bench_generate.*
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import indrnn_triton.functional as functional
import indrnn_triton.op as op
from benchmarks.common import environment, results_dir, write_results
from hf_integration import IndRNNCache, IndRNNConfig, IndRNNForCausalLM

PATHS = ("compiled", "torch-ops")
COLUMNS = ["path", "step_ms", "generate_ms_per_token", "step_speedup", "generate_speedup"]


@contextmanager
def cpu_path(name: str):
    """Run the op on ``name``: today's CPU path, or the torch-ops one through the custom op."""
    if name == "compiled":
        yield
        return
    saved = op.cpu_uses_compiled, op.recurrence, functional.recurrence
    op.cpu_uses_compiled = False
    op.recurrence = functional.recurrence = op._forward_op
    try:
        yield
    finally:
        op.cpu_uses_compiled, op.recurrence, functional.recurrence = saved


def step_times(model, config, ids, n: int) -> list[float]:
    """Seconds of each of ``n`` cached one-token forward steps after the prompt."""
    cache = IndRNNCache(config)
    model(input_ids=ids, cache=cache, use_cache=True)
    step = ids[:, -1:]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        logits = model(input_ids=step, cache=cache, use_cache=True).logits
        times.append(time.perf_counter() - t0)
        step = logits[:, -1:].argmax(-1)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt", type=int, default=32, help="prompt length")
    p.add_argument("--new", type=int, default=200, help="tokens generated / steps timed")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per path")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/results/cpu)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = IndRNNConfig(vocab_size=384, hidden_size=args.hidden_size,
                          num_hidden_layers=args.layers, pad_token_id=0)
    model = IndRNNForCausalLM(config).eval()
    ids = torch.randint(3, 384, (args.batch, args.prompt))
    kw = dict(do_sample=False, max_new_tokens=args.new, min_new_tokens=args.new, pad_token_id=0)

    steps: dict[str, list[float]] = {name: [] for name in PATHS}
    gens: dict[str, list[float]] = {name: [] for name in PATHS}
    with torch.inference_mode():
        for name in PATHS:  # warm-up: builds, first calls
            with cpu_path(name):
                step_times(model, config, ids, 10)
                model.generate(ids, **{**kw, "max_new_tokens": 5, "min_new_tokens": 5})
        for _ in range(args.rounds):
            for name in PATHS:
                with cpu_path(name):
                    steps[name] += step_times(model, config, ids, args.new)
                    t0 = time.perf_counter()
                    model.generate(ids, **kw)
                    gens[name].append((time.perf_counter() - t0) / args.new)

    rows = []
    for name in PATHS:
        step_ms = 1e3 * statistics.median(steps[name])
        gen_ms = 1e3 * statistics.median(gens[name])
        rows.append(dict(path=name, step_ms=step_ms, generate_ms_per_token=gen_ms))
    for row in rows:
        row["step_speedup"] = rows[1]["step_ms"] / row["step_ms"]
        row["generate_speedup"] = rows[1]["generate_ms_per_token"] / row["generate_ms_per_token"]
    device = torch.device("cpu")
    md = write_results(results_dir(device, args.out), "bench_generate", rows, COLUMNS,
                       environment(device), notes=[
        f"IndRNN causal LM {args.layers} x {args.hidden_size}, batch {args.batch}, "
        f"{args.threads} thread(s). step_ms: median of {args.rounds} x {args.new} cached "
        f"one-token forward steps; generate_ms_per_token: median over {args.rounds} greedy "
        f"generate() calls of {args.new} tokens after a {args.prompt}-token prompt. The two "
        "paths alternate round by round; speedups are against torch-ops (the path before "
        "issue 14).",
    ])
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
