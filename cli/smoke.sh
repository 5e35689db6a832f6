#!/usr/bin/env bash
# The CPU smoke run: the whole pipeline in seconds (what `make smoke` and CI use).
#   bash cli/smoke.sh [overrides...]
set -euo pipefail
REGX=${REGX:-$(dirname "$0")/../.venv/bin/regx}
exec "$REGX" train debug=smoke "$@"
