#!/usr/bin/env bash
# Install everything into ./.venv, then lint, type-check and run the whole test suite
# against the real PostgreSQL, Redis, Kafka-compatible broker and Debezium engine.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[all]'
bash scripts/services.sh
.venv/bin/ruff check src tests
.venv/bin/mypy
.venv/bin/lint-imports
exec .venv/bin/pytest -q "$@"
