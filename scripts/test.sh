#!/usr/bin/env bash
# Set everything up, then run the whole test suite (what .ci/run runs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/setup-test-jdks.sh
./scripts/setup-test-node.sh
./scripts/setup-test-servers.sh
exec .venv/bin/python -m pytest -ra "$@"
