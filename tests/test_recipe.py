"""The authors' training recipe (hf_integration.recipe): gradient clamp, weight-decay groups,
the clip bound as a magnitude, and clamping the recurrent weights after each optimizer step."""

import pytest
import torch
from datasets import Dataset
from hf_helpers import tiny_model
from transformers import Trainer, TrainingArguments

from hf_integration import IndRNNForSequenceClassification
from hf_integration.recipe import (
    ClampGradientsCallback,
    ConstrainRecurrentWeightsCallback,
    decays,
    recurrent_bound,
)
from indrnn_triton import IndRNN


def test_clamp_gradients_callback_clamps_every_element():
    model = torch.nn.Linear(3, 4)
    model.weight.grad = torch.linspace(-30, 30, 12).view(4, 3)
    model.bias.grad = torch.tensor([0.5, -11.0, 11.0, 9.0])
    ClampGradientsCallback(10.0).on_pre_optimizer_step(None, None, None, model=model)
    assert model.weight.grad.abs().max() == 10.0
    assert torch.equal(model.bias.grad, torch.tensor([0.5, -10.0, 10.0, 9.0]))
    with pytest.raises(ValueError, match="value must be > 0, got 0"):
        ClampGradientsCallback(0)


def test_decay_groups_and_bound():
    assert [decays(n) for n in ("rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_l1",
                                "rnn.norms.0.weight", "rnn.norms.0.bias")] == [
        True, False, False, True, False]
    assert recurrent_bound(5.0, 784) == pytest.approx(5 ** (1 / 784))
    with pytest.raises(ValueError, match="magnitude must be > 0"):
        recurrent_bound(0.0, 10)


def test_a_weight_past_the_bound_is_stuck_until_constrained_back_to_it():
    """The kernel's clip gives a weight beyond the bound zero gradient, so it never moves
    again; clamped back to the bound (the authors' way), it has a gradient again."""
    r = 2 ** (1 / 10)
    rnn = IndRNN(2, 3, num_layers=2, recurrent_max_abs=r)
    with torch.no_grad():
        rnn.bias_l0.fill_(1.0)  # every unit on, so every weight has a gradient in reach
        rnn.weight_hh_l0.copy_(torch.tensor([0.5, r + 0.3, -r - 0.2]))
    x = torch.rand(10, 4, 2)

    def grad():
        rnn.zero_grad()
        rnn(x)[0].sum().backward()
        return rnn.weight_hh_l0.grad.clone()

    stuck = grad()
    assert stuck[0] != 0 and torch.all(stuck[1:] == 0)
    ConstrainRecurrentWeightsCallback().on_optimizer_step(None, None, None,
                                                          model=torch.nn.Sequential(rnn))
    torch.testing.assert_close(rnn.weight_hh_l0[1:].detach(), torch.tensor([r, -r]))
    assert torch.all(grad() != 0)


def test_trainer_with_the_constraint_keeps_every_recurrent_weight_within_the_bound(tmp_path):
    """A learning rate far too large pushes weights past the bound each step; the callback
    brings them back after every step, and without it they stay outside."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 9, (32, 6), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, -1] % 3).tolist()})
    outside = {}
    for constrain in (False, True):
        model = tiny_model(IndRNNForSequenceClassification)
        r = model.config.recurrent_max_abs
        args = TrainingArguments(output_dir=str(tmp_path / str(constrain)), max_steps=3,
                                 per_device_train_batch_size=16, learning_rate=1.0,
                                 save_strategy="no", report_to="none", use_cpu=True,
                                 disable_tqdm=True, seed=0)
        callbacks = [ConstrainRecurrentWeightsCallback()] if constrain else []
        Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks).train()
        u = torch.cat([model.model.rnn.weight_hh_l0, model.model.rnn.weight_hh_l1]).detach()
        outside[constrain] = int((u.abs() > r).sum())
    assert outside[False] > 0 and outside[True] == 0
