#!/usr/bin/env bash
# The rules the tools enforce (settings in pyproject.toml): ruff (style, bugs, imports, upgrades),
# mypy (engine with engine/records, scenarios, and cbtui: the UI, the CLI and the bench; not
# tests/ or scripts/) and import-linter (the layer contracts: the engine has no UI,
# engine.records has no torch, widgets read records only, cbtui's folders are layers, cbtui.run
# has no Textual, no import circles inside engine.plugins or engine.records). Fails on any finding.
# The code base is not reformatted: `ruff format` is not part of this.
#
#   bash scripts/lint.sh             # with ruff, mypy and lint-imports on PATH (pip install -e ".[lint]")
#   PYTHON=.venv/bin/python bash scripts/lint.sh   # the tools of that interpreter's environment
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
status=0
run() {
    echo "== $*"
    "$@" || status=1
}
run "$PY" -m ruff check .
run "$PY" -m mypy  # the targets are `files` in [tool.mypy]
# lint-imports has no `python -m` entry point: the one installed beside the interpreter, else PATH
LINT_IMPORTS="$(dirname "$(command -v "$PY")")/lint-imports"
[[ -x "$LINT_IMPORTS" ]] || LINT_IMPORTS=lint-imports
run "$LINT_IMPORTS"
exit $status
