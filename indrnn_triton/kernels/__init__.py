"""The op's Triton kernels, one module per method, shared helpers in :mod:`.common`.

- :mod:`.sequential`: one program per (batch, hidden) tile walks the whole time axis.
- :mod:`.chunked`: time split into chunks run by different programs (DESIGN §4), for few
  (batch, hidden) elements and long sequences.

When ``TRITON_INTERPRET=1`` is set before this package is imported, the kernels run on CPU
tensors through Triton's interpreter: that is how the test-suite exercises them without a GPU.
"""

from .common import INTERPRET

__all__ = ["INTERPRET"]
