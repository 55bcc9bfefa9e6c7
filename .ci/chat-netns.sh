#!/usr/bin/env bash
# The chat scale-out test on three hosts: two `multiclient serve --service chat`
# instances on hosts A and B and one redis-server on a third host, each host a network
# namespace of its own, joined by a bridge in a fourth (switch) namespace on a private
# subnet that exists only inside these namespaces (no default route, nothing in the
# root namespace). Scripted clients (.ci/chat_netns_client.py) run on the hosts through
# `ip netns exec`; then instance B is SIGKILLed and its members must part on A within
# the presence TTL. See docs/chat-scaleout.md.
#
# Run as root (network namespaces), CI=true, no stdin, on a clean clone. Installs
# iproute2 and redis-server if missing and builds the release binary (cargo: a no-op
# when up to date). Always cleans up: kills only the PIDs it started and deletes the
# namespaces it made (their links go with them). Exits non-zero with a message on any
# failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

TTL=3                    # --presence-ttl of both instances, in seconds
PORT=7000
SUBNET=10.213.0          # /24, only inside the namespaces below
REDIS_IP=$SUBNET.1
A_IP=$SUBNET.2
B_IP=$SUBNET.3
NS_SW=mc-sw-$$
NS_REDIS=mc-redis-$$
NS_A=mc-a-$$
NS_B=mc-b-$$
BIN=target/release/multiclient

passed=0
failed=0
PIDS=()
NAMESPACES=()
WORK=""

ok() { passed=$((passed + 1)); echo "ok - $*"; }
fail() {
    failed=$((failed + 1))
    echo "chat-netns: FAILED: $*" >&2
    exit 1
}

cleanup() {
    local status=$?
    set +e
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
        { wait "$pid"; } 2>/dev/null
    done
    if [ "$status" -ne 0 ] && [ -n "$WORK" ]; then
        for log in "$WORK"/*.log; do
            [ -f "$log" ] || continue
            echo "--- last lines of $(basename "$log")" >&2
            tail -n 25 "$log" >&2
        done
    fi
    for ns in "${NAMESPACES[@]}"; do
        # Anything still inside a namespace made by this run was started by this run.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            echo "chat-netns: killing leftover pid $pid in $ns" >&2
            kill -KILL "$pid" 2>/dev/null
        done
    done
    # The veth ends and the bridge live only in these namespaces: deleting the
    # switch's links first, then the namespaces, leaves nothing behind.
    for port in p-redis p-a p-b br0; do
        ip -n "$NS_SW" link del "$port" 2>/dev/null
    done
    for ns in "${NAMESPACES[@]}"; do
        ip netns del "$ns" 2>/dev/null || echo "chat-netns: could not delete netns $ns" >&2
    done
    [ -n "$WORK" ] && rm -rf "$WORK"
    if [ "$status" -ne 0 ]; then
        echo "chat-netns: $passed passed, $((failed > 0 ? failed : 1)) failed"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- tools
[ "$(id -u)" -eq 0 ] || fail "must run as root (it makes network namespaces)"
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ "${#need[@]}" -gt 0 ]; then
    echo "chat-netns: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Always through cargo (a no-op when up to date), so a stale binary is never tested.
echo "chat-netns: building $BIN"
cargo build --release --bin multiclient
[ -x "$BIN" ] || fail "no $BIN after the build"
BIN=$(realpath "$BIN")
WORK=$(mktemp -d /tmp/chat-netns.XXXXXX)

# ------------------------------------------------------------------------- topology
for ns in "$NS_SW" "$NS_REDIS" "$NS_A" "$NS_B"; do
    ip netns add "$ns" || fail "cannot create network namespace $ns"
    NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up
done
ip -n "$NS_SW" link add br0 type bridge
ip -n "$NS_SW" link set br0 up
# Each host's eth0 is one end of a veth pair whose other end is a bridge port in the
# switch namespace; both ends are made directly in their namespaces.
for pair in "p-redis $NS_REDIS $REDIS_IP" "p-a $NS_A $A_IP" "p-b $NS_B $B_IP"; do
    read -r port ns ip4 <<<"$pair"
    ip -n "$NS_SW" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$NS_SW" link set "$port" master br0
    ip -n "$NS_SW" link set "$port" up
    ip -n "$ns" addr add "$ip4/24" dev eth0
    ip -n "$ns" link set eth0 up
done
for ns in "$NS_REDIS" "$NS_A" "$NS_B"; do
    if ip -n "$ns" route show default | grep -q .; then
        fail "$ns has a default route: the test subnet must not reach outside"
    fi
done
ok "3 hosts ($NS_REDIS $REDIS_IP, $NS_A $A_IP, $NS_B $B_IP) on a bridge in $NS_SW, no default route"

# ------------------------------------------------------------------------------ Redis
# Protected mode would refuse the other hosts (it admits loopback only without a
# password); this Redis is bound to an address on a subnet that exists only here.
ip netns exec "$NS_REDIS" redis-server --bind "$REDIS_IP" --port 6379 --save '' \
    --appendonly no --protected-mode no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_redis() {
    local ns=$1 deadline=$((SECONDS + 15)) answer=""
    until answer=$(ip netns exec "$ns" redis-cli -h "$REDIS_IP" -p 6379 ping 2>&1) &&
        [ "$answer" = PONG ]; do
        [ "$SECONDS" -lt "$deadline" ] ||
            fail "redis at $REDIS_IP:6379 not reachable from $ns: ${answer:0:200}"
        sleep 0.1
    done
}
for ns in "$NS_REDIS" "$NS_A" "$NS_B"; do wait_redis "$ns"; done
ok "redis-server on $REDIS_IP:6379 answers PING from all three hosts"

# ------------------------------------------------------------------- chat instances
start_chat() { # ns ip log -> sets CHAT_PID
    ip netns exec "$1" "$BIN" serve --service chat --addr "$2:$PORT" \
        --redis "redis://$REDIS_IP:6379" --presence-ttl "${TTL}s" >"$WORK/$3" 2>&1 &
    CHAT_PID=$!
    PIDS+=("$CHAT_PID")
}
start_chat "$NS_A" "$A_IP" chat-a.log
A_PID=$CHAT_PID
start_chat "$NS_B" "$B_IP" chat-b.log
B_PID=$CHAT_PID
# Ready = its Redis bridge logged that it is subscribed and its listener is bound.
wait_chat() { # ns ip log pid
    local deadline=$((SECONDS + 20))
    # The log file is created by the background job's redirection, which may not
    # have run yet: wait for the file, then for the line in it.
    until [ -f "$WORK/$3" ] && grep -q "connected and subscribed" "$WORK/$3" &&
        ip netns exec "$1" ss -Hltn src "$2:$PORT" | grep -q LISTEN; do
        kill -0 "$4" 2>/dev/null || fail "the chat instance in $1 exited"
        [ "$SECONDS" -lt "$deadline" ] || fail "the chat instance in $1 did not get ready"
        sleep 0.1
    done
    # `ip netns exec` runs the command in place: the PID is multiclient's own.
    [ "$(readlink "/proc/$4/exe")" = "$BIN" ] || fail "pid $4 is not $BIN"
}
wait_chat "$NS_A" "$A_IP" chat-a.log "$A_PID"
wait_chat "$NS_B" "$B_IP" chat-b.log "$B_PID"
ok "instances listening on $A_IP:$PORT (pid $A_PID) and $B_IP:$PORT (pid $B_PID), both subscribed to Redis"

# ------------------------------------------------------------------------- clients
set +e
# The checker SIGKILLs instance B; the shell's own "Killed" notice for that job is
# kept out of the output (fd 2 -> /dev/null for the shell only, the checker's stderr
# still shows through fd 3); B's end is checked below instead.
{
    timeout 150 python3 .ci/chat_netns_client.py check \
        --a-ns "$NS_A" --a-addr "$A_IP:$PORT" \
        --b-ns "$NS_B" --b-addr "$B_IP:$PORT" \
        --b-pid "$B_PID" --ttl "$TTL" 2>&3 | tee "$WORK/clients.log"
    status=${PIPESTATUS[0]}
} 3>&2 2>/dev/null
set -e
n=$(sed -n 's/^checks passed: //p' "$WORK/clients.log")
passed=$((passed + ${n:-0}))
[ "$status" -eq 0 ] || fail "client checks: $(grep '^FAIL' "$WORK/clients.log" || echo "exit $status")"

# Instance B ended by SIGKILL (128 + 9), reaped here so its end is checked, not assumed.
set +e
{ wait "$B_PID"; } 2>/dev/null
b_status=$?
set -e
[ "$b_status" -eq 137 ] || fail "instance B ended with status $b_status, not by SIGKILL"
ok "instance B ended by SIGKILL (status 137)"

# Instance A survived its peer's death and logged the expiry it published.
kill -0 "$A_PID" 2>/dev/null || fail "instance A died"
# The clients saw the parts; the log line may be flushed a moment later: wait for it.
deadline=$((SECONDS + 10))
until [ -f "$WORK/chat-a.log" ] && grep -q "expired: parting it everywhere" "$WORK/chat-a.log"; do
    [ "$SECONDS" -lt "$deadline" ] ||
        fail "instance A did not log the expired presence of B's members"
    sleep 0.1
done
ok "instance A still running and logged the expiry of B's members"

echo "chat-netns: $passed passed, $failed failed"
