# Helpers shared by the measurement scripts (POSIX sh; sourced, not run).

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until something accepts connections on 127.0.0.1:$1, for $2 tenths of a
# second at most (default 100: 10 s).
wait_port() {
  _i=0
  until python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null; do
    _i=$((_i + 1))
    [ "$_i" -lt "${2:-100}" ] || { echo "nothing listening on $1" >&2; return 1; }
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

# start_hello NAME [BIN]: start_server for the pipelined-HTTP scripts' servers by
# name: floor and floor-head (bench/peers/floor_http.rs, built by the caller), or our
# http service from BIN (default $B).
start_hello() {
  case $1 in
    floor) start_server floor "target/release/examples/floor_http {port}" ;;
    floor-head) start_server floor-head "target/release/examples/floor_http {port} head" ;;
    *) start_server "$1" "${2:-$B} serve --model async --service http=127.0.0.1:{port}" ;;
  esac
}

# callgrind_start FILE 'COMMAND with {port}': starts the server under
# `valgrind --tool=callgrind` (its counts written to FILE) on a free port and waits
# (30 s at most) until it accepts. Sets $port and $pid.
callgrind_start() {
  port=$(free_port)
  _c=$(echo "$2" | sed "s/{port}/$port/g")
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --callgrind-out-file="$1" $_c >/dev/null 2>&1 &
  pid=$!
  wait_port "$port" 300 || { kill "$pid"; return 1; }
}

# callgrind_stop: ends the server of callgrind_start and waits for its counts. SIGINT
# drains our server; a peer without a handler may ignore it under valgrind, so it
# gets SIGTERM 10 s later.
callgrind_stop() {
  kill -INT "$pid"; (sleep 10; kill -TERM "$pid" 2>/dev/null) & wait "$pid" 2>/dev/null || true
}

# make_tls_pki DIR NAME: in DIR, a CA (ca.pem, ca.key) named NAME and a server
# certificate it signed for localhost and 127.0.0.1 (cert.pem, key.pem), ECDSA P-256,
# valid two days. The CA is apart from the server's certificate, as .ci/tls.sh makes
# them: rustls refuses a self-signed CA certificate as a server's own.
make_tls_pki() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$2" -keyout "$1/ca.key" -out "$1/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj /CN=localhost -keyout "$1/key.pem" -out "$1/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$1/san.ext"
  openssl x509 -req -in "$1/server.csr" -CA "$1/ca.pem" -CAkey "$1/ca.key" \
    -CAcreateserial -days 2 -extfile "$1/san.ext" -out "$1/cert.pem" 2>/dev/null
}

# nginx_https_conf DIR PORT 'TOP-LEVEL DIRECTIVES': writes an nginx config that serves
# the http hello's bytes over TLS on 127.0.0.1:PORT with DIR's certificate (from
# make_tls_pki), every file of its own under DIR (never the system config), and prints
# its path. The directives choose the processes and the events block.
nginx_https_conf() {
  cat >"$1/nginx-$2.conf" <<CONF
$3
daemon off;
pid $1/nginx-$2.pid;
error_log $1/error.log warn;
http {
    access_log off;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$2 ssl;
        ssl_certificate $1/cert.pem;
        ssl_certificate_key $1/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            default_type text/plain;
            return 200 "Hello from Multi-threaded Flask Server!";
        }
    }
}
CONF
  echo "$1/nginx-$2.conf"
}

# results KIND 'SETTINGS': the run's output directory, $OUT (default
# bench/results/KIND-<UTC time>), made, with an empty $RAW (raw.tsv) and head.txt: the
# commit, the time and SETTINGS, also printed.
results() {
  OUT=${OUT:-bench/results/$1-$(date -u +%Y%m%dT%H%M%SZ)}
  mkdir -p "$OUT"
  RAW=$OUT/raw.tsv
  : > "$RAW"
  echo "# $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(date -u +%FT%TZ) $2" | tee "$OUT/head.txt"
}
