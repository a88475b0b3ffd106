"""benchmarks/gpu_check.sh, the one script a lent GPU runs, checked on CPU before it gets there:
every command it runs parses, and each part fits one device call.

A lent GPU gives a session about 15 minutes, start-up included, and one command at most 600 s: an
argument one of the scripts no longer takes would cost a whole device call to find.
"""

import argparse
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
DEVICE_CALL_LIMIT_S = 600  # the device tool's limit on one command
KILL_GRACE_S = 10  # `timeout -k 10` in the script's step()


def _parts() -> dict[str, list[tuple[str, int, list[str]]]]:
    """{part: [(step name, limit in seconds, argv after "$PY")]} from the script's text: each
    `step` line (with its continuation lines) under the `if run_part PART` block it sits in."""
    text = re.sub(r"\\\n\s*", " ", SCRIPT.read_text())
    parts, part = {}, None
    for line in text.splitlines():
        if m := re.match(r"if run_part (\w+); then", line):
            part = m.group(1)
        elif line.strip() == "fi":
            part = None
        elif line.startswith("step ") and part:
            _, name, limit, *argv = shlex.split(line)
            # "${XDIST[@]+"${XDIST[@]}"}" (pytest-xdist where installed) expands to nothing here.
            argv = [a for a in argv if not a.startswith("${")]
            parts.setdefault(part, []).append((name, int(limit), argv))
    return parts


class _Parsed(Exception):
    pass


def test_the_script_has_the_parts_its_usage_names_and_valid_syntax():
    assert set(_parts()) == {"aot", "kernels", "layers", "adding"}
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("part", ["aot", "kernels", "layers", "adding"])
def test_each_part_fits_one_device_call(part):
    """Every step's limit plus its kill grace: the part ends before the device call's limit, with
    at least a minute left for start-up and the environment report."""
    steps = _parts()[part]
    assert sum(limit + KILL_GRACE_S for _, limit, _ in steps) <= DEVICE_CALL_LIMIT_S - 60, steps


def _benchmark_commands():
    return [pytest.param(argv, id=f"{part}:{name}") for part, steps in _parts().items()
            for name, _, argv in steps if argv[:1] == ["$PY"] and argv[1].endswith(".py")]


@pytest.mark.parametrize("argv", _benchmark_commands())
def test_every_benchmark_command_parses(argv, monkeypatch, tmp_path):
    """Each benchmark's argument parser accepts the script's arguments (stopped right after
    parsing, so nothing runs)."""
    script = argv[1]
    args = [a.replace("$OUT_DIR", str(tmp_path)) for a in argv[2:]]
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, a=None, namespace=None):
        raise _Parsed(parse(self, a, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [script, *args])  # for a main() that reads sys.argv
    monkeypatch.syspath_prepend(str(ROOT))
    module = importlib.import_module(Path(script).with_suffix("").as_posix().replace("/", "."))
    with pytest.raises(_Parsed):
        module.main(args)


def test_the_cuda_test_command_selects_the_cuda_tests(tmp_path):
    """The test_cuda step's pytest arguments collect tests (on CPU they would then skip)."""
    (argv,) = [argv for name, _, argv in _parts()["kernels"] if name == "test_cuda"]
    assert argv[1:3] == ["-m", "pytest"]
    args = [a.replace("$OUT_DIR", str(tmp_path)) for a in argv[3:]]
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected", proc.stdout)
    assert collected and int(collected.group(1)) >= 50, proc.stdout[-2000:]
