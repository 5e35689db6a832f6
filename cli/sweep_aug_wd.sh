#!/usr/bin/env bash
# Augmentation x weight decay on the embedded data, then one line per run.
#   bash cli/sweep_aug_wd.sh [extra overrides...]     e.g. debug=smoke for a quick look
set -uo pipefail
REGX=${REGX:-$(dirname "$0")/../.venv/bin/regx}
PY=${PY:-$(dirname "$0")/../.venv/bin/python}
"$REGX" train -m aug=none,flip_rotate wd=0,1e-4,1e-3 data.train_size=2000 "$@"
status=$?
sweep=$(ls -td outputs/sweeps/*/ | head -n 1)
"$PY" - "$sweep" <<'PY'
import json, sys
from pathlib import Path
print(f"{'job':<60} {'status':<10} {'best val':>9} {'test':>7}")
for s in sorted(Path(sys.argv[1]).glob("*/summary.json")):
    d = json.loads(s.read_text())
    fmt = lambda v: "-" if v is None else f"{100 * v:.2f}%"
    print(f"{s.parent.name:<60} {d['status']:<10} {fmt(d.get('best_val_acc')):>9} {fmt(d.get('test_acc')):>7}")
PY
exit $status
