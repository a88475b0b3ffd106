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
# Shared memory one block may use (bytes), from the CUDA programming guide's compute capability
# table: 163 KB on 8.0, 227 KB on 9.0.
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}


def _compile_report(tmp_path, *args, sass="when-stack") -> list[dict]:
    missing = [str(TOOLS / n) for n in ("ptxas", "cuobjdump") if not (TOOLS / n).is_file()]
    if missing:
        pytest.skip(f"Triton's NVIDIA backend tools are missing: {missing}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = tmp_path / "report.json"
    proc = subprocess.run(
        # Compiles in parallel on every core (up to 4): ptxas runs are independent, and the
        # suite otherwise waits minutes on them one by one.
        [sys.executable, str(ROOT / "benchmarks" / "kernel_report.py"), *args,
         "--flags", "plain", "bidir", "--jobs", str(min(4, os.cpu_count() or 1)),
         # "when-stack": the SASS only of cubins with a stack frame or local memory. Without
         # either there is no local-memory instruction to find, and the disassembly is a third
         # of the time.
         "--sass", sass,
         "--json", str(out)],
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
        # A staged config (STAGES > 1, in the representative set as the one staging most bytes)
        # has Triton's pipeliner copy the coming chunks into shared memory with cp.async inside
        # the time loop, within the block's shared memory limit (sm_80: 163 KB, sm_90: 227 KB).
        # Without staging there is none: the loads stay in registers.
        staged = r.get("STAGES", 1) > 1
        assert (r["loop_cp_async"] > 0) == staged, r
        assert max(r["shared_dynamic"], r["shared_static"]) <= SHARED_LIMIT[r["arch"]], r
    assert any(r.get("STAGES", 1) > 1 for r in rows if r["kernel"] in ("fwd", "bwd"))
    spilling = _spills(rows)
    assert not spilling, "register spills:\n" + "\n".join(spilling)
    _assert_no_local_memory_ops(rows)


def _assert_no_local_memory_ops(rows: list[dict]) -> None:
    """The SASS agrees with ptxas: no local-memory instruction anywhere, so none inside a time
    loop. A cubin not disassembled has no stack frame and no local memory, so none either."""
    assert not [r for r in rows if r["local_ops"] or r["loop_local_ops"]]
    assert not [r for r in rows if not r["sass_read"] and (r["stack_bytes"] or r["local_bytes"])]


def test_fused_kernel_compiles_with_tensor_cores_without_spills(tmp_path):
    """The projection + recurrence kernel, its largest tile (the most registers), every dtype,
    the common flags and every feature in a bidirectional launch: tensor-core instructions in
    the PTX (mma.sync; wgmma where Triton picks it for sm_90), no spills. The full config list
    compiles in benchmarks/kernel_report.py (gpu_check.sh)."""
    rows = _compile_report(tmp_path, "--kernels", "fused", "--configs", "largest", sass="always")
    assert all(r["sass_read"] for r in rows)
    got = {(r["arch"], r["dtype"], r["flags"]) for r in rows}
    assert got == {(a, d, f) for a in ("sm_80", "sm_90") for d in ("float32", "float16",
                   "bfloat16") for f in ("plain", "bidir")}
    for r in rows:
        assert r["kernel"] == "fused" and r["ptxas_registers"] == r["registers"] > 0, r
        assert r["mma_sync"] + r["wgmma"] > 0, r
    spilling = _spills(rows)
    assert not spilling, "register spills:\n" + "\n".join(spilling)
    _assert_no_local_memory_ops(rows)


def test_sass_spills_are_counted_inside_and_outside_loops(monkeypatch):
    """kernel_report's SASS reading: STL/LDL between a backward branch's target and the branch
    are in a loop; the kernel's closing self-branch (`BRA` to itself) is no loop."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.kernel_report import sass_local_ops

    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   STL [R1], R34 ;
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   STL.64 [R1+0x8], R16 ;
        /*0040*/                   LDL.LU R8, [R1] ;
        /*0050*/               @P5 BRA 0x20 ;
        /*0060*/                   LDL.LU R8, [R1] ;
        /*0070*/              @!P1 BRA 0x90 ;
        /*0080*/                   EXIT ;
        /*0090*/                   BRA 0x90;
    """
    assert sass_local_ops(sass) == dict(local_ops=4, loop_local_ops=2)
    assert sass_local_ops(sass.replace("@P5 BRA 0x20", "@P5 BRA 0x60")) == dict(
        local_ops=4, loop_local_ops=0)


def test_ptx_load_widths_count_cp_async_copies(monkeypatch):
    """A cp.async copy into shared memory is a global load of its size (written in hex by
    Triton, in decimal by hand-written PTX)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.kernel_report import _global_widths

    ptx = """
        cp.async.cg.shared.global [ %r5 + 0 ], [ %rd20 + 0 ], 0x10, %r46;
        cp.async.commit_group;
        cp.async.ca.shared.global [ %r7 + 0 ], [ %rd21 + 0 ], 8;
        ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
        st.global.b16 [ %rd2 + 0 ], { %rs1 };
    """
    assert _global_widths(ptx) == {"ld": {64: 1, 128: 2}, "st": {16: 1}}


def test_report_refuses_interpreter_mode():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_report.py"), "--archs", "90"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "TRITON_INTERPRET" in proc.stderr
