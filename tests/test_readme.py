"""Every Python block of README.md runs as written, each in a fresh process, on a CPU.

The blocks run where the quick start leaves the reader: in a folder holding what
`indrnn-train adding` writes (`out/indrnn-adding`) and what `indrnn-train text` writes
(`out/indrnn-text`), both trained here with tiny settings so that the test stays fast.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_integration import train

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README, flags=re.M | re.S)
TINY = ["--hidden-size", "8", "--max-steps", "2", "--eval-steps", "2", "--batch-size", "4",
        "--save-steps", "0", "--no-progress"]


def test_every_python_block_is_collected():
    """A block fenced another way (```py, ```python3, indented) would escape the test."""
    fences = re.findall(r"^```(\S*)$", README, flags=re.M)
    opening = fences[::2]  # fences alternate: opening, closing
    assert all(f in ("python", "bash") for f in opening), opening
    assert opening.count("python") == len(BLOCKS) >= 7


@pytest.fixture(scope="module")
def quick_start_folder(tmp_path_factory):
    """A folder where the quick start has run: the adding and text models in `out/`."""
    root = tmp_path_factory.mktemp("reader")
    text = root / "input.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(root)  # the CLI's default --output-dir is out/indrnn-TASK, as in the README
    try:
        assert train.main(["adding", "-T", "10", "--test-size", "8", *TINY]) == 0
        assert train.main(["text", "--data", str(text), "-T", "10", *TINY]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)),
                         ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(quick_start_folder, index):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as a user runs it
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_HOME=str(quick_start_folder / "hf_home"))
    result = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=quick_start_folder,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, BLOCKS[index] + "\n" + result.stderr[-3000:]
