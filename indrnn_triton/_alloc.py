"""The one place the op allocates the buffers its kernels fill.

Every output and gradient buffer comes from :func:`empty`, so the tests can swap it for a version
that fills with NaN and catch any element a kernel forgets to write.
"""

import torch

empty = torch.empty
