#!/usr/bin/env bash
# Instructions per request of the release node proxy, counted by callgrind (repeatable on this
# noisy 2-vCPU machine, unlike time). The proxy runs with a fixed original destination and a
# config file (one Service with an HTTPRoute, as in scenario A) in front of nginx on loopback;
# oha sends N and then 2N keep-alive requests over 10 connections, each in a fresh proxy under
# callgrind, and the difference divided by N is the cost of one request without start-up.
#
#   scripts/profile-proxy.sh [N] [PROXY_BINARY]
#   scripts/profile-proxy.sh [N] nginx       # the same count for nginx as the reverse proxy (scenario A's peer)
#
# Needs valgrind, nginx and oha (scripts/setup-bench.sh). Leaves the larger run's profile in
# target/profile/callgrind.out for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-4000}
proxy=${2:-target/release/nodus-proxy}
work=target/profile
mkdir -p "$work"
work=$(cd "$work" && pwd)
for tool in valgrind nginx oha callgrind_annotate; do
    command -v "$tool" > /dev/null || { echo "profile: $tool is missing (scripts/setup-bench.sh)" >&2; exit 1; }
done
[ "$proxy" = nginx ] || [ -x "$proxy" ] || { echo "profile: $proxy not built (cargo build --release -p nodus-proxy)" >&2; exit 1; }

backend_port=28080
proxy_port=28001
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$backend_port;
        location / { return 200 "hello world\n"; }
    }
}
EOF
cat > "$work/snapshot.yaml" <<EOF
version: 1
services:
  - id: { namespace: demo, name: web }
    clusterIps: [10.96.0.10]
    ports: [{ port: 80, targetPort: $backend_port }]
    endpoints: [{ address: 127.0.0.1 }]
httpRoutes:
  - id: { namespace: demo, name: web }
    parents: [{ service: { namespace: demo, name: web }, port: 80 }]
    rules:
      - matches: [{ path: { type: PathPrefix, value: / } }]
        backends: [{ service: { namespace: demo, name: web }, port: 80 }]
EOF
nginx -c "$work/nginx.conf" -p "$work"
trap 'kill $(cat "$work/nginx.pid") 2> /dev/null || true' EXIT

# nginx as the proxy: one process (no master), upstream keep-alive as in scenario A.
cat > "$work/nginx-proxy.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx-proxy.pid;
error_log $work/nginx-proxy-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    upstream backend { server 127.0.0.1:$backend_port; keepalive 64; }
    server {
        listen 127.0.0.1:$proxy_port;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF

# Starts the proxy being measured under callgrind, writing its profile to $1.
start_under_callgrind() {
    local out=$1
    if [ "$proxy" = nginx ]; then
        valgrind --tool=callgrind --callgrind-out-file="$out" nginx -c "$work/nginx-proxy.conf" -p "$work" \
            > "$work/proxy.log" 2>&1 &
        return
    fi
    valgrind --tool=callgrind --callgrind-out-file="$out" "$proxy" --node profile \
        --outbound-addr 127.0.0.1:$proxy_port --outbound-ports 1 --admin-addr 127.0.0.1:28020 --inbound-addr 127.0.0.1:28008 \
        --capture-addr 127.0.0.1:28006 --fixed-original-dst 10.96.0.10:80 --workers 1 \
        --config-file "$work/snapshot.yaml" > "$work/proxy.log" 2>&1 &
}

# Instructions of one proxy process that served `count` requests.
count_run() {
    local count=$1 out=$2
    start_under_callgrind "$out"
    local pid=$!
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null "http://127.0.0.1:$proxy_port/" && break
        sleep 0.1
    done
    oha --no-tui -n "$count" -c 10 "http://127.0.0.1:$proxy_port/" > "$work/oha-$count.txt"
    grep -q '\[200\] ' "$work/oha-$count.txt" || { echo "profile: requests failed:" >&2; cat "$work/oha-$count.txt" >&2; }
    kill -INT $pid
    wait $pid || true
    awk '/^summary:/ { print $2 }' "$out"
}
small=$(count_run "$requests" "$work/callgrind.small.out")
large=$(count_run $((requests * 2)) "$work/callgrind.out")
per_request=$(( (large - small) / requests ))
echo "instructions: $small for $requests requests, $large for $((requests * 2)); per request: $per_request"
