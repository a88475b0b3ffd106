"""indrnn-triton: a fused IndRNN recurrence for PyTorch (Triton on GPU, a fast CPU path)."""

from . import functional
from .fused_linear import fused_indrnn_linear
from .modules import DenseIndRNN, IndRNN, IndRNNCell
from .op import fused_indrnn
from .reference import indrnn_reference

__all__ = [
    "DenseIndRNN", "IndRNN", "IndRNNCell", "functional", "fused_indrnn", "fused_indrnn_linear",
    "indrnn_reference",
]
__version__ = "0.1.0"
