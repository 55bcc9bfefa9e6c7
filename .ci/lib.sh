# Helpers the interop suites share: sourced, never run. Servers a suite starts go in
# PIDS and are killed when the suite exits, however it exits.
PIDS=()

log() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
