# Create or refresh the book's virtual environment (.venv) and activate it.
#   source tools/env.sh          # what reading/building the book needs
#   source tools/env.sh test     # ... plus the test tools and a headless Chromium
# Re-installs only when a requirements file changed (their hash is kept in .venv).
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_kind="${1:-book}"
_req="$_root/requirements.txt"
[ "$_kind" = test ] && _req="$_root/requirements-test.txt"

if [ ! -x "$_root/.venv/bin/python" ]; then
    # torch==2.13.0's CPU wheel is built for Python 3.11: prefer it when present.
    _py="$(command -v python3.11 || command -v python3)"
    echo "[env] creating .venv with $($_py --version)"
    "$_py" -m venv "$_root/.venv"
    "$_root/.venv/bin/python" -m pip install --quiet --upgrade pip "setuptools>=68" wheel
fi
# shellcheck disable=SC1091
source "$_root/.venv/bin/activate"

_want="$(cat "$_root/requirements.txt" "$_req" "$_root/pyproject.toml" | sha256sum | cut -c1-16)-$_kind"
_have="$(cat "$_root/.venv/.installed-$_kind" 2>/dev/null || true)"
if [ "$_want" != "$_have" ]; then
    echo "[env] installing $(basename "$_req") into .venv (first time: a few minutes)"
    python -m pip install --quiet --disable-pip-version-check -r "$_req"
    python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$_root"
    echo "$_want" > "$_root/.venv/.installed-$_kind"
fi

if [ "$_kind" = test ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[env] installing Debian's chromium for the browser check"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "[env] the browser check needs Chromium: install Debian's 'chromium' package (sudo apt-get install chromium)" >&2
        exit 1
    fi
fi
# The website's JavaScript (MathJax, require.js, the widget manager, d3, jQuery): fetched
# once from the npm registry, then served by the site itself.
python "$_root/tools/vendor_js.py"
# Idle OpenMP threads spin by default; with two notebooks sharing two cores (the test run's
# nbval -n 2), the spinning made each one several times slower. Passive waiting gives the core
# back. The website's build runs one notebook at a time and keeps OpenMP's default, so that its
# pages show what the machine does for a reader (chapter 8 measures the difference).
if [ "$_kind" = test ]; then
    export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
fi
unset _root _kind _req _want _have _py
set +euo pipefail
