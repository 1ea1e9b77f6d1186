#!/usr/bin/env bash
# One-shot GPU check (at most ~5 minutes on one GPU; it runs the acceptance test
# tests/gpu/gpu_check.py): losses on CUDA equal CPU (fp32) and stay finite under fp16/bf16
# autocast, training steps of every built-in backbone with AMP and channels-last, MC/CC speed against the softmax floor, train-step overhead, stream-mode
# throughput, and `chanloss train --nproc N` with NCCL when more than one GPU is present.
# Writes benchmarks/results/gpu_check_cuda.json (plus train_step_cuda.json, losses_cuda.json);
# `make report` shows them in the README. Without CUDA it says so and exits 0.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
# the whole check must end within 5 minutes; each section also has its own limits inside
exec timeout --signal=INT --kill-after=20 300 "$python" "$root/tests/gpu/gpu_check.py" "$@"
