#!/bin/sh
# nginx answering every request with the `http` service's body: one process
# (`master_process off`, so its PID is the one measured), one worker connection pool
# of 20,000, no access log, keep-alive without a request limit, in the foreground.
# The configuration goes to a directory of its own under /tmp. Usage:
# bench/peers/nginx_hello.sh PORT (needs nginx: apt-get install nginx-light).
set -eu
port=${1:-8080}
dir=$(mktemp -d /tmp/nginx-hello.XXXXXX)
cat > "$dir/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  client_body_temp_path $dir;
  proxy_temp_path $dir;
  fastcgi_temp_path $dir;
  uwsgi_temp_path $dir;
  scgi_temp_path $dir;
  server {
    listen 127.0.0.1:$port reuseport;
    location / {
      default_type text/html;
      return 200 "Hello from Multi-threaded Flask Server!";
    }
  }
}
CONF
exec nginx -p "$dir" -c "$dir/nginx.conf"
