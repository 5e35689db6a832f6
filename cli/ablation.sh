#!/usr/bin/env bash
# The course's ablation on the embedded data: no regularization, each technique alone, all together,
# every run on the same small training subset (experiment=overfit), then one line per run.
#   bash cli/ablation.sh [extra overrides...]   e.g. debug=smoke data.train_size=100 epochs=2 for a quick look
set -uo pipefail
REGX=${REGX:-$(dirname "$0")/../.venv/bin/regx}
PY=${PY:-$(dirname "$0")/../.venv/bin/python}
out=outputs/ablations/$(date +%Y-%m-%d_%H-%M-%S)
failed=0
while read -r name overrides; do
  echo "== $name: $overrides"
  # shellcheck disable=SC2086
  "$REGX" train experiment=overfit $overrides "hydra.run.dir=$out/$name" name="$name" "$@" > /dev/null || failed=1
done <<'RUNS'
none          aug=none
augmentation  aug=all
dropout       dropout=fc
weight_decay  decay=l2 wd=5e-4
lr_decay      sched=cosine
all           aug=all dropout=fc decay=l2 wd=5e-4 sched=cosine
RUNS
"$PY" - "$out" <<'PY'
import json, sys
from pathlib import Path
fmt = lambda v: "-" if v is None else f"{100 * v:.1f}%"
print(f"\n{'run':<14} {'status':<10} {'train acc':>9} {'val acc':>8} {'best val':>9} {'test':>7} {'gap':>7}  verdict")
for name in ["none", "augmentation", "dropout", "weight_decay", "lr_decay", "all"]:
    p = Path(sys.argv[1]) / name / "summary.json"
    d = json.loads(p.read_text()) if p.is_file() else {"status": "missing"}
    tr, va = d.get("final_train_acc"), d.get("final_val_acc")
    gap = (d.get("evidence") or {}).get("gap")  # clean training accuracy - validation accuracy
    print(f"{name:<14} {d['status']:<10} {fmt(tr):>9} {fmt(va):>8} {fmt(d.get('best_val_acc')):>9} {fmt(d.get('test_acc')):>7} {fmt(gap):>7}  {d.get('verdict', '-')}")
print(f"\nruns in {sys.argv[1]}")
PY
exit $failed
