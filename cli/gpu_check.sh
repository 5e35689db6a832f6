#!/usr/bin/env bash
# The GPU checks as one script (#7): run on a CUDA machine from the repository root, with regx's
# dependencies importable (pip install -e '.[dev]', or the wheels a device session carries on
# PYTHONPATH). Writes everything under ${OUT:-gpu-out}/. Not yet run on a GPU: the first GPU session
# runs it, then commits bench-cuda.json and the regenerated BENCHMARKS.md.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=".:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# 1. a CUDA training run end to end, and the augmentation's sync-free path on the device
python -m regx train debug=smoke device=cuda epochs=2 hydra.run.dir="$OUT/smoke" 2>&1 | tail -20 | tee "$OUT/smoke.log"
python -m pytest -q -p no:cacheprovider tests/test_augment.py tests/test_bench.py -m "not slow" 2>&1 | tail -5 | tee "$OUT/tests.log"
python - <<'PY' 2>&1 | tee "$OUT/aug_cuda.log"
import torch
from regx import config
from regx.augment import Augment, apply
aug = Augment(config.compose(["aug=all"]).aug, torch.Generator(device="cuda").manual_seed(0))
x = torch.rand(256, 3, 32, 32, device="cuda")
p = aug.sample(256, (32, 32), "cuda")
a, b = apply(x.cpu(), type(p)(*[None if v is None else v.cpu() for v in p.__dict__.values()]), sync_free=False), apply(x, p)
print("max |cpu index path - cuda sync-free path|:", (a - b.cpu()).abs().max().item())
PY
# 2. DDP with nccl when there are two GPUs
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  python -m torch.distributed.run --standalone --nproc_per_node=2 -m regx train debug=smoke device=auto hydra.run.dir="$OUT/ddp" 2>&1 | tail -5
fi
# 3. the benchmark (bench-cuda.json, BENCHMARKS.md's GPU section)
python -m regx.bench --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench.log"
