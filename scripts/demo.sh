#!/usr/bin/env bash
# The demo: installs flexorch-provider, validates every example spec and shows what the
# local example would run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
echo "==> flexorch validate spec_examples/"
.venv/bin/flexorch validate spec_examples/
echo
echo "==> flexorch render spec_examples/hello-local.yaml"
.venv/bin/flexorch render spec_examples/hello-local.yaml
echo
echo "==> airflow providers list (flexorch is registered as a provider)"
AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.demo/airflow}" .venv/bin/airflow providers list 2>/dev/null | grep -E "package_name|flexorch"
