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
# Interactive views are precomputed over a grid of control values and switched by the site's
# own script (transformer_book.viz.widgets): a web page has no kernel behind it.
export TRANSFORMER_BOOK_WEBSITE=1
# No progress bars on the website: they are for someone waiting at a live notebook, and a
# finished widget bar leaves a blank gap on a static page.
export TQDM_DISABLE=1
# Figures as SVG (sharp on any screen): the notebooks' kernels read this IPython profile.
export IPYTHONDIR="$PWD/_build/ipython"
mkdir -p "$IPYTHONDIR/profile_default"
echo 'c.InlineBackend.figure_formats = {"svg"}' \
    > "$IPYTHONDIR/profile_default/ipython_kernel_config.py"
start=$(date +%s)
jupyter-book build . --builder html -W -n --keep-going "$@"
echo "[build] website in _build/html/index.html ($(( $(date +%s) - start )) s)"
