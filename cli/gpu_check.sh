#!/usr/bin/env bash
# The GPU checks as one script (#7). Run it on a CUDA machine from the repository root, with regx's
# dependencies importable: `pip install -e '.[dev]'`, or wheels on PYTHONPATH (an image that has torch
# usually lacks hydra-core==1.3.8, omegaconf==2.3.1 and antlr4-python3-runtime==4.9.3, all pure Python).
#
# Writes five files under ${OUT:-gpu-out}/ (a borrowed machine hands back at most 8):
#   gpu.txt          the card, its memory and driver
#   steps.txt        each step's exit status and seconds
#   log.txt          every step's output, each under a "== step ==" line:
#     tests          tests/test_gpu.py: a CUDA run end to end, the sync-free augmentation against the CPU
#                    path, NaN and SIGTERM on the GPU, compile with CUDA graphs, compile_aug against eager,
#                    no host sync inside a step, background checkpoints of CUDA tensors, JPEGs decoded
#                    on the GPU against Pillow
#     ddp            2-process nccl DDP (only with two GPUs)
#     fmnist         python -m benchmarks.bench --device cuda --fmnist DIR (section 11: Fashion-MNIST to 93%,
#                    from REGX_FMNIST's IDX files; skipped without them)
#     decode         ... --decode (section 9)
#     bench          python -m benchmarks.bench --device cuda (the rest, keeping sections 7 to 11)
#     checkpoint     ... --checkpoint (section 10)
#     compile_aug    ... --compile-aug (section 8)
#   bench-cuda.json, BENCHMARKS.md   the benchmark's record, each section added as it finishes
# REGX_GPU_BUDGET=SECONDS: end within that many seconds (a borrowed machine's call has a limit). The steps run
# in order of worth to #32 (tests, then its goal figures), each under `timeout` with its own cap and what is
# left of the budget; a step with under 30 s left is skipped. The benchmark saves each part as it finishes, so
# a step stopped at its cap keeps what it measured (BENCHMARKS.md then says it stopped before its end).
# Then copy bench-cuda.json into the repository and regenerate BENCHMARKS.md there (the copy in $OUT has
# no CPU section): python -c "from pathlib import Path; from benchmarks.bench import write_markdown;
# write_markdown(Path('.'))". cli/gpu_prepare.sh readies a borrowed machine's single call.
# Every step runs even if one before it failed; the exit status is the number of failed steps.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
# An absolute path: the tests and the benchmark start regx in other working directories.
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
# A GPU image may have python3 and no python (or a python without torch).
PY=$(command -v python3 || command -v python)
failed=0
deadline=$((SECONDS + ${REGX_GPU_BUDGET:-86400}))
# step NAME CAP CMD...: runs CMD for at most CAP seconds (and what is left of the budget), its output added to
# $OUT/log.txt, and its exit status and seconds to $OUT/steps.txt (what each part costs on the device: the
# next borrowed machine's call is planned from it); exit 124 there: stopped at its cap
step() {
  local name=$1 cap=$2 t0=$SECONDS rc
  shift 2
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "$name: skipped, ${left} s of the budget left" | tee -a "$OUT/steps.txt"
    failed=$((failed + 1))
    return
  fi
  [ "$cap" -le "$left" ] || cap=$left
  echo "== $name (at most $cap s) ==" >>"$OUT/log.txt"
  timeout --kill-after=10 "$cap" "$@" 2>&1 | tee -a "$OUT/log.txt"
  rc=${PIPESTATUS[0]}
  echo "$name: exit $rc, $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || failed=$((failed + 1))
step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py -rA
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  step ddp 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m regx train debug=smoke device=auto \
    hydra.run.dir=/tmp/regx-ddp
fi
# #32's goal figures next, each part adding to the committed record copied to $OUT
cp bench-cuda.json "$OUT/" 2>/dev/null || true
# section 11: Fashion-MNIST to 93% test accuracy from the command to the summary (#32's goal: < 12 s)
if [ -n "${REGX_FMNIST:-}" ]; then
  step fmnist 150 "$PY" -m benchmarks.bench --device cuda --out "$OUT" --fmnist "$REGX_FMNIST"
fi
# section 9: an image folder's decoders and a resnet18 epoch at 224 px each; REGX_JPEGS: a folder of real
# JPEGs to read (a GPU machine has no Fashion-MNIST: cli/gpu_prepare.sh writes them to carry), else the
# embedded shapes are written as JPEGs there
step decode 120 "$PY" -m benchmarks.bench --device cuda --out "$OUT" --decode ${REGX_JPEGS:+--jpegs "$REGX_JPEGS"}
# the whole benchmark (it keeps sections 7 to 11): the engine against a hand loop, whole epochs and start-up
# first, then the defaults' measurements
step bench 1800 "$PY" -m benchmarks.bench --device cuda --out "$OUT"
# section 10: how long a checkpoint stops training, written in the foreground and in the background
step checkpoint 90 "$PY" -m benchmarks.bench --device cuda --out "$OUT" --checkpoint
# section 8, compile_aug against eager, each aug option (inductor compiles each: minutes)
step compile_aug 600 "$PY" -m benchmarks.bench --device cuda --out "$OUT" --compile-aug
echo "gpu_check: $failed step(s) failed"
exit "$failed"
