#!/usr/bin/env bash
# Create .venv and install flexorch-provider with the pinned constraints. Idempotent: a
# second run with unchanged pyproject.toml and constraints returns at once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLEXORCH_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

STAMP="$VENV/.flexorch-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints/constraints-3.11.txt" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/flexorch" ]]; then
    exit 0
fi

echo "==> installing flexorch-provider into $VENV (about a minute on a fresh machine)" >&2
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -c "$ROOT/constraints/constraints-3.11.txt" -e "$ROOT[test,postgres]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
# dag-factory (bench/parse_specs.py's baseline) registers an Airflow plugin that every airflow command
# would load, with deprecation warnings: it stays out of .venv, in a folder only that bench reads
"$VENV/bin/python" -m pip uninstall -q -y dag-factory >/dev/null 2>&1 || true
rm -rf "$ROOT/.bench-deps"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --target "$ROOT/.bench-deps" \
    "dag-factory==$(sed -n 's/^dag-factory==//p' "$ROOT/constraints/constraints-3.11.txt")" 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$VENV/bin/python" -c "import flexorch_provider, airflow" # fail loudly if the install did not work
echo "$WANT" > "$STAMP"
