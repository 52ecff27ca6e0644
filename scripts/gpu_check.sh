#!/usr/bin/env bash
# Every GPU measurement of the unified-loop issue in one go, at most 8 minutes on one H200:
#   1. the compiled Triton kernels' correctness tests (TRITON_INTERPRET unset; the CUDA and Triton cases);
#   2. W3, the spike matmul (scripts/bench_spike_matmul.py --device cuda);
#   3. W1, W1-FF (against SpikingJelly) and W2 with the largest T in 4 GiB (scripts/bench_unified.py --device cuda).
# It writes the GPU sections of docs/benchmarks/ (spike_matmul.md, unified_loop.md and unified_loop_cuda.json)
# and docs/benchmarks/gpu_check.md (what ran, how long, and each step's outcome). Without a CUDA GPU it
# fails at once and writes nothing.
#
#   bash scripts/gpu_check.sh                   # python: $PYTHON, else .venv/bin/python, else python3
#   GPU_CHECK_DOCS=/some/dir bash scripts/gpu_check.sh   # write the docs elsewhere (default docs/benchmarks)
#
# Needs ipu_snn's dependencies (pydantic, pyyaml, rich, h5py, safetensors, matplotlib, ninja) and pytest with
# hypothesis; snntorch and spikingjelly are optional (their contenders are reported as skipped without them).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DOCS=${GPU_CHECK_DOCS:-docs/benchmarks}
LOGS=${GPU_CHECK_LOGS:-runs/gpu_check}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the compiled kernels, not the interpreter

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: FAILED: $PY's torch sees no CUDA GPU on this machine; nothing was measured and no doc" \
         "was written" >&2
    exit 1
fi
missing=$("$PY" - <<'EOF'
import importlib.util
need = ["pydantic", "yaml", "rich", "h5py", "safetensors", "matplotlib", "ninja", "pytest", "hypothesis", "triton"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_check.sh: FAILED: missing Python packages: $missing (pip install -e '.[test]' triton)" >&2
    exit 1
fi
mkdir -p "$DOCS" "$LOGS"

START=$SECONDS
declare -a ROWS=()
STATUS=0
# step NAME SECONDS COMMAND...: run with a hard time limit, its output to $LOGS/NAME.log and the console
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): $*"
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local rc=${PIPESTATUS[0]}
    local last
    last=$(grep -v '^\s*$' "$LOGS/$name.log" | tail -n 1 | tr '|' '/' | cut -c1-200)
    [ "$rc" -eq 124 ] && last="killed at its ${limit} s limit; $last"
    echo "== $name: exit $rc after $((SECONDS - began)) s"
    ROWS+=("| $name | $rc | $((SECONDS - began)) | \`$*\` | $last |")
    [ "$rc" -eq 0 ] || STATUS=1
}

# the files that hold the kernels' CUDA and Triton cases (each against a reference); -k keeps those cases
step triton_tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/unit/test_neuron_kernels.py tests/unit/test_spike_ops.py \
    tests/unit/test_products.py tests/unit/test_window.py tests/unit/test_bptt_engine.py -k "cuda or triton or gpu"
step spike_matmul 90 "$PY" scripts/bench_spike_matmul.py --device cuda --out "$LOGS/spike_matmul" \
    --doc "$DOCS/spike_matmul.md"
step unified 220 "$PY" scripts/bench_unified.py --device cuda --budget-s 170 --job-timeout 100 \
    --max-t-seconds 40 --out "$DOCS" --logs "$LOGS/unified"

{
    echo "# GPU check"
    echo
    echo "Made by \`scripts/gpu_check.sh\`: the compiled Triton kernels' tests and every GPU benchmark of the"
    echo "unified-loop issue. The numbers are in [unified_loop.md](unified_loop.md) (CUDA section) and"
    echo "[spike_matmul.md](spike_matmul.md); this page says what ran and how it ended."
    echo
    echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
        || "$PY" -c 'import torch; print(torch.cuda.get_device_name())')"
    echo "- $("$PY" -c 'import torch, triton, platform; print(f"torch {torch.__version__}, Triton {triton.__version__}, Python {platform.python_version()}")')"
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); total $((SECONDS - START)) s"
    echo
    echo "| step | exit | seconds | command | last line |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} > "$DOCS/gpu_check.md"
echo "gpu_check.sh: $((SECONDS - START)) s in all; $DOCS/gpu_check.md written; exit $STATUS"
exit $STATUS
