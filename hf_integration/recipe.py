"""The IndRNN authors' training recipe as pieces of a Hugging Face ``Trainer``.

The authors' PyTorch scripts (sequential MNIST, action recognition, Penn Treebank) train with
Adam and, at every step:

- clamp every gradient element to [-10, 10] (``gradclipvalue``), not the gradient norm:
  :class:`ClampGradientsCallback`;
- decay (L2, added to the gradient by ``torch.optim.Adam``) every parameter except the
  recurrent weights and the biases (``decayfactor`` 1e-4): :func:`decays`;
- clamp the recurrent weights themselves to ``[-r, r]``, ``r = MAG ** (1 / T)``
  (``constrain_U``, MAG 5 for MNIST and action recognition, 2 for the adding problem and the
  language model): :class:`ConstrainRecurrentWeightsCallback`.

Why the last one matters: :class:`indrnn_triton.IndRNN` clips the recurrent weights it USES
inside the kernel, and a weight clipped there gets zero gradient, so a weight that an
optimizer step pushed past the bound stays there and never trains again. Clamping the
parameter after each step keeps it AT the bound, where its gradient still flows (the kernel's
clip keeps the gradient of ``|u| <= r``), so it can move back.

``indrnn-train`` uses all three (see its ``--grad-clip-value``, ``--weight-decay``,
``--recurrent-max-mag`` and ``--no-constrain``); with a Trainer of your own::

    trainer = Trainer(model, args, callbacks=[ClampGradientsCallback(10.0),
                                              ConstrainRecurrentWeightsCallback()], ...)
"""

from __future__ import annotations

from transformers import TrainerCallback

from indrnn_triton import IndRNN, IndRNNCell


def decays(name: str) -> bool:
    """Whether the parameter called ``name`` takes weight decay: everything but the recurrent
    weights (``weight_hh``) and the biases, as in the authors' scripts (norm scales decay)."""
    return "weight_hh" not in name and "bias" not in name


def recurrent_bound(magnitude: float, seq_len: int) -> float:
    """The clip bound ``r = MAG ** (1 / T)``: a unit alone can grow by at most MAG over T
    steps (and, with weights near ``1 / r``, keep at least 1 / MAG of its state)."""
    if magnitude <= 0:
        raise ValueError(f"magnitude must be > 0, got {magnitude}")
    return magnitude ** (1.0 / seq_len)


class ClampGradientsCallback(TrainerCallback):
    """Clamp every gradient element to ``[-value, value]`` before each optimizer step (after
    the Trainer's norm clipping, if ``max_grad_norm`` is also set; after the data-parallel
    all-reduce, so every process clamps the same gradients)."""

    def __init__(self, value: float):
        if not value > 0:
            raise ValueError(f"value must be > 0, got {value}")
        self.value = float(value)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for p in model.parameters():
            if p.grad is not None:
                p.grad.clamp_(-self.value, self.value)


class ConstrainRecurrentWeightsCallback(TrainerCallback):
    """After each optimizer step, clamp the recurrent weights of every IndRNN / IndRNNCell in
    the model to their clip range (``constrain_()``), the authors' ``clip_weight``."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        for module in model.modules():
            if isinstance(module, (IndRNN, IndRNNCell)):
                module.constrain_()


__all__ = [
    "ClampGradientsCallback",
    "ConstrainRecurrentWeightsCallback",
    "decays",
    "recurrent_bound",
]
