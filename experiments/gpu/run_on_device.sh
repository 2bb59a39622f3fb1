#!/usr/bin/env bash
# The benchmark on a lent GPU (the `device` tool's machine: jax and flax there, no
# network). Prepare here first: `bash ../shared/device/wheels.sh` fills .whl/; then
#   run(command="bash experiments/gpu/run_on_device.sh", carry=[".whl"], timeout_s=420)
# BUDGET (seconds, default 300) bounds the benchmark, compiles included; its tables
# come back under $OUT/gpu (check, kernels, mfu, longest: .md and .csv each).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 experiments/gpu_benchmark.py --budget_s="${BUDGET:-300}" --out="${OUT:-/tmp}/gpu" \
  2>&1 | grep -v '^[IW][0-9]'
