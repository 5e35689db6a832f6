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
#                    no host sync inside a step, background checkpoints of CUDA tensors
#     ddp            2-process nccl DDP (only with two GPUs)
#     fmnist         python -m benchmarks.bench --device cuda --fmnist DIR (section 11: Fashion-MNIST to 93%,
#                    from REGX_FMNIST's IDX files; skipped without them)
#     checkpoint     ... --checkpoint (section 10)
#     decode         ... --decode (section 9)
#     compile_aug    ... --compile-aug (section 8)
#     bench          python -m benchmarks.bench --device cuda (the rest, keeping sections 7 to 11)
#   bench-cuda.json, BENCHMARKS.md   the benchmark's record, each section added as it finishes
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
# step NAME CMD...: runs CMD, its output added to $OUT/log.txt, and its exit status and seconds to
# $OUT/steps.txt (what each part costs on the device: the next borrowed machine's call is planned from it)
step() {
  local name=$1 t0=$SECONDS rc
  shift
  echo "== $name ==" >>"$OUT/log.txt"
  "$@" 2>&1 | tee -a "$OUT/log.txt"
  rc=${PIPESTATUS[0]}
  echo "$name: exit $rc, $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || failed=$((failed + 1))
step tests "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py -rA
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  step ddp "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m regx train debug=smoke device=auto \
    hydra.run.dir=/tmp/regx-ddp
fi
# The short sections first (a GPU's time is short), each adding to the committed record copied to $OUT
cp bench-cuda.json "$OUT/" 2>/dev/null || true
# section 11: Fashion-MNIST to 93% test accuracy from the command to the summary (#32's goal: < 12 s)
if [ -n "${REGX_FMNIST:-}" ]; then
  step fmnist "$PY" -m benchmarks.bench --device cuda --out "$OUT" --fmnist "$REGX_FMNIST"
fi
# section 10: how long a checkpoint stops training, written in the foreground and in the background
step checkpoint "$PY" -m benchmarks.bench --device cuda --out "$OUT" --checkpoint
# section 9: an image folder's decoders and a resnet18 epoch at 224 px each; REGX_JPEGS: a folder of real
# JPEGs to read (a GPU machine has no Fashion-MNIST: cli/gpu_prepare.sh writes them to carry), else the
# embedded shapes are written as JPEGs there
step decode "$PY" -m benchmarks.bench --device cuda --out "$OUT" --decode ${REGX_JPEGS:+--jpegs "$REGX_JPEGS"}
# section 8, compile_aug against eager, each aug option (inductor compiles each: minutes)
step compile_aug "$PY" -m benchmarks.bench --device cuda --out "$OUT" --compile-aug
# then the whole benchmark, which keeps sections 7 to 11
step bench "$PY" -m benchmarks.bench --device cuda --out "$OUT"
echo "gpu_check: $failed step(s) failed"
exit "$failed"
