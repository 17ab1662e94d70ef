#!/usr/bin/env bash
# Install vitcli with its test extras (CPU torch first, never the CUDA wheels) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VITCLI_EXTRAS="[dev]" source scripts/install.sh
python3 -m pytest -q "$@"
