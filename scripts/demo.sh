#!/usr/bin/env bash
# The demo: install flexorch-provider, start a local Airflow (LocalExecutor, its own PostgreSQL)
# whose DAGs come from spec_examples/, and, where this machine allows (root, Debian), an ssh fleet
# and a one-node Slurm with fake GPUs beside it. Runs hello-local, hello-ssh and hello-slurm end
# to end with their logs in this terminal, then keeps everything up for you to explore; DAGs
# whose targets this machine does not have stay paused. Ctrl-C stops all of it.
# Extra arguments go to `flexorch up` (e.g. --port 8081, --exit-after-run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
targets=()
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    bash scripts/system-deps.sh  # sshd, Slurm, munge, PostgreSQL (installs only what is missing)
    targets=(--demo-targets)
else
    echo "==> not root on Debian: the demo runs the local target only (ssh and Slurm DAGs stay paused)" >&2
fi
echo "==> flexorch validate spec_examples/"
.venv/bin/flexorch validate -q spec_examples/
exec .venv/bin/flexorch up --specs spec_examples --home "${FLEXORCH_DEMO_HOME:-$ROOT/.demo}" "${targets[@]}" \
    --run hello-local --run hello-ssh --run hello-slurm "$@"
