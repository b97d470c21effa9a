#!/usr/bin/env bash
# GPU check for imagegen (issue #21), one table at the end. Meant to finish in <= 8 minutes on one GPU:
#   the GPU test subset (pytest -m gpu); the shipped model in float16/bfloat16 vs float32 (oracle scores within 2
#   points); xformers vs SDPA (max |diff|, speed, calls); torch.compile of the U-Net (speed-up after warm-up; a LoRA hot
#   swap must not recompile); the full-size random Kandinsky 2.2 at 512x512 and 768x768, 25+25 steps, batch 1 and 4
#   against diffusers on the same weights. Each step is benchmarks/gpu_check.py STEP and checks for CUDA itself.
# Without CUDA every GPU row reads "skipped: no CUDA", and the steps' own code runs once at toy size on the CPU
# ("cpu smoke" rows) so the script is checked end to end here; no GPU number is ever estimated.
#
#   bash benchmarks/gpu_check.sh            (PYTHON=... to choose the interpreter; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
export HF_HUB_OFFLINE=1
ROWS=$(mktemp -t gpu_check_rows.XXXXXX)
LOG=$(mktemp -t gpu_check_log.XXXXXX)
trap 'rm -f "$ROWS" "$LOG"' EXIT
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET:-470}  # seconds for everything: the whole check stays under 8 minutes

row() {  # row STEP WHAT VALUE VERDICT
    "$PY" benchmarks/gpu_check.py row --rows "$ROWS" --as-step "$1" --what "$2" --value "$3" --verdict "$4" >/dev/null
}

step() {  # step SECONDS ARGS...: one gpu_check.py step, capped by its limit and by what is left of the budget
    local limit=$1 rc=0 left=$((BUDGET - (SECONDS - START)))
    shift
    if [ "$left" -lt 15 ]; then
        row "$1" "not run" "the ${BUDGET} s budget is spent" "FAIL: out of time"
        return
    fi
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    timeout "$limit" "$PY" benchmarks/gpu_check.py "$@" --rows "$ROWS" >>"$LOG" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        local why="exit status $rc"
        if [ "$rc" -eq 124 ]; then why="timed out after ${limit} s"; fi
        row "$1" "step did not finish" "$why" FAIL
    fi
}

HAS_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')

step 30 env

# 1. the GPU test subset
rc=0
timeout 75 "$PY" -m pytest -q -m gpu tests/test_gpu.py -rs >"$LOG.pytest" 2>&1 || rc=$?
summary=$(tail -n 1 "$LOG.pytest" | tr -d '=' | sed 's/^ *//; s/ *$//')
if [ "$HAS_CUDA" = 1 ]; then
    verdict=$([ "$rc" -eq 0 ] && echo ok || echo "FAIL (rc $rc)")
else
    verdict="skipped: no CUDA"
fi
row tests "pytest -m gpu" "$summary" "$verdict"
cat "$LOG.pytest" >>"$LOG"
rm -f "$LOG.pytest"

# 2-5. the GPU steps (each writes "skipped: no CUDA" without CUDA)
step 100 build
step 90 precision
step 50 attention
step 90 compile
step 120 full

# without CUDA: the same steps' code at toy size on the CPU
if [ "$HAS_CUDA" != 1 ]; then
    for s in build full compile precision; do
        step 120 "$s" --device cpu --smoke
    done
fi

echo "---- step log (last lines) ----"
tail -n 15 "$LOG"
echo "---- gpu_check ----"
rc=0
"$PY" benchmarks/gpu_check.py table --rows "$ROWS" --seconds $((SECONDS - START)) || rc=$?
exit "$rc"
