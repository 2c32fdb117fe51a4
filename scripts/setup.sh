#!/usr/bin/env bash
# Install everything this repository needs into the active Python environment:
# the CPU build of torch 2.13.0 (pinned, so pip never pulls a CUDA torch), this package
# (editable, with test extras) and the HEAR toolchain used by hear-validator and evaluation/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
echo "torch==2.13.0" > /tmp/hear-mwmae-torch-pin.txt
"$PY" -m pip install --quiet --disable-pip-version-check -c /tmp/hear-mwmae-torch-pin.txt -e ".[test]"
PYTHON="$PY" bash evaluation/install.sh
"$PY" -c "import torch, hear_mwmae; print('hear-mwmae', hear_mwmae.__version__, 'with torch', torch.__version__)"
