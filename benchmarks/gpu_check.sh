#!/usr/bin/env bash
# The one script to run on a GPU machine: CUDA tests, kernel resource report, the benchmarks and
# the adding problem at T = 5000, in parts that each fit one device call with time to spare.
#
#   benchmarks/gpu_check.sh [PART] [OUT_DIR]     (OUT_DIR default: $OUT, else
#                                                 benchmarks/results/gpu-check)
#
#   PART  kernels  (default) the kernel issues' evidence, most important first:
#                  test_cuda 150 s + bench_op_targets 150 s + bench_overhead 40 s
#                  + bench_op 150 s = 490 s at most
#         layers   the layer, fused-projection and memory benchmarks:
#                  90 + 60 + 60 + 60 = 270 s at most
#         adding   the adding problem at T = 5000 with the authors' recipe, 20000 steps
#                  (reproduce_adding.py's defaults): 480 s at most
#         aot      the kernel resource report compiled on the GPU machine (sm_90 only; the full
#                  sm_80/sm_90 reports are committed from CPU, benchmarks/results/aot): 150 s
#         all      kernels then layers (760 s at most: more than one device call allows)
#
# A lent GPU gives a session about 15 minutes in all, start-up included: run `kernels` first,
# then `layers` or `adding` only if the time left allows.
#
# Run from the repository root; the project need not be installed (PYTHONPATH=. is set). Every
# step has a `timeout`, and a step that fails or times out does not stop the next one; the
# benchmarks rewrite their results after every case, so a step cut short keeps what it measured.
# summary.txt lists each step's exit status and time.
set -u

PART=${1:-kernels}
case "$PART" in
    kernels|layers|adding|aot|all) ;;
    *) echo "usage: $0 [kernels|layers|adding|aot|all] [OUT_DIR]; got PART '$PART'" >&2; exit 2 ;;
esac
OUT_DIR=${2:-${OUT:-benchmarks/results/gpu-check}}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
# tests/conftest.py defaults TRITON_INTERPRET to 1 (kernels interpreted on CPU tensors); here the
# kernels must be compiled for the GPU.
export TRITON_INTERPRET=0
export PYTHONUNBUFFERED=1
START=$SECONDS
: > "$OUT_DIR/summary.txt"

step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s, at $((SECONDS - START))s)"
    timeout -k 10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    local status=ok
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMED OUT"
    [ $rc -ne 0 ] && [ "$status" = ok ] && status="FAILED"
    echo "$name: $status (rc=$rc) at $((SECONDS - START))s" | tee -a "$OUT_DIR/summary.txt"
    tail -n 25 "$OUT_DIR/$name.log"
}

{
    command -v nvidia-smi > /dev/null && nvidia-smi
    "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__,
'cuda', torch.version.cuda, 'triton', triton.__version__); print(torch.cuda.get_device_name())"
    git rev-parse HEAD 2> /dev/null
} > "$OUT_DIR/environment.txt" 2>&1
cat "$OUT_DIR/environment.txt"

run_part() { [ "$PART" = all ] && [ "$1" != adding ] && [ "$1" != aot ] || [ "$PART" = "$1" ]; }

if run_part aot; then
# Resource report (registers, spills inside loops, shared memory, cp.async of the staged
# configs), compiled in parallel. It writes its files only at the end.
step kernel_report 150 "$PY" benchmarks/kernel_report.py --archs 90 --jobs 16 \
    --json "$OUT_DIR/kernel_report.json" --md "$OUT_DIR/kernel_report.md"
fi

if run_part kernels; then
# 1. CUDA tests: kernels vs the float64 reference, every dtype and flag, NaN-poisoned buffers,
#    every autotune config, and a > 2^31-element case for 64-bit offsets. pytest-xdist (in the
#    GPU image) spreads the tests, and so their kernel compiles, over 8 processes.
XDIST=()
"$PY" -c "import xdist" 2> /dev/null && XDIST=(-n 8)
step test_cuda 150 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider \
    ${XDIST[@]+"${XDIST[@]}"} --durations=20 --junitxml "$OUT_DIR/test_cuda.xml"

# 2. Issue 10's targets first: B x H = 65536 and 16384 at T = 1024, the long rows B=4 T=32768
#    H=1024 and B=1 T=100000 H=256; "auto", "sequential" and "chunked" side by side (whether
#    "auto" is within 10 % of the better of the two is in bench_op.md's notes), fp32 and bf16.
#    The tiles column names the configs the autotuners picked per case.
step bench_op_targets 150 "$PY" benchmarks/bench_op.py --preset gpu_targets --threads 0 \
    --methods fused fused_sequential fused_chunked --no-plots --out "$OUT_DIR/targets"

# 3. Fixed per-call cost on a tiny input (B=1, T=16, H=64), wrapper vs launches, both methods.
step bench_overhead 40 "$PY" benchmarks/bench_overhead.py --threads 0 --budget 0.5 \
    --out "$OUT_DIR"

# 4. The rest of the grid, B x H up to 262144 and T up to 4096 (the naive loops' rows are in
#    the committed H200 results): for the roofline plot, the auto thresholds and which configs
#    never win (to prune the list). The thresholds of both grids together, afterwards on any
#    machine: python benchmarks/bench_op.py --notes OUT/bench_op.json OUT/targets/bench_op.json
step bench_op 150 "$PY" benchmarks/bench_op.py --preset gpu --threads 0 \
    --methods fused fused_sequential fused_chunked --out "$OUT_DIR"

fi

if run_part layers; then
# 5. The layer: IndRNN vs cuDNN nn.RNN(relu), GRU, LSTM, 1 and 2 layers, T 256..4096.
step bench_layer 90 "$PY" benchmarks/bench_layer.py --threads 0 --out "$OUT_DIR"

# 6. The fused projection (issue 11): one layer, bf16 and fp32, B=64 T=1024 I=H=512 (and where
#    it may lose), unfused IndRNN vs fused vs cuDNN; forward alone, then forward+backward.
step bench_fused_fwd 60 "$PY" benchmarks/bench_layer.py --threads 0 --grid fused --layers 1 \
    --dtypes float32 bfloat16 --models indrnn_fused rnn_relu gru lstm --forward-only \
    --no-plots --out "$OUT_DIR/fused_fwd"
step bench_fused 60 "$PY" benchmarks/bench_layer.py --threads 0 --grid fused --layers 1 \
    --dtypes float32 bfloat16 --models indrnn_fused rnn_relu gru lstm --no-plots \
    --out "$OUT_DIR/fused"

# 7. Peak memory, training and no_grad: the fused layer allocates no (T, B, H) pre buffer.
step bench_memory 60 "$PY" benchmarks/bench_memory.py --out "$OUT_DIR/memory.json"
fi

if run_part adding; then
# 8. The adding problem at T = 5000 (issue 13): the authors' recipe, reproduce_adding's defaults;
#    the earlier H200 run took 171 s for 10000 steps.
step adding_5000 480 "$PY" benchmarks/reproduce_adding.py --lengths 5000 --max-steps 20000 \
    --out "$OUT_DIR/adding"
fi

echo "total $((SECONDS - START))s" | tee -a "$OUT_DIR/summary.txt"
cat "$OUT_DIR/summary.txt"
