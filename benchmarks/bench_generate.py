"""Per-token cost of generation with an IndRNN causal LM on CPU (2 layers x 256 by default).

Times (1) one cached forward step (one new token, the recurrent state carried in the cache),
the model's own share, and (2) ``generate()`` per new token, greedy, everything included.
Random weights and tokens: only the time matters.

    PYTHONPATH=. python benchmarks/bench_generate.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from hf_integration import IndRNNCache, IndRNNConfig, IndRNNForCausalLM


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt", type=int, default=32, help="prompt length")
    p.add_argument("--new", type=int, default=200, help="tokens generated / steps timed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = IndRNNConfig(vocab_size=384, hidden_size=args.hidden_size,
                          num_hidden_layers=args.layers, pad_token_id=0)
    model = IndRNNForCausalLM(config).eval()
    ids = torch.randint(3, 384, (args.batch, args.prompt))

    with torch.inference_mode():
        cache = IndRNNCache(config)
        model(input_ids=ids, cache=cache, use_cache=True)
        step = ids[:, -1:]
        times = []
        for _ in range(args.new + 10):  # the first 10 steps are warm-up
            t0 = time.perf_counter()
            logits = model(input_ids=step, cache=cache, use_cache=True).logits
            times.append(time.perf_counter() - t0)
            step = logits[:, -1:].argmax(-1)
        step_ms = 1e3 * statistics.median(times[10:])

        kw = dict(do_sample=False, max_new_tokens=args.new, min_new_tokens=args.new,
                  pad_token_id=0)
        model.generate(ids, **{**kw, "max_new_tokens": 5, "min_new_tokens": 5})
        t0 = time.perf_counter()
        model.generate(ids, **kw)
        gen_ms = 1e3 * (time.perf_counter() - t0) / args.new

    print(f"IndRNN causal LM {args.layers} x {args.hidden_size}, batch {args.batch}, "
          f"{args.threads} thread(s), torch {torch.__version__}: cached forward step "
          f"{step_ms:.3f} ms (median of {args.new}); generate() {gen_ms:.3f} ms per new token "
          f"({args.new} tokens after a {args.prompt}-token prompt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
