#!/usr/bin/env bash
# CI steps for the chat on the web: install Debian's chromium and Playwright's driver
# library (no browser download: playwright-core drives /usr/bin/chromium), build the
# server, then run the headless browser test of the chat page (two pages in one room,
# a notification, a reconnection with "after"; screenshots in target/). The socket
# tests of the WebSocket chat and notifications run in `cargo test --test chat_web`.
# Exits non-zero on any failure. Runnable with CI=true, no stdin, on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
    echo "chat-web.sh: installing chromium"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium </dev/null
fi
/usr/bin/chromium --version
command -v node >/dev/null || { echo "chat-web.sh: node (>= 20) is needed" >&2; exit 1; }
node --version

(cd tests/browser && npm ci --no-audit --no-fund </dev/null)
cargo build
cargo test --test chat_web
node tests/browser/chat.mjs target/debug/multiclient
test -s target/chat-web-ann.png && test -s target/chat-web-bob.png
echo "chat-web.sh: all chat web checks passed"
