# Helpers shared by the measurement scripts (POSIX sh; sourced, not run).

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (10 s at most) until something accepts connections on 127.0.0.1:$1.
wait_port() {
  _i=0
  until python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null; do
    _i=$((_i + 1))
    [ "$_i" -lt 100 ] || { echo "nothing listening on $1" >&2; return 1; }
    sleep 0.1
  done
}

# start_server NAME 'COMMAND with {port}': starts the server on a free port, pinned to
# CPU 1 at nice -20, in a session of its own (as a deployed server runs: with the
# kernel's session autogroups a server in the tester's session would take the tester's
# CPU share), and waits until it accepts. Sets $port and $pid.
start_server() {
  port=$(free_port)
  _c=$(echo "$2" | sed "s/{port}/$port/g")
  setsid nice -n -20 taskset -c 1 sh -c "exec $_c" >/dev/null 2>&1 &
  pid=$!
  wait_port "$port" || { echo "$1 did not start"; kill "$pid"; return 1; }
  sleep 0.5
}
