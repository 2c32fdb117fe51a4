#!/usr/bin/env bash
# Install everything this repository needs into the active Python environment:
# the CPU build of torch 2.13.0 (pinned by scripts/torch-constraint.txt, so pip never pulls
# a CUDA torch), this package (editable, with test extras) and the HEAR toolchain used by
# hear-validator and evaluation/. Writes nothing outside the repository and the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIN=scripts/torch-constraint.txt
"$PY" -m pip install --quiet --disable-pip-version-check -c "$PIN" torch
"$PY" -m pip install --quiet --disable-pip-version-check -c "$PIN" -e ".[test]"
PYTHON="$PY" bash evaluation/install.sh
"$PY" -c "import torch, hear_mwmae; print('hear-mwmae', hear_mwmae.__version__, 'with torch', torch.__version__)"
