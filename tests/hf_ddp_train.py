"""Run under `torchrun --nproc_per_node=2`: Trainer DDP on CPU (gloo); each rank writes a report.

Launched by tests/test_hf_trainer.py::test_torchrun_ddp_on_cpu. Under torchrun on a CPU-only
machine the Trainer only goes distributed with use_cpu=True; without it each process would
train its own model.

No collective runs after `trainer.train()`: every rank writes what it saw (its batches, the
cross-rank gradient spread checked inside training, its final parameters) to its own file and
the test compares the files. A watchdog dumps every thread's stack to `hang_rank<r>.txt` and
exits if the run stalls, so a hang is reported with its place instead of a bare timeout.
"""

import faulthandler
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_integration import IndRNNConfig, IndRNNForSequenceClassification

MAX_STEPS = 4
WATCHDOG_SECONDS = 150


def _spread(t: torch.Tensor) -> float:
    """Largest difference between this tensor on any rank and on rank 0."""
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.contiguous())
    return max((g - gathered[0]).abs().max().item() for g in gathered)


class GradientCheck(TrainerCallback):
    """Before every optimizer step the (all-reduced) gradients must be equal on all ranks."""

    def __init__(self):
        self.steps = 0
        self.max_difference = 0.0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        self.max_difference = max(self.max_difference, _spread(grads))
        self.steps += 1


class RecordingTrainer(Trainer):
    batch_sums: list

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.batch_sums.append(int(inputs["input_ids"].sum()))
        return super().compute_loss(model, inputs, *args, **kwargs)


def main(out_dir: Path) -> None:
    rank = int(os.environ["RANK"])
    hang_log = open(out_dir / f"hang_rank{rank}.txt", "w")  # noqa: SIM115 (open until exit)
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True, file=hang_log)

    torch.manual_seed(0)
    config = IndRNNConfig(vocab_size=64, hidden_size=8, num_hidden_layers=2, num_labels=2)
    model = IndRNNForSequenceClassification(config)
    start = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (64, 6), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, -1] % 2).tolist()})
    args = TrainingArguments(
        output_dir=str(out_dir / "run"),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        use_cpu=True,
        ddp_backend="gloo",
        ddp_find_unused_parameters=False,
        ddp_timeout=120,  # a stuck collective raises instead of waiting for the default 30 min
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    check = GradientCheck()
    trainer = RecordingTrainer(model=model, args=args, train_dataset=data, callbacks=[check])
    trainer.batch_sums = []
    trainer.train()

    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    report = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "wrapped_in_ddp": isinstance(
            trainer.model_wrapped, torch.nn.parallel.DistributedDataParallel
        ),
        "max_steps": MAX_STEPS,
        "optimizer_steps_checked": check.steps,
        "batch_sums": trainer.batch_sums,
        "max_grad_difference_across_ranks": check.max_difference,
        "params_changed": not torch.equal(params, start),
    }
    torch.save(params, out_dir / f"params_rank{rank}.pt")
    (out_dir / f"ddp_report_rank{rank}.json").write_text(json.dumps(report, indent=1))
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything the test checks is written. Tearing the gloo group down is torch's business and
    # has been seen to stall (pytorch/pytorch#75097); leave without it, and without interpreter
    # finalisation, so that torchrun sees a clean exit as soon as both ranks are done.
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
