#!/usr/bin/env bash
# CI steps for the chat on the web: install Debian's chromium and redis-server, and
# Playwright's driver library (no browser download: playwright-core drives
# /usr/bin/chromium), build the server, then run the headless browser tests of the chat
# page: tests/browser/chat.mjs (one instance: two pages in one room, a notification, a
# newcomer shown the room's history then live messages with times at phone size, a
# reconnection shown and caught up with "after", no failed request nor console error)
# and tests/browser/chat-redis.mjs (two instances sharing a
# redis-server of its own: two pages and two TCP clients in one room, one order and
# the same ids everywhere, WHO and NICK across instances, Redis killed and restarted:
# `unavailable` shown, pages kept, messages flowing again) and
# tests/browser/redis-freeze-repro.mjs (Redis frozen with SIGSTOP: a SAY refused
# `unavailable` is never delivered nor in any history once Redis resumes) and
# tests/browser/chat-tls.mjs (the page over https with a certificate of a test CA made
# with openssl: two pages chatting both ways over wss://). Screenshots in target/
# (chat-web-ann.png and chat-web-bob.png at desktop size, chat-web-phone.png at
# 390x844, chat-tls-ann.png and chat-tls-bob.png over https).
# The socket tests of the WebSocket chat and notifications run in
# `cargo test --test chat_web`. Exits non-zero on any failure. Runnable with CI=true,
# no stdin, on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    echo "chat-web.sh: installing ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" </dev/null
fi
/usr/bin/chromium --version
redis-server --version
command -v node >/dev/null || { echo "chat-web.sh: node (>= 20) is needed" >&2; exit 1; }
node --version

(cd tests/browser && npm ci --no-audit --no-fund </dev/null)
cargo build
cargo test --test chat_web
rm -f target/chat-web-auth.png target/chat-web-ann.png target/chat-web-bob.png target/chat-web-phone.png target/chat-redis-a.png target/chat-redis-b.png
rm -f target/chat-tls-ann.png target/chat-tls-bob.png
node tests/browser/chat.mjs target/debug/multiclient
node tests/browser/chat-auth.mjs target/debug/multiclient
test -s target/chat-web-ann.png
test -s target/chat-web-bob.png
test -s target/chat-web-phone.png
node tests/browser/chat-redis.mjs target/debug/multiclient
test -s target/chat-redis-a.png
test -s target/chat-redis-b.png
node tests/browser/redis-freeze-repro.mjs target/debug/multiclient
node tests/browser/chat-tls.mjs target/debug/multiclient
test -s target/chat-tls-ann.png
test -s target/chat-tls-bob.png
echo "chat-web.sh: all chat web checks passed"
