#!/usr/bin/env bash
# Rewrite constraints/constraints-3.11.txt from the current .venv (after a deliberate upgrade).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/constraints/constraints-3.11.txt"
{
    echo '# Pinned freeze for reproducible installs: pip install -c constraints/constraints-3.11.txt -e ".[test,postgres]"'
    echo '# (dag-factory is the benchmarks'"'"' only: scripts/bootstrap.sh installs it into .bench-deps/, not .venv)'
    echo '# Regenerate: scripts/freeze-constraints.sh'
    {
        "$ROOT/.venv/bin/python" -m pip freeze --disable-pip-version-check | grep -v -iE '^-e |flexorch'
        "$ROOT/.venv/bin/python" -m pip freeze --disable-pip-version-check --path "$ROOT/.bench-deps"
    } | sort -f
} > "$OUT"
echo "wrote $OUT"
