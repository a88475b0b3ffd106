"""Peak memory of an IndRNN forward pass (training mode, graph kept for backward) vs nn.RNN(relu).

Also the forward under ``torch.no_grad`` (``grad=False`` rows), where ``indrnn_fused`` (the
input projection inside the recurrence kernel, ``fused_projection=True``) allocates no
(T, B, H) pre buffer: on a GPU its peak is the layers' outputs alone.

For each model: ``peak`` is the most tensor memory alive at once during the forward, above what
existed before it (input and parameters); ``kept`` is what is still alive after the forward (the
output and everything autograd saved for backward). Both are also given in units of one
(T, B, D*H) float32 tensor (``unit_mib``). The least a layer-by-layer design can keep is one
such tensor per layer (its output: the ReLU derivative of its backward and the saved input of
the next layer's GEMM), and its peak is one more (a layer's GEMM output and recurrence output
coexist while it runs): L and L + 1 units.

CPU: tensor memory is counted exactly by a TorchDispatchMode that sees every tensor an op
allocates and a finalizer on its storage (allocations inside the fused op's kernels are its
outputs; its other scratch is (B, H)). CUDA: ``torch.cuda.max_memory_allocated``.

    PYTHONPATH=. python benchmarks/bench_memory.py            # writes results/<device>/memory.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import weakref
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from indrnn_triton import IndRNN

MIB = 2**20


class TensorMemory(TorchDispatchMode):
    """Live bytes of the storages that ops allocate while the mode is active, and their peak."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = {id(a.untyped_storage()) for a in tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)}
        for t in tree_leaves(result):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in inputs or key in self.live:  # a view or an in-place result
                continue
            self.live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key)
        return result


def measure(model: nn.Module, x: torch.Tensor, grad: bool = True) -> dict:
    """Peak and kept bytes of ``model(x)`` (autograd recording when ``grad``), above the
    starting point."""
    with torch.set_grad_enabled(grad):
        return _measure(model, x)


def _measure(model: nn.Module, x: torch.Tensor) -> dict:
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = model(x)
        torch.cuda.synchronize()
        peak, kept = torch.cuda.max_memory_allocated() - base, torch.cuda.memory_allocated() - base
    else:
        with TensorMemory() as mode:
            out = model(x)
        peak, kept = mode.peak, mode.current
    del out
    return {"peak_mib": peak / MIB, "kept_mib": kept / MIB}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=512)
    parser.add_argument("--B", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    T, B, In, H, L = args.T, args.B, args.input_size, args.hidden_size, args.num_layers
    torch.manual_seed(0)
    x = torch.randn(T, B, In, device=device)
    rows = []
    for bidirectional in (False, True):
        D = 2 if bidirectional else 1
        unit = T * B * D * H * x.element_size() / MIB
        indrnn = IndRNN(In, H, num_layers=L, bidirectional=bidirectional,
                        recurrent_max_abs=2 ** (1 / T), fused_projection=False)
        fused = copy.deepcopy(indrnn)
        fused.fused_projection = True
        models = {
            "indrnn": indrnn,
            "indrnn_fused": fused,
            "rnn_relu": nn.RNN(In, H, num_layers=L, bidirectional=bidirectional,
                               nonlinearity="relu"),
        }
        for (name, model), grad in itertools.product(models.items(), (True, False)):
            model.to(device)
            measure(model, x, grad)  # warm-up: lazy initialisation is not the forward's memory
            row = dict(model=name, bidirectional=bidirectional, grad=grad, unit_mib=unit,
                       **measure(model, x, grad))
            row["peak_units"] = row["peak_mib"] / unit
            row["kept_units"] = row["kept_mib"] / unit
            rows.append(row)
            print(f"{name:12s} D={D} grad={grad!s:5s}  peak {row['peak_mib']:8.1f} MiB "
                  f"({row['peak_units']:.2f} u)  kept {row['kept_mib']:8.1f} MiB "
                  f"({row['kept_units']:.2f} u)  unit {unit:.1f} MiB")
    result = dict(
        shape=dict(T=T, B=B, input_size=In, hidden_size=H, num_layers=L, dtype="float32"),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(),
        torch=torch.__version__,
        rows=rows,
    )
    folder = "cpu" if device.type == "cpu" else "gpu"
    out = args.out or Path(__file__).resolve().parent / "results" / folder / "memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
