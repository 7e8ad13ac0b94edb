#!/usr/bin/env bash
# Build the website into _build/html. Notebooks are executed on the CPU; executed notebooks
# are cached (_build/.jupyter_cache), so a rebuild re-runs only the notebooks that changed.
# Warnings are errors (-W -n): a broken reference or a failing cell fails the build.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh book
set -euo pipefail
# Pages that embed bertviz views point them at the JavaScript the site serves itself.
export TRANSFORMER_BOOK_JS_ROOT="../_static/vendor"
export MPLBACKEND=module://matplotlib_inline.backend_inline
start=$(date +%s)
jupyter-book build . --builder html -W -n --keep-going "$@"
echo "[build] website in _build/html/index.html ($(( $(date +%s) - start )) s)"
