#!/usr/bin/env bash
# The one test command: installs what the suite needs, then runs every test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -k gpu).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
bash scripts/system-deps.sh
# GPU tests need a real NVIDIA GPU; they are selected only with -m gpu on such a machine.
exec .venv/bin/python -m pytest -m "not gpu" "$@"
