#!/usr/bin/env bash
# A PDF of the whole book, _build/pdf/book.pdf: the built website's pages in the order of
# _toc.yml, printed by headless Chromium (offline) and joined with pypdf. Builds the website
# first (cached notebooks are not re-run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/build.sh
source tools/env.sh test   # Playwright, pypdf and Debian's chromium
set -euo pipefail
python tools/pdf.py _build/html --out _build/pdf/book.pdf
