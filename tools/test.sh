#!/usr/bin/env bash
# Run every test: notebook hygiene, the package's unit tests (the student edition included),
# every chapter notebook top to bottom (nbval), a strict website build, and the browser
# check of every built page. Exits non-zero on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh test
set -euo pipefail
export PYTHONHASHSEED=0 MPLBACKEND=Agg PYDEVD_DISABLE_FILE_VALIDATION=1
reports=_build/test-reports
rm -rf "$reports" && mkdir -p "$reports"
t_all=$(date +%s)

step() {  # step NAME COMMAND...: run it, time it, stop the run if it fails
    local name=$1 t0=$SECONDS
    shift
    echo "::: $name"
    if ! "$@"; then
        echo "[test] FAILED at step: $name" >&2
        exit 1
    fi
    echo "[test] $name: $(( SECONDS - t0 )) s" | tee -a "$reports/times.txt"
}

step "notebook hygiene" python tools/notebooks.py check
step "unit tests" python -m pytest tests -n 2 --dist loadscope -p no:cacheprovider \
    --ignore=tests/test_student_edition.py --junitxml="$reports/unit.xml" -q
# One notebook stays on one kernel (loadscope); a failing cell fails the run and is named.
step "notebooks (nbval)" python -m pytest chapters --nbval-lax -n 2 --dist loadscope \
    -p no:cacheprovider --nbval-cell-timeout=600 --junitxml="$reports/nbval.xml" -q
# The student edition (solutions stubbed out) of every chapter, run top to bottom: it must not
# crash, and every check cell must say "not done yet".
step "student edition" python -m pytest tests/test_student_edition.py -n 2 --dist load \
    -p no:cacheprovider --junitxml="$reports/student.xml" -q
step "website build (-W)" bash tools/build.sh
step "browser check" python tools/browser_check.py _build/html --junit "$reports/browser.xml"
python tools/summary.py "$reports" "$(( $(date +%s) - t_all ))"
