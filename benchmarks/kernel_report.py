"""Ahead-of-time compile report for the package's Triton kernels: no GPU needed.

Every Triton kernel of ``indrnn_triton`` is compiled for sm_80 and sm_90 with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``, for each input dtype,
autotune config and flag set, specialised exactly as a launch on contiguous (T, B, H) tensors
would specialise it (16-byte aligned pointers, unit inner strides folded to constants). For each
compiled kernel it reports:

- registers, stack frame, local memory and static shared memory, from the cubin through Triton's
  bundled ``cuobjdump --dump-resource-usage``;
- register spill stores and loads (bytes), from ``ptxas -v`` run on the PTX with the ptxas and
  flags Triton uses (spills go to the stack frame, which the cubin does not break down), and
  the spill instructions (STL/LDL) in the SASS, counting those inside a loop apart: a spill
  outside the time loop costs once per program, one inside it every step;
- the dynamic shared memory the launch requests (Triton's metadata);
- every global load and store in the PTX with its width in bits (``ld.global.v4.b32`` = 128), so
  a reader sees whether the (T, B, H) streams are vectorised, and the shared-memory traffic and
  barriers (layout conversions) the compiler inserted.

    python benchmarks/kernel_report.py                      # every config, table on stdout
    python benchmarks/kernel_report.py --configs representative --json report.json

Refuses to run with TRITON_INTERPRET=1: the kernels are then built for Triton's interpreter and
cannot be compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ARCHS = (80, 90)
DTYPES = ("float32", "float16", "bfloat16")
CONFIG_SETS = ("all", "representative", "largest")
SASS_MODES = ("always", "when-stack")
KERNELS = ("fwd", "bwd", "chunk_fwd_maps", "chunk_fwd_carry", "chunk_fwd_steps", "chunk_bwd_maps",
           "chunk_bwd_carry", "chunk_bwd_steps", "fused")

# Shape the specialisation is taken from: a contiguous (T, B, H) launch; H and B multiples of 16
# as in any real model, so pointers and outer strides carry tt.divisibility=16.
T, B, H = 1024, 64, 1024

# Flag sets: "plain" is the common training call (bias, no h0, no mask, forwards, no clip; autograd
# hands the backward a zero gradient for the unused h_n, hence dhn); "all" switches every
# optional feature of one direction on; "bidir" is "all" for a bidirectional launch (one kernel
# holding both directions' bodies). Parameters (u, bias) and h0 are float32 as in mixed-precision
# training.
_ALL = dict(h0=True, mask=True, reverse=True, clip=True, dhn=True)
FLAG_SETS = {
    "plain": dict(h0=False, mask=False, reverse=False, clip=False, dhn=True, bidir=False),
    "all": dict(_ALL, bidir=False),
    "bidir": dict(_ALL, bidir=True),
}

_TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "uint8": "u8"}


class Ptr:
    """Stand-in for a tensor argument: all the specialisation needs is its dtype."""

    def __init__(self, dtype: str):
        import torch

        self.dtype = getattr(torch, dtype)
        self.triton_type = "*" + _TRITON_TYPES[dtype]


def _refuse_interpreter() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError(
            "kernel_report compiles the kernels for real GPUs, but TRITON_INTERPRET=1 is set, "
            "which builds them for Triton's interpreter instead: run it with TRITON_INTERPRET "
            "unset (env -u TRITON_INTERPRET python benchmarks/kernel_report.py)"
        )


def tool_dir() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def missing_tools() -> list[str]:
    """Triton's bundled NVIDIA tools this report needs that are not installed."""
    return [str(tool_dir() / n) for n in ("ptxas", "cuobjdump") if not (tool_dir() / n).is_file()]


def _kernels() -> dict:
    """name -> (the @triton.heuristics/@triton.autotune wrapper, a function building its args)."""
    from indrnn_triton import kernels
    from indrnn_triton.kernels import chunked as ck
    from indrnn_triton.kernels import fused_linear as fl
    from indrnn_triton.kernels import sequential as tk

    if kernels.INTERPRET:
        _refuse_interpreter()
        raise RuntimeError("indrnn_triton.kernels was imported with TRITON_INTERPRET=1")
    return {
        "fwd": (tk._indrnn_fwd_kernel, _fwd_args), "bwd": (tk._indrnn_bwd_kernel, _bwd_args),
        # The chunked method's three launches per direction (kernels/chunked.py).
        "chunk_fwd_maps": (ck._fwd_maps_kernel, _chunk_args(_fwd_args)),
        "chunk_fwd_carry": (ck._fwd_carry_kernel, _chunk_args(_fwd_args)),
        "chunk_fwd_steps": (ck._fwd_steps_kernel, _chunk_args(_fwd_args)),
        "chunk_bwd_maps": (ck._bwd_maps_kernel, _chunk_args(_bwd_args)),
        "chunk_bwd_carry": (ck._bwd_carry_kernel, _chunk_args(_bwd_args)),
        "chunk_bwd_steps": (ck._bwd_steps_kernel, _chunk_args(_bwd_args)),
        # The projection fused with the recurrence (kernels/fused_linear.py).
        "fused": (fl._fused_linear_fwd_kernel, _fused_args),
    }


def _common_args(f: dict) -> dict:
    """Arguments both kernels share: sizes, mask strides, clip, direction."""
    return dict(
        T=T, B=B, H=H,
        s_m_t=B if f["mask"] else 0, s_m_b=1 if f["mask"] else 0,
        r_max=1.0 if f["clip"] else 0.0, r_min=0.1 if f["clip"] else 0.0,
        CLIP_MAX=f["clip"], CLIP_MIN=f["clip"], REVERSE=f["reverse"], BIDIR=f["bidir"],
        p_h0=Ptr("float32") if f["h0"] else None,
        p_mask=Ptr("uint8") if f["mask"] else None,
        p_u=Ptr("float32"),
        B_CLASS=B, T_CLASS=1,
    )


def _fwd_args(dtype: str, f: dict) -> dict:
    return dict(
        _common_args(f),
        p_pre=Ptr(dtype), p_b=Ptr("float32"), p_out=Ptr(dtype), p_hn=Ptr("float32"),
        s_pre_t=B * H, s_pre_b=H, s_pre_h=1, s_out_t=B * H, s_out_b=H, s_out_h=1,
    )


def _fused_args(dtype: str, f: dict) -> dict:
    """The fused projection + recurrence kernel, x (T, B, K) and W (H, K) contiguous, K = H;
    float32 with TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32 = True)."""
    return dict(
        _common_args(f), K=H,
        p_x=Ptr(dtype), p_w=Ptr(dtype), p_b=Ptr("float32"), p_out=Ptr(dtype),
        p_hn=Ptr("float32"),
        s_x_t=B * H, s_x_b=H, s_x_i=1, s_w_h=H, s_w_i=1, s_out_t=B * H, s_out_b=H, s_out_h=1,
        PRECISION="tf32" if dtype == "float32" else "ieee",
    )


def _bwd_args(dtype: str, f: dict) -> dict:
    return dict(
        _common_args(f),
        p_out=Ptr(dtype), p_dout=Ptr(dtype), p_dhn=Ptr("float32") if f["dhn"] else None,
        p_dpre=Ptr(dtype), p_dh0=Ptr("float32"), p_du=Ptr("float32"), p_db=Ptr("float32"),
        s_out_t=B * H, s_out_b=H, s_out_h=1, s_do_t=B * H, s_do_b=H, s_do_h=1,
    )


def _chunk_args(build):
    """Arguments of a chunked kernel: the sequential kernel's, plus the chunk plan (B=64, H=1024
    over T=1024 would be sequential; the same sizes keep the specialisation comparable), the
    map and state buffers, and the flags the sequential kernels get from heuristics."""

    def args(dtype: str, f: dict) -> dict:
        a = build(dtype, f)
        D = 2 if f["bidir"] else 1
        NC, L = 16, 64
        return dict(
            a, NC=NC, L=L, s_map=D * NC * B * H, p_maps=Ptr("float32"), p_states=Ptr("float32"),
            HAS_BIAS=True, HAS_H0=f["h0"], HAS_MASK=f["mask"], HAS_DOUT=True, HAS_DHN=f["dhn"],
            ACC_F64=False,
        )

    return args


def _unwrap(kernel):
    """(JITFunction, heuristics {name: fn}, autotune configs) of a decorated kernel."""
    import triton

    heuristics, configs = {}, None
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        if isinstance(kernel, triton.runtime.autotuner.Heuristics):
            heuristics.update(kernel.values)
        if isinstance(kernel, triton.runtime.autotuner.Autotuner):
            configs = kernel.configs
        kernel = kernel.fn
    return kernel, heuristics, configs


def _specialise(fn, args: dict):
    """(signature, constexprs, attrs) for ASTSource, exactly as Triton's launcher derives them
    (same entries, same order), so the compiled kernels share the launcher's cache key and a
    report run warms the cache for the first launches on a GPU."""
    signature, constexprs, attrs = {}, {}, {}
    divisible = [["tt.divisibility", 16]]
    for i, p in enumerate(fn.params):
        if p.name not in args:
            raise RuntimeError(f"kernel_report builds no value for {fn.__name__}'s argument "
                               f"{p.name!r}: add it to _fwd_args/_bwd_args")
        v = args[p.name]
        if p.is_constexpr or v is None or isinstance(v, bool):
            signature[p.name], constexprs[p.name], attrs[(i,)] = "constexpr", v, []
        elif isinstance(v, Ptr):
            signature[p.name] = v.triton_type
            attrs[(i,)] = divisible  # torch allocations are 16-byte aligned
        elif isinstance(v, float):
            signature[p.name] = "fp32"
        elif isinstance(v, int):
            if p.do_not_specialize:
                signature[p.name] = "i32" if -(2**31) <= v < 2**31 else "i64"
            elif v == 1:
                signature[p.name], constexprs[p.name], attrs[(i,)] = "constexpr", 1, []
            else:
                signature[p.name] = "i32" if -(2**31) <= v < 2**31 else "i64"
                attrs[(i,)] = divisible if v % 16 == 0 else []
        else:
            raise TypeError(f"argument {p.name}: cannot specialise {type(v).__name__}")
    return signature, constexprs, attrs


_PTX_GLOBAL = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)+)")
_PTX_CP_ASYNC = re.compile(
    r"\bcp\.async\.\w+\.shared\.global(?:\.[\w:]+)*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*"
    r"(0x[0-9a-fA-F]+|\d+)"
)
_PTX_SHARED = re.compile(r"\b(?:ld|st)\.shared\b")


def _global_widths(ptx: str) -> dict:
    """Global loads and stores in PTX text, counted by width in bits: {"ld": {128: 5}, ...}."""
    widths = {"ld": Counter(), "st": Counter()}
    for op, mods in _PTX_GLOBAL.findall(ptx):
        parts = mods.strip(".").split(".")
        vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
        elem = next((int(p[1:]) for p in reversed(parts) if re.fullmatch(r"[busf]\d+", p)), 0)
        widths[op][vec * elem] += 1
    for nbytes in _PTX_CP_ASYNC.findall(ptx):  # Triton writes the size in hex: 0x10
        widths["ld"][8 * int(nbytes, 0)] += 1
    return {op: {k: c[k] for k in sorted(c)} for op, c in widths.items()}


def _loop_bodies(ptx: str) -> str:
    """PTX text of the innermost loops: from each loop header label to its back branch."""
    lines, bodies = ptx.splitlines(), []
    for i, line in enumerate(lines):
        m = re.match(r"(\$L__\w+):", line)
        if not m:
            continue
        notes = [line] + [x for x in lines[i + 1:i + 4] if x.strip().startswith("//")]
        if not any("Loop Header" in x for x in notes):
            continue
        back = re.compile(rf"\bbra(?:\.uni)?\s+{re.escape(m.group(1))};")
        end = next((j for j in range(i + 1, len(lines)) if back.search(lines[j])), i)
        bodies += lines[i + 1:end + 1]
    return "\n".join(bodies)


def _barriers(ptx: str) -> int:
    return len(re.findall(r"\bbar\.sync\b|\bbarrier\.sync\b", ptx))


def ptx_memory_ops(ptx: str) -> dict:
    """Global loads/stores by width in bits (a cp.async copy into shared memory counts as a load),
    shared ops, barriers and cp.async copies; the same inside the time loop (``loop_*``), where
    they cost once per step (or chunk of steps)."""
    whole, loop = _global_widths(ptx), _loop_bodies(ptx)
    in_loop = _global_widths(loop)
    return dict(
        ld_global=whole["ld"], st_global=whole["st"],
        shared_ops=len(_PTX_SHARED.findall(ptx)), barriers=_barriers(ptx),
        cp_async=len(_PTX_CP_ASYNC.findall(ptx)),
        loop_ld_global=in_loop["ld"], loop_st_global=in_loop["st"],
        loop_cp_async=len(_PTX_CP_ASYNC.findall(loop)),
        loop_shared_ops=len(_PTX_SHARED.findall(loop)), loop_barriers=_barriers(loop),
    )


def tensor_core_ops(ptx: str) -> dict:
    """Tensor-core instructions in PTX text: warp-level ``mma.sync`` (sm_80) and warpgroup
    ``wgmma.mma_async`` (sm_90)."""
    return dict(mma_sync=len(re.findall(r"\bmma\.sync\b", ptx)),
                wgmma=len(re.findall(r"\bwgmma\.mma_async\b", ptx)))


_SASS_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
_SASS_BRANCH = re.compile(r"\bBRA\b[^0-9]*(0x[0-9a-f]+)")
_SASS_LOCAL = re.compile(r"\b(?:STL|LDL)\b")


def sass_local_ops(sass: str) -> dict:
    """Local-memory instructions (STL/LDL: spills) in SASS text, and how many sit inside a loop
    (between a backward branch's target and the branch), where they would cost every step. A
    spill outside the loops costs once per program."""
    insns = [(int(addr, 16), text) for addr, text in _SASS_INSN.findall(sass)]
    loops = [(int(m.group(1), 16), addr) for addr, text in insns
             if (m := _SASS_BRANCH.search(text)) and int(m.group(1), 16) < addr]
    local = [addr for addr, text in insns if _SASS_LOCAL.search(text)]
    return dict(local_ops=len(local),
                loop_local_ops=sum(any(lo <= a <= hi for lo, hi in loops) for a in local))


def cubin_resources(cubin: bytes, sass: str = "always") -> dict:
    """REG, STACK, LOCAL, SHARED of the cubin's one function, from cuobjdump, and its
    local-memory instructions in and outside loops (:func:`sass_local_ops`).

    ``sass="when-stack"`` disassembles only a function with a stack frame or local memory: local
    loads and stores (STL/LDL) address exactly that memory, so with STACK = LOCAL = 0 there are
    none to count (``sass_read`` says which was done). The disassembly is a third of a compile's
    time."""
    if sass not in SASS_MODES:
        raise ValueError(f"sass must be one of {SASS_MODES}, got {sass!r}")
    cuobjdump = str(tool_dir() / "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [cuobjdump, "--dump-resource-usage", f.name], check=True, capture_output=True,
            text=True,
        ).stdout
        fields = dict(re.findall(r"\b(REG|LOCAL|STACK|SHARED):(\d+)",
                                 text.split("Function", 1)[-1]))
        if "REG" not in fields:
            raise RuntimeError(f"no resource usage in cuobjdump output:\n{text}")
        stack, local = int(fields.get("STACK", 0)), int(fields.get("LOCAL", 0))
        read = sass == "always" or stack > 0 or local > 0
        if read:
            listing = subprocess.run(
                [cuobjdump, "-sass", f.name], check=True, capture_output=True, text=True,
            ).stdout
            if not _SASS_INSN.search(listing):
                raise RuntimeError(
                    f"no SASS instructions in cuobjdump -sass output:\n{listing[:2000]}")
    return dict(
        registers=int(fields["REG"]), stack_bytes=stack, local_bytes=local,
        shared_static=int(fields.get("SHARED", 0)), sass_read=read,
        **(sass_local_ops(listing) if read else dict(local_ops=0, loop_local_ops=0)),
    )


def _ptxas(arch: int) -> str:
    """The ptxas Triton itself uses for ``arch``."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(arch).path
    except (ImportError, AttributeError):
        return str(tool_dir() / "ptxas")


def _parse_ptxas_log(log: str) -> dict | None:
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    regs = re.search(r"Used (\d+) registers", log)
    if not (m and regs):
        return None
    return dict(spill_store_bytes=int(m.group(1)), spill_load_bytes=int(m.group(2)),
                ptxas_registers=int(regs.group(1)))


def ptxas_spills(ptx: str, arch: int) -> dict:
    """Spill stores/loads in bytes from ``ptxas -v`` on the PTX, with Triton's ptxas and flags
    (spills live in the stack frame, so the cubin's LOCAL figure does not show them)."""
    gpu = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE).group(1)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        log = subprocess.run(
            [_ptxas(arch), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}",
             str(src), "-o", str(Path(d) / "k.o")],
            check=True, capture_output=True, text=True,
        ).stderr
    parsed = _parse_ptxas_log(log)
    if parsed is None:
        raise RuntimeError(f"no spill or register figures in ptxas -v output:\n{log}")
    return parsed


def _compile_with_ptxas_log(src, target, options):
    """triton.compile, also returning the ptxas -v log Triton prints when TRITON_DUMP_PTXAS_LOG
    is set ("" when the cubin came from Triton's cache or this Triton has no such switch)."""
    import triton

    saved = os.environ.get("TRITON_DUMP_PTXAS_LOG")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # not part of Triton's cache key
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=target, options=options)
    finally:
        if saved is None:
            del os.environ["TRITON_DUMP_PTXAS_LOG"]
        else:
            os.environ["TRITON_DUMP_PTXAS_LOG"] = saved
    return compiled, log.getvalue()


def compile_one(kernel: str, arch: int, dtype: str, flags: str, config: dict,
                sass: str = "always") -> dict:
    """Compile one kernel variant and return its report row (``sass``: see
    :func:`cubin_resources`)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _refuse_interpreter()
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    wrapper, build_args = _kernels()[kernel]
    fn, heuristics, _ = _unwrap(wrapper)
    args = dict(build_args(dtype, FLAG_SETS[flags]), **config["kwargs"])
    for name, rule in heuristics.items():
        args[name] = rule(args)
    signature, constexprs, attrs = _specialise(fn, args)
    compiled, log = _compile_with_ptxas_log(
        ASTSource(fn, signature, constexprs, attrs),
        GPUTarget("cuda", arch, 32),
        dict(num_warps=config["num_warps"], num_stages=config["num_stages"]),
    )
    spills = _parse_ptxas_log(log) or ptxas_spills(compiled.asm["ptx"], arch)
    return dict(
        kernel=kernel, arch=f"sm_{arch}", dtype=dtype, flags=flags,
        config=" ".join(f"{k}={v}" for k, v in config["kwargs"].items()), **config["kwargs"],
        num_warps=config["num_warps"], num_stages=config["num_stages"],
        **cubin_resources(compiled.asm["cubin"], sass),
        **spills,
        shared_dynamic=int(compiled.metadata.shared),
        **ptx_memory_ops(compiled.asm["ptx"]),
        **tensor_core_ops(compiled.asm["ptx"]),
    )


def kernel_configs(kernel: str, which: str = "all") -> list[dict]:
    """The autotune configs of a kernel as plain dicts. ``representative``: the largest tile, the
    tallest (most batch rows) and the deepest (most steps held in registers: the product of the
    other integer parameters, e.g. CHUNK, and num_stages), the ones that need most registers,
    and the one staging most bytes through shared memory (the largest tile x CHUNK x (STAGES -
    1), for kernels with a STAGES parameter). ``largest``: the first of those only."""
    if which not in CONFIG_SETS:
        raise ValueError(f"which must be one of {CONFIG_SETS}, got {which!r}")
    _, _, configs = _unwrap(_kernels()[kernel][0])
    if configs is None:  # the chunked kernels: one fixed tile, no autotuning
        from indrnn_triton.kernels import chunked as ck

        return [dict(kwargs=dict(BLOCK_B=ck.BLOCK_B, BLOCK_H=ck.BLOCK_H, CHUNK=ck.CHUNK),
                     num_warps=ck.NUM_WARPS, num_stages=1)]
    rows = [
        dict(kwargs=dict(c.kwargs), num_warps=c.num_warps, num_stages=c.num_stages)
        for c in configs
    ]
    if which == "all":
        return rows

    def size(r):
        return r["kwargs"]["BLOCK_B"] * r["kwargs"]["BLOCK_H"]

    def depth(r):
        other = [v for k, v in r["kwargs"].items() if k not in ("BLOCK_B", "BLOCK_H", "STAGES")]
        return math.prod(v for v in other if isinstance(v, int)) * r["num_stages"]

    def staged(r):
        return size(r) * r["kwargs"].get("CHUNK", 1) * (r["kwargs"].get("STAGES", 1) - 1)

    picks = [
        max(rows, key=lambda r: (size(r), depth(r), r["num_warps"])),
        max(rows, key=lambda r: (r["kwargs"]["BLOCK_B"], size(r), depth(r))),
        max(rows, key=lambda r: (depth(r), size(r))),
    ]
    if any(staged(r) for r in rows):
        picks.append(max(rows, key=lambda r: (staged(r), depth(r))))
    if which == "largest":
        return picks[:1]
    return [r for i, r in enumerate(picks) if r not in picks[:i]]


def report(
    archs=ARCHS, dtypes=DTYPES, flag_sets=tuple(FLAG_SETS), configs: str = "all", jobs: int = 1,
    progress: bool = False, kernels=KERNELS, sass: str = "always",
) -> list[dict]:
    """Compile every (kernel, arch, dtype, flag set, config) and return one row per variant."""
    _refuse_interpreter()
    if sass not in SASS_MODES:
        raise ValueError(f"sass must be one of {SASS_MODES}, got {sass!r}")
    for k in kernels:
        if k not in KERNELS:
            raise ValueError(f"kernels must be among {KERNELS}, got {k!r}")
    for a in archs:
        if a not in ARCHS:
            raise ValueError(f"archs must be among {ARCHS}, got {a!r}")
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"dtypes must be among {DTYPES}, got {d!r}")
    for f in flag_sets:
        if f not in FLAG_SETS:
            raise ValueError(f"flag_sets must be among {tuple(FLAG_SETS)}, got {f!r}")
    if missing_tools():
        raise RuntimeError(f"Triton's NVIDIA backend tools are missing: {missing_tools()}")
    tasks = [
        (k, a, d, f, c, sass)
        for k in kernels
        for c in kernel_configs(k, configs)
        for a in archs
        for d in dtypes
        for f in flag_sets
    ]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            results = pool.map(compile_one, *zip(*tasks, strict=True))
            rows = _progress(results, len(tasks), progress)
    else:
        rows = _progress((compile_one(*t) for t in tasks), len(tasks), progress)
    return rows


def _progress(rows, total: int, show: bool) -> list[dict]:
    if not show:
        return list(rows)
    from tqdm import tqdm

    return list(tqdm(rows, total=total, desc="compiling", file=sys.stderr))


def _widths(counts: dict) -> str:
    return " ".join(f"{bits}b×{n}" for bits, n in counts.items()) or "-"


def format_table(rows: list[dict]) -> str:
    """Markdown table, one row per compiled variant."""
    head = ["kernel", "arch", "dtype", "flags", "config", "warps", "stages", "regs",
            "spill st/ld B", "spill ops (in loops)", "smem B", "global loads", "global stores",
            "loop loads", "loop stores", "loop cp.async", "loop smem ops/barriers", "mma/wgmma"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["kernel"], r["arch"], r["dtype"], r["flags"], r["config"],
            r["num_warps"], r["num_stages"], r["registers"],
            f"{r['spill_store_bytes']}/{r['spill_load_bytes']}",
            f"{r['local_ops']} ({r['loop_local_ops']})",
            max(r["shared_dynamic"], r["shared_static"]), _widths(r["ld_global"]),
            _widths(r["st_global"]), _widths(r["loop_ld_global"]), _widths(r["loop_st_global"]),
            r["loop_cp_async"], f"{r['loop_shared_ops']}/{r['loop_barriers']}",
            f"{r['mma_sync']}/{r['wgmma']}",
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """One line per kernel and arch: register range, worst spill, widest and narrowest loads."""
    out = []
    for k in sorted({r["kernel"] for r in rows}):
        for a in sorted({r["arch"] for r in rows}):
            sel = [r for r in rows if r["kernel"] == k and r["arch"] == a]
            if not sel:
                continue
            regs = [r["registers"] for r in sel]
            lds = sorted({b for r in sel for b in r["loop_ld_global"]})
            sts = sorted({b for r in sel for b in r["loop_st_global"]})
            out.append(
                f"{k} {a}: {len(sel)} variants, registers {min(regs)}-{max(regs)}, "
                f"max spill stores {max(r['spill_store_bytes'] for r in sel)} B "
                f"({sum(1 for r in sel if r['spill_store_bytes'])} variants), spill instructions "
                f"inside loops {sum(r['loop_local_ops'] for r in sel)}, time-loop global "
                f"load widths {lds} bits, store widths {sts} bits, time-loop barriers up to "
                f"{max(r['loop_barriers'] for r in sel)}, time-loop cp.async copies up to "
                f"{max(r['loop_cp_async'] for r in sel)}, shared memory up to "
                f"{max(max(r['shared_dynamic'], r['shared_static']) for r in sel)} B, "
                f"tensor-core instructions "
                f"(mma.sync/wgmma) "
                f"{min(r['mma_sync'] for r in sel)}-{max(r['mma_sync'] for r in sel)}/"
                f"{min(r['wgmma'] for r in sel)}-{max(r['wgmma'] for r in sel)}"
            )
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", type=int, nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--flags", nargs="+", default=list(FLAG_SETS), choices=list(FLAG_SETS))
    p.add_argument("--configs", default="all", choices=CONFIG_SETS)
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS,
                   help="fwd/bwd: the recurrence kernels; fused: projection + recurrence")
    p.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    p.add_argument("--sass", default="always", choices=SASS_MODES,
                   help="disassemble every cubin to count local-memory instructions, or only "
                   "those with a stack frame or local memory (the only ones that can have any)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON to this path")
    p.add_argument("--md", type=Path, help="also write the table and summary to this path")
    args = p.parse_args(argv)
    try:
        rows = report(args.archs, args.dtypes, args.flags, args.configs, args.jobs, progress=True,
                      kernels=args.kernels, sass=args.sass)
    except RuntimeError as e:
        print(f"kernel_report: {e}", file=sys.stderr)
        return 2
    text = f"{format_table(rows)}\n\n{summary(rows)}\n"
    for path, content in ((args.json, json.dumps(rows, indent=1)), (args.md, text)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
