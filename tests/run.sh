#!/usr/bin/env bash
# piston's whole test run, from a fresh clone with nothing installed by hand:
#
#   bash tests/run.sh
#
# Jobs (each prints what it does; a summary closes the run; the exit status
# is non-zero when any job failed):
#   c       C tests of csrc/core (tests/c/run.sh), plain and ASan+UBSan builds
#   py311   venv + test deps + piston built with PISTON_STRICT=1 (-Werror),
#   py312   then `pytest tests` against the installed package, for each
#   py313   Python found (3.11 is the machine's python3; others via pyenv)
#   asan    a 3.11 venv with piston built PISTON_SANITIZE=1, the suite run
#           with libasan preloaded and PYTHONMALLOC=malloc; any report fails
#   leaks   tests/leaks/check_thread_pool.py against the py311 build: its
#           self-test, every workload in its own process, then the suite's
#           thread-pool/Future tests in a loop
#
# Knobs (environment):
#   PISTON_CI_JOBS="c py311 asan"  run a subset (default: all, in that order)
#   PISTON_CI_DIR=DIR              scratch dir (default: .venv-ci/, ignored)
#   PISTON_CI_PYTEST_ARGS="-x -k x" extra pytest arguments
#   PISTON_CI_TIMEOUT=SECONDS      limit for one pytest run (default 900)
#   PISTON_CI_BUDGET=SECONDS       limit for the whole run (default 4800:
#                                  CI stops a run at 90 minutes; every job's
#                                  time limit is cut to what is left of this)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SCRATCH=${PISTON_CI_DIR:-$ROOT/.venv-ci}
LOGS=$SCRATCH/logs
JOBS=${PISTON_CI_JOBS:-c py311 py312 py313 asan leaks}
PYTEST_TIMEOUT=${PISTON_CI_TIMEOUT:-900}
BUDGET=${PISTON_CI_BUDGET:-4800}
DEADLINE=$(($(date +%s) + BUDGET))
read -r -a EXTRA_PYTEST_ARGS <<<"${PISTON_CI_PYTEST_ARGS:-}"
mkdir -p "$LOGS"

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_PROGRESS_BAR=off
export PIP_NO_INPUT=1
export PYTHONDONTWRITEBYTECODE=1

note() { printf '   %s\n' "$*"; }

# Runs a pip command, hiding its notes about configured index locations that
# do not exist on this machine (they say nothing about the install).
pip_quiet() {
    "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

# limit SECONDS: SECONDS, or what is left of the run's budget if less.
# Fails (no output) when less than a minute is left.
limit() {
    local left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt 60 ]; then
        echo "!! the run's time budget (${BUDGET}s) is spent" >&2
        return 1
    fi
    echo $(($1 < left ? $1 : left))
}

# --- finding interpreters -------------------------------------------------

# Prints the path of a python for version X.Y, or nothing.  3.11 is the
# machine's python3; every version may also come from pyenv.
find_python() {
    local want=$1 exe prefix
    for exe in python3 "python$want"; do
        if command -v "$exe" >/dev/null 2>&1 \
            && [ "$("$exe" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$want" ]; then
            # The real interpreter, not a pyenv shim.
            "$exe" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        prefix=$(pyenv prefix "$want" 2>/dev/null | head -1 || true)
        if [ -z "$prefix" ]; then
            # `pyenv prefix 3.12` needs a plain 3.12 entry; else take the
            # newest 3.12.N listed by `pyenv versions --bare`.
            local v
            v=$(pyenv versions --bare 2>/dev/null | grep -E "^${want//./\\.}\.[0-9]+$" \
                | sort -t. -k3,3n | tail -1 || true)
            [ -n "$v" ] && prefix=$(pyenv prefix "$v" 2>/dev/null || true)
        fi
        if [ -n "$prefix" ] && [ -x "$prefix/bin/python$want" ]; then
            echo "$prefix/bin/python$want"
            return 0
        fi
    fi
    return 1
}

# --- building piston into a venv ------------------------------------------

# A clean copy of the source tree: every build starts from nothing, so a
# sanitized and a plain build of the same Python never share objects in
# build/, and nothing the build writes lands in the work tree.
copy_source() {
    local dest=$1
    rm -rf "$dest"
    mkdir -p "$dest"
    tar -C "$ROOT" -cf - \
        --exclude=./.git --exclude='./.venv*' --exclude=./build \
        --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=./bench-results --exclude='*.so' --exclude='*.o' . \
        | tar -C "$dest" -xf -
}

# The `test` extra of pyproject.toml, one requirement a line.
test_requirements() {
    "$1" - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
print("\n".join(project["optional-dependencies"]["test"]))
EOF
}

# The piston._piston file the venv's python would import, found without
# importing anything (piston/__init__ loads the extension, and a sanitized
# one must not be loaded without libasan preloaded).
extension_path() {
    (cd "$SCRATCH" && "$1/bin/python" -P -c '
import glob, importlib.machinery as m, importlib.util as u, os
spec = u.find_spec("piston")
for d in spec.submodule_search_locations:
    for suffix in m.EXTENSION_SUFFIXES:
        f = os.path.join(d, "_piston" + suffix)
        if os.path.exists(f):
            print(f)
            raise SystemExit(0)
raise SystemExit("piston/_piston extension not found in %s"
                 % list(spec.submodule_search_locations))')
}

# System packages the suite needs from Debian: redis-server for the
# piston.celery tests (a real broker).  Installed when missing and when we
# can (root); PISTON_REQUIRE_REDIS=1 then makes its absence a failure.
system_deps() {
    if command -v redis-server >/dev/null 2>&1; then
        note "redis-server: $(command -v redis-server)"
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "-- apt-get install redis-server"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                redis-server >"$LOGS/apt.log" 2>&1 \
            || { echo "!! apt-get install redis-server failed:"; tail -20 "$LOGS/apt.log"; }
    fi
    command -v redis-server >/dev/null 2>&1 \
        || echo "!! redis-server unavailable: the celery tests will fail"
}
system_deps
export PISTON_REQUIRE_REDIS=1

# setup_venv NAME PYTHON BUILD_ENV...: a venv at $SCRATCH/NAME with the test
# deps from the package index and piston built from a clean copy with the
# given build variables (PISTON_STRICT=1, PISTON_SANITIZE=1, ...).
setup_venv() {
    local name=$1 py=$2
    shift 2
    local venv=$SCRATCH/$name src=$SCRATCH/src-$name
    local blog=$LOGS/build-$name.log
    echo "-- venv $venv ($("$py" -V 2>&1), $py)"
    if [ ! -x "$venv/bin/python" ]; then
        "$py" -m venv "$venv"
    fi
    echo "-- pip install test deps: $(test_requirements "$venv/bin/python" | tr '\n' ' ')"
    test_requirements "$venv/bin/python" >"$SCRATCH/requirements-test.txt"
    pip_quiet "$venv/bin/python" -m pip install -q -r "$SCRATCH/requirements-test.txt"
    echo "-- build + install piston with $* (log: $blog)"
    copy_source "$src"
    if ! env "$@" "$venv/bin/python" -m pip install -v --no-deps \
            --force-reinstall "$src" >"$blog" 2>&1; then
        echo "!! build failed; the compiler said:"
        grep -E -A3 '\.[ch]:[0-9]+:[0-9]+: (error|warning):' "$blog" \
            | head -80 | sed 's/^/   | /'
        echo "   (last lines of $blog)"
        tail -25 "$blog" | sed 's/^/   | /'
        return 1
    fi
    # Warnings are errors under PISTON_STRICT; elsewhere they are shown.
    if grep -qE '\.[ch]:[0-9]+:[0-9]+: warning:' "$blog"; then
        echo "   compiler warnings:"
        grep -E -A3 '\.[ch]:[0-9]+:[0-9]+: warning:' "$blog" | head -60 \
            | sed 's/^/   | /'
    fi
    # The suite must test the installed package, never python/ in the tree.
    local where
    where=$(extension_path "$venv")
    case "$where" in
        "$venv"/*) note "installed: $where" ;;
        *) echo "!! piston._piston resolves to $where, not inside $venv"; return 1 ;;
    esac
    touch "$SCRATCH/.built-$name"
}

# run_pytest VENV [ENV...]: the suite against the installed package.  -P keeps
# the current directory off sys.path; the pn_ci_plugin fails the session if
# piston was imported from anywhere but the venv.  Exit 5 (nothing collected)
# is a failure like any other non-zero status.
run_pytest() {
    local venv=$1
    shift
    local rc=0 secs
    secs=$(limit "$PYTEST_TIMEOUT")
    echo "-- pytest tests (PISTON_REQUIRE=1, timeout ${secs}s)"
    env PISTON_REQUIRE=1 PISTON_CI_EXPECT_PREFIX="$venv" \
        PYTHONPATH="$ROOT/tests/leaks" "$@" \
        timeout -k 30 "$secs" \
        "$venv/bin/python" -P -X faulthandler -m pytest tests -q -ra \
        -p no:cacheprovider -p pn_ci_plugin \
        -o faulthandler_timeout=600 "${JOB_PYTEST_ARGS[@]}" \
        "${EXTRA_PYTEST_ARGS[@]}" 2>&1 | tee "$LOGS/pytest-$JOB.out" \
        || rc=${PIPESTATUS[0]}
    case $rc in
        0) ;;
        5) echo "!! pytest collected no tests (exit 5): that is a failure" ;;
        124|137) echo "!! pytest timed out after ${secs}s" ;;
        *) echo "!! pytest exited $rc" ;;
    esac
    return "$rc"
}
JOB_PYTEST_ARGS=()

# --- the jobs ---------------------------------------------------------------

job_c() {
    local secs
    secs=$(limit 900)
    timeout -k 10 "$secs" bash "$ROOT/tests/c/run.sh"
}

job_python() {
    local ver=$1 name=$2 py
    if ! py=$(find_python "$ver"); then
        echo "-- Python $ver not found (python3, pyenv): skipped"
        return 3
    fi
    setup_venv "$name" "$py" PISTON_STRICT=1
    run_pytest "$SCRATCH/$name"
}

job_asan() {
    local py so libasan libubsan preload
    py=$(find_python 3.11)
    setup_venv asan-py311 "$py" PISTON_SANITIZE=1
    local venv=$SCRATCH/asan-py311
    so=$(extension_path "$venv")
    # Proof that the module under test is the instrumented one (symbols to
    # a file first: `nm | grep -q` dies of SIGPIPE under pipefail).
    nm -D "$so" >"$LOGS/asan-symbols.txt"
    if ! grep -q ' U __asan_init' "$LOGS/asan-symbols.txt"; then
        echo "!! $so is not built with AddressSanitizer"
        return 1
    fi
    if ! grep -q ' U __ubsan_handle_' "$LOGS/asan-symbols.txt"; then
        echo "!! $so is not built with UBSan"
        return 1
    fi
    note "instrumented: $(grep -c ' U __asan_' "$LOGS/asan-symbols.txt") ASan and $(grep -c ' U __ubsan_' "$LOGS/asan-symbols.txt") UBSan runtime symbols referenced; needs $(ldd "$so" | grep -o 'lib[a-z]*san\.so[^ ]*' | sort -u | tr '\n' ' ')"
    libasan=$(gcc -print-file-name=libasan.so)
    libubsan=$(gcc -print-file-name=libubsan.so)
    [ -e "$libasan" ] || { echo "!! libasan not found ($libasan)"; return 1; }
    preload=$libasan
    # libubsan comes in as the module's own dependency; preload it too when
    # it exists so its interceptors are set up before Python starts.
    [ -e "$libubsan" ] && preload="$preload:$libubsan"
    note "LD_PRELOAD=$preload"
    local reports=$LOGS/sanitizer
    rm -rf "$reports"
    mkdir -p "$reports"
    # Reports go to files as well as failing the process: a report from a
    # subprocess a test started must fail the job even if the test passed.
    local asan_opts="detect_leaks=0:abort_on_error=1:halt_on_error=1"
    asan_opts+=":strict_string_checks=1:check_initialization_order=1"
    asan_opts+=":detect_stack_use_after_return=0:log_path=$reports/asan"
    local ubsan_opts="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
    ubsan_opts+=":log_path=$reports/ubsan"
    # A first import under the sanitizer, to fail fast with a clear message.
    env LD_PRELOAD="$preload" PYTHONMALLOC=malloc ASAN_OPTIONS="$asan_opts" \
        UBSAN_OPTIONS="$ubsan_opts" \
        "$venv/bin/python" -P -c 'import piston, piston._piston as m; print("   imported", m.__file__)' \
        || { echo "!! importing the sanitized build failed"; cat "$reports"/* 2>/dev/null | head -80; return 1; }
    local rc=0
    # --capture=no: sanitizer reports are written by C code to fd 2, which
    # pytest's fd capture would swallow along with the aborting test (and
    # UBSan ignores log_path when ASan is loaded), so they reach the log and
    # are looked for below.  The suite prints little; capfd still works.
    JOB_PYTEST_ARGS=(--capture=no)
    run_pytest "$venv" LD_PRELOAD="$preload" PYTHONMALLOC=malloc \
        ASAN_OPTIONS="$asan_opts" UBSAN_OPTIONS="$ubsan_opts" || rc=$?
    if grep -qE 'runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer' \
            "$LOGS/pytest-$JOB.out"; then
        echo "!! sanitizer report(s) in the pytest output:"
        grep -E -A12 'runtime error:|ERROR: AddressSanitizer' \
            "$LOGS/pytest-$JOB.out" | head -60 | sed 's/^/   | /'
        [ "$rc" -eq 0 ] && rc=1
    fi
    shopt -s nullglob
    local files=("$reports"/*)
    shopt -u nullglob
    if [ ${#files[@]} -gt 0 ]; then
        echo "!! ${#files[@]} sanitizer report(s):"
        for f in "${files[@]}"; do
            echo "   == $f"
            head -80 "$f" | sed 's/^/   | /'
        done
        [ "$rc" -eq 0 ] && rc=1
    else
        note "no sanitizer reports"
    fi
    return "$rc"
}

job_leaks() {
    local py venv=$SCRATCH/py311
    py=$(find_python 3.11)
    # Reuse the py311 job's venv when it was built in this run.
    if [ ! -e "$SCRATCH/.built-py311" ]; then
        setup_venv py311 "$py" PISTON_STRICT=1
    else
        note "reusing $venv"
    fi
    local script=$ROOT/tests/leaks/check_thread_pool.py
    echo "-- leak checker self-test (an injected leak must be reported)"
    (cd "$SCRATCH" && timeout -k 10 "$(limit 600)" \
        "$venv/bin/python" -P "$script" --self-test --timeout 120)
    echo "-- leak checks: each workload in its own process, then the suite's"
    echo "   thread-pool and Future tests in a loop"
    (cd "$SCRATCH" && PISTON_REQUIRE=1 timeout -k 10 "$(limit 1200)" \
        "$venv/bin/python" -P "$script" --timeout 180 --log-dir "$LOGS")
}

# --- driver -------------------------------------------------------------------

declare -A RESULT DURATION
ORDER=()
rm -f "$SCRATCH"/.built-*

run_job() {
    local job=$1 fn rc=0 t0=$SECONDS
    shift
    ORDER+=("$job")
    JOB=$job
    echo
    echo "==================== job $job ===================="
    # A subshell with errexit: a failing step ends the job, not the run.
    set +e
    ( set -euo pipefail; "$@" ) 2>&1 | tee "$LOGS/$job.log"
    rc=${PIPESTATUS[0]}
    set -e
    DURATION[$job]=$((SECONDS - t0))
    case $rc in
        0) RESULT[$job]=passed ;;
        3) RESULT[$job]=skipped ;;
        *) RESULT[$job]="FAILED (exit $rc)" ;;
    esac
    echo "==================== job $job: ${RESULT[$job]} in ${DURATION[$job]}s"
}

echo "piston tests: jobs [$JOBS], scratch $SCRATCH, $(nproc) cores"
echo "   gcc: $(gcc -dumpfullversion 2>/dev/null || echo none), python3: $(python3 -V 2>&1)"
T0=$SECONDS
for job in $JOBS; do
    case $job in
        c) run_job c job_c ;;
        py311) run_job py311 job_python 3.11 py311 ;;
        py312) run_job py312 job_python 3.12 py312 ;;
        py313) run_job py313 job_python 3.13 py313 ;;
        asan) run_job asan job_asan ;;
        leaks) run_job leaks job_leaks ;;
        *) echo "unknown job '$job' (known: c py311 py312 py313 asan leaks)"
           ORDER+=("$job"); RESULT[$job]="FAILED (unknown job)"; DURATION[$job]=0 ;;
    esac
done

echo
echo "==================== summary ($((SECONDS - T0))s) ===================="
npass=0
nfail=0
for job in "${ORDER[@]}"; do
    printf '   %-8s %-22s %5ss\n' "$job" "${RESULT[$job]}" "${DURATION[$job]}"
    case ${RESULT[$job]} in
        passed) npass=$((npass + 1)) ;;
        skipped) ;;
        *) nfail=$((nfail + 1)) ;;
    esac
done
echo "   logs: $LOGS"
echo "ci-jobs: $npass passed, $nfail failed"
[ "$nfail" -eq 0 ]
