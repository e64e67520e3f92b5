#!/usr/bin/env bash
# The one test command (README): lint, module-boundary contracts, launcher syntax, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m ruff check .
python3 -m ruff format --check .
lint-imports
for f in launch/*.sh launch/*.sbatch; do [ -e "$f" ] && bash -n "$f"; done
python3 -m pytest -q "$@"
