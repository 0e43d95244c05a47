# Sourced by the benchmark scripts: starts nginx with its WebDAV modules as the peer hearth is
# measured against, configured as sccache's documentation suggests: PUT/DELETE/MKCOL from the
# core dav module, PROPFIND/OPTIONS from dav-ext, intermediate directories created on PUT.
# Workers = cores (hearth's runtime has as many threads); no access log (hearth logs requests
# at debug level only). nginx-light and libnginx-mod-http-dav-ext are installed with apt when
# missing.
#
#   start_nginx_peer DIR NAMESPACE   config, files and logs in DIR; sets nginx_pid, peer_pids
#                                    (the workers, comma-separated), peer_port and peer_url
#                                    (http://127.0.0.1:PORT/NAMESPACE/). The caller stops
#                                    $nginx_pid (SIGQUIT) and removes DIR.
#   NGINX_ACCESS_LOG=1               log each request's method and status to DIR/access.log
#                                    (to count requests per write; off for throughput runs).

nginx_module=/usr/lib/nginx/modules/ngx_http_dav_ext_module.so

start_nginx_peer() {
  local dir=$1 namespace=$2
  if ! command -v nginx >/dev/null || [ ! -f "$nginx_module" ]; then
    echo "==> installing nginx-light and libnginx-mod-http-dav-ext (apt)" >&2
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light libnginx-mod-http-dav-ext >/dev/null
  fi
  mkdir -p "$dir/dav/$namespace" "$dir/tmp"
  peer_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local user_line=
  [ "$(id -u)" -eq 0 ] && user_line="user root;"
  local access_log="access_log off;"
  if [ "${NGINX_ACCESS_LOG:-0}" = 1 ]; then
    access_log='log_format methods "$request_method $status"; access_log '"$dir"'/access.log methods;'
  fi
  cat >"$dir/nginx.conf" <<CONF
load_module $nginx_module;
$user_line
worker_processes $(nproc);
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  $access_log
  client_body_temp_path $dir/tmp;
  proxy_temp_path $dir/tmp;
  fastcgi_temp_path $dir/tmp;
  uwsgi_temp_path $dir/tmp;
  scgi_temp_path $dir/tmp;
  sendfile on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_max_body_size 0;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$peer_port;
    root $dir/dav;
    location / {
      dav_methods PUT DELETE MKCOL COPY MOVE;
      dav_ext_methods PROPFIND OPTIONS;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
    }
  }
}
CONF
  nginx -c "$dir/nginx.conf" -e "$dir/error.log" &
  nginx_pid=$!
  peer_url=http://127.0.0.1:$peer_port/$namespace/
  for _ in $(seq 1 100); do
    curl -s --noproxy '*' -o /dev/null "$peer_url" && break
    sleep 0.1
  done
  peer_pids=$(pgrep -d, -P "$nginx_pid" || true)
  if [ -z "$peer_pids" ]; then
    echo "nginx did not start:" >&2
    cat "$dir/error.log" >&2
    return 1
  fi
  echo "==> peer: $(nginx -v 2>&1 | sed 's/.*: //') with WebDAV (workers $peer_pids) at $peer_url" >&2
}
