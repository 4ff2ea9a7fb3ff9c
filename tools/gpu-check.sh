#!/usr/bin/env bash
# The GPU check (issue 12): the bench on the GPU at batch 64 and 512 (at 512 also train()'s settings grid: bf16,
# channels_last and torch.compile, which train()'s CUDA defaults should follow), then every lesson and solution in default mode
# (not COURSE_FAST) under nbval, each notebook in its own pytest run with its wall-clock time. Prints a Markdown
# table for the README and writes it to $OUT (default /tmp/gpu-check): bench.txt, table.md, and failures.log with the
# log of every notebook that failed (few files, so that a remote run can bring them all back).
#
#   tools/gpu-check.sh                      # python3 from PATH; course_lib importable (installed, or PYTHONPATH=.)
#   PYTHON=.venv/bin/python JOBS=4 tools/gpu-check.sh
#
# JOBS notebooks run at once (default 1: clean per-notebook times; more shares the GPU and the CPU cores, so the
# times are upper bounds). Fails without a CUDA GPU rather than silently measuring the CPU; ALLOW_CPU=1 skips that
# check (only to try this script itself, e.g. ALLOW_CPU=1 COURSE_FAST=1 BATCHES=8 DDPM_STEPS=20). `make test-gpu` runs it
# with the course's venv.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-1}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
rm -f "$OUT/failures.log"
if [ "${ALLOW_CPU:-0}" != 1 ]; then
  unset COURSE_FAST   # the check measures the default mode
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA GPU visible to torch')" || exit 1
  device=cuda
else
  device=cpu
fi
{
  "$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  for batch in ${BATCHES-64 512}; do
    echo "== bench, batch $batch"
    grid=""
    if [ "$batch" -ge 512 ] && [ "${GRID:-1}" = 1 ]; then grid=--grid; fi   # GRID=0 skips the settings grid
    "$PYTHON" -m course_lib.bench --device "$device" --batch "$batch" --sample-batch "$batch" \
      --ddpm-steps "${DDPM_STEPS:-1000}" $grid 2>&1
  done
} | tee "$OUT/bench.txt"

run_one() {  # one notebook under nbval in default mode: prints "path|passed or FAILED|seconds"
  nb=$1
  log=$(mktemp)
  start=$(date +%s)
  if "$PYTHON" -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
       --nbval-sanitize-with tests/nbval_sanitize.cfg "$nb" > "$log" 2>&1; then result=passed; else result=FAILED; fi
  seconds=$(( $(date +%s) - start ))
  if [ "$result" = FAILED ]; then
    { echo "===== $nb"; cat "$log"; } >> "$OUT/failures.log"   # appends of a few kB from parallel jobs: whole lines
  fi
  rm -f "$log"
  echo "$nb|$result|$seconds"
}
export -f run_one
export PYTHON OUT
results=$(ls notebooks/*.ipynb solutions/*.ipynb | xargs -P "$JOBS" -I{} bash -c 'run_one {}' | sort)
{
  echo "| notebook | nbval, default mode | seconds |"
  echo "|---|---|---|"
  echo "$results" | awk -F'|' '{printf "| %s | %s | %s |\n", $1, $2, $3}'
} | tee "$OUT/table.md"
! echo "$results" | grep -q "|FAILED|"
