#!/usr/bin/env bash
# Rewrite constraints/constraints-3.11.txt from the current .venv (after a deliberate upgrade).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/constraints/constraints-3.11.txt"
{
    echo '# Pinned freeze for reproducible installs: pip install -c constraints/constraints-3.11.txt -e ".[test,bench,postgres]"'
    echo '# Regenerate: scripts/freeze-constraints.sh'
    "$ROOT/.venv/bin/python" -m pip freeze --disable-pip-version-check | grep -v -iE '^-e |flexorch'
} > "$OUT"
echo "wrote $OUT"
