#!/usr/bin/env bash
# The demo: install flexorch-provider, start a local Airflow (SQLite, LocalExecutor) whose
# DAGs come from spec_examples/, run the hello-local example end to end with its log in
# this terminal, then keep Airflow up for you to explore. Ctrl-C stops everything.
# Extra arguments go to `flexorch up` (e.g. --port 8081, --exit-after-run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
echo "==> flexorch validate spec_examples/"
.venv/bin/flexorch validate -q spec_examples/
exec .venv/bin/flexorch up --specs spec_examples --home "${FLEXORCH_DEMO_HOME:-$ROOT/.demo}" --run hello-local "$@"
