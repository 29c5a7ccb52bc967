#!/usr/bin/env bash
# The one test command: installs what the suite needs, checks the code (ruff, mypy), then runs
# every test. Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -k gpu).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
bash scripts/system-deps.sh
echo "==> ruff check" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check flexorch_provider tests bench dags
echo "==> mypy (settings in pyproject.toml)" >&2
.venv/bin/mypy
# GPU tests need a real NVIDIA GPU: pyproject's addopts deselect them (-m "not gpu"); run them
# with `.venv/bin/python -m pytest -m gpu` on such a machine.
exec .venv/bin/python -m pytest "$@"
