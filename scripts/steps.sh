# Named steps with a PASS/FAIL summary, sourced by scripts/miri.sh and
# scripts/tsan.sh:
#   steps_start TOOL COMMAND...   each step runs COMMAND STEP-ARGS...
#   step NAME STEP-ARGS...        runs one step, timed, never stops the script
#   steps_end [NOTE]              prints the summary; exits non-zero on any FAIL

steps_start() {
    steps_tool=$1
    shift
    steps_command=("$@")
    steps_t0=$(date +%s)
    steps_names=()
    steps_results=()
    steps_times=()
}

step() {
    local name=$1
    shift
    local t0 status
    t0=$(date +%s)
    echo
    echo "=== $steps_tool: $name: ${steps_command[*]} $*"
    if "${steps_command[@]}" "$@"; then
        status=PASS
    else
        status=FAIL
    fi
    steps_names+=("$name")
    steps_results+=("$status")
    steps_times+=("$(($(date +%s) - t0))")
}

steps_end() {
    echo
    echo "=== $steps_tool summary${1:+ ($1)}"
    local failed=0 i
    for i in "${!steps_names[@]}"; do
        printf '%-4s %5ss  %s\n' "${steps_results[$i]}" "${steps_times[$i]}" "${steps_names[$i]}"
        [ "${steps_results[$i]}" = PASS ] || failed=1
    done
    local total=$(($(date +%s) - steps_t0))
    if [ "$failed" = 0 ]; then
        echo "$steps_tool: PASS (${total}s)"
    else
        echo "$steps_tool: FAIL (${total}s)"
    fi
    exit "$failed"
}
