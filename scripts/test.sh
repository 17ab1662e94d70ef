#!/usr/bin/env bash
# Install vitcli with its test extras (CPU torch first, never the CUDA wheels) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0" || python3 -m pip install -q "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
python3 -m pip install -q -e ".[dev]"
python3 -m pytest -q "$@"
