"""Ahead-of-time compile of the Triton kernels for sm_80 and sm_90: no GPU, zero register spills.

The suite imports the kernels with TRITON_INTERPRET=1 (interpreter-built, not compilable), so
the compile runs benchmarks/kernel_report.py in a subprocess with TRITON_INTERPRET removed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
triton = pytest.importorskip("triton", reason="Triton is not installed")
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def _compile_report(tmp_path, *args) -> list[dict]:
    missing = [str(TOOLS / n) for n in ("ptxas", "cuobjdump") if not (TOOLS / n).is_file()]
    if missing:
        pytest.skip(f"Triton's NVIDIA backend tools are missing: {missing}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_report.py"), *args,
         "--flags", "plain", "bidir", "--json", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _spills(rows: list[dict]) -> list[str]:
    return [
        f"{r['kernel']} {r['arch']} {r['dtype']} flags={r['flags']} {r['config']} "
        f"warps={r['num_warps']}: {r['registers']} registers, {r['spill_store_bytes']} B spill "
        f"stores, {r['spill_load_bytes']} B spill loads"
        for r in rows if r["spill_store_bytes"] or r["spill_load_bytes"]
    ]


def test_kernels_compile_for_sm80_sm90_without_spills(tmp_path):
    kernels = ("fwd", "bwd", "chunk_fwd_maps", "chunk_fwd_carry", "chunk_fwd_steps",
               "chunk_bwd_maps", "chunk_bwd_carry", "chunk_bwd_steps")
    rows = _compile_report(tmp_path, "--kernels", *kernels, "--configs", "representative")
    for kernel in kernels:
        for arch in ("sm_80", "sm_90"):
            for dtype in ("float32", "float16", "bfloat16"):
                sel = [r for r in rows
                       if (r["kernel"], r["arch"], r["dtype"]) == (kernel, arch, dtype)]
                assert {r["flags"] for r in sel} == {"plain", "bidir"}, (kernel, arch, dtype)
    for r in rows:
        assert r["registers"] > 0, r
        # Spills come from ptxas -v (Triton's own log, or a rerun): same binary as the cubin.
        assert r["ptxas_registers"] == r["registers"], r
        # The (T, B, H) streams move 64-bit or wider vectors in the time loop. Only the kernels
        # that write a (T, B, H) tensor store in their innermost loop (a maps kernel stores its
        # chunk's map after the loop; a carry kernel's innermost loop is its step-by-step
        # fallback, which stores nothing).
        assert max(map(int, r["loop_ld_global"])) >= 64, r
        if r["kernel"] in ("fwd", "bwd") or r["kernel"].endswith("_steps"):
            assert max(map(int, r["loop_st_global"])) >= 64, r
    spilling = _spills(rows)
    assert not spilling, "register spills:\n" + "\n".join(spilling)


def test_fused_kernel_compiles_with_tensor_cores_without_spills(tmp_path):
    """The projection + recurrence kernel, its largest tile (the most registers), every dtype,
    the common flags and every feature in a bidirectional launch: tensor-core instructions in
    the PTX (mma.sync; wgmma where Triton picks it for sm_90), no spills. The full config list
    compiles in benchmarks/kernel_report.py (gpu_check.sh)."""
    rows = _compile_report(tmp_path, "--kernels", "fused", "--configs", "largest")
    got = {(r["arch"], r["dtype"], r["flags"]) for r in rows}
    assert got == {(a, d, f) for a in ("sm_80", "sm_90") for d in ("float32", "float16",
                   "bfloat16") for f in ("plain", "bidir")}
    for r in rows:
        assert r["kernel"] == "fused" and r["ptxas_registers"] == r["registers"] > 0, r
        assert r["mma_sync"] + r["wgmma"] > 0, r
    spilling = _spills(rows)
    assert not spilling, "register spills:\n" + "\n".join(spilling)


def test_report_refuses_interpreter_mode():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_report.py"), "--archs", "90"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "TRITON_INTERPRET" in proc.stderr
