#!/usr/bin/env bash
# CI steps for the admin listener: install Debian's prometheus (for promtool) and
# chromium, and Playwright's driver library (no browser download). Then:
#   1. cargo test --test admin (counters against what clients did, /readyz during a
#      drain, the exposition format, the dashboard's CSP), then its checks that start
#      their own redis-server (/readyz and the Redis metrics; it installs redis-server);
#   2. under every model but single: every service under load from `multiclient bench`
#      at once, a scrape of /metrics taken while every service has accepted clients and
#      connections are open and every service has answers in its latency histogram,
#      checked by `promtool check metrics`;
#   3. tests/browser/dashboard.mjs: the dashboard in headless Chromium under a running
#      bench, its figures changing between two screenshots (target/admin-dashboard-*.png),
#      its p50/p99 latency tile and chart drawn from the histograms.
# Exits non-zero on any failure. Runnable with CI=true, no stdin, on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    echo "admin.sh: installing ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi
promtool --version | head -1
command -v node >/dev/null || { echo "admin.sh: node (>= 20) is needed" >&2; exit 1; }

cargo build
cargo test --test admin
# The checks that start their own redis-server (ignored by a plain `cargo test`).
cargo test --test admin -- --ignored
bin=target/debug/multiclient

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Port of a service from the server's log: "Listening on 127.0.0.1:PORT (NAME, MODEL)".
port_of() { sed -n "s/.*Listening on 127\.0\.0\.1:\([0-9]*\) ($2,.*/\1/p" "$1" | head -1; }

scrape_under_load() {
    local model=$1 log=target/admin-serve-$1.log
    local services=(ack greet hello http ws chat)
    local args=(serve --model "$model" --admin 127.0.0.1:0)
    for s in "${services[@]}"; do args+=(--service "$s=127.0.0.1:0"); done
    "$bin" "${args[@]}" >"$log" 2>&1 &
    local server=$!
    pids+=("$server")
    local deadline=$((SECONDS + 20))
    until grep -q "Admin on http://" "$log"; do
        kill -0 "$server" 2>/dev/null || { cat "$log"; echo "admin.sh: server exited" >&2; exit 1; }
        [ $SECONDS -lt $deadline ] || { cat "$log"; echo "admin.sh: no Admin line" >&2; exit 1; }
        sleep 0.1
    done
    local admin
    admin=$(sed -n 's/.*Admin on http:\/\/\([0-9.:]*\)\/.*/\1/p' "$log" | head -1)
    for s in ack greet hello http ws; do
        "$bin" bench "$s" --addr "127.0.0.1:$(port_of "$log" "$s")" --conns 4 --secs 6 >/dev/null &
        pids+=($!)
    done
    "$bin" bench chat --addr "127.0.0.1:$(port_of "$log" chat)" --members 20 --rate 200 --secs 6 >/dev/null &
    pids+=($!)
    # The scrape counts once every service has accepted clients and some are open.
    deadline=$((SECONDS + 30))
    local metrics=target/admin-metrics-$model.txt
    while :; do
        curl -fsS "http://$admin/metrics" >"$metrics"
        local idle
        idle=$(grep -c '^multiclient_connections_accepted_total{service="[a-z]*"} 0$' "$metrics" || true)
        local unanswered=0 s
        for s in "${services[@]}"; do
            grep -q "^multiclient_answer_duration_seconds_count{service=\"$s\",model=\"$model\",kind=\"[a-z]*\"} [1-9]" "$metrics" ||
                unanswered=$((unanswered + 1))
        done
        if [ "$idle" -eq 0 ] && [ "$unanswered" -eq 0 ] &&
            grep -q '^multiclient_connections_open{service="chat"} [1-9]' "$metrics"; then
            break
        fi
        [ $SECONDS -lt $deadline ] || { cat "$metrics"; echo "admin.sh: not every service got clients and answered" >&2; exit 1; }
        sleep 0.2
    done
    promtool check metrics <"$metrics"
    grep -q '^multiclient_chat_memberships [1-9]' "$metrics"
    test "$(curl -s -o /dev/null -w '%{http_code}' "http://$admin/readyz")" = 200
    echo "admin.sh: $model: promtool accepts a scrape under load from every service ($(grep -vc '^#' "$metrics") samples)"
    cleanup
    pids=()
}

for model in threads pool async; do
    scrape_under_load "$model"
done

(cd tests/browser && npm ci --no-audit --no-fund </dev/null)
rm -f target/admin-dashboard-1.png target/admin-dashboard-2.png
node tests/browser/dashboard.mjs "$bin"
test -s target/admin-dashboard-1.png
test -s target/admin-dashboard-2.png
echo "admin.sh: all admin checks passed"
