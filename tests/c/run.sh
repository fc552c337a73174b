#!/usr/bin/env bash
# Builds and runs the C tests of csrc/core (tests/c/test_*.c), each case in
# its own process, twice: a strict optimised build and an ASan+UBSan build.
#
#   bash tests/c/run.sh                 # both variants
#   PISTON_C_VARIANTS=plain bash tests/c/run.sh
#   PISTON_C_BUILD=/tmp/x bash tests/c/run.sh   # where binaries go
#   PISTON_C_CFLAGS="-DFOO" bash tests/c/run.sh  # extra compiler flags
#   PISTON_C_VERBOSE=1 bash tests/c/run.sh       # a line per passing case
#
# Closes with one plain line: "c-tests: N passed, M failed".
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${PISTON_C_BUILD:-$ROOT/.venv-ci/c-build}
VARIANTS=${PISTON_C_VARIANTS:-plain asan}
CC=${CC:-gcc}
CASE_TIMEOUT=${PISTON_C_CASE_TIMEOUT:-30}
VERBOSE=${PISTON_C_VERBOSE:-0}

elapsed() {
    awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}'
}

# The engine is compiled as setup.py compiles it (gnu11, _GNU_SOURCE), with
# warnings as errors.
# shellcheck disable=SC2206
BASE_FLAGS=(-std=gnu11 -D_GNU_SOURCE=1 -Wall -Wextra -Werror -pthread -I"$ROOT/csrc"
            -I"$ROOT/tests/c" ${PISTON_C_CFLAGS:-})
declare -A VARIANT_FLAGS=(
    [plain]="-O2 -g"
    [asan]="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
)

# Sanitizer runtime settings for the asan variant: any report aborts the
# case (and so fails it); leaks are checked here, since these are plain C
# processes with no interpreter that leaks at exit.
export ASAN_OPTIONS=${ASAN_OPTIONS_C:-detect_leaks=1:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1}
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:abort_on_error=1

passed=0
failed=0
failed_names=()

shopt -s nullglob
core_sources=("$ROOT"/csrc/core/*.c)
tests=("$ROOT"/tests/c/test_*.c)
if [ ${#tests[@]} -eq 0 ]; then
    echo "c-tests: no tests/c/test_*.c found"
    echo "c-tests: 0 passed, 1 failed"
    exit 1
fi

# LeakSanitizer needs ptrace-like access that some sandboxes deny: a
# program that leaks nothing must exit 0 with it on, else leak checks go off
# (with a note) rather than fail every case.
lsan_probe() {
    local dir=$1
    printf '#include <stdlib.h>\nint main(void){free(malloc(1)); return 0;}\n' >"$dir/lsan_probe.c"
    "$CC" -fsanitize=address "$dir/lsan_probe.c" -o "$dir/lsan_probe" 2>/dev/null || return 1
    ASAN_OPTIONS=detect_leaks=1 "$dir/lsan_probe" >/dev/null 2>&1
}

for variant in $VARIANTS; do
    flags=${VARIANT_FLAGS[$variant]:-}
    if [ -z "$flags" ]; then
        echo "c-tests: unknown variant '$variant'"
        failed=$((failed + 1))
        continue
    fi
    out="$BUILD/$variant"
    rm -rf "$out"
    mkdir -p "$out/obj"
    echo "== c-tests [$variant]: gcc ${BASE_FLAGS[*]} $flags"
    if [ "$variant" = asan ]; then
        if ! lsan_probe "$out"; then
            echo "   note: LeakSanitizer cannot run here; leak checks off"
            export ASAN_OPTIONS="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}"
        fi
    fi
    # The engine objects once per variant, then one binary per test file.
    objs=()
    build_ok=1
    for src in "${core_sources[@]}"; do
        obj="$out/obj/$(basename "${src%.c}").o"
        # shellcheck disable=SC2086
        if ! "$CC" "${BASE_FLAGS[@]}" $flags -c "$src" -o "$obj"; then
            echo "   BUILD FAILED: $src"
            build_ok=0
        fi
        objs+=("$obj")
    done
    for t in "${tests[@]}"; do
        name=$(basename "${t%.c}")
        bin="$out/$name"
        if [ "$build_ok" = 1 ]; then
            # shellcheck disable=SC2086
            if ! "$CC" "${BASE_FLAGS[@]}" $flags "$t" "${objs[@]}" -o "$bin"; then
                echo "   BUILD FAILED: $t"
                rm -f "$bin"
            fi
        fi
        if [ ! -x "$bin" ]; then
            failed=$((failed + 1))
            failed_names+=("$variant/$name (build)")
            continue
        fi
        if ! cases=$("$bin" --list); then
            failed=$((failed + 1))
            failed_names+=("$variant/$name (--list)")
            continue
        fi
        file_ok=0
        file_failed=0
        file_start=$(date +%s.%N)
        for c in $cases; do
            log="$out/$name.$c.log"
            start=$(date +%s.%N)
            timeout -k 5 "$CASE_TIMEOUT" "$bin" "$c" >"$log" 2>&1
            rc=$?
            secs=$(elapsed "$start")
            if [ $rc -eq 0 ]; then
                passed=$((passed + 1))
                file_ok=$((file_ok + 1))
                if [ "$VERBOSE" = 1 ]; then
                    printf '   ok    %-6s %-14s %-42s %6ss\n' "$variant" "$name" "$c" "$secs"
                fi
            else
                failed=$((failed + 1))
                file_failed=$((file_failed + 1))
                failed_names+=("$variant/$name/$c")
                printf '   FAIL  %-6s %-14s %-42s %6ss  (exit %d)\n' "$variant" "$name" "$c" "$secs" "$rc"
                sed 's/^/      | /' "$log" | head -60
            fi
        done
        printf '   %-5s %-6s %-14s %3d/%d cases ok %8ss\n' \
            "$([ "$file_failed" = 0 ] && echo ok || echo FAIL)" "$variant" \
            "$name" "$file_ok" "$((file_ok + file_failed))" "$(elapsed "$file_start")"
    done
done

if [ ${#failed_names[@]} -gt 0 ]; then
    echo "c-tests failed: ${failed_names[*]}"
fi
echo "c-tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
