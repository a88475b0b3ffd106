"""Fine-tuning every head with Trainer on a datasets.Dataset, and DDP through torchrun on CPU."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from hf_helpers import head_logits, tiny_model
from transformers import Trainer, TrainingArguments

from hf_integration import (
    IndRNNForCausalLM,
    IndRNNForSequenceClassification,
    IndRNNForTokenClassification,
)

REPO = Path(__file__).resolve().parents[1]
N, T = 64, 8


def _token_ids(generator):
    # Three distinct tokens, so that a few steps can learn the labels below.
    return torch.randint(3, 6, (N, T), generator=generator)


def _sequence_data(g):
    ids = _token_ids(g)
    return {"input_ids": ids.tolist(), "labels": (ids[:, -1] % 3).tolist()}


def _adding_data(g):
    """The adding problem in small: target = sum of the two marked values."""
    values = torch.rand(N, T, generator=g)
    markers = torch.zeros(N, T)
    for row in range(N):
        markers[row, torch.randperm(T, generator=g)[:2]] = 1.0
    features = torch.stack([values, markers], -1)
    return {"inputs_embeds": features.tolist(), "labels": (values * markers).sum(1).tolist()}


def _token_data(g):
    ids = _token_ids(g)
    return {"input_ids": ids.tolist(), "labels": (ids % 3).tolist()}


def _lm_data(g):
    start = torch.randint(3, 6, (N, 1), generator=g)
    ids = 3 + (start + torch.arange(T)) % 4  # cycles through 4 tokens
    return {"input_ids": ids.tolist(), "labels": ids.tolist(), "attention_mask": [[1] * T] * N}


CASES = {
    "sequence_classification": (IndRNNForSequenceClassification, {}, _sequence_data),
    "regression_continuous": (
        IndRNNForSequenceClassification, {"input_size": 2, "num_labels": 1}, _adding_data
    ),
    "token_classification": (IndRNNForTokenClassification, {"bidirectional": True}, _token_data),
    "causal_lm": (IndRNNForCausalLM, {}, _lm_data),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trainer_fine_tunes_every_head(case, tmp_path):
    cls, overrides, make_data = CASES[case]
    model = tiny_model(cls, initializer_range=0.02, **overrides)  # the default head init
    data = Dataset.from_dict(make_data(torch.Generator().manual_seed(0)))
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=40,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        learning_rate=1e-2,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        activation_checkpointing=case == "token_classification",  # the Trainer's own switch
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    assert trainer.label_names == ["labels"]  # found in the forward's signature
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert [layer.gradient_checkpointing for layer in model.model.layers] == [
        args.activation_checkpointing
    ] * model.config.num_hidden_layers
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.8 * before, (before, after)

    trainer.save_model(str(tmp_path / "saved"))
    loaded = cls.from_pretrained(tmp_path / "saved")
    batch = {k: torch.tensor(v) for k, v in data[:4].items() if k != "labels"}
    model.eval()
    assert torch.equal(head_logits(loaded.eval(), **batch), head_logits(model, **batch))


def test_trainer_label_smoothing_shifts_the_causal_lm_labels(tmp_path):
    """With label_smoothing_factor the Trainer computes the loss itself, and shifts the labels
    only for the causal LMs it knows by class name: logits[t] must be scored against
    labels[t + 1], as the model's own loss does."""
    model = tiny_model(IndRNNForCausalLM)
    ids = torch.randint(3, 40, (2, 6))
    labels = ids.clone()
    labels[0, 3] = -100
    epsilon = 0.1
    args = TrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=epsilon,
                             use_cpu=True, report_to="none")
    trainer = Trainer(model=model, args=args)
    with torch.no_grad():
        loss = trainer.compute_loss(model, {"input_ids": ids, "labels": labels.clone()})
        log_probs = model(input_ids=ids).logits[:, :-1].log_softmax(-1)
    targets = labels[:, 1:]
    keep = targets != -100
    nll = -log_probs[keep].gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    uniform = -log_probs[keep].mean(-1)
    torch.testing.assert_close(loss, ((1 - epsilon) * nll + epsilon * uniform).mean())


@pytest.mark.parametrize("cls", [IndRNNForCausalLM, IndRNNForTokenClassification,
                                 IndRNNForSequenceClassification])
def test_gradient_accumulation_makes_the_update_of_one_big_batch(cls, tmp_path):
    """Two micro-batches of 4 with gradient_accumulation_steps=2 update the weights as one batch
    of 8, though the first has few targets: the token losses take the Trainer's
    num_items_in_batch (they were kept from it, and each micro-batch's mean weighed the same),
    and the sequence classifier's mean loss is divided by the accumulation steps."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 40, (8, 10), generator=g)
    if cls is IndRNNForSequenceClassification:
        labels = ids[:, -1] % 3
    else:
        labels = ids.clone() if cls is IndRNNForCausalLM else ids % 3
        labels[:4, 3:] = -100
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})

    def one_step(batch, accumulate):
        model = tiny_model(cls)
        args = TrainingArguments(
            output_dir=str(tmp_path / f"{batch}x{accumulate}"), max_steps=1, optim="sgd",
            per_device_train_batch_size=batch, gradient_accumulation_steps=accumulate,
            learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0,
            train_sampling_strategy="sequential", save_strategy="no", report_to="none",
            use_cpu=True, disable_tqdm=True,
        )
        Trainer(model=model, args=args, train_dataset=data).train()
        return model.state_dict()

    before = tiny_model(cls).state_dict()
    whole, accumulated = one_step(8, 1), one_step(4, 2)
    assert any(not torch.equal(whole[k], before[k]) for k in whole)
    for name, value in whole.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6, msg=name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_ddp_on_cpu(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # rank-to-rank traffic on loopback, whatever the hostname
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(REPO / "tests" / "hf_ddp_train.py"), str(tmp_path),
    ]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        stacks = "\n".join(
            f"--- {f.name}\n{f.read_text()}" for f in sorted(tmp_path.glob("hang_rank*.txt"))
        )
        pytest.fail(f"torchrun did not finish in {e.timeout} s; stacks:\n{stacks}\n{e.stdout}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    reports = [
        json.loads((tmp_path / f"ddp_report_rank{r}.json").read_text()) for r in range(2)
    ]
    for rank, report in enumerate(reports):
        assert report["rank"] == rank
        assert report["world_size"] == 2
        assert report["backend"] == "gloo"
        assert report["wrapped_in_ddp"]
        assert report["optimizer_steps_checked"] == report["max_steps"] > 0
        assert len(report["batch_sums"]) == report["max_steps"]
        assert report["max_grad_difference_across_ranks"] == 0.0
        assert report["params_changed"]
    # Each rank trained on its own shard of the data, and the replicas stayed identical.
    assert reports[0]["batch_sums"] != reports[1]["batch_sums"]
    params = [torch.load(tmp_path / f"params_rank{r}.pt") for r in range(2)]
    assert torch.equal(params[0], params[1])


def test_padding_free_training_with_the_flattening_collator(tmp_path):
    """Trainer with DataCollatorWithFlattening (sequences packed into one row, position_ids
    restarting at 0, no padding) makes the update of the same sequences as a padded batch."""
    from transformers import DataCollatorWithFlattening

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 40, (n,), generator=g).tolist() for n in (5, 2, 7, 4)]

    def padded(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, f in enumerate(features):
            ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[i, :len(f["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": ids.masked_fill(mask == 0, -100)}

    def one_step(collator, name):
        model = tiny_model(IndRNNForCausalLM)
        args = TrainingArguments(
            output_dir=str(tmp_path / name), max_steps=1, optim="sgd",
            per_device_train_batch_size=4, learning_rate=1.0, lr_scheduler_type="constant",
            max_grad_norm=0.0, train_sampling_strategy="sequential", save_strategy="no",
            report_to="none", use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
        )
        Trainer(model=model, args=args, data_collator=collator,
                train_dataset=Dataset.from_dict({"input_ids": seqs})).train()
        return model.state_dict()

    before = tiny_model(IndRNNForCausalLM).state_dict()
    packed = one_step(DataCollatorWithFlattening(), "packed")
    assert any(not torch.equal(packed[k], before[k]) for k in packed)
    for name, value in one_step(padded, "padded").items():
        torch.testing.assert_close(packed[name], value, rtol=1e-5, atol=1e-6, msg=name)
