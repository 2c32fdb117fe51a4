#!/usr/bin/env bash
# Install the HEAR 2021 evaluation toolchain (heareval, hearvalidator and what they need)
# into the active Python environment (venv or conda), pinned by constraints.txt.
#
#   bash evaluation/install.sh            # uses `python` (else `python3`) from PATH
#   PYTHON=/path/to/python bash evaluation/install.sh
#
# Never replaces the installed torch: the installed version is added to the constraints.
# Idempotent and non-interactive; returns in about a second when everything is in place.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
CONSTRAINTS="$HERE/constraints.txt"
REQUIREMENTS="$HERE/requirements.txt"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "[evaluation/install.sh] $*" >&2; }

if ! TORCH_VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null)"; then
    say "error: torch is not installed for '$PYTHON'."
    say "Install torch first (for example: pip install torch, or pip install -e . at the repo root)."
    exit 1
fi

# Fast path: every line of constraints.txt is already met by an installed package.
if "$PYTHON" - "$CONSTRAINTS" 2>/dev/null <<'EOF'
import importlib.metadata as md
import sys

from packaging.requirements import Requirement  # present once the toolchain is installed

for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        req = Requirement(line)
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            sys.exit(1)
        if not req.specifier.contains(version, prereleases=True):
            sys.exit(1)
EOF
then
    say "HEAR toolchain already installed (torch $TORCH_VERSION kept)."
    exit 0
fi

say "installing the HEAR toolchain, keeping torch $TORCH_VERSION ..."
# torch==<installed> as one more requirement keeps pip from replacing it (no temporary file).
"$PYTHON" -m pip install -c "$CONSTRAINTS" -r "$REQUIREMENTS" "torch==$TORCH_VERSION"
# Their declared pins (numpy==1.19.2, numba==0.48, spotty) do not install on current
# Python and are not needed at run time: install the two packages alone.
"$PYTHON" -m pip install --no-deps -c "$CONSTRAINTS" heareval hearvalidator

if ! "$PYTHON" -c 'import heareval.predictions.task_predictions, hearvalidator.validate' > /dev/null 2>&1; then
    say "error: the toolchain was installed but does not import; run:"
    say "  $PYTHON -c 'import heareval.predictions.task_predictions, hearvalidator.validate'"
    exit 1
fi
AFTER="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))')"
if [ "$AFTER" != "$TORCH_VERSION" ]; then
    say "error: torch changed from $TORCH_VERSION to $AFTER"
    exit 1
fi
say "done: heareval, hearvalidator and their dependencies are installed (torch $TORCH_VERSION kept)."
