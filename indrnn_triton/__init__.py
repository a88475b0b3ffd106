"""indrnn-triton: a fused IndRNN recurrence for PyTorch (Triton on GPU, a fast CPU path)."""

from .op import fused_indrnn
from .reference import indrnn_reference

__all__ = ["fused_indrnn", "indrnn_reference"]
__version__ = "0.1.0"
