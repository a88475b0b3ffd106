"""``python -m hf_integration TASK [options]``: the same as ``indrnn-train``."""

import sys

from .train import main

sys.exit(main())
