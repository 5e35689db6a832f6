#!/usr/bin/env bash
# Before a short time on a borrowed GPU machine (#32): put what cli/gpu_check.sh needs there and the
# machine lacks into ignored folders of this checkout, so that one call does everything.
#   .whl/                  hydra-core, omegaconf and antlr4-python3-runtime as wheels (pure Python;
#                          the machine's image has torch, torchvision, pytest, rich and matplotlib)
#   outputs/jpegs-fmnist/  2,048 Fashion-MNIST training images as 256-px JPEGs in class folders, for
#                          the decoders' benchmark (the machine has no Fashion-MNIST and no network)
#   outputs/fmnist-idx/    Debian's Fashion-MNIST IDX files (30 MB), for section 11: Fashion-MNIST to 93%
# Then it prints the call: carry the three folders, install the wheels into /tmp/site, run gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
rm -rf .whl
# the versions this checkout's .venv runs; antlr4-python3-runtime 4.9.3 is published as a source archive
# only, so pip builds its wheel here
for pkg in hydra-core omegaconf antlr4-python3-runtime; do
  version=$("$PY" -c "from importlib.metadata import version; print(version('$pkg'))")
  "$PY" -m pip wheel -q --no-deps -w .whl "$pkg==$version"
done
if [ ! -d outputs/jpegs-fmnist ]; then
  "$PY" -c "from pathlib import Path; from benchmarks.decode import write_jpegs; print(write_jpegs(Path('outputs/jpegs-fmnist'), 2048))"
fi
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -d outputs/fmnist-idx ]; then
  [ -f "$FMNIST/train-images-idx3-ubyte.gz" ] || { echo "gpu_prepare: $FMNIST is missing: apt-get install dataset-fashion-mnist" >&2; exit 1; }
  mkdir -p outputs/fmnist-idx && cp "$FMNIST"/*-ubyte.gz outputs/fmnist-idx/
fi
du -sh .whl outputs/jpegs-fmnist outputs/fmnist-idx
cat <<'EOF'
On the GPU machine, one call (carry: [".whl", "outputs/jpegs-fmnist", "outputs/fmnist-idx"], timeout_s 580;
REGX_GPU_BUDGET ends the steps inside it, each part of the benchmark saved as it finishes):
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; REGX_GPU_BUDGET=545 REGX_JPEGS=outputs/jpegs-fmnist REGX_FMNIST=outputs/fmnist-idx bash cli/gpu_check.sh
Its files come back from $OUT: copy bench-cuda.json here, regenerate BENCHMARKS.md (make docs does not;
see gpu_check.sh's head) and commit both with the logs' figures.
EOF
