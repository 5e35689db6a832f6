#!/usr/bin/env bash
# The course's ablation on the embedded data's small training subset (experiment=overfit): the
# baseline, each technique alone, all together, 3 seeds each, as one table. Extra overrides pass on:
#   bash cli/ablation.sh debug=smoke epochs=2 --seeds 2      a quick look
exec "${REGX:-$(dirname "$0")/../.venv/bin/regx}" ablate experiment=overfit --seeds 3 "$@"
